//! What a plugin built against plugin-api 0.2.0 gets on this host (plugin-api CHANGELOG, 0.2.1),
//! with a real old plugin: `plugins/legacy/plugin`, compiled against a frozen copy of 0.2.0's raw
//! ABI (package `dispersy-plugin-api` 0.2.0, `plugins/legacy/api-0.2.0`). It has none of the
//! calls 0.2.1 appended (`restore`, `live`, `retire`, `payload_from_json_in` on its side, and it
//! knows no `read` or `send_in` of the host). Claims tested:
//! - it loads, beside a plugin built against 0.2.1, in the loader and in a node (abi_stable's
//!   own check refuses it, since its vtables are shorter than the host's: the loader takes a
//!   plugin of an older patch release when the check passes the other way round,
//!   `dispersy_node::plugin::load`);
//! - a message created through the API is encoded by its `payload_from_json` (the host falls
//!   back from the absent `payload_from_json_in`; the plugin's refusals still come through),
//!   stored, synchronised and handled by the other node's old plugin; its own `HostApi::send`
//!   (a 0.2.0 host call) works;
//! - after a restart of the node it gets no history (its count is 0) while the stored messages
//!   stay in the store (`GET .../messages?stored=true`), and a message synchronised after the
//!   restart is handled;
//! - disable, enable and restart work on it (the absent `retire` is nothing: no error).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispersy_node::plugin;
use integration_tests::{EXAMPLE, TestNode, pair, plugin_dir, plugin_file, wait_until};
use serde_json::{Value, json};

/// The legacy community's id (from its master key, `plugins/legacy/plugin`).
const LEGACY: &str = "3cf0736cf711d8f1bcf7e4dc38aa2c18408c974d";

/// How long a message may take to reach a node's plugin.
const DELIVERY: Duration = Duration::from_secs(20);

/// The legacy community's entry in `node`'s `GET /v1/communities`: its `plugin` view.
async fn plugin_view(node: &TestNode) -> Value {
    node.community(LEGACY).await["plugin"].clone()
}

/// The old plugin's own `status()`.
async fn status(node: &TestNode) -> Value {
    plugin_view(node).await["status"].clone()
}

/// How many messages the plugin at `node` handled (`None` while it cannot tell).
async fn handled(node: &TestNode) -> Option<u64> {
    status(node).await["handled"].as_u64()
}

/// The texts the plugin at `node` handled, in order.
async fn texts(node: &TestNode) -> Vec<String> {
    strings(&status(node).await["texts"])
}

/// `POST /v1/communities/LEGACY/messages` of a `text`: the status and the answer.
async fn create(node: &TestNode, text: &str) -> (u16, Value) {
    node.call(
        "POST",
        &format!("/v1/communities/{LEGACY}/messages"),
        Some(json!({"meta": "text", "payload": {"text": text}})),
    )
    .await
}

