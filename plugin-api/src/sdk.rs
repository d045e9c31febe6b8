//! The safe SDK: write a community as ordinary Rust, export it with [`crate::export_community!`].
//!
//! A community type is a struct implementing [`Community`]. Its [`Definition`] lists conversions
//! and meta-messages; each [`Meta`] ties a payload type (implementing [`Payload`]: a versioned
//! binary conversion plus serde for JSON) to its policies, a check function and a handler. The SDK
//! turns all of it into the raw ABI of [`crate::abi`], decodes payloads before your functions see
//! them, and catches every panic at the boundary: a panic becomes an error for this community,
//! which then refuses further calls ("poisoned"), and the host lives on.

use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{
    self, ABI_VERSION, CommunityApi, CommunityApi_TO, CommunityBox, CommunityDef, HostBox, MetaDef,
    PluginError, PluginModule, PluginModuleRef, RawMessage, RawVerdict,
};

/// An error a community returns: a code (see `abi::ERROR_*`) and a one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: u32,
    message: String,
}

impl Error {
    /// Bad input: a payload that does not decode, JSON that does not fit, a value out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error {
            code: abi::ERROR_INVALID,
            message: message.into(),
        }
    }

    /// Something failed inside the community.
    pub fn internal(message: impl Into<String>) -> Self {
        Error {
            code: abi::ERROR_INTERNAL,
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Self {
        Error {
            code: e.code,
            message: e.message.into_string(),
        }
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        PluginError::new(e.code, e.message)
    }
}

/// A payload type: its binary conversions and (through serde) its JSON form.
///
/// `decode` must never panic on any input: return [`Error::invalid`] instead (a panic is caught,
/// but it poisons the community). `conversion` is the identifier the message was encoded with, so
/// a new plugin version can still read messages of an old one.
pub trait Payload: Sized + Serialize + DeserializeOwned + 'static {
    /// Encodes with `conversion` (the community's first, current conversion).
    fn encode(&self, conversion: &[u8]) -> Result<Vec<u8>, Error>;

    /// Decodes bytes written with `conversion`.
    fn decode(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error>;

    /// Chooses the conversion a new message is written in, among the community's
    /// `conversions` (the definition's order: current first, oldest last), and encodes it:
    /// returns `(conversion, bytes)`. Nodes still running an older version of the plugin read
    /// only older conversions, so writing each message in the oldest conversion that carries it
    /// unchanged keeps a mixed network talking. Default (hand-written payloads): the first
    /// conversion, as [`Payload::encode`] with it. [`Compact`] payloads choose the oldest
    /// conversion whose bytes read back to the same value.
    fn encode_oldest(&self, conversions: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let first = conversions
            .first()
            .ok_or_else(|| Error::internal("no conversion defined"))?;
        Ok((first.clone(), self.encode(first)?))
    }
}

/// A payload whose binary form is derived from its serde implementation: declare the type with
/// `#[derive(Serialize, Deserialize)]`, add `impl Compact for YourType {}`, and it is a
/// [`Payload`] (this trait has a blanket `Payload` implementation). One definition then serves
/// the wire (postcard) and the control API (JSON). Types that implement [`Payload`] by hand keep
/// doing so; a type implements one or the other.
///
/// # The format
///
/// [postcard](https://postcard.jamesmunns.com/wire-format) 1.x: compact (integers as varints,
/// lengths as varint prefixes, no field names) and deterministic (a value has one encoding).
/// Its wire format is specified and stable across every 1.x release, so plugin versions built
/// years apart read each other's messages. Decoding is bounds-checked and rejects trailing bytes;
/// it never panics on bytes from the network. Avoid maps whose iteration order is not fixed
/// (`HashMap`): use `BTreeMap` or a list, so equal values encode to equal bytes.
///
/// # Changing a payload
///
/// postcard is not self-describing: bytes carry no field names, so a field added to a type does
/// not decode from bytes written without it, and the other way round. A changed type is a new
/// conversion. Keep the old layout as a type of its own, list the new conversion first in the
/// definition (`.conversion(&[2]).conversion(&[1])`), name it in [`Compact::CONVERSIONS`], and
/// read the old one in [`Compact::decode_other`]:
///
/// ```
/// use dispersy_plugin_api::prelude::*;
/// use dispersy_plugin_api::sdk::{Compact, from_compact};
///
/// #[derive(Serialize, Deserialize)]
/// struct NoteV1 { text: String }
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Note { text: String, pinned: bool }
///
/// impl Compact for Note {
///     const CONVERSIONS: &'static [&'static [u8]] = &[&[2]];
///     fn decode_other(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
///         match conversion {
///             [1] => from_compact::<NoteV1>(bytes).map(|old| Note { text: old.text, pinned: false }),
///             _ => Err(Error::invalid("unknown conversion")),
///         }
///     }
/// }
///
/// let old = dispersy_plugin_api::sdk::to_compact(&NoteV1 { text: "hi".into() }).unwrap();
/// assert_eq!(Note::decode(&[1], &old).unwrap(), Note { text: "hi".into(), pinned: false });
/// ```
///
/// The JSON form follows serde too: the API accepts and shows the current type only.
pub trait Compact: Serialize + DeserializeOwned + 'static {
    /// The conversions whose payloads are this type in postcard form. Default: conversion 1
    /// (the template's `.conversion(&[1])`). Encoding with any other conversion is an error.
    const CONVERSIONS: &'static [&'static [u8]] = &[&[1]];

    /// Checks a value's bounds (a text's length, a list's size): called before encoding and
    /// after decoding, so the limit holds for what this node writes and for what it reads from
    /// the network. Default: everything fits.
    fn validate(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Encodes in a conversion not in [`Compact::CONVERSIONS`] (an older layout), so that
    /// nodes still on an older version read what that layout can carry. Fail with
    /// [`Error::invalid`] when the value does not fit it; a value it would change (a field the
    /// old layout lacks, set) is noticed by the round trip of [`Payload::encode_oldest`] and
    /// written in a newer conversion. Default: refused (only [`Compact::CONVERSIONS`] are
    /// written).
    fn encode_other(&self, conversion: &[u8]) -> Result<Vec<u8>, Error> {
        Err(Error::invalid(format!(
            "conversion {} is not one this payload type writes",
            to_hex(conversion)
        )))
    }

    /// Decodes bytes of a conversion not in [`Compact::CONVERSIONS`] (an older layout).
    /// Default: refused with [`Error::invalid`].
    fn decode_other(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        let _ = bytes;
        Err(Error::invalid(format!(
            "unknown conversion {}",
            to_hex(conversion)
        )))
    }
}

