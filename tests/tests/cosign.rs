//! Double-member messages with a changed answer, between two real nodes running the probe
//! community: a deal the plugin proposes itself (`Host::propose`) and its co-signer extends
//! (`Cosign::Append`), one the control API proposes and the co-signer modifies, one the
//! proposer's plugin declines, and the plugin's timeline question (`Host::may`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::{PROBE, TestNode, pair, plugin_dir, wait_until};
use serde_json::{Value, json};

/// The deals `node` stores (each decoded, so both signatures verified), as (text, amount, tail).
async fn stored_deals(node: &TestNode) -> Vec<(String, i64, String)> {
    let page = node
        .get(&format!("/v1/communities/{PROBE}/messages?stored=true"))
        .await;
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["meta"] == "deal")
        .map(|m| {
            let p = &m["payload"];
            (
                p["text"].as_str().unwrap().to_owned(),
                p["amount"].as_i64().unwrap(),
                p["tail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn status(node: &TestNode) -> Value {
    node.community(PROBE).await["plugin"]["status"].clone()
}

/// Creates a post with `text` on `node` (the probe acts on some texts).
async fn post(node: &TestNode, text: &str) {
    let body = json!({"meta": "post", "payload": {"text": text, "amount": 0}});
    let path = format!("/v1/communities/{PROBE}/messages");
    node.client.post(&path, &body).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_proposed_deal_the_co_signer_extends_is_stored_on_both_with_both_signatures() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    post(&a, &format!("propose {} {} append this", b.member(), b.udp)).await;
    let tail = hex::encode(b"+cosigned");
    let expected = vec![("append this".to_owned(), 1, tail)];
    wait_until(
        Duration::from_secs(30),
        "both nodes to store the extended deal",
        || async { stored_deals(&a).await == expected && stored_deals(&b).await == expected },
    )
    .await;
    let first = status(&a).await;
    assert_eq!(first["proposed"], 1, "{first}");
    assert_eq!(first["cosigned"]["appended"], 1, "{first}");
    assert_eq!(first["cosigned"]["last_token"], 1, "{first}");
    assert_eq!(first["propose_error"], Value::Null, "{first}");
    // The stored deal names A first and B second: B lists A as its author.
    let page = b
        .get(&format!("/v1/communities/{PROBE}/messages?stored=true"))
        .await;
    let deal = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meta"] == "deal")
        .cloned()
        .unwrap();
    assert_eq!(deal["public_key"], a.member(), "{deal}");
    wait_until(
        Duration::from_secs(10),
        "both plugins to handle it",
        || async { status(&a).await["deals"] == 1 && status(&b).await["deals"] == 1 },
    )
    .await;

    // A bad address is refused at once; a proposal the node cannot start (this member as its
    // own co-signer) is answered as a timeout.
    post(&a, &format!("propose {} not-an-address x", b.member())).await;
    let refused = status(&a).await;
    assert!(refused["propose_error"].is_string(), "{refused}");
    post(&a, &format!("propose {} {} x", a.member(), a.udp)).await;
    wait_until(
        Duration::from_secs(10),
        "the timeout to be told",
        || async { status(&a).await["cosigned"]["timeout"] == 1 },
    )
    .await;
    assert_eq!(status(&a).await["cosigned"]["last_token"], 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_proposed_deal_is_published_modified_only_if_the_proposer_accepts() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    let path = format!("/v1/communities/{PROBE}/messages");
    let deal = |text: &str| {
        json!({
            "meta": "deal",
            "payload": {"text": text, "amount": 2},
            "co_signer": {"public_key": b.member(), "address": b.udp.to_string()},
        })
    };
    // B modifies it; A's plugin (asked with token 0) accepts it.
    let created = a.client.post(&path, &deal("modify me")).await.unwrap();
    assert!(created["global_time"].as_u64().is_some(), "{created}");
    let expected = vec![("modified".to_owned(), 4, String::new())];
    wait_until(
        Duration::from_secs(30),
        "both nodes to store the modified deal",
        || async { stored_deals(&a).await == expected && stored_deals(&b).await == expected },
    )
    .await;
    let first = status(&a).await;
    assert_eq!(first["cosigned"]["modified"], 1, "{first}");
    assert_eq!(first["cosigned"]["last_token"], 0, "{first}");
    // An unchanged answer to the API is published without asking the plugin.
    a.client.post(&path, &deal("plain")).await.unwrap();
    assert_eq!(status(&a).await["cosigned"]["signed"], 0);
    // B appends to this one, and A's plugin declines what the text says to decline.
    let declined = a
        .client
        .post(&path, &deal("append, then decline"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        declined.starts_with("HTTP 409") && declined.contains("declined"),
        "{declined}"
    );
    assert_eq!(status(&a).await["cosigned"]["declined"], 1);
    let node = a.get("/v1/node").await;
    assert_eq!(node["stats"]["packets"]["signature-declined"], 1, "{node}");
    wait_until(
        Duration::from_secs(30),
        "the plain deal on both",
        || async { stored_deals(&a).await.len() == 2 && stored_deals(&b).await.len() == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts: Vec<String> = stored_deals(&b).await.into_iter().map(|d| d.0).collect();
    assert_eq!(texts, vec!["modified".to_owned(), "plain".to_owned()]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_asks_the_timeline_whether_a_member_may_create_a_meta() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    let ask = |text: String| {
        let a = &a;
        async move {
            post(a, &text).await;
            status(a).await["may"].clone()
        }
    };
    // Public: anyone; Linear: nobody holds a permit in the probe community.
    let public = ask(format!("may post {} 5", b.member())).await;
    assert_eq!(public, json!({"meta": "post", "answer": true}));
    let member_id = a.get("/v1/node").await["mid"].as_str().unwrap().to_owned();
    let linear = ask(format!("may linear-post {member_id} 5")).await;
    assert_eq!(linear, json!({"meta": "linear-post", "answer": false}));
    let unknown = ask(format!("may nothing {} 5", b.member())).await;
    assert!(
        unknown["error"].as_str().unwrap().contains("nothing"),
        "{unknown}"
    );
    let bad = ask("may post 0102 5".to_owned()).await;
    assert!(bad["error"].as_str().unwrap().contains("member"), "{bad}");
    a.stop().await;
    b.stop().await;
}
