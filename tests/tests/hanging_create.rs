//! A plugin whose `create()` hangs neither stops the node from starting nor the other plugins from
//! loading: its community is reported stuck, and live once `create()` returns. (Its own test
//! binary: the faulty plugin reads the environment variable that makes `create()` hang, and no
//! other test of this process may load it meanwhile.)

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use integration_tests::{EXAMPLE, FAULTY, TestNode, plugin_dir, wait_until};

#[test]
fn a_hanging_create_does_not_stop_the_node_or_the_other_plugins() {
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("hang-create");
    std::fs::write(&flag, b"").unwrap();
    // SAFETY: the only test of this binary, and no other thread of it runs yet (the runtime is
    // built below).
    unsafe { std::env::set_var("DISPERSY_FAULTY_HANG_CREATE", &flag) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let plugins = plugin_dir(&["faulty_community", "example_community"]);
        let starting = Instant::now();
        let node = TestNode::start(plugins.path(), |c| {
            c.limits.plugin_call_deadline_ms = 300;
        })
        .await;
        assert!(
            starting.elapsed() < Duration::from_secs(30),
            "start took {:?}",
            starting.elapsed()
        );
        // The other plugin loaded and works.
        let example = node.community(EXAMPLE).await;
        assert_eq!(example["plugin"]["state"], "live", "{example}");
        // The hanging one is reported stuck in create, in both lists.
        let faulty = node.community(FAULTY).await;
        assert_eq!(faulty["plugin"]["state"], "stuck", "{faulty}");
        assert!(
            faulty["plugin"]["reason"]
                .as_str()
                .unwrap()
                .contains("`create`"),
            "{faulty}"
        );
        let list = node.get("/v1/plugins").await;
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["community"] == FAULTY)
            .cloned()
            .unwrap();
        assert_eq!(entry["health"]["state"], "stuck", "{entry}");
        assert_eq!(entry["error"], serde_json::Value::Null, "{entry}");

        // create() returns: the community goes live.
        std::fs::remove_file(&flag).unwrap();
        wait_until(
            Duration::from_secs(10),
            "the faulty community live",
            || async { node.community(FAULTY).await["plugin"]["state"] == "live" },
        )
        .await;
        node.stop().await;
    });
}
