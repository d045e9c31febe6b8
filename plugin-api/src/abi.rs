//! The raw stable ABI between the host and a plugin: `#[repr(C)]` types checked by abi_stable.
//!
//! Plugin authors do not use this module; they use [`crate::sdk`]. The host uses it to load and
//! drive plugins. Rules for changing it (see CHANGELOG.md):
//! - the root module [`PluginModule`] and the trait objects [`HostApi`] and [`CommunityApi`]
//!   only grow by appending after their `last_prefix_field`; new members are optional;
//! - policies are `u8` codes, not Rust enums, so a new code changes no layout: a host that does not
//!   know a code refuses the plugin with a one-line error naming the meta-message;
//! - anything else is a breaking change: bump [`ABI_VERSION`] and the crate's minor version.

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RErr, ROk, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

/// The protocol-level ABI version. The host refuses a plugin that reports another one.
pub const ABI_VERSION: u32 = 2;

/// An error crossing the boundary in either direction.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// One of the `ERROR_*` codes.
    pub code: u32,
    /// Human-readable, one line.
    pub message: RString,
}

/// The plugin rejected the input (bad payload, bad JSON, unknown meta).
pub const ERROR_INVALID: u32 = 400;
/// The plugin failed internally.
pub const ERROR_INTERNAL: u32 = 500;
/// The plugin panicked; the panic was caught at the boundary.
pub const ERROR_PANIC: u32 = 501;
/// The plugin panicked earlier and refuses further calls.
pub const ERROR_POISONED: u32 = 502;
/// The host refused a call (queue full, unknown meta, shutting down).
pub const ERROR_HOST: u32 = 503;
/// The other side is older than the method called (the default body of an appended method
/// answers it): fall back to the older method.
pub const ERROR_ABSENT: u32 = 504;

/// A payload encoded by the plugin with the conversion it chose
/// ([`CommunityApi::payload_from_json_in`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct EncodedPayload {
    /// The conversion the payload is written in; one of the community's conversions.
    pub conversion: RVec<u8>,
    /// The payload's bytes.
    pub payload: RVec<u8>,
}

impl PluginError {
    /// An error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        PluginError {
            code,
            message: RString::from(message.into()),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for PluginError {}

/// Authentication codes of [`MetaDef::authentication`].
pub mod authentication {
    /// Not signed.
    pub const NONE: u8 = 0;
    /// Signed by one member.
    pub const MEMBER: u8 = 1;
    /// Signed by two members.
    pub const DOUBLE_MEMBER: u8 = 2;
}

/// Resolution codes of [`MetaDef::resolution`] (and of the entries of `dynamic_policies`).
pub mod resolution {
    /// Anyone may create the message.
    pub const PUBLIC: u8 = 0;
    /// Only members with a permit.
    pub const LINEAR: u8 = 1;
    /// Switchable with dynamic-settings between `dynamic_policies`.
    pub const DYNAMIC: u8 = 2;
}

/// Distribution codes of [`MetaDef::distribution`].
pub mod distribution {
    /// Sent once, not stored.
    pub const DIRECT: u8 = 0;
    /// Forwarded towards its destination, not stored.
    pub const RELAY: u8 = 1;
    /// Stored and synchronised.
    pub const FULL_SYNC: u8 = 2;
    /// Stored and synchronised, newest `history` per member.
    pub const LAST_SYNC: u8 = 3;
}

/// Responder order codes of [`MetaDef::order`].
pub mod order {
    /// Oldest first.
    pub const ASCENDING: u8 = 0;
    /// Newest first.
    pub const DESCENDING: u8 = 1;
    /// Random.
    pub const RANDOM: u8 = 2;
}

/// Destination codes of [`MetaDef::destination`].
pub mod destination {
    /// Explicit candidates.
    pub const CANDIDATE: u8 = 0;
    /// `node_count` random verified candidates.
    pub const COMMUNITY: u8 = 1;
}

/// One meta-message definition.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct MetaDef {
    /// Wire type, unique in the community.
    pub id: u32,
    /// Name, unique in the community.
    pub name: RString,
    /// An [`authentication`] code.
    pub authentication: u8,
    /// A [`resolution`] code.
    pub resolution: u8,
    /// For dynamic resolution: the [`resolution`] codes it switches between, first one active.
    pub dynamic_policies: RVec<u8>,
    /// A [`distribution`] code.
    pub distribution: u8,
    /// Full-sync: whether messages carry sequence numbers.
    pub sequence_numbers: bool,
    /// Last-sync: messages kept per member.
    pub history: u16,
    /// An [`order`] code (sync distributions).
    pub order: u8,
    /// Global-time pruning: inactive after this many units (0: no pruning).
    pub prune_inactive: u64,
    /// Global-time pruning: removed after this many units (0: no pruning).
    pub prune_remove: u64,
    /// A [`destination`] code.
    pub destination: u8,
    /// Community destination: how many candidates receive a new message.
    pub node_count: u16,
    /// 0..=255; above 32 is synchronised.
    pub priority: u8,
    /// How long incoming messages may wait to be handled in one batch, in milliseconds.
    pub batch_window_ms: u32,
}

