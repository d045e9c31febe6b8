//! The host side of one community instance: `HostHandle`, what the plugin calls (it never
//! blocks: it reads snapshots or enqueues; only `read` waits for the store and `may` for the
//! protocol task's answer from the permission timeline, on the plugin's own thread, bounded by
//! the call deadline), and [`Shared`], the state the protocol task, the
//! worker thread, the host handle and the control API share (snapshots, counters, the recent
//! deliveries, the plugin's timers).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use abi_stable::std_types::{RResult, RStr, RString, RVec};
use dispersy_core::identity::{CommunityId, MemberId, PublicKey};
use dispersy_core::stats::DropReason;
use dispersy_plugin_api::abi::{self, CandidateInfo, HostApi, PluginError};
use tokio::sync::mpsc;

use super::Job;
use crate::command::Command;
use crate::mutex::lock;

/// A message delivered to the plugin, kept for the control API.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Delivery number in this community (increasing).
    pub seq: u64,
    /// Meta-message type.
    pub meta: u32,
    /// Author's public key.
    pub author: Option<PublicKey>,
    /// Global time.
    pub global_time: u64,
    /// Sequence number.
    pub sequence_number: Option<u32>,
    /// Source address; `None` when created here.
    pub source: Option<SocketAddr>,
    /// Whether it was stored.
    pub stored: bool,
    /// Conversion.
    pub conversion: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Counters and state of one community's plugin, read by the control API.
#[derive(Debug, Clone, Default)]
pub struct PluginStats {
    /// Messages the plugin accepted.
    pub accepted: u64,
    /// Messages dropped, by reason: the host's ([`DropReason`] names, such as "plugin error") and
    /// those the plugin gives (its own strings); at most 64 reasons, more go under "other".
    pub dropped: BTreeMap<String, u64>,
    /// Messages delayed (each time).
    pub delayed: u64,
    /// Delayed messages dropped because they waited too long or the queue was full.
    pub delay_expired: u64,
    /// Messages already stored (arrived twice), not handled again.
    pub duplicates: u64,
    /// Errors returned by the plugin, panics included.
    pub errors: u64,
    /// The last error.
    pub last_error: Option<String>,
    /// Set when the community failed for good (it panicked more often than it may be restarted,
    /// or its `create()` failed): why. It stays disabled.
    pub failed: Option<String>,
    /// Batches refused because the worker's queue was full.
    pub queue_full: u64,
}

impl PluginStats {
    /// Counts `n` messages the host dropped for `reason` (a failed plugin call, the store, …).
    pub(super) fn drop_reason(&mut self, reason: DropReason, n: u64) {
        self.count_dropped(reason.as_str(), n);
    }

    /// Counts one message the plugin rejected for `reason`, a string of the plugin's own.
    pub(super) fn plugin_reason(&mut self, reason: &str) {
        self.count_dropped(reason, 1);
    }

    /// Adds `n` under `reason`, or under "other" once 64 reasons are counted.
    fn count_dropped(&mut self, reason: &str, n: u64) {
        let key = if self.dropped.contains_key(reason) || self.dropped.len() < 64 {
            reason.to_owned()
        } else {
            "other".to_owned()
        };
        *self.dropped.entry(key).or_default() += n;
    }

    pub(super) fn error(&mut self, error: &PluginError) {
        self.errors += 1;
        self.last_error = Some(error.message.to_string());
    }
}

/// Where a community's plugin instance is in its life (a call that may be running aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Life {
    /// Not live yet: its `create()` has not returned, or its history is being restored.
    Starting,
    /// Running.
    Live,
    /// It panicked; a new instance is created after a backoff.
    Restarting {
        /// The panic.
        reason: String,
        /// When it panicked.
        since: SystemTime,
    },
    /// Disabled by the operator (`POST /v1/communities/{id}/disable`): no instance until it is
    /// enabled again.
    Disabled {
        /// Since when.
        since: SystemTime,
    },
    /// Ended by a hard destroy-community: its instance is retired (`retire(DESTROYED)`) and
    /// none runs again; every change of it is refused.
    Destroyed {
        /// Since when.
        since: SystemTime,
    },
    /// Down for good: it panicked more often than it may be restarted, or `create()` failed.
    Failed {
        /// Why.
        reason: String,
        /// Since when.
        since: SystemTime,
    },
}

/// A plugin call in progress on the community's thread.
#[derive(Debug, Clone)]
struct Call {
    /// Which call: `create`, `check`, `handle`, `timer`, `to_json`, `from_json`, `status`,
    /// `allow_signature`.
    name: &'static str,
    started: Instant,
    wall: SystemTime,
    /// Whether it was reported stuck (logged once).
    reported: bool,
}

