//! The requests other parts of the host send to the protocol task, the only owner of protocol
//! state: the API, the registry, community threads and the sync-read task all speak to it
//! through [`Command`]s, and some wait for an answer on a oneshot channel carried inside.

use std::net::SocketAddr;

use dispersy_core::identity::CommunityId;
use dispersy_core::node::{CreateError, Created};
use tokio::sync::oneshot;

use crate::api::{CandidateView, CommunityInfo, NodeInfo};

/// A request to the protocol task.
pub enum Command {
    /// Create a message (from the API or a plugin): its plugin checks it, then it is sent (and
    /// stored and handled); the reply comes once it is published or refused.
    Create {
        /// The community.
        community: CommunityId,
        /// Meta-message name.
        meta: String,
        /// The conversion the plugin wrote `payload` in; `None`: the community's first.
        conversion: Option<Box<[u8]>>,
        /// Encoded payload.
        payload: Vec<u8>,
        /// Explicit destinations.
        candidates: Vec<SocketAddr>,
        /// For double-member metas: the second author and its address.
        co_signer: Option<(dispersy_core::identity::PublicKey, SocketAddr)>,
        /// Where to answer, if anyone waits.
        reply: Option<oneshot::Sender<Result<Created, CreateError>>>,
    },
    /// Node facts for the API.
    Node {
        /// The answer.
        reply: oneshot::Sender<NodeInfo>,
    },
    /// Community facts for the API.
    Communities {
        /// The answer.
        reply: oneshot::Sender<Vec<CommunityInfo>>,
    },
    /// Join a community a plugin defines.
    Join {
        /// The plugin's definition.
        definition: Box<dispersy_core::community::Definition>,
        /// State from storage.
        resume: dispersy_core::community::Resume,
        /// Peers to add as candidates.
        peers: Vec<SocketAddr>,
        /// The answer.
        reply: oneshot::Sender<Result<CommunityId, dispersy_core::node::JoinError>>,
    },
    /// A joined community's thread runs and takes its messages: the protocol task founds the
    /// community if its founder key is the community's master key
    /// ([`dispersy_core::node::Node::found`]). Nothing is answered.
    Running {
        /// The community.
        community: CommunityId,
    },
    /// Leave a joined community ([`dispersy_core::node::Node::leave`]).
    Leave {
        /// The community.
        community: CommunityId,
        /// The answer.
        reply: oneshot::Sender<Result<(), dispersy_core::node::LeaveError>>,
    },
    /// Replace a joined community's definition: a live upgrade of its plugin
    /// ([`dispersy_core::node::Node::redefine`]).
    Redefine {
        /// The community.
        community: CommunityId,
        /// The new plugin's definition.
        definition: Box<dispersy_core::community::Definition>,
        /// The answer.
        reply: oneshot::Sender<Result<(), dispersy_core::node::RedefineError>>,
    },
    /// The store read the rows of a sync query.
    SyncQueried {
        /// The community.
        community: CommunityId,
        /// Rows from the pivot up (or the oldest).
        right: Vec<dispersy_core::sync::Row>,
        /// Rows from the pivot down.
        left: Vec<dispersy_core::sync::Row>,
    },
    /// The store read the rows of a requested range.
    SyncRowsRead {
        /// The request.
        request: dispersy_core::node::RequestId,
        /// The rows.
        rows: Vec<dispersy_core::sync::Row>,
    },
    /// The store read the packets to send.
    PacketsRead {
        /// The request.
        request: dispersy_core::node::RequestId,
        /// The packets.
        packets: Vec<Vec<u8>>,
    },
    /// A community thread's insert of this node's own messages at `global_times` committed
    /// (`error` `None`) or failed: the control API's requests waiting for them are answered
    /// (a message is acknowledged only once stored).
    Durable {
        /// The community.
        community: CommunityId,
        /// The global times of our messages in the insert.
        global_times: Vec<u64>,
        /// Why the insert failed, if it did.
        error: Option<String>,
    },
    /// A community thread stored a batch of messages and filed what became of each.
    StoreReport {
        /// The community.
        community: CommunityId,
        /// What the store did ([`dispersy_core::store::Report`]).
        report: Box<dispersy_core::store::Report>,
    },
    /// A plugin decided whether and how to co-sign
    /// ([`Event::SignatureAsked`](dispersy_core::node::Event::SignatureAsked)).
    SignatureVerdict {
        /// The question.
        ask: dispersy_core::node::RequestId,
        /// Refuse, sign, or sign a modified or extended payload.
        verdict: dispersy_core::signature::Cosign,
    },
    /// A community thread ran its plugin's check on a message this node created
    /// ([`Event::CheckCreated`](dispersy_core::node::Event::CheckCreated)).
    CreatedChecked {
        /// The message.
        request: dispersy_core::node::RequestId,
        /// Passed, or why not.
        verdict: Result<(), dispersy_core::node::Refusal>,
    },
    /// A plugin wants this message to wait for another one.
    Wait {
        /// The community.
        community: CommunityId,
        /// The message, checked again once the wait is over.
        message: Box<dispersy_core::node::Incoming>,
        /// What it waits for.
        awaited: dispersy_core::missing::Awaited,
    },
    /// The store read the packets answering a missing-* request.
    AnswerRead {
        /// The request.
        request: dispersy_core::node::RequestId,
        /// The packets.
        packets: Vec<Vec<u8>>,
    },
    /// Create a permission message signed by this node's member: an authorize, a revoke or a
    /// dynamic-settings ([`dispersy_core::node::Node::create_authority`]).
    Authority {
        /// The community.
        community: CommunityId,
        /// What it says.
        body: dispersy_core::authority::Body,
        /// The answer.
        reply: oneshot::Sender<
            Result<dispersy_core::node::AuthorityCreated, dispersy_core::node::AuthorityError>,
        >,
    },
    /// The permission timeline of one community
    /// ([`dispersy_core::node::Node::timeline_view`]).
    Timeline {
        /// The community.
        community: CommunityId,
        /// The answer; `None` for an unknown community.
        reply: oneshot::Sender<Option<dispersy_core::node::TimelineView>>,
    },
    /// The candidates of one community.
    Candidates {
        /// The community.
        community: CommunityId,
        /// The answer; `None` for an unknown community.
        reply: oneshot::Sender<Option<Vec<CandidateView>>>,
    },
    /// A plugin proposes a double-member message ([`HostApi::propose`](dispersy_plugin_api::abi::HostApi::propose),
    /// [`dispersy_core::node::Node::propose`]): the co-signer's answer (or the expiry) goes back
    /// to its thread as a [`crate::plugin::Job::Cosigned`] with `token`.
    Propose {
        /// The community.
        community: CommunityId,
        /// Meta-message name.
        meta: String,
        /// The conversion the plugin wrote `payload` in; `None`: the community's first.
        conversion: Option<Box<[u8]>>,
        /// Encoded payload.
        payload: Vec<u8>,
        /// The second author and its address.
        co_signer: (dispersy_core::identity::PublicKey, SocketAddr),
        /// Explicit destinations.
        candidates: Vec<SocketAddr>,
        /// The plugin's token for this proposal.
        token: u64,
    },
    /// A plugin decided on a co-signer's answer
    /// ([`Event::Cosigned`](dispersy_core::node::Event::Cosigned)).
    Cosigned {
        /// The request.
        request: dispersy_core::node::RequestId,
        /// Publish it (with this member's signature added) or drop it.
        accept: bool,
    },
    /// A plugin's timeline question ([`dispersy_core::node::Node::may`]), answered on a
    /// synchronous channel the plugin's thread waits on (bounded by its call deadline).
    May {
        /// The community.
        community: CommunityId,
        /// Meta-message name.
        meta: String,
        /// The member asked about.
        member: dispersy_core::identity::MemberId,
        /// At which global time.
        global_time: u64,
        /// The answer.
        reply: std::sync::mpsc::SyncSender<Result<bool, dispersy_core::node::MayError>>,
    },
    /// Undo a stored message: an undo-own or undo-other signed by this node's member
    /// ([`dispersy_core::node::Node::create_undo`]).
    Undo {
        /// The community.
        community: CommunityId,
        /// The message to undo (author, global time).
        target: dispersy_core::undo::Target,
        /// Its meta as the store has it; `None`: not stored.
        meta: Option<u32>,
        /// The answer, if anyone waits.
        reply: Option<
            oneshot::Sender<
                Result<dispersy_core::node::UndoCreated, dispersy_core::node::UndoError>,
            >,
        >,
    },
    /// The store read the targets of undos ([`Event::UndoTargets`](dispersy_core::node::Event::UndoTargets)).
    UndoTargetsRead {
        /// The community.
        community: CommunityId,
        /// Each target, the address its undo came from, and its stored meta (`None`: not stored).
        found: Vec<(dispersy_core::undo::Target, Option<SocketAddr>, Option<u32>)>,
    },
    /// The store marked rows undone or redone by undos and these changed their hidden state:
    /// the community's plugin is told.
    UndoneMarked {
        /// The community.
        community: CommunityId,
        /// The rows, as notices for the plugin.
        marked: crate::store::UndoMarked,
    },
}