/// What a community type declares about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct CommunityDef {
    /// Community type name.
    pub name: RString,
    /// Plugin version.
    pub version: RString,
    /// Master public key, 33 bytes compressed secp256k1. The community id derives from it.
    pub master_key: RVec<u8>,
    /// Conversion identifiers decoded, the first one also used to encode.
    pub conversions: RVec<RVec<u8>>,
    /// The meta-messages.
    pub metas: RVec<MetaDef>,
}

/// One verified message handed to a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Meta-message type.
    pub meta: u32,
    /// Conversion the payload is encoded with.
    pub conversion: RVec<u8>,
    /// Signing members' 33-byte public keys, in order.
    pub authors: RVec<RVec<u8>>,
    /// Global time.
    pub global_time: u64,
    /// Sequence number, 0 when the meta has none.
    pub sequence_number: u32,
    /// Source address (`ip:port`), empty for a message this node created.
    pub source: RString,
    /// Payload bytes.
    pub payload: RVec<u8>,
}

/// Verdict kinds of [`RawVerdict::kind`].
pub mod verdict {
    /// Accept: store (if persistent) and handle.
    pub const ACCEPT: u8 = 0;
    /// Drop, with a reason.
    pub const DROP: u8 = 1;
    /// Check again after `delay_ms` (bounded by the host).
    pub const DELAY: u8 = 2;
    /// Check again once the message of `member` at `global_time` is stored; the host asks the
    /// sender for it (missing-message). Waits are bounded by the host in count and time.
    pub const WAIT_MESSAGE: u8 = 3;
    /// Check again once a message of `member` and meta `meta` is stored; the host asks the
    /// sender for the newest ones (missing-last-message; `meta` must be last-sync).
    pub const WAIT_LAST: u8 = 4;
}

/// The plugin's verdict on one message of a checked batch.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RawVerdict {
    /// A [`verdict`] code.
    pub kind: u8,
    /// Why (drop and delay).
    pub reason: RString,
    /// For delay: when to check again, in milliseconds.
    pub delay_ms: u32,
    /// For the waits: the awaited author, as a 33-byte public key or a 20-byte member id.
    pub member: RVec<u8>,
    /// For [`verdict::WAIT_MESSAGE`]: the awaited message's global time.
    pub global_time: u64,
    /// For [`verdict::WAIT_LAST`]: the awaited meta-message type.
    pub meta: u32,
}

/// Category codes of [`CandidateInfo::category`].
pub mod category {
    /// Answered our introduction-request.
    pub const WALK: u8 = 0;
    /// Sent us an introduction-request.
    pub const STUMBLE: u8 = 1;
    /// Introduced by another peer.
    pub const INTRO: u8 = 2;
}

/// A candidate of the community, as the host tells a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct CandidateInfo {
    /// `ip:port`.
    pub address: RString,
    /// 20-byte member id, empty when unknown.
    pub member: RVec<u8>,
    /// A [`category`] code.
    pub category: u8,
}

