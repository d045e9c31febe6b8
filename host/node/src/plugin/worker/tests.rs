//! The community worker in-process: a fake community built through the ABI's trait-object
//! constructor (no plugin file) and a fake store task answering the worker's inserts with
//! scripted outcomes. Each test queues its jobs before the worker's loop starts, so that what the
//! loop gathers into one round is known.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RStr, RString, RVec};
use dispersy_core::authority::Degree;
use dispersy_core::community::Definition;
use dispersy_core::identity::{KeyPair, MemberId};
use dispersy_core::meta::{
    Authentication, Destination, Distribution, MetaMessage, Resolution, SyncOrder,
};
use dispersy_core::missing::Awaited;
use dispersy_core::node::Incoming;
use dispersy_core::stats::DropReason;
use dispersy_core::wire::{CommunityMessage, Conversion, SignedMessage};
use dispersy_plugin_api::abi::{
    self, CommunityApi, CommunityApi_TO, PluginError, RawMessage, RawVerdict,
};
use tokio::sync::mpsc;

use super::{Job, WorkerContext, WorkerLimits, WorkerLoop};
use crate::command::Command;
use crate::mutex::lock;
use crate::plugin::history::History;
use crate::plugin::host::Shared;
use crate::store::{HistoryQuery, Insert, Outcome, StoredMessage};