/// A community's health as the control API, the metrics and the plugin list show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// `starting`, `live`, `stuck` (a plugin call runs past its deadline), `restarting` (after a
    /// panic), `failed` (for good, until enabled or restarted), `disabled` (by the operator) or
    /// `left` (by the operator: the node no longer runs the community).
    pub state: &'static str,
    /// Why it is not live; `None` when live or starting.
    pub reason: Option<String>,
    /// Since when it is in this state, in milliseconds since the Unix epoch; `None` when live.
    pub since_ms: Option<u64>,
    /// Restarts after panics so far.
    pub restarts: u32,
    /// Restarts asked for by the operator (`POST /v1/communities/{id}/restart`) so far.
    pub operator_restarts: u32,
    /// The version of the plugin running the community; `None` when left.
    pub version: Option<String>,
    /// The version it ran before its last live upgrade, if it was upgraded.
    pub previous_version: Option<String>,
    /// Live upgrades (and downgrades) of its plugin so far.
    pub upgrades: u32,
}

impl Health {
    /// Every state name, for metrics that list them all.
    pub const STATES: [&'static str; 7] = [
        "starting",
        "live",
        "stuck",
        "restarting",
        "failed",
        "disabled",
        "left",
    ];

    /// The health of a community the operator left.
    pub fn left(id: &str) -> Self {
        Health {
            state: "left",
            reason: Some(format!(
                "left by the operator; POST /v1/communities/{id}/join joins it again"
            )),
            since_ms: None,
            restarts: 0,
            operator_restarts: 0,
            version: None,
            previous_version: None,
            upgrades: 0,
        }
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// State shared between the protocol task, the worker thread, the host handle and the API.
#[derive(Debug)]
pub struct Shared {
    /// The community's global time, refreshed by the protocol task.
    pub global_time: AtomicU64,
    /// The community's candidates, refreshed by the protocol task.
    pub candidates: Mutex<Vec<CandidateInfo>>,
    /// Counters.
    pub stats: Mutex<PluginStats>,
    /// Recently delivered messages, oldest first (bounded by the worker's `recent` limit).
    pub(super) recent: Mutex<VecDeque<Delivered>>,
    /// The delivery number of the next delivered message.
    pub(super) next_seq: AtomicU64,
    /// The plugin's timers: (when, token), earliest first.
    pub(super) timers: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    /// The community type's name, for log lines and errors.
    pub(super) name: String,
    /// How long a plugin call may run before the community is reported stuck.
    pub(super) deadline: Duration,
    /// The plugin call running on the community's thread, if any.
    call: Mutex<Option<Call>>,
    /// Where the instance is in its life.
    pub(super) life: Mutex<Life>,
    /// Restarts after panics so far.
    pub(super) restarts: AtomicU32,
    /// Restarts asked for by the operator so far.
    pub(super) operator_restarts: AtomicU32,
    /// Set to make the thread end after the job it is on, without running the queued ones.
    pub(super) stop_now: AtomicBool,
    /// The running plugin's version and the one before its last live upgrade.
    pub(super) versions: Mutex<(String, Option<String>)>,
    /// Live upgrades so far.
    pub(super) upgrades: AtomicU32,
    /// The token the next `HostApi::propose` returns (from 1; 0 names the control API's
    /// proposals in `cosigned`).
    pub(super) next_token: AtomicU64,
}

impl Shared {
    /// Fresh state of community type `name` whose plugin calls have `deadline`: starting, no
    /// candidates, no counts, delivery numbers from 1.
    pub(super) fn new(name: &str, version: &str, deadline: Duration) -> Self {
        Shared {
            global_time: AtomicU64::new(0),
            candidates: Mutex::new(Vec::new()),
            stats: Mutex::new(PluginStats::default()),
            recent: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            timers: Mutex::new(BinaryHeap::new()),
            name: name.to_owned(),
            deadline,
            call: Mutex::new(None),
            life: Mutex::new(Life::Starting),
            restarts: AtomicU32::new(0),
            operator_restarts: AtomicU32::new(0),
            stop_now: AtomicBool::new(false),
            versions: Mutex::new((version.to_owned(), None)),
            upgrades: AtomicU32::new(0),
            next_token: AtomicU64::new(1),
        }
    }

    /// Notes that plugin call `name` starts on the community's thread.
    pub(super) fn begin_call(&self, name: &'static str) {
        *lock(&self.call) = Some(Call {
            name,
            started: Instant::now(),
            wall: SystemTime::now(),
            reported: false,
        });
    }

    /// Notes that the running plugin call returned; a community reported stuck is live again
    /// (logged).
    pub(super) fn end_call(&self) {
        if let Some(call) = lock(&self.call).take()
            && call.reported
        {
            tracing::info!(
                community = %self.name,
                call = call.name,
                ms = call.started.elapsed().as_millis() as u64,
                "community live again: its stuck plugin call returned"
            );
        }
    }

    /// The plugin call that has run past the deadline, with when it started; `None` when the
    /// community is not stuck.
    pub(super) fn stuck(&self) -> Option<(&'static str, SystemTime)> {
        lock(&self.call)
            .as_ref()
            .filter(|call| call.started.elapsed() >= self.deadline)
            .map(|call| (call.name, call.wall))
    }

    /// The watchdog's look: logs once (a warning) that the community is stuck when its running
    /// call has passed the deadline. Returns whether it is stuck.
    pub fn watch(&self) -> bool {
        let mut call = lock(&self.call);
        let Some(call) = call
            .as_mut()
            .filter(|call| call.started.elapsed() >= self.deadline)
        else {
            return false;
        };
        if !call.reported {
            call.reported = true;
            tracing::warn!(
                community = %self.name,
                call = call.name,
                deadline_ms = self.deadline.as_millis() as u64,
                "community stuck: a plugin call runs past its deadline; its deliveries and API \
                 calls are refused until it returns"
            );
        }
        true
    }

    /// The community's health now.
    pub fn health(&self) -> Health {
        let restarts = self.restarts.load(Ordering::Relaxed);
        let life = lock(&self.life).clone();
        let versions = lock(&self.versions).clone();
        let (state, reason, since) = match (life, self.stuck()) {
            (Life::Failed { reason, since }, _) => ("failed", Some(reason), Some(since)),
            (Life::Destroyed { since }, _) => (
                "destroyed",
                Some("destroyed by a hard destroy-community message".to_owned()),
                Some(since),
            ),
            (_, Some((call, since))) => (
                "stuck",
                Some(format!(
                    "plugin call `{call}` has run for more than {} ms",
                    self.deadline.as_millis()
                )),
                Some(since),
            ),
            (Life::Restarting { reason, since }, None) => ("restarting", Some(reason), Some(since)),
            (Life::Disabled { since }, None) => (
                "disabled",
                Some("disabled by the operator".to_owned()),
                Some(since),
            ),
            (Life::Starting, None) => ("starting", None, None),
            (Life::Live, None) => ("live", None, None),
        };
        Health {
            state,
            reason,
            since_ms: since.map(unix_ms),
            restarts,
            operator_restarts: self.operator_restarts.load(Ordering::Relaxed),
            version: Some(versions.0),
            previous_version: versions.1,
            upgrades: self.upgrades.load(Ordering::Relaxed),
        }
    }

    /// Delivered messages with `seq > since`, oldest first, at most `limit`.
    pub fn recent(&self, since: u64, limit: usize) -> Vec<Delivered> {
        lock(&self.recent)
            .iter()
            .filter(|d| d.seq > since)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// `ip:port` texts as addresses; the first that is not one is the error.
fn addresses(texts: &[RString]) -> Result<Vec<SocketAddr>, PluginError> {
    texts
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>().map_err(|_| {
                PluginError::new(
                    abi::ERROR_INVALID,
                    format!("candidate {:?} is not ip:port", text.as_str()),
                )
            })
        })
        .collect()
}

/// A member named by a 33-byte public key or a 20-byte member id, as its id.
fn member_id(bytes: &[u8]) -> Result<MemberId, PluginError> {
    if let Ok(id) = <[u8; 20]>::try_from(bytes) {
        return Ok(MemberId(id));
    }
    PublicKey::from_bytes(bytes)
        .map(|key| key.member_id())
        .map_err(|error| {
            PluginError::new(
                abi::ERROR_HOST,
                format!("member is neither a 20-byte id nor a public key: {error}"),
            )
        })
}

/// The host side of [`HostApi`] for one community instance (each instance, a restarted one
/// too, gets its own clone).
#[derive(Clone)]
pub(super) struct HostHandle {
    pub(super) community: CommunityId,
    pub(super) name: String,
    pub(super) member: PublicKey,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) shared: Arc<Shared>,
    pub(super) wake: super::queue::Sender<Job>,
    pub(super) max_timers: usize,
    pub(super) history: Option<Arc<dyn super::history::History>>,
    pub(super) community_row: i64,
    pub(super) read_page: u32,
}

impl HostHandle {
    /// `HostApi::send` and `send_in`: queues a message of `meta` (written in `conversion`,
    /// `None` for the community's first) for creation; never blocks.
    fn create(
        &self,
        meta: RStr<'_>,
        conversion: Option<Box<[u8]>>,
        payload: RVec<u8>,
        candidates: RVec<RString>,
    ) -> RResult<(), PluginError> {
        let addresses = match addresses(&candidates) {
            Ok(addresses) => addresses,
            Err(error) => return RResult::RErr(error),
        };
        // Non-blocking: the message is checked by this plugin later, on its thread; a refusal
        // is logged and counted by the host, not returned here.
        let command = Command::Create {
            community: self.community,
            meta: meta.to_string(),
            conversion,
            payload: payload.into_vec(),
            candidates: addresses,
            co_signer: None,
            reply: None,
        };
        self.tell(command).into()
    }