/// Log levels of [`HostApi::log`].
pub mod level {
    /// Error.
    pub const ERROR: u8 = 1;
    /// Warning.
    pub const WARN: u8 = 2;
    /// Information.
    pub const INFO: u8 = 3;
    /// Debugging.
    pub const DEBUG: u8 = 4;
    /// Tracing.
    pub const TRACE: u8 = 5;
}

/// A page request of [`HostApi::read`]: this community's stored messages, oldest first (in the
/// order they were stored), matching every filter given.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery {
    /// Only messages of this meta-message type, when `any_meta` is false.
    pub meta: u32,
    /// Messages of every meta-message type (`meta` ignored).
    pub any_meta: bool,
    /// Only messages whose first author is this member (33-byte public key or 20-byte member
    /// id); empty: any author.
    pub member: RVec<u8>,
    /// Lowest global time, inclusive.
    pub global_time_low: u64,
    /// Highest global time, inclusive.
    pub global_time_high: u64,
    /// The cursor: only messages stored after the one this [`ReadPage::next`] named; 0 for the
    /// first page.
    pub after: u64,
    /// Most messages in the page; the host lowers it to its own bound (`plugin_read_page`).
    pub limit: u32,
}

/// One page of [`HostApi::read`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ReadPage {
    /// The messages, oldest first (`source` empty).
    pub messages: RVec<RawMessage>,
    /// The cursor of the next page ([`ReadQuery::after`]).
    pub next: u64,
    /// Whether this was the last page.
    pub done: bool,
}

/// Why an instance is retired ([`CommunityApi::retire`]).
pub mod retire {
    /// The host shuts down.
    pub const SHUTDOWN: u8 = 0;
    /// A new instance of the same code replaces it (after a panic, or on request).
    pub const RESTART: u8 = 1;
    /// A new version of the plugin replaces it.
    pub const UPGRADE: u8 = 2;
    /// The community is disabled (it may be enabled again).
    pub const DISABLE: u8 = 3;
    /// The community is left (unloaded).
    pub const LEAVE: u8 = 4;
    /// The community was hard-destroyed by a destroy-community message: no instance of it
    /// will run again (its stored messages are deleted but the destroy and its proof).
    pub const DESTROYED: u8 = 5;
}

/// Why a stored message was hidden ([`RawUndone::reason`]).
pub mod undone {
    /// Its author undid it (undo-own).
    pub const BY_AUTHOR: u8 = 0;
    /// Another member holding `undo` on its meta-message undid it (undo-other).
    pub const BY_OTHER: u8 = 1;
    /// The permission timeline no longer lets its author have created it: a revoke or a
    /// dynamic-settings change reached back over its global time.
    pub const DENIED: u8 = 2;
}

/// A stored message whose visibility changed, for [`CommunityApi::undone`]: it became hidden
/// (undone: no longer synchronised, read or restored), or visible again (redone). A message
/// hidden for two reasons at once is reported once, when it becomes hidden, and once when
/// the last reason ends.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RawUndone {
    /// The message (`source` empty).
    pub message: RawMessage,
    /// `true`: it is hidden now; `false`: it is visible again.
    pub undone: bool,
    /// An [`undone`] code: why it became hidden, or (redone) why it had been.
    pub reason: u8,
    /// For [`undone::BY_AUTHOR`] and [`undone::BY_OTHER`]: the undo's author (33-byte public
    /// key); empty for [`undone::DENIED`].
    pub by_member: RVec<u8>,
    /// For [`undone::BY_AUTHOR`] and [`undone::BY_OTHER`]: the undo's global time; 0 for
    /// [`undone::DENIED`].
    pub by_global_time: u64,
}

