//! The node: the sans-IO state machine of one Dispersy host, and all its glue.
//!
//! The driver (host/node's tokio runtime, or the simulation) owns a [`Node`] and talks to it
//! only through the methods below, each given the time it is called at. After every call it
//! drains the outputs, in this order: [`Node::poll_transmit`] until `None`, then
//! [`Node::poll_event`] until `None`, then arms a timer for [`Node::poll_timeout`].
//!
//! Commands, what the driver itself wants:
//! - [`Node::join`]: run a plugin's community (or a tracker's bare one), its permission timeline
//!   rebuilt from the stored authorize, revoke and dynamic-settings packets it is given;
//! - [`Node::leave`]: stop running a joined community: no more walks, candidates, waits or
//!   requests of it (its stored messages are the driver's; a later [`Node::join`] resumes it);
//! - [`Node::add_candidate`]: a peer from the configuration, walked to like a tracker;
//! - [`Node::create_message`]: sign a member-authenticated message and have its plugin check it
//!   (ends in [`Event::Created`]);
//! - [`Node::request_signature`]: start a double-member message (ends in [`Event::Created`]).
//! - [`Node::propose`]: start a double-member message for a plugin (its plugin decides on the
//!   answer, [`Event::Cosigned`]; ends in [`Event::Created`]).
//! - [`Node::may`]: whether a member may create a message of a meta at a global time (the
//!   plugin's timeline question).
//! - [`Node::found`]: sign with the community's master key the authorize that gives this
//!   node's member the first permits (published at once).
//! - [`Node::announce_destroyed`]: once a joined community's thread runs, tell the driver again
//!   that it is destroyed (ends in [`Event::Destroyed`]; rebuilt at join from the stored destroy).
//!
//! Inputs, what happened (every one `handle_*`):
//! - [`Node::handle_datagram`]: bytes from a UDP address;
//! - [`Node::handle_decoded`]: the same, decoded and verified by the driver's verifier threads;
//! - [`Node::handle_timeout`]: the time [`Node::poll_timeout`] named has come;
//! - [`Node::handle_store_report`]: what the store did with an [`Event::Messages`] batch;
//! - [`Node::handle_wait`]: a plugin wants a message of such a batch to wait for another;
//! - [`Node::handle_sync_query`]: the rows an [`Event::SyncQuery`] asked for;
//! - [`Node::handle_sync_rows`]: the rows an [`Event::SyncRows`] asked for;
//! - [`Node::handle_packets_read`]: the packets an [`Event::SendPackets`] asked for;
//! - [`Node::handle_answer_read`]: the packets an [`Event::ReadPackets`] asked for;
//! - [`Node::handle_signature_verdict`]: a plugin's answer to an [`Event::SignatureAsked`];
//! - [`Node::handle_created_check`]: a plugin's check of a message we created
//!   ([`Event::CheckCreated`]).
//! - [`Node::handle_cosign_verdict`]: a plugin's answer (refuse, sign, modify, append) to an
//!   [`Event::SignatureAsked`];
//! - [`Node::handle_cosigned`]: a plugin's decision on a co-signer's answer
//!   ([`Event::Cosigned`]).
//!
//! Events, what the driver must do (answers carry the event's [`RequestId`]):
//! - [`Event::Messages`]: check, store and handle verified messages of one meta (answered by
//!   [`Node::handle_store_report`] and [`Node::handle_wait`]); our own (no source) already
//!   passed their check and are only stored and handled; built-in permission messages
//!   (authorize, revoke, dynamic-settings, undo-own, undo-other, destroy-community:
//!   [`crate::meta::builtin::is_handled`]) were judged by the node and are only stored, never
//!   given to the plugin;
//! - [`Event::CheckCreated`]: run the plugin's check on a message we created, before anything
//!   is sent or stored (answered by [`Node::handle_created_check`]);
//! - [`Event::SyncQuery`]: read syncable rows to build a bloom filter;
//! - [`Event::SyncRows`]: read the rows of a requester's range, to answer its filter;
//! - [`Event::SendPackets`]: read the packets of the rows chosen for a requester;
//! - [`Event::ReadPackets`]: read the packets a missing-* request names (for a missing-proof,
//!   the messages whose proof is asked, then the proof records);
//! - [`Event::Prune`]: delete a meta's messages below a global time;
//! - [`Event::SignatureAsked`]: ask a plugin whether it co-signs a message;
//! - [`Event::Created`]: a message we created (or co-signed) is published, or why not;
//! - [`Event::Cosigned`]: the co-signer answered a double-member message we proposed (or it
//!   expired): ask the plugin whether to publish it (answered by [`Node::handle_cosigned`]);
//! - [`Event::Unreadable`]: a peer sent a meta in a conversion the plugin does not read, the
//!   first time for this (community, meta, conversion): tell the operator (nothing to answer).
//! - [`Event::UndoTargets`]: look up the stored messages undos point to (answered by
//!   [`Node::handle_undo_targets`]);
//! - [`Event::Undone`]: mark rows undone or redone by an undo and tell the plugin.
//! - [`Event::Destroyed`]: a destroy-community destroyed (hard) or froze (soft) a community:
//!   delete what it no longer keeps, retire (hard) or restore (soft) its plugin instance.
//!
//! Outputs: [`Node::poll_transmit`] (datagrams to send), [`Node::poll_event`] (the events
//! above), [`Node::poll_timeout`] (when to call [`Node::handle_timeout`]).
//!
//! This file holds the state, the I/O types, dispatch, timers and the output queues. Each
//! concern's reactions are a child file, next to the pure rules of the module of the same name:
//! `walk` (steps, introductions, sessions, punctures; rules in [`crate::walker`]), `collection`
//! (creating, publishing and receiving messages), `member` (the identity exchange), `sync`
//! (bloom-filter sync, and what stored messages change), `missing` (waiting messages and
//! missing-* requests), `signature` (co-signing), `authority` (the permission timeline:
//! waiting for proof, missing-proof, stored records; rules in [`crate::timeline`] and
//! [`crate::authority`]), `destroy` (destroy-community; rules in [`crate::destroy`]). The pure modules never import the node.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

