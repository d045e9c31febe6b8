//! Counters kept by the node, per node and per community, and [`DropReason`], the one typed
//! source of the reasons a packet or message is dropped.
//!
//! [`Counters`] are keyed by a [`Key`]: traffic by [`Traffic`], drops by [`DropReason`] (so a
//! misspelt counter does not compile). Either way every map has a bounded,
//! small number of entries whatever the network sends, and [`Counters::iter`] yields the stable
//! names the control API and the metrics print.

use std::collections::BTreeMap;

use crate::time::Instant;

/// The key of a family of [`Counters`]: a small, closed set of values, each with a stable name.
pub trait Key: Copy + Ord {
    /// The stable name of this key (a counter's name in the control API and the metrics).
    fn name(self) -> &'static str;
}

impl Key for DropReason {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

/// A bounded family of counters, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters<K: Key>(BTreeMap<K, u64>);

impl<K: Key> Default for Counters<K> {
    fn default() -> Self {
        Counters(BTreeMap::new())
    }
}

impl<K: Key> Counters<K> {
    /// Adds one to `key`.
    pub fn bump(&mut self, key: K) {
        *self.0.entry(key).or_default() += 1;
    }

    /// Adds `n` to `key`.
    pub fn add(&mut self, key: K, n: u64) {
        *self.0.entry(key).or_default() += n;
    }

    /// The value of `key` (0 when never counted).
    pub fn get(&self, key: K) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }

    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// All counted keys, by name, with their values.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().map(|(k, v)| (k.name(), *v))
    }
}

/// What the node counts of its traffic besides drops: packets accepted, by kind, and a few
/// requests and answers it sent. Each has a stable name ([`Traffic::as_str`], also its
/// `Display`), the key of the packet counters in the control API and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Traffic {
    /// A introduction-request accepted.
    IntroductionRequest,
    /// A introduction-response accepted.
    IntroductionResponse,
    /// A puncture-request accepted.
    PunctureRequest,
    /// A puncture accepted.
    Puncture,
    /// A collection accepted.
    Collection,
    /// A session-request accepted.
    SessionRequest,
    /// A session-response accepted.
    SessionResponse,
    /// A missing-identity accepted.
    MissingIdentity,
    /// A identity accepted.
    Identity,
    /// A missing-sequence accepted.
    MissingSequence,
    /// A missing-message accepted.
    MissingMessage,
    /// A missing-last-message accepted.
    MissingLastMessage,
    /// A signature-request accepted.
    SignatureRequest,
    /// A signature-response accepted.
    SignatureResponse,
    /// A missing-proof accepted.
    MissingProof,
    /// A missing-identity sent for a datagram signed by an unknown member.
    IdentityRequested,
    /// A datagram of an unknown member set to wait for an identity already asked for.
    IdentityAwaited,
    /// A missing-sequence request sent.
    MissingSequenceSent,
    /// Repeats of a missing-* request not sent: their address never proved itself.
    MissingRetryUnproven,
    /// A missing-message request sent.
    MissingMessageSent,
    /// A missing-last-message request sent.
    MissingLastMessageSent,
    /// A missing-proof request sent (a message waits for the proof of its permission).
    MissingProofSent,
    /// A co-signature given (the plugin allowed it).
    SignatureGiven,
    /// A co-signature refused (the plugin did not allow it, or did not answer in time).
    SignatureRefused,
    /// A co-signer's answer to a message we proposed that our plugin declined.
    SignatureDeclined,
}

impl Traffic {
    /// Every kind, in declaration order.
    pub const ALL: &[Traffic] = &[
        Traffic::IntroductionRequest,
        Traffic::IntroductionResponse,
        Traffic::PunctureRequest,
        Traffic::Puncture,
        Traffic::Collection,
        Traffic::SessionRequest,
        Traffic::SessionResponse,
        Traffic::MissingIdentity,
        Traffic::Identity,
        Traffic::MissingSequence,
        Traffic::MissingMessage,
        Traffic::MissingLastMessage,
        Traffic::SignatureRequest,
        Traffic::SignatureResponse,
        Traffic::MissingProof,
        Traffic::IdentityRequested,
        Traffic::IdentityAwaited,
        Traffic::MissingSequenceSent,
        Traffic::MissingRetryUnproven,
        Traffic::MissingMessageSent,
        Traffic::MissingLastMessageSent,
        Traffic::MissingProofSent,
        Traffic::SignatureGiven,
        Traffic::SignatureRefused,
        Traffic::SignatureDeclined,
    ];

