//! Messages that wait for others, against a real node: a sequence gap is fetched from the sender
//! with missing-sequence and the log reaches the plugin in order; a node answers missing-sequence
//! from its store, to proven peers only; a reply waits for its post, fetched with
//! missing-message.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use dispersy_core::identity::KeyPair;
use dispersy_core::stats::DropReason;
use dispersy_core::wire::{
    self, CommunityMessage, Conversion, MissingSequence, Packet, SignedMessage,
};
use integration_tests::peer::{Peer, key, probe};
use integration_tests::{PROBE, TestNode, plugin_dir, wait_until};

/// A message of meta `meta` of the probe community.
fn signed(
    author: &KeyPair,
    meta: u32,
    global_time: u64,
    sequence: Option<u32>,
    payload: Vec<u8>,
) -> SignedMessage {
    SignedMessage::sign(
        CommunityMessage {
            community: probe(),
            message_type: meta,
            conversion: Conversion::version(1).unwrap(),
            authors: vec![author.public().clone()],
            global_time,
            sequence_number: sequence,
            resolution_index: None,
            relay_hops: None,
            payload,
            authority: None,
        },
        &[author],
    )
    .unwrap()
}

/// Entry `sequence` of `author`'s log (meta 4 of the probe community) at `global_time`.
fn entry(author: &KeyPair, sequence: u32, global_time: u64) -> SignedMessage {
    let text = format!("entry {sequence}");
    let payload = [
        &[text.len() as u8][..],
        text.as_bytes(),
        &1i64.to_be_bytes(),
    ]
    .concat();
    signed(author, 4, global_time, Some(sequence), payload)
}

/// Receives datagrams at `peer` from `node` until `pick` accepts one (other traffic, like the
/// node's own walk, is skipped).
fn receive<T>(peer: &Peer, node: SocketAddr, mut pick: impl FnMut(Packet) -> Option<T>) -> T {
    let mut buffer = [0u8; 2048];
    // The node walks to the peer now and then: without a deadline, a missing answer would keep
    // this loop reading those forever instead of failing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no matching packet from the node"
        );
        let (len, from) = peer.socket.recv_from(&mut buffer).expect("a datagram");
        if from != node {
            continue;
        }
        if let Ok(packet) = wire::decode(&buffer[..len], 1500, &peer.keys)
            && let Some(found) = pick(packet)
        {
            return found;
        }
    }
}

async fn status(node: &TestNode, field: &str) -> u64 {
    node.community(PROBE).await["plugin"]["status"][field]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_fetched_from_the_sender_and_the_log_arrives_in_order() {
    let plugins = plugin_dir(&["probe_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let mut peer = Peer::new(probe(), key(32));
    peer.walk(node.udp, 1);
    let author = key(31);
    let entries: Vec<SignedMessage> = (1..=5)
        .map(|n| entry(&author, n, u64::from(n) * 2))
        .collect();
    // Number 5 first: numbers 1 to 4 are missing.
    peer.socket
        .send_to(
            &wire::encode_collection(peer.session, &[&entries[4].packet]),
            node.udp,
        )
        .unwrap();
    let asked = receive(&peer, node.udp, |p| match p {
        Packet::MissingSequence(m) => Some(m),
        _ => None,
    });
    assert_eq!(
        (asked.member, asked.meta, asked.low, asked.high),
        (author.member_id(), 4, 1, 4)
    );
    let rest: Vec<&[u8]> = entries[..4].iter().map(|e| e.packet.as_slice()).collect();
    peer.socket
        .send_to(&wire::encode_collection(peer.session, &rest), node.udp)
        .unwrap();
    wait_until(Duration::from_secs(20), "all five entries", || async {
        status(&node, "entries").await == 5
    })
    .await;
    assert_eq!(status(&node, "entries_out_of_order").await, 0);
    let community = node.community(PROBE).await;
    assert_eq!(community["stats"]["delayed"], 1, "{community}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_sequence_is_answered_from_the_store_to_proven_peers_only() {
    let plugins = plugin_dir(&["probe_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let path = format!("/v1/communities/{PROBE}/messages");
    for i in 0..6 {
        let body =
            serde_json::json!({"meta": "entry", "payload": {"text": format!("e{i}"), "amount": i}});
        let created = node.client.post(&path, &body).await.unwrap();
        assert_eq!(created["sequence_number"], i + 1, "{created}");
    }
    let stored = || async {
        node.get(&format!("{path}?stored=true")).await["messages"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_until(Duration::from_secs(10), "six stored entries", || async {
        stored().await == 6
    })
    .await;
    let node_member = dispersy_core::identity::PublicKey::from_hex(node.member())
        .unwrap()
        .member_id();
    let mut peer = Peer::new(probe(), key(33));
    let ask = |session| {
        Packet::MissingSequence(MissingSequence {
            community: probe(),
            session,
            member: node_member,
            meta: 4,
            low: 2,
            high: 4,
        })
    };
    // Without a session: not answered, counted.
    peer.send(node.udp, ask(0));
    wait_until(
        Duration::from_secs(10),
        "the unproven request counted",
        || async { node.dropped(DropReason::UnprovenMissingRequest).await == 1 },
    )
    .await;
    peer.walk(node.udp, 1);
    peer.send(node.udp, ask(peer.session));
    let numbers = receive(&peer, node.udp, |p| match p {
        Packet::Collection(c) => Some(
            c.messages
                .iter()
                .map(|m| m.message.sequence_number.unwrap_or(0))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    });
    assert_eq!(numbers, vec![2, 3, 4]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_waits_for_its_post_which_is_fetched_with_missing_message() {
    let plugins = plugin_dir(&["probe_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let mut peer = Peer::new(probe(), key(34));
    peer.walk(node.udp, 1);
    let (poster, replier) = (key(35), key(36));
    let text = b"a post";
    let post = signed(
        &poster,
        2,
        7,
        None,
        [&[text.len() as u8][..], text, &3i64.to_be_bytes()].concat(),
    );
    let reply_payload = [
        &[33u8][..],
        poster.public().as_bytes(),
        &7u64.to_be_bytes(),
        &[5],
        b"reply",
    ]
    .concat();
    let reply = signed(&replier, 5, 9, None, reply_payload);
    peer.socket
        .send_to(
            &wire::encode_collection(peer.session, &[&reply.packet]),
            node.udp,
        )
        .unwrap();
    let asked = receive(&peer, node.udp, |p| match p {
        Packet::MissingMessage(m) => Some(m),
        _ => None,
    });
    assert_eq!(
        (asked.member, asked.global_times),
        (poster.member_id(), vec![7])
    );
    assert_eq!(status(&node, "replies").await, 0);
    peer.socket
        .send_to(
            &wire::encode_collection(peer.session, &[&post.packet]),
            node.udp,
        )
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the post, then the reply",
        || async { status(&node, "replies").await == 1 },
    )
    .await;
    assert_eq!(status(&node, "posts").await, 1);
    assert_eq!(status(&node, "replies_before_post").await, 0);
    node.stop().await;
}
