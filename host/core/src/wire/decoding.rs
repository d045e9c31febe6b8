//! Datagrams to domain types: [`decode`] and [`peek`], and the decoding of community messages.
//!
//! Checks run in a fixed order (size, outer message, descriptor, then the checks of the packet
//! kind in the order its `from_proto` makes them): a malformed datagram always gets the same
//! [`DecodeError`].

use dispersy_proto as pb;
use prost::Message as _;

use super::authority::{self, plugin_type};
use super::batch::{Checks, verify_signatures};
use super::field::{
    address, community_id, community_type, connection_type, member_id, member_key, member_ref,
    nonzero, required, synchronization,
};
use super::{
    Collection, CommunityMessage, Conversion, DecodeError, Identity, IntroductionRequest,
    IntroductionResponse, Keys, MAX_MISSING_TIMES, MissingIdentity, MissingLastMessage,
    MissingMessage, MissingProof, MissingSequence, Packet, Puncture, PunctureRequest,
    SessionRequest, SessionResponse, SignatureRequest, SignatureResponse, SignedMessage,
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

/// [`decode`], with signatures checked as `checks` says: the check order every decoder follows.
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
    let outer = pb::Message::decode(datagram)?;
    let descriptor_bytes = outer
        .descriptor
        .as_deref()
        .ok_or(DecodeError::Missing("Message.descriptor"))?;
    let descriptor = pb::Descriptor::decode(descriptor_bytes)?;
    use pb::descriptor::Message as D;
    let envelope = Envelope {
        message: &outer,
        descriptor: descriptor_bytes,
        keys,
        checks,
    };
    match descriptor.message.ok_or(DecodeError::NoMessage)? {
        D::IntroductionRequest(m) => {
            IntroductionRequest::from_proto(m, &envelope).map(Packet::IntroductionRequest)
        }
        D::IntroductionResponse(m) => {
            IntroductionResponse::from_proto(m, &envelope).map(Packet::IntroductionResponse)
        }
        D::PunctureRequest(m) => {
            PunctureRequest::from_proto(m, &envelope).map(Packet::PunctureRequest)
        }
        D::Puncture(m) => Puncture::from_proto(m, &envelope).map(Packet::Puncture),
        D::Collection(c) => Collection::from_proto(c, &envelope).map(Packet::Collection),
        D::SessionRequest(m) => {
            SessionRequest::from_proto(m, &envelope).map(Packet::SessionRequest)
        }
        D::SessionResponse(m) => {
            SessionResponse::from_proto(m, &envelope).map(Packet::SessionResponse)
        }
        D::Identity(m) => Identity::from_proto(m, &envelope).map(Packet::Identity),
        D::MissingIdentity(m) => {
            MissingIdentity::from_proto(m, &envelope).map(Packet::MissingIdentity)
        }
        D::MissingSequence(m) => {
            MissingSequence::from_proto(m, &envelope).map(Packet::MissingSequence)
        }
        D::MissingMessage(m) => {
            MissingMessage::from_proto(m, &envelope).map(Packet::MissingMessage)
        }
        D::MissingLastMessage(m) => {
            MissingLastMessage::from_proto(m, &envelope).map(Packet::MissingLastMessage)
        }
        D::MissingProof(m) => MissingProof::from_proto(m, &envelope).map(Packet::MissingProof),
        D::SignatureRequest(m) => {
            SignatureRequest::from_proto(m, &envelope).map(Packet::SignatureRequest)
        }
        D::SignatureResponse(m) => {
            SignatureResponse::from_proto(m, &envelope).map(Packet::SignatureResponse)
        }
        D::Authorize(_) => Err(outside_collection("Descriptor.authorize")),
        D::Revoke(_) => Err(outside_collection("Descriptor.revoke")),
        D::UndoOwn(_) => Err(outside_collection("Descriptor.undo_own")),
        D::UndoOther(_) => Err(outside_collection("Descriptor.undo_other")),
        D::DynamicSettings(_) => Err(outside_collection("Descriptor.dynamic_settings")),
        D::DestroyCommunity(_) => Err(outside_collection("Descriptor.destroy_community")),
        D::Community(_) => Err(DecodeError::Invalid {
            field: "Descriptor.community",
            reason: "community messages travel inside a collection",
        }),
    }
}