impl<T: Compact> Payload for T {
    fn encode(&self, conversion: &[u8]) -> Result<Vec<u8>, Error> {
        self.validate()?;
        if T::CONVERSIONS.contains(&conversion) {
            to_compact(self)
        } else {
            self.encode_other(conversion)
        }
    }

    /// The oldest of `conversions` that writes this value and reads it back unchanged (compared
    /// in postcard form, which is deterministic); the first conversion when none does.
    fn encode_oldest(&self, conversions: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        self.validate()?;
        let current = to_compact(self)?;
        for conversion in conversions.iter().rev() {
            let Ok(bytes) = self.encode(conversion) else {
                continue;
            };
            let unchanged = T::decode(conversion, &bytes)
                .and_then(|read| to_compact(&read))
                .is_ok_and(|read| read == current);
            if unchanged {
                return Ok((conversion.clone(), bytes));
            }
        }
        let first = conversions
            .first()
            .ok_or_else(|| Error::internal("no conversion defined"))?;
        Ok((first.clone(), self.encode(first)?))
    }

    fn decode(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        let value = if T::CONVERSIONS.contains(&conversion) {
            from_compact::<T>(bytes)?
        } else {
            T::decode_other(conversion, bytes)?
        };
        value.validate()?;
        Ok(value)
    }
}

/// The postcard form of `value` (the format of [`Compact`]).
pub fn to_compact<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value).map_err(|e| Error::invalid(format!("does not encode: {e}")))
}

/// Decodes the postcard form of a `T`; every byte must be used (trailing bytes are an error).
/// Never panics, whatever `bytes` hold.
pub fn from_compact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| Error::invalid(format!("does not decode: {e}")))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(Error::invalid(format!("{} trailing bytes", rest.len())))
    }
}

/// Who signs messages of a meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    /// Nobody: no author, no signature (direct or relay distribution only).
    None,
    /// The author.
    Member,
    /// Two members (signature-request / signature-response).
    DoubleMember,
}

/// Who may create messages of a meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Anyone.
    Public,
    /// Only members with a permit from the timeline.
    Linear,
    /// Switchable by dynamic-settings; the first entry is active at first.
    Dynamic(Vec<StaticResolution>),
}

/// The resolutions a dynamic resolution switches between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticResolution {
    /// Anyone.
    Public,
    /// Permit required.
    Linear,
}

/// The order in which the sync responder offers messages of a meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Ascending,
    /// Newest first.
    Descending,
    /// Random.
    Random,
}

/// How messages of a meta spread and whether they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Sent once, handled, not stored.
    Direct,
    /// Sent like direct, then passed on by every receiver to a few random verified candidates
    /// while the host's hop budget lasts; handled once per node, not stored.
    Relay,
    /// Stored and synchronised to every member.
    FullSync {
        /// Number each author's messages 1, 2, 3… (gaps are fetched).
        sequence_numbers: bool,
        /// Responder order.
        order: Order,
    },
    /// Stored and synchronised; only the newest `history` per key are kept (by global time).
    /// The key is the meta and the first author; for a double-member meta, the meta and the
    /// pair of signers, whichever of the two signed first. A message older than the `history`
    /// kept for its key is not stored.
    LastSync {
        /// Messages kept per member (at least 1).
        history: u16,
        /// Responder order.
        order: Order,
    },
}

/// Who receives a new message of a meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The candidates named when sending.
    Candidate,
    /// `node_count` random verified candidates.
    Community {
        /// How many.
        node_count: u16,
    },
}

/// What a check says about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store (if persistent) and handle it.
    Accept,
    /// Drop it; the reason is counted and logged by the host.
    Drop(String),
    /// Check it again after `after` (the host bounds how long and how many wait).
    Delay {
        /// Why.
        reason: String,
        /// When to check again.
        after: Duration,
    },
    /// Check it again once the message of `member` (a public key as in [`Message::authors`],
    /// or a 20-byte member id) at `global_time` is stored: the host asks the sender for it
    /// (missing-message). Only stored (full-sync or last-sync) messages end a wait; the host
    /// bounds how long (10 s by default) and how many wait.
    WaitForMessage {
        /// The awaited author.
        member: Vec<u8>,
        /// The awaited message's global time.
        global_time: u64,
    },
    /// Check it again once a message of `member` and the last-sync meta `meta` is stored: the
    /// host asks the sender for the newest ones (missing-last-message).
    WaitForLast {
        /// The awaited author.
        member: Vec<u8>,
        /// A last-sync meta-message type of this community.
        meta: u32,
    },
}

/// A decoded message handed to a check function or a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<P> {
    /// Meta-message type.
    pub meta: u32,
    /// Signing members' 33-byte public keys (empty for no-authentication).
    pub authors: Vec<Vec<u8>>,
    /// Global time claimed by the author.
    pub global_time: u64,
    /// Sequence number, when the meta numbers its messages.
    pub sequence_number: Option<u32>,
    /// `ip:port` it came from; `None` for a message this node created.
    pub source: Option<String>,
    /// The decoded payload.
    pub payload: P,
}

impl<P> Message<P> {
    /// The first author's public key in hexadecimal (empty for no-authentication).
    pub fn author_hex(&self) -> String {
        self.authors
            .first()
            .map(|key| to_hex(key))
            .unwrap_or_default()
    }
}

/// Why a stored message became hidden, or (when it is visible again) why it had been
/// ([`Undone::reason`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoReason {
    /// Its author undid it (undo-own).
    ByAuthor {
        /// The undo's global time.
        global_time: u64,
    },
    /// Another member holding `undo` on its meta undid it (undo-other).
    ByOther {
        /// The undo's author (33-byte public key).
        by: Vec<u8>,
        /// The undo's global time.
        global_time: u64,
    },
    /// The permission timeline no longer lets its author have created it (a revoke or a
    /// dynamic-settings change reached back over its global time), or lets it again.
    Denied,
}

/// A stored message that became hidden or visible again, handed to [`Meta::on_undone`].
#[derive(Debug, Clone, PartialEq)]
pub struct Undone<P> {
    /// The message (no source).
    pub message: Message<P>,
    /// `true`: hidden now (no longer synchronised, read or restored); `false`: visible again.
    pub undone: bool,
    /// Why.
    pub reason: UndoReason,
}

