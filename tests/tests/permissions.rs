//! The permission timeline through the control API, between real nodes: a founder (started with
//! the instance's master key as `founder_key`) authorizes another member to create messages of
//! a Linear meta and revokes it; every node enforces what it learnt; a member without authority
//! is refused; both nodes show the same timeline once synced.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispersy_core::identity::PublicKey;
use integration_tests::{FoundedProbe, TestNode, founded_probe, plugin_dir, wait_until};
use serde_json::{Value, json};

/// How long what only a push or sync spreads may take between two nodes.
const SPREAD: Duration = Duration::from_secs(30);

/// Creates a `linear-post` with `text` in `community` at `node`: the status and the answer.
async fn linear_post(node: &TestNode, community: &str, text: &str) -> (u16, Value) {
    node.call(
        "POST",
        &format!("/v1/communities/{community}/messages"),
        Some(json!({"meta": "linear-post", "payload": {"text": text, "amount": 1}})),
    )
    .await
}

/// `POST /v1/communities/{community}/{action}` (authorize or revoke) giving `member` `grants`
/// (meta, permission).
async fn grant(
    node: &TestNode,
    community: &str,
    action: &str,
    member: &str,
    grants: &[(&str, &str)],
) -> (u16, Value) {
    let grants: Vec<Value> = grants
        .iter()
        .map(|(meta, permission)| json!({"meta": meta, "permission": permission}))
        .collect();
    node.call(
        "POST",
        &format!("/v1/communities/{community}/{action}"),
        Some(json!({"member": member, "grants": grants})),
    )
    .await
}

/// The timeline of `community` at `node`.
async fn timeline(node: &TestNode, community: &str) -> Value {
    node.get(&format!("/v1/communities/{community}/timeline"))
        .await
}

