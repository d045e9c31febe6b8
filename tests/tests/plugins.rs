//! Plugin containment and ABI checks.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispersy_node::plugin;
use integration_tests::{
    EXAMPLE, FAULTY, TestNode, pair, pair_with, plugin_dir, plugin_file, wait_until,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_fails_alone() {
    let plugins = plugin_dir(&["example_community", "faulty_community"]);
    // No restart: the first panic fails the community (restarts: tests/tests/stuck.rs).
    let (a, b) = pair_with(plugins.path(), EXAMPLE, |c| c.limits.plugin_restarts = 0).await;
    let b_udp = b.udp;
    wait_until(
        Duration::from_secs(20),
        "the faulty community's candidates",
        || async { a.knows(FAULTY, b_udp).await },
    )
    .await;
    let boom = format!("/v1/communities/{FAULTY}/messages");

    // A panic while the plugin encodes a payload: an API error, nothing else.
    let (status, text) = a
        .client
        .raw(
            "POST",
            &boom,
            Some(json!({"meta": "boom", "payload": {"stage": "encode"}}).to_string()),
            Some(a.client.token()),
        )
        .await
        .unwrap();
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("plugin panicked: faulty plugin: panic in encode"),
        "{text}"
    );

    // B's faulty community panics while handling A's message.
    let created = a
        .client
        .post(
            &boom,
            &json!({"meta": "boom", "payload": {"stage": "handle"}}),
        )
        .await
        .unwrap();
    assert_eq!(created["sent_to"], 1);
    wait_until(
        Duration::from_secs(10),
        "B's faulty community to report its panic",
        || async { b.community(FAULTY).await["plugin"]["failed"].is_string() },
    )
    .await;
    let faulty = b.community(FAULTY).await;
    let failed = faulty["plugin"]["failed"].as_str().unwrap();
    assert!(failed.contains("panic in handle"), "{faulty}");
    assert!(faulty["plugin"]["errors"].as_u64().unwrap() >= 1);
    assert_eq!(faulty["plugin"]["state"], "failed", "{faulty}");
    // Its status now reports the poisoning instead of calling into the broken instance.
    assert!(
        faulty["plugin"]["status"]["error"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{faulty}"
    );

    // The host and the example community keep working, both ways.
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    a.client
        .post(
            &path,
            &json!({"meta": "example", "payload": {"text": "still here", "amount": 1}}),
        )
        .await
        .unwrap();
    b.client
        .post(
            &path,
            &json!({"meta": "example", "payload": {"text": "me too", "amount": 2}}),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "example messages after the panic",
        || async {
            b.community(EXAMPLE).await["plugin"]["status"]["received"] == 1
                && a.community(EXAMPLE).await["plugin"]["status"]["received"] == 1
        },
    )
    .await;
    assert_eq!(
        b.community(EXAMPLE).await["plugin"]["failed"],
        serde_json::Value::Null
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_another_abi_is_refused_and_the_others_load() {
    let plugins = plugin_dir(&["example_community", "mismatch_plugin"]);
    // A file that is not a library at all.
    std::fs::write(
        plugins.path().join("libnot_a_plugin.so"),
        b"not an ELF file",
    )
    .unwrap();
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let list = node.get("/v1/plugins").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let mismatch = list
        .iter()
        .find(|p| {
            p["path"]
                .as_str()
                .unwrap()
                .ends_with("libmismatch_plugin.so")
        })
        .unwrap();
    let error = mismatch["error"].as_str().unwrap();
    assert!(error.contains("incompatible plugin ABI"), "{error}");
    assert!(error.contains("libmismatch_plugin.so"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
    let not_a_plugin = list
        .iter()
        .find(|p| p["path"].as_str().unwrap().ends_with("libnot_a_plugin.so"))
        .unwrap();
    let error = not_a_plugin["error"].as_str().unwrap();
    assert!(
        error.starts_with("plugin ") && error.contains("libnot_a_plugin.so"),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");
    let example = list.iter().find(|p| p["name"] == "example").unwrap();
    assert_eq!(example["error"], serde_json::Value::Null);
    assert_eq!(example["community"], EXAMPLE);
    assert!(node.community(EXAMPLE).await.is_object());
    node.stop().await;

    // The loader's error, used by the host's log line, is one line naming the file.
    let error = plugin::load(&plugin_file("mismatch_plugin"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("mismatch_plugin"), "{error}");
    assert!(!error.contains('\n'), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_communities_in_one_host_and_plugins_loaded_once_per_file() {
    let plugins = plugin_dir(&["example_community", "faulty_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let communities = node.get("/v1/communities").await;
    let names: Vec<&str> = communities
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"example") && names.contains(&"faulty"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_dropped_into_the_folder_of_a_running_host_is_deployed() {
    let plugins = plugin_dir(&["example_community"]);
    let node = TestNode::start(plugins.path(), |c| c.plugin_scan_interval_ms = 100).await;
    assert!(node.community(FAULTY).await.is_null());

    // Deploy: copy the file in (under a temporary name first, as an operator would).
    let file = plugin_file("faulty_community");
    let staging = plugins.path().join("staging.tmp");
    std::fs::copy(&file, &staging).unwrap();
    std::fs::rename(&staging, plugins.path().join("libfaulty_community.so")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the new community to be joined",
        || async { node.community(FAULTY).await["name"] == "faulty" },
    )
    .await;
    // It works: its plugin answers the API.
    let created = node
        .client
        .post(
            &format!("/v1/communities/{FAULTY}/messages"),
            &json!({"meta": "boom", "payload": {"stage": "none"}}),
        )
        .await
        .unwrap();
    assert_eq!(created["sent_to"], 0);

    // Loading a file explicitly: only from a plugin folder (refused before it is opened).
    for path in [
        plugin_file("mismatch_plugin"),
        std::path::PathBuf::from("/etc/passwd"),
    ] {
        let (status, text) = node
            .client
            .raw(
                "POST",
                "/v1/plugins",
                Some(json!({"path": path}).to_string()),
                Some(node.client.token()),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("is not in a plugin folder"), "{text}");
    }
    // In the folder, an incompatible one is refused in one line, a second copy of a loaded
    // one too.
    let second = plugins.path().join("libfaulty_again.so");
    std::fs::copy(&file, &second).unwrap();
    let mismatch = plugins.path().join("libmismatch_plugin.so");
    std::fs::copy(plugin_file("mismatch_plugin"), &mismatch).unwrap();
    let (status, text) = node
        .client
        .raw(
            "POST",
            "/v1/plugins",
            Some(json!({"path": mismatch}).to_string()),
            Some(node.client.token()),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("incompatible plugin ABI"), "{text}");
    let (status, text) = node
        .client
        .raw(
            "POST",
            "/v1/plugins",
            Some(json!({"path": second}).to_string()),
            Some(node.client.token()),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("already provided by"), "{text}");
    // The example community was never disturbed.
    assert_eq!(
        node.community(EXAMPLE).await["plugin"]["failed"],
        serde_json::Value::Null
    );
    node.stop().await;
}

/// The report of the example plugin in `GET /v1/plugins`.
async fn example_report(node: &TestNode) -> serde_json::Value {
    let list = node.get("/v1/plugins").await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["path"]
                .as_str()
                .unwrap()
                .ends_with("libexample_community.so")
        })
        .cloned()
        .unwrap()
}

/// Received example messages at `node`.
async fn received(node: &TestNode) -> u64 {
    node.community(EXAMPLE).await["plugin"]["status"]["received"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwriting_or_deleting_a_loaded_plugin_file_disturbs_nothing() {
    use sha2::{Digest, Sha256};

    let plugins = plugin_dir(&["example_community"]);
    let file = plugins.path().join("libexample_community.so");
    let original = std::fs::read(&file).unwrap();
    let (a, b) = pair(plugins.path(), EXAMPLE).await;

    // The host runs a private copy named by the content's hash, not the operator's file.
    let report = example_report(&a).await;
    let loaded = hex::encode(Sha256::digest(&original));
    assert_eq!(report["sha256"], loaded.as_str(), "{report}");
    assert_eq!(report["candidate"], serde_json::Value::Null, "{report}");
    let copy = std::path::PathBuf::from(report["copy"].as_str().unwrap());
    assert_eq!(copy.file_name().unwrap(), format!("{loaded}.so").as_str());
    assert_ne!(copy.parent().unwrap(), plugins.path());
    assert_eq!(std::fs::read(&copy).unwrap(), original);

    // Messages flow from A to B while the file is rewritten in place with another plugin's
    // bytes (what `cp other.so libexample_community.so` does).
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    let writer = {
        let client = a.client.clone();
        let path = path.clone();
        tokio::spawn(async move {
            for amount in 0..100u64 {
                let body =
                    json!({"meta": "example", "payload": {"text": "flow", "amount": amount}});
                client.post(&path, &body).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_until(Duration::from_secs(20), "the first messages", || async {
        received(&b).await >= 10
    })
    .await;
    let other = std::fs::read(plugin_file("faulty_community")).unwrap();
    std::fs::write(&file, &other).unwrap();
    let candidate = hex::encode(Sha256::digest(&other));

    // A rescan sees the change: an upgrade candidate, not loaded.
    let scanned = a.client.post("/v1/plugins", &json!({})).await.unwrap();
    assert!(
        scanned.to_string().contains(&candidate),
        "the rescan reports the candidate: {scanned}"
    );
    b.client.post("/v1/plugins", &json!({})).await.unwrap();
    for node in [&a, &b] {
        let report = example_report(node).await;
        assert_eq!(report["candidate"], candidate.as_str(), "{report}");
        assert_eq!(report["sha256"], loaded.as_str(), "{report}");
        assert_eq!(report["error"], serde_json::Value::Null, "{report}");
        assert!(node.community(FAULTY).await.is_null(), "not loaded");
    }
    writer.await.unwrap();
    wait_until(
        Duration::from_secs(20),
        "every message delivered",
        || async { received(&b).await == 100 },
    )
    .await;

    // The original content back: no candidate any more.
    std::fs::write(&file, &original).unwrap();
    a.client.post("/v1/plugins", &json!({})).await.unwrap();
    assert_eq!(
        example_report(&a).await["candidate"],
        serde_json::Value::Null
    );

    // Deleted: the community keeps running, both ways.
    std::fs::remove_file(&file).unwrap();
    a.client.post("/v1/plugins", &json!({})).await.unwrap();
    b.client
        .post(
            &path,
            &json!({"meta": "example", "payload": {"text": "after delete", "amount": 1}}),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "a message after the delete",
        || async { received(&a).await == 1 },
    )
    .await;
    for node in [&a, &b] {
        assert_eq!(
            node.community(EXAMPLE).await["plugin"]["failed"],
            serde_json::Value::Null
        );
    }
    a.stop().await;
    b.stop().await;
}