/// Log levels for [`Host::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Error.
    Error,
    /// Warning.
    Warn,
    /// Information.
    Info,
    /// Debugging.
    Debug,
    /// Tracing.
    Trace,
}

/// A candidate of the community.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `ip:port`.
    pub address: String,
    /// 20-byte member id, when known.
    pub member: Option<Vec<u8>>,
    /// `walk`, `stumble` or `intro`.
    pub category: &'static str,
}

/// The host, as a community sees it. Calls never block: sending and scheduling enqueue work.
pub struct Host {
    raw: HostBox,
    /// The community's conversions, current first.
    conversions: Vec<Vec<u8>>,
}

impl Host {
    /// A host over `raw` for a community with `conversions` (current first; the host double's
    /// handles).
    pub(crate) fn from_raw(raw: HostBox, conversions: Vec<Vec<u8>>) -> Self {
        Host { raw, conversions }
    }

    /// The 33-byte public key of this node's member.
    pub fn member(&self) -> Vec<u8> {
        self.raw.member().into_vec()
    }

    /// The 20-byte community id.
    pub fn community(&self) -> Vec<u8> {
        self.raw.community().into_vec()
    }

    /// The community's current global time.
    pub fn global_time(&self) -> u64 {
        self.raw.global_time()
    }

    /// The community's current candidates.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.raw
            .candidates()
            .into_iter()
            .map(|c| Candidate {
                address: c.address.into_string(),
                member: (!c.member.is_empty()).then(|| c.member.into_vec()),
                category: match c.category {
                    abi::category::WALK => "walk",
                    abi::category::STUMBLE => "stumble",
                    _ => "intro",
                },
            })
            .collect()
    }

    /// Creates, signs and sends a message of meta `meta` to its destination (plus `candidates`,
    /// `ip:port`, which candidate destinations require). The host claims the global time. The
    /// call only queues the message: like every message created on this node, it first goes
    /// through this community's own check (on the community's thread, after this call
    /// returns), and one the check does not accept is neither sent nor stored (the host logs
    /// and counts the refusal: `messages_refused`).
    ///
    /// The payload is written in the conversion [`Payload::encode_oldest`] chooses (for
    /// [`Compact`] payloads the oldest that carries it unchanged, so nodes on older versions
    /// read it); a host that cannot take another conversion than the first gets the first.
    pub fn send<P: Payload>(
        &self,
        meta: &str,
        payload: &P,
        candidates: &[&str],
    ) -> Result<(), Error> {
        let (conversion, bytes) = payload.encode_oldest(&self.conversions)?;
        let candidates: RVec<RString> = candidates.iter().map(|c| RString::from(*c)).collect();
        if self.conversions.first() != Some(&conversion) {
            match self.raw.send_in(
                RStr::from(meta),
                RVec::from(conversion),
                RVec::from(bytes),
                candidates.clone(),
            ) {
                RResult::RErr(e) if e.code == abi::ERROR_ABSENT => {}
                other => return other.into_result().map_err(Error::from),
            }
        }
        let first = self
            .conversions
            .first()
            .ok_or_else(|| Error::internal("no conversion defined"))?;
        let bytes = payload.encode(first)?;
        self.raw
            .send(RStr::from(meta), RVec::from(bytes), candidates)
            .into_result()
            .map_err(Error::from)
    }

    /// Undoes the stored message of `member` (33-byte public key or 20-byte member id) at
    /// `global_time`: an undo-own when `member` is this node's member, else an undo-other (this
    /// member must hold `undo` on the message's meta). The message's meta must be undoable
    /// ([`Meta::undoable`]); undoing a message this member undid already creates nothing.
    /// Queued, never blocks: the host creates the undo later and logs why when it cannot; the
    /// plugin learns the outcome through its metas' `on_undone`. A host older than 0.2.2
    /// answers an error.
    pub fn undo(&self, member: &[u8], global_time: u64) -> Result<(), Error> {
        self.raw
            .undo(RVec::from(member.to_vec()), global_time)
            .into_result()
            .map_err(Error::from)
    }

    /// Calls [`Community::on_timer`] with `token` after `delay`.
    pub fn schedule(&self, delay: Duration, token: u64) -> Result<(), Error> {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.raw
            .schedule(millis, token)
            .into_result()
            .map_err(Error::from)
    }

    /// Logs through the host (a plugin's own `tracing` or `log` output goes nowhere).
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        let level = match level {
            Level::Error => abi::level::ERROR,
            Level::Warn => abi::level::WARN,
            Level::Info => abi::level::INFO,
            Level::Debug => abi::level::DEBUG,
            Level::Trace => abi::level::TRACE,
        };
        self.raw.log(level, RStr::from(message.as_ref()));
    }

    /// One page of this community's stored messages of meta `meta` (payload type `P`) matching
    /// `filter`, oldest first (in the order they were stored), starting after cursor `after`
    /// (0 for the first page; then the previous [`Page::next`]). The host checks the
    /// signatures again and bounds the page size (`plugin_read_page`). Waits for the store, at
    /// most the host's call deadline: call it from the community's calls (check, handle,
    /// timer, restore), not from a thread of your own inside an async runtime. A stored
    /// message whose payload does not decode as `P` is left out of the page.
    pub fn read<P: Payload>(
        &self,
        meta: u32,
        filter: &Filter,
        after: u64,
    ) -> Result<Page<P>, Error> {
        let query = abi::ReadQuery {
            meta,
            any_meta: false,
            member: RVec::from(filter.member.clone().unwrap_or_default()),
            global_time_low: *filter.global_time.start(),
            global_time_high: *filter.global_time.end(),
            after,
            limit: filter.limit,
        };
        let page = self.raw.read(&query).into_result()?;
        Ok(Page {
            messages: page
                .messages
                .iter()
                .filter_map(|raw| decode_raw::<P>(raw).ok())
                .collect(),
            next: page.next,
            done: page.done,
        })
    }
}