    /// Queues `command` for the protocol task; never blocks.
    fn tell(&self, command: Command) -> Result<(), PluginError> {
        self.commands
            .try_send(command)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => {
                    PluginError::new(abi::ERROR_HOST, "host command queue full; try again later")
                }
                mpsc::error::TrySendError::Closed(_) => {
                    PluginError::new(abi::ERROR_HOST, "host is shutting down")
                }
            })
    }

    /// `HostApi::propose`: queues a double-member proposal and returns its token; never
    /// blocks.
    fn propose(
        &self,
        meta: RStr<'_>,
        conversion: RVec<u8>,
        payload: RVec<u8>,
        co_signer: &[u8],
        address: &str,
        candidates: &[RString],
    ) -> Result<u64, PluginError> {
        let key = PublicKey::from_bytes(co_signer).map_err(|error| {
            PluginError::new(
                abi::ERROR_INVALID,
                format!("the co-signer is not a 33-byte public key: {error}"),
            )
        })?;
        let address = address.parse::<SocketAddr>().map_err(|_| {
            PluginError::new(
                abi::ERROR_INVALID,
                format!("co-signer address {address:?} is not ip:port"),
            )
        })?;
        let candidates = addresses(candidates)?;
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        self.tell(Command::Propose {
            community: self.community,
            meta: meta.to_string(),
            conversion: (!conversion.is_empty()).then(|| conversion.into_vec().into_boxed_slice()),
            payload: payload.into_vec(),
            co_signer: (key, address),
            candidates,
            token,
        })?;
        Ok(token)
    }

    /// `HostApi::may`: asks the protocol task, which owns the timeline, and waits for the
    /// answer at most the call deadline. Refused on an async task (it would block it).
    fn may(&self, meta: RStr<'_>, member: &[u8], global_time: u64) -> Result<bool, PluginError> {
        let refuse = |message: String| PluginError::new(abi::ERROR_HOST, message);
        let member = member_id(member)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(refuse(
                "the timeline question is refused on the host's async tasks".into(),
            ));
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.tell(Command::May {
            community: self.community,
            meta: meta.to_string(),
            member,
            global_time,
            reply,
        })?;
        match answer.recv_timeout(self.shared.deadline) {
            Ok(Ok(may)) => Ok(may),
            Ok(Err(error)) => Err(refuse(error.to_string())),
            Err(_) => Err(refuse(format!(
                "the timeline question took longer than {} ms",
                self.shared.deadline.as_millis()
            ))),
        }
    }
}

