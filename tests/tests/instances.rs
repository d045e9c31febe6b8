//! Communities as instances of a plugin's type: one plugin file runs its own community and any
//! number of others the operator joins with master keys of their own (`POST /v1/communities`).
//! Each is a community apart (its own id, candidates, store and plugin instance), synced between
//! nodes, joined again at start, left and joined again like any other, and upgraded with its
//! type.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::peer::key;
use integration_tests::{
    EXAMPLE, PROBE, TestNode, founder_and_peer, pair, plugin_dir, plugin_file, wait_until,
};
use serde_json::{Value, json};

/// Joins the community of master key `master` (hex) as an instance of `kind` on `node`.
async fn join(node: &TestNode, kind: &str, master: &str) -> (u16, Value) {
    node.join_instance(kind, master).await
}

/// Posts (stored, synced) of `community` at `node`, by text.
async fn posts(node: &TestNode, community: &str) -> Vec<String> {
    let page = node
        .get(&format!("/v1/communities/{community}/messages?stored=true"))
        .await;
    let mut texts: Vec<String> = page["messages"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|m| m["payload"]["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    texts.sort();
    texts
}

/// Creates a post with `text` in `community` at `node`.
async fn post(node: &TestNode, community: &str, text: &str) {
    let (code, answer) = node
        .call(
            "POST",
            &format!("/v1/communities/{community}/messages"),
            Some(json!({"meta": "post", "payload": {"text": text, "amount": 1}})),
        )
        .await;
    assert_eq!(code, 201, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_a_community_of_its_own_that_syncs_and_is_joined_again_at_start() {
    let plugins = plugin_dir(&["example_community", "probe_community"]);
    let (a, b) = pair(plugins.path(), EXAMPLE).await;
    let master = key(41);
    let hex = master.public().to_hex();
    let id = master.member_id().to_hex();
    assert_ne!(id, EXAMPLE);

    // Joined on both nodes: a community of its own, run by the example plugin.
    for node in [&a, &b] {
        let (code, report) = join(node, "example", &hex).await;
        assert_eq!(code, 201, "{report}");
        assert_eq!(report["community"], id.as_str(), "{report}");
        assert_eq!(report["name"], "example", "{report}");
        assert_eq!(report["type_community"], EXAMPLE, "{report}");
        let view = node.community(&id).await;
        assert_eq!(view["plugin"]["state"], "live", "{view}");
    }
    assert_eq!(b.plugin_report(EXAMPLE).await["instances"], 1);

    // Refusals, each a one-line error.
    let (code, error) = join(&b, "example", &hex).await;
    assert_eq!(code, 409, "{error}");
    let (code, error) = join(&b, "nosuchtype", &hex).await;
    assert_eq!(code, 404, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("nosuchtype"),
        "{error}"
    );
    let (code, error) = join(&b, "example", "02abcd").await;
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("master_key"),
        "{error}"
    );
    let (code, error) = join(&b, "example", &key(1).public().to_hex()).await;
    assert_eq!(code, 201, "a second instance: {error}");

    // Walked and synced apart from the type's own community.
    let a_udp = a.udp;
    wait_until(
        Duration::from_secs(20),
        "the instance's candidates",
        || async { b.knows(&id, a_udp).await },
    )
    .await;
    post(&a, &id, "in the instance").await;
    post(&a, EXAMPLE, "in the type's own").await;
    wait_until(Duration::from_secs(20), "both posts synced", || async {
        posts(&b, &id).await == ["in the instance"]
            && posts(&b, EXAMPLE).await == ["in the type's own"]
    })
    .await;
    let view = b.community(&id).await;
    assert_eq!(view["plugin"]["status"]["posts"], 1, "{view}");

    // A restart joins it again, restored from its store; a left instance stays left.
    let second = key(1).member_id().to_hex();
    let (code, answer) = b
        .call("DELETE", &format!("/v1/communities/{second}"), None)
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(b.plugin_report(EXAMPLE).await["instances"], 1);
    let data = b.stop_keeping_data().await;
    let b = TestNode::start_in(data, plugins.path(), |c| {
        c.peers = vec![a_udp.to_string()];
    })
    .await;
    let view = b.community(&id).await;
    assert_eq!(view["plugin"]["state"], "live", "{view}");
    assert_eq!(view["plugin"]["status"]["posts"], 1, "{view}");
    assert_eq!(posts(&b, &id).await, ["in the instance"]);
    assert!(b.community(&second).await.is_null(), "left, not rejoined");
    assert!(b.community(PROBE).await.is_object());

    // Joined again through the same call.
    let (code, report) = join(&b, "example", &key(1).public().to_hex()).await;
    assert_eq!(code, 201, "{report}");
    assert!(b.community(&second).await.is_object());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_switches_the_type_s_own_community_and_its_instances() {
    let plugins = plugin_dir(&["example_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let ids: Vec<String> = (50..53).map(|n| key(n).member_id().to_hex()).collect();
    for n in 50..53 {
        let (code, report) = join(&node, "example", &key(n).public().to_hex()).await;
        assert_eq!(code, 201, "{report}");
    }
    post(&node, &ids[0], "before").await;

    let v2 = plugin_file("upgrade_v2_community");
    let (code, report) = node
        .call("POST", "/v1/plugins/upgrade", Some(json!({"path": v2})))
        .await;
    assert_eq!(code, 200, "{report}");
    for id in ids.iter().map(String::as_str).chain([EXAMPLE]) {
        let view = node.community(id).await["plugin"].clone();
        assert_eq!(view["state"], "live", "{id}: {view}");
        assert_eq!(view["version"], "0.2.0", "{id}: {view}");
        assert_eq!(view["previous_version"], "0.1.0", "{id}: {view}");
        assert_eq!(view["status"]["version"], "0.2.0", "{id}: {view}");
    }
    // The upgraded instance kept its history; a new instance runs the new version.
    assert_eq!(
        node.community(&ids[0]).await["plugin"]["status"]["posts"],
        1
    );
    let (code, report) = join(&node, "example", &key(60).public().to_hex()).await;
    assert_eq!(code, 201, "{report}");
    assert_eq!(report["version"], "0.2.0", "{report}");
    node.stop().await;
}

/// A community counter of `community` at `node`.
async fn counter(node: &TestNode, community: &str, name: &str) -> u64 {
    node.community(community).await["stats"][name]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_key_founds_its_instance_once_and_the_authorize_reaches_the_peer() {
    let plugins = plugin_dir(&["example_community"]);
    let master = key(43);
    let hex = master.public().to_hex();
    let id = master.member_id().to_hex();
    let (a, b, keys) = founder_and_peer(plugins.path(), &master).await;
    // B joins first: A's authorize, published at its join, reaches B by push or sync.
    assert_eq!(join(&b, "example", &hex).await.0, 201);
    assert_eq!(join(&a, "example", &hex).await.0, 201);
    assert_eq!(counter(&a, &id, "messages_created").await, 1);
    assert_eq!(counter(&b, &id, "messages_created").await, 0);
    wait_until(
        Duration::from_secs(20),
        "the founding authorize to reach the peer",
        || async { counter(&b, &id, "messages_received").await >= 1 },
    )
    .await;
    b.stop().await;

    // Joined again at start, A holds its permits (rebuilt from the store): no second authorize.
    let data = a.stop_keeping_data().await;
    let founder = keys.path().join("master.key");
    let a = TestNode::start_in(data, plugins.path(), move |c| {
        c.founder_key = Some(founder);
    })
    .await;
    wait_until(
        Duration::from_secs(20),
        "the instance to be joined again",
        || async { a.community(&id).await["plugin"]["state"] == "live" },
    )
    .await;
    // The protocol task is told once the thread runs; give it that moment, then nothing new.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counter(&a, &id, "messages_created").await, 0);
    a.stop().await;
}