impl Host {
    /// Proposes a double-member message of meta `meta` to `co_signer` (its 33-byte public
    /// key), reachable at `address` (`ip:port`); `candidates` are extra explicit destinations.
    /// The host claims the global time and sends the signature-request; the call only queues
    /// it and returns a token. Once the co-signer answered (signed, modified, appended) or the
    /// request expired, the meta's [`Meta::on_cosigned`] is called with the token: return
    /// `true` to add this member's signature and publish the message as the co-signer signed
    /// it (after this community's own check, like every message it creates). A proposal the
    /// node cannot start (unknown meta, no permit, too many in flight) is answered at once as a
    /// timeout. The payload is written like [`Host::send`]'s. A host older than this call
    /// answers an error.
    pub fn propose<P: Payload>(
        &self,
        meta: &str,
        payload: &P,
        co_signer: &[u8],
        address: &str,
        candidates: &[&str],
    ) -> Result<u64, Error> {
        let (conversion, bytes) = payload.encode_oldest(&self.conversions)?;
        let candidates: RVec<RString> = candidates.iter().map(|c| RString::from(*c)).collect();
        self.raw
            .propose(
                RStr::from(meta),
                RVec::from(conversion),
                RVec::from(bytes),
                RVec::from(co_signer.to_vec()),
                RString::from(address),
                candidates,
            )
            .into_result()
            .map_err(Error::from)
    }

    /// Whether `member` (33-byte public key or 20-byte member id) may create a message of
    /// meta `meta` at `global_time`, by this node's permission timeline as it stands now:
    /// always for public resolution, with a `permit` then for linear, by the policy in force
    /// then for dynamic. Waits for the host's answer (at most its call deadline): call it from
    /// the community's calls. An unknown meta or a bad member is an error, and so is a host
    /// older than this call.
    pub fn may(&self, meta: &str, member: &[u8], global_time: u64) -> Result<bool, Error> {
        self.raw
            .may(RStr::from(meta), RVec::from(member.to_vec()), global_time)
            .into_result()
            .map_err(Error::from)
    }
}

/// A co-signer's answer to a double-member message another member proposes with this
/// member as second author ([`Meta::cosign`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cosign<P> {
    /// Refuse: nothing is sent back (the proposer's request times out).
    Refuse,
    /// Sign the message as proposed.
    Sign,
    /// Sign the message with this payload instead, written in the proposed message's
    /// conversion.
    Modify(P),
    /// Sign the message with these bytes appended to its *encoded* payload. Raw bytes, not a
    /// `P`: an encoded payload followed by more bytes is not always the encoding of a `P`, and
    /// the proposer's check and handler must read it (a hand-written [`Payload`] can read an
    /// optional tail; a [`Compact`] one ignores trailing bytes).
    Append(Vec<u8>),
}

/// What the co-signer did with a double-member message this member proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Signed it unchanged.
    Signed,
    /// Signed it with another payload.
    Modified,
    /// Signed it with bytes appended to the payload (the new payload starts with the proposed
    /// one and is longer).
    Appended,
    /// No answer in time: refused, unreachable, or the proposal could not be started.
    Timeout,
}

/// The co-signer's answer to a proposal ([`Meta::on_cosigned`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Cosigned<P> {
    /// What the co-signer did.
    pub answer: Answer,
    /// The message as the co-signer signed it (the proposal for a timeout), its payload as
    /// encoded bytes.
    pub message: Message<Vec<u8>>,
    /// The conversion the payload is written in.
    pub conversion: Vec<u8>,
    /// The payload decoded as `P`; `None` when it does not decode (appended bytes may make it
    /// unreadable).
    pub payload: Option<P>,
}

/// What [`Host::read`] selects besides the meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only messages whose first author is this member (33-byte public key or 20-byte id).
    pub member: Option<Vec<u8>>,
    /// Only messages with a global time in this range.
    pub global_time: std::ops::RangeInclusive<u64>,
    /// Most messages per page (the host may give fewer).
    pub limit: u32,
}

impl Default for Filter {
    /// Every member, every global time, pages of up to 256 messages.
    fn default() -> Self {
        Filter {
            member: None,
            global_time: 0..=u64::MAX,
            limit: 256,
        }
    }
}

/// One page of [`Host::read`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page<P> {
    /// The messages, oldest first.
    pub messages: Vec<Message<P>>,
    /// The cursor of the next page.
    pub next: u64,
    /// Whether this was the last page.
    pub done: bool,
}

/// Why an instance is retired ([`Community::on_retire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// The host shuts down.
    Shutdown,
    /// A new instance of the same code replaces this one.
    Restart,
    /// A new version of the plugin replaces this one.
    Upgrade,
    /// The community is disabled.
    Disable,
    /// The community is left.
    Leave,
}

/// A community type. Implement it and export it with [`crate::export_community!`].
pub trait Community: Sized + Send + 'static {
    /// The definition: name, version, master key, conversions, meta-messages. Called at load
    /// time and for every new instance; keep it cheap and deterministic.
    fn definition() -> Definition<Self>;

    /// Creates an instance for a joined community; `host` is how it talks to the node.
    fn create(host: Host) -> Result<Self, Error>;

    /// A timer scheduled with [`Host::schedule`] fired.
    fn on_timer(&mut self, token: u64) -> Result<(), Error> {
        let _ = token;
        Ok(())
    }

    /// A JSON status shown by the host's control API.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Lifecycle: the stored history has been restored (each meta's [`Meta::restore`] fed,
    /// oldest first); live traffic follows. Called once per instance.
    fn on_live(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Lifecycle: the instance is about to be dropped, for `reason`. State that is not built
    /// from stored messages is lost after this call (state built from them comes back through
    /// restore). Not called after a panic.
    fn on_retire(&mut self, reason: Retire) -> Result<(), Error> {
        let _ = reason;
        Ok(())
    }
}

/// Type-erased operations of one meta-message over community `C`.
trait MetaOps<C>: Send + Sync {
    fn undoable(&self) -> bool;
    fn check(&self, community: &mut C, raw: &RawMessage) -> Verdict;
    fn handle(&self, community: &mut C, raw: &[RawMessage]) -> Result<(), Error>;
    fn restore(&self, community: &mut C, raw: &[RawMessage]) -> Result<(), Error>;
    fn payload_to_json(&self, conversion: &[u8], payload: &[u8]) -> Result<String, Error>;
    fn json_to_payload(&self, conversion: &[u8], json: &str) -> Result<Vec<u8>, Error>;
    fn json_to_oldest(
        &self,
        conversions: &[Vec<u8>],
        json: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), Error>;
    fn allow_signature(&self, community: &mut C, raw: &RawMessage) -> bool;
    fn cosign(&self, community: &mut C, raw: &RawMessage) -> Result<abi::RawCosign, Error>;
    fn cosigned(&self, community: &mut C, token: u64, answer: &abi::RawCosigned) -> bool;
    fn undone(&self, community: &mut C, raw: &[abi::RawUndone]) -> Result<(), Error>;
}

