//! Datagrams to domain types: [`decode`] and [`peek`], and the decoding of community messages.
//!
//! Checks run in a fixed order (size, envelope, descriptor, then the fields of the packet kind in
//! the order listed here): a malformed datagram always gets the same [`DecodeError`].

use dispersy_proto as pb;
use prost::Message as _;

use super::batch::{Checks, verify_signatures};
use super::field::{
    address, community_id, community_type, connection_type, member_id, member_key, nonzero,
    required, synchronization,
};
use super::{
    Collection, CommunityMessage, Conversion, DecodeError, Identity, IntroductionRequest,
    IntroductionResponse, Keys, MAX_MISSING_TIMES, MissingIdentity, MissingLastMessage,
    MissingMessage, MissingSequence, Packet, Puncture, PunctureRequest, SessionRequest,
    SessionResponse, SignatureRequest, SignatureResponse, SignedMessage,
};
use crate::identity::{self, CommunityId, PublicKey};

/// Decodes and verifies one datagram of at most `max_datagram` bytes. Members named by id only
/// are looked up in `keys`.
pub fn decode(
    datagram: &[u8],
    max_datagram: usize,
    keys: &dyn Keys,
) -> Result<Packet, DecodeError> {
    decode_checked(datagram, max_datagram, keys, &Checks::Now)
}