mod authority;
mod collection;
mod destroy;
mod member;
mod missing;
mod signature;
mod sync;
mod undo;
mod walk;

use crate::address::{self, Interface, Votes};
use crate::candidate;
use crate::community::{Community, Definition, DefinitionError, Resume};
use crate::identity::{CommunityId, KeyPair};
use crate::member::Members;
pub use crate::message::{Incoming, Stored};
use crate::relay;
use crate::rng::Rng;
use crate::session::{self, Sessions};
use crate::stats::{DropReason, Stats, Traffic};
use crate::time::Instant;
use crate::wire::{self, CommunityMessage, ConnectionType, DecodeError, MissingIdentity, Packet};
pub use authority::{
    AuthorityCreated, AuthorityError, FoundError, GrantView, HoldingView, MayError, PolicyView,
    RecordView, TimelineView,
};
pub use undo::{UndoCreated, UndoError, UndoFlip};

/// The node's tunables. Defaults are the original's values (DESIGN.md §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest datagram sent or accepted.
    pub max_datagram: usize,
    /// Time between two walk steps of a community.
    pub step_interval: Duration,
    /// Time between two steps while the community knows fewer than `fast_walker_target`
    /// verified candidates, during the first `fast_walker_duration` after joining.
    pub fast_step_interval: Duration,
    /// Verified candidates after which the fast walker slows down.
    pub fast_walker_target: usize,
    /// How long after joining the fast walker may run.
    pub fast_walker_duration: Duration,
    /// How long an introduction-request waits for its response.
    pub request_timeout: Duration,
    /// How often obsolete candidates and expired votes are removed.
    pub cleanup_interval: Duration,
    /// Candidates not heard of for this long are removed at cleanup.
    pub candidate_obsolete_after: Duration,
    /// How long a WAN address vote counts.
    pub vote_lifetime: Duration,
    /// Most WAN votes kept.
    pub max_voters: usize,
    /// Candidate lifetimes and bound.
    pub candidates: candidate::Config,
    /// Session table bounds.
    pub sessions: session::Config,
    /// Member cache bounds.
    pub members: crate::member::Config,
    /// Our network interfaces, to tell LAN from WAN peers (empty: private ranges count as LAN).
    pub interfaces: Vec<Interface>,
    /// Bootstrap addresses.
    pub trackers: Vec<SocketAddr>,
    /// Tracker role: answer introductions for any community, walk nowhere, handle no messages.
    pub tracker: bool,
    /// Most communities kept (a tracker creates one per community id it is asked about).
    pub max_communities: usize,
    /// Most outstanding introduction-requests per community.
    pub max_pending_walks: usize,
    /// Most datagrams queued for the driver.
    pub max_transmits: usize,
    /// Most events queued for the driver.
    pub max_events: usize,
    /// How far beyond our global time (or the neighbours' median) a received persistent message
    /// may be (the original's 10,000).
    pub global_time_margin: u64,
    /// Synchronisation bounds.
    pub sync: crate::sync::Config,
    /// Bounds of messages waiting for others, and of answers to missing-* requests.
    pub missing: crate::missing::Config,
    /// Relay distribution: hop budget, fanout, packets remembered.
    pub relay: relay::Config,
    /// Double-member co-signing bounds.
    pub signature: crate::signature::Config,
    /// Messages we created that wait for their plugin's check ([`Event::CheckCreated`]), or
    /// (numbered ones) for the check of the previous number of their meta, at most.
    pub max_checking: usize,
    /// How long a message we created waits for its plugin's check before it is given up.
    pub check_timeout: Duration,
    /// Kinds (meta, conversion) of unreadable messages remembered per community
    /// ([`crate::stats::Unreadable`]).
    pub max_unreadable: usize,
    /// Undo-own and undo-other records held per community ([`crate::undo::Undos::with_limit`]).
    pub max_undos: usize,
    /// Of those, how many may wait for their target.
    pub max_undos_waiting: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_datagram: wire::DEFAULT_MAX_DATAGRAM,
            step_interval: Duration::from_secs(5),
            fast_step_interval: Duration::from_millis(250),
            fast_walker_target: 15,
            fast_walker_duration: Duration::from_secs(30),
            request_timeout: Duration::from_millis(10_500),
            cleanup_interval: Duration::from_secs(300),
            candidate_obsolete_after: Duration::from_secs(180),
            vote_lifetime: Duration::from_secs(180),
            max_voters: 100,
            candidates: candidate::Config::default(),
            sessions: session::Config::default(),
            members: crate::member::Config::default(),
            interfaces: Vec::new(),
            trackers: Vec::new(),
            tracker: false,
            max_communities: 10_000,
            max_pending_walks: 64,
            max_transmits: 65_536,
            max_events: 65_536,
            global_time_margin: 10_000,
            sync: crate::sync::Config::default(),
            missing: crate::missing::Config::default(),
            relay: relay::Config::default(),
            signature: crate::signature::Config::default(),
            max_checking: 4_096,
            check_timeout: Duration::from_secs(5),
            max_unreadable: 64,
            max_undos: crate::undo::DEFAULT_MAX_RECORDS,
            max_undos_waiting: crate::undo::DEFAULT_MAX_WAITING,
        }
    }
}

