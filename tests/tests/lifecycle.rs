//! A community's lifecycle without a host restart: disable (deliveries dropped and counted, the
//! other communities go on), enable, restart (a new instance), leave (gone, not joined again by a
//! rescan nor a restart of the node, its stored messages kept) and join again.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispersy_core::stats::DropReason;
use integration_tests::{EXAMPLE, PROBE, TestNode, pair, plugin_dir, wait_until};
use serde_json::{Value, json};

/// `method path` on `node`: status and JSON answer.
async fn call(node: &TestNode, method: &str, path: &str) -> (u16, Value) {
    node.call(method, path, None).await
}

/// Sends a direct `example` message with `text` from `from` to its peers.
async fn say(from: &TestNode, community: &str, text: &str) {
    let created = from
        .client
        .post(
            &format!("/v1/communities/{community}/messages"),
            &json!({"meta": "example", "payload": {"text": text, "amount": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(created["sent_to"], 1, "{created}");
}

async fn status(node: &TestNode) -> Value {
    node.community(EXAMPLE).await["plugin"]["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_and_restart_change_only_that_community() {
    let plugins = plugin_dir(&["example_community", "probe_community"]);
    let (a, b) = pair(plugins.path(), EXAMPLE).await;
    let a_udp = a.udp;
    wait_until(Duration::from_secs(20), "the probe candidates", || async {
        b.knows(PROBE, a_udp).await
    })
    .await;
    say(&a, EXAMPLE, "one").await;
    wait_until(Duration::from_secs(10), "B handles it", || async {
        status(&b).await["received"] == 1
    })
    .await;

    let base = format!("/v1/communities/{EXAMPLE}");
    let (code, health) = call(&b, "POST", &format!("{base}/disable")).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["state"], "disabled", "{health}");
    let (code, error) = call(&b, "POST", &format!("{base}/disable")).await;
    assert_eq!(code, 409, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("disabled"),
        "{error}"
    );
    let (code, error) = call(&b, "POST", &format!("{base}/restart")).await;
    assert_eq!(code, 409, "{error}");
    assert_eq!(b.community(EXAMPLE).await["plugin"]["state"], "disabled");
    let entry = b.plugin_report(EXAMPLE).await;
    assert_eq!(entry["health"]["state"], "disabled", "{entry}");
    let metrics = b.metrics().await;
    assert!(
        metrics.contains(&format!(
            "dispersy_plugin_state{{community=\"{EXAMPLE}\",state=\"disabled\"}} 1"
        )),
        "{metrics}"
    );

    // Disabled: still joined and walked, its deliveries dropped and counted; the probe goes on.
    let before = b.dropped(DropReason::PluginDown).await;
    say(&a, EXAMPLE, "two").await;
    wait_until(Duration::from_secs(10), "the drop counted", || async {
        b.dropped(DropReason::PluginDown).await > before
    })
    .await;
    assert!(b.community(EXAMPLE).await.is_object(), "still joined");
    say(&a, PROBE, "probe").await;
    wait_until(Duration::from_secs(10), "the probe handles it", || async {
        b.community(PROBE).await["plugin"]["status"]["received"] == 1
    })
    .await;

    // Enabled: a new instance, which handles what comes next.
    let (code, health) = call(&b, "POST", &format!("{base}/enable")).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["state"], "live", "{health}");
    let (code, error) = call(&b, "POST", &format!("{base}/enable")).await;
    assert_eq!(code, 409, "{error}");
    assert!(error["error"].as_str().unwrap().contains("live"), "{error}");
    say(&a, EXAMPLE, "three").await;
    wait_until(Duration::from_secs(10), "B handles it again", || async {
        status(&b).await["last_text"] == "three"
    })
    .await;
    let received = status(&b).await["received"].as_u64().unwrap();
    assert!(received >= 1, "{received}");

    // Restarted: a new instance again (no stored message to restore: the status is fresh),
    // counted apart from restarts after panics.
    let (code, health) = call(&b, "POST", &format!("{base}/restart")).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["operator_restarts"], 1, "{health}");
    assert_eq!(health["restarts"], 0, "{health}");
    let plugin = b.community(EXAMPLE).await["plugin"].clone();
    assert_eq!(plugin["state"], "live", "{plugin}");
    assert_eq!(plugin["status"]["received"], 0, "{plugin}");
    assert_eq!(plugin["operator_restarts"], 1, "{plugin}");
    say(&a, EXAMPLE, "four").await;
    wait_until(
        Duration::from_secs(10),
        "the new instance handles it",
        || async { status(&b).await["last_text"] == "four" },
    )
    .await;

    // Unknown and malformed ids.
    let unknown = "00".repeat(20);
    let (code, error) = call(&b, "POST", &format!("/v1/communities/{unknown}/enable")).await;
    assert_eq!(code, 404, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains(&unknown),
        "{error}"
    );
    let (code, _) = call(&b, "DELETE", &format!("/v1/communities/{unknown}")).await;
    assert_eq!(code, 404);
    let (code, _) = call(&b, "POST", "/v1/communities/nothex/disable").await;
    assert_eq!(code, 400);
    a.stop().await;
    b.stop().await;
}

/// Stored posts of `EXAMPLE` at `node`, by text.
async fn stored(node: &TestNode) -> Vec<String> {
    let page = node
        .get(&format!("/v1/communities/{EXAMPLE}/messages?stored=true"))
        .await;
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["payload"]["text"].as_str().map(str::to_owned))
        .collect()
}

fn joined(list: &Value, id: &str) -> bool {
    list.as_array().unwrap().iter().any(|c| c["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_community_stays_left_until_joined_again_and_keeps_its_messages() {
    let plugins = plugin_dir(&["example_community", "probe_community"]);
    let data = tempfile::tempdir().unwrap();
    let start = || {
        let dir = data.path().to_path_buf();
        TestNode::start(plugins.path(), move |c| c.data_dir = dir)
    };
    let node = start().await;
    node.client
        .post(
            &format!("/v1/communities/{EXAMPLE}/messages"),
            &json!({"meta": "post", "payload": {"text": "kept", "amount": 1}}),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the post stored", || async {
        stored(&node).await == ["kept"]
    })
    .await;

    let base = format!("/v1/communities/{EXAMPLE}");
    let (code, answer) = call(&node, "DELETE", &base).await;
    assert_eq!(code, 200, "{answer}");
    assert!(!joined(&node.get("/v1/communities").await, EXAMPLE));
    assert!(joined(&node.get("/v1/communities").await, PROBE));
    assert_eq!(node.plugin_report(EXAMPLE).await["health"]["state"], "left");
    let (code, _) = call(&node, "GET", &format!("{base}/messages?stored=true")).await;
    assert_eq!(code, 404);
    let (code, error) = call(&node, "DELETE", &base).await;
    assert_eq!(code, 409, "{error}");
    let (code, error) = call(&node, "POST", &format!("{base}/enable")).await;
    assert_eq!(code, 409, "{error}");
    assert!(error["error"].as_str().unwrap().contains("left"), "{error}");

    // A rescan, even of a rewritten file, does not join it again.
    let file = std::fs::read_dir(plugins.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("example"))
        .unwrap();
    let handle = std::fs::File::options().write(true).open(&file).unwrap();
    handle
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(handle);
    node.client.post("/v1/plugins", &json!({})).await.unwrap();
    assert!(!joined(&node.get("/v1/communities").await, EXAMPLE));
    assert_eq!(node.plugin_report(EXAMPLE).await["health"]["state"], "left");
    node.stop().await;

    // Nor does a restart of the node.
    let node = start().await;
    assert!(!joined(&node.get("/v1/communities").await, EXAMPLE));
    assert!(joined(&node.get("/v1/communities").await, PROBE));
    assert_eq!(node.plugin_report(EXAMPLE).await["health"]["state"], "left");

    // Joined again: its stored messages are there, and it stays joined across a restart.
    let (code, report) = call(&node, "POST", &format!("{base}/join")).await;
    assert_eq!(code, 201, "{report}");
    let (code, error) = call(&node, "POST", &format!("{base}/join")).await;
    assert_eq!(code, 409, "{error}");
    assert!(joined(&node.get("/v1/communities").await, EXAMPLE));
    assert_eq!(stored(&node).await, ["kept"]);
    node.stop().await;
    let node = start().await;
    assert!(joined(&node.get("/v1/communities").await, EXAMPLE));
    assert_eq!(stored(&node).await, ["kept"]);
    node.stop().await;
}
