//! The domain packet types: what a datagram means once decoded and checked.
//!
//! A value of one of these types has passed every check that needs no node state (see the
//! [module documentation](super)); the conversions from and to the prost types live in
//! `decoding` and `encoding`.

use std::net::SocketAddr;

use super::DecodeError;
use crate::authority::{self, MemberRef};
use crate::identity::{CommunityId, MemberId, PublicKey};
use crate::stats::Traffic;

/// How a peer connects to the internet, as WAN address voting concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionType {
    /// Not decided yet, or behind a NAT of unknown kind.
    #[default]
    Unknown,
    /// Reachable at the address it reports.
    Public,
    /// Behind a NAT that maps every destination to another port.
    SymmetricNat,
}

impl ConnectionType {
    /// The name used by the control API: `unknown`, `public` or `symmetric-NAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Unknown => "unknown",
            ConnectionType::Public => "public",
            ConnectionType::SymmetricNat => "symmetric-NAT",
        }
    }
}

/// Sync parameters of an introduction-request: a bloom filter over a range of global times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synchronization {
    /// Lowest global time covered (at least 1).
    pub low: u64,
    /// Highest global time covered (0: up to the receiver's own global time).
    pub high: u64,
    /// Only messages whose global time is `offset` modulo `modulo` are covered.
    pub modulo: u32,
    /// See `modulo`; below it. This is the residue; on the wire the original's offset `o`
    /// travels, which covers `t` iff `(t + o) % modulo == 0`: `o = (modulo - offset) % modulo`,
    /// converted both ways by the codec (`wire::field::flip_offset`).
    pub offset: u64,
    /// Number of hash functions.
    pub functions: u32,
    /// Salt of the filter's hashes.
    pub prefix: u32,
    /// The filter bits.
    pub bloom: Vec<u8>,
}

/// Step 1 of a walk: the sender asks for an introduction (and, with `sync`, for missing messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroductionRequest {
    /// The community walked in.
    pub community: CommunityId,
    /// The signing sender.
    pub member: PublicKey,
    /// Session associated with the source address, 0 to ask for a new one.
    pub session: u32,
    /// Walk identifier, echoed by every message of this step.
    pub walk: u32,
    /// Random value echoed by the puncture-request and the puncture (non-zero).
    pub random: u32,
    /// The sender's global time in this community.
    pub global_time: u64,
    /// Where the sender sent this request.
    pub destination: SocketAddr,
    /// The sender's LAN address as it knows it.
    pub source_lan: SocketAddr,
    /// The sender's WAN address as it knows it.
    pub source_wan: SocketAddr,
    /// The sender's connection type.
    pub connection_type: ConnectionType,
    /// Whether the sender wants another peer introduced.
    pub advice: bool,
    /// Bloom-filter sync request, if the sender wants missing messages.
    pub sync: Option<Synchronization>,
}

/// Step 2: the responder introduces another peer (or nobody) to the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroductionResponse {
    /// The community.
    pub community: CommunityId,
    /// The signing responder.
    pub member: PublicKey,
    /// Session.
    pub session: u32,
    /// The request's walk identifier.
    pub walk: u32,
    /// The responder's global time.
    pub global_time: u64,
    /// How the responder sees the requester's address.
    pub destination: SocketAddr,
    /// The responder's LAN address.
    pub source_lan: SocketAddr,
    /// The responder's WAN address.
    pub source_wan: SocketAddr,
    /// The responder's connection type.
    pub connection_type: ConnectionType,
    /// LAN and WAN address of the introduced peer, if any.
    pub introduced: Option<(SocketAddr, SocketAddr)>,
}

/// Step 3: the responder asks the introduced peer to puncture its NAT towards the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunctureRequest {
    /// The community.
    pub community: CommunityId,
    /// Session.
    pub session: u32,
    /// The walk identifier of the introduction.
    pub walk: u32,
    /// The requester's random value, to copy into the puncture.
    pub random: u32,
    /// Global time of the responder.
    pub global_time: u64,
    /// LAN address of the requester.
    pub initiator_lan: SocketAddr,
    /// WAN address of the requester.
    pub initiator_wan: SocketAddr,
}

