//! Domain types to datagrams: [`Packet::encode`] and the signing of community messages.
//!
//! Signed packets are sealed here: the descriptor is serialised once, and its SHA-256 is what every
//! signer signs.

use dispersy_proto as pb;
use prost::Message as _;

use super::authority;
use super::batch::{Checks, verify_signatures};
use super::collection::collection_datagram;
use super::field::{to_address, to_community_type, to_connection_type, to_member_ref};
use super::{
    CommunityMessage, DecodeError, Identity, IntroductionRequest, IntroductionResponse,
    MissingIdentity, MissingLastMessage, MissingMessage, MissingProof, MissingSequence, Packet,
    Puncture, PunctureRequest, SessionRequest, SessionResponse, SignatureRequest,
    SignatureResponse, SignedMessage,
};
use crate::identity::{self, KeyPair};

impl CommunityMessage {
    /// The serialised descriptor its authors sign: a `CommunityMessage` for a plugin message, the
    /// kind's own descriptor field for a built-in one (see `authority::to_proto` for what it
    /// writes).
    pub fn descriptor(&self) -> Vec<u8> {
        if let Some(body) = &self.authority {
            return pb::Descriptor {
                message: Some(authority::to_proto(self, body)),
            }
            .encode_to_vec();
        }
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
            Packet::IntroductionRequest(m) => (D::IntroductionRequest(m.to_proto()), true),
            Packet::IntroductionResponse(m) => (D::IntroductionResponse(m.to_proto()), true),
            Packet::PunctureRequest(m) => (D::PunctureRequest(m.to_proto()), false),
            Packet::Puncture(m) => (D::Puncture(m.to_proto()), true),
            Packet::Collection(c) => {
                let packets: Vec<&[u8]> = c.messages.iter().map(|m| m.packet.as_slice()).collect();
                return collection_datagram(c.session, &packets, c.relay_hops);
            }
            Packet::SessionRequest(m) => (D::SessionRequest(m.to_proto()), false),
            Packet::SessionResponse(m) => (D::SessionResponse(m.to_proto()), false),
            Packet::MissingIdentity(m) => (D::MissingIdentity(m.to_proto()), false),
            Packet::Identity(m) => (D::Identity(m.to_proto()), false),
            Packet::SignatureRequest(m) => (D::SignatureRequest(m.to_proto()), false),
            Packet::SignatureResponse(m) => (D::SignatureResponse(m.to_proto()), false),
            Packet::MissingSequence(m) => (D::MissingSequence(m.to_proto()), false),
            Packet::MissingMessage(m) => (D::MissingMessage(m.to_proto()), false),
            Packet::MissingLastMessage(m) => (D::MissingLastMessage(m.to_proto()), false),
            Packet::MissingProof(m) => (D::MissingProof(m.to_proto()), false),
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

impl IntroductionRequest {
    /// The wire form of the introduction-request: the member named by its id.
    fn to_proto(&self) -> pb::IntroductionRequest {
        pb::IntroductionRequest {
            session: Some(self.session),
            walk: Some(self.walk),
            community: Some(self.community.0.to_vec()),
            global_time: Some(self.global_time),
            destination: Some(to_address(self.destination)),
            sources: vec![to_address(self.source_lan), to_address(self.source_wan)],
            random: Some(self.random),
            member: Some(self.member.member_id().0.to_vec()),
            synchronization: self.sync.as_ref().map(|s| {
                pb::introduction_request::Synchronization {
                    low: Some(s.low),
                    high: Some(s.high),
                    modulo: Some(s.modulo),
                    offset: Some(super::field::flip_offset(s.modulo, s.offset)),
                    bloomfilter: Some(s.bloom.clone()),
                    functions: Some(s.functions),
                    prefix: Some(s.prefix),
                }
            }),
            connection_type: Some(to_connection_type(self.connection_type)),
            advice: Some(self.advice),
        }
    }
}

impl IntroductionResponse {
    /// The wire form of the introduction-response: the member named by its id; the invitee is
    /// empty or its LAN and WAN address.
    fn to_proto(&self) -> pb::IntroductionResponse {
        pb::IntroductionResponse {
            session: Some(self.session),
            walk: Some(self.walk),
            community: Some(self.community.0.to_vec()),
            global_time: Some(self.global_time),
            invitee: self
                .introduced
                .map(|(lan, wan)| vec![to_address(lan), to_address(wan)])
                .unwrap_or_default(),
            destination: Some(to_address(self.destination)),
            sources: vec![to_address(self.source_lan), to_address(self.source_wan)],
            member: Some(self.member.member_id().0.to_vec()),
            connection_type: Some(to_connection_type(self.connection_type)),
        }
    }
}

impl PunctureRequest {
    /// The wire form of the puncture-request.
    fn to_proto(&self) -> pb::PunctureRequest {
        pb::PunctureRequest {
            session: Some(self.session),
            walk: Some(self.walk),
            global_time: Some(self.global_time),
            initiator: vec![
                to_address(self.initiator_lan),
                to_address(self.initiator_wan),
            ],
            community: Some(self.community.0.to_vec()),
            random: Some(self.random),
        }
    }
}

impl Puncture {
    /// The wire form of the puncture: the member by its full key.
    fn to_proto(&self) -> pb::Puncture {
        pb::Puncture {
            session: Some(self.session),
            walk: Some(self.walk),
            source: vec![to_address(self.source_lan), to_address(self.source_wan)],
            community: Some(self.community.0.to_vec()),
            random: Some(self.random),
            // The full key: the receiver has most likely never met the sender, and it may
            // not ask (it shares no session with it).
            member: Some(self.member.as_bytes().to_vec()),
        }
    }
}

impl SessionRequest {
    /// The wire form of the session-request.
    fn to_proto(&self) -> pb::SessionRequest {
        pb::SessionRequest {
            version: Some(self.version),
            version_blacklist: Vec::new(),
            walk: Some(self.walk),
            random_b: Some(self.random),
            destination: Some(to_address(self.destination)),
            source: vec![to_address(self.source_lan), to_address(self.source_wan)],
            community: Some(self.community.0.to_vec()),
        }
    }
}

impl SessionResponse {
    /// The wire form of the session-response.
    fn to_proto(&self) -> pb::SessionResponse {
        pb::SessionResponse {
            version: Some(self.version),
            walk: Some(self.walk),
            random_a: Some(self.random),
            community: Some(self.community.0.to_vec()),
        }
    }
}

impl MissingIdentity {
    /// The wire form of the missing-identity.
    fn to_proto(&self) -> pb::MissingIdentity {
        pb::MissingIdentity {
            session: Some(self.session),
            random: Some(self.random),
            member: Some(self.member.0.to_vec()),
            community: Some(self.community.0.to_vec()),
        }
    }
}

impl Identity {
    /// The wire form of the identity.
    fn to_proto(&self) -> pb::Identity {
        pb::Identity {
            session: Some(self.session),
            member: Some(self.member.as_bytes().to_vec()),
            community: Some(self.community.0.to_vec()),
            random: Some(self.random),
        }
    }
}

impl SignatureRequest {
    /// The wire form of the signature-request: the message without signatures.
    fn to_proto(&self) -> pb::SignatureRequest {
        pb::SignatureRequest {
            session: Some(self.session),
            request: Some(self.request),
            message: Some(pb::Message {
                descriptor: Some(self.descriptor.clone()),
                signatures: Vec::new(),
            }),
        }
    }
}

impl SignatureResponse {
    /// The wire form of the signature-response: the message with the one signature.
    fn to_proto(&self) -> pb::SignatureResponse {
        pb::SignatureResponse {
            session: Some(self.session),
            request: Some(self.request),
            message: Some(pb::Message {
                descriptor: Some(self.descriptor.clone()),
                signatures: vec![self.signature.clone()],
            }),
        }
    }
}

impl MissingSequence {
    /// The wire form of the missing-sequence: a plugin type as COMMUNITY and its number, a
    /// built-in one as its own descriptor type.
    fn to_proto(&self) -> pb::MissingSequence {
        let (descriptor, community_message) = to_community_type(self.meta);
        pb::MissingSequence {
            session: Some(self.session),
            random: None,
            member: Some(self.member.0.to_vec()),
            descriptor: Some(descriptor),
            sequence_low: Some(self.low),
            sequence_high: Some(self.high),
            community: Some(self.community.0.to_vec()),
            community_message,
        }
    }
}

impl MissingMessage {
    /// The wire form of the missing-message.
    fn to_proto(&self) -> pb::MissingMessage {
        pb::MissingMessage {
            session: Some(self.session),
            random: None,
            member: Some(self.member.0.to_vec()),
            global_times: self.global_times.clone(),
            community: Some(self.community.0.to_vec()),
        }
    }
}

impl MissingLastMessage {
    /// The wire form of the missing-last-message, the type written as for missing-sequence.
    fn to_proto(&self) -> pb::MissingLastMessage {
        let (descriptor, community_message) = to_community_type(self.meta);
        pb::MissingLastMessage {
            session: Some(self.session),
            random: None,
            member: Some(self.member.0.to_vec()),
            descriptor: Some(descriptor),
            community: Some(self.community.0.to_vec()),
            community_message,
        }
    }
}

impl MissingProof {
    /// The wire form of the missing-proof: the member by key when known, else by id.
    fn to_proto(&self) -> pb::MissingProof {
        pb::MissingProof {
            session: Some(self.session),
            random: Some(self.random),
            member: Some(to_member_ref(&self.member)),
            global_times: self.global_times.clone(),
            community: Some(self.community.0.to_vec()),
        }
    }
}