/// The texts of the legacy community's stored messages at `node`, sorted.
async fn stored(node: &TestNode) -> Vec<String> {
    let page = node
        .get(&format!("/v1/communities/{LEGACY}/messages?stored=true"))
        .await;
    let mut texts: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["meta"], "text", "{m}");
            m["payload"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    texts.sort();
    texts
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(texts: &[&str]) -> Vec<String> {
    let mut texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    texts.sort();
    texts
}

/// No plugin call of the old instance failed (an absent method that was not silently skipped
/// would show here).
async fn assert_no_errors(node: &TestNode) {
    let view = plugin_view(node).await;
    assert_eq!(view["errors"], 0, "{view}");
    assert_eq!(view["last_error"], Value::Null, "{view}");
    assert_eq!(view["failed"], Value::Null, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_plugin_loads_and_its_messages_are_created_synchronised_and_handled() {
    // The loader takes it, and a plugin built against 0.2.1 after it (checking an old plugin
    // leaves abi_stable's process-wide record of checked types as it was).
    for name in ["legacy_plugin", "example_community"] {
        let module = plugin::load(&plugin_file(name));
        assert!(module.is_ok(), "{:?}", module.err().map(|e| e.to_string()));
    }

    // Beside a plugin built against 0.2.1, in two nodes.
    let plugins = plugin_dir(&["legacy_plugin", "example_community"]);
    let (a, b) = pair(plugins.path(), LEGACY).await;
    for node in [&a, &b] {
        let report = node.plugin_report(LEGACY).await;
        assert_eq!(report["name"], "legacy", "{report}");
        assert_eq!(report["error"], Value::Null, "{report}");
        assert!(
            node.community(EXAMPLE).await.is_object(),
            "{}",
            node.get("/v1/plugins").await
        );
        assert_eq!(plugin_view(node).await["state"], "live");
    }

    // Created through the API (its `payload_from_json`), stored, sent, handled on both nodes.
    let (code, created) = create(&a, "hello").await;
    assert_eq!(code, 201, "{created}");
    // The plugin's refusal of a payload reaches the caller through the fallback.
    let (code, refused) = a
        .call(
            "POST",
            &format!("/v1/communities/{LEGACY}/messages"),
            Some(json!({"meta": "text", "payload": {"words": 1}})),
        )
        .await;
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("expected"),
        "{refused}"
    );
    // "send world": A's handler sends "world" itself through `HostApi::send`.
    let (code, created) = create(&a, "send world").await;
    assert_eq!(code, 201, "{created}");
    let all = sorted(&["hello", "send world", "world"]);
    for node in [&a, &b] {
        wait_until(DELIVERY, "three texts handled", || async {
            handled(node).await == Some(3)
        })
        .await;
        let mut seen = texts(node).await;
        seen.sort();
        assert_eq!(seen, all);
        assert_eq!(stored(node).await, all);
    }
    assert_eq!(status(&a).await["sent"], 1);
    assert_eq!(
        status(&b).await["sent"],
        0,
        "a synchronised `send` is not acted on"
    );

    // B away: A creates a message B can only get by synchronisation when it is back.
    let data = b.stop_keeping_data().await;
    let (code, created) = create(&a, "while away").await;
    assert_eq!(code, 201, "{created}");
    let a_udp = a.udp;
    let b = TestNode::start_in(data, plugins.path(), |c| c.peers = vec![a_udp.to_string()]).await;
    wait_until(DELIVERY, "B synchronises the message", || async {
        handled(&b).await == Some(1)
    })
    .await;
    // No history was given to the new instance: only what arrived after the restart.
    assert_eq!(texts(&b).await, ["while away"]);
    let mut all_four = all.clone();
    all_four.push("while away".to_owned());
    all_four.sort();
    assert_eq!(stored(&b).await, all_four);
    for node in [&a, &b] {
        assert_no_errors(node).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_plugin_gets_no_history_after_a_restart_and_takes_the_lifecycle_calls() {
    let plugins = plugin_dir(&["legacy_plugin"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    for text in ["one", "two"] {
        let (code, created) = create(&node, text).await;
        assert_eq!(code, 201, "{created}");
    }
    wait_until(DELIVERY, "both handled", || async {
        handled(&node).await == Some(2)
    })
    .await;

    // A restart of the node: the old plugin's count is 0 (no `restore`), the store kept both.
    let data = node.stop_keeping_data().await;
    let node = TestNode::start_in(data, plugins.path(), |_| {}).await;
    wait_until(DELIVERY, "the new instance live", || async {
        plugin_view(&node).await["state"] == "live"
    })
    .await;
    let after = status(&node).await;
    assert_eq!(after["handled"], 0, "{after}");
    assert_eq!(after["texts"], json!([]), "{after}");
    assert_eq!(stored(&node).await, sorted(&["one", "two"]));
    assert_no_errors(&node).await;

    // Disable (the absent `retire` is nothing), enable: a new instance, again without history.
    let base = format!("/v1/communities/{LEGACY}");
    let (code, health) = node.call("POST", &format!("{base}/disable"), None).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["state"], "disabled", "{health}");
    let (code, health) = node.call("POST", &format!("{base}/enable"), None).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["state"], "live", "{health}");
    assert_eq!(handled(&node).await, Some(0));
    let (code, created) = create(&node, "three").await;
    assert_eq!(code, 201, "{created}");
    wait_until(DELIVERY, "the enabled instance handles it", || async {
        texts(&node).await == ["three"]
    })
    .await;

    // Restart of the community: a new instance, counted, without history.
    let (code, health) = node.call("POST", &format!("{base}/restart"), None).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["operator_restarts"], 1, "{health}");
    assert_eq!(health["restarts"], 0, "{health}");
    assert_eq!(handled(&node).await, Some(0));
    assert_eq!(stored(&node).await, sorted(&["one", "three", "two"]));
    assert_no_errors(&node).await;
    node.stop().await;
}