/// Step 4: the introduced peer opens its NAT towards the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Puncture {
    /// The community.
    pub community: CommunityId,
    /// The signing sender (the introduced peer).
    pub member: PublicKey,
    /// Session.
    pub session: u32,
    /// The walk identifier of the introduction.
    pub walk: u32,
    /// The requester's random value.
    pub random: u32,
    /// The sender's LAN address.
    pub source_lan: SocketAddr,
    /// The sender's WAN address.
    pub source_wan: SocketAddr,
}

/// Session handshake, step 1: the responder of an introduction-request from an address without a
/// session asks that address to prove it receives packets there. Unsigned and small: sent to an
/// unproven address, it must never carry more than the request that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The community.
    pub community: CommunityId,
    /// Handshake version.
    pub version: u32,
    /// The walk identifier of the introduction-request being answered.
    pub walk: u32,
    /// The responder's random value (random_B).
    pub random: u32,
    /// How the responder sees the requester's address.
    pub destination: SocketAddr,
    /// The responder's LAN address.
    pub source_lan: SocketAddr,
    /// The responder's WAN address.
    pub source_wan: SocketAddr,
}

/// Session handshake, step 2: session = (random_A + random_B) mod 2^32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResponse {
    /// The community.
    pub community: CommunityId,
    /// Handshake version.
    pub version: u32,
    /// The walk identifier.
    pub walk: u32,
    /// The requester's random value (random_A).
    pub random: u32,
}

/// A request for the public key of a member known only by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingIdentity {
    /// The community.
    pub community: CommunityId,
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// Non-zero random value echoed by the identity.
    pub random: u32,
    /// The member.
    pub member: MemberId,
}

/// A request for the messages of one member and meta numbered `low..=high` (full-sync with
/// sequence numbers); answered with a collection of the stored ones, in sequence order, within a
/// byte budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSequence {
    /// The community.
    pub community: CommunityId,
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// The author.
    pub member: MemberId,
    /// The meta-message type.
    pub meta: u32,
    /// Lowest sequence number wanted, at least 1.
    pub low: u32,
    /// Highest sequence number wanted, at least `low`.
    pub high: u32,
}

/// A request for the messages of one member at the given global times; answered with a
/// collection of the stored ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingMessage {
    /// The community.
    pub community: CommunityId,
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// The author.
    pub member: MemberId,
    /// The global times, 1 to [`MAX_MISSING_TIMES`] of them.
    pub global_times: Vec<u64>,
}

/// A request for the proof of one member's message(s) at the given global times: the records
/// (authorize, revoke, dynamic-settings) that made its author allowed. Answered with a collection
/// holding the proof records of the named messages, one level up the chain of authority per
/// request: a requester that still lacks a proof record's own proof asks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingProof {
    /// The community.
    pub community: CommunityId,
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// The requester's random value (0 when absent; nothing echoes it).
    pub random: u32,
    /// The author of the message(s) whose proof is wanted, by key or id.
    pub member: MemberRef,
    /// Their global times, 1 to [`MAX_MISSING_TIMES`] of them.
    pub global_times: Vec<u64>,
}

/// Most global times one missing-message may name.
pub const MAX_MISSING_TIMES: usize = 64;

/// A request for the newest stored messages of one member and meta (as many as the meta's
/// last-sync history keeps); answered with a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingLastMessage {
    /// The community.
    pub community: CommunityId,
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// The author.
    pub member: MemberId,
    /// The meta-message type.
    pub meta: u32,
}

/// A request to co-sign a double-member message: its second author is asked to sign the very
/// descriptor the first one will sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRequest {
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// The requester's identifier, echoed by the response.
    pub request: u32,
    /// The message, two authors, no signatures yet.
    pub message: CommunityMessage,
    /// Its serialised descriptor, the bytes both sign.
    pub descriptor: Vec<u8>,
}