pub(super) fn decode_checked(
    datagram: &[u8],
    max_datagram: usize,
    keys: &dyn Keys,
    checks: &Checks<'_>,
) -> Result<Packet, DecodeError> {
    if datagram.is_empty() {
        return Err(DecodeError::Empty);
    }
    if datagram.len() > max_datagram {
        return Err(DecodeError::Oversized {
            len: datagram.len(),
            max: max_datagram,
        });
    }
    let envelope = pb::Message::decode(datagram)?;
    let descriptor_bytes = envelope
        .descriptor
        .as_deref()
        .ok_or(DecodeError::Missing("Message.descriptor"))?;
    let descriptor = pb::Descriptor::decode(descriptor_bytes)?;
    use pb::descriptor::Message as D;
    let signed = |member: &Option<Vec<u8>>| -> Result<PublicKey, DecodeError> {
        let member = member_key(member.as_deref(), "member", keys)?;
        verify_signatures(
            descriptor_bytes,
            std::slice::from_ref(&member),
            &envelope.signatures,
            checks,
        )?;
        Ok(member)
    };
    match descriptor.message.ok_or(DecodeError::NoMessage)? {
        D::IntroductionRequest(m) => {
            let member = signed(&m.member)?;
            let mut sources = m.sources.iter();
            Ok(Packet::IntroductionRequest(IntroductionRequest {
                community: community_id(m.community.as_deref())?,
                member,
                session: m.session.unwrap_or(0),
                walk: required(m.walk, "IntroductionRequest.walk")?,
                random: nonzero(m.random, "IntroductionRequest.random")?,
                global_time: m.global_time.unwrap_or(0),
                destination: address(m.destination.as_ref(), "destination")?,
                source_lan: address(sources.next(), "sources[0]")?,
                source_wan: address(sources.next(), "sources[1]")?,
                connection_type: connection_type(m.connection_type),
                advice: m.advice.unwrap_or(true),
                sync: m.synchronization.map(synchronization).transpose()?,
            }))
        }
        D::IntroductionResponse(m) => {
            let member = signed(&m.member)?;
            let mut sources = m.sources.iter();
            let introduced = match m.invitee.as_slice() {
                [] => None,
                [lan, wan] => Some((
                    address(Some(lan), "invitee[0]")?,
                    address(Some(wan), "invitee[1]")?,
                )),
                _ => {
                    return Err(DecodeError::Invalid {
                        field: "invitee",
                        reason: "must hold no address or a LAN and a WAN address",
                    });
                }
            };
            Ok(Packet::IntroductionResponse(IntroductionResponse {
                community: community_id(m.community.as_deref())?,
                member,
                session: m.session.unwrap_or(0),
                walk: required(m.walk, "IntroductionResponse.walk")?,
                global_time: m.global_time.unwrap_or(0),
                destination: address(m.destination.as_ref(), "destination")?,
                source_lan: address(sources.next(), "sources[0]")?,
                source_wan: address(sources.next(), "sources[1]")?,
                connection_type: connection_type(m.connection_type),
                introduced,
            }))
        }
        D::PunctureRequest(m) => {
            unsigned(&envelope)?;
            let mut initiator = m.initiator.iter();
            Ok(Packet::PunctureRequest(PunctureRequest {
                community: community_id(m.community.as_deref())?,
                session: m.session.unwrap_or(0),
                walk: required(m.walk, "PunctureRequest.walk")?,
                random: nonzero(m.random, "PunctureRequest.random")?,
                global_time: m.global_time.unwrap_or(0),
                initiator_lan: address(initiator.next(), "initiator[0]")?,
                initiator_wan: address(initiator.next(), "initiator[1]")?,
            }))
        }
        D::Puncture(m) => {
            let member = signed(&m.member)?;
            let mut source = m.source.iter();
            Ok(Packet::Puncture(Puncture {
                community: community_id(m.community.as_deref())?,
                member,
                session: m.session.unwrap_or(0),
                walk: required(m.walk, "Puncture.walk")?,
                random: nonzero(m.random, "Puncture.random")?,
                source_lan: address(source.next(), "source[0]")?,
                source_wan: address(source.next(), "source[1]")?,
            }))
        }
        D::Collection(c) => {
            unsigned(&envelope)?;
            if c.messages.is_empty() {
                return Err(DecodeError::Missing("Collection.messages"));
            }
            let messages = c
                .messages
                .iter()
                .map(|inner| SignedMessage::from_proto(inner, inner.encode_to_vec(), keys, checks))
                .collect::<Result<Vec<_>, _>>()?;
            let community = messages[0].message.community;
            if messages.iter().any(|m| m.message.community != community) {
                return Err(DecodeError::Invalid {
                    field: "Collection.messages",
                    reason: "messages of more than one community",
                });
            }
            Ok(Packet::Collection(Collection {
                session: c.session.unwrap_or(0),
                messages,
                relay_hops: c.relay_hops,
            }))
        }
        D::SessionRequest(m) => {
            unsigned(&envelope)?;
            let mut source = m.source.iter();
            Ok(Packet::SessionRequest(SessionRequest {
                community: community_id(m.community.as_deref())?,
                version: required(m.version, "SessionRequest.version")?,
                walk: required(m.walk, "SessionRequest.walk")?,
                random: nonzero(m.random_b, "SessionRequest.random_b")?,
                destination: address(m.destination.as_ref(), "destination")?,
                source_lan: address(source.next(), "source[0]")?,
                source_wan: address(source.next(), "source[1]")?,
            }))
        }
        D::SessionResponse(m) => {
            unsigned(&envelope)?;
            Ok(Packet::SessionResponse(SessionResponse {
                community: community_id(m.community.as_deref())?,
                version: required(m.version, "SessionResponse.version")?,
                walk: required(m.walk, "SessionResponse.walk")?,
                random: nonzero(m.random_a, "SessionResponse.random_a")?,
            }))
        }
        D::Identity(m) => {
            unsigned(&envelope)?;
            let member = m
                .member
                .as_deref()
                .ok_or(DecodeError::Missing("Identity.member"))?;
            Ok(Packet::Identity(Identity {
                community: community_id(m.community.as_deref())?,
                session: m.session.unwrap_or(0),
                random: nonzero(m.random, "Identity.random")?,
                member: PublicKey::from_bytes(member)?,
            }))
        }
        D::MissingIdentity(m) => {
            unsigned(&envelope)?;
            let member = member_id(m.member.as_deref(), "MissingIdentity.member")?;
            Ok(Packet::MissingIdentity(MissingIdentity {
                community: community_id(m.community.as_deref())?,
                session: m.session.unwrap_or(0),
                random: nonzero(m.random, "MissingIdentity.random")?,
                member,
            }))
        }
        D::MissingSequence(m) => {
            unsigned(&envelope)?;
            let low = required(m.sequence_low, "MissingSequence.sequence_low")?;
            let high = required(m.sequence_high, "MissingSequence.sequence_high")?;
            if low == 0 || high < low {
                return Err(DecodeError::Invalid {
                    field: "MissingSequence.sequence_low",
                    reason: "sequence numbers start at 1 and low <= high",
                });
            }
            Ok(Packet::MissingSequence(MissingSequence {
                community: community_id(m.community.as_deref())?,
                session: m.session.unwrap_or(0),
                member: member_id(m.member.as_deref(), "MissingSequence.member")?,
                meta: community_type(
                    m.descriptor,
                    m.community_message,
                    "MissingSequence.community_message",
                )?,
                low,
                high,
            }))
        }
        D::MissingMessage(m) => {
            unsigned(&envelope)?;
            if m.global_times.is_empty() || m.global_times.len() > MAX_MISSING_TIMES {
                return Err(DecodeError::Invalid {
                    field: "MissingMessage.global_times",
                    reason: "names 1 to 64 global times",
                });
            }
            Ok(Packet::MissingMessage(MissingMessage {
                community: community_id(m.community.as_deref())?,
                session: m.session.unwrap_or(0),
                member: member_id(m.member.as_deref(), "MissingMessage.member")?,
                global_times: m.global_times,
            }))
        }
        D::MissingLastMessage(m) => {
            unsigned(&envelope)?;
            Ok(Packet::MissingLastMessage(MissingLastMessage {
                community: community_id(m.community.as_deref())?,
                session: m.session.unwrap_or(0),
                member: member_id(m.member.as_deref(), "MissingLastMessage.member")?,
                meta: community_type(
                    m.descriptor,
                    m.community_message,
                    "MissingLastMessage.community_message",
                )?,
            }))
        }
        D::MissingProof(_) => Err(DecodeError::Unsupported("missing-proof")),
        D::SignatureRequest(m) => {
            unsigned(&envelope)?;
            let inner = m
                .message
                .ok_or(DecodeError::Missing("SignatureRequest.message"))?;
            if !inner.signatures.is_empty() {
                return Err(DecodeError::Invalid {
                    field: "SignatureRequest.message",
                    reason: "the message to co-sign carries no signature",
                });
            }
            let descriptor = inner
                .descriptor
                .ok_or(DecodeError::Missing("SignatureRequest.message"))?;
            let message = co_signed(&descriptor)?;
            Ok(Packet::SignatureRequest(SignatureRequest {
                session: m.session.unwrap_or(0),
                request: required(m.request, "SignatureRequest.request")?,
                message,
                descriptor,
            }))
        }
        D::SignatureResponse(m) => {
            unsigned(&envelope)?;
            let inner = m
                .message
                .ok_or(DecodeError::Missing("SignatureResponse.message"))?;
            let [signature] = <[Vec<u8>; 1]>::try_from(inner.signatures).map_err(|s| {
                DecodeError::SignatureCount {
                    expected: 1,
                    got: s.len(),
                }
            })?;
            let descriptor = inner
                .descriptor
                .ok_or(DecodeError::Missing("SignatureResponse.message"))?;
            let message = co_signed(&descriptor)?;
            let digest = identity::digest(&descriptor);
            // The co-signer (the second author) answers, as a rule: tried first.
            let signer = (0..message.authors.len())
                .rev()
                .find(|&i| {
                    message.authors[i]
                        .verify_digest(&digest, &signature)
                        .is_ok()
                })
                .ok_or(DecodeError::Invalid {
                    field: "SignatureResponse.message",
                    reason: "the signature is by neither author",
                })?;
            Ok(Packet::SignatureResponse(SignatureResponse {
                session: m.session.unwrap_or(0),
                request: required(m.request, "SignatureResponse.request")?,
                message,
                descriptor,
                signer,
                signature,
            }))
        }
        D::Authorize(_) => Err(DecodeError::Unsupported("authorize")),
        D::Revoke(_) => Err(DecodeError::Unsupported("revoke")),
        D::UndoOwn(_) => Err(DecodeError::Unsupported("undo-own")),
        D::UndoOther(_) => Err(DecodeError::Unsupported("undo-other")),
        D::DynamicSettings(_) => Err(DecodeError::Unsupported("dynamic-settings")),
        D::DestroyCommunity(_) => Err(DecodeError::Unsupported("destroy-community")),
        D::Community(_) => Err(DecodeError::Invalid {
            field: "Descriptor.community",
            reason: "community messages travel inside a collection",
        }),
    }
}

