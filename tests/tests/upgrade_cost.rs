//! What a live upgrade costs in memory, since old plugin code is never unloaded (abi_stable leaks
//! libraries on purpose). In its own test binary, so that no other test's node shares the process
//! whose memory it measures.

#![allow(clippy::unwrap_used)]

use integration_tests::{EXAMPLE, TestNode, plugin_dir, plugin_file};
use serde_json::{Value, json};

/// `POST /v1/plugins/upgrade` with `body` on `node`: status and JSON answer.
async fn upgrade(node: &TestNode, body: Value) -> (u16, Value) {
    node.call("POST", "/v1/plugins/upgrade", Some(body)).await
}

/// The resident memory of this process (the nodes run in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What an upgrade costs, since old code is never unloaded: the first switch to a new build
/// maps its library once; switching between builds already mapped maps nothing new and leaks
/// only the retired instance. Printed (run with `--nocapture`), bounded generously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_upgrades_cost_little_memory() {
    let plugins = plugin_dir(&["example_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let v1 = plugin_file("example_community");
    let v2 = plugin_file("upgrade_v2_community");
    let before = rss_kib();
    let (code, report) = upgrade(&node, json!({"path": v2})).await;
    assert_eq!(code, 200, "{report}");
    let first = rss_kib();
    const CYCLES: u64 = 20;
    for _ in 0..CYCLES {
        let (code, report) = upgrade(&node, json!({"path": v1, "allow_downgrade": true})).await;
        assert_eq!(code, 200, "{report}");
        let (code, report) = upgrade(&node, json!({"path": v2})).await;
        assert_eq!(code, 200, "{report}");
    }
    let after = rss_kib();
    let per_switch = after.saturating_sub(first) / (2 * CYCLES);
    eprintln!(
        "RSS: {before} KiB before, {first} KiB after the first upgrade (+{} KiB), {after} KiB after {} more switches (+{per_switch} KiB each)",
        first.saturating_sub(before),
        2 * CYCLES
    );
    assert_eq!(
        node.community(EXAMPLE).await["plugin"]["upgrades"],
        1 + 2 * CYCLES
    );
    assert!(per_switch < 1024, "{per_switch} KiB per switch");
    node.stop().await;
}
