//! Bytes from the network never hurt the node: each kind of bad datagram is dropped, counted
//! under its reason, and the node keeps serving.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use dispersy_core::identity::{CommunityId, KeyPair};
use dispersy_core::wire::{self, ConnectionType, IntroductionRequest, Packet};
use dispersy_proto as pb;
use integration_tests::{EXAMPLE, TestNode, plugin_dir, wait_until};
use prost::Message as _;

fn key(n: u8) -> KeyPair {
    KeyPair::from_secret(&[n; 32]).unwrap()
}

fn request(member: &KeyPair, community: CommunityId, to: SocketAddr, from: SocketAddr) -> Packet {
    Packet::IntroductionRequest(IntroductionRequest {
        community,
        member: member.public().clone(),
        session: 0,
        walk: 4242,
        random: 7,
        global_time: 1,
        destination: to,
        source_lan: from,
        source_wan: from,
        connection_type: ConnectionType::Unknown,
        advice: true,
        sync: None,
    })
}

fn example() -> CommunityId {
    CommunityId::from_hex(EXAMPLE).unwrap()
}

/// Sends `bytes` to the node, waits until `reason` counts one more drop, then checks that the
/// node still answers a valid introduction-request.
async fn assert_dropped(node: &TestNode, socket: &UdpSocket, bytes: &[u8], reason: &str) {
    let before = node.dropped(reason).await;
    socket.send_to(bytes, node.udp).unwrap();
    wait_until(
        Duration::from_secs(10),
        &format!("a drop counted as {reason}"),
        || async { node.dropped(reason).await == before + 1 },
    )
    .await;
    // Still serving: a valid request gets its response.
    let me = key(9);
    let valid = request(&me, example(), node.udp, socket.local_addr().unwrap()).encode(&me);
    socket.send_to(&valid, node.udp).unwrap();
    let mut buffer = [0u8; 2048];
    loop {
        let (len, _) = socket
            .recv_from(&mut buffer)
            .expect("an introduction-response");
        if let Ok(Packet::IntroductionResponse(r)) = wire::decode(&buffer[..len], 1500) {
            assert_eq!(r.walk, 4242);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_dropped_counted_and_the_node_keeps_serving() {
    let plugins = plugin_dir(&["example_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let me = key(1);
    let from = socket.local_addr().unwrap();
    let valid = request(&me, example(), node.udp, from).encode(&me);

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
    assert_dropped(&node, &socket, &random, "malformed").await;

    // Truncated: a valid packet cut short.
    assert_dropped(&node, &socket, &valid[..valid.len() - 10], "malformed").await;

    // Oversized: larger than the 1500-byte budget.
    assert_dropped(&node, &socket, &vec![0x0A; 4000], "oversized").await;

    // Valid protobuf, wrong signature: signed by another key than the member it names.
    let forged = request(&me, example(), node.udp, from).encode(&key(2));
    assert_dropped(&node, &socket, &forged, "bad-signature").await;

    // Unknown community: valid and signed, for a community this node did not join.
    let unknown = request(&me, CommunityId([0x77; 20]), node.udp, from).encode(&me);
    assert_dropped(&node, &socket, &unknown, "unknown-community").await;

    // A huge length prefix: field 1 claims 2^62 bytes.
    let mut huge = vec![0x0A];
    prost::encoding::encode_varint(1 << 62, &mut huge);
    huge.extend_from_slice(&[1, 2, 3]);
    assert_dropped(&node, &socket, &huge, "malformed").await;

    // Valid protobuf of the wrong shape: a descriptor with nothing in it.
    let empty = pb::Message {
        descriptor: Some(Vec::new()),
        signatures: vec![],
    }
    .encode_to_vec();
    assert_dropped(&node, &socket, &empty, "no-message").await;

    // An empty datagram.
    assert_dropped(&node, &socket, &[], "empty").await;

    let info = node.get("/v1/node").await;
    assert!(
        info["stats"]["packets"]["introduction-request"]
            .as_u64()
            .unwrap()
            >= 8
    );
    node.stop().await;
}