/// The kind of a datagram and the community it names, read without any verification: for
/// labelling (a missing-identity about a datagram that cannot be verified yet, traffic counts).
pub fn peek(datagram: &[u8]) -> Option<(&'static str, Option<CommunityId>)> {
    use pb::descriptor::Message as D;
    let envelope = pb::Message::decode(datagram).ok()?;
    let descriptor = pb::Descriptor::decode(envelope.descriptor.as_deref()?).ok()?;
    let (kind, community) = match descriptor.message? {
        D::IntroductionRequest(m) => ("introduction-request", m.community),
        D::IntroductionResponse(m) => ("introduction-response", m.community),
        D::SessionRequest(m) => ("session-request", m.community),
        D::SessionResponse(m) => ("session-response", m.community),
        D::PunctureRequest(m) => ("puncture-request", m.community),
        D::Puncture(m) => ("puncture", m.community),
        D::MissingIdentity(m) => ("missing-identity", m.community),
        D::Identity(m) => ("identity", m.community),
        D::MissingSequence(m) => ("missing-sequence", m.community),
        D::MissingMessage(m) => ("missing-message", m.community),
        D::MissingLastMessage(m) => ("missing-last-message", m.community),
        D::SignatureRequest(_) => ("signature-request", None),
        D::SignatureResponse(_) => ("signature-response", None),
        D::Collection(_) => ("collection", None),
        _ => ("other", None),
    };
    Some((
        kind,
        community.and_then(|c| CommunityId::from_slice(&c).ok()),
    ))
}