/// What a co-signer answers ([`RawCosign::kind`]).
pub mod cosign {
    /// Refuse: no signature-response is sent.
    pub const REFUSE: u8 = 0;
    /// Sign the message as proposed.
    pub const SIGN: u8 = 1;
    /// Sign the message with its payload replaced by [`super::RawCosign::payload`].
    pub const MODIFY: u8 = 2;
    /// Sign the message with [`super::RawCosign::payload`] appended to its payload.
    pub const APPEND: u8 = 3;
}

/// A co-signer's answer to a proposed double-member message ([`CommunityApi::cosign`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RawCosign {
    /// A [`cosign`] code.
    pub kind: u8,
    /// For [`cosign::MODIFY`]: the whole new payload; for [`cosign::APPEND`]: the bytes
    /// appended. Written in the proposed message's conversion. Empty otherwise.
    pub payload: RVec<u8>,
}

/// What became of a double-member message this node proposed ([`RawCosigned::kind`]).
pub mod cosigned {
    /// The co-signer signed it unchanged.
    pub const SIGNED: u8 = 0;
    /// The co-signer signed it with another payload.
    pub const MODIFIED: u8 = 1;
    /// The co-signer signed it with bytes appended to the payload.
    pub const APPENDED: u8 = 2;
    /// No answer came in time (the co-signer refused, or was unreachable).
    pub const TIMEOUT: u8 = 3;
}

/// The co-signer's answer to a double-member message this node proposed
/// ([`CommunityApi::cosigned`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RawCosigned {
    /// A [`cosigned`] code.
    pub kind: u8,
    /// The message as the co-signer signed it (its payload possibly changed); the proposed
    /// one for [`cosigned::TIMEOUT`].
    pub message: RawMessage,
}

/// What the host offers one community instance. Every method only reads shared state or
/// enqueues work and none calls back into the plugin; only [`HostApi::read`] waits (for the
/// store, bounded by the host's call deadline), and only when called on the community's own
/// thread.
#[sabi_trait]
pub trait HostApi: Send + Sync {
    /// The host member's 33-byte public key.
    fn member(&self) -> RVec<u8>;

    /// The community's 20-byte id.
    fn community(&self) -> RVec<u8>;

    /// The community's current global time.
    fn global_time(&self) -> u64;

    /// Verified candidates (walk and stumble) and introduced ones.
    fn candidates(&self) -> RVec<CandidateInfo>;

    /// Creates, signs and sends a message of meta `meta` with `payload` (encoded by the
    /// community's first conversion) to its destination; `candidates` (`ip:port`) are extra
    /// explicit destinations, required for candidate destinations.
    fn send(
        &self,
        meta: RStr<'_>,
        payload: RVec<u8>,
        candidates: RVec<RString>,
    ) -> RResult<(), PluginError>;

    /// Calls [`CommunityApi::timer`] with `token` after `delay_ms` milliseconds.
    fn schedule(&self, delay_ms: u64, token: u64) -> RResult<(), PluginError>;

    /// Logs through the host's tracing subscriber (a plugin's own `tracing` statics are separate).
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, message: RStr<'_>);

    /// One page of this community's stored messages matching `query`, decoded (signatures
    /// checked again). Waits for the store, at most the host's call deadline; refused (an
    /// [`ERROR_HOST`] error) when called off the community's own thread from an async task, and
    /// by a host older than this method.
    fn read(&self, query: &ReadQuery) -> RResult<ReadPage, PluginError> {
        let _ = query;
        RErr(PluginError::new(
            ERROR_HOST,
            "this host cannot read its store for plugins",
        ))
    }

    /// Like [`HostApi::send`], with `payload` written in `conversion` (one of the community's
    /// conversions, chosen by the plugin: the oldest that carries it unchanged, so nodes still
    /// on an older version read it). A host older than this method answers [`ERROR_ABSENT`]:
    /// call `send` with the community's first conversion instead.
    fn send_in(
        &self,
        meta: RStr<'_>,
        conversion: RVec<u8>,
        payload: RVec<u8>,
        candidates: RVec<RString>,
    ) -> RResult<(), PluginError> {
        let _ = (meta, conversion, payload, candidates);
        RErr(PluginError::new(
            ERROR_ABSENT,
            "this host writes every message in the community's first conversion",
        ))
    }