    /// The stable name (the counter's key in the API and the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Traffic::IntroductionRequest => "introduction-request",
            Traffic::IntroductionResponse => "introduction-response",
            Traffic::PunctureRequest => "puncture-request",
            Traffic::Puncture => "puncture",
            Traffic::Collection => "collection",
            Traffic::SessionRequest => "session-request",
            Traffic::SessionResponse => "session-response",
            Traffic::MissingIdentity => "missing-identity",
            Traffic::Identity => "identity",
            Traffic::MissingSequence => "missing-sequence",
            Traffic::MissingMessage => "missing-message",
            Traffic::MissingLastMessage => "missing-last-message",
            Traffic::SignatureRequest => "signature-request",
            Traffic::SignatureResponse => "signature-response",
            Traffic::MissingProof => "missing-proof",
            Traffic::IdentityRequested => "identity-requested",
            Traffic::IdentityAwaited => "identity-awaited",
            Traffic::MissingSequenceSent => "missing-sequence-sent",
            Traffic::MissingRetryUnproven => "missing-retry-unproven",
            Traffic::MissingMessageSent => "missing-message-sent",
            Traffic::MissingLastMessageSent => "missing-last-message-sent",
            Traffic::MissingProofSent => "missing-proof-sent",
            Traffic::SignatureGiven => "signature-given",
            Traffic::SignatureRefused => "signature-refused",
            Traffic::SignatureDeclined => "signature-declined",
        }
    }
}

impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Key for Traffic {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

/// Why a packet or message was dropped: the one source of drop reasons of the core and the host.
/// Each has a stable name ([`DropReason::as_str`], also its `Display`): the key of the drop
/// counters in the control API's JSON and the Prometheus metrics, so a name never changes.
/// Reasons marked "(host)" are decided by the host around the core (sockets, queues, plugins,
/// the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// An empty datagram.
    Empty,
    /// A datagram above the size budget.
    Oversized,
    /// Bytes that are not the protobuf of the expected schema.
    Malformed,
    /// A descriptor that carries no message.
    NoMessage,
    /// A message type this node does not handle.
    Unsupported,
    /// A field the message needs is absent.
    MissingField,
    /// A field holds a value outside its domain.
    InvalidField,
    /// A member key that is not a valid public key.
    InvalidKey,
    /// Signed by a member given by id whose key this node does not know (the node asks for the
    /// identity and waits instead of counting it; see [`DropReason::IdentityQueueFull`]).
    UnknownMember,
    /// Not as many signatures as signing members.
    SignatureCount,
    /// A signature that does not verify.
    BadSignature,
    /// For a community this node has not joined (or, for what needs a definition, one it only
    /// tracks).
    UnknownCommunity,
    /// A tracker's table of bare communities is full.
    CommunityLimit,
    /// The session named does not match the source address.
    BadSession,
    /// A session-request for no walk of ours towards its source.
    UnexpectedSessionRequest,
    /// A session-response to no session-request of ours, or for another community.
    UnexpectedSessionResponse,
    /// A session-request of a protocol version this node does not speak.
    UnsupportedSessionVersion,
    /// An introduction-response to no walk of ours.
    UnexpectedResponse,
    /// A second introduction-response for one walk.
    DuplicateResponse,
    /// An introduction-response from another address than the one the walk went to.
    ResponseFromWrongAddress,
    /// An introduction of an address that cannot be used (unusable, ourselves, a tracker).
    InvalidIntroduction,
    /// A new candidate while the community's candidate table is full.
    CandidateTableFull,
    /// A puncture-request whose target cannot be used (unusable, the requester, ourselves).
    InvalidAddress,
    /// A datagram from an address that cannot be used or that is one of our own.
    InvalidSource,
    /// An introduction-request from this node's own member.
    OwnMember,
    /// A puncture for no walk of ours.
    UnexpectedPuncture,
    /// A missing-identity request from an address that has not proven itself (no session, no
    /// walk of ours to it).
    UnprovenIdentityRequest,
    /// A missing-identity request for a member whose key this node does not know.
    UnknownIdentity,
    /// An identity nobody here asked for.
    UnexpectedIdentity,
    /// A collection without messages.
    EmptyCollection,
    /// A message of a meta-message type the community does not define.
    UnknownMeta,
    /// A message in a conversion the community's definition does not list.
    UnknownConversion,
    /// Signed by another number of members than its meta requires.
    WrongAuthentication,
    /// A sequence number where its meta has none, or none where it has.
    WrongSequenceHeader,
    /// A hop budget where its meta does not relay, or none where it does.
    WrongRelayHeader,
    /// A global time above the acceptable limit (a message, or a signature-request's message).
    GlobalTimeBeyondLimit,
    /// A message older than its meta's pruning threshold (inactive).
    Pruned,
    /// A relayed message this node has handled already.
    RelayDuplicate,
    /// A stored packet too large to send in a datagram.
    OversizedStoredPacket,
    /// A missing-sequence, -message or -last-message request from an address that has not
    /// proven itself (no session, no walk of ours to it).
    UnprovenMissingRequest,
    /// A missing-* request while too many are being answered.
    MissingBusy,
    /// A missing-sequence request for a meta that is unknown or has no sequence numbers.
    MissingSequenceUnknownMeta,
    /// A missing-last-message request for a meta that is unknown or not last-sync.
    MissingLastMessageUnknownMeta,
    /// A signature-request from an address that has not proven itself (no session, no walk of
    /// ours to it).
    UnprovenSignatureRequest,
    /// A signature-request whose second author is not this node's member (or whose first is).
    SignatureRequestNotForUs,
    /// A signature-request for a meta that is unknown or not double-member.
    SignatureRequestWrongMeta,
    /// A signature-request while too many wait for our plugin's verdict.
    SignatureBusy,
    /// A signature-response to no signature-request of ours (or from another address).
    UnexpectedSignatureResponse,
    /// A signature-response whose message differs from the one asked to sign in more than its
    /// payload, or is too large with both signatures.
    SignatureResponseModified,
    /// A sync request whose bloom filter cannot be used.
    BadFilter,
    /// A sync request while too many sync answers are being read.
    SyncBusy,
    /// A message that must wait while the table of waiting messages is full.
    DelayQueueFull,
    /// A waiting message whose wait ran out.
    DelayTimeout,
    /// A message that waited for the proof of its author's permission, which did not come in
    /// time (the permission timeline never allowed it).
    ProofTimeout,
    /// A stored undo-own or undo-other the undo state does not hold: a bound is reached
    /// ([`crate::undo::InsertError`]); it stays stored, without effect here.
    UndoRefused,
    /// An authorize or revoke naming a meta the community does not have.
    UnknownPermissionSubject,
    /// A dynamic-settings naming a meta that is not of dynamic resolution, or an index outside
    /// its list of policies.
    InvalidDynamicSettings,
    /// A community message for a hard-destroyed community, which accepts nothing new.
    Destroyed,
    /// A community message above the global time a soft destroy froze its community at.
    Frozen,
    /// A datagram of an unknown member while too many wait for identities.
    IdentityQueueFull,
    /// A datagram whose author's identity did not come in time.
    IdentityTimeout,
    /// An event while the node's queue of events for the driver is full.
    EventQueueFull,
    /// A datagram to send while the node's queue of outgoing datagrams is full.
    TransmitQueueFull,
    /// A datagram the socket refused (host).
    SendFailed,
    /// A store read while the sync-read task's queue is full (host).
    SyncQueueFull,
    /// Messages, a signature question or a store read for a community without a running plugin
    /// (host).
    NoPlugin,
    /// Messages or a signature question the community's plugin queue refused as full (host).
    PluginQueueFull,
    /// Messages a plugin call failed on (an error, a panic, an answer that makes no sense) (host).
    PluginError,
    /// Messages or a signature question for a community whose plugin call has run past its
    /// deadline (host).
    PluginStuck,
    /// Messages or a signature question for a community whose plugin is restarting after a panic,
    /// or failed for good (host).
    PluginDown,
    /// This node's own new message, which a plugin asked to wait (host).
    OwnMessageCannotWait,
    /// Messages the store could not write (host).
    StoreFailed,
    /// A message numbered next, but not newer than its author's last stored message of the meta
    /// (host).
    StaleSequence,
    /// A message whose sequence number is held by a winning stored message (host).
    SequenceConflictLost,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: &[DropReason] = &[
        DropReason::Empty,
        DropReason::Oversized,
        DropReason::Malformed,
        DropReason::NoMessage,
        DropReason::Unsupported,
        DropReason::MissingField,
        DropReason::InvalidField,
        DropReason::InvalidKey,
        DropReason::UnknownMember,
        DropReason::SignatureCount,
        DropReason::BadSignature,
        DropReason::UnknownCommunity,
        DropReason::CommunityLimit,
        DropReason::BadSession,
        DropReason::UnexpectedSessionRequest,
        DropReason::UnexpectedSessionResponse,
        DropReason::UnsupportedSessionVersion,
        DropReason::UnexpectedResponse,
        DropReason::DuplicateResponse,
        DropReason::ResponseFromWrongAddress,
        DropReason::InvalidIntroduction,
        DropReason::CandidateTableFull,
        DropReason::InvalidAddress,
        DropReason::InvalidSource,
        DropReason::OwnMember,
        DropReason::UnexpectedPuncture,
        DropReason::UnprovenIdentityRequest,
        DropReason::UnknownIdentity,
        DropReason::UnexpectedIdentity,
        DropReason::EmptyCollection,
        DropReason::UnknownMeta,
        DropReason::UnknownConversion,
        DropReason::WrongAuthentication,
        DropReason::WrongSequenceHeader,
        DropReason::WrongRelayHeader,
        DropReason::GlobalTimeBeyondLimit,
        DropReason::Pruned,
        DropReason::RelayDuplicate,
        DropReason::OversizedStoredPacket,
        DropReason::UnprovenMissingRequest,
        DropReason::MissingBusy,
        DropReason::MissingSequenceUnknownMeta,
        DropReason::MissingLastMessageUnknownMeta,
        DropReason::UnprovenSignatureRequest,
        DropReason::SignatureRequestNotForUs,
        DropReason::SignatureRequestWrongMeta,
        DropReason::SignatureBusy,
        DropReason::UnexpectedSignatureResponse,
        DropReason::SignatureResponseModified,
        DropReason::BadFilter,
        DropReason::SyncBusy,
        DropReason::DelayQueueFull,
        DropReason::DelayTimeout,
        DropReason::ProofTimeout,
        DropReason::UndoRefused,
        DropReason::UnknownPermissionSubject,
        DropReason::InvalidDynamicSettings,
        DropReason::Destroyed,
        DropReason::Frozen,
        DropReason::IdentityQueueFull,
        DropReason::IdentityTimeout,
        DropReason::EventQueueFull,
        DropReason::TransmitQueueFull,
        DropReason::SendFailed,
        DropReason::SyncQueueFull,
        DropReason::NoPlugin,
        DropReason::PluginQueueFull,
        DropReason::PluginError,
        DropReason::PluginStuck,
        DropReason::PluginDown,
        DropReason::OwnMessageCannotWait,
        DropReason::StoreFailed,
        DropReason::StaleSequence,
        DropReason::SequenceConflictLost,
    ];

    /// The stable name: the counters' key in the control API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::NoMessage => "no-message",
            DropReason::Unsupported => "unsupported",
            DropReason::MissingField => "missing-field",
            DropReason::InvalidField => "invalid-field",
            DropReason::InvalidKey => "invalid-key",
            DropReason::UnknownMember => "unknown-member",
            DropReason::SignatureCount => "signature-count",
            DropReason::BadSignature => "bad-signature",
            DropReason::UnknownCommunity => "unknown-community",
            DropReason::CommunityLimit => "community-limit",
            DropReason::BadSession => "bad-session",
            DropReason::UnexpectedSessionRequest => "unexpected-session-request",
            DropReason::UnexpectedSessionResponse => "unexpected-session-response",
            DropReason::UnsupportedSessionVersion => "unsupported-session-version",
            DropReason::UnexpectedResponse => "unexpected-response",
            DropReason::DuplicateResponse => "duplicate-response",
            DropReason::ResponseFromWrongAddress => "response-from-wrong-address",
            DropReason::InvalidIntroduction => "invalid-introduction",
            DropReason::CandidateTableFull => "candidate-table-full",
            DropReason::InvalidAddress => "invalid-address",
            DropReason::InvalidSource => "invalid-source",
            DropReason::OwnMember => "own-member",
            DropReason::UnexpectedPuncture => "unexpected-puncture",
            DropReason::UnprovenIdentityRequest => "unproven-identity-request",
            DropReason::UnknownIdentity => "unknown-identity",
            DropReason::UnexpectedIdentity => "unexpected-identity",
            DropReason::EmptyCollection => "empty-collection",
            DropReason::UnknownMeta => "unknown-meta",
            DropReason::UnknownConversion => "unknown-conversion",
            DropReason::WrongAuthentication => "wrong-authentication",
            DropReason::WrongSequenceHeader => "wrong-sequence-header",
            DropReason::WrongRelayHeader => "wrong-relay-header",
            DropReason::GlobalTimeBeyondLimit => "global-time-beyond-limit",
            DropReason::Pruned => "pruned",
            DropReason::RelayDuplicate => "relay-duplicate",
            DropReason::OversizedStoredPacket => "oversized-stored-packet",
            DropReason::UnprovenMissingRequest => "unproven-missing-request",
            DropReason::MissingBusy => "missing-busy",
            DropReason::MissingSequenceUnknownMeta => "missing-sequence-unknown-meta",
            DropReason::MissingLastMessageUnknownMeta => "missing-last-message-unknown-meta",
            DropReason::UnprovenSignatureRequest => "unproven-signature-request",
            DropReason::SignatureRequestNotForUs => "signature-request-not-for-us",
            DropReason::SignatureRequestWrongMeta => "signature-request-wrong-meta",
            DropReason::SignatureBusy => "signature-busy",
            DropReason::UnexpectedSignatureResponse => "unexpected-signature-response",
            DropReason::SignatureResponseModified => "signature-response-modified",
            DropReason::BadFilter => "bad-filter",
            DropReason::SyncBusy => "sync-busy",
            DropReason::DelayQueueFull => "delay-queue-full",
            DropReason::DelayTimeout => "delay-timeout",
            DropReason::ProofTimeout => "proof-timeout",
            DropReason::UndoRefused => "undo-refused",
            DropReason::UnknownPermissionSubject => "unknown-permission-subject",
            DropReason::InvalidDynamicSettings => "invalid-dynamic-settings",
            DropReason::Destroyed => "destroyed",
            DropReason::Frozen => "frozen",
            DropReason::IdentityQueueFull => "identity-queue-full",
            DropReason::IdentityTimeout => "identity-timeout",
            DropReason::EventQueueFull => "event-queue-full",
            DropReason::TransmitQueueFull => "transmit-queue-full",
            DropReason::SendFailed => "send-failed",
            DropReason::SyncQueueFull => "sync-queue-full",
            DropReason::NoPlugin => "no-plugin",
            DropReason::PluginQueueFull => "plugin-queue-full",
            DropReason::PluginError => "plugin error",
            DropReason::PluginStuck => "plugin-stuck",
            DropReason::PluginDown => "plugin-down",
            DropReason::OwnMessageCannotWait => "own message cannot wait",
            DropReason::StoreFailed => "store failed",
            DropReason::StaleSequence => "stale-sequence",
            DropReason::SequenceConflictLost => "sequence-conflict-lost",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Node-wide traffic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to the node.
    pub datagrams_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams the node asked to send.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Accepted packets by kind, and a few requests and answers sent ([`Traffic`]).
    pub packets: Counters<Traffic>,
    /// Dropped packets by reason ([`DropReason::Malformed`], [`DropReason::BadSignature`],
    /// [`DropReason::UnknownCommunity`], …).
    pub dropped: Counters<DropReason>,
}

