//! The host side of one community instance: `HostHandle`, what the plugin calls (it never
//! blocks: it reads snapshots or enqueues), and [`Shared`], the state the protocol task, the
//! worker thread, the host handle and the control API share (snapshots, counters, the recent
//! deliveries, the plugin's timers).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RStr, RString, RVec};
use dispersy_core::identity::{CommunityId, PublicKey};
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
    /// Set when the plugin panicked; the community is disabled.
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
        if matches!(error.code, abi::ERROR_PANIC | abi::ERROR_POISONED) && self.failed.is_none() {
            self.failed = Some(error.message.to_string());
        }
    }
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
}

impl Shared {
    /// Fresh state: no candidates, no counts, delivery numbers from 1.
    pub(super) fn new() -> Self {
        Shared {
            global_time: AtomicU64::new(0),
            candidates: Mutex::new(Vec::new()),
            stats: Mutex::new(PluginStats::default()),
            recent: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            timers: Mutex::new(BinaryHeap::new()),
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

/// The host side of [`HostApi`] for one community instance.
pub(super) struct HostHandle {
    pub(super) community: CommunityId,
    pub(super) name: String,
    pub(super) member: PublicKey,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) shared: Arc<Shared>,
    pub(super) wake: SyncSender<Job>,
    pub(super) max_timers: usize,
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
        let mut addresses = Vec::with_capacity(candidates.len());
        for candidate in &candidates {
            match candidate.parse::<SocketAddr>() {
                Ok(address) => addresses.push(address),
                Err(_) => {
                    return RResult::RErr(PluginError::new(
                        abi::ERROR_INVALID,
                        format!("candidate {:?} is not ip:port", candidate.as_str()),
                    ));
                }
            }
        }
        // Non-blocking: the message is checked by this plugin later, on its thread; a refusal
        // is logged and counted by the host, not returned here.
        let command = Command::Create {
            community: self.community,
            meta: meta.to_string(),
            payload: payload.into_vec(),
            candidates: addresses,
            co_signer: None,
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
