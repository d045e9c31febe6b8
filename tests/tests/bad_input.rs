//! Bytes from the network never hurt the node: each kind of bad datagram is dropped, counted
//! under its reason, and the node keeps serving.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use dispersy_core::identity::{CommunityId, KeyPair, MemberId, PublicKey};
use dispersy_core::wire::{
    self, ConnectionType, DecodeError, Identity, IntroductionRequest, IntroductionResponse,
    MissingIdentity, Packet, SESSION_VERSION, SessionResponse,
};
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

/// A well-behaved peer played by the test: it walks to the node and goes through the whole
/// exchange (identity, session handshake) the way a real node does.
struct Peer {
    socket: UdpSocket,
    key: KeyPair,
    keys: HashMap<MemberId, PublicKey>,
    session: u32,
}

impl Peer {
    fn new(key: KeyPair) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Peer {
            socket,
            key,
            keys: HashMap::new(),
            session: 0,
        }
    }

    fn address(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn send(&self, to: SocketAddr, packet: Packet) {
        self.socket.send_to(&packet.encode(&self.key), to).unwrap();
    }

    /// Walks to `node` and returns its introduction-response.
    fn walk(&mut self, node: SocketAddr, walk: u32) -> IntroductionResponse {
        let mut request = match request(&self.key, example(), node, self.address()) {
            Packet::IntroductionRequest(r) => r,
            _ => unreachable!(),
        };
        request.walk = walk;
        request.session = self.session;
        self.send(node, Packet::IntroductionRequest(request));
        let mut waiting: Vec<Vec<u8>> = Vec::new();
        let mut buffer = [0u8; 2048];
        loop {
            let (len, from) = self
                .socket
                .recv_from(&mut buffer)
                .expect("an answer from the node");
            assert_eq!(from, node);
            let mut datagrams = vec![buffer[..len].to_vec()];
            while let Some(bytes) = datagrams.pop() {
                match wire::decode(&bytes, 1500, &self.keys) {
                    Ok(Packet::MissingIdentity(m)) => {
                        assert_eq!(m.member, self.key.member_id());
                        let identity = Identity {
                            community: m.community,
                            session: self.session,
                            random: m.random,
                            member: self.key.public().clone(),
                        };
                        self.send(node, Packet::Identity(identity));
                    }
                    Ok(Packet::SessionRequest(r)) => {
                        assert_eq!(r.walk, walk);
                        let random = 1234;
                        self.session = random + r.random;
                        let response = SessionResponse {
                            community: r.community,
                            version: SESSION_VERSION,
                            walk,
                            random,
                        };
                        self.send(node, Packet::SessionResponse(response));
                    }
                    Ok(Packet::IntroductionResponse(r)) => {
                        assert_eq!(r.walk, walk);
                        assert_eq!(r.session, self.session);
                        return r;
                    }
                    Ok(Packet::Identity(i)) => {
                        self.keys.insert(i.member.member_id(), i.member);
                        datagrams.append(&mut waiting);
                    }
                    Err(DecodeError::UnknownMember(member)) => {
                        waiting.push(bytes);
                        let ask = MissingIdentity {
                            community: example(),
                            session: self.session,
                            random: 99,
                            member,
                        };
                        self.send(node, Packet::MissingIdentity(ask));
                    }
                    // The node walks too: its own introduction-requests are not answers.
                    Ok(_) => {}
                    Err(error) => panic!("undecodable answer: {error}"),
                }
            }
        }
    }
}

/// Sends `bytes` to the node, waits until `reason` counts one more drop, then checks that the
/// node still answers a walk.
async fn assert_dropped(node: &TestNode, peer: &mut Peer, bytes: &[u8], reason: &str) {
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
    let mut peer = Peer::new(key(9));
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
    assert_dropped(&node, &mut peer, &random, "malformed").await;

    // Truncated: a valid packet cut short.
    let valid = request(&me, example(), node.udp, from).encode(&me);
    assert_dropped(&node, &mut peer, &valid[..valid.len() - 10], "malformed").await;

    // Oversized: larger than the 1500-byte budget.
    assert_dropped(&node, &mut peer, &vec![0x0A; 4000], "oversized").await;

    // Valid protobuf, wrong signature: signed by another key than the member it names.
    let forged = request(&me, example(), node.udp, from).encode(&key(2));
    assert_dropped(&node, &mut peer, &forged, "bad-signature").await;

    // Unknown community: valid and signed, for a community this node did not join.
    let unknown = request(&me, CommunityId([0x77; 20]), node.udp, from).encode(&me);
    assert_dropped(&node, &mut peer, &unknown, "unknown-community").await;

    // A huge length prefix: field 1 claims 2^62 bytes.
    let mut huge = vec![0x0A];
    prost::encoding::encode_varint(1 << 62, &mut huge);
    huge.extend_from_slice(&[1, 2, 3]);
    assert_dropped(&node, &mut peer, &huge, "malformed").await;

    // Valid protobuf of the wrong shape: a descriptor with nothing in it.
    let empty = pb::Message {
        descriptor: Some(Vec::new()),
        signatures: vec![],
    }
    .encode_to_vec();
    assert_dropped(&node, &mut peer, &empty, "no-message").await;

    // An empty datagram.
    assert_dropped(&node, &mut peer, &[], "empty").await;

    let info = node.get("/v1/node").await;
    assert!(
        info["stats"]["packets"]["introduction-request"]
            .as_u64()
            .unwrap()
            >= 9
    );
    assert_eq!(info["sessions"], 1);
    node.stop().await;
}