/// Counters of one community.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommunityStats {
    /// Introduction-requests sent.
    pub walk_attempts: u64,
    /// Introduction-responses received for our requests.
    pub walk_successes: u64,
    /// Introduction-requests that timed out.
    pub walk_failures: u64,
    /// Introduction-requests received.
    pub stumbles: u64,
    /// Session handshakes completed as responder.
    pub handshakes: u64,
    /// Introduction-responses that introduced nobody.
    pub responses_without_introduction: u64,
    /// Requests answered without an introduction because every candidate was excluded (the
    /// only ones left were behind a symmetric NAT, like the requester).
    pub introductions_refused: u64,
    /// Punctures received for our walks.
    pub punctures: u64,
    /// Introduction-requests sent with a new filter.
    pub sync_new: u64,
    /// Introduction-requests sent with a reused (productive) filter.
    pub sync_reused: u64,
    /// Introduction-requests sent without a filter (skipped, or the store was too slow).
    pub sync_skipped: u64,
    /// Sync-only introduction-requests of follow-up rounds sent (`sync::Chase`).
    pub sync_follow_ups: u64,
    /// Sync-only introduction-requests of a chase's sweep sent (`sync::Chase`).
    pub sync_sweeps: u64,
    /// Stored messages sent to requesters.
    pub sync_packets_sent: u64,
    /// Stored messages sent answering missing-sequence, -message and -last-message requests.
    pub missing_packets_sent: u64,
    /// Relayed messages passed on (one per copy sent).
    pub relayed: u64,
    /// Received messages that waited for others (a sequence gap, a plugin's wait).
    pub delayed: u64,
    /// Messages this node created.
    pub messages_created: u64,
    /// Messages this node created that their plugin's check refused (nothing sent or stored).
    pub messages_refused: u64,
    /// Verified messages passed to the community's plugin.
    pub messages_received: u64,
    /// Introduction-requests a hard-destroyed community answered with its destroy message.
    pub destroy_answers: u64,
    /// Community messages dropped, by reason.
    pub dropped: Counters<DropReason>,
    /// Messages dropped because the community's plugin does not read their conversion
    /// ([`DropReason::UnknownConversion`]), by meta and conversion.
    pub unreadable: Unreadable,
}