/// The error for a permission message sent as a bare datagram: like community messages, they
/// travel inside a collection.
fn outside_collection(field: &'static str) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: "permission messages travel inside a collection",
    }
}

/// A datagram's outer message while its descriptor is read: what checking the signatures of the
/// packet it holds needs.
struct Envelope<'a> {
    /// The outer message.
    message: &'a pb::Message,
    /// Its serialised descriptor, the bytes signed.
    descriptor: &'a [u8],
    /// Where members named by id are looked up.
    keys: &'a dyn Keys,
    /// How signatures are checked.
    checks: &'a Checks<'a>,
}

impl Envelope<'_> {
    /// The key of the one member who signed the packet (`member`: its key or its id), its
    /// signature verified or noted.
    fn signed(&self, member: Option<&[u8]>) -> Result<PublicKey, DecodeError> {
        let member = member_key(member, "member", self.keys)?;
        verify_signatures(
            self.descriptor,
            std::slice::from_ref(&member),
            &self.message.signatures,
            self.checks,
        )?;
        Ok(member)
    }

    /// Checks that an unsigned packet carries no signature.
    fn unsigned(&self) -> Result<(), DecodeError> {
        if self.message.signatures.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::SignatureCount {
                expected: 0,
                got: self.message.signatures.len(),
            })
        }
    }
}

impl IntroductionRequest {
    /// Reads an introduction-request: signed by its member, sync parameters checked.
    fn from_proto(
        m: pb::IntroductionRequest,
        envelope: &Envelope<'_>,
    ) -> Result<Self, DecodeError> {
        let member = envelope.signed(m.member.as_deref())?;
        let mut sources = m.sources.iter();
        Ok(IntroductionRequest {
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
            // A synchronization without a bloom filter is the original's "no sync": the
            // request is answered, nothing is synchronised.
            sync: m
                .synchronization
                .filter(|s| s.bloomfilter.as_ref().is_some_and(|b| !b.is_empty()))
                .map(synchronization)
                .transpose()?,
        })
    }
}

impl IntroductionResponse {
    /// Reads an introduction-response: signed by its member, no invitee or a LAN and a WAN address.
    fn from_proto(
        m: pb::IntroductionResponse,
        envelope: &Envelope<'_>,
    ) -> Result<Self, DecodeError> {
        let member = envelope.signed(m.member.as_deref())?;
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
        Ok(IntroductionResponse {
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
        })
    }
}

impl PunctureRequest {
    /// Reads a puncture-request: unsigned.
    fn from_proto(m: pb::PunctureRequest, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        let mut initiator = m.initiator.iter();
        Ok(PunctureRequest {
            community: community_id(m.community.as_deref())?,
            session: m.session.unwrap_or(0),
            walk: required(m.walk, "PunctureRequest.walk")?,
            random: nonzero(m.random, "PunctureRequest.random")?,
            global_time: m.global_time.unwrap_or(0),
            initiator_lan: address(initiator.next(), "initiator[0]")?,
            initiator_wan: address(initiator.next(), "initiator[1]")?,
        })
    }
}

impl Puncture {
    /// Reads a puncture: signed by its member.
    fn from_proto(m: pb::Puncture, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        let member = envelope.signed(m.member.as_deref())?;
        let mut source = m.source.iter();
        Ok(Puncture {
            community: community_id(m.community.as_deref())?,
            member,
            session: m.session.unwrap_or(0),
            walk: required(m.walk, "Puncture.walk")?,
            random: nonzero(m.random, "Puncture.random")?,
            source_lan: address(source.next(), "source[0]")?,
            source_wan: address(source.next(), "source[1]")?,
        })
    }
}