/// What the fake community and the fake store saw, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        lock(&self.0).push(line);
    }

    fn lines(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

/// Payload codes telling the fake community its verdict on a message.
const ACCEPT: u8 = b'a';
const DROP: u8 = b'd';
/// Delay once (10 ms), then accept.
const DELAY_ONCE: u8 = b'l';
/// Wait for the message of member `[9; 20]` at global time 42.
const WAIT_MESSAGE: u8 = b'w';
/// Wait for the last message of meta 2 by the test key (named by its 33-byte key).
const WAIT_LAST: u8 = b'W';
/// A wait naming no valid member.
const WAIT_NOBODY: u8 = b'x';
/// Handling it fails as a caught panic does.
const PANIC: u8 = b'p';
/// Handling it blocks until the harness releases it.
const HANG: u8 = b'h';

struct FakeCommunity {
    log: Log,
    delayed: HashSet<u64>,
    release: Arc<AtomicBool>,
    /// Logs `retire` (only the restore tests look at the whole lifecycle).
    lifecycle: bool,
}

fn global_times(batch: &RSlice<'_, RawMessage>) -> Vec<u64> {
    batch.iter().map(|m| m.global_time).collect()
}

impl CommunityApi for FakeCommunity {
    fn check(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<RVec<RawVerdict>, PluginError> {
        let meta = batch.first().map_or(0, |m| m.meta);
        self.log
            .push(format!("check {meta} {:?}", global_times(&batch)));
        let verdicts = batch
            .iter()
            .map(|m| {
                let mut verdict = RawVerdict {
                    kind: abi::verdict::ACCEPT,
                    reason: RString::from("test"),
                    delay_ms: 0,
                    member: RVec::new(),
                    global_time: 0,
                    meta: 0,
                };
                match m.payload.first().copied() {
                    Some(DROP) => verdict.kind = abi::verdict::DROP,
                    Some(DELAY_ONCE) if self.delayed.insert(m.global_time) => {
                        verdict.kind = abi::verdict::DELAY;
                        verdict.delay_ms = 10;
                    }
                    Some(WAIT_MESSAGE) => {
                        verdict.kind = abi::verdict::WAIT_MESSAGE;
                        verdict.member = RVec::from(vec![9u8; 20]);
                        verdict.global_time = 42;
                    }
                    Some(WAIT_LAST) => {
                        verdict.kind = abi::verdict::WAIT_LAST;
                        verdict.member = RVec::from(key().public().as_bytes().to_vec());
                        verdict.meta = 2;
                    }
                    Some(WAIT_NOBODY) => {
                        verdict.kind = abi::verdict::WAIT_MESSAGE;
                        verdict.member = RVec::from(vec![1u8; 5]);
                    }
                    _ => {}
                }
                verdict
            })
            .collect();
        ROk(verdicts)
    }

    fn handle(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<(), PluginError> {
        let meta = batch.first().map_or(0, |m| m.meta);
        self.log
            .push(format!("handle {meta} {:?}", global_times(&batch)));
        let code = batch.first().and_then(|m| m.payload.first().copied());
        if code == Some(PANIC) {
            return RErr(PluginError::new(abi::ERROR_PANIC, "plugin panicked: fake"));
        }
        if code == Some(HANG) {
            while !self.release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.log.push("released".into());
        }
        ROk(())
    }

    fn timer(&mut self, _token: u64) -> RResult<(), PluginError> {
        ROk(())
    }

    fn payload_to_json(
        &self,
        _meta: u32,
        _conversion: RSlice<'_, u8>,
        _payload: RSlice<'_, u8>,
    ) -> RResult<RString, PluginError> {
        RErr(PluginError::new(abi::ERROR_INVALID, "no JSON here"))
    }

    fn payload_from_json(&self, _meta: u32, _json: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        RErr(PluginError::new(abi::ERROR_INVALID, "no JSON here"))
    }

    fn status(&self) -> RResult<RString, PluginError> {
        ROk(RString::from("{}"))
    }

    fn restore(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<(), PluginError> {
        let metas: Vec<u32> = batch.iter().map(|m| m.meta).collect();
        self.log.push(format!(
            "restore {:?} metas {metas:?}",
            global_times(&batch)
        ));
        if batch.iter().any(|m| m.payload.first() == Some(&PANIC)) {
            return RErr(PluginError::new(abi::ERROR_PANIC, "plugin panicked: fake"));
        }
        ROk(())
    }

    fn live(&mut self) -> RResult<(), PluginError> {
        self.log.push("live".into());
        ROk(())
    }

    /// Co-signs what is marked ACCEPT (the older yes-or-no form: `cosign` is not
    /// implemented, so the host falls back to this).
    fn allow_signature(&mut self, message: &RawMessage) -> RResult<bool, PluginError> {
        RResult::ROk(message.payload.first() == Some(&ACCEPT))
    }

    fn undone(&mut self, batch: RSlice<'_, abi::RawUndone>) -> RResult<(), PluginError> {
        let times: Vec<u64> = batch.iter().map(|u| u.message.global_time).collect();
        let first = batch.first();
        self.log.push(format!(
            "undone {} reason {} by {} {times:?}",
            first.is_some_and(|u| u.undone),
            first.map_or(9, |u| u.reason),
            first.map_or(0, |u| u.by_member.len()),
        ));
        ROk(())
    }

    fn retire(&mut self, reason: u8) -> RResult<(), PluginError> {
        if self.lifecycle {
            self.log.push(format!("retire {reason}"));
        }
        ROk(())
    }
}

/// A store's history of the fake community: rows with ids 1, 2, … in order; pages are logged.
struct FakeHistory {
    rows: Vec<StoredMessage>,
    log: Log,
    /// Reads fail.
    broken: bool,
}

impl History for FakeHistory {
    fn page(&self, community: i64, query: &HistoryQuery) -> Result<Vec<StoredMessage>, String> {
        self.log.push(format!(
            "page {community} after {} limit {}",
            query.after, query.limit
        ));
        if self.broken {
            return Err("disk on fire".into());
        }
        Ok(self
            .rows
            .iter()
            .filter(|r| r.id > query.after)
            .take(query.limit as usize)
            .cloned()
            .collect())
    }

    fn destroy(
        &self,
        community: i64,
        keep: Option<&[(MemberId, u64)]>,
        above: u64,
    ) -> Result<u64, String> {
        self.log.push(format!(
            "destroy {community} keep {:?} above {above}",
            keep.map(<[_]>::len)
        ));
        // What a store would delete of these rows (nothing is kept by the fake).
        Ok(match keep {
            Some(_) => self.rows.len() as u64,
            None => self.rows.iter().filter(|r| r.global_time > above).count() as u64,
        })
    }

    fn rows(&self, ids: &[i64]) -> Result<Vec<StoredMessage>, String> {
        self.log.push(format!("rows {ids:?}"));
        Ok(ids
            .iter()
            .filter_map(|id| self.rows.iter().find(|r| r.id == *id).cloned())
            .collect())
    }

    /// Every row of the span flips (the store's bits are its own tests' business).
    fn deny(
        &self,
        span: &crate::store::Span,
        denied: bool,
        page: usize,
        on_page: &mut dyn FnMut(Vec<i64>),
    ) -> Result<(), String> {
        self.log
            .push(format!("deny {}..={} {denied}", span.low, span.high));
        let ids: Vec<i64> = self
            .rows
            .iter()
            .filter(|r| r.meta == span.meta && (span.low..=span.high).contains(&r.global_time))
            .map(|r| r.id)
            .collect();
        for chunk in ids.chunks(page) {
            on_page(chunk.to_vec());
        }
        Ok(())
    }
}

/// Stored rows of `(meta, global_time, code)`, signed for real so that they decode; a `None`
/// code stands for a row whose packet does not decode.
fn rows(spec: &[(u32, u64, Option<u8>)]) -> Vec<StoredMessage> {
    spec.iter()
        .enumerate()
        .map(|(i, &(meta, global_time, code))| {
            let packet = match code {
                Some(code) => {
                    SignedMessage::sign(
                        message(meta, global_time, code, None).message.message,
                        &[&key()],
                    )
                    .unwrap()
                    .packet
                }
                None => vec![0xff, 0x00, 0x13],
            };
            StoredMessage {
                id: i as i64 + 1,
                member: key().public().member_id(),
                global_time,
                meta,
                sequence: None,
                packet,
                undone: 0,
                undone_by: None,
            }
        })
        .collect()
}

fn key() -> KeyPair {
    KeyPair::from_secret(&[5u8; 32]).unwrap()
}

fn definition() -> Definition {
    let meta = |id: u32, name: &str| MetaMessage {
        id,
        name: name.into(),
        authentication: Authentication::Member,
        resolution: Resolution::Public,
        distribution: Distribution::FullSync {
            sequence_numbers: false,
            order: SyncOrder::Ascending,
            pruning: None,
        },
        destination: Destination::Community { node_count: 5 },
        priority: 128,
        batch_window: Duration::ZERO,
    };
    Definition {
        undoable: Vec::new(),
        name: "worker-test".into(),
        version: "1".into(),
        master: KeyPair::from_secret(&[3u8; 32]).unwrap().public().clone(),
        conversions: vec![Conversion::version(1).unwrap()],
        metas: vec![meta(1, "one"), meta(2, "two")],
    }
}

fn peer() -> SocketAddr {
    "10.0.0.2:7000".parse().unwrap()
}

/// A message of `meta` at `global_time` whose payload tells the fake community its verdict.
fn message(meta: u32, global_time: u64, code: u8, source: Option<SocketAddr>) -> Incoming {
    Incoming {
        message: SignedMessage {
            message: CommunityMessage {
                community: definition().id(),
                message_type: meta,
                conversion: Conversion::version(1).unwrap(),
                authors: vec![key().public().clone()],
                global_time,
                sequence_number: None,
                resolution_index: None,
                relay_hops: None,
                payload: vec![code],
                authority: None,
            },
            packet: vec![code, global_time as u8, meta as u8],
        },
        source,
        persistent: true,
    }
}

fn deliver(meta: u32, messages: Vec<Incoming>) -> Job {
    Job::Deliver { meta, messages }
}

fn limits() -> WorkerLimits {
    WorkerLimits {
        queue: 64,
        batch: 100,
        recent: 100,
        delayed: 10,
        delay_timeout: Duration::from_secs(5),
        timers: 4,
        deadline: Duration::from_secs(5),
        restarts: 0,
        restart_window: Duration::from_secs(60),
        restart_backoff: Duration::from_millis(1),
        read_page: 4,
    }
}

/// A worker loop on its own thread, with a fake community and a fake store.
struct Harness {
    log: Log,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    jobs: super::queue::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
    /// Releases a handle call blocked on a `HANG` message.
    release: Arc<AtomicBool>,
}

/// Queues `jobs`, then starts the loop; the store answers `outcomes` by global time (stored
/// otherwise).
fn start(limits: WorkerLimits, outcomes: HashMap<u64, Outcome>, jobs: Vec<Job>) -> Harness {
    start_with(limits, outcomes, jobs, None)
}

/// [`start`], and when `history` is given (rows, whether reads fail): the loop starts as a
/// community thread does, creating its instance (logged `create`) and restoring that history.
fn start_with(
    limits: WorkerLimits,
    outcomes: HashMap<u64, Outcome>,
    jobs: Vec<Job>,
    history: Option<(Vec<StoredMessage>, bool)>,
) -> Harness {
    let log = Log::default();
    let (inserts_tx, mut inserts_rx) = mpsc::channel::<Insert>(8);
    let store_log = log.clone();
    // Ends when the worker loop, the only sender, is gone.
    std::thread::spawn(move || {
        while let Some(insert) = inserts_rx.blocking_recv() {
            let times: Vec<u64> = insert.messages.iter().map(|m| m.global_time).collect();
            store_log.push(format!("insert {times:?}"));
            let answer = times
                .iter()
                .map(|t| outcomes.get(t).cloned().unwrap_or(Outcome::Stored))
                .collect();
            let _ = insert.ack.send(Ok(answer));
        }
    });
    let (commands_tx, commands) = mpsc::channel(64);
    let (jobs_tx, jobs_rx) = super::queue::bounded(limits.queue);
    for job in jobs {
        jobs_tx.try_send(job).unwrap();
    }
    let definition = definition();
    let shared = Arc::new(Shared::new(
        &definition.name,
        &definition.version,
        limits.deadline,
    ));
    let release = Arc::new(AtomicBool::new(false));
    let lifecycle = history.is_some();
    let fake = {
        let (log, release) = (log.clone(), release.clone());
        move || {
            CommunityApi_TO::from_value(
                FakeCommunity {
                    log: log.clone(),
                    delayed: HashSet::new(),
                    release: release.clone(),
                    lifecycle,
                },
                TD_Opaque,
            )
        }
    };
    let first = history.is_none().then(&fake);
    let history = history.map(|(rows, broken)| {
        Arc::new(FakeHistory {
            rows,
            log: log.clone(),
            broken,
        }) as Arc<dyn History>
    });
    let factory_log = log.clone();
    let factory = Box::new(move || {
        factory_log.push("create".into());
        Ok(fake())
    });
    let restoring = history.is_some();
    let worker = WorkerLoop::new(
        first,
        factory,
        WorkerContext {
            community: definition.id(),
            definition,
            community_row: 1,
            member: key().public().clone(),
            commands: commands_tx,
            store: inserts_tx,
            history,
            limits,
        },
        shared.clone(),
    );
    let thread = std::thread::spawn(move || {
        if restoring {
            let (created, _) = tokio::sync::oneshot::channel();
            worker.start(jobs_rx, created);
        } else {
            worker.run(jobs_rx);
        }
    });
    Harness {
        log,
        shared,
        commands,
        jobs: jobs_tx,
        thread,
        release,
    }
}

impl Harness {
    /// Waits until the log holds `line` (at most 5 s).
    fn wait_for(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log.lines().iter().any(|l| l == line) {
            assert!(
                Instant::now() < deadline,
                "no {line:?} in {:?}",
                self.log.lines()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the community's health is `state` (at most 5 s).
    fn wait_state(&self, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.health().state != state {
            assert!(
                Instant::now() < deadline,
                "not {state}: {:?}",
                self.shared.health()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the loop after the queued jobs; returns what the protocol task was told, in order.
    fn stop(self) -> (Vec<String>, Vec<Command>, Arc<Shared>) {
        self.stop_for(abi::retire::SHUTDOWN)
    }

    /// [`Harness::stop`], the instance retired for `reason`.
    fn stop_for(mut self, reason: u8) -> (Vec<String>, Vec<Command>, Arc<Shared>) {
        self.jobs.try_send(Job::Stop(reason)).unwrap();
        self.thread.join().unwrap();
        let mut told = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            told.push(command);
        }
        (self.log.lines(), told, self.shared)
    }
}

/// Short forms of what the worker tells the protocol task; a store report in the order the node
/// applies it (gaps, conflicts, then the stored news).
fn describe(command: &Command) -> Vec<String> {
    match command {
        Command::StoreReport { report, .. } => {
            let mut out = Vec::new();
            for (message, low, high) in &report.gaps {
                let before = message.message.message.global_time;
                out.push(format!("gap {low}..={high} before {before}"));
            }
            for (to, packet) in &report.conflicts {
                out.push(format!("conflict to {to} with {packet:?}"));
            }
            if !report.stored.is_empty() {
                let times: Vec<u64> = report.stored.iter().map(|m| m.global_time).collect();
                out.push(format!("stored {times:?}"));
            }
            out
        }
        Command::Wait {
            message, awaited, ..
        } => vec![format!(
            "wait {} for {awaited:?}",
            message.message.message.global_time
        )],
        _ => vec!["other".into()],
    }
}

fn describe_all(commands: &[Command]) -> Vec<String> {
    commands.iter().flat_map(describe).collect()
}

#[test]
fn a_batch_is_checked_then_stored_then_handled() {
    let mut transient = message(1, 2, ACCEPT, Some(peer()));
    transient.persistent = false;
    let jobs = vec![
        deliver(1, vec![message(1, 1, ACCEPT, Some(peer())), transient]),
        deliver(2, vec![message(2, 3, ACCEPT, Some(peer()))]),
        deliver(1, vec![message(1, 4, DROP, Some(peer()))]),
    ];
    let (log, told, shared) = start(limits(), HashMap::new(), jobs).stop();
    assert_eq!(
        log,
        [
            "check 1 [1, 2, 4]",
            "check 2 [3]",
            "insert [1, 3]",
            "handle 1 [1, 2]",
            "handle 2 [3]",
        ],
        "one check per meta, one insert for the round (persistent messages only), then handle"
    );
    assert_eq!(describe_all(&told), ["stored [1, 3]"]);
    let stats = lock(&shared.stats).clone();
    assert_eq!(stats.accepted, 3);
    assert_eq!(stats.dropped.get("test"), Some(&1));
    let stored: Vec<(u64, bool)> = shared
        .recent(0, 10)
        .iter()
        .map(|d| (d.global_time, d.stored))
        .collect();
    assert_eq!(stored, [(1, true), (2, false), (3, true)]);
}

#[test]
fn a_built_in_permission_message_is_stored_without_the_plugins_check_or_handle() {
    use dispersy_core::authority::{Body, MemberRef, Target};
    use dispersy_core::meta::builtin;
    use dispersy_core::timeline::{Permission, Subject};
    let mut authorize = message(builtin::AUTHORIZE, 5, ACCEPT, Some(peer()));
    authorize.message.message.sequence_number = Some(1);
    authorize.message.message.authority = Some(Body::Authorize(vec![Target {
        member: MemberRef::from_id(MemberId([9; 20])),
        grants: vec![(Subject::Community(1), Permission::Permit)],
    }]));
    let jobs = vec![
        deliver(builtin::AUTHORIZE, vec![authorize]),
        deliver(1, vec![message(1, 6, ACCEPT, Some(peer()))]),
    ];
    let (log, told, shared) = start(limits(), HashMap::new(), jobs).stop();
    assert_eq!(
        log,
        ["check 1 [6]", "insert [5, 6]", "handle 1 [6]"],
        "the core judged the built-in message: stored, never checked or handled"
    );
    assert_eq!(describe_all(&told), ["stored [5, 6]"]);
    let Command::StoreReport { report, .. } = &told[0] else {
        panic!("a store report");
    };
    let built_in: Vec<u64> = report
        .authority
        .iter()
        .map(|m| m.message.global_time)
        .collect();
    assert_eq!(built_in, [5], "the core learns the record from the report");
    let seen: Vec<u64> = shared.recent(0, 10).iter().map(|d| d.global_time).collect();
    assert_eq!(seen, [6], "the plugin's recent messages never show it");
}

#[test]
fn a_duplicate_from_the_network_is_not_handled_but_our_own_is() {
    let outcomes = HashMap::from([(1, Outcome::Duplicate), (2, Outcome::Duplicate)]);
    let jobs = vec![deliver(
        1,
        vec![
            message(1, 1, ACCEPT, Some(peer())),
            message(1, 2, ACCEPT, None),
        ],
    )];
    let (log, told, shared) = start(limits(), outcomes, jobs).stop();
    assert_eq!(
        log,
        ["check 1 [1]", "insert [1, 2]", "handle 1 [2]"],
        "our own message passed its check before it was published: not checked again"
    );
    // Only the acknowledgement of our own message (the API answers once it is stored).
    let durable: Vec<(Vec<u64>, Option<String>)> = told
        .iter()
        .filter_map(|c| match c {
            Command::Durable {
                global_times,
                error,
                ..
            } => Some((global_times.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(durable, [(vec![2], None)]);
    assert_eq!(
        told.len(),
        1,
        "nothing new was stored: {:?}",
        describe_all(&told)
    );
    assert_eq!(lock(&shared.stats).duplicates, 1);
    let own: Vec<(u64, bool)> = shared
        .recent(0, 10)
        .iter()
        .map(|d| (d.global_time, d.stored))
        .collect();
    assert_eq!(own, [(2, true)]);
}

#[test]
fn gaps_and_lost_conflicts_are_told_before_the_stored_news() {
    let outcomes = HashMap::from([
        (1, Outcome::Gap { low: 3, high: 4 }),
        (2, Outcome::Conflict(vec![7, 7])),
        (4, Outcome::Stale),
    ]);
    let jobs = vec![deliver(
        1,
        vec![
            message(1, 1, ACCEPT, Some(peer())),
            message(1, 2, ACCEPT, Some(peer())),
            message(1, 3, ACCEPT, Some(peer())),
            message(1, 4, ACCEPT, Some(peer())),
        ],
    )];
    let (log, told, shared) = start(limits(), outcomes, jobs).stop();
    assert_eq!(
        log,
        [
            "check 1 [1, 2, 3, 4]",
            "insert [1, 2, 3, 4]",
            "handle 1 [3]"
        ]
    );
    assert_eq!(
        describe_all(&told),
        [
            "gap 3..=4 before 1".to_owned(),
            format!("conflict to {} with [7, 7]", peer()),
            "stored [3]".to_owned(),
        ]
    );
    let stats = lock(&shared.stats).clone();
    assert_eq!(
        stats.dropped.get(DropReason::SequenceConflictLost.as_str()),
        Some(&1)
    );
    assert_eq!(
        stats.dropped.get(DropReason::StaleSequence.as_str()),
        Some(&1)
    );
}

#[test]
fn a_delayed_message_is_checked_again_then_stored_and_handled() {
    let jobs = vec![deliver(1, vec![message(1, 1, DELAY_ONCE, Some(peer()))])];
    let harness = start(limits(), HashMap::new(), jobs);
    harness.wait_for("handle 1 [1]");
    let (log, told, shared) = harness.stop();
    assert_eq!(
        log,
        ["check 1 [1]", "check 1 [1]", "insert [1]", "handle 1 [1]"]
    );
    assert_eq!(describe_all(&told), ["stored [1]"]);
    assert_eq!(lock(&shared.stats).delayed, 1);
}

#[test]
fn a_full_delay_queue_drops_the_message() {
    let limits = WorkerLimits {
        delayed: 0,
        ..limits()
    };
    let jobs = vec![deliver(1, vec![message(1, 1, DELAY_ONCE, Some(peer()))])];
    let (log, told, shared) = start(limits, HashMap::new(), jobs).stop();
    assert_eq!(log, ["check 1 [1]"]);
    assert!(told.is_empty());
    let stats = lock(&shared.stats).clone();
    assert_eq!((stats.delayed, stats.delay_expired), (0, 1));
}

#[test]
fn wait_verdicts_go_to_the_protocol_task() {
    let jobs = vec![deliver(
        1,
        vec![
            message(1, 1, WAIT_MESSAGE, Some(peer())),
            message(1, 2, WAIT_LAST, Some(peer())),
            message(1, 4, WAIT_NOBODY, Some(peer())),
        ],
    )];
    let (log, told, shared) = start(limits(), HashMap::new(), jobs).stop();
    assert_eq!(log, ["check 1 [1, 2, 4]"], "nothing stored or handled");
    let message = Awaited::Message {
        member: MemberId([9; 20]),
        global_time: 42,
    };
    let last = Awaited::Last {
        member: key().member_id(),
        meta: 2,
    };
    assert_eq!(
        describe_all(&told),
        [
            format!("wait 1 for {message:?}"),
            format!("wait 2 for {last:?}")
        ]
    );
    let stats = lock(&shared.stats).clone();
    assert_eq!(stats.delayed, 2);
    assert_eq!(
        stats.dropped.get(DropReason::PluginError.as_str()),
        Some(&1)
    );
}

#[test]
fn a_round_gathers_deliveries_up_to_the_batch_bound() {
    let limits = WorkerLimits {
        batch: 3,
        ..limits()
    };
    let jobs = (1..=5)
        .map(|t| deliver(1, vec![message(1, t, ACCEPT, Some(peer()))]))
        .collect();
    let (log, told, _) = start(limits, HashMap::new(), jobs).stop();
    assert_eq!(
        log,
        [
            "check 1 [1, 2, 3]",
            "insert [1, 2, 3]",
            "handle 1 [1, 2, 3]",
            "check 1 [4, 5]",
            "insert [4, 5]",
            "handle 1 [4, 5]",
        ]
    );
    assert_eq!(describe_all(&told), ["stored [1, 2, 3]", "stored [4, 5]"]);
}

/// The verdicts the protocol task was told of created messages, by request.
fn created_verdicts(
    told: &[Command],
) -> Vec<(
    dispersy_core::node::RequestId,
    Result<(), dispersy_core::node::Refusal>,
)> {
    told.iter()
        .filter_map(|c| match c {
            Command::CreatedChecked { request, verdict } => Some((*request, verdict.clone())),
            _ => None,
        })
        .collect()
}

/// Four request ids as a core node hands them out (they name created messages).
fn told_ids() -> Vec<dispersy_core::node::RequestId> {
    let now = dispersy_core::time::Instant::from_millis(0);
    let mut node = dispersy_core::node::Node::new(
        dispersy_core::node::Config::default(),
        key(),
        peer(),
        1,
        now,
    );
    let id = node
        .join(now, definition(), Default::default())
        .expect("joins");
    (0..4)
        .map(|_| {
            node.create_message(now, id, "one", vec![ACCEPT], &[])
                .expect("created")
        })
        .collect()
}

#[test]
fn a_created_message_is_checked_alone_and_refused_unless_accepted_now() {
    use dispersy_core::node::Refusal;
    let ids = told_ids();
    let jobs = [ACCEPT, DROP, DELAY_ONCE, WAIT_MESSAGE]
        .into_iter()
        .zip(&ids)
        .enumerate()
        .map(|(t, (code, request))| Job::CheckCreated {
            request: *request,
            message: Box::new(message(1, t as u64 + 1, code, None)),
        })
        .collect();
    let (log, told, shared) = start(limits(), HashMap::new(), jobs).stop();
    assert_eq!(
        log,
        ["check 1 [1]", "check 1 [2]", "check 1 [3]", "check 1 [4]"],
        "checked one by one; nothing stored or handled (the protocol task publishes)"
    );
    assert_eq!(
        created_verdicts(&told),
        [
            (ids[0], Ok(())),
            (ids[1], Err(Refusal::Dropped("test".into()))),
            (ids[2], Err(Refusal::Deferred("test".into()))),
            (ids[3], Err(Refusal::Deferred("test".into()))),
        ]
    );
    let stats = lock(&shared.stats).clone();
    assert_eq!(
        (stats.accepted, stats.delayed, stats.dropped.len()),
        (0, 0, 0),
        "a refused creation is counted by the node, not as a received message"
    );
}

#[test]
fn a_call_past_the_deadline_is_stuck_until_it_returns() {
    let limits = WorkerLimits {
        deadline: Duration::from_millis(50),
        ..limits()
    };
    let harness = start(
        limits,
        HashMap::new(),
        vec![deliver(1, vec![message(1, 1, HANG, Some(peer()))])],
    );
    harness.wait_for("handle 1 [1]");
    harness.wait_state("stuck");
    let health = harness.shared.health();
    assert!(
        health.reason.as_deref().unwrap().contains("`handle`"),
        "{health:?}"
    );
    assert!(health.since_ms.is_some());
    assert!(harness.shared.watch(), "the watchdog sees it too");
    harness.release.store(true, Ordering::Relaxed);
    harness.wait_for("released");
    harness.wait_state("live");
    assert!(!harness.shared.watch());
    harness.stop();
}

#[test]
fn a_panicking_community_is_restarted_then_fails_after_its_restarts() {
    let limits = WorkerLimits {
        restarts: 1,
        ..limits()
    };
    let harness = start(
        limits,
        HashMap::new(),
        vec![deliver(1, vec![message(1, 1, PANIC, Some(peer()))])],
    );
    harness.wait_for("create");
    harness.wait_state("live");
    assert_eq!(harness.shared.health().restarts, 1);
    // The new instance works.
    harness
        .jobs
        .try_send(deliver(1, vec![message(1, 2, ACCEPT, Some(peer()))]))
        .unwrap();
    harness.wait_for("handle 1 [2]");
    // The second panic uses up the restarts: failed for good, with the reason.
    harness
        .jobs
        .try_send(deliver(1, vec![message(1, 3, PANIC, Some(peer()))]))
        .unwrap();
    harness.wait_state("failed");
    let health = harness.shared.health();
    assert!(
        health.reason.as_deref().unwrap().contains("fake"),
        "{health:?}"
    );
    assert_eq!(health.restarts, 1);
    // What still arrives is dropped and counted, without calling the plugin.
    harness
        .jobs
        .try_send(deliver(1, vec![message(1, 4, ACCEPT, Some(peer()))]))
        .unwrap();
    let (log, _, shared) = harness.stop();
    assert_eq!(log.iter().filter(|l| *l == "create").count(), 1, "{log:?}");
    assert!(!log.iter().any(|l| l.contains("[4]")), "{log:?}");
    let stats = lock(&shared.stats).clone();
    assert_eq!(stats.dropped.get(DropReason::PluginDown.as_str()), Some(&1));
    assert!(stats.failed.unwrap().contains("fake"));
}

#[test]
fn a_new_instance_gets_the_stored_history_in_pages_before_any_queued_traffic() {
    let limits = WorkerLimits {
        read_page: 2,
        ..limits()
    };
    // Row 3 does not decode: skipped, and the pages go on past it.
    let history = rows(&[
        (1, 1, Some(ACCEPT)),
        (2, 2, Some(ACCEPT)),
        (1, 3, None),
        (1, 4, Some(ACCEPT)),
        (2, 5, Some(ACCEPT)),
    ]);
    let jobs = vec![deliver(1, vec![message(1, 6, ACCEPT, Some(peer()))])];
    let (log, _, shared) = start_with(limits, HashMap::new(), jobs, Some((history, false))).stop();
    assert_eq!(
        log,
        [
            "create",
            "page 1 after 0 limit 2",
            "restore [1, 2] metas [1, 2]",
            "page 1 after 2 limit 2",
            "restore [4] metas [1]",
            "page 1 after 4 limit 2",
            "restore [5] metas [2]",
            "live",
            "check 1 [6]",
            "insert [6]",
            "handle 1 [6]",
            "retire 0",
        ],
        "the whole history, oldest first in pages (a short one is the last), then live, then \
         the queued delivery"
    );
    assert_eq!(shared.health().state, "live");
}

#[test]
fn a_reevaluation_flags_span_by_span_and_tells_the_plugin_in_read_pages() {
    use crate::plugin::undone::{Notice, Why};
    use dispersy_core::timeline::{Authors, Reevaluation, Span};
    let limits = WorkerLimits {
        read_page: 2,
        ..limits()
    };
    let history = rows(&[
        (1, 1, Some(ACCEPT)),
        (1, 2, Some(ACCEPT)),
        (1, 3, Some(ACCEPT)),
        (1, 4, Some(ACCEPT)),
        (1, 5, Some(ACCEPT)),
    ]);
    let member = key().public().member_id();
    let jobs = vec![
        Job::Reevaluate {
            meta: 1,
            spans: vec![Reevaluation {
                authors: Authors::One(member),
                spans: vec![
                    Span {
                        low: 2,
                        high: 2,
                        allowed: true,
                    },
                    Span {
                        low: 3,
                        high: u64::MAX,
                        allowed: false,
                    },
                ],
            }],
        },
        Job::Undone(Notice {
            ids: vec![1],
            undone: true,
            why: Why::ByOther {
                by: key().public().as_bytes().to_vec(),
                global_time: 9,
            },
        }),
    ];
    let (log, _, _) = start_with(limits, HashMap::new(), jobs, Some((history, false))).stop();
    let after_live: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .skip_while(|line| *line != "live")
        .skip(1)
        .collect();
    assert_eq!(
        after_live,
        [
            "deny 2..=2 false",
            "rows [2]",
            "undone false reason 2 by 0 [2]",
            &format!("deny 3..={} true", u64::MAX),
            "rows [3, 4]",
            "undone true reason 2 by 0 [3, 4]",
            "rows [5]",
            "undone true reason 2 by 0 [5]",
            "rows [1]",
            "undone true reason 1 by 33 [1]",
            "retire 0",
        ]
    );
}

#[test]
fn a_stop_retires_the_instance_for_the_reason_given() {
    for reason in [abi::retire::SHUTDOWN, abi::retire::LEAVE] {
        let (log, _, _) =
            start_with(limits(), HashMap::new(), vec![], Some((rows(&[]), false))).stop_for(reason);
        assert_eq!(log.last().unwrap(), &format!("retire {reason}"), "{log:?}");
    }
}

#[test]
fn a_hard_destroy_deletes_then_retires_the_instance_for_good() {
    let harness = start_with(
        limits(),
        HashMap::new(),
        vec![],
        Some((rows(&[(1, 1, Some(ACCEPT))]), false)),
    );
    harness.wait_state("live");
    let job = Job::Destroy {
        degree: Degree::Hard,
        global_time: 9,
        keep: vec![(MemberId([1; 20]), 9)],
    };
    harness.jobs.try_send(job).unwrap();
    harness.wait_state("destroyed");
    let (log, _, shared) = harness.stop();
    let at = log
        .iter()
        .position(|l| l == "destroy 1 keep Some(1) above 9")
        .unwrap();
    // Retired once, for the destroy, after the deletion; the stop finds no instance left.
    assert_eq!(log[at + 1..], ["retire 5".to_owned()], "{log:?}");
    assert_eq!(shared.health().state, "destroyed");
}

#[test]
fn a_soft_destroy_that_deleted_messages_restores_a_new_instance_from_the_frozen_history() {
    let history = rows(&[(1, 1, Some(ACCEPT)), (1, 12, Some(ACCEPT))]);
    let harness = start_with(limits(), HashMap::new(), vec![], Some((history, false)));
    harness.wait_state("live");
    let job = Job::Destroy {
        degree: Degree::Soft,
        global_time: 10,
        keep: Vec::new(),
    };
    harness.jobs.try_send(job).unwrap();
    harness.wait_for("destroy 1 keep None above 10");
    let (log, _, shared) = harness.stop();
    let at = log
        .iter()
        .position(|l| l == "destroy 1 keep None above 10")
        .unwrap();
    assert_eq!(log[at + 1], "retire 1", "{log:?}");
    assert_eq!(log[at + 2], "create", "{log:?}");
    assert_eq!(shared.health().state, "live");
}

#[test]
fn a_restore_that_fails_takes_the_instance_down_like_a_panic() {
    for (history, why) in [
        ((rows(&[(1, 1, Some(PANIC))]), false), "panicked"),
        ((rows(&[(1, 1, Some(ACCEPT))]), true), "disk on fire"),
    ] {
        let h = start_with(limits(), HashMap::new(), Vec::new(), Some(history));
        h.wait_state("failed");
        let reason = h.shared.health().reason.unwrap_or_default();
        assert!(reason.contains(why), "{reason}");
        let (log, _, _) = h.stop();
        assert!(!log.contains(&"live".to_string()), "{log:?}");
    }
}

/// A live upgrade job to version `version` whose factory logs `create {version}` and fails
/// when `broken`; with the receiver of its answer.
fn upgrade_job(
    h: &Harness,
    version: &str,
    broken: bool,
) -> (
    Job,
    tokio::sync::oneshot::Receiver<Result<(), super::LifecycleError>>,
) {
    let (log, release) = (h.log.clone(), h.release.clone());
    let line = format!("create {version}");
    let factory: super::Factory = Box::new(move || {
        log.push(line.clone());
        if broken {
            return Err(PluginError::new(abi::ERROR_INTERNAL, "no luck"));
        }
        Ok(CommunityApi_TO::from_value(
            FakeCommunity {
                log: log.clone(),
                delayed: HashSet::new(),
                release: release.clone(),
                lifecycle: true,
            },
            TD_Opaque,
        ))
    });
    let mut definition = definition();
    definition.version = version.to_owned();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job::Upgrade {
        factory,
        definition: Box::new(definition),
        reply,
    };
    (job, answer)
}

#[test]
fn an_upgrade_retires_the_instance_then_restores_the_new_one_before_the_waiting_traffic() {
    let history = rows(&[(1, 1, Some(ACCEPT))]);
    let h = start_with(limits(), HashMap::new(), Vec::new(), Some((history, false)));
    h.wait_state("live");
    let (job, answer) = upgrade_job(&h, "2", false);
    h.jobs.try_send(job).unwrap();
    h.jobs
        .try_send(deliver(1, vec![message(1, 6, ACCEPT, Some(peer()))]))
        .unwrap();
    let (log, _, shared) = h.stop();
    assert_eq!(answer.blocking_recv().unwrap(), Ok(()));
    let log: Vec<String> = log.into_iter().filter(|l| !l.starts_with("page")).collect();
    assert_eq!(
        log,
        [
            "create",
            "restore [1] metas [1]",
            "live",
            "retire 2",
            "create 2",
            "restore [1] metas [1]",
            "live",
            "check 1 [6]",
            "insert [6]",
            "handle 1 [6]",
            "retire 0",
        ],
        "the old instance retires (UPGRADE), the new one gets the history, then the delivery \
         that waited in the queue"
    );
    let health = shared.health();
    assert_eq!(health.version.as_deref(), Some("2"));
    assert_eq!(health.previous_version.as_deref(), Some("1"));
    assert_eq!(health.upgrades, 1);
}

#[test]
fn a_failed_upgrade_rolls_back_to_a_new_instance_of_the_old_version() {
    let history = rows(&[(1, 1, Some(ACCEPT))]);
    let h = start_with(limits(), HashMap::new(), Vec::new(), Some((history, false)));
    h.wait_state("live");
    let (job, answer) = upgrade_job(&h, "2", true);
    h.jobs.try_send(job).unwrap();
    h.jobs
        .try_send(deliver(1, vec![message(1, 6, ACCEPT, Some(peer()))]))
        .unwrap();
    let (log, _, shared) = h.stop();
    let error = answer.blocking_recv().unwrap().unwrap_err();
    assert!(
        matches!(&error, super::LifecycleError::Upgrade { from, to, .. } if from == "1" && to == "2"),
        "{error}"
    );
    assert!(error.to_string().contains("no luck"), "{error}");
    let log: Vec<String> = log.into_iter().filter(|l| !l.starts_with("page")).collect();
    assert_eq!(
        log,
        [
            "create",
            "restore [1] metas [1]",
            "live",
            "retire 2",
            "create 2",
            "create",
            "restore [1] metas [1]",
            "live",
            "check 1 [6]",
            "insert [6]",
            "handle 1 [6]",
            "retire 0",
        ],
        "the old version runs again, restored, and handles the waiting delivery"
    );
    let health = shared.health();
    assert_eq!(health.state, "live");
    assert_eq!(health.version.as_deref(), Some("1"));
    assert_eq!(health.previous_version, None);
    assert_eq!(health.upgrades, 0);
}

#[test]
fn co_signing_falls_back_to_allow_signature_and_cosigned_takes_only_unchanged_answers() {
    use dispersy_core::signature::{Answer, Cosign};
    let ids = told_ids();
    let asked = |code: u8, request| Job::AllowSignature {
        ask: request,
        message: Box::new(message(1, 1, code, None).message.message),
    };
    let answered = |answer: Answer, request| Job::Cosigned {
        request: Some(request),
        token: 7,
        answer,
        message: Box::new(message(1, 1, ACCEPT, None).message.message),
    };
    let jobs = vec![
        asked(ACCEPT, ids[0]),
        asked(DROP, ids[1]),
        answered(Answer::Signed, ids[2]),
        answered(Answer::Appended, ids[3]),
        answered(Answer::Timeout, ids[0]),
    ];
    let (_, told, _) = start(limits(), HashMap::new(), jobs).stop();
    let verdicts: Vec<_> = told
        .iter()
        .filter_map(|c| match c {
            Command::SignatureVerdict { ask, verdict } => Some((*ask, verdict.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts, [(ids[0], Cosign::Sign), (ids[1], Cosign::Refuse)]);
    let decisions: Vec<_> = told
        .iter()
        .filter_map(|c| match c {
            Command::Cosigned { request, accept } => Some((*request, *accept)),
            _ => None,
        })
        .collect();
    // A plugin without `cosigned` publishes only an unchanged answer; a timeout is not told
    // back.
    assert_eq!(decisions, [(ids[2], true), (ids[3], false)]);
}
