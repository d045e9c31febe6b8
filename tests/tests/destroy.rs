//! Destroy-community between real nodes: the founder destroys the community (hard) through the
//! control API; the peer learns it, deletes everything but the destroy and its proof, retires
//! its plugin and refuses new messages; after a restart it comes back destroyed. A member
//! without the permit is refused.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use integration_tests::{FoundedProbe, TestNode, founded_probe, wait_until};
use serde_json::{Value, json};

/// How long what only a push or sync spreads may take between two nodes.
const SPREAD: Duration = Duration::from_secs(30);

/// A public `post` with `text` in `community` at `node`: the status and the answer.
async fn post(node: &TestNode, community: &str, text: &str) -> (u16, Value) {
    node.call(
        "POST",
        &format!("/v1/communities/{community}/messages"),
        Some(json!({"meta": "post", "payload": {"text": text, "amount": 1}})),
    )
    .await
}

/// `POST /v1/communities/{community}/destroy` of `degree`.
async fn destroy(node: &TestNode, community: &str, degree: &str) -> (u16, Value) {
    node.call(
        "POST",
        &format!("/v1/communities/{community}/destroy"),
        Some(json!({"degree": degree})),
    )
    .await
}

/// The metas of the plugin messages `node` stores of `community`, in row order (the built-in
/// ones are not listed).
async fn stored(node: &TestNode, community: &str) -> Vec<String> {
    let listed = node
        .get(&format!(
            "/v1/communities/{community}/messages?stored=true&limit=1000"
        ))
        .await;
    listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["meta"].as_str().unwrap().to_owned())
        .collect()
}

/// How many permission records `node`'s timeline of `community` holds.
async fn records(node: &TestNode, community: &str) -> usize {
    node.get(&format!("/v1/communities/{community}/timeline"))
        .await["records"]
        .as_array()
        .unwrap()
        .len()
}

/// Whether `node` shows `community` hard-destroyed, its plugin retired.
async fn destroyed(node: &TestNode, community: &str) -> bool {
    let c = node.community(community).await;
    c["destroyed"]["degree"] == "hard" && c["plugin"]["state"] == "destroyed"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founders_hard_destroy_empties_the_peer_which_stays_destroyed_after_a_restart() {
    let FoundedProbe {
        a,
        b,
        master: _master,
        id,
        plugins,
        keys: _keys,
    } = founded_probe(52).await;
    for (node, text) in [(&a, "from a"), (&b, "from b")] {
        let (code, answer) = post(node, &id, text).await;
        assert_eq!(code, 201, "{answer}");
    }
    wait_until(SPREAD, "B to store both posts", || async {
        stored(&b, &id).await.len() == 2
    })
    .await;
    assert!(b.community(&id).await["destroyed"].is_null());

    // B holds no permit on destroy-community; a bad degree is refused.
    let (code, answer) = destroy(&b, &id, "hard").await;
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = destroy(&a, &id, "utterly").await;
    assert_eq!(code, 400, "{answer}");

    let (code, created) = destroy(&a, &id, "hard").await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["sequence_number"], 0);
    wait_until(SPREAD, "B to be destroyed", || async {
        destroyed(&b, &id).await
    })
    .await;
    wait_until(SPREAD, "A to be destroyed", || async {
        destroyed(&a, &id).await
    })
    .await;
    for node in [&a, &b] {
        assert_eq!(stored(node, &id).await, Vec::<String>::new());
        assert_eq!(records(node, &id).await, 1, "the founding authorize stays");
    }
    let (code, answer) = post(&b, &id, "too late").await;
    assert!(code >= 400, "{code} {answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("destroyed"),
        "{answer}"
    );
    let (code, answer) = destroy(&a, &id, "soft").await;
    assert_eq!(code, 409, "{answer}");

    // A restart of B: the community comes back destroyed, from the stored destroy.
    let a_udp = a.udp;
    let data = b.stop_keeping_data().await;
    let b = TestNode::start_in(data, plugins.path(), |c| c.peers = vec![a_udp.to_string()]).await;
    wait_until(SPREAD, "B to come back destroyed", || async {
        destroyed(&b, &id).await
    })
    .await;
    // Rebuilt from what the store kept: the destroy (or it would not be destroyed) and its
    // proof, the founding authorize.
    assert_eq!(stored(&b, &id).await, Vec::<String>::new());
    assert_eq!(records(&b, &id).await, 1);
    let (code, answer) = post(&b, &id, "after the restart").await;
    assert!(code >= 400, "{code} {answer}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_destroy_freezes_the_community_on_both_nodes() {
    let FoundedProbe {
        a,
        b,
        master: _master,
        id,
        plugins: _plugins,
        keys: _keys,
    } = founded_probe(53).await;
    let (code, answer) = post(&a, &id, "before").await;
    assert_eq!(code, 201, "{answer}");
    wait_until(SPREAD, "B to store the post", || async {
        stored(&b, &id).await.len() == 1
    })
    .await;
    let (code, created) = destroy(&a, &id, "soft").await;
    assert_eq!(code, 201, "{created}");
    let freeze = created["global_time"].as_u64().unwrap();
    wait_until(SPREAD, "B to be frozen", || async {
        b.community(&id).await["destroyed"]["degree"] == "soft"
    })
    .await;
    for node in [&a, &b] {
        let c = node.community(&id).await;
        assert_eq!(c["destroyed"]["global_time"], freeze, "{c}");
        assert!(c["global_time"].as_u64().unwrap() <= freeze, "{c}");
        // The plugin stays, read-only; what is older stays stored.
        assert_eq!(c["plugin"]["state"], "live", "{c}");
        assert_eq!(stored(node, &id).await, ["post"]);
        let (code, answer) = post(node, &id, "after").await;
        assert_eq!(code, 409, "{answer}");
    }
    // A hard destroy still passes.
    let (code, answer) = destroy(&a, &id, "hard").await;
    assert_eq!(code, 201, "{answer}");
    wait_until(SPREAD, "B to be destroyed", || async {
        destroyed(&b, &id).await
    })
    .await;
    a.stop().await;
    b.stop().await;
}