/// A datagram for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// What the node tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first message of `meta` in `conversion` that the community's plugin cannot read
    /// arrived (a peer runs a newer version of the plugin); it was dropped and counted, like
    /// every later one, in [`crate::stats::CommunityStats::unreadable`]. Emitted once per
    /// (community, meta, conversion) while the table has room.
    Unreadable {
        /// The community.
        community: CommunityId,
        /// The meta-message type.
        meta: u32,
        /// The conversion identifier.
        conversion: Vec<u8>,
    },
    /// Messages of one community and meta, in arrival order, for check, storage and handling.
    /// The driver reports what became of them with [`Node::handle_store_report`]. A message
    /// with no source is our own: its plugin passed it already ([`Event::CheckCreated`]), so it
    /// is stored and handled without a second check.
    Messages {
        /// The community.
        community: CommunityId,
        /// The meta-message type.
        meta: u32,
        /// The messages.
        messages: Vec<Incoming>,
    },
    /// Read the syncable rows `query` describes (priority above 32, not undone) and answer with
    /// [`Node::handle_sync_query`].
    SyncQuery {
        /// The community.
        community: CommunityId,
        /// What to read.
        query: crate::sync::Query,
    },
    /// Read the rows of `range` (global time, hash, size) of each of `metas` in turn (the
    /// synchronised metas, highest priority first), each in its order and from its lowest still
    /// active global time, at most `limit` in all, and answer with [`Node::handle_sync_rows`].
    SyncRows {
        /// The community.
        community: CommunityId,
        /// Identifies the request.
        request: RequestId,
        /// The range.
        range: crate::sync::Range,
        /// How many rows at most.
        limit: usize,
        /// (meta, order, lowest active global time), highest priority first.
        metas: Vec<(u32, crate::meta::SyncOrder, u64)>,
    },
    /// Retroactive re-evaluation (see `node::authority`): a revoke, a grant or a
    /// dynamic-settings change reached back over stored messages of `meta`. For each
    /// [`Reevaluation`](crate::timeline::Reevaluation), the driver sets the denied bit of
    /// the authors' stored messages in every denied span and clears it in every allowed span
    /// (one range update each, never a core call per message), then tells the plugin of the
    /// messages whose visibility flipped. For a double-member meta the authors are pairs of
    /// signers ([`Authors::Pair`](crate::timeline::Authors::Pair)), matched in either order. Applied in the order emitted, after the messages
    /// emitted before it; never dropped for a full event queue.
    Reevaluate {
        /// The community.
        community: CommunityId,
        /// The plugin meta-message type.
        meta: u32,
        /// Whose messages, over which spans.
        spans: Vec<crate::timeline::Reevaluation>,
    },
    /// Remove the stored messages of `meta` below global time `below` (global-time pruning).
    Prune {
        /// The community.
        community: CommunityId,
        /// The meta-message type.
        meta: u32,
        /// Remove every message with a lower global time.
        below: u64,
    },
    /// Read the stored packets `lookup` names, in its order, stopping after `max_bytes`, and hand
    /// them to [`Node::handle_answer_read`] (answers to missing-* requests).
    ReadPackets {
        /// Identifies the request.
        request: RequestId,
        /// The community.
        community: CommunityId,
        /// What to read.
        lookup: crate::missing::Lookup,
        /// Bytes of packets at most (one more packet may cross it).
        max_bytes: usize,
    },
    /// A signature-request names us as second author of `message`: ask the plugin and answer
    /// with [`Node::handle_signature_verdict`].
    SignatureAsked {
        /// The community.
        community: CommunityId,
        /// Identifies the question.
        ask: RequestId,
        /// The message to co-sign.
        message: CommunityMessage,
    },
    /// A message we created (signed, nothing sent or stored yet) for its plugin's check. The
    /// driver runs the same check as for received messages and answers with
    /// [`Node::handle_created_check`]: only a message the check accepts is published.
    CheckCreated {
        /// The community.
        community: CommunityId,
        /// Identifies the message.
        request: RequestId,
        /// The message (no source).
        message: Incoming,
    },
    /// A message started with [`Node::create_message`] or [`Node::request_signature`] is
    /// published, or why not.
    Created {
        /// The community.
        community: CommunityId,
        /// The request.
        request: RequestId,
        /// What became of it.
        result: Result<Created, CreateError>,
    },
    /// The co-signer answered the double-member message `request` we proposed: ask the
    /// community's plugin whether to publish `message` (as the co-signer signed it) and answer
    /// with [`Node::handle_cosigned`]. For [`crate::signature::Answer::Timeout`] (only for
    /// [`Node::propose`]) `message` is the proposed one and nothing is answered. See
    /// [`crate::signature`] for when it is emitted.
    Cosigned {
        /// The community.
        community: CommunityId,
        /// The request ([`Node::request_signature`], [`Node::propose`]).
        request: RequestId,
        /// What the co-signer did.
        answer: crate::signature::Answer,
        /// The message as the co-signer signed it.
        message: CommunityMessage,
    },
    /// Read the packets of these rows and hand them to [`Node::handle_packets_read`].
    SendPackets {
        /// Identifies the request.
        request: RequestId,
        /// The rows, in sending order.
        rows: Vec<u64>,
    },
    /// Look up the stored messages that undos of `community` point to (author and global
    /// time) and answer with [`Node::handle_undo_targets`]: each target with its address
    /// echoed and the stored message's meta, or `None` when it is not stored.
    UndoTargets {
        /// The community.
        community: CommunityId,
        /// The targets, each with the address its undo came from (`None`: ours, or a rebuild).
        targets: Vec<(crate::undo::Target, Option<SocketAddr>)>,
    },
    /// Stored messages of `community` whose undo state changed: mark each row undone by the
    /// named undo (reason bit 1 of its `undone`, `undone_by` the undo's row) or no longer
    /// undone by any (bit 1 and `undone_by` cleared), and tell the plugin of the rows whose
    /// state changed (`CommunityApi::undone`). Nothing to answer.
    Undone {
        /// The community.
        community: CommunityId,
        /// The flips, in target order.
        flips: Vec<UndoFlip>,
    },
    /// A destroy-community message destroyed (hard) or froze (soft) `community`
    /// ([`crate::destroy`]); emitted when a stored destroy changes its state, and again on
    /// [`Node::announce_destroyed`]. After the events before it, the driver deletes: for hard,
    /// every stored message of the community but those `keep` names (by first author and global
    /// time: the destroy and its proof chain), and retires its plugin instance for good
    /// (`retire` code `DESTROYED`); for soft, every stored message above `global_time`, and
    /// restarts the instance from the frozen history when any was deleted. Deleting again is
    /// harmless. Nothing to answer.
    Destroyed {
        /// The community.
        community: CommunityId,
        /// Hard or soft.
        degree: crate::authority::Degree,
        /// The destroy's global time (soft: the freeze).
        global_time: u64,
        /// Hard: the stored messages to keep, by (first author, global time); soft: empty.
        keep: Vec<(crate::identity::MemberId, u64)>,
    },
}

