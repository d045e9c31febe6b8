//! A community's state is a function of its stored history, against real nodes: a node stopped
//! and started again on the same data folder gives its plugin the stored messages before live
//! traffic, so the plugin's status is what it was, nothing the plugin did on a message is done
//! twice, a reply to a post stored before the restart is handled at once, and the plugin reads
//! its store through the host in pages, by member and global-time range.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispersy_core::identity::KeyPair;
use dispersy_core::wire::{self, CommunityMessage, Conversion, SignedMessage};
use integration_tests::peer::{Peer, key, probe};
use integration_tests::{PROBE, TestNode, plugin_dir, wait_until};
use serde_json::{Value, json};

/// A message of meta `meta` of the probe community, without a sequence number.
fn signed(author: &KeyPair, meta: u32, global_time: u64, payload: Vec<u8>) -> SignedMessage {
    SignedMessage::sign(
        CommunityMessage {
            community: probe(),
            message_type: meta,
            conversion: Conversion::version(1).unwrap(),
            authors: vec![author.public().clone()],
            global_time,
            sequence_number: None,
            resolution_index: None,
            relay_hops: None,
            payload,
            authority: None,
        },
        &[author],
    )
    .unwrap()
}

async fn status(node: &TestNode) -> Value {
    node.community(PROBE).await["plugin"]["status"].clone()
}

/// The probe's counters that its stored messages decide.
const FROM_HISTORY: [&str; 6] = [
    "posts",
    "profiles",
    "entries",
    "entries_out_of_order",
    "replies",
    "replies_before_post",
];

async fn create(node: &TestNode, meta: &str, text: &str) {
    let path = format!("/v1/communities/{PROBE}/messages");
    let body = json!({"meta": meta, "payload": {"text": text, "amount": 2}});
    node.client.post(&path, &body).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_restores_its_plugin_and_handles_a_reply_to_an_old_post_at_once() {
    let plugins = plugin_dir(&["probe_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    // Created here: two posts (one makes the plugin send an entry itself), a profile.
    create(&node, "post", "first").await;
    create(&node, "post", "send entry 2").await;
    create(&node, "profile", "me").await;
    // From a peer: another member's post at global time 7.
    let mut peer = Peer::new(probe(), key(41));
    peer.walk(node.udp, 1);
    let poster = key(42);
    let text = b"their post";
    let post = signed(
        &poster,
        2,
        7,
        [&[text.len() as u8][..], text, &3i64.to_be_bytes()].concat(),
    );
    peer.socket
        .send_to(
            &wire::encode_collection(peer.session, &[&post.packet]),
            node.udp,
        )
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "three posts and the entry",
        || async {
            let s = status(&node).await;
            s["posts"] == 3 && s["entries"] == 1 && s["profiles"] == 1
        },
    )
    .await;
    let before = status(&node).await;
    let data = node.stop_keeping_data().await;

    let node = TestNode::start_in(data, plugins.path(), |_| {}).await;
    wait_until(Duration::from_secs(20), "the new instance live", || async {
        status(&node).await["live"] == true
    })
    .await;
    let after = status(&node).await;
    for field in FROM_HISTORY {
        assert_eq!(
            after[field], before[field],
            "{field}: {before} then {after}"
        );
    }
    assert_eq!(after["restored"], 3, "{after}");
    // The restored "send entry 2" post did not send a second entry.
    assert_eq!(after["entries"], 1, "{after}");

    // A reply to the post stored before the restart: its check finds the post at once (no
    // wait: the peer never answers a missing-message, so a waiting reply would be dropped).
    let mut peer = Peer::new(probe(), key(43));
    peer.walk(node.udp, 1);
    let reply_payload = [
        &[33u8][..],
        poster.public().as_bytes(),
        &7u64.to_be_bytes(),
        &[5],
        b"reply",
    ]
    .concat();
    let reply = signed(&key(44), 5, 9, reply_payload);
    peer.socket
        .send_to(
            &wire::encode_collection(peer.session, &[&reply.packet]),
            node.udp,
        )
        .unwrap();
    wait_until(Duration::from_secs(20), "the reply handled", || async {
        status(&node).await["replies"] == 1
    })
    .await;
    assert_eq!(status(&node).await["replies_before_post"], 0);

    // Reads through the host: this member's posts (not the peer's), two per page.
    create(&node, "post", "read posts").await;
    wait_until(Duration::from_secs(20), "the read", || async {
        !status(&node).await["read_posts"].is_null()
    })
    .await;
    let read = status(&node).await;
    assert_eq!(read["read_posts"], 3, "{read}");
    assert!(read["read_pages"].as_u64().unwrap() >= 2, "{read}");
    node.stop().await;
}
