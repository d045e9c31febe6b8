// FROZEN FIXTURE: a verbatim copy of `plugin-api/src/abi.rs` of dispersy-plugin-api 0.2.0, as of
// commit f5ba44c0aac04cf5570ae80d29a1e18ac97d980f (the last commit before 037c294 appended the
// 0.2.1 calls; `git show f5ba44c:plugin-api/src/abi.rs`), unchanged below this header on
// purpose. plugins/legacy is built against it to be a plugin that was built against 0.2.0. Do
// not edit, format or "fix" it: a change here makes the fixture something other than 0.2.0.
// (Its doc links to `crate::sdk` and `crate::export_community!` name the 0.2.0 crate's other
// modules, which the fixture leaves out; they are comments only.)

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
use abi_stable::std_types::{RBox, ROk, RResult, RSlice, RStr, RString, RVec};
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

/// What the host offers one community instance. Every method only reads shared state or
/// enqueues work: none blocks, and none calls back into the plugin.
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
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "dispersy_plugin";
    const NAME: &'static str = "dispersy_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