impl HostHandle {
    /// `HostApi::undo`: looks the target's meta up in the store (a visible row: an undone one
    /// is found by the node among its undos) and queues [`Command::Undo`]; never blocks on the
    /// protocol task. Why an undo is not created is logged, not returned.
    fn queue_undo(&self, member: &[u8], global_time: u64) -> RResult<(), PluginError> {
        let member = match member.len() {
            33 => PublicKey::from_bytes(member)
                .map(|key| key.member_id())
                .ok(),
            20 => dispersy_core::identity::MemberId::from_slice(member).ok(),
            _ => None,
        };
        let Some(member) = member else {
            return RResult::RErr(PluginError::new(
                abi::ERROR_INVALID,
                "member must be a 33-byte public key or a 20-byte member id",
            ));
        };
        let query = crate::store::HistoryQuery {
            meta: None,
            member: Some(member),
            global_time_low: global_time,
            global_time_high: global_time,
            after: 0,
            limit: 1,
        };
        let meta = match self.history.as_ref() {
            Some(history) => match history.page(self.community_row, &query) {
                Ok(rows) => rows.first().map(|row| row.meta),
                Err(error) => return RResult::RErr(PluginError::new(abi::ERROR_HOST, error)),
            },
            None => None,
        };
        let command = Command::Undo {
            community: self.community,
            target: dispersy_core::undo::Target {
                member,
                global_time,
            },
            meta,
            reply: None,
        };
        match self.commands.try_send(command) {
            Ok(()) => RResult::ROk(()),
            Err(mpsc::error::TrySendError::Full(_)) => RResult::RErr(PluginError::new(
                abi::ERROR_HOST,
                "host command queue full; try again later",
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                RResult::RErr(PluginError::new(abi::ERROR_HOST, "host is shutting down"))
            }
        }
    }
}

impl HostApi for HostHandle {
    fn member(&self) -> RVec<u8> {
        RVec::from(self.member.as_bytes().to_vec())
    }