/// Names one request the node made of its driver ([`Event::SyncRows`], [`Event::ReadPackets`],
/// [`Event::SendPackets`], [`Event::SignatureAsked`], [`Event::CheckCreated`]) or one created
/// message in flight ([`Node::create_message`], [`Node::request_signature`],
/// [`Event::Created`]); the driver hands it back with the answer.
/// Ids of one node are distinct among the requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u32);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a community could not be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The definition is invalid.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// Already joined with a definition.
    #[error("community {0} is already joined")]
    AlreadyJoined(CommunityId),
    /// The community table is full.
    #[error("community limit ({0}) reached")]
    Full(usize),
}

/// Why a community could not be left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaveError {
    /// Not joined (never, or left already).
    #[error("community {0} is not joined")]
    NotJoined(CommunityId),
}

/// Why a joined community's definition could not be replaced ([`Node::redefine`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedefineError {
    /// The new definition is invalid.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// The new definition is of another community (another master key).
    #[error("the new definition is of community {new}, not {joined}")]
    OtherCommunity {
        /// The community joined.
        joined: CommunityId,
        /// The new definition's community.
        new: CommunityId,
    },
    /// Not joined (never, or left already).
    #[error("community {0} is not joined")]
    NotJoined(CommunityId),
}

/// Why a message could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// Not joined.
    #[error("unknown community {0}")]
    UnknownCommunity(CommunityId),
    /// No such meta-message.
    #[error("community has no meta-message {0:?}")]
    UnknownMeta(String),
    /// The meta has another authentication: member-authenticated metas are created with
    /// [`Node::create_message`], double-member ones with [`Node::request_signature`].
    #[error("meta-message {0:?} has another authentication (double-member metas need a co-signer)")]
    Authentication(String),
    /// Too many signature-requests in flight.
    #[error("too many co-signed messages in flight")]
    Busy,
    /// Too many created messages wait for their plugin's check.
    #[error("too many created messages wait for their plugin's check (at most {0})")]
    Checking(usize),
    /// The plugin's check did not pass it: nothing was sent or stored.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The plugin did not check it in time: nothing was sent or stored.
    #[error("the community's plugin did not check the message within {0} ms")]
    CheckTimeout(u64),
    /// The co-signer is this node's own member.
    #[error("the co-signer must be another member")]
    CoSigner,
    /// The co-signer did not sign.
    #[error(transparent)]
    Signature(#[from] crate::signature::SignError),
    /// Candidate destination without candidates.
    #[error("meta-message {0:?} has a candidate destination: name at least one candidate")]
    NoDestination(String),
    /// The message does not fit a datagram.
    #[error("message of {len} bytes does not fit the {max}-byte datagram budget")]
    TooLarge {
        /// Packet length.
        len: usize,
        /// Budget.
        max: usize,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] wire::SignError),
    /// The payload is written in a conversion the community does not list.
    #[error("conversion {0} is not one of the community's")]
    UnknownConversion(String),
    /// The meta's resolution is Linear (or Dynamic and Linear now) and this node's member holds
    /// no permit for it in the community's permission timeline: nothing was signed or sent.
    #[error("this member holds no permit for meta-message {0:?}")]
    NotPermitted(String),
    /// The community is destroyed (hard) or frozen (soft) by a destroy-community message: it
    /// creates nothing (a soft-destroyed one only a hard destroy).
    #[error("community {0} is destroyed: it creates no new message")]
    Destroyed(CommunityId),
    /// The message was signed and published but the store failed to keep it (a full disk,
    /// say): it is not acknowledged. Set by the driver, never by the node.
    #[error("the message was not stored: {0}")]
    NotStored(String),
}