/// Whether `member` (id hex) holds `permission` on `meta` in `node`'s timeline.
async fn holds(
    node: &TestNode,
    community: &str,
    member: &str,
    meta: &str,
    permission: &str,
) -> bool {
    timeline(node, community).await["holdings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["member"] == member && h["meta"] == meta && h["permission"] == permission)
}

/// The member id (hex) of the node's member.
fn member_id(node: &TestNode) -> String {
    PublicKey::from_hex(node.member())
        .unwrap()
        .member_id()
        .to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_authorizes_and_revokes_a_linear_meta_that_both_nodes_enforce() {
    let FoundedProbe {
        a,
        b,
        master: _master,
        id,
        plugins: _plugins,
        keys: _keys,
    } = founded_probe(51).await;
    let (a_id, b_id) = (member_id(&a), member_id(&b));
    wait_until(SPREAD, "A to hold its founding permits", || async {
        holds(&a, &id, &a_id, "linear-post", "authorize").await
    })
    .await;
    let founded = timeline(&a, &id).await;
    assert_eq!(founded["master"], id.as_str());
    assert_eq!(founded["records"].as_array().unwrap().len(), 1, "{founded}");
    assert_eq!(founded["records"][0]["author"], id.as_str());
    assert_eq!(founded["records"][0]["valid"], true);

    // B holds no permit: refused before anything is signed.
    let (code, answer) = linear_post(&b, &id, "too early").await;
    assert_eq!(code, 403, "{answer}");
    // B holds no authority: it may not grant.
    let (code, answer) = grant(
        &b,
        &id,
        "authorize",
        a.member(),
        &[("linear-post", "permit")],
    )
    .await;
    assert_eq!(code, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("authorize on linear-post"),
        "{answer}"
    );
    // Bad requests.
    for (member, meta, permission) in [
        ("zz", "linear-post", "permit"),
        (b.member(), "no-such-meta", "permit"),
        (b.member(), "linear-post", "fly"),
    ] {
        let (code, answer) = grant(&a, &id, "authorize", member, &[(meta, permission)]).await;
        assert_eq!(code, 400, "{member} {meta} {permission}: {answer}");
    }
    let (code, _) = grant(
        &a,
        &"00".repeat(20),
        "authorize",
        b.member(),
        &[("post", "permit")],
    )
    .await;
    assert_eq!(code, 404);
    // The probe community has no meta of dynamic resolution.
    let (code, answer) = a
        .call(
            "POST",
            &format!("/v1/communities/{id}/settings"),
            Some(json!({"meta": "linear-post", "policy": "public"})),
        )
        .await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("dynamic"),
        "{answer}"
    );

    // A grants B the permit; once B has the authorize, B's linear post reaches A.
    let (code, granted) = grant(
        &a,
        &id,
        "authorize",
        b.member(),
        &[("linear-post", "permit")],
    )
    .await;
    assert_eq!(code, 201, "{granted}");
    assert_eq!(granted["sequence_number"], 1);
    assert_eq!(granted["record"].as_str().unwrap().len(), 64);
    wait_until(SPREAD, "B to learn its permit", || async {
        holds(&b, &id, &b_id, "linear-post", "permit").await
    })
    .await;
    let (code, answer) = linear_post(&b, &id, "granted").await;
    assert_eq!(code, 201, "{answer}");
    wait_until(SPREAD, "A to store and handle B's linear post", || async {
        let status = &a.community(&id).await["plugin"]["status"];
        status["linear_posts"] == 1
    })
    .await;
    let stored = a
        .get(&format!("/v1/communities/{id}/messages?stored=true"))
        .await;
    assert!(
        stored["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["meta"] == "linear-post" && m["payload"]["text"] == "granted"),
        "{stored}"
    );

    // A revokes it; once B knows, B is refused again.
    let (code, revoked) = grant(&a, &id, "revoke", &b_id, &[("linear-post", "permit")]).await;
    assert_eq!(code, 201, "{revoked}");
    assert_eq!(revoked["sequence_number"], 1);
    wait_until(SPREAD, "B to learn the revoke", || async {
        !holds(&b, &id, &b_id, "linear-post", "permit").await
    })
    .await;
    let (code, answer) = linear_post(&b, &id, "revoked").await;
    assert_eq!(code, 403, "{answer}");

    // Both nodes hold the same records and draw the same conclusions.
    let a_view = timeline(&a, &id).await;
    let b_view = timeline(&b, &id).await;
    assert_eq!(a_view["records"], b_view["records"]);
    assert_eq!(a_view["holdings"], b_view["holdings"]);
    let kinds: Vec<&str> = a_view["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["authorize", "authorize", "revoke"]);
    let (code, _) = a
        .call(
            "GET",
            &format!("/v1/communities/{}/timeline", "00".repeat(20)),
            None,
        )
        .await;
    assert_eq!(code, 404);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_community_created_through_the_api_is_founded_here_and_joined_elsewhere_by_its_key() {
    let plugins = plugin_dir(&["probe_community"]);
    let a = TestNode::start(plugins.path(), |_| {}).await;
    let a_udp = a.udp;
    let b = TestNode::start(plugins.path(), |c| c.peers = vec![a_udp.to_string()]).await;
    // No master key: A creates the community, keeps the secret and founds it.
    let (code, created) = a
        .call("POST", "/v1/communities", Some(json!({"type": "probe"})))
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["created"], true);
    let hex = created["master_key"].as_str().unwrap().to_owned();
    let id = created["community"].as_str().unwrap().to_owned();
    assert_eq!(
        PublicKey::from_hex(&hex).unwrap().community_id().to_hex(),
        id
    );
    let a_id = member_id(&a);
    wait_until(SPREAD, "A to found the created community", || async {
        holds(&a, &id, &a_id, "linear-post", "authorize").await
    })
    .await;
    // The secret is private, in the data folder.
    let file = a.data_dir().join("masters").join(format!("{id}.key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    // An unknown type creates nothing and leaves no key behind.
    let (code, _) = a
        .call("POST", "/v1/communities", Some(json!({"type": "nope"})))
        .await;
    assert_eq!(code, 404);
    let keys = std::fs::read_dir(a.data_dir().join("masters"))
        .unwrap()
        .count();
    assert_eq!(keys, 1);
    // B joins by the printed key and learns A's authority through sync, not configuration.
    let (code, joined) = b.join_instance("probe", &hex).await;
    assert_eq!(code, 201, "{joined}");
    assert_eq!(joined["created"], false);
    wait_until(SPREAD, "B to learn the founder's authority", || async {
        holds(&b, &id, &a_id, "linear-post", "authorize").await
    })
    .await;
    // After a restart A is still the founder, and founds nothing twice.
    let data = a.stop_keeping_data().await;
    let a = TestNode::start_in(data, plugins.path(), |_| {}).await;
    wait_until(SPREAD, "A to rejoin the created community", || async {
        holds(&a, &id, &a_id, "linear-post", "authorize").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = timeline(&a, &id).await["records"].as_array().unwrap().len();
    assert_eq!(records, 1, "founded once");
    a.stop().await;
    b.stop().await;
}

/// The stored `linear-post`s at `node` by the member with public key `key` (hex): (text,
/// global time, denied).
async fn stored_linear_posts(
    node: &TestNode,
    community: &str,
    key: &str,
) -> Vec<(String, u64, bool)> {
    let page = node
        .get(&format!(
            "/v1/communities/{community}/messages?stored=true&limit=1000"
        ))
        .await;
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["meta"] == "linear-post" && m["public_key"] == key)
        .map(|m| {
            (
                m["payload"]["text"].as_str().unwrap().to_owned(),
                m["global_time"].as_u64().unwrap(),
                m["denied"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_reaching_back_hides_the_later_posts_on_both_nodes_and_tells_the_plugins() {
    use dispersy_core::authority::{self, Body, MemberRef, Target};
    use dispersy_core::identity::CommunityId;
    use dispersy_core::timeline::{Permission, Subject};
    use dispersy_core::wire::{self, SignedMessage};

    let FoundedProbe {
        a,
        b,
        master,
        id,
        plugins: _plugins,
        keys: _keys,
    } = founded_probe(52).await;
    let (a_id, b_id) = (member_id(&a), member_id(&b));
    wait_until(SPREAD, "A to hold its founding permits", || async {
        holds(&a, &id, &a_id, "linear-post", "authorize").await
    })
    .await;
    let (code, granted) = grant(
        &a,
        &id,
        "authorize",
        b.member(),
        &[("linear-post", "permit")],
    )
    .await;
    assert_eq!(code, 201, "{granted}");
    wait_until(SPREAD, "B to learn its permit", || async {
        holds(&b, &id, &b_id, "linear-post", "permit").await
    })
    .await;
    for text in ["one", "two", "three"] {
        let (code, answer) = linear_post(&b, &id, text).await;
        assert_eq!(code, 201, "{answer}");
    }
    wait_until(SPREAD, "A to store B's three linear posts", || async {
        stored_linear_posts(&a, &id, b.member()).await.len() == 3
    })
    .await;
    let posts = stored_linear_posts(&b, &id, b.member()).await;
    assert!(posts.iter().all(|(_, _, denied)| !denied), "{posts:?}");
    let second = posts.iter().find(|(text, _, _)| text == "two").unwrap().1;

    // The master revokes B's permit at the global time of B's second post (the test holds the
    // master key, so it may date it back): "two" and "three" lose their permission.
    let revoke = SignedMessage::sign(
        authority::message(
            CommunityId::from_hex(&id).unwrap(),
            master.public().clone(),
            second,
            Some(1),
            Body::Revoke(vec![Target {
                member: MemberRef::from_id(PublicKey::from_hex(b.member()).unwrap().member_id()),
                grants: vec![(Subject::Community(8), Permission::Permit)],
            }]),
        ),
        &[&master],
    )
    .unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for node in [&a, &b] {
        socket
            .send_to(&wire::encode_collection(0, &[&revoke.packet]), node.udp)
            .unwrap();
    }
    for (name, node) in [("A", &a), ("B", &b)] {
        wait_until(SPREAD, &format!("{name} to hide two and three"), || async {
            let mut shown: Vec<(String, bool)> = stored_linear_posts(node, &id, b.member())
                .await
                .into_iter()
                .map(|(text, _, denied)| (text, denied))
                .collect();
            shown.sort();
            shown
                == [
                    ("one".to_owned(), false),
                    ("three".to_owned(), true),
                    ("two".to_owned(), true),
                ]
        })
        .await;
        wait_until(SPREAD, &format!("{name}'s plugin to be told"), || async {
            let status = &node.community(&id).await["plugin"]["status"];
            status["linear_undone"] == 2
        })
        .await;
        let status = &node.community(&id).await["plugin"]["status"];
        assert_eq!(status["linear_redone"], 0, "{status}");
    }
    a.stop().await;
    b.stop().await;
}