/// Messages of one meta and conversion that the community's plugin could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableKind {
    /// The meta-message type.
    pub meta: u32,
    /// The conversion identifier.
    pub conversion: Vec<u8>,
    /// How many were dropped.
    pub count: u64,
    /// When the first one arrived (the driver's clock).
    pub first_seen: Instant,
}

/// The (meta, conversion) pairs of messages a community's plugin could not read (a peer runs
/// a newer version of the plugin), each with its count: bounded, the kinds seen once the table
/// is full are counted in [`Unreadable::others`] only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unreadable {
    kinds: Vec<UnreadableKind>,
    /// Unreadable messages of kinds that found the table full.
    pub others: u64,
}

impl Unreadable {
    /// Counts one unreadable message of `meta` in `conversion` at `now`, keeping at most
    /// `bound` kinds. Returns whether its kind is new (seen for the first time and kept): the
    /// moment to tell the operator, once per kind.
    pub fn record(&mut self, meta: u32, conversion: &[u8], now: Instant, bound: usize) -> bool {
        if let Some(kind) = self
            .kinds
            .iter_mut()
            .find(|k| k.meta == meta && k.conversion == conversion)
        {
            kind.count = kind.count.saturating_add(1);
            return false;
        }
        if self.kinds.len() >= bound {
            self.others = self.others.saturating_add(1);
            return false;
        }
        self.kinds.push(UnreadableKind {
            meta,
            conversion: conversion.to_vec(),
            count: 1,
            first_seen: now,
        });
        true
    }

