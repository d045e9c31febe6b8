//! Bytes from the network never hurt the node: each kind of bad datagram is dropped, counted
//! under its reason, and the node keeps serving.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispersy_core::identity::CommunityId;
use dispersy_core::stats::DropReason;
use dispersy_proto as pb;
use integration_tests::peer::{Peer, example, key, request};
use integration_tests::{TestNode, plugin_dir, wait_until};
use prost::Message as _;

/// Sends `bytes` to the node, waits until `reason` counts one more drop, then checks that the
/// node still answers a walk.
async fn assert_dropped(node: &TestNode, peer: &mut Peer, bytes: &[u8], reason: DropReason) {
    let before = node.dropped(reason).await;
    peer.socket.send_to(bytes, node.udp).unwrap();
    wait_until(
        Duration::from_secs(10),
        &format!("a drop counted as {reason}"),
        || async { node.dropped(reason).await == before + 1 },
    )
    .await;
    let walk = peer.session.wrapping_add(1).max(1);
    peer.walk(node.udp, walk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_dropped_counted_and_the_node_keeps_serving() {
    let plugins = plugin_dir(&["example_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let mut peer = Peer::new(example(), key(9));
    let me = key(9);
    let from = peer.address();

    // First contact goes through the identity exchange and the session handshake.
    let response = peer.walk(node.udp, 1);
    assert_eq!(response.destination, from);
    assert_ne!(peer.session, 0);

    // Random bytes (a fixed, seeded sequence).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let random: Vec<u8> = (0..200)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert_dropped(&node, &mut peer, &random, DropReason::Malformed).await;

    // Truncated: a valid packet cut short.
    let valid = request(&me, example(), node.udp, from).encode(&me);
    assert_dropped(
        &node,
        &mut peer,
        &valid[..valid.len() - 10],
        DropReason::Malformed,
    )
    .await;

    // Oversized: larger than the 1500-byte budget.
    assert_dropped(&node, &mut peer, &vec![0x0A; 4000], DropReason::Oversized).await;

    // Valid protobuf, wrong signature: signed by another key than the member it names.
    let forged = request(&me, example(), node.udp, from).encode(&key(2));
    assert_dropped(&node, &mut peer, &forged, DropReason::BadSignature).await;

    // Unknown community: valid and signed, for a community this node did not join.
    let unknown = request(&me, CommunityId([0x77; 20]), node.udp, from).encode(&me);
    assert_dropped(&node, &mut peer, &unknown, DropReason::UnknownCommunity).await;

    // A huge length prefix: field 1 claims 2^62 bytes.
    let mut huge = vec![0x0A];
    prost::encoding::encode_varint(1 << 62, &mut huge);
    huge.extend_from_slice(&[1, 2, 3]);
    assert_dropped(&node, &mut peer, &huge, DropReason::Malformed).await;

    // Valid protobuf of the wrong shape: a descriptor with nothing in it.
    let empty = pb::Message {
        descriptor: Some(Vec::new()),
        signatures: vec![],
    }
    .encode_to_vec();
    assert_dropped(&node, &mut peer, &empty, DropReason::NoMessage).await;

    // An empty datagram.
    assert_dropped(&node, &mut peer, &[], DropReason::Empty).await;

    let info = node.get("/v1/node").await;
    assert!(
        info["stats"]["packets"]["introduction-request"]
            .as_u64()
            .unwrap()
            >= 9
    );
    assert_eq!(info["sessions"], 1);
    // The kernel's own drops (a full receive buffer) are shown beside the node's counters.
    assert!(
        info["udp_receive_drops"].is_u64(),
        "udp_receive_drops: {}",
        info["udp_receive_drops"]
    );
    node.stop().await;
}
