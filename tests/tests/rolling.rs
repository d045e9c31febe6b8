//! Rolling upgrades on the wire: node A runs the example community as it is now (writes
//! conversion 1 whenever it carries a payload, conversion 2 for longer texts), node B its first
//! release (`plugins/example-v1`: conversion 1 only). Every message conversion 1 carries flows
//! both ways; what B cannot read is dropped, and shown in B's API once per (meta, conversion)
//! with its count.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::{EXAMPLE, TestNode, plugin_dir, wait_until};
use serde_json::{Value, json};

async fn status(node: &TestNode) -> Value {
    node.community(EXAMPLE).await["plugin"]["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_network_keeps_talking_and_shows_what_it_cannot_read() {
    let new = plugin_dir(&["example_community"]);
    let old = plugin_dir(&["example_v1_community"]);
    let a = TestNode::start(new.path(), |_| {}).await;
    let a_udp = a.udp;
    let b = TestNode::start(old.path(), |c| c.peers = vec![a_udp.to_string()]).await;
    let b_udp = b.udp;
    wait_until(
        Duration::from_secs(20),
        "A and B to know each other",
        || async { a.knows(EXAMPLE, b_udp).await && b.knows(EXAMPLE, a_udp).await },
    )
    .await;
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    let send = |node: &TestNode, meta: &str, text: String| {
        let body = json!({"meta": meta, "payload": {"text": text, "amount": 1}});
        let client = node.client.clone();
        let path = path.clone();
        async move { client.post(&path, &body).await.unwrap() }
    };

    // New → old and old → new, a direct and a synchronised meta each way.
    send(&a, "post", "from the new version".into()).await;
    send(&a, "example", "hello from the new version".into()).await;
    send(&b, "post", "from the old version".into()).await;
    send(&b, "example", "hello from the old version".into()).await;
    wait_until(
        Duration::from_secs(30),
        "every message both ways",
        || async {
            let (a, b) = (status(&a).await, status(&b).await);
            a["posts"] == 2
                && a["last_text"] == "hello from the old version"
                && b["posts"] == 2
                && b["last_text"] == "hello from the new version"
        },
    )
    .await;
    assert!(b.community(EXAMPLE).await["unreadable"] == json!([]));

    // Texts longer than conversion 1 carries go out in conversion 2: B drops them.
    let long = "x".repeat(300);
    send(&a, "post", long.clone()).await;
    send(&a, "post", format!("{long}!")).await;
    send(&a, "example", long.clone()).await;
    wait_until(
        Duration::from_secs(30),
        "B to show what it cannot read",
        || async {
            let unreadable = b.community(EXAMPLE).await["unreadable"].clone();
            let count = |meta: &str| {
                unreadable
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["meta_name"] == meta && k["conversion"] == "02")
                    .map(|k| k["count"].as_u64().unwrap())
                    .unwrap_or(0)
            };
            count("post") >= 2 && count("example") >= 1
        },
    )
    .await;
    let community = b.community(EXAMPLE).await;
    let kinds = community["unreadable"].as_array().unwrap();
    assert_eq!(
        kinds.len(),
        2,
        "one entry per (meta, conversion): {kinds:?}"
    );
    assert_eq!(community["unreadable_others"], 0);
    assert!(
        community["stats"]["dropped"]["unknown-conversion"]
            .as_u64()
            .unwrap()
            >= 3
    );
    let b_status = status(&b).await;
    assert_eq!(b_status["posts"], 2);
    assert_eq!(b_status["last_text"], "hello from the new version");
    // A handled its own long posts; nothing is unreadable there.
    assert_eq!(status(&a).await["posts"], 4);
    assert!(a.community(EXAMPLE).await["unreadable"] == json!([]));
    a.stop().await;
    b.stop().await;
}
