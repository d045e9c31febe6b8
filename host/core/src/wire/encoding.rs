//! Domain types to datagrams: [`Packet::encode`] and the signing of community messages.
//!
//! Signed packets are sealed here: the descriptor is serialised once, and its SHA-256 is what every
//! signer signs.

use dispersy_proto as pb;
use prost::Message as _;

use super::batch::{Checks, verify_signatures};
use super::collection::collection_datagram;
use super::field::{to_address, to_connection_type};
use super::{CommunityMessage, DecodeError, Packet, SignedMessage};
use crate::identity::{self, KeyPair};

impl CommunityMessage {
    /// The serialised descriptor its authors sign.
    pub fn descriptor(&self) -> Vec<u8> {
        pb::Descriptor {
            message: Some(pb::descriptor::Message::Community(pb::CommunityMessage {
                community: Some(self.community.0.to_vec()),
                message_type: Some(self.message_type),
                conversion: Some(self.conversion.as_bytes().to_vec()),
                members: self
                    .authors
                    .iter()
                    .map(|key| key.as_bytes().to_vec())
                    .collect(),
                global_time: Some(self.global_time),
                sequence_number: self.sequence_number,
                resolution_index: self.resolution_index,
                relay_hops: self.relay_hops,
                payload: Some(self.payload.clone()),
            })),
        }
        .encode_to_vec()
    }
}

impl SignedMessage {
    /// A double-member message from its descriptor and both authors' signatures, in author
    /// order (checked).
    pub fn assemble(
        message: CommunityMessage,
        descriptor: Vec<u8>,
        signatures: Vec<Vec<u8>>,
    ) -> Result<Self, DecodeError> {
        verify_signatures(&descriptor, &message.authors, &signatures, &Checks::Now)?;
        Ok(Self::checked(message, descriptor, signatures))
    }

    /// A double-member message from signatures already checked (ours just made, the
    /// co-signer's verified when its signature-response was decoded).
    pub(crate) fn checked(
        message: CommunityMessage,
        descriptor: Vec<u8>,
        signatures: Vec<Vec<u8>>,
    ) -> Self {
        let packet = pb::Message {
            descriptor: Some(descriptor),
            signatures,
        }
        .encode_to_vec();
        SignedMessage { message, packet }
    }

    /// Signs `message` with the keys of its authors, in order.
    pub fn sign(message: CommunityMessage, signers: &[&KeyPair]) -> Result<Self, SignError> {
        if signers.len() != message.authors.len()
            || signers
                .iter()
                .zip(&message.authors)
                .any(|(key, author)| key.public() != author)
        {
            return Err(SignError::WrongSigners);
        }
        let descriptor = message.descriptor();
        let packet = seal(descriptor, signers);
        Ok(SignedMessage { message, packet })
    }
}

/// Why a message could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The keys given are not the message's authors.
    #[error("the signing keys are not the message's authors")]
    WrongSigners,
}

fn seal(descriptor: Vec<u8>, signers: &[&KeyPair]) -> Vec<u8> {
    let digest = identity::digest(&descriptor);
    pb::Message {
        signatures: signers
            .iter()
            .map(|key| key.sign_digest(&digest).to_vec())
            .collect(),
        descriptor: Some(descriptor),
    }
    .encode_to_vec()
}

