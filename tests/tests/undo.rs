//! Undo between real nodes, through the control API: a member undoes its own undoable post;
//! both nodes hide it (the stored listing names the undo), the plugin on both is told, another
//! member may not undo it without `undo`, and the post stays hidden after a restart; a founder
//! (who holds `undo` on the undoable meta from founding) undoes another member's post.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispersy_core::identity::PublicKey;
use integration_tests::{
    FoundedProbe, PROBE, TestNode, founded_probe, pair, plugin_dir, wait_until,
};
use serde_json::{Value, json};

/// How long what only a push or sync spreads may take between two nodes.
const SPREAD: Duration = Duration::from_secs(30);

async fn status(node: &TestNode) -> Value {
    node.community(PROBE).await["plugin"]["status"].clone()
}

/// Creates a message of `meta` at `node`: its global time.
async fn create(node: &TestNode, meta: &str, text: &str) -> u64 {
    let (code, answer) = node
        .call(
            "POST",
            &format!("/v1/communities/{PROBE}/messages"),
            Some(json!({"meta": meta, "payload": {"text": text, "amount": 1}})),
        )
        .await;
    assert_eq!(code, 201, "{answer}");
    answer["global_time"].as_u64().unwrap()
}

/// `POST /v1/communities/{PROBE}/undo` at `node` of `member`'s message at `global_time`.
async fn undo(node: &TestNode, member: &str, global_time: u64) -> (u16, Value) {
    node.call(
        "POST",
        &format!("/v1/communities/{PROBE}/undo"),
        Some(json!({"member": member, "global_time": global_time})),
    )
    .await
}

/// The stored listing's entry of `member_id`'s message at `global_time` on `node`.
async fn listed(node: &TestNode, member_id: &str, global_time: u64) -> Value {
    let list = node
        .get(&format!(
            "/v1/communities/{PROBE}/messages?stored=true&limit=1000"
        ))
        .await;
    list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member"] == member_id && m["global_time"] == global_time)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undone_post_is_hidden_on_both_nodes_the_plugins_are_told_and_a_restart_keeps_it() {
    let plugins = plugin_dir(&["probe_community"]);
    let (a, b) = pair(plugins.path(), PROBE).await;
    let a_id = PublicKey::from_hex(a.member())
        .unwrap()
        .member_id()
        .to_hex();
    let post = create(&a, "undoable-post", "to undo").await;
    wait_until(SPREAD, "B to get the post", || async {
        status(&b).await["undoable_posts"] == 1
    })
    .await;

    // B holds no undo on undoable-post: refused.
    let (code, answer) = undo(&b, a.member(), post).await;
    assert_eq!(code, 403, "{answer}");
    // Bad requests: not stored, not undoable, bad member.
    let (code, answer) = undo(&a, a.member(), 1_000_000).await;
    assert_eq!(code, 404, "{answer}");
    let plain = create(&a, "post", "not undoable").await;
    // The API answers a creation before the store has the row (issue 12 makes it wait).
    let deadline = tokio::time::Instant::now() + SPREAD;
    let (code, answer) = loop {
        let answer = undo(&a, a.member(), plain).await;
        if answer.0 != 404 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 400, "{answer}");
    let (code, _) = undo(&a, "zz", post).await;
    assert_eq!(code, 400);

    // A undoes its own post.
    let (code, answer) = undo(&a, &a_id, post).await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["kind"], "undo-own");
    assert_eq!(answer["existing"], false);
    let undo_time = answer["global_time"].as_u64().unwrap();
    for node in [&a, &b] {
        wait_until(SPREAD, "the post hidden and the plugin told", || async {
            status(node).await["undone"] == 1
        })
        .await;
        let entry = listed(node, &a_id, post).await;
        assert_eq!(entry["undone"], true, "{entry}");
        assert_eq!(entry["undone_by"]["member"], a_id.as_str(), "{entry}");
        assert_eq!(entry["undone_by"]["global_time"], undo_time, "{entry}");
        assert_eq!(status(node).await["last_undone"], post);
    }
    // Again: the existing undo, nothing new.
    let (code, answer) = undo(&a, a.member(), post).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["existing"], true);
    assert_eq!(answer["global_time"], undo_time);

    // B restarts: the post stays hidden, and its new plugin instance is not told again.
    let data = b.stop_keeping_data().await;
    let a_udp = a.udp;
    let b = TestNode::start_in(data, plugins.path(), |c| {
        c.peers = vec![a_udp.to_string()];
    })
    .await;
    wait_until(SPREAD, "B's plugin live again", || async {
        status(&b).await["live"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let entry = listed(&b, &a_id, post).await;
    assert_eq!(entry["undone"], true, "{entry}");
    assert_eq!(entry["undone_by"]["global_time"], undo_time, "{entry}");
    assert_eq!(status(&b).await["undone"], 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_undoes_another_members_post_with_undo_other() {
    let FoundedProbe {
        a,
        b,
        master: _master,
        id,
        plugins: _plugins,
        keys: _keys,
    } = founded_probe(52).await;
    let (code, answer) = b
        .call(
            "POST",
            &format!("/v1/communities/{id}/messages"),
            Some(json!({"meta": "undoable-post", "payload": {"text": "by b", "amount": 1}})),
        )
        .await;
    assert_eq!(code, 201, "{answer}");
    let post = answer["global_time"].as_u64().unwrap();
    let b_id = PublicKey::from_hex(b.member())
        .unwrap()
        .member_id()
        .to_hex();
    wait_until(SPREAD, "A to hold undo and have B's post", || async {
        a.community(&id).await["plugin"]["status"]["undoable_posts"] == 1
    })
    .await;
    // A holds undo once the founding authorize is stored: until then 403.
    let path = format!("/v1/communities/{id}/undo");
    let body = json!({"member": b_id, "global_time": post});
    let deadline = tokio::time::Instant::now() + SPREAD;
    let created = loop {
        let (code, answer) = a.call("POST", &path, Some(body.clone())).await;
        if code == 201 {
            break answer;
        }
        assert_eq!(code, 403, "{answer}");
        assert!(tokio::time::Instant::now() < deadline, "A never held undo");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(created["kind"], "undo-other", "{created}");
    for node in [&a, &b] {
        wait_until(SPREAD, "B's post hidden and the plugin told", || async {
            node.community(&id).await["plugin"]["status"]["undone"] == 1
        })
        .await;
    }
    a.stop().await;
    b.stop().await;
}