/// Check function of a meta: one verdict per message.
pub type CheckFn<C, P> = fn(&mut C, &Message<P>) -> Verdict;
/// Co-signing decision of a double-member meta: whether this member signs a message another
/// member proposes.
pub type AllowFn<C, P> = fn(&mut C, &Message<P>) -> bool;
/// Co-signing answer of a double-member meta: refuse, sign, or sign a changed payload.
pub type CosignFn<C, P> = fn(&mut C, &Message<P>) -> Cosign<P>;
/// A double-member meta's decision on the co-signer's answer to a proposal of this member
/// (with the token [`Host::propose`] returned): `true` publishes it.
pub type CosignedFn<C, P> = fn(&mut C, u64, Cosigned<P>) -> bool;
/// Handler of a meta: a batch of accepted messages.
pub type HandleFn<C, P> = fn(&mut C, Vec<Message<P>>) -> Result<(), Error>;
/// What a stored message of a meta becoming hidden or visible again does
/// ([`Meta::on_undone`]).
pub type UndoneFn<C, P> = fn(&mut C, Undone<P>) -> Result<(), Error>;

/// One meta-message of community `C` carrying payload `P`, built with chained setters.
///
/// Defaults: member authentication, public resolution, direct distribution, community destination
/// to 10 candidates, priority 128, no batching, accept everything, ignore handled messages.
pub struct Meta<C, P> {
    raw: MetaDef,
    check: CheckFn<C, P>,
    handle: HandleFn<C, P>,
    restore: Option<HandleFn<C, P>>,
    allow: AllowFn<C, P>,
    cosign: Option<CosignFn<C, P>>,
    cosigned: Option<CosignedFn<C, P>>,
    undoable: bool,
    on_undone: UndoneFn<C, P>,
    payload: PhantomData<fn() -> P>,
}

impl<C: Community, P: Payload> Meta<C, P> {
    /// A meta-message with wire type `id` (unique in the community) and `name`.
    pub fn new(id: u32, name: &str) -> Self {
        Meta {
            raw: MetaDef {
                id,
                name: RString::from(name),
                authentication: abi::authentication::MEMBER,
                resolution: abi::resolution::PUBLIC,
                dynamic_policies: RVec::new(),
                distribution: abi::distribution::DIRECT,
                sequence_numbers: false,
                history: 0,
                order: abi::order::ASCENDING,
                prune_inactive: 0,
                prune_remove: 0,
                destination: abi::destination::COMMUNITY,
                node_count: 10,
                priority: 128,
                batch_window_ms: 0,
            },
            check: |_, _| Verdict::Accept,
            handle: |_, _| Ok(()),
            restore: None,
            allow: |_, _| false,
            cosign: None,
            cosigned: None,
            undoable: false,
            on_undone: |_, _| Ok(()),
            payload: PhantomData,
        }
    }

    /// Sets the authentication policy.
    pub fn authentication(mut self, policy: Authentication) -> Self {
        self.raw.authentication = match policy {
            Authentication::None => abi::authentication::NONE,
            Authentication::Member => abi::authentication::MEMBER,
            Authentication::DoubleMember => abi::authentication::DOUBLE_MEMBER,
        };
        self
    }

    /// Sets the resolution policy.
    pub fn resolution(mut self, policy: Resolution) -> Self {
        let code = |p: StaticResolution| match p {
            StaticResolution::Public => abi::resolution::PUBLIC,
            StaticResolution::Linear => abi::resolution::LINEAR,
        };
        (self.raw.resolution, self.raw.dynamic_policies) = match policy {
            Resolution::Public => (abi::resolution::PUBLIC, RVec::new()),
            Resolution::Linear => (abi::resolution::LINEAR, RVec::new()),
            Resolution::Dynamic(list) => (
                abi::resolution::DYNAMIC,
                list.into_iter().map(code).collect(),
            ),
        };
        self
    }

    /// Sets the distribution policy.
    pub fn distribution(mut self, policy: Distribution) -> Self {
        let order = |o: Order| match o {
            Order::Ascending => abi::order::ASCENDING,
            Order::Descending => abi::order::DESCENDING,
            Order::Random => abi::order::RANDOM,
        };
        match policy {
            Distribution::Direct => self.raw.distribution = abi::distribution::DIRECT,
            Distribution::Relay => self.raw.distribution = abi::distribution::RELAY,
            Distribution::FullSync {
                sequence_numbers,
                order: o,
            } => {
                self.raw.distribution = abi::distribution::FULL_SYNC;
                self.raw.sequence_numbers = sequence_numbers;
                self.raw.order = order(o);
            }
            Distribution::LastSync { history, order: o } => {
                self.raw.distribution = abi::distribution::LAST_SYNC;
                self.raw.history = history;
                self.raw.order = order(o);
            }
        }
        self
    }

    /// Prunes synchronised messages by global time: inactive after `inactive` units, removed
    /// after `remove` units.
    pub fn pruning(mut self, inactive: u64, remove: u64) -> Self {
        self.raw.prune_inactive = inactive;
        self.raw.prune_remove = remove;
        self
    }

    /// Sets the destination policy.
    pub fn destination(mut self, policy: Destination) -> Self {
        match policy {
            Destination::Candidate => self.raw.destination = abi::destination::CANDIDATE,
            Destination::Community { node_count } => {
                self.raw.destination = abi::destination::COMMUNITY;
                self.raw.node_count = node_count;
            }
        }
        self
    }

    /// Sets the priority (0..=255; only above 32 is synchronised).
    pub fn priority(mut self, priority: u8) -> Self {
        self.raw.priority = priority;
        self
    }

    /// Lets incoming messages wait up to `window` to be checked and handled together.
    pub fn batch_window(mut self, window: Duration) -> Self {
        self.raw.batch_window_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
        self
    }

    /// Sets the check function.
    pub fn check(mut self, check: CheckFn<C, P>) -> Self {
        self.check = check;
        self
    }

    /// Sets the handler.
    pub fn handle(mut self, handle: HandleFn<C, P>) -> Self {
        self.handle = handle;
        self
    }