/// A co-signer's answer: its signature over the descriptor of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureResponse {
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// The request answered.
    pub request: u32,
    /// The message signed.
    pub message: CommunityMessage,
    /// Its serialised descriptor.
    pub descriptor: Vec<u8>,
    /// Which author signed (index into `message.authors`); the signature is verified.
    pub signer: usize,
    /// The signature.
    pub signature: Vec<u8>,
}

/// A member's public key, answering a missing-identity. Unsigned: the key proves itself, its
/// member id must be the one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The community.
    pub community: CommunityId,
    /// Session with the receiver, 0 when none.
    pub session: u32,
    /// The request's random value.
    pub random: u32,
    /// The key.
    pub member: PublicKey,
}

/// The conversion version of a community payload: 0x01..=0xFE, or 0xFF followed by more bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conversion(Vec<u8>);

impl Conversion {
    /// Longest conversion identifier accepted.
    pub const MAX_LEN: usize = 8;

    /// Validates a conversion identifier.
    pub fn new(bytes: &[u8]) -> Result<Self, DecodeError> {
        let valid = match bytes {
            [] | [0x00, ..] => false,
            [0xFF] => false,
            [0xFF, ..] => bytes.len() <= Self::MAX_LEN,
            [_] => true,
            _ => false,
        };
        if valid {
            Ok(Conversion(bytes.to_vec()))
        } else {
            Err(DecodeError::Invalid {
                field: "conversion",
                reason: "must be one byte 0x01..=0xFE or 0xFF followed by up to 7 bytes",
            })
        }
    }

    /// A one-byte conversion version (1..=254).
    pub fn version(version: u8) -> Result<Self, DecodeError> {
        Self::new(&[version])
    }

    /// The conversion of every built-in permission message ([`crate::authority`]): the single
    /// byte [`Conversion::BUILTIN`]. It names no plugin encoding: a built-in message's body is its
    /// own descriptor field and its payload is empty, so it is never looked up among the plugin's
    /// conversions.
    pub fn builtin() -> Self {
        Conversion(vec![Self::BUILTIN])
    }

    /// The byte of [`Conversion::builtin`].
    pub const BUILTIN: u8 = 0x01;

    /// The identifier bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A persistent or community message: the header the host interprets and the payload the plugin
/// does; or, for a built-in permission message, its [`authority::Body`] (see
/// [`crate::authority`] for what the other fields then hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunityMessage {
    /// The community.
    pub community: CommunityId,
    /// The plugin's meta-message type.
    pub message_type: u32,
    /// Conversion the payload is encoded with.
    pub conversion: Conversion,
    /// The authoring member(s); empty for no-authentication.
    pub authors: Vec<PublicKey>,
    /// Global time claimed by the author (0 only for no-authentication direct messages).
    pub global_time: u64,
    /// Sequence number (full-sync with sequence numbers).
    pub sequence_number: Option<u32>,
    /// Active policy index (dynamic resolution).
    pub resolution_index: Option<u32>,
    /// Remaining hops (relay distribution).
    pub relay_hops: Option<u32>,
    /// Plugin-encoded payload (empty for a built-in message).
    pub payload: Vec<u8>,
    /// `None` for a plugin message; the body of a built-in permission message, whose
    /// `message_type` is then the body's reserved id ([`authority::Body::message_type`]).
    pub authority: Option<authority::Body>,
}

/// A community message with its verified signatures and its exact packet bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMessage {
    /// The decoded message.
    pub message: CommunityMessage,
    /// The serialized `Message` (descriptor and signatures): what is stored and forwarded.
    pub packet: Vec<u8>,
}

/// A collection: persistent or community messages sent together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Session associated with the source address.
    pub session: u32,
    /// The messages, each verified.
    pub messages: Vec<SignedMessage>,
    /// For relayed messages: hops they may still travel after the receiver.
    pub relay_hops: Option<u32>,
}