/// Why the plugin's check did not pass a message we created ([`Event::CheckCreated`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The check dropped it, for the plugin's reason.
    #[error("the community's check dropped the message: {0}")]
    Dropped(String),
    /// The check would delay it or make it wait for another message; a message created here is
    /// checked once, when it is created.
    #[error("the community's check would make the message wait ({0}); a new message cannot wait")]
    Deferred(String),
    /// The plugin could not check it (its error, a full queue, no plugin).
    #[error("the community's plugin could not check the message: {0}")]
    Unchecked(String),
}

impl Refusal {
    /// Whether the plugin itself judged the message (dropped or deferred it), as opposed to
    /// failing to check it.
    pub fn is_verdict(&self) -> bool {
        matches!(self, Refusal::Dropped(_) | Refusal::Deferred(_))
    }
}

/// A message this node created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its global time.
    pub global_time: u64,
    /// Whether its distribution stores it (the driver acknowledges it once stored).
    pub persistent: bool,
    /// Its sequence number, if its meta numbers messages.
    pub sequence_number: Option<u32>,
    /// How many candidates it was sent to.
    pub sent_to: usize,
}

/// The state machine of one host. See the module documentation.
///
/// Its fields are private to `node` and its children (the files of this folder); only
/// `sessions` is visible to the crate, for the simulation's tests.
#[derive(Debug)]
pub struct Node {
    config: Config,
    key: KeyPair,
    rng: Rng,
    /// Our LAN address (the bound socket address as the driver knows it).
    lan: SocketAddr,
    votes: Votes,
    /// Established sessions and handshakes (read by the simulation's tests).
    pub(crate) sessions: Sessions,
    members: Members,
    communities: HashMap<CommunityId, Community>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    next_cleanup: Instant,
    /// Sync requests being answered, by request id.
    responses: HashMap<RequestId, crate::sync::PendingResponse>,
    next_response: u32,
    /// Received messages waiting for others.
    delays: crate::missing::Delays,
    /// Missing-* requests being answered, by request id.
    answers: HashMap<RequestId, crate::missing::Answer>,
    /// Relayed packets handled lately.
    relayed: relay::Seen,
    /// Our signature-requests waiting for their response.
    signing: HashMap<RequestId, crate::signature::Pending>,
    /// Signature-requests to us waiting for our plugin.
    asked: HashMap<RequestId, crate::signature::Asked>,
    /// Messages we created, signed and waiting for their plugin's check.
    checking: HashMap<RequestId, collection::Checking>,
    /// Numbered messages we created, waiting for the check of the previous number of their
    /// meta (in creation order).
    queued: VecDeque<collection::Queued>,
}