    /// Sets the restore function: what the meta's stored messages do to a new instance (first
    /// start, restart, upgrade) before live traffic, oldest first, in batches. Without one the
    /// meta's handler is used, so a community whose state its handlers build restores for free;
    /// set one when the handler has effects that must not repeat (sending, scheduling), or
    /// `|_, _| Ok(())` to ignore the history. Messages whose payload no longer decodes are
    /// left out.
    pub fn restore(mut self, restore: HandleFn<C, P>) -> Self {
        self.restore = Some(restore);
        self
    }

    /// Sets the co-signing decision of a double-member meta (without one, every request to
    /// co-sign is refused). The message's first author proposes it; this member is the second.
    pub fn allow_signature(mut self, allow: AllowFn<C, P>) -> Self {
        self.allow = allow;
        self
    }

    /// Sets the co-signing answer of a double-member meta: refuse, sign, sign with the payload
    /// replaced ([`Cosign::Modify`]) or with bytes appended ([`Cosign::Append`]). It takes
    /// precedence over [`Meta::allow_signature`] (the older yes-or-no form, still used when no
    /// answer function is set). A changed message too large for a datagram is refused by the
    /// host.
    pub fn cosign(mut self, cosign: CosignFn<C, P>) -> Self {
        self.cosign = Some(cosign);
        self
    }

    /// Sets the decision on the co-signer's answer to a message this member proposed
    /// ([`Host::propose`], with its token; the control API's proposals have token 0 and are
    /// asked about only when changed): `true` adds this member's signature and publishes the
    /// message as the co-signer signed it, `false` drops it. Called for a timeout too (its
    /// result ignored). Without one, only an unchanged message is published.
    pub fn on_cosigned(mut self, cosigned: CosignedFn<C, P>) -> Self {
        self.cosigned = Some(cosigned);
        self
    }

    /// Declares the meta's messages undoable: their author may undo them (undo-own) and a
    /// member holding `undo` on the meta may undo anyone's (undo-other). Not undoable by
    /// default; an undo of a message of a meta that is not undoable is held invalid.
    pub fn undoable(mut self) -> Self {
        self.undoable = true;
        self
    }

    /// Sets what a stored message of this meta becoming hidden (undone by an undo, or denied by
    /// a revoke or a dynamic-settings change reaching back over it) or visible again does, one
    /// call per message in the order it happened. A message hidden for two reasons is reported
    /// once when it becomes hidden and once when the last reason ends; a restarted instance's
    /// restore leaves hidden messages out, and it may be told of one its restore already left
    /// out, so keep it idempotent. Default: nothing. Messages whose payload no longer decodes
    /// are left out.
    pub fn on_undone(mut self, on_undone: UndoneFn<C, P>) -> Self {
        self.on_undone = on_undone;
        self
    }
}

fn decode_raw<P: Payload>(raw: &RawMessage) -> Result<Message<P>, Error> {
    let payload = P::decode(&raw.conversion, &raw.payload)?;
    Ok(Message {
        meta: raw.meta,
        authors: raw.authors.iter().map(|a| a.to_vec()).collect(),
        global_time: raw.global_time,
        sequence_number: (raw.sequence_number != 0).then_some(raw.sequence_number),
        source: (!raw.source.is_empty()).then(|| raw.source.to_string()),
        payload,
    })
}

impl<C: Community, P: Payload> MetaOps<C> for Meta<C, P> {
    fn undoable(&self) -> bool {
        self.undoable
    }

    fn allow_signature(&self, community: &mut C, raw: &RawMessage) -> bool {
        decode_raw::<P>(raw).is_ok_and(|message| (self.allow)(community, &message))
    }

    fn cosign(&self, community: &mut C, raw: &RawMessage) -> Result<abi::RawCosign, Error> {
        let answer = |kind, payload: Vec<u8>| abi::RawCosign {
            kind,
            payload: RVec::from(payload),
        };
        let Ok(message) = decode_raw::<P>(raw) else {
            return Ok(answer(abi::cosign::REFUSE, Vec::new()));
        };
        let Some(cosign) = self.cosign else {
            let allow = (self.allow)(community, &message);
            let kind = if allow {
                abi::cosign::SIGN
            } else {
                abi::cosign::REFUSE
            };
            return Ok(answer(kind, Vec::new()));
        };
        Ok(match cosign(community, &message) {
            Cosign::Refuse => answer(abi::cosign::REFUSE, Vec::new()),
            Cosign::Sign => answer(abi::cosign::SIGN, Vec::new()),
            Cosign::Modify(payload) => {
                answer(abi::cosign::MODIFY, payload.encode(&raw.conversion)?)
            }
            Cosign::Append(tail) => answer(abi::cosign::APPEND, tail),
        })
    }

    fn cosigned(&self, community: &mut C, token: u64, raw: &abi::RawCosigned) -> bool {
        let answer = match raw.kind {
            abi::cosigned::SIGNED => Answer::Signed,
            abi::cosigned::MODIFIED => Answer::Modified,
            abi::cosigned::APPENDED => Answer::Appended,
            _ => Answer::Timeout,
        };
        let Some(cosigned) = self.cosigned else {
            return answer == Answer::Signed;
        };
        let m = &raw.message;
        let cosigned_message = Cosigned {
            answer,
            message: Message {
                meta: m.meta,
                authors: m.authors.iter().map(|a| a.to_vec()).collect(),
                global_time: m.global_time,
                sequence_number: (m.sequence_number != 0).then_some(m.sequence_number),
                source: None,
                payload: m.payload.to_vec(),
            },
            conversion: m.conversion.to_vec(),
            payload: P::decode(&m.conversion, &m.payload).ok(),
        };
        cosigned(community, token, cosigned_message)
    }

    fn undone(&self, community: &mut C, raw: &[abi::RawUndone]) -> Result<(), Error> {
        for notice in raw {
            let Ok(message) = decode_raw::<P>(&notice.message) else {
                continue;
            };
            let reason = match notice.reason {
                abi::undone::BY_AUTHOR => UndoReason::ByAuthor {
                    global_time: notice.by_global_time,
                },
                abi::undone::BY_OTHER => UndoReason::ByOther {
                    by: notice.by_member.to_vec(),
                    global_time: notice.by_global_time,
                },
                _ => UndoReason::Denied,
            };
            (self.on_undone)(
                community,
                Undone {
                    message,
                    undone: notice.undone,
                    reason,
                },
            )?;
        }
        Ok(())
    }

    fn check(&self, community: &mut C, raw: &RawMessage) -> Verdict {
        match decode_raw::<P>(raw) {
            Ok(message) => (self.check)(community, &message),
            Err(e) => Verdict::Drop(format!("payload does not decode: {e}")),
        }
    }