    /// Whether `member` (33-byte public key or 20-byte member id) may create a message of
    /// meta-message `meta` at `global_time`, by this node's permission timeline as it stands
    /// now: always for public resolution; for linear resolution iff it holds `permit` on the
    /// meta then; for dynamic resolution by the policy in force then. A host older than this
    /// method answers [`ERROR_ABSENT`].
    fn may(
        &self,
        meta: RStr<'_>,
        member: RVec<u8>,
        global_time: u64,
    ) -> RResult<bool, PluginError> {
        let _ = (meta, member, global_time);
        RErr(PluginError::new(
            ERROR_ABSENT,
            "this host has no permission timeline",
        ))
    }

    /// Undoes the stored message of `member` (33-byte public key or 20-byte member id) at
    /// `global_time`: an undo-own when `member` is this node's member, else an undo-other
    /// (this member must hold `undo` on the message's meta-message). The message's meta must
    /// be undoable ([`PluginModule::undoable`]). Undoing a message this member undid already
    /// creates nothing. A host older than this method answers [`ERROR_ABSENT`].
    fn undo(&self, member: RVec<u8>, global_time: u64) -> RResult<(), PluginError> {
        let _ = (member, global_time);
        RErr(PluginError::new(
            ERROR_ABSENT,
            "this host cannot undo messages",
        ))
    }

    /// Proposes a double-member message of meta-message `meta` with `payload` written in
    /// `conversion` (empty: the community's first) to `co_signer` (33-byte public key),
    /// reachable at `address` (`ip:port`); `candidates` are extra explicit destinations.
    /// Returns a token: [`CommunityApi::cosigned`] is called with it once the co-signer
    /// answered or the request expired. A host older than this method answers
    /// [`ERROR_ABSENT`].
    fn propose(
        &self,
        meta: RStr<'_>,
        conversion: RVec<u8>,
        payload: RVec<u8>,
        co_signer: RVec<u8>,
        address: RString,
        candidates: RVec<RString>,
    ) -> RResult<u64, PluginError> {
        let _ = (meta, conversion, payload, co_signer, address, candidates);
        RErr(PluginError::new(
            ERROR_ABSENT,
            "this host cannot propose double-member messages for plugins",
        ))
    }
}

/// The host handle a plugin owns.
pub type HostBox = HostApi_TO<'static, RBox<()>>;

