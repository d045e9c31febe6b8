//! One process per data folder: a second `dispersy run` on a folder in use is refused in one line
//! naming the folder, the first keeps serving, and a `kill -9` releases the folder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::node_command;
use dispersy_node::client::{Client, Endpoints};

/// The pid a node wrote into the folder's `endpoints.json`.
fn endpoints_pid(data: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(data.join("endpoints.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"].as_u64()
}

/// Starts a node on `data` and waits for its endpoints; the caller kills and waits for it.
#[allow(clippy::zombie_processes)]
fn start(data: &Path, plugins: &Path) -> (Child, Client) {
    let _ = std::fs::remove_file(data.join("endpoints.json"));
    let mut child = node_command(data, plugins)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if endpoints_pid(data) == Some(u64::from(child.id()))
            && let Ok(endpoints) = Endpoints::read(data)
        {
            return (child, endpoints.client);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_folder_is_refused_until_the_first_is_gone() {
    let plugins = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (mut first, client) = start(data.path(), plugins.path());
    let node = client.get("/v1/node").await.unwrap();
    assert!(node["member"].is_string(), "{node}");

    // A second process on the same folder: refused before it touches anything.
    let mut second = node_command(data.path(), plugins.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            first.kill().unwrap();
            first.wait().unwrap();
            panic!("a second node started on a data folder in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = second.wait_with_output().unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert_eq!(error.trim().lines().count(), 1, "one line: {error:?}");
    assert!(
        error.contains(&data.path().display().to_string()),
        "names the folder: {error}"
    );
    assert!(error.contains("in use"), "{error}");
    assert!(
        error.contains(&format!("pid {}", first.id())),
        "names the holder: {error}"
    );

    // The first one keeps serving, and its endpoints were not overwritten.
    assert_eq!(
        client.get("/v1/node").await.unwrap()["member"],
        node["member"]
    );
    assert_eq!(endpoints_pid(data.path()), Some(u64::from(first.id())));

    // kill -9 releases the folder: a new process starts on it, with the same identity.
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut third, client) = start(data.path(), plugins.path());
    assert_eq!(
        client.get("/v1/node").await.unwrap()["member"],
        node["member"]
    );
    third.kill().unwrap();
    third.wait().unwrap();
}
