//! A message created through the API goes through its own plugin's check before anything is
//! sent or stored: a refusal is a 422 with the plugin's reason, the peer never sees the message,
//! neither node stores it, and a numbered meta's next message takes the number the refused one
//! did not.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::{EXAMPLE, PROBE, TestNode, pair, plugin_dir, wait_until};
use serde_json::{Value, json};

/// Every message `node` lists at `path` (`stored=true`: from its store), all pages.
async fn listed(node: &TestNode, path: &str, stored: bool) -> Vec<Value> {
    let mut since = 0;
    let mut out = Vec::new();
    loop {
        let page = node
            .get(&format!("{path}?stored={stored}&since={since}&limit=100"))
            .await;
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            return out;
        }
        out.extend(messages);
        since = page["next"].as_u64().unwrap();
    }
}

/// The (meta, amount) of `messages`.
fn amounts(messages: &[Value]) -> Vec<(String, i64)> {
    messages
        .iter()
        .map(|m| {
            (
                m["meta"].as_str().unwrap().to_owned(),
                m["payload"]["amount"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// POSTs a message of `meta` with `amount`; the status and the JSON answer.
async fn create(node: &TestNode, community: &str, meta: &str, amount: i64) -> (u16, Value) {
    let path = format!("/v1/communities/{community}/messages");
    let body =
        json!({"meta": meta, "payload": {"text": format!("{meta} {amount}"), "amount": amount}});
    let (status, text) = node
        .client
        .raw(
            "POST",
            &path,
            Some(body.to_string()),
            Some(node.client.token()),
        )
        .await
        .unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_refuses_a_negative_amount_before_anything_is_sent_or_stored() {
    let plugins = plugin_dir(&["example_community"]);
    let (a, b) = pair(plugins.path(), EXAMPLE).await;
    for meta in ["example", "post"] {
        let (status, answer) = create(&a, EXAMPLE, meta, -5).await;
        assert_eq!(status, 422, "{meta}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("amount must not be negative"), "{error}");
    }
    // Valid messages after them go out as before.
    for meta in ["example", "post"] {
        let (status, answer) = create(&a, EXAMPLE, meta, 7).await;
        assert_eq!(status, 201, "{meta}: {answer}");
        assert_eq!(answer["sent_to"], 1, "{answer}");
    }
    let path = format!("/v1/communities/{EXAMPLE}/messages");
    wait_until(Duration::from_secs(20), "B to store the post", || async {
        !listed(&b, &path, true).await.is_empty()
    })
    .await;
    wait_until(
        Duration::from_secs(20),
        "B to receive the example",
        || async { b.community(EXAMPLE).await["plugin"]["status"]["received"] == 1 },
    )
    .await;
    let only_valid = [("post".to_owned(), 7)];
    assert_eq!(
        amounts(&listed(&a, &path, true).await),
        only_valid,
        "A's store"
    );
    assert_eq!(
        amounts(&listed(&b, &path, true).await),
        only_valid,
        "B's store"
    );
    // B's plugin saw only the valid messages (a negative one would show among its drops).
    let mut delivered = amounts(&listed(&b, &path, false).await);
    delivered.sort();
    assert_eq!(
        delivered,
        [("example".to_owned(), 7), ("post".to_owned(), 7)]
    );
    let plugin = b.community(EXAMPLE).await["plugin"].clone();
    assert_eq!(plugin["dropped"], json!({}), "{plugin}");
    // A handled only what it published, and counted the refusals.
    let delivered = amounts(&listed(&a, &path, false).await);
    assert!(
        delivered.iter().all(|(_, amount)| *amount == 7),
        "{delivered:?}"
    );
    let stats = a.community(EXAMPLE).await["stats"].clone();
    assert_eq!(stats["messages_refused"], 2, "{stats}");
    assert_eq!(stats["messages_created"], 2, "{stats}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_numbered_message_leaves_no_gap() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    let mut numbers = Vec::new();
    for amount in [1, -1, 2, -2, 3] {
        let (status, answer) = create(&a, PROBE, "entry", amount).await;
        if amount < 0 {
            assert_eq!(status, 422, "{answer}");
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .contains("amount must not be negative"),
                "{answer}"
            );
        } else {
            assert_eq!(status, 201, "{answer}");
            numbers.push(answer["sequence_number"].as_u64().unwrap());
        }
    }
    assert_eq!(numbers, [1, 2, 3]);
    wait_until(
        Duration::from_secs(20),
        "B to handle the three entries",
        || async { b.community(PROBE).await["plugin"]["status"]["entries"] == 3 },
    )
    .await;
    let status = b.community(PROBE).await["plugin"]["status"].clone();
    assert_eq!(status["entries_out_of_order"], 0, "{status}");
    let path = format!("/v1/communities/{PROBE}/messages");
    for node in [&a, &b] {
        let mut stored: Vec<(u64, i64)> = listed(node, &path, true)
            .await
            .iter()
            .map(|m| {
                (
                    m["sequence_number"].as_u64().unwrap(),
                    m["payload"]["amount"].as_i64().unwrap(),
                )
            })
            .collect();
        stored.sort_unstable();
        assert_eq!(stored, [(1, 1), (2, 2), (3, 3)]);
    }
    // B never had to ask for a missing number.
    let stats = b.community(PROBE).await["stats"].clone();
    assert_eq!(stats["delayed"], 0, "{stats}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_plugin_sends_itself_is_checked_too() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    let path = format!("/v1/communities/{PROBE}/messages");
    // The probe sends an entry of amount -3 (refused by its check), then one of amount 4.
    for amount in [-3, 4] {
        let body = json!({"meta": "post", "payload": {"text": format!("send entry {amount}"), "amount": 0}});
        a.client.post(&path, &body).await.unwrap();
    }
    wait_until(
        Duration::from_secs(20),
        "B to handle the sent entry",
        || async { b.community(PROBE).await["plugin"]["status"]["entries"] == 1 },
    )
    .await;
    let stats = a.community(PROBE).await["stats"].clone();
    assert_eq!(stats["messages_refused"], 1, "{stats}");
    for node in [&a, &b] {
        let entries: Vec<(u64, i64)> = listed(node, &path, true)
            .await
            .iter()
            .filter(|m| m["meta"] == "entry")
            .map(|m| {
                (
                    m["sequence_number"].as_u64().unwrap(),
                    m["payload"]["amount"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(entries, [(1, 4)]);
    }
    let status = b.community(PROBE).await["plugin"]["status"].clone();
    assert_eq!(status["entries_out_of_order"], 0, "{status}");
    a.stop().await;
    b.stop().await;
}