    fn handle(&self, community: &mut C, raw: &[RawMessage]) -> Result<(), Error> {
        let messages = raw
            .iter()
            .map(decode_raw::<P>)
            .collect::<Result<Vec<_>, _>>()?;
        (self.handle)(community, messages)
    }

    fn restore(&self, community: &mut C, raw: &[RawMessage]) -> Result<(), Error> {
        let messages: Vec<Message<P>> =
            raw.iter().filter_map(|m| decode_raw::<P>(m).ok()).collect();
        if messages.is_empty() {
            return Ok(());
        }
        (self.restore.unwrap_or(self.handle))(community, messages)
    }

    fn payload_to_json(&self, conversion: &[u8], payload: &[u8]) -> Result<String, Error> {
        let value = P::decode(conversion, payload)?;
        serde_json::to_string(&value).map_err(|e| Error::internal(format!("to JSON: {e}")))
    }

    fn json_to_payload(&self, conversion: &[u8], json: &str) -> Result<Vec<u8>, Error> {
        let value: P = serde_json::from_str(json)
            .map_err(|e| Error::invalid(format!("payload does not fit the meta: {e}")))?;
        value.encode(conversion)
    }

    fn json_to_oldest(
        &self,
        conversions: &[Vec<u8>],
        json: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let value: P = serde_json::from_str(json)
            .map_err(|e| Error::invalid(format!("payload does not fit the meta: {e}")))?;
        value.encode_oldest(conversions)
    }
}

/// A community type's definition, built with chained setters.
pub struct Definition<C> {
    name: String,
    version: String,
    master_key_hex: String,
    conversions: Vec<Vec<u8>>,
    metas: Vec<(MetaDef, Box<dyn MetaOps<C>>)>,
}

impl<C: Community> Definition<C> {
    /// A community type `name`, plugin `version`, identified by the master public key
    /// `master_key_hex` (66 hexadecimal digits, from `dispersy keygen`).
    pub fn new(name: &str, version: &str, master_key_hex: &str) -> Self {
        Definition {
            name: name.to_owned(),
            version: version.to_owned(),
            master_key_hex: master_key_hex.to_owned(),
            conversions: Vec::new(),
            metas: Vec::new(),
        }
    }

    /// Adds a conversion identifier (one byte 0x01..=0xFE, or 0xFF and more bytes). The first one
    /// added encodes new messages; all are decoded.
    pub fn conversion(mut self, identifier: &[u8]) -> Self {
        self.conversions.push(identifier.to_vec());
        self
    }

    /// Adds a meta-message.
    pub fn meta<P: Payload>(mut self, meta: Meta<C, P>) -> Self {
        self.metas.push((meta.raw.clone(), Box::new(meta)));
        self
    }

    pub(crate) fn to_raw(&self) -> Result<CommunityDef, Error> {
        let master_key = parse_hex(&self.master_key_hex)
            .ok_or_else(|| Error::invalid("master key is not hexadecimal"))?;
        Ok(CommunityDef {
            name: RString::from(self.name.as_str()),
            version: RString::from(self.version.as_str()),
            master_key: RVec::from(master_key),
            conversions: self
                .conversions
                .iter()
                .map(|c| RVec::from(c.clone()))
                .collect(),
            metas: self.metas.iter().map(|(raw, _)| raw.clone()).collect(),
        })
    }

    fn ops(&self, meta: u32) -> Result<&dyn MetaOps<C>, Error> {
        self.metas
            .iter()
            .find(|(raw, _)| raw.id == meta)
            .map(|(_, ops)| ops.as_ref())
            .ok_or_else(|| Error::invalid(format!("no meta-message with type {meta}")))
    }
}

/// Lower-case hexadecimal text of `bytes` (as the host shows keys and ids).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hexadecimal text (surrounding whitespace ignored); `None` if it is not hex.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Runs `f`, turning a panic into a [`PluginError`] with code `ERROR_PANIC`.
pub fn guard<T>(f: impl FnOnce() -> Result<T, Error>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(error)) => RResult::RErr(error.into()),
        Err(panic) => RResult::RErr(PluginError::new(
            abi::ERROR_PANIC,
            format!("plugin panicked: {}", panic_message(panic.as_ref())),
        )),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// One community instance behind the ABI.
struct Instance<C: Community> {
    community: C,
    definition: Definition<C>,
    poisoned: Option<String>,
}

impl<C: Community> Instance<C> {
    /// Runs a call that may change the community; a panic poisons the instance.
    fn mutating<T>(
        &mut self,
        f: impl FnOnce(&mut C, &Definition<C>) -> Result<T, Error>,
    ) -> RResult<T, PluginError> {
        if let Some(reason) = &self.poisoned {
            return RResult::RErr(PluginError::new(
                abi::ERROR_POISONED,
                format!("community disabled after an earlier panic: {reason}"),
            ));
        }
        let (community, definition) = (&mut self.community, &self.definition);
        let result = guard(|| f(community, definition));
        if let RResult::RErr(e) = &result
            && e.code == abi::ERROR_PANIC
        {
            self.poisoned = Some(e.message.to_string());
        }
        result
    }

    fn reading<T>(
        &self,
        f: impl FnOnce(&C, &Definition<C>) -> Result<T, Error>,
    ) -> RResult<T, PluginError> {
        if let Some(reason) = &self.poisoned {
            return RResult::RErr(PluginError::new(
                abi::ERROR_POISONED,
                format!("community disabled after an earlier panic: {reason}"),
            ));
        }
        guard(|| f(&self.community, &self.definition))
    }
}

fn raw_verdict(verdict: Verdict) -> RawVerdict {
    let raw = RawVerdict {
        kind: abi::verdict::ACCEPT,
        reason: RString::new(),
        delay_ms: 0,
        member: RVec::new(),
        global_time: 0,
        meta: 0,
    };
    match verdict {
        Verdict::Accept => raw,
        Verdict::Drop(reason) => RawVerdict {
            kind: abi::verdict::DROP,
            reason: RString::from(reason),
            ..raw
        },
        Verdict::Delay { reason, after } => RawVerdict {
            kind: abi::verdict::DELAY,
            reason: RString::from(reason),
            delay_ms: u32::try_from(after.as_millis()).unwrap_or(u32::MAX),
            ..raw
        },
        Verdict::WaitForMessage {
            member,
            global_time,
        } => RawVerdict {
            kind: abi::verdict::WAIT_MESSAGE,
            reason: RString::from("waits for a message"),
            member: RVec::from(member),
            global_time,
            ..raw
        },
        Verdict::WaitForLast { member, meta } => RawVerdict {
            kind: abi::verdict::WAIT_LAST,
            reason: RString::from("waits for a last message"),
            member: RVec::from(member),
            meta,
            ..raw
        },
    }
}