    fn community(&self) -> RVec<u8> {
        RVec::from(self.community.0.to_vec())
    }

    fn global_time(&self) -> u64 {
        self.shared.global_time.load(Ordering::Relaxed)
    }

    fn candidates(&self) -> RVec<CandidateInfo> {
        lock(&self.shared.candidates).iter().cloned().collect()
    }

    fn send(
        &self,
        meta: RStr<'_>,
        payload: RVec<u8>,
        candidates: RVec<RString>,
    ) -> RResult<(), PluginError> {
        self.create(meta, None, payload, candidates)
    }

    fn send_in(
        &self,
        meta: RStr<'_>,
        conversion: RVec<u8>,
        payload: RVec<u8>,
        candidates: RVec<RString>,
    ) -> RResult<(), PluginError> {
        self.create(
            meta,
            Some(conversion.into_vec().into_boxed_slice()),
            payload,
            candidates,
        )
    }

    fn schedule(&self, delay_ms: u64, token: u64) -> RResult<(), PluginError> {
        let mut timers = lock(&self.shared.timers);
        if timers.len() >= self.max_timers {
            return RResult::RErr(PluginError::new(
                abi::ERROR_HOST,
                format!("at most {} timers may be scheduled", self.max_timers),
            ));
        }
        timers.push(Reverse((
            Instant::now() + Duration::from_millis(delay_ms),
            token,
        )));
        drop(timers);
        // The worker recomputes its wake-up time; a full queue wakes it soon anyway.
        let _ = self.wake.try_send(Job::Wake);
        RResult::ROk(())
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        let community = self.name.as_str();
        let message = message.as_str();
        match level {
            abi::level::ERROR => tracing::error!(target: "plugin", community, "{message}"),
            abi::level::WARN => tracing::warn!(target: "plugin", community, "{message}"),
            abi::level::INFO => tracing::info!(target: "plugin", community, "{message}"),
            abi::level::DEBUG => tracing::debug!(target: "plugin", community, "{message}"),
            _ => tracing::trace!(target: "plugin", community, "{message}"),
        }
    }

    fn may(
        &self,
        meta: RStr<'_>,
        member: RVec<u8>,
        global_time: u64,
    ) -> RResult<bool, PluginError> {
        HostHandle::may(self, meta, &member, global_time).into()
    }

    fn propose(
        &self,
        meta: RStr<'_>,
        conversion: RVec<u8>,
        payload: RVec<u8>,
        co_signer: RVec<u8>,
        address: RString,
        candidates: RVec<RString>,
    ) -> RResult<u64, PluginError> {
        HostHandle::propose(
            self,
            meta,
            conversion,
            payload,
            &co_signer,
            &address,
            &candidates,
        )
        .into()
    }

    fn undo(&self, member: RVec<u8>, global_time: u64) -> RResult<(), PluginError> {
        self.queue_undo(&member, global_time)
    }

    fn read(&self, query: &abi::ReadQuery) -> RResult<abi::ReadPage, PluginError> {
        super::history::read(
            self.history.as_ref(),
            self.community_row,
            query,
            self.read_page,
        )
    }
}

/// Candidate snapshot entries for plugins, from the core's table.
pub fn candidate_infos(
    community: &dispersy_core::community::Community,
    now: dispersy_core::time::Instant,
) -> Vec<CandidateInfo> {
    use dispersy_core::candidate::Category;
    let config = community.candidates.config().clone();
    community
        .candidates
        .iter()
        .filter_map(|c| {
            let category = match c.category(now, &config) {
                Category::Walk => abi::category::WALK,
                Category::Stumble => abi::category::STUMBLE,
                Category::Intro => abi::category::INTRO,
                Category::None => return None,
            };
            Some(CandidateInfo {
                address: RString::from(c.address.to_string()),
                member: c
                    .member
                    .map(|m| RVec::from(m.0.to_vec()))
                    .unwrap_or_default(),
                category,
            })
        })
        .collect()
}