impl Node {
    /// A node with identity `key`, bound at `local` (its LAN address), whose random choices all
    /// derive from `seed`.
    pub fn new(config: Config, key: KeyPair, local: SocketAddr, seed: u64, now: Instant) -> Self {
        Node {
            next_cleanup: now + config.cleanup_interval,
            votes: Votes::new(config.max_voters, config.vote_lifetime),
            sessions: Sessions::new(config.sessions.clone()),
            members: Members::new(config.members.clone(), key.public().clone()),
            config,
            key,
            rng: Rng::new(seed),
            lan: local,
            communities: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            responses: HashMap::new(),
            next_response: 1,
            delays: crate::missing::Delays::default(),
            answers: HashMap::new(),
            relayed: relay::Seen::default(),
            signing: HashMap::new(),
            asked: HashMap::new(),
            checking: HashMap::new(),
            queued: VecDeque::new(),
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's member key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// Our LAN address.
    pub fn lan_address(&self) -> SocketAddr {
        self.lan
    }

    /// Our WAN address as peers outside our LAN see it (by vote), else our LAN address.
    pub fn wan_address(&self) -> SocketAddr {
        self.votes.wan().unwrap_or(self.lan)
    }

    /// Our connection type, from the WAN votes.
    pub fn connection_type(&self) -> ConnectionType {
        self.votes.connection_type(self.lan)
    }

    /// Node-wide counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of established sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The community `id`, if known.
    pub fn community(&self, id: &CommunityId) -> Option<&Community> {
        self.communities.get(id)
    }

    /// All known communities.
    pub fn communities(&self) -> impl Iterator<Item = &Community> {
        self.communities.values()
    }

    /// Joins the community a plugin defines; walking starts at the next timeout. Its permission
    /// timeline is rebuilt from the stored permission packets of `resume` (in any order; those
    /// that do not decode are skipped), so a restarted node enforces the same permissions at
    /// once; a valid destroy-community among them puts it back in its destroyed state
    /// ([`crate::destroy`], rule 5; no event: see [`Node::announce_destroyed`]).
    pub fn join(
        &mut self,
        now: Instant,
        definition: Definition,
        mut resume: Resume,
    ) -> Result<CommunityId, JoinError> {
        definition.validate()?;
        let id = definition.id();
        if let Some(existing) = self.communities.get_mut(&id) {
            if existing.definition.is_some() {
                return Err(JoinError::AlreadyJoined(id));
            }
            existing.definition = Some(definition);
            existing.observe_global_time(resume.global_time);
            existing.fast_until = now + self.config.fast_walker_duration;
            self.rebuild_timeline(id, &resume.authority);
            self.restore_destroyed(now, id, &resume.authority);
            return Ok(id);
        }
        if self.communities.len() >= self.config.max_communities {
            return Err(JoinError::Full(self.config.max_communities));
        }
        let authority = std::mem::take(&mut resume.authority);
        let sync = crate::sync::State::new(&self.config.sync, resume.stored, self.filter_bytes(id));
        let community = Community::new(
            id,
            Some(definition),
            resume,
            self.config.candidates.clone(),
            now,
            now + self.config.fast_walker_duration,
            sync,
        );
        self.communities.insert(id, community);
        self.rebuild_timeline(id, &authority);
        self.restore_destroyed(now, id, &authority);
        Ok(id)
    }

    /// Replaces the definition of joined community `id` (a live upgrade of its plugin) without
    /// leaving it: its candidates, sync state, global time, delayed messages and pending
    /// requests stay; messages decoded from now on use the new metas and conversions. The new
    /// definition must be valid and of the same community (same master key); the caller checks
    /// that the metas the stored messages use stay compatible.
    pub fn redefine(
        &mut self,
        id: CommunityId,
        definition: Definition,
    ) -> Result<(), RedefineError> {
        definition.validate()?;
        let new = definition.id();
        if new != id {
            return Err(RedefineError::OtherCommunity { joined: id, new });
        }
        match self.communities.get_mut(&id) {
            Some(community) if community.definition.is_some() => {
                community.timeline = community.timeline.rebuilt(definition.resolutions());
                community.definition = Some(definition);
                Ok(())
            }
            _ => Err(RedefineError::NotJoined(id)),
        }
    }

    /// Leaves joined community `id`: it is forgotten with its candidates, pending walks and
    /// sync state (no more walks or sync requests, and its datagrams are dropped as for any
    /// unknown community), the messages of it waiting for others are dropped, and the
    /// answers and requests of it in flight are forgotten. Messages of it being created end
    /// now in [`Event::Created`] with [`CreateError::UnknownCommunity`]. The store is the
    /// driver's: nothing stored is deleted, and a later [`Node::join`] (with the stored
    /// [`Resume`]) runs it again. A tracker's bare community cannot be left (it is not joined).
    pub fn leave(&mut self, id: CommunityId) -> Result<(), LeaveError> {
        if self
            .communities
            .get(&id)
            .is_none_or(|c| c.definition.is_none())
        {
            return Err(LeaveError::NotJoined(id));
        }
        self.communities.remove(&id);
        self.delays.entries.retain(|d| d.community != id);
        self.responses.retain(|_, r| r.community != id);
        self.answers.retain(|_, a| a.community != id);
        let mut ended: Vec<RequestId> = self
            .signing
            .iter()
            .filter(|(_, p)| p.community == id)
            .map(|(request, _)| *request)
            .collect();
        self.signing.retain(|_, p| p.community != id);
        ended.extend(self.forget_created(id));
        ended.sort_unstable();
        for request in ended {
            self.push_event(Event::Created {
                community: id,
                request,
                result: Err(CreateError::UnknownCommunity(id)),
            });
        }
        Ok(())
    }

    /// Handles one received datagram: decode, verify, then act. Anything wrong is dropped and
    /// counted in [`Node::stats`]; a datagram naming an unknown member waits for its identity.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        self.process(now, from, bytes);
    }

    /// Handles the result of [`wire::decode`] run elsewhere without keys (the driver decodes
    /// and verifies on other threads; the [`Packet`] type guarantees both happened). A datagram
    /// that failed only for an unknown member is decoded again here with the keys this node
    /// knows, which needs its `bytes`.
    pub fn handle_decoded(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        decoded: Result<Packet, DecodeError>,
    ) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        match decoded {
            Err(DecodeError::UnknownMember(_)) => self.process(now, from, bytes),
            decoded => self.dispatch(now, from, bytes, decoded),
        }
    }