impl Collection {
    /// Reads a collection: unsigned itself, at least one message, each message verified, all of
    /// one community.
    fn from_proto(c: pb::Collection, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        if c.messages.is_empty() {
            return Err(DecodeError::Missing("Collection.messages"));
        }
        let messages = c
            .messages
            .iter()
            .map(|inner| {
                SignedMessage::from_proto(
                    inner,
                    inner.encode_to_vec(),
                    envelope.keys,
                    envelope.checks,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let community = messages[0].message.community;
        if messages.iter().any(|m| m.message.community != community) {
            return Err(DecodeError::Invalid {
                field: "Collection.messages",
                reason: "messages of more than one community",
            });
        }
        Ok(Collection {
            session: c.session.unwrap_or(0),
            messages,
            relay_hops: c.relay_hops,
        })
    }
}

impl SessionRequest {
    /// Reads a session-request: unsigned.
    fn from_proto(m: pb::SessionRequest, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        let mut source = m.source.iter();
        Ok(SessionRequest {
            community: community_id(m.community.as_deref())?,
            version: required(m.version, "SessionRequest.version")?,
            walk: required(m.walk, "SessionRequest.walk")?,
            random: nonzero(m.random_b, "SessionRequest.random_b")?,
            destination: address(m.destination.as_ref(), "destination")?,
            source_lan: address(source.next(), "source[0]")?,
            source_wan: address(source.next(), "source[1]")?,
        })
    }
}

impl SessionResponse {
    /// Reads a session-response: unsigned.
    fn from_proto(m: pb::SessionResponse, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        Ok(SessionResponse {
            community: community_id(m.community.as_deref())?,
            version: required(m.version, "SessionResponse.version")?,
            walk: required(m.walk, "SessionResponse.walk")?,
            random: nonzero(m.random_a, "SessionResponse.random_a")?,
        })
    }
}

impl Identity {
    /// Reads an identity: unsigned, the key proves itself.
    fn from_proto(m: pb::Identity, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        let member = m
            .member
            .as_deref()
            .ok_or(DecodeError::Missing("Identity.member"))?;
        Ok(Identity {
            community: community_id(m.community.as_deref())?,
            session: m.session.unwrap_or(0),
            random: nonzero(m.random, "Identity.random")?,
            member: PublicKey::from_bytes(member)?,
        })
    }
}

impl MissingIdentity {
    /// Reads a missing-identity: unsigned.
    fn from_proto(m: pb::MissingIdentity, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        let member = member_id(m.member.as_deref(), "MissingIdentity.member")?;
        Ok(MissingIdentity {
            community: community_id(m.community.as_deref())?,
            session: m.session.unwrap_or(0),
            random: nonzero(m.random, "MissingIdentity.random")?,
            member,
        })
    }
}

impl MissingSequence {
    /// Reads a missing-sequence: unsigned, `1 <= low <= high`.
    fn from_proto(m: pb::MissingSequence, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        let low = required(m.sequence_low, "MissingSequence.sequence_low")?;
        let high = required(m.sequence_high, "MissingSequence.sequence_high")?;
        if low == 0 || high < low {
            return Err(DecodeError::Invalid {
                field: "MissingSequence.sequence_low",
                reason: "sequence numbers start at 1 and low <= high",
            });
        }
        Ok(MissingSequence {
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
        })
    }
}

impl MissingMessage {
    /// Reads a missing-message: unsigned, 1 to [`MAX_MISSING_TIMES`] global times.
    fn from_proto(m: pb::MissingMessage, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        if m.global_times.is_empty() || m.global_times.len() > MAX_MISSING_TIMES {
            return Err(DecodeError::Invalid {
                field: "MissingMessage.global_times",
                reason: "names 1 to 64 global times",
            });
        }
        Ok(MissingMessage {
            community: community_id(m.community.as_deref())?,
            session: m.session.unwrap_or(0),
            member: member_id(m.member.as_deref(), "MissingMessage.member")?,
            global_times: m.global_times,
        })
    }
}

impl MissingProof {
    /// Reads a missing-proof: unsigned, 1 to [`MAX_MISSING_TIMES`] global times of 1 or more, the
    /// member by key or id (nothing looked up).
    fn from_proto(m: pb::MissingProof, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        if m.global_times.is_empty()
            || m.global_times.len() > MAX_MISSING_TIMES
            || m.global_times.contains(&0)
        {
            return Err(DecodeError::Invalid {
                field: "MissingProof.global_times",
                reason: "names 1 to 64 global times, each 1 or higher",
            });
        }
        Ok(MissingProof {
            community: community_id(m.community.as_deref())?,
            session: m.session.unwrap_or(0),
            random: m.random.unwrap_or(0),
            member: member_ref(m.member.as_deref(), "MissingProof.member", envelope.keys)?,
            global_times: m.global_times,
        })
    }
}

impl MissingLastMessage {
    /// Reads a missing-last-message: unsigned.
    fn from_proto(m: pb::MissingLastMessage, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
        Ok(MissingLastMessage {
            community: community_id(m.community.as_deref())?,
            session: m.session.unwrap_or(0),
            member: member_id(m.member.as_deref(), "MissingLastMessage.member")?,
            meta: community_type(
                m.descriptor,
                m.community_message,
                "MissingLastMessage.community_message",
            )?,
        })
    }
}

impl SignatureRequest {
    /// Reads a signature-request: unsigned, its message of two authors not signed yet.
    fn from_proto(m: pb::SignatureRequest, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
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
        Ok(SignatureRequest {
            session: m.session.unwrap_or(0),
            request: required(m.request, "SignatureRequest.request")?,
            message,
            descriptor,
        })
    }
}

impl SignatureResponse {
    /// Reads a signature-response: unsigned itself, its message carries one signature, by one of
    /// its two authors (the second tried first).
    fn from_proto(m: pb::SignatureResponse, envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.unsigned()?;
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
        Ok(SignatureResponse {
            session: m.session.unwrap_or(0),
            request: required(m.request, "SignatureResponse.request")?,
            message,
            descriptor,
            signer,
            signature,
        })
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
        D::MissingProof(m) => ("missing-proof", m.community),
        D::Collection(_) => ("collection", None),
        D::Authorize(m) => ("authorize", m.community),
        D::Revoke(m) => ("revoke", m.community),
        D::UndoOwn(m) => ("undo-own", m.community),
        D::UndoOther(m) => ("undo-other", m.community),
        D::DynamicSettings(m) => ("dynamic-settings", m.community),
        D::DestroyCommunity(m) => ("destroy-community", m.community),
        D::Community(m) => ("community", m.community),
    };
    Some((
        kind,
        community.and_then(|c| CommunityId::from_slice(&c).ok()),
    ))
}

impl CommunityMessage {
    /// Parses a serialised descriptor holding a community message or a permission message (no
    /// signature checked).
    pub fn from_descriptor(descriptor_bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::parse(descriptor_bytes, &())
    }

    /// [`CommunityMessage::from_descriptor`], its authors' keys parsed through `keys`.
    fn parse(descriptor_bytes: &[u8], keys: &dyn Keys) -> Result<Self, DecodeError> {
        let descriptor = pb::Descriptor::decode(descriptor_bytes)?;
        match descriptor.message {
            Some(pb::descriptor::Message::Community(m)) => Self::plugin(m, keys),
            Some(other) => authority::from_proto(other, keys),
            None => Err(DecodeError::NoMessage),
        }
    }

    /// Reads a plugin message: at most two authors, a type below the reserved range, a
    /// conversion and a payload, a global time of 1 or more when signed.
    fn plugin(m: pb::CommunityMessage, keys: &dyn Keys) -> Result<Self, DecodeError> {
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
            message_type: plugin_type(
                required(m.message_type, "CommunityMessage.message_type")?,
                "CommunityMessage.message_type",
            )?,
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
            authority: None,
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