impl<C: Community> CommunityApi for Instance<C> {
    fn check(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<RVec<RawVerdict>, PluginError> {
        self.mutating(|community, definition| {
            batch
                .iter()
                .map(|raw| {
                    let ops = definition.ops(raw.meta)?;
                    Ok(raw_verdict(ops.check(community, raw)))
                })
                .collect()
        })
    }

    fn handle(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<(), PluginError> {
        self.mutating(|community, definition| {
            let Some(first) = batch.first() else {
                return Ok(());
            };
            let ops = definition.ops(first.meta)?;
            if batch.iter().any(|raw| raw.meta != first.meta) {
                return Err(Error::invalid("a batch holds messages of one meta"));
            }
            ops.handle(community, batch.as_slice())
        })
    }

    fn timer(&mut self, token: u64) -> RResult<(), PluginError> {
        self.mutating(|community, _| community.on_timer(token))
    }

    fn payload_to_json(
        &self,
        meta: u32,
        conversion: RSlice<'_, u8>,
        payload: RSlice<'_, u8>,
    ) -> RResult<RString, PluginError> {
        self.reading(|_, definition| {
            definition
                .ops(meta)?
                .payload_to_json(conversion.as_slice(), payload.as_slice())
                .map(RString::from)
        })
    }

    fn payload_from_json(&self, meta: u32, json: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        self.reading(|_, definition| {
            let conversion = definition
                .conversions
                .first()
                .ok_or_else(|| Error::internal("no conversion defined"))?;
            definition
                .ops(meta)?
                .json_to_payload(conversion, json.as_str())
                .map(RVec::from)
        })
    }

    fn status(&self) -> RResult<RString, PluginError> {
        self.reading(|community, _| {
            serde_json::to_string(&community.status())
                .map(RString::from)
                .map_err(|e| Error::internal(format!("status to JSON: {e}")))
        })
    }

    fn allow_signature(&mut self, message: &RawMessage) -> RResult<bool, PluginError> {
        self.mutating(|community, definition| {
            let ops = definition.ops(message.meta)?;
            Ok(ops.allow_signature(community, message))
        })
    }

    fn cosign(&mut self, message: &RawMessage) -> RResult<abi::RawCosign, PluginError> {
        self.mutating(|community, definition| {
            definition.ops(message.meta)?.cosign(community, message)
        })
    }

    fn cosigned(&mut self, token: u64, answer: &abi::RawCosigned) -> RResult<bool, PluginError> {
        self.mutating(|community, definition| {
            Ok(definition
                .ops(answer.message.meta)?
                .cosigned(community, token, answer))
        })
    }

    fn restore(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<(), PluginError> {
        self.mutating(|community, definition| {
            // Runs of one meta, in order; metas this version no longer defines are skipped.
            for run in batch.as_slice().chunk_by(|a, b| a.meta == b.meta) {
                if let Ok(ops) = definition.ops(run[0].meta) {
                    ops.restore(community, run)?;
                }
            }
            Ok(())
        })
    }

    fn live(&mut self) -> RResult<(), PluginError> {
        self.mutating(|community, _| community.on_live())
    }

    fn undone(&mut self, batch: RSlice<'_, abi::RawUndone>) -> RResult<(), PluginError> {
        self.mutating(|community, definition| {
            // Runs of one meta, in order; metas this version no longer defines are skipped.
            for run in batch
                .as_slice()
                .chunk_by(|a, b| a.message.meta == b.message.meta)
            {
                if let Ok(ops) = definition.ops(run[0].message.meta) {
                    ops.undone(community, run)?;
                }
            }
            Ok(())
        })
    }

    fn retire(&mut self, reason: u8) -> RResult<(), PluginError> {
        let reason = match reason {
            abi::retire::SHUTDOWN => Retire::Shutdown,
            abi::retire::RESTART => Retire::Restart,
            abi::retire::UPGRADE => Retire::Upgrade,
            abi::retire::DISABLE => Retire::Disable,
            _ => Retire::Leave,
        };
        self.mutating(|community, _| community.on_retire(reason))
    }

    fn payload_from_json_in(
        &self,
        meta: u32,
        json: RStr<'_>,
    ) -> RResult<abi::EncodedPayload, PluginError> {
        self.reading(|_, definition| {
            let (conversion, payload) = definition
                .ops(meta)?
                .json_to_oldest(&definition.conversions, json.as_str())?;
            Ok(abi::EncodedPayload {
                conversion: RVec::from(conversion),
                payload: RVec::from(payload),
            })
        })
    }
}

extern "C" fn abi_version() -> u32 {
    ABI_VERSION
}

extern "C" fn definition<C: Community>() -> RResult<CommunityDef, PluginError> {
    guard(|| C::definition().to_raw())
}

pub(crate) extern "C" fn create<C: Community>(host: HostBox) -> RResult<CommunityBox, PluginError> {
    guard(|| {
        let definition = C::definition();
        if definition.conversions.is_empty() {
            return Err(Error::invalid("no conversion defined"));
        }
        let community = C::create(Host {
            raw: host,
            conversions: definition.conversions.clone(),
        })?;
        let instance = Instance {
            community,
            definition,
            poisoned: None,
        };
        Ok(CommunityApi_TO::from_value(instance, TD_Opaque))
    })
}

/// The ids of `C`'s undoable meta-messages ([`Meta::undoable`]); none if building the
/// definition panics (the host refuses such a plugin at `definition` anyway).
pub(crate) extern "C" fn undoable<C: Community>() -> RVec<u32> {
    std::panic::catch_unwind(|| {
        C::definition()
            .metas
            .iter()
            .filter(|(_, ops)| ops.undoable())
            .map(|(raw, _)| raw.id)
            .collect()
    })
    .unwrap_or_default()
}

/// The root module of community type `C`. Used by [`crate::export_community!`].
pub fn module<C: Community>() -> PluginModuleRef {
    PluginModule {
        abi_version,
        definition: definition::<C>,
        create: create::<C>,
        undoable: undoable::<C>,
    }
    .leak_into_prefix()
}
