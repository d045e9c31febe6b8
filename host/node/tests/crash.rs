//! A node killed with SIGKILL at any moment loses no message it had stored, and its database
//! opens cleanly afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::node_command;
use dispersy_node::client::{Client, Endpoints};
use serde_json::json;

const COMMUNITY: &str = "e5901df2bfc4bc84bdbe490d5690273cf96491f1";

/// Starts a node on `data`; the caller kills and waits for the returned process.
#[allow(clippy::zombie_processes)]
fn start(data: &Path, plugins: &Path) -> (Child, Client) {
    let _ = std::fs::remove_file(data.join("endpoints.json"));
    let mut child = node_command(data, plugins).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(endpoints) = Endpoints::read(data) {
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

/// Amounts of the posts the node lists as stored.
async fn stored(client: &Client) -> Vec<u64> {
    let mut since = 0;
    let mut out = Vec::new();
    loop {
        let page = client
            .get(&format!(
                "/v1/communities/{COMMUNITY}/messages?stored=true&since={since}&limit=1000"
            ))
            .await
            .unwrap();
        let messages = page["messages"].as_array().unwrap();
        if messages.is_empty() {
            return out;
        }
        out.extend(
            messages
                .iter()
                .map(|m| m["payload"]["amount"].as_u64().unwrap()),
        );
        since = page["next"].as_u64().unwrap();
    }
}

async fn post(client: &Client, amount: u64) {
    let body = json!({"meta": "post", "payload": {"text": "durable", "amount": amount}});
    client
        .post(&format!("/v1/communities/{COMMUNITY}/messages"), &body)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_keeps_every_stored_message() {
    let plugins = common::plugin_dir();
    let data = tempfile::tempdir().unwrap();

    // Quiet kill: everything stored is listed, then SIGKILL.
    let (mut child, client) = start(data.path(), plugins.path());
    for amount in 0..200 {
        post(&client, amount).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored(&client).await.len() < 200 {
        assert!(Instant::now() < deadline, "posts not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Kill in the middle of writing: what was listed as stored before the kill survives.
    let (mut child, client) = start(data.path(), plugins.path());
    assert_eq!(
        stored(&client).await.len(),
        200,
        "all acknowledged posts survived"
    );
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for amount in 200..2_000 {
                if client
                    .post(
                        &format!("/v1/communities/{COMMUNITY}/messages"),
                        &json!({"meta": "post", "payload": {"text": "durable", "amount": amount}}),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = stored(&client).await;
    child.kill().unwrap();
    child.wait().unwrap();
    writer.await.unwrap();

    let (mut child, client) = start(data.path(), plugins.path());
    let after = stored(&client).await;
    for amount in &before_kill {
        assert!(
            after.contains(amount),
            "post {amount} was stored before the kill and is gone"
        );
    }
    assert!(after.len() >= before_kill.len());
    // The database is healthy: new posts are stored.
    post(&client, 99_999).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stored(&client).await.contains(&99_999) {
        assert!(
            Instant::now() < deadline,
            "the reopened database does not store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