/// One running community instance of a plugin. The host calls it from one thread at a time.
#[sabi_trait]
pub trait CommunityApi: Send {
    /// Checks a batch of messages of one meta; returns one verdict per message, in order.
    fn check(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<RVec<RawVerdict>, PluginError>;

    /// Handles a batch of accepted messages of one meta.
    fn handle(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<(), PluginError>;

    /// A timer scheduled through [`HostApi::schedule`] fired.
    fn timer(&mut self, token: u64) -> RResult<(), PluginError>;

    /// Decodes `payload` of meta `meta` and conversion `conversion` to JSON.
    fn payload_to_json(
        &self,
        meta: u32,
        conversion: RSlice<'_, u8>,
        payload: RSlice<'_, u8>,
    ) -> RResult<RString, PluginError>;

    /// Encodes a JSON payload of meta `meta` with the community's first conversion.
    fn payload_from_json(&self, meta: u32, json: RStr<'_>) -> RResult<RVec<u8>, PluginError>;

    /// The plugin's own status as a JSON document (shown by the control API).
    #[sabi(last_prefix_field)]
    fn status(&self) -> RResult<RString, PluginError>;

    /// Whether this node's member co-signs `message`, a double-member message another member
    /// proposes with this member as second author. Absent in a plugin: refused.
    fn allow_signature(&mut self, message: &RawMessage) -> RResult<bool, PluginError> {
        let _ = message;
        ROk(false)
    }

    /// Lifecycle, step *restore*: one page of the community's stored history, given to a new
    /// instance (first start, restart, upgrade) after `create` and before any live call
    /// (check, handle, timer). Pages come oldest first, in the order the messages were stored,
    /// possibly of several metas; every stored message comes exactly once. Absent in a plugin
    /// (built before this method): the instance gets no history.
    fn restore(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<(), PluginError> {
        let _ = batch;
        ROk(())
    }

    /// Lifecycle, step *live*: the history is restored; live traffic follows. Called once per
    /// instance, after the last [`CommunityApi::restore`]. Absent in a plugin: nothing.
    fn live(&mut self) -> RResult<(), PluginError> {
        ROk(())
    }

    /// Lifecycle, last step: the instance is about to be dropped for the [`retire`] reason
    /// `reason`. Whatever it keeps that is not in the store is lost after this call (its state
    /// built from messages comes back through restore). Not called after a panic (the instance
    /// is gone) or while it is stuck in another call. Absent in a plugin: nothing.
    fn retire(&mut self, reason: u8) -> RResult<(), PluginError> {
        let _ = reason;
        ROk(())
    }

    /// Encodes a JSON payload of meta `meta` in the conversion the plugin chooses (the oldest
    /// that carries it unchanged), and names it. Absent in a plugin (built before this method):
    /// [`ERROR_ABSENT`], and the host calls [`CommunityApi::payload_from_json`] (the first
    /// conversion) instead.
    fn payload_from_json_in(
        &self,
        meta: u32,
        json: RStr<'_>,
    ) -> RResult<EncodedPayload, PluginError> {
        let _ = (meta, json);
        RErr(PluginError::new(
            ERROR_ABSENT,
            "this plugin encodes every payload in its first conversion",
        ))
    }

    /// Stored messages became hidden (undone) or visible again (redone), in the order it
    /// happened ([`RawUndone`]). Absent in a plugin: nothing (the plugin keeps what it built
    /// from them until its next restore, which skips hidden messages).
    fn undone(&mut self, batch: RSlice<'_, RawUndone>) -> RResult<(), PluginError> {
        let _ = batch;
        ROk(())
    }

    /// Whether and how this node's member co-signs `message`, a double-member message another
    /// member proposes with this member as second author: refuse, sign, or sign a modified or
    /// extended payload ([`RawCosign`]). Absent in a plugin: [`ERROR_ABSENT`], and the host asks
    /// [`CommunityApi::allow_signature`] instead (sign or refuse).
    fn cosign(&mut self, message: &RawMessage) -> RResult<RawCosign, PluginError> {
        let _ = message;
        RErr(PluginError::new(
            ERROR_ABSENT,
            "this plugin answers co-signing through allow_signature",
        ))
    }

    /// The answer to the double-member message proposed with token `token`
    /// ([`HostApi::propose`]): return `true` to add this member's signature and publish
    /// `answer.message` (ignored for [`cosigned::TIMEOUT`]). Absent in a plugin: only an
    /// unchanged message is published.
    fn cosigned(&mut self, token: u64, answer: &RawCosigned) -> RResult<bool, PluginError> {
        let _ = token;
        ROk(answer.kind == cosigned::SIGNED)
    }
}

/// A community instance as the host owns it.
pub type CommunityBox = CommunityApi_TO<'static, RBox<()>>;

/// The root module every plugin exports (with [`crate::export_community!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Must return [`ABI_VERSION`] as the plugin was built with it.
    pub abi_version: extern "C" fn() -> u32,

    /// The community type's definition.
    pub definition: extern "C" fn() -> RResult<CommunityDef, PluginError>,

    /// Creates a community instance that talks to the host through `host`.
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(host: HostBox) -> RResult<CommunityBox, PluginError>,

    /// The ids of the meta-messages whose messages can be undone (undo-own, undo-other).
    /// Appended in 0.2.2: read it with `PluginModuleRef::undoable()`, which answers `None` for
    /// an older plugin (none of its metas is undoable).
    #[sabi(missing_field(option))]
    pub undoable: extern "C" fn() -> RVec<u32>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "dispersy_plugin";
    const NAME: &'static str = "dispersy_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
