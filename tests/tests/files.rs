//! The files of a data folder are private to the node's owner: the database (and its WAL and
//! shared-memory files), `endpoints.json`, the key, the API token and the lock are mode 0600,
//! a new data folder 0700, and a database an older version left readable to others is narrowed.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use integration_tests::{EXAMPLE, TestNode, plugin_dir, wait_until};
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_folder_s_files_are_readable_by_their_owner_only() {
    let plugins = plugin_dir(&["example_community"]);
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    // An older version's database, readable by everyone.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(data.join("dispersy.db"), b"").unwrap();
    std::fs::set_permissions(
        data.join("dispersy.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let dir = data.clone();
    let node = TestNode::start(plugins.path(), move |c| c.data_dir = dir).await;
    node.client
        .post(
            &format!("/v1/communities/{EXAMPLE}/messages"),
            &json!({"meta": "post", "payload": {"text": "private", "amount": 1}}),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the WAL file", || async {
        data.join("dispersy.db-wal").exists()
    })
    .await;
    for name in [
        "dispersy.db",
        "dispersy.db-wal",
        "dispersy.db-shm",
        "endpoints.json",
        "member.key",
        "api-token",
        "lock",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    node.stop().await;

    // A data folder the node creates is 0700, its new database 0600.
    let fresh = parent.path().join("fresh");
    let dir = fresh.clone();
    let node = TestNode::start(plugins.path(), move |c| c.data_dir = dir).await;
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("dispersy.db")), 0o600);
    node.stop().await;
}