    /// The kinds seen, in the order they were first seen.
    pub fn kinds(&self) -> &[UnreadableKind] {
        &self.kinds
    }
}

impl CommunityStats {
    /// Every plain counter with its stable name (the field's name), in declaration order: the
    /// one list the control API and the metrics print, so a counter added here shows everywhere.
    /// The drops are in [`CommunityStats::dropped`].
    pub fn fields(&self) -> [(&'static str, u64); 21] {
        // No `..`: a new counter that is not listed here does not compile.
        let CommunityStats {
            walk_attempts,
            walk_successes,
            walk_failures,
            stumbles,
            handshakes,
            responses_without_introduction,
            introductions_refused,
            punctures,
            sync_new,
            sync_reused,
            sync_skipped,
            sync_follow_ups,
            sync_sweeps,
            sync_packets_sent,
            missing_packets_sent,
            relayed,
            delayed,
            messages_created,
            messages_refused,
            messages_received,
            destroy_answers,
            dropped: _,
            unreadable: _,
        } = self;
        [
            ("walk_attempts", *walk_attempts),
            ("walk_successes", *walk_successes),
            ("walk_failures", *walk_failures),
            ("stumbles", *stumbles),
            ("handshakes", *handshakes),
            (
                "responses_without_introduction",
                *responses_without_introduction,
            ),
            ("introductions_refused", *introductions_refused),
            ("punctures", *punctures),
            ("sync_new", *sync_new),
            ("sync_reused", *sync_reused),
            ("sync_skipped", *sync_skipped),
            ("sync_follow_ups", *sync_follow_ups),
            ("sync_sweeps", *sync_sweeps),
            ("sync_packets_sent", *sync_packets_sent),
            ("missing_packets_sent", *missing_packets_sent),
            ("relayed", *relayed),
            ("delayed", *delayed),
            ("messages_created", *messages_created),
            ("messages_refused", *messages_refused),
            ("messages_received", *messages_received),
            ("destroy_answers", *destroy_answers),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_kinds_are_new_once_and_bounded() {
        let mut table = Unreadable::default();
        let t0 = Instant::ZERO;
        let t1 = t0 + std::time::Duration::from_millis(5);
        assert!(table.record(1, &[2], t0, 2));
        assert!(!table.record(1, &[2], t1, 2));
        assert!(table.record(2, &[2], t1, 2));
        // Full: a third kind is counted apart, and never reported as new.
        assert!(!table.record(3, &[2], t1, 2));
        assert!(!table.record(1, &[3], t1, 2));
        assert_eq!(table.others, 2);
        let kinds: Vec<(u32, &[u8], u64, Instant)> = table
            .kinds()
            .iter()
            .map(|k| (k.meta, &k.conversion[..], k.count, k.first_seen))
            .collect();
        assert_eq!(kinds, [(1, &[2][..], 2, t0), (2, &[2][..], 1, t1)]);
    }

    /// The three names from before the reasons were typed, kept for the API and the metrics.
    const LEGACY: [&str; 3] = ["plugin error", "store failed", "own message cannot wait"];

    fn kebab_case(name: &str) -> bool {
        !name.is_empty()
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--")
            && name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
    }

    #[test]
    fn every_drop_reason_has_its_own_kebab_case_or_legacy_name() {
        let mut seen = std::collections::HashSet::new();
        for reason in DropReason::ALL {
            let name = reason.as_str();
            assert!(seen.insert(name), "{reason:?} reuses the name {name:?}");
            assert!(
                kebab_case(name) || LEGACY.contains(&name),
                "{reason:?} is named {name:?}, neither kebab-case nor legacy"
            );
            assert_eq!(reason.to_string(), name);
        }
    }

    #[test]
    fn drop_counters_are_read_by_reason_and_listed_by_name() {
        let mut counters = Counters::<DropReason>::default();
        counters.bump(DropReason::Pruned);
        counters.add(DropReason::PluginError, 2);
        assert_eq!(counters.get(DropReason::Pruned), 1);
        assert_eq!(counters.get(DropReason::BadSession), 0);
        assert_eq!(counters.total(), 3);
        let mut names: Vec<_> = counters.iter().collect();
        names.sort_unstable();
        assert_eq!(names, [("plugin error", 2), ("pruned", 1)]);
    }

    #[test]
    fn every_traffic_counter_has_its_own_kebab_case_name_and_packets_theirs() {
        let mut seen = std::collections::HashSet::new();
        for traffic in Traffic::ALL {
            let name = traffic.as_str();
            assert!(seen.insert(name), "{traffic:?} reuses the name {name:?}");
            assert!(kebab_case(name), "{traffic:?} is named {name:?}");
            assert_eq!(traffic.to_string(), name);
        }
    }
}
