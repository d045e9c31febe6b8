//! Live upgrade of a plugin (`POST /v1/plugins/upgrade`): a newer build of a running community's
//! plugin takes over without a restart of the node or of its other communities, and without
//! losing a stored message or one that arrives during the switch; downgrades are refused unless
//! asked for. `plugins/upgrade-v2` is the example community built as version 0.2.0.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::{EXAMPLE, PROBE, TestNode, pair, plugin_dir, plugin_file, wait_until};
use serde_json::{Value, json};

/// `POST /v1/plugins/upgrade` with `body` on `node`: status and JSON answer.
async fn upgrade(node: &TestNode, body: Value) -> (u16, Value) {
    node.call("POST", "/v1/plugins/upgrade", Some(body)).await
}

/// The `plugin` view of `community` at `node`.
async fn plugin(node: &TestNode, community: &str) -> Value {
    node.community(community).await["plugin"].clone()
}

/// The amounts of the posts stored at `node`, in row order.
async fn stored_amounts(node: &TestNode) -> Vec<u64> {
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    let mut since = 0;
    let mut amounts = Vec::new();
    loop {
        let page = node
            .get(&format!("{path}?stored=true&since={since}&limit=100"))
            .await;
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            return amounts;
        }
        for m in &messages {
            amounts.push(m["payload"]["amount"].as_u64().unwrap());
        }
        since = page["next"].as_u64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_version_takes_over_while_a_peer_sends_and_nothing_is_lost() {
    let plugins = plugin_dir(&["example_community", "probe_community"]);
    let (a, b) = pair(plugins.path(), EXAMPLE).await;
    let a_udp = a.udp;
    wait_until(Duration::from_secs(20), "the probe candidates", || async {
        b.knows(PROBE, a_udp).await
    })
    .await;
    let probe_before = plugin(&b, PROBE).await;
    assert_eq!(plugin(&b, EXAMPLE).await["version"], "0.1.0");

    // A sends posts continuously; B upgrades in the middle of it.
    const N: u64 = 120;
    let sender = {
        let client = a.client.clone();
        tokio::spawn(async move {
            let path = format!("/v1/communities/{EXAMPLE}/messages");
            for i in 0..N {
                let body =
                    json!({"meta": "post", "payload": {"text": format!("post {i}"), "amount": i}});
                client.post(&path, &body).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_until(
        Duration::from_secs(20),
        "B to handle some posts",
        || async {
            plugin(&b, EXAMPLE).await["status"]["posts"]
                .as_u64()
                .is_some_and(|n| n >= 20)
        },
    )
    .await;
    let v2 = plugin_file("upgrade_v2_community");
    let (code, report) = upgrade(&b, json!({"path": v2})).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["version"], "0.2.0", "{report}");
    assert_eq!(report["health"]["version"], "0.2.0", "{report}");
    assert_eq!(report["health"]["previous_version"], "0.1.0", "{report}");
    assert_eq!(report["health"]["upgrades"], 1, "{report}");
    sender.await.unwrap();

    // Every post sent is stored at B and handled by it exactly once (restore + live).
    wait_until(Duration::from_secs(60), "B to have every post", || async {
        plugin(&b, EXAMPLE).await["status"]["posts"] == N
    })
    .await;
    let mut stored = stored_amounts(&b).await;
    stored.sort_unstable();
    assert_eq!(stored, (0..N).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = plugin(&b, EXAMPLE).await;
    assert_eq!(view["status"]["posts"], N, "{view}");
    assert_eq!(
        view["status"]["version"], "0.2.0",
        "the new code answers: {view}"
    );
    assert_eq!(view["version"], "0.2.0", "{view}");
    assert_eq!(view["previous_version"], "0.1.0", "{view}");
    assert_eq!(view["state"], "live", "{view}");

    // The other community was not touched.
    let probe_after = plugin(&b, PROBE).await;
    for field in [
        "state",
        "restarts",
        "operator_restarts",
        "version",
        "upgrades",
    ] {
        assert_eq!(
            probe_after[field], probe_before[field],
            "{field}: {probe_after}"
        );
    }
    assert_eq!(probe_after["upgrades"], 0);

    // The plugin list shows both versions.
    let list = b.get("/v1/plugins").await;
    let entries: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["community"] == EXAMPLE)
        .collect();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["version"], "0.2.0", "{list}");
    assert_eq!(entries[0]["health"]["previous_version"], "0.1.0", "{list}");

    // The same version again, or an older one: refused, unless asked for.
    let (code, error) = upgrade(&b, json!({"path": v2})).await;
    assert_eq!(code, 409, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("not newer"),
        "{error}"
    );
    let v1 = plugin_file("example_community");
    let (code, error) = upgrade(&b, json!({"path": v1})).await;
    assert_eq!(code, 409, "{error}");
    let (code, report) = upgrade(&b, json!({"path": v1, "allow_downgrade": true})).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["health"]["version"], "0.1.0", "{report}");
    assert_eq!(report["health"]["previous_version"], "0.2.0", "{report}");
    let view = plugin(&b, EXAMPLE).await;
    assert_eq!(view["status"]["posts"], N, "restored again: {view}");
    assert_eq!(view["status"]["version"], "0.1.0", "{view}");
    let metrics = b.metrics().await;
    assert!(
        metrics.contains(&format!(
            "dispersy_plugin_upgrades_total{{community=\"{EXAMPLE}\"}} 2"
        )),
        "{metrics}"
    );

    // A community this node does not run: 404.
    let (code, error) = upgrade(&a, json!({"community": "00".repeat(20)})).await;
    assert_eq!(code, 404, "{error}");
    a.stop().await;
    b.stop().await;
}