impl Packet {
    /// Encodes the packet as one datagram; signed messages are signed with `key`, which must be
    /// the key of the packet's `member`.
    pub fn encode(&self, key: &KeyPair) -> Vec<u8> {
        use pb::descriptor::Message as D;
        let (message, signed) = match self {
            Packet::IntroductionRequest(m) => (
                D::IntroductionRequest(pb::IntroductionRequest {
                    session: Some(m.session),
                    walk: Some(m.walk),
                    community: Some(m.community.0.to_vec()),
                    global_time: Some(m.global_time),
                    destination: Some(to_address(m.destination)),
                    sources: vec![to_address(m.source_lan), to_address(m.source_wan)],
                    random: Some(m.random),
                    member: Some(m.member.member_id().0.to_vec()),
                    synchronization: m.sync.as_ref().map(|s| {
                        pb::introduction_request::Synchronization {
                            low: Some(s.low),
                            high: Some(s.high),
                            modulo: Some(s.modulo),
                            offset: Some(s.offset),
                            bloomfilter: Some(s.bloom.clone()),
                            functions: Some(s.functions),
                            prefix: Some(s.prefix),
                        }
                    }),
                    connection_type: Some(to_connection_type(m.connection_type)),
                    advice: Some(m.advice),
                }),
                true,
            ),
            Packet::IntroductionResponse(m) => (
                D::IntroductionResponse(pb::IntroductionResponse {
                    session: Some(m.session),
                    walk: Some(m.walk),
                    community: Some(m.community.0.to_vec()),
                    global_time: Some(m.global_time),
                    invitee: m
                        .introduced
                        .map(|(lan, wan)| vec![to_address(lan), to_address(wan)])
                        .unwrap_or_default(),
                    destination: Some(to_address(m.destination)),
                    sources: vec![to_address(m.source_lan), to_address(m.source_wan)],
                    member: Some(m.member.member_id().0.to_vec()),
                    connection_type: Some(to_connection_type(m.connection_type)),
                }),
                true,
            ),
            Packet::PunctureRequest(m) => (
                D::PunctureRequest(pb::PunctureRequest {
                    session: Some(m.session),
                    walk: Some(m.walk),
                    global_time: Some(m.global_time),
                    initiator: vec![to_address(m.initiator_lan), to_address(m.initiator_wan)],
                    community: Some(m.community.0.to_vec()),
                    random: Some(m.random),
                }),
                false,
            ),
            Packet::Puncture(m) => (
                D::Puncture(pb::Puncture {
                    session: Some(m.session),
                    walk: Some(m.walk),
                    source: vec![to_address(m.source_lan), to_address(m.source_wan)],
                    community: Some(m.community.0.to_vec()),
                    random: Some(m.random),
                    // The full key: the receiver has most likely never met the sender, and it may
                    // not ask (it shares no session with it).
                    member: Some(m.member.as_bytes().to_vec()),
                }),
                true,
            ),
            Packet::Collection(c) => {
                let packets: Vec<&[u8]> = c.messages.iter().map(|m| m.packet.as_slice()).collect();
                return collection_datagram(c.session, &packets, c.relay_hops);
            }
            Packet::SessionRequest(m) => (
                D::SessionRequest(pb::SessionRequest {
                    version: Some(m.version),
                    version_blacklist: Vec::new(),
                    walk: Some(m.walk),
                    random_b: Some(m.random),
                    destination: Some(to_address(m.destination)),
                    source: vec![to_address(m.source_lan), to_address(m.source_wan)],
                    community: Some(m.community.0.to_vec()),
                }),
                false,
            ),
            Packet::SessionResponse(m) => (
                D::SessionResponse(pb::SessionResponse {
                    version: Some(m.version),
                    walk: Some(m.walk),
                    random_a: Some(m.random),
                    community: Some(m.community.0.to_vec()),
                }),
                false,
            ),
            Packet::MissingIdentity(m) => (
                D::MissingIdentity(pb::MissingIdentity {
                    session: Some(m.session),
                    random: Some(m.random),
                    member: Some(m.member.0.to_vec()),
                    community: Some(m.community.0.to_vec()),
                }),
                false,
            ),
            Packet::Identity(m) => (
                D::Identity(pb::Identity {
                    session: Some(m.session),
                    member: Some(m.member.as_bytes().to_vec()),
                    community: Some(m.community.0.to_vec()),
                    random: Some(m.random),
                }),
                false,
            ),
            Packet::SignatureRequest(m) => (
                D::SignatureRequest(pb::SignatureRequest {
                    session: Some(m.session),
                    request: Some(m.request),
                    message: Some(pb::Message {
                        descriptor: Some(m.descriptor.clone()),
                        signatures: Vec::new(),
                    }),
                }),
                false,
            ),
            Packet::SignatureResponse(m) => (
                D::SignatureResponse(pb::SignatureResponse {
                    session: Some(m.session),
                    request: Some(m.request),
                    message: Some(pb::Message {
                        descriptor: Some(m.descriptor.clone()),
                        signatures: vec![m.signature.clone()],
                    }),
                }),
                false,
            ),
            Packet::MissingSequence(m) => (
                D::MissingSequence(pb::MissingSequence {
                    session: Some(m.session),
                    random: None,
                    member: Some(m.member.0.to_vec()),
                    descriptor: Some(pb::descriptor::Type::Community as i32),
                    sequence_low: Some(m.low),
                    sequence_high: Some(m.high),
                    community: Some(m.community.0.to_vec()),
                    community_message: Some(m.meta),
                }),
                false,
            ),
            Packet::MissingMessage(m) => (
                D::MissingMessage(pb::MissingMessage {
                    session: Some(m.session),
                    random: None,
                    member: Some(m.member.0.to_vec()),
                    global_times: m.global_times.clone(),
                    community: Some(m.community.0.to_vec()),
                }),
                false,
            ),
            Packet::MissingLastMessage(m) => (
                D::MissingLastMessage(pb::MissingLastMessage {
                    session: Some(m.session),
                    random: None,
                    member: Some(m.member.0.to_vec()),
                    descriptor: Some(pb::descriptor::Type::Community as i32),
                    community: Some(m.community.0.to_vec()),
                    community_message: Some(m.meta),
                }),
                false,
            ),
        };
        let descriptor = pb::Descriptor {
            message: Some(message),
        }
        .encode_to_vec();
        if signed {
            seal(descriptor, &[key])
        } else {
            seal(descriptor, &[])
        }
    }
}
