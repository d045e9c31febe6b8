//! Isolation from plugins that hang or panic: a handler that never returns leaves its community
//! stuck (reported, its deliveries dropped and counted, API calls refused at once) while the other
//! communities go on and the node still stops; a panicking community is restarted, then fails.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use dispersy_core::stats::DropReason;
use integration_tests::{EXAMPLE, FAULTY, TestNode, pair_with, plugin_dir, wait_until};
use serde_json::{Value, json};

/// The faulty community's `plugin` entry on `node`.
async fn faulty(node: &TestNode) -> Value {
    node.community(FAULTY).await["plugin"].clone()
}

/// Makes the other node's faulty handler loop until `release` exists.
async fn hang(sender: &TestNode, release: &Path) {
    let stage = format!("loop:{}", release.display());
    let created = sender
        .client
        .post(
            &format!("/v1/communities/{FAULTY}/messages"),
            &json!({"meta": "boom", "payload": {"stage": stage}}),
        )
        .await
        .unwrap();
    assert_eq!(created["sent_to"], 1, "{created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_handler_is_reported_and_the_node_goes_on_and_stops() {
    let plugins = plugin_dir(&["example_community", "faulty_community"]);
    let flags = tempfile::tempdir().unwrap();
    let (a, b) = pair_with(plugins.path(), EXAMPLE, |c| {
        c.limits.plugin_call_deadline_ms = 300;
    })
    .await;
    let b_udp = b.udp;
    wait_until(Duration::from_secs(20), "the faulty candidates", || async {
        a.knows(FAULTY, b_udp).await
    })
    .await;

    // B's faulty handler loops: B reports the community stuck, with the call and since when.
    let release = flags.path().join("release-1");
    hang(&a, &release).await;
    wait_until(
        Duration::from_secs(10),
        "B's faulty community stuck",
        || async { faulty(&b).await["state"] == "stuck" },
    )
    .await;
    let plugin = faulty(&b).await;
    assert!(
        plugin["reason"].as_str().unwrap().contains("`handle`"),
        "{plugin}"
    );
    assert!(plugin["since_ms"].as_u64().unwrap() > 0, "{plugin}");
    let entry = b.plugin_report(FAULTY).await;
    assert_eq!(entry["health"]["state"], "stuck", "{entry}");
    let metrics = b.metrics().await;
    assert!(
        metrics.contains(&format!(
            "dispersy_plugin_state{{community=\"{FAULTY}\",state=\"stuck\"}} 1"
        )),
        "{metrics}"
    );

    // An API call to it is refused at once, naming it.
    let asked = Instant::now();
    let (status, text) = b
        .client
        .raw(
            "POST",
            &format!("/v1/communities/{FAULTY}/messages"),
            Some(json!({"meta": "boom", "payload": {"stage": "none"}}).to_string()),
            Some(b.client.token()),
        )
        .await
        .unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("community faulty is stuck"), "{text}");
    assert!(asked.elapsed() < Duration::from_secs(5), "answered at once");

    // Its deliveries are dropped and counted instead of queued.
    a.client
        .post(
            &format!("/v1/communities/{FAULTY}/messages"),
            &json!({"meta": "boom", "payload": {"stage": "none"}}),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "a delivery dropped as stuck",
        || async {
            faulty(&b).await["dropped"][DropReason::PluginStuck.as_str()]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    )
    .await;
    assert!(b.dropped(DropReason::PluginStuck).await >= 1);

    // The other community keeps working, both ways.
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    a.client
        .post(
            &path,
            &json!({"meta": "example", "payload": {"text": "hello", "amount": 1}}),
        )
        .await
        .unwrap();
    b.client
        .post(
            &path,
            &json!({"meta": "example", "payload": {"text": "still here", "amount": 2}}),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "example messages", || async {
        b.community(EXAMPLE).await["plugin"]["status"]["received"] == 1
            && a.community(EXAMPLE).await["plugin"]["status"]["received"] == 1
    })
    .await;
    assert_eq!(b.community(EXAMPLE).await["plugin"]["state"], "live");

    // When the call returns, the community is live again.
    std::fs::write(&release, b"").unwrap();
    wait_until(
        Duration::from_secs(10),
        "B's faulty community live",
        || async { faulty(&b).await["state"] == "live" },
    )
    .await;

    // Stuck again, then stopped: shutdown finishes (the thread is left behind).
    let release = flags.path().join("release-2");
    hang(&a, &release).await;
    wait_until(Duration::from_secs(10), "B stuck again", || async {
        faulty(&b).await["state"] == "stuck"
    })
    .await;
    let stopping = Instant::now();
    b.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    // Lets the thread left behind end.
    std::fs::write(&release, b"").unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_community_is_restarted_then_fails_after_its_restarts() {
    let plugins = plugin_dir(&["example_community", "faulty_community"]);
    let (a, b) = pair_with(plugins.path(), FAULTY, |c| {
        c.limits.plugin_restarts = 1;
        c.limits.plugin_restart_backoff_ms = 100;
    })
    .await;
    let boom = format!("/v1/communities/{FAULTY}/messages");
    let panic = json!({"meta": "boom", "payload": {"stage": "handle"}});

    // The first panic: restarted with a new instance, which works.
    a.client.post(&boom, &panic).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "B's faulty community restarted",
        || async {
            let plugin = faulty(&b).await;
            plugin["restarts"] == 1 && plugin["state"] == "live"
        },
    )
    .await;
    a.client
        .post(
            &boom,
            &json!({"meta": "boom", "payload": {"stage": "none"}}),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the new instance to handle",
        || async { faulty(&b).await["status"]["handled"] == 1 },
    )
    .await;

    // The second: its restarts are used up, it stays failed with the reason.
    a.client.post(&boom, &panic).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "B's faulty community failed",
        || async { faulty(&b).await["state"] == "failed" },
    )
    .await;
    let plugin = faulty(&b).await;
    assert!(
        plugin["reason"]
            .as_str()
            .unwrap()
            .contains("panic in handle"),
        "{plugin}"
    );
    assert!(
        plugin["failed"]
            .as_str()
            .unwrap()
            .contains("panic in handle"),
        "{plugin}"
    );
    assert_eq!(plugin["restarts"], 1);
    let (status, text) = b
        .client
        .raw(
            "POST",
            &boom,
            Some(json!({"meta": "boom", "payload": {"stage": "none"}}).to_string()),
            Some(b.client.token()),
        )
        .await
        .unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("failed"), "{text}");
    // The example community never noticed.
    assert_eq!(b.community(EXAMPLE).await["plugin"]["state"], "live");
    a.stop().await;
    b.stop().await;
}
