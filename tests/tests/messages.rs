//! Nodes exchange messages through the control API: the example community's direct and
//! full-sync metas, and the probe community's other kinds (last-sync, relay, double-member).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::{EXAMPLE, PROBE, pair, plugin_dir, wait_until};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_arrive_verified_once_each() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    let path = format!("/v1/communities/{PROBE}/messages");
    const N: u64 = 1_000;
    let mut global_times = Vec::new();
    for i in 0..N {
        let body =
            json!({"meta": "example", "payload": {"text": format!("message {i}"), "amount": i}});
        let created = a.client.post(&path, &body).await.unwrap();
        assert_eq!(created["sent_to"], 1, "{created}");
        global_times.push(created["global_time"].as_u64().unwrap());
    }
    // Global times are claimed one after the other.
    assert!(global_times.windows(2).all(|w| w[1] == w[0] + 1));

    wait_until(
        Duration::from_secs(30),
        "B's plugin to receive every message",
        || async { b.community(PROBE).await["plugin"]["status"]["received"] == N },
    )
    .await;
    let status = b.community(PROBE).await["plugin"]["status"].clone();
    assert_eq!(status["distinct"], N, "{status}");
    assert_eq!(status["duplicates"], 0, "{status}");
    let expected_sum: u64 = (0..N).sum();
    assert_eq!(status["total_amount"], expected_sum.to_string());

    // Every delivered message is listed with its verified author and decoded payload.
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let page = b.get(&format!("{path}?since={since}&limit=500")).await;
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            assert_eq!(m["meta"], "example");
            assert_eq!(m["public_key"], a.member());
            assert_eq!(m["source"], a.udp.to_string().as_str());
            seen.push(m["payload"]["amount"].as_u64().unwrap());
        }
        since = page["next"].as_u64().unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());

    // Nothing was dropped on the way.
    let node = b.get("/v1/node").await;
    assert_eq!(node["stats"]["dropped"], json!({}), "{node}");
    let community = b.community(PROBE).await;
    assert_eq!(community["stats"]["messages_received"], N);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rejects_bad_requests_with_clear_errors() {
    let plugins = plugin_dir(&["example_community"]);
    let (a, b) = pair(plugins.path(), EXAMPLE).await;
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    let cases = [
        (
            "POST",
            path.clone(),
            Some("not json".to_owned()),
            400,
            "expected",
        ),
        (
            "POST",
            path.clone(),
            Some(json!({"meta": "nope", "payload": {}}).to_string()),
            400,
            "has no meta-message",
        ),
        (
            "POST",
            path.clone(),
            Some(json!({"meta": "example", "payload": {"text": 1}}).to_string()),
            422,
            "payload does not fit",
        ),
        (
            "POST",
            path.clone(),
            Some(
                json!({"meta": "example", "payload": {"text": "x".repeat(1100), "amount": 1}})
                    .to_string(),
            ),
            422,
            "at most 1024",
        ),
        (
            "GET",
            "/v1/communities/zz/candidates".to_owned(),
            None,
            400,
            "40 hexadecimal digits",
        ),
        (
            "GET",
            format!("/v1/communities/{}/candidates", "ab".repeat(20)),
            None,
            404,
            "unknown community",
        ),
        (
            "GET",
            "/v1/nothing".to_owned(),
            None,
            404,
            "no such endpoint",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let (code, text) = a
            .client
            .raw(method, &path, body, Some(&token(&a).await))
            .await
            .unwrap();
        assert_eq!(code, status, "{method} {path}: {text}");
        assert!(text.contains(needle), "{method} {path}: {text}");
        assert!(text.starts_with("{\"error\":"), "{text}");
    }
    let (code, _) = a.client.raw("GET", "/v1/node", None, None).await.unwrap();
    assert_eq!(code, 401);
    let (code, _) = a
        .client
        .raw("GET", "/v1/node", None, Some("wrong"))
        .await
        .unwrap();
    assert_eq!(code, 401);
    // The node still works.
    let created = a
        .client
        .post(
            &path,
            &json!({"meta": "example", "payload": {"text": "ok", "amount": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(created["sent_to"], 1);
    let plugins_list = a.get("/v1/plugins").await;
    assert_eq!(plugins_list[0]["name"], "example");
    let metrics = a
        .client
        .raw("GET", "/metrics", None, Some(&token(&a).await))
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("dispersy_datagrams_received_total"),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}

/// The token the client uses (read back through a successful request's client).
async fn token(node: &integration_tests::TestNode) -> String {
    node.client.token().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_posts_reach_a_node_that_joins_later_through_sync() {
    let plugins = plugin_dir(&["example_community"]);
    let a = integration_tests::TestNode::start(plugins.path(), |_| {}).await;
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    const N: u64 = 150;
    for i in 0..N {
        let body = json!({"meta": "post", "payload": {"text": format!("post {i}"), "amount": i}});
        let created = a.client.post(&path, &body).await.unwrap();
        assert_eq!(created["sent_to"], 0, "nobody to push to yet");
    }
    // B joins later: it can only get the posts through bloom-filter synchronisation.
    let a_udp = a.udp;
    let b =
        integration_tests::TestNode::start(plugins.path(), |c| c.peers = vec![a_udp.to_string()])
            .await;
    wait_until(Duration::from_secs(60), "B to have every post", || async {
        b.community(EXAMPLE).await["plugin"]["status"]["posts"] == N
    })
    .await;
    // They are stored at B, verified, once each.
    let mut since = 0;
    let mut stored = Vec::new();
    loop {
        let page = b
            .get(&format!("{path}?stored=true&since={since}&limit=100"))
            .await;
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            assert_eq!(m["meta"], "post");
            assert_eq!(m["public_key"], a.member());
            stored.push(m["payload"]["amount"].as_u64().unwrap());
        }
        since = page["next"].as_u64().unwrap();
    }
    stored.sort_unstable();
    assert_eq!(stored, (0..N).collect::<Vec<_>>());
    // Handled once each: a copy that arrives again (a follow-up round may overlap the previous
    // one) is recognised by the store and not handed to the plugin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.community(EXAMPLE).await["plugin"]["status"]["posts"], N);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_of_one_message_resolve_to_the_same_one_everywhere() {
    use dispersy_core::identity::{CommunityId, KeyPair};
    use dispersy_core::wire::{self, CommunityMessage, Conversion, SignedMessage};

    let plugins = plugin_dir(&["example_community"]);
    let (a, b) = pair(plugins.path(), EXAMPLE).await;
    // One author, one global time, two payloads: two versions of "one message".
    let author = KeyPair::from_secret(&[42; 32]).unwrap();
    let version = |text: &str| {
        let payload = [
            &[text.len() as u8][..],
            text.as_bytes(),
            &7i64.to_be_bytes(),
        ]
        .concat();
        SignedMessage::sign(
            CommunityMessage {
                community: CommunityId::from_hex(EXAMPLE).unwrap(),
                message_type: 2,
                conversion: Conversion::version(1).unwrap(),
                authors: vec![author.public().clone()],
                global_time: 5,
                sequence_number: None,
                resolution_index: None,
                relay_hops: None,
                payload,
                authority: None,
            },
            &[&author],
        )
        .unwrap()
    };
    let (one, two) = (version("one"), version("two"));
    let winner = if one.packet > two.packet {
        "one"
    } else {
        "two"
    };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .send_to(&wire::encode_collection(0, &[&one.packet]), a.udp)
        .unwrap();
    socket
        .send_to(&wire::encode_collection(0, &[&two.packet]), b.udp)
        .unwrap();
    let key = author.public().to_hex();
    wait_until(
        Duration::from_secs(60),
        "both nodes to keep the same version",
        || async {
            stored_text(&a, &key).await.as_deref() == Some(winner)
                && stored_text(&b, &key).await.as_deref() == Some(winner)
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// The text of the stored post by `key` at `node`, if any.
async fn stored_text(node: &integration_tests::TestNode, key: &str) -> Option<String> {
    let page = node
        .get(&format!("/v1/communities/{EXAMPLE}/messages?stored=true"))
        .await;
    page["messages"]
        .as_array()?
        .iter()
        .find(|m| m["public_key"] == key)
        .and_then(|m| m["payload"]["text"].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_sync_keeps_only_the_newest_profile_everywhere() {
    let plugins = plugin_dir(&["probe_community"]);
    let a = integration_tests::TestNode::start(plugins.path(), |_| {}).await;
    let path = format!("/v1/communities/{PROBE}/messages");
    for version in 0..5u64 {
        let body = json!({"meta": "profile", "payload": {"text": format!("profile v{version}"), "amount": version}});
        a.client.post(&path, &body).await.unwrap();
    }
    let profiles = |node: &integration_tests::TestNode| {
        let node = node.client.clone();
        let path = format!("{path}?stored=true");
        async move {
            let page = node.get(&path).await.unwrap();
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["meta"] == "profile")
                .map(|m| m["payload"]["text"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    wait_until(Duration::from_secs(10), "A to keep one profile", || async {
        profiles(&a).await == vec!["profile v4".to_owned()]
    })
    .await;
    let a_udp = a.udp;
    let b =
        integration_tests::TestNode::start(plugins.path(), |c| c.peers = vec![a_udp.to_string()])
            .await;
    wait_until(
        Duration::from_secs(60),
        "B to get the newest profile",
        || async { profiles(&b).await == vec!["profile v4".to_owned()] },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_shouts_reach_peers_the_author_did_not_send_them_to() {
    use integration_tests::TestNode;
    let plugins = plugin_dir(&["probe_community"]);
    let a = TestNode::start(plugins.path(), |_| {}).await;
    let a_udp = a.udp;
    let b = TestNode::start(plugins.path(), |c| c.peers = vec![a_udp.to_string()]).await;
    let c = TestNode::start(plugins.path(), |c| c.peers = vec![a_udp.to_string()]).await;
    let (b_udp, c_udp) = (b.udp, c.udp);
    wait_until(
        Duration::from_secs(30),
        "the three nodes to know each other",
        || async {
            a.knows(PROBE, b_udp).await
                && a.knows(PROBE, c_udp).await
                && b.knows(PROBE, c_udp).await
                && c.knows(PROBE, b_udp).await
        },
    )
    .await;
    let path = format!("/v1/communities/{PROBE}/messages");
    const N: u64 = 10;
    for i in 0..N {
        let body = json!({"meta": "shout", "payload": {"text": format!("shout {i}"), "amount": i}});
        let created = a.client.post(&path, &body).await.unwrap();
        // Sent to one peer only.
        assert_eq!(created["sent_to"], 1, "{created}");
    }
    let shouts = |node: &TestNode| {
        let client = node.client.clone();
        async move {
            client.get("/v1/communities").await.unwrap()[0]["plugin"]["status"]["shouts"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    wait_until(
        Duration::from_secs(20),
        "B and C to get every shout",
        || async { shouts(&b).await == N && shouts(&c).await == N },
    )
    .await;
    let relayed = |node: &TestNode| {
        let client = node.client.clone();
        async move {
            client.get("/v1/communities").await.unwrap()[0]["stats"]["relayed"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    assert!(relayed(&b).await + relayed(&c).await >= N);
    // Handled once each: the copies coming back were recognised.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shouts(&b).await, N);
    assert_eq!(shouts(&c).await, N);
    assert_eq!(shouts(&a).await, N);
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacts_are_co_signed_and_each_pair_keeps_its_newest() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    let path = format!("/v1/communities/{PROBE}/messages");
    let pact = |amount: i64| {
        json!({
            "meta": "pact",
            "payload": {"text": format!("pact {amount}"), "amount": amount},
            "co_signer": {"public_key": b.member(), "address": b.udp.to_string()},
        })
    };
    for amount in [1, 2] {
        let created = a.client.post(&path, &pact(amount)).await.unwrap();
        assert!(created["global_time"].as_u64().is_some(), "{created}");
    }
    // Without a co-signer a double-member meta cannot be created.
    let alone = json!({"meta": "pact", "payload": {"text": "alone", "amount": 1}});
    let refused = a.client.post(&path, &alone).await.unwrap_err().to_string();
    assert!(refused.contains("co-signer"), "{refused}");
    let stored_pacts = |node: &integration_tests::TestNode| {
        let client = node.client.clone();
        let path = format!("{path}?stored=true");
        async move {
            let page = client.get(&path).await.unwrap();
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["meta"] == "pact")
                .map(|m| m["payload"]["amount"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    wait_until(
        Duration::from_secs(30),
        "both to keep the newest pact of the pair",
        || async { stored_pacts(&a).await == vec![2] && stored_pacts(&b).await == vec![2] },
    )
    .await;
    // B's plugin refuses to co-sign a negative amount: A's call times out, nothing is kept.
    let refused = a
        .client
        .post(&path, &pact(-1))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.starts_with("HTTP 504"), "{refused}");
    assert_eq!(stored_pacts(&a).await, vec![2]);
    assert_eq!(stored_pacts(&b).await, vec![2]);
    a.stop().await;
    b.stop().await;
}