    fn process(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let decoded = wire::decode(bytes, self.config.max_datagram, &self.members);
        self.dispatch(now, from, bytes, decoded);
    }

    fn dispatch(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        decoded: Result<Packet, DecodeError>,
    ) {
        if !address::is_usable(from) || from == self.lan || from == self.wan_address() {
            self.stats.dropped.bump(DropReason::InvalidSource);
            return;
        }
        match decoded {
            Ok(packet) => self.handle_packet(now, from, packet),
            Err(DecodeError::UnknownMember(member)) => {
                let random = self.rng.nonzero_u32();
                match self.members.wait_for(now, from, bytes, member, random) {
                    Ok(Some(random)) => {
                        // Small, and smaller than the datagram that caused it: safe to send to an
                        // address that has not proven itself yet.
                        let community = wire::peek(bytes)
                            .and_then(|(_, community)| community)
                            .unwrap_or(CommunityId([0; 20]));
                        let request = MissingIdentity {
                            community,
                            session: self.sessions.id(&from).unwrap_or(0),
                            random,
                            member,
                        };
                        self.send(from, Packet::MissingIdentity(request));
                        self.stats.packets.bump(Traffic::IdentityRequested);
                    }
                    Ok(None) => self.stats.packets.bump(Traffic::IdentityAwaited),
                    Err(crate::member::Full) => {
                        self.stats.dropped.bump(DropReason::IdentityQueueFull)
                    }
                }
            }
            Err(error) => self.stats.dropped.bump(error.reason()),
        }
    }

    fn handle_packet(&mut self, now: Instant, from: SocketAddr, packet: Packet) {
        let traffic = packet.traffic();
        let accepted = match packet {
            Packet::IntroductionRequest(m) => self.on_introduction_request(now, from, m),
            Packet::IntroductionResponse(m) => self.on_introduction_response(now, from, m),
            Packet::SessionRequest(m) => self.on_session_request(now, from, m),
            Packet::SessionResponse(m) => self.on_session_response(now, from, m),
            Packet::PunctureRequest(m) => self.on_puncture_request(now, from, m),
            Packet::Puncture(m) => self.on_puncture(now, from, m),
            Packet::MissingIdentity(m) => self.on_missing_identity(now, from, m),
            Packet::Identity(m) => self.on_identity(now, from, m),
            Packet::Collection(c) => {
                self.on_collection(now, from, c.session, c.messages, c.relay_hops)
            }
            Packet::MissingSequence(m) => self.on_missing_sequence(now, from, m),
            Packet::MissingMessage(m) => self.on_missing_message(now, from, m),
            Packet::MissingLastMessage(m) => self.on_missing_last_message(now, from, m),
            Packet::SignatureRequest(m) => self.on_signature_request(now, from, m),
            Packet::SignatureResponse(m) => self.on_signature_response(now, from, m),
            Packet::MissingProof(m) => self.on_missing_proof(now, from, m),
        };
        match accepted {
            Ok(()) => self.stats.packets.bump(traffic),
            Err(reason) => self.stats.dropped.bump(reason),
        }
    }

    /// Adds `address` as an introduced candidate of `community` (a peer given in configuration):
    /// the walker visits it like any introduced peer, and forgets it if it never answers.
    pub fn add_candidate(
        &mut self,
        now: Instant,
        community: CommunityId,
        address: SocketAddr,
    ) -> Result<(), candidate::AddError> {
        if !address::is_usable(address) || address == self.lan {
            return Ok(());
        }
        if let Some(c) = self.communities.get_mut(&community) {
            c.candidates.entry(address, now)?.last_intro = Some(now);
        }
        Ok(())
    }