/// A decoded, validated datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// See [`IntroductionRequest`].
    IntroductionRequest(IntroductionRequest),
    /// See [`IntroductionResponse`].
    IntroductionResponse(IntroductionResponse),
    /// See [`PunctureRequest`].
    PunctureRequest(PunctureRequest),
    /// See [`Puncture`].
    Puncture(Puncture),
    /// See [`Collection`].
    Collection(Collection),
    /// See [`SessionRequest`].
    SessionRequest(SessionRequest),
    /// See [`SessionResponse`].
    SessionResponse(SessionResponse),
    /// See [`MissingIdentity`].
    MissingIdentity(MissingIdentity),
    /// See [`Identity`].
    Identity(Identity),
    /// See [`MissingSequence`].
    MissingSequence(MissingSequence),
    /// See [`MissingMessage`].
    MissingMessage(MissingMessage),
    /// See [`MissingLastMessage`].
    MissingLastMessage(MissingLastMessage),
    /// See [`SignatureRequest`].
    SignatureRequest(SignatureRequest),
    /// See [`SignatureResponse`].
    SignatureResponse(SignatureResponse),
    /// See [`MissingProof`].
    MissingProof(MissingProof),
}

impl Packet {
    /// The community the packet concerns, when it names exactly one.
    pub fn community(&self) -> Option<CommunityId> {
        match self {
            Packet::IntroductionRequest(m) => Some(m.community),
            Packet::IntroductionResponse(m) => Some(m.community),
            Packet::PunctureRequest(m) => Some(m.community),
            Packet::Puncture(m) => Some(m.community),
            Packet::Collection(c) => c.messages.first().map(|m| m.message.community),
            Packet::SessionRequest(m) => Some(m.community),
            Packet::SessionResponse(m) => Some(m.community),
            Packet::MissingIdentity(m) => Some(m.community),
            Packet::Identity(m) => Some(m.community),
            Packet::MissingSequence(m) => Some(m.community),
            Packet::MissingMessage(m) => Some(m.community),
            Packet::MissingLastMessage(m) => Some(m.community),
            Packet::SignatureRequest(m) => Some(m.message.community),
            Packet::SignatureResponse(m) => Some(m.message.community),
            Packet::MissingProof(m) => Some(m.community),
        }
    }

    /// The counter of this packet's kind, once accepted.
    pub fn traffic(&self) -> Traffic {
        match self {
            Packet::IntroductionRequest(_) => Traffic::IntroductionRequest,
            Packet::IntroductionResponse(_) => Traffic::IntroductionResponse,
            Packet::PunctureRequest(_) => Traffic::PunctureRequest,
            Packet::Puncture(_) => Traffic::Puncture,
            Packet::Collection(_) => Traffic::Collection,
            Packet::SessionRequest(_) => Traffic::SessionRequest,
            Packet::SessionResponse(_) => Traffic::SessionResponse,
            Packet::MissingIdentity(_) => Traffic::MissingIdentity,
            Packet::Identity(_) => Traffic::Identity,
            Packet::MissingSequence(_) => Traffic::MissingSequence,
            Packet::MissingMessage(_) => Traffic::MissingMessage,
            Packet::MissingLastMessage(_) => Traffic::MissingLastMessage,
            Packet::SignatureRequest(_) => Traffic::SignatureRequest,
            Packet::SignatureResponse(_) => Traffic::SignatureResponse,
            Packet::MissingProof(_) => Traffic::MissingProof,
        }
    }

    /// Short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::IntroductionRequest(_) => "introduction-request",
            Packet::IntroductionResponse(_) => "introduction-response",
            Packet::PunctureRequest(_) => "puncture-request",
            Packet::Puncture(_) => "puncture",
            Packet::Collection(_) => "collection",
            Packet::SessionRequest(_) => "session-request",
            Packet::SessionResponse(_) => "session-response",
            Packet::MissingIdentity(_) => "missing-identity",
            Packet::Identity(_) => "identity",
            Packet::MissingSequence(_) => "missing-sequence",
            Packet::MissingMessage(_) => "missing-message",
            Packet::MissingLastMessage(_) => "missing-last-message",
            Packet::SignatureRequest(_) => "signature-request",
            Packet::SignatureResponse(_) => "signature-response",
            Packet::MissingProof(_) => "missing-proof",
        }
    }
}
