//! A peer played by the test itself, speaking the protocol over a UDP socket.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use dispersy_core::identity::{CommunityId, KeyPair, MemberId, PublicKey};
use dispersy_core::wire::{
    self, ConnectionType, DecodeError, Identity, IntroductionRequest, IntroductionResponse,
    MissingIdentity, Packet, SESSION_VERSION, SessionResponse,
};

use crate::{EXAMPLE, PROBE};

/// The test member `n`.
pub fn key(n: u8) -> KeyPair {
    KeyPair::from_secret(&[n; 32]).unwrap()
}

/// An introduction-request of `member` to `to`.
pub fn request(
    member: &KeyPair,
    community: CommunityId,
    to: SocketAddr,
    from: SocketAddr,
) -> Packet {
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

/// The example community id.
pub fn example() -> CommunityId {
    CommunityId::from_hex(EXAMPLE).unwrap()
}

/// The probe community id.
pub fn probe() -> CommunityId {
    CommunityId::from_hex(PROBE).unwrap()
}

/// A well-behaved peer played by the test: it walks to the node and goes through the whole
/// exchange (identity, session handshake) the way a real node does.
pub struct Peer {
    /// Its socket, on 127.0.0.1.
    pub socket: UdpSocket,
    /// Its member.
    pub key: KeyPair,
    /// The community it walks in.
    pub community: CommunityId,
    /// Keys it learnt.
    pub keys: HashMap<MemberId, PublicKey>,
    /// Its session with the node, 0 before the first walk.
    pub session: u32,
}

impl Peer {
    /// A peer of `community` with `key` on a fresh loopback socket.
    pub fn new(community: CommunityId, key: KeyPair) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Peer {
            socket,
            key,
            community,
            keys: HashMap::new(),
            session: 0,
        }
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Sends `packet`, signed with its key where signed.
    pub fn send(&self, to: SocketAddr, packet: Packet) {
        self.socket.send_to(&packet.encode(&self.key), to).unwrap();
    }

    /// Walks to `node` and returns its introduction-response.
    pub fn walk(&mut self, node: SocketAddr, walk: u32) -> IntroductionResponse {
        let mut request = match request(&self.key, self.community, node, self.address()) {
            Packet::IntroductionRequest(r) => r,
            _ => unreachable!(),
        };
        request.walk = walk;
        request.session = self.session;
        self.send(node, Packet::IntroductionRequest(request));
        let mut waiting: Vec<Vec<u8>> = Vec::new();
        let mut buffer = [0u8; 2048];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no introduction-response from the node"
            );
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
                            community: self.community,
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