    /// Runs what is due at `now`: walk steps, follow-up sync rounds, request timeouts, identity
    /// timeouts, cleanup.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cleanup = now >= self.next_cleanup;
        if cleanup {
            self.next_cleanup = now + self.config.cleanup_interval;
            self.sessions.expire(now);
            if self.votes.expire(now) {
                self.forget_own_addresses();
            }
        }
        let expired = self.members.expire(now);
        if expired > 0 {
            self.stats
                .dropped
                .add(DropReason::IdentityTimeout, expired as u64);
        }
        self.responses.retain(|_, r| r.deadline > now);
        self.expire_delays(now);
        self.expire_signatures(now);
        self.expire_checks(now);
        let mut ids: Vec<CommunityId> = self.communities.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.expire_walks(now, id);
            self.expire_sync_query(now, id);
            self.follow_up(now, id);
            if cleanup {
                self.cleanup(now, id);
            }
            let due = self
                .communities
                .get(&id)
                .is_some_and(|c| c.definition.is_some() && c.next_step <= now);
            if due && !self.config.tracker {
                self.take_step(now, id);
            }
        }
    }

    /// The next time [`Node::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = Some(self.next_cleanup);
        next = next.min(self.members.next_deadline()).or(next);
        for community in self.communities.values() {
            if community.definition.is_some() && !self.config.tracker {
                next = next.min(Some(community.next_step));
            }
            for walk in community.pending_walks.values() {
                next = next.min(Some(walk.deadline));
            }
            if let Some(pending) = &community.sync.pending {
                next = next.min(Some(pending.deadline));
            }
            if let Some(due) = self.follow_up_due(community) {
                next = next.min(Some(due));
            }
        }
        for response in self.responses.values() {
            next = next.min(Some(response.deadline));
        }
        for answer in self.answers.values() {
            next = next.min(Some(answer.deadline));
        }
        // A co-signature not given in time is reported when it expires, not at the next walk.
        for pending in self.signing.values() {
            next = next.min(Some(pending.deadline));
        }
        // So is a created message its plugin does not check in time.
        if let Some(due) = self.next_check_deadline() {
            next = next.min(Some(due));
        }
        next = next
            .min(self.delays.next_deadline(&self.config.missing))
            .or(next);
        next
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The driver stored (or did not store) the messages of one [`Event::Messages`] of
    /// `community`, and filed what became of each in `report` ([`crate::store::Report::file`]).
    /// Messages behind a sequence gap wait and the missing numbers are requested; our winning
    /// packets go back to the senders of lost conflicts; then the stored messages are learnt
    /// (sync state, follow-up rounds, messages waiting for them resume), in that order, so that a
    /// number stored later in the same batch ends a wait at once.
    pub fn handle_store_report(
        &mut self,
        now: Instant,
        community: CommunityId,
        report: crate::store::Report,
    ) {
        let report = self.admitted(community, report);
        for (incoming, low, high) in report.gaps {
            self.handle_sequence_gap(now, community, incoming, low, high);
        }
        for (to, packet) in report.conflicts {
            self.handle_conflict(now, to, &packet);
        }
        if !report.authority.is_empty() {
            self.learn_records(community, &report.authority);
            self.learn_undos(community, &report.authority, &report.stored);
        }
        if !report.stored.is_empty() {
            self.undo_targets_stored(community, &report.stored);
        }
        if !report.stored.is_empty() {
            self.handle_stored(now, community, &report.stored);
        }
        if !report.authority.is_empty() {
            self.learn_destroys(now, community, &report.authority, &report.stored);
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Our WAN address changed: candidates at our own addresses are ourselves; forget them.
    fn forget_own_addresses(&mut self) {
        let own = [self.lan, self.wan_address()];
        for community in self.communities.values_mut() {
            community.candidates.remove(&own);
        }
    }

    fn next_request_id(&mut self) -> RequestId {
        let id = self.next_response;
        self.next_response = self.next_response.wrapping_add(1).max(1);
        RequestId(id)
    }

    fn send(&mut self, destination: SocketAddr, packet: Packet) {
        let bytes = packet.encode(&self.key);
        self.send_bytes(destination, bytes);
    }

    /// Sends stored `packets` (verbatim) to `to` as collections naming `session`; returns how
    /// many went. Each packet fits a datagram alone (it was received or created within the
    /// budget); one that does not is dropped and counted.
    fn send_collections(&mut self, to: SocketAddr, session: u32, packets: &[&[u8]]) -> usize {
        let mut sent = 0;
        for chunk in packets.chunks(64) {
            match wire::encode_collections(session, chunk, self.config.max_datagram) {
                Ok(datagrams) => {
                    for datagram in datagrams {
                        self.send_bytes(to, datagram);
                    }
                    sent += chunk.len();
                }
                Err(_) => self.stats.dropped.bump(DropReason::OversizedStoredPacket),
            }
        }
        sent
    }

    fn send_bytes(&mut self, destination: SocketAddr, bytes: Vec<u8>) {
        if self.transmits.len() >= self.config.max_transmits {
            self.stats.dropped.bump(DropReason::TransmitQueueFull);
            return;
        }
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.transmits.push_back(Transmit { destination, bytes });
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.max_events {
            self.stats.dropped.bump(DropReason::EventQueueFull);
            return;
        }
        self.events.push_back(event);
    }
}