impl CommunityMessage {
    /// Parses a serialised descriptor holding a community message (no signature checked).
    pub fn from_descriptor(descriptor_bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::parse(descriptor_bytes, &())
    }

    /// [`CommunityMessage::from_descriptor`], its authors' keys parsed through `keys`.
    fn parse(descriptor_bytes: &[u8], keys: &dyn Keys) -> Result<Self, DecodeError> {
        let descriptor = pb::Descriptor::decode(descriptor_bytes)?;
        let m = match descriptor.message {
            Some(pb::descriptor::Message::Community(m)) => m,
            Some(_) => return Err(DecodeError::Unsupported("persistent built-in message")),
            None => return Err(DecodeError::NoMessage),
        };
        if m.members.len() > 2 {
            return Err(DecodeError::Invalid {
                field: "CommunityMessage.members",
                reason: "at most two signing members",
            });
        }
        let authors = m
            .members
            .iter()
            .map(|bytes| member_key(Some(bytes), "CommunityMessage.members", keys))
            .collect::<Result<Vec<_>, _>>()?;
        let message = CommunityMessage {
            community: community_id(m.community.as_deref())?,
            message_type: required(m.message_type, "CommunityMessage.message_type")?,
            conversion: Conversion::new(
                m.conversion
                    .as_deref()
                    .ok_or(DecodeError::Missing("CommunityMessage.conversion"))?,
            )?,
            authors,
            global_time: m.global_time.unwrap_or(0),
            sequence_number: m.sequence_number,
            resolution_index: m.resolution_index,
            relay_hops: m.relay_hops,
            payload: m
                .payload
                .ok_or(DecodeError::Missing("CommunityMessage.payload"))?,
        };
        if !message.authors.is_empty() && message.global_time == 0 {
            return Err(DecodeError::Invalid {
                field: "CommunityMessage.global_time",
                reason: "signed messages have a global time of 1 or higher",
            });
        }
        if message.sequence_number == Some(0) {
            return Err(DecodeError::Invalid {
                field: "CommunityMessage.sequence_number",
                reason: "sequence numbers start at 1",
            });
        }
        Ok(message)
    }
}

/// The message of a signature-request or -response: a community message of exactly two authors.
fn co_signed(descriptor: &[u8]) -> Result<CommunityMessage, DecodeError> {
    let message = CommunityMessage::from_descriptor(descriptor)?;
    if message.authors.len() != 2 {
        return Err(DecodeError::Invalid {
            field: "CommunityMessage.members",
            reason: "a co-signed message has two authors",
        });
    }
    Ok(message)
}

impl SignedMessage {
    /// Decodes and verifies one stored or received community message packet.
    pub fn decode(packet: &[u8]) -> Result<Self, DecodeError> {
        let envelope = pb::Message::decode(packet)?;
        Self::from_proto(&envelope, packet.to_vec(), &(), &Checks::Now)
    }

    fn from_proto(
        envelope: &pb::Message,
        packet: Vec<u8>,
        keys: &dyn Keys,
        checks: &Checks<'_>,
    ) -> Result<Self, DecodeError> {
        let descriptor_bytes = envelope
            .descriptor
            .as_deref()
            .ok_or(DecodeError::Missing("Message.descriptor"))?;
        let message = CommunityMessage::parse(descriptor_bytes, keys)?;
        verify_signatures(
            descriptor_bytes,
            &message.authors,
            &envelope.signatures,
            checks,
        )?;
        Ok(SignedMessage { message, packet })
    }
}

fn unsigned(envelope: &pb::Message) -> Result<(), DecodeError> {
    if envelope.signatures.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::SignatureCount {
            expected: 0,
            got: envelope.signatures.len(),
        })
    }
}
