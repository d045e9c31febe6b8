//! The community worker: one thread per community instance ([`Worker`]). Plugin calls are
//! synchronous and may be slow, and a plugin keeps its own copy of std and its statics, so it
//! never runs on a tokio worker. The thread receives [`Job`]s through a bounded channel, runs
//! check → store → handle for delivered messages (gathering what is waiting, up to the batch
//! bound), checks the messages this node creates before they are published, keeps delayed messages and plugin timers (both bounded), and answers the control API's
//! requests (JSON conversion, status), and asks the plugin about co-signing (`cosign` as the
//! second author, `cosigned` on the answer to a message it or the API proposed).
//!
//! Lifecycle of an instance, on this thread: create → restore (the stored history, in pages,
//! before the thread takes any job) → live → retire (before it is dropped, unless it panicked).
//!
//! Isolation. A thread stuck in plugin code cannot be killed, so the host works around it:
//! - every plugin call (`create` included) is noted in [`Shared`] with its start; once it runs
//!   past `limits.deadline` the community is *stuck* (the runtime's watchdog logs it once, the API
//!   and the metrics show it), [`Worker::submit`] refuses deliveries (counted as `plugin-stuck`)
//!   and API jobs at once, so nothing waits on it and its queue stops growing; when the call
//!   returns, it is live again;
//! - `create()` runs on the community's own thread: the registry waits for it at most the deadline;
//! - stopping is bounded ([`Worker::signal_stop`], [`Worker::wait_stopped`]): a thread still stuck
//!   at the deadline is left behind (detached) and logged;
//! - a panic in a call that changes the community (check, handle, timer, allow_signature,
//!   cosign, cosigned) poisons
//!   the instance: the thread creates a new one from the same library after a backoff (doubling
//!   per restart) and hands it the community's history (`WorkerLoop::restore`); after `limits.restarts` restarts within `limits.restart_window` the next panic
//!   leaves the community failed, with its reason.
//!
//! Lifecycle. The operator changes an instance through [`Worker::control`] ([`Change`], run on
//! the community's thread between jobs): *disable* drops the instance from use (leaked, like a
//! panicked one), its timers and delayed messages, and refuses deliveries (counted as
//! `plugin-down`) until *enable* creates a new instance; *restart* drops the instance and
//! creates a new one at once (counted apart from the restarts after panics). A new instance
//! goes through `create()` and `WorkerLoop::restore` like a restarted one, and gets the full
//! budget of panic restarts again. A stuck community refuses every change (its thread is in
//! the plugin).

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RSlice, RStr, RString, RVec};
use dispersy_core::authority::Degree;
use dispersy_core::bloom::PacketHash;
use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, MemberId, PublicKey};
use dispersy_core::meta::builtin;
use dispersy_core::missing::Awaited;
use dispersy_core::node::{Incoming, Refusal};
use dispersy_core::signature::{Answer, Cosign};
use dispersy_core::stats::DropReason;
use dispersy_core::store::{Entry, Report};
use dispersy_plugin_api::abi::{self, CommunityBox, HostApi_TO, PluginError, RawMessage};
use tokio::sync::{mpsc, oneshot};

use super::history::{self, History};
use super::host::{Delivered, HostHandle, Life, Shared};
use super::load::Plugin;
use super::queue;
use crate::command::Command;
use crate::mutex::lock;
use crate::store::{HistoryQuery, Insert, InsertSender, NewMessage, Outcome};

/// Bounds of one worker.
#[derive(Debug, Clone)]
pub struct WorkerLimits {
    /// Jobs waiting for the thread.
    pub queue: usize,
    /// Messages taken from the queue for one check → store → handle round.
    pub batch: usize,
    /// Recently delivered messages kept for the API.
    pub recent: usize,
    /// Delayed messages kept.
    pub delayed: usize,
    /// Longest a message stays delayed.
    pub delay_timeout: Duration,
    /// Timers scheduled at once.
    pub timers: usize,
    /// Longest a plugin call may run before the community is reported stuck.
    pub deadline: Duration,
    /// Restarts after panics allowed within `restart_window`.
    pub restarts: u32,
    /// The window over which restarts are counted.
    pub restart_window: Duration,
    /// Wait before the first restart; doubled for each restart within the window.
    pub restart_backoff: Duration,
    /// Stored messages per page of a restore, and at most per page of a plugin's read.
    pub read_page: u32,
}

/// A payload a plugin encoded from JSON: the conversion it chose (`None`: a plugin older than
/// `payload_from_json_in`, whose payloads are in the community's first conversion) and the
/// bytes.
pub type Encoded = (Option<Vec<u8>>, Vec<u8>);

/// Work for a community's thread.
pub enum Job {
    /// Verified messages of one meta from the protocol task.
    Deliver {
        /// Meta-message type.
        meta: u32,
        /// The messages.
        messages: Vec<Incoming>,
    },
    /// Render payloads as JSON (one result per item).
    ToJson {
        /// (meta, conversion, payload) triples.
        items: Vec<(u32, Vec<u8>, Vec<u8>)>,
        /// The answer.
        reply: oneshot::Sender<Vec<Result<serde_json::Value, String>>>,
    },
    /// Encode a JSON payload.
    FromJson {
        /// Meta-message type.
        meta: u32,
        /// The JSON text.
        json: String,
        /// The answer: the conversion the plugin wrote the payload in (`None`: a plugin older
        /// than `payload_from_json_in`, which writes the community's first), and the payload.
        reply: oneshot::Sender<Result<Encoded, PluginError>>,
    },
    /// The plugin's status document.
    Status {
        /// The answer.
        reply: oneshot::Sender<Result<serde_json::Value, PluginError>>,
    },
    /// A message this node created, signed and not yet sent or stored: run the plugin's check
    /// on it (the same check as for received messages) and tell the protocol task the verdict
    /// ([`Command::CreatedChecked`]). Delay and wait verdicts refuse it: a new message is checked
    /// once, now.
    CheckCreated {
        /// The protocol task's request.
        request: dispersy_core::node::RequestId,
        /// The message (no source).
        message: Box<Incoming>,
    },
    /// Another member proposes a double-member message with ours as second author: ask the
    /// plugin whether we sign.
    AllowSignature {
        /// The protocol task's question.
        ask: dispersy_core::node::RequestId,
        /// The message.
        message: Box<dispersy_core::wire::CommunityMessage>,
    },
    /// The co-signer answered a double-member message this node proposed (or it expired): ask
    /// the plugin whether to publish it (`cosigned(token, ...)`) and tell the protocol task
    /// ([`Command::Cosigned`]); an expiry is only told to the plugin.
    Cosigned {
        /// The protocol task's request; `None` for a proposal that could not be started (a
        /// timeout, nothing to tell back).
        request: Option<dispersy_core::node::RequestId>,
        /// The plugin's token (`HostApi::propose`); 0 for a message the control API proposed.
        token: u64,
        /// What the co-signer did.
        answer: dispersy_core::signature::Answer,
        /// The message as the co-signer signed it (the proposed one for a timeout).
        message: Box<dispersy_core::wire::CommunityMessage>,
    },
    /// An operator's change of the instance (see [`Worker::control`]).
    Lifecycle {
        /// The change.
        change: Change,
        /// The answer: the state after it, or why not.
        reply: oneshot::Sender<Result<(), LifecycleError>>,
    },
    /// A live upgrade: retire the instance (`retire(UPGRADE)`, leaked), create one from the new
    /// library, restore it from the store, go live (see [`Worker::upgrade`]).
    Upgrade {
        /// Makes instances of the new version.
        factory: Factory,
        /// The new version's definition.
        definition: Box<Definition>,
        /// The answer: done, or why not (rolled back to the old version).
        reply: oneshot::Sender<Result<(), LifecycleError>>,
    },
    /// Stored messages became hidden or visible again: tell the plugin
    /// (`CommunityApi::undone`, see [`super::undone`]).
    Undone(super::undone::Notice),
    /// A destroy-community ended (hard) or froze (soft) the community
    /// ([`dispersy_core::node::Event::Destroyed`]), after the jobs queued before it: delete
    /// what it does not keep; hard: retire the instance (`retire(DESTROYED)`) for good; soft:
    /// restart it from the frozen history when messages were deleted.
    Destroy {
        /// Hard or soft.
        degree: Degree,
        /// The destroy's global time (soft: the freeze).
        global_time: u64,
        /// Hard: the messages kept, by (first author, global time).
        keep: Vec<(MemberId, u64)>,
    },
    /// Retroactive re-evaluation (the core's `Event::Reevaluate`): set or clear the denied
    /// bit of the stored messages of `meta` span by span, then tell the plugin of the ones
    /// whose visibility flipped (see [`super::undone`]). On this thread, the community's one
    /// writer, after the messages queued before it are stored.
    Reevaluate {
        /// The plugin meta-message type.
        meta: u32,
        /// Whose messages, over which spans.
        spans: Vec<dispersy_core::timeline::Reevaluation>,
    },
    /// A timer was scheduled: recompute the wake-up time.
    Wake,
    /// Finish the jobs queued before this one, then retire the instance for this
    /// [`abi::retire`] reason and end the thread.
    Stop(u8),
}

/// Why a job was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is full.
    #[error("the community's queue is full")]
    Full,
    /// The thread is gone.
    #[error("the community's thread has stopped")]
    Stopped,
    /// A plugin call has run past its deadline.
    #[error(
        "community {community} is stuck: its plugin call `{call}` has run for more than {deadline_ms} ms"
    )]
    Stuck {
        /// Community type name.
        community: String,
        /// The call.
        call: &'static str,
        /// The deadline.
        deadline_ms: u64,
    },
    /// The plugin is restarting after a panic, or failed for good.
    #[error("community {community} is disabled ({state}): {reason}")]
    Down {
        /// Community type name.
        community: String,
        /// `restarting` or `failed`.
        state: &'static str,
        /// Why.
        reason: String,
    },
}

impl QueueError {
    /// The reason under which refused messages are counted.
    pub fn drop_reason(&self) -> DropReason {
        match self {
            QueueError::Full => DropReason::PluginQueueFull,
            QueueError::Stopped => DropReason::NoPlugin,
            QueueError::Stuck { .. } => DropReason::PluginStuck,
            QueueError::Down { .. } => DropReason::PluginDown,
        }
    }
}

/// An operator's change of a community's instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Drop the instance from use; deliveries are refused (counted) until enabled.
    Disable,
    /// A new instance for a disabled or failed community.
    Enable,
    /// Drop the instance and create a new one (a live, restarting or failed community).
    Restart,
}

impl Change {
    /// The change's name in the API and the log: `disable`, `enable` or `restart`.
    pub fn name(self) -> &'static str {
        match self {
            Change::Disable => "disable",
            Change::Enable => "enable",
            Change::Restart => "restart",
        }
    }
}

/// Why an operator's change of a community was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The community is not in a state the change applies to.
    #[error("cannot {change} community {community}: it is {state}{hint}")]
    Conflict {
        /// The change asked for.
        change: &'static str,
        /// Community type name.
        community: String,
        /// Its state.
        state: &'static str,
        /// What to do instead, starting with `; ` (or empty).
        hint: &'static str,
    },
    /// The new instance's `create()` failed: the community is failed now.
    #[error("community {community}: create() of the new instance failed: {reason}")]
    Create {
        /// Community type name.
        community: String,
        /// The plugin's error.
        reason: String,
    },
    /// The new version's instance failed to be created or restored: the community was rolled
    /// back to the version it ran before (a new instance of it).
    #[error(
        "community {community}: upgrade from {from} to {to} failed, rolled back to {from}: {reason}"
    )]
    Upgrade {
        /// Community type name.
        community: String,
        /// The version it runs (again).
        from: String,
        /// The version refused.
        to: String,
        /// What failed.
        reason: String,
    },
    /// The job could not be queued, or its thread did not answer.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Makes a new instance of the community (the plugin's `create()` with a fresh host handle).
pub type Factory = Box<dyn FnMut() -> Result<CommunityBox, PluginError> + Send>;

/// The answer of a community's first `create()`, sent by its thread.
pub type Created = oneshot::Receiver<Result<(), PluginError>>;

/// The handle of one community's thread.
pub struct Worker {
    jobs: queue::Sender<Job>,
    /// Shared state.
    pub shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Disconnected once the thread has ended.
    done: Mutex<Receiver<()>>,
    /// The host handle every instance gets a clone of (an upgraded one too).
    host: HostHandle,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

/// What a worker needs besides the plugin.
pub struct WorkerContext {
    /// The community.
    pub community: CommunityId,
    /// Its definition.
    pub definition: Definition,
    /// Its row in the store.
    pub community_row: i64,
    /// The node's member key.
    pub member: PublicKey,
    /// Commands to the protocol task.
    pub commands: mpsc::Sender<Command>,
    /// Inserts to the store task.
    pub store: InsertSender,
    /// Reads of the community's stored history (restore and the plugin's reads); `None`: the
    /// instance starts without history and the plugin's reads are refused.
    pub history: Option<Arc<dyn History>>,
    /// Bounds.
    pub limits: WorkerLimits,
}

impl Worker {
    /// Starts the community's thread, which creates the instance (`create()`, under the call
    /// deadline like every plugin call) and then runs its jobs. Returns at once, with the
    /// receiver of `create()`'s answer: on an error the thread has ended; if the answer does
    /// not come in time, the community shows as stuck, and as live or failed once it comes.
    pub fn start(
        plugin: &Plugin,
        context: WorkerContext,
    ) -> Result<(Worker, Created), PluginError> {
        let shared = Arc::new(Shared::new(
            &context.definition.name,
            &context.definition.version,
            context.limits.deadline,
        ));
        let (jobs, receiver) = queue::bounded(context.limits.queue);
        let host = HostHandle {
            community: context.community,
            name: context.definition.name.clone(),
            member: context.member.clone(),
            commands: context.commands.clone(),
            shared: shared.clone(),
            wake: jobs.clone(),
            max_timers: context.limits.timers,
            history: context.history.clone(),
            community_row: context.community_row,
            read_page: context.limits.read_page,
        };
        let factory = factory(plugin, host.clone());
        let (created_tx, created) = oneshot::channel();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("community-{}", context.definition.name))
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _done = done_tx;
                WorkerLoop::new(None, factory, context, thread_shared).start(receiver, created_tx);
            })
            .map_err(|e| PluginError::new(abi::ERROR_HOST, format!("spawning thread: {e}")))?;
        let worker = Worker {
            jobs,
            shared,
            thread: Mutex::new(Some(thread)),
            done: Mutex::new(done),
            host,
        };
        Ok((worker, created))
    }

    /// Queues a live upgrade to `plugin` (a newer build of the same community, checked by the
    /// registry): between jobs, the thread retires the instance (`retire(UPGRADE)`; it is leaked,
    /// and its library is never unloaded), creates one from `plugin`, restores it from the store
    /// and makes it live; deliveries that arrive meanwhile wait in the queue. If the new instance
    /// cannot be created or restored, the thread rolls back: a new instance of the version it ran
    /// ([`LifecycleError::Upgrade`]). A disabled community only switches its code (enable
    /// creates the new version). Refused at once while stuck or with a full queue.
    pub fn upgrade(
        &self,
        plugin: &Plugin,
    ) -> Result<oneshot::Receiver<Result<(), LifecycleError>>, QueueError> {
        self.ask(|reply| Job::Upgrade {
            factory: factory(plugin, self.host.clone()),
            definition: Box::new(plugin.definition.clone()),
            reply,
        })
    }

    /// The community type's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Queues a job without blocking. Refused at once while the community is stuck,
    /// restarting or failed (refused deliveries are counted in the community's stats).
    pub fn submit(&self, job: Job) -> Result<(), QueueError> {
        if let Some(refusal) = self.refusal() {
            if let Job::Deliver { messages, .. } = &job {
                lock(&self.shared.stats).drop_reason(refusal.drop_reason(), messages.len() as u64);
            }
            return Err(refusal);
        }
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                lock(&self.shared.stats).queue_full += 1;
                QueueError::Full
            }
            TrySendError::Disconnected(_) => QueueError::Stopped,
        })
    }

    /// Queues a job that writes the store ([`Job::Destroy`], [`Job::Reevaluate`]) whatever the
    /// instance's state (a disabled, failed, stuck or destroyed community writes too, once its
    /// thread is free); refused only when the queue is full or the thread has ended.
    pub fn submit_write(&self, job: Job) -> Result<(), QueueError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full,
            TrySendError::Disconnected(_) => QueueError::Stopped,
        })
    }

    /// Why jobs are refused now, if they are.
    fn refusal(&self) -> Option<QueueError> {
        let community = self.shared.name.clone();
        match &*lock(&self.shared.life) {
            Life::Failed { reason, .. } => {
                return Some(QueueError::Down {
                    community,
                    state: "failed",
                    reason: reason.clone(),
                });
            }
            Life::Restarting { reason, .. } => {
                return Some(QueueError::Down {
                    community,
                    state: "restarting",
                    reason: reason.clone(),
                });
            }
            Life::Disabled { .. } => {
                return Some(QueueError::Down {
                    community,
                    state: "disabled",
                    reason: "disabled by the operator".to_owned(),
                });
            }
            Life::Destroyed { .. } => {
                return Some(QueueError::Down {
                    community,
                    state: "destroyed",
                    reason: "destroyed by a hard destroy-community message".to_owned(),
                });
            }
            Life::Starting | Life::Live => {}
        }
        self.shared.stuck().map(|(call, _)| QueueError::Stuck {
            community,
            call,
            deadline_ms: self.shared.deadline.as_millis() as u64,
        })
    }

    /// Queues an operator's change of the instance; the answer comes on the returned receiver
    /// once the thread ran it. Refused at once while the community is stuck (its thread is in
    /// the plugin) or its queue is full; unlike [`Worker::submit`], a restarting, failed or
    /// disabled community takes it.
    pub fn control(
        &self,
        change: Change,
    ) -> Result<oneshot::Receiver<Result<(), LifecycleError>>, QueueError> {
        self.ask(|reply| Job::Lifecycle { change, reply })
    }

    /// Queues the job `job` makes of a reply channel, refused at once while the community is
    /// stuck (its thread is in the plugin) or its queue is full; the answer comes on the
    /// returned receiver once the thread ran it.
    fn ask(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<(), LifecycleError>>) -> Job,
    ) -> Result<oneshot::Receiver<Result<(), LifecycleError>>, QueueError> {
        if let Some((call, _)) = self.shared.stuck() {
            return Err(QueueError::Stuck {
                community: self.shared.name.clone(),
                call,
                deadline_ms: self.shared.deadline.as_millis() as u64,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.jobs.try_send(job(reply)).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full,
            TrySendError::Disconnected(_) => QueueError::Stopped,
        })?;
        Ok(answer)
    }

    /// Asks the thread to stop after the jobs already queued, or, when its queue is full, after
    /// the job it is on. Never blocks. (Dropping the sender is not enough: the community's host
    /// handle holds a sender too, to wake the thread for timers.)
    pub fn signal_stop(&self) {
        self.signal_stop_for(abi::retire::SHUTDOWN);
    }

    /// [`Worker::signal_stop`], the instance retired for the [`abi::retire`] reason `reason`.
    fn signal_stop_for(&self, reason: u8) {
        if self.jobs.try_send(Job::Stop(reason)).is_err() {
            self.shared.stop_now.store(true, Ordering::Relaxed);
            // Wakes a thread waiting for a job (a full queue has one waiting anyway).
            let _ = self.jobs.try_send(Job::Wake);
        }
    }

    /// Waits until the thread ended, at most until `deadline`; returns whether it did. A thread
    /// still running then (stuck in a plugin call) is left behind, detached: it cannot be killed.
    pub fn wait_stopped(&self, deadline: Instant) -> bool {
        let ended = {
            let done = lock(&self.done);
            matches!(
                done.recv_timeout(deadline.saturating_duration_since(Instant::now())),
                Err(RecvTimeoutError::Disconnected) | Ok(())
            )
        };
        if !ended {
            return false;
        }
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // A plugin that panicked was caught at the boundary; a join error means a panic in
            // the host's own loop, already reported by the panic hook.
            let _ = thread.join();
        }
        true
    }

    /// Stops the thread after the jobs already queued (the instance retired for the
    /// [`abi::retire`] reason `reason`), waiting for it at most `timeout`; returns whether it
    /// ended.
    pub fn stop(&self, timeout: Duration, reason: u8) -> bool {
        self.signal_stop_for(reason);
        self.wait_stopped(Instant::now() + timeout)
    }
}

/// The factory of `plugin`'s instances, each with a clone of `host`.
fn factory(plugin: &Plugin, host: HostHandle) -> Factory {
    let create = plugin.module.create();
    Box::new(move || create(HostApi_TO::from_value(host.clone(), TD_Opaque)).into_result())
}

struct DelayedMessage {
    meta: u32,
    message: Incoming,
    retry_at: Instant,
    expires_at: Instant,
}

/// Flipped ids a re-evaluation reads per statement from the store's journal
/// (`Store::mark_range`, after the flags are committed); the plugin is told of them in pages
/// of `limits.read_page`. Large, so that a range of a million rows costs tens of statements,
/// not thousands (the ids of one page: 128 KiB).
pub const MARK_PAGE: usize = 16_384;

/// The calls that may change a community: a panic in one poisons the instance.
const MUTATING: [&str; 10] = [
    "check",
    "handle",
    "timer",
    "allow_signature",
    "cosign",
    "cosigned",
    "restore",
    "live",
    "retire",
    "undone",
];

struct WorkerLoop {
    /// `None` before `create()` returned, and after a panic until the restart.
    instance: Option<CommunityBox>,
    factory: Factory,
    context: WorkerContext,
    shared: Arc<Shared>,
    delayed: VecDeque<DelayedMessage>,
    /// When the next restart is due, after a panic.
    restart_at: Option<Instant>,
    /// Restarts within the restart window, oldest first.
    restarted: VecDeque<Instant>,
}

impl WorkerLoop {
    fn new(
        instance: Option<CommunityBox>,
        factory: Factory,
        context: WorkerContext,
        shared: Arc<Shared>,
    ) -> Self {
        if instance.is_some() {
            *lock(&shared.life) = Life::Live;
        }
        WorkerLoop {
            instance,
            factory,
            context,
            shared,
            delayed: VecDeque::new(),
            restart_at: None,
            restarted: VecDeque::new(),
        }
    }

    /// Creates the instance, tells `created`, then runs the jobs. A failed `create()` ends the
    /// thread when the registry still waits for the answer (it refuses the plugin), and leaves
    /// the community failed otherwise.
    /// The registry is told as soon as `create()` returned, before the restore, which may be long
    /// for a large history (each page is a call under the deadline of its own).
    fn start(
        mut self,
        jobs: queue::Receiver<Job>,
        created: oneshot::Sender<Result<(), PluginError>>,
    ) {
        match self.make() {
            Ok(()) => {
                let _ = created.send(Ok(()));
                if self.restore() {
                    *lock(&self.shared.life) = Life::Live;
                }
            }
            Err(error) => {
                self.fail(format!("create() failed: {}", error.message));
                if created.send(Err(error)).is_ok() {
                    return;
                }
            }
        }
        self.run(jobs);
    }

    /// A new instance from the factory, under the call deadline, given the community's history.
    fn create(&mut self) -> Result<(), PluginError> {
        self.make()?;
        if self.restore() {
            *lock(&self.shared.life) = Life::Live;
        }
        Ok(())
    }

    /// A new instance from the factory (`create()`), under the call deadline.
    fn make(&mut self) -> Result<(), PluginError> {
        self.shared.begin_call("create");
        let made = (self.factory)();
        self.shared.end_call();
        self.instance = Some(made?);
        Ok(())
    }

    /// Lifecycle step *restore*, then *live*: gives a new instance (first start or restart) the
    /// community's stored history before any live traffic, in pages of `limits.read_page`
    /// messages, oldest first in row-id order, then calls `live`. It runs on the community's
    /// thread before the thread takes any job, and this thread is the only writer of the
    /// community's rows, so the history cannot change meanwhile: every message is either in
    /// the pages (stored before) or still in the queue (checked, stored and handled after),
    /// never both, never neither. A stored row that does not decode is skipped (logged). A
    /// failed read or a panic takes the instance down like a panic in a handler (a restart
    /// with backoff, within the restart limit), since an instance with part of its history
    /// would be wrong. Returns whether the instance is live.
    fn restore(&mut self) -> bool {
        let Some(history) = self.context.history.clone() else {
            return self.live();
        };
        let page = self.context.limits.read_page.max(1);
        let mut after = 0;
        loop {
            let rows =
                match history.page(self.context.community_row, &HistoryQuery::all(after, page)) {
                    Ok(rows) => rows,
                    Err(error) => {
                        self.panicked(format!("restoring the history failed: {error}"));
                        return false;
                    }
                };
            let Some(last) = rows.last() else {
                break;
            };
            after = last.id;
            let full = rows.len() == page as usize;
            let batch: Vec<RawMessage> = rows
                .iter()
                .filter_map(|row| match history::decode(row) {
                    Ok(raw) => Some(raw),
                    Err(error) => {
                        tracing::warn!(community = %self.shared.name, %error, "left out of the restore");
                        None
                    }
                })
                .collect();
            if !batch.is_empty()
                && let Err(error) = self.call("restore", |instance| {
                    instance.restore(RSlice::from(&batch[..]))
                })
            {
                if self.instance.is_none() {
                    return false;
                }
                self.report(&error);
            }
            if !full {
                break;
            }
        }
        self.live()
    }

    /// Lifecycle step *live*; whether the instance is still there after it.
    fn live(&mut self) -> bool {
        if let Err(error) = self.call("live", |instance| instance.live()) {
            self.report(&error);
        }
        self.instance.is_some()
    }

    /// Lifecycle's last step: tells the instance it is dropped for `reason` (an
    /// [`abi::retire`] code), then takes it out of use. It is leaked, not dropped: its
    /// destructor is plugin code, and a panic there would abort the process.
    fn retire(&mut self, reason: u8) {
        if self.instance.is_none() {
            return;
        }
        if let Err(error) = self.call("retire", |instance| instance.retire(reason)) {
            self.report(&error);
        }
        if let Some(old) = self.instance.take() {
            std::mem::forget(old);
        }
    }

    /// Runs plugin call `name` on the instance, noted for the watchdog. A panic in a call that
    /// changes the community (or a poisoned instance) takes the instance down for a restart.
    fn call<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut CommunityBox) -> abi_stable::std_types::RResult<T, PluginError>,
    ) -> Result<T, PluginError> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(self.down_error());
        };
        self.shared.begin_call(name);
        let result = f(instance).into_result();
        self.shared.end_call();
        if let Err(error) = &result
            && (error.code == abi::ERROR_POISONED
                || (error.code == abi::ERROR_PANIC && MUTATING.contains(&name)))
        {
            self.panicked(error.message.to_string());
        }
        result
    }

    /// The error of a call while there is no instance.
    fn down_error(&self) -> PluginError {
        let state = self.shared.health();
        PluginError::new(
            abi::ERROR_HOST,
            format!(
                "community {} is disabled ({}): {}",
                self.shared.name,
                state.state,
                state.reason.unwrap_or_default()
            ),
        )
    }

    /// The instance panicked: it is dropped from use (leaked, not dropped: a panic in its
    /// destructor would abort the process), and a restart is scheduled after a backoff, unless
    /// the restarts within the window are used up: then the community fails for good.
    fn panicked(&mut self, reason: String) {
        if let Some(old) = self.instance.take() {
            std::mem::forget(old);
        }
        lock(&self.shared.timers).clear();
        let now = Instant::now();
        let limits = &self.context.limits;
        while self
            .restarted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= limits.restart_window)
        {
            self.restarted.pop_front();
        }
        let done = self.restarted.len();
        if done >= limits.restarts as usize {
            tracing::error!(community = %self.shared.name, restarts = done, %reason, "community failed: its plugin panicked again after its restarts; it stays disabled");
            self.fail(reason);
            return;
        }
        let backoff = limits
            .restart_backoff
            .saturating_mul(1u32.checked_shl(done as u32).unwrap_or(u32::MAX));
        tracing::warn!(community = %self.shared.name, %reason, backoff_ms = backoff.as_millis() as u64, restart = done + 1, of = limits.restarts, "community's plugin panicked; restarting it");
        self.restart_at = Some(now + backoff);
        *lock(&self.shared.life) = Life::Restarting {
            reason,
            since: SystemTime::now(),
        };
    }

    /// Down for good, with `reason`.
    fn fail(&mut self, reason: String) {
        self.restart_at = None;
        lock(&self.shared.stats).failed = Some(reason.clone());
        *lock(&self.shared.life) = Life::Failed {
            reason,
            since: SystemTime::now(),
        };
    }

    /// Restarts the instance when its restart is due.
    fn restart_if_due(&mut self) {
        let now = Instant::now();
        if self.restart_at.is_none_or(|at| at > now) {
            return;
        }
        self.restart_at = None;
        self.restarted.push_back(now);
        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
        match self.create() {
            Ok(()) => {
                tracing::info!(community = %self.shared.name, restarts = self.shared.restarts.load(Ordering::Relaxed), "community restarted");
            }
            Err(error) => self.panicked(format!("create() failed on restart: {}", error.message)),
        }
    }

    fn run(mut self, jobs: queue::Receiver<Job>) {
        // A job taken from the queue while gathering a batch, to run right after it.
        let mut next: Option<Job> = None;
        // Why the instance is retired when the loop ends (a disconnected queue: the host stops).
        let mut retire = abi::retire::SHUTDOWN;
        loop {
            if self.shared.stop_now.load(Ordering::Relaxed) {
                break;
            }
            let job = match next.take() {
                Some(job) => Ok(job),
                None => {
                    let now = Instant::now();
                    let next_timer = lock(&self.shared.timers).peek().map(|t| t.0.0);
                    let next_delay = self.delayed.iter().map(|d| d.retry_at).min();
                    let wake = [next_timer, next_delay, self.restart_at]
                        .into_iter()
                        .flatten()
                        .min();
                    match wake {
                        Some(at) => jobs.recv_timeout(at.saturating_duration_since(now)),
                        None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    }
                }
            };
            match job {
                Ok(Job::Stop(reason)) => {
                    retire = reason;
                    break;
                }
                Ok(Job::Deliver { meta, messages }) => {
                    // Take every delivery already waiting (up to the batch bound): one check per
                    // meta, one store transaction and one handle per meta for all of them.
                    let mut batch = Batch::default();
                    batch.add(meta, messages);
                    while batch.len < self.context.limits.batch {
                        match jobs.try_recv() {
                            Ok(Job::Deliver { meta, messages }) => batch.add(meta, messages),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.deliver(batch);
                }
                Ok(job) => self.process(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.restart_if_due();
            self.fire_timers();
            self.retry_delayed();
        }
        if !self.shared.stop_now.load(Ordering::Relaxed) {
            self.retire(retire);
        }
    }

    fn process(&mut self, job: Job) {
        match job {
            Job::Deliver { meta, messages } => {
                let mut batch = Batch::default();
                batch.add(meta, messages);
                self.deliver(batch);
            }
            Job::ToJson { items, reply } => {
                let rendered = items
                    .into_iter()
                    .map(|(meta, conversion, payload)| {
                        let json = self
                            .call("to_json", |instance| {
                                instance.payload_to_json(
                                    meta,
                                    RSlice::from(&conversion[..]),
                                    RSlice::from(&payload[..]),
                                )
                            })
                            .map_err(|e| e.message.to_string())?;
                        serde_json::from_str(json.as_str()).map_err(|e| e.to_string())
                    })
                    .collect();
                let _ = reply.send(rendered);
            }
            Job::FromJson { meta, json, reply } => {
                let running = self.instance.is_some();
                let result = self
                    .call("from_json", |instance| {
                        instance.payload_from_json_in(meta, RStr::from(json.as_str()))
                    })
                    .map(|e| (Some(e.conversion.into_vec()), e.payload.into_vec()));
                // A plugin older than `payload_from_json_in`: its first conversion.
                let result = match result {
                    Err(e) if e.code == abi::ERROR_ABSENT => self
                        .call("from_json", |instance| {
                            instance.payload_from_json(meta, RStr::from(json.as_str()))
                        })
                        .map(|payload| (None, payload.into_vec())),
                    other => other,
                };
                if let Err(e) = &result
                    && e.code != abi::ERROR_INVALID
                    && running
                {
                    lock(&self.shared.stats).error(e);
                }
                let _ = reply.send(result);
            }
            Job::Status { reply } => {
                let running = self.instance.is_some();
                let result = self
                    .call("status", |instance| instance.status())
                    .and_then(|text| {
                        serde_json::from_str(text.as_str()).map_err(|e| {
                            PluginError::new(
                                abi::ERROR_INTERNAL,
                                format!("status is not JSON: {e}"),
                            )
                        })
                    });
                if let Err(e) = &result
                    && running
                {
                    lock(&self.shared.stats).error(e);
                }
                let _ = reply.send(result);
            }
            Job::AllowSignature { ask, message } => {
                let verdict = self.cosign(&message);
                self.tell(Command::SignatureVerdict { ask, verdict });
            }
            Job::Cosigned {
                request,
                token,
                answer,
                message,
            } => {
                let accept = self.cosigned(token, answer, &message);
                if let (Some(request), false) = (request, answer == Answer::Timeout) {
                    self.tell(Command::Cosigned { request, accept });
                }
            }
            Job::CheckCreated { request, message } => {
                let verdict = self.check_created(&message);
                if let Err(refusal) = &verdict {
                    tracing::debug!(community = %self.context.definition.name, %refusal, "created message refused");
                }
                self.tell(Command::CreatedChecked { request, verdict });
            }
            Job::Lifecycle { change, reply } => {
                let _ = reply.send(self.change(change));
            }
            Job::Upgrade {
                factory,
                definition,
                reply,
            } => {
                let _ = reply.send(self.upgrade(factory, *definition));
            }
            Job::Undone(notice) => self.tell_undone(&notice),
            Job::Destroy {
                degree,
                global_time,
                keep,
            } => self.destroy(degree, global_time, &keep),
            Job::Reevaluate { meta, spans } => self.reevaluate(meta, spans),
            Job::Wake | Job::Stop(_) => {}
        }
    }

    /// Applies a re-evaluation's spans to the store's denied bits, each span one range update
    /// (`Store::mark_range`), then tells the instance of the rows that flipped. A failed
    /// update is logged (error): its flags stay as they were until the next change.
    fn reevaluate(&mut self, meta: u32, spans: Vec<dispersy_core::timeline::Reevaluation>) {
        let Some(history) = self.context.history.clone() else {
            return;
        };
        for reevaluation in spans {
            for span in reevaluation.spans {
                let range = crate::store::Span {
                    community: self.context.community_row,
                    meta,
                    authors: reevaluation.authors.clone(),
                    low: span.low,
                    high: span.high,
                };
                let mut tell = |ids| {
                    self.tell_undone(&super::undone::Notice {
                        ids,
                        undone: !span.allowed,
                        why: super::undone::Why::Denied,
                    });
                };
                if let Err(error) = history.deny(&range, !span.allowed, MARK_PAGE, &mut tell) {
                    tracing::error!(community = %self.shared.name, meta, %error, "re-evaluation not applied");
                }
            }
        }
    }

    /// Tells the instance of the rows `notice` names, in pages of `limits.read_page` (see
    /// [`super::undone`]). Nothing without an instance; a row that is gone or does not decode
    /// is left out (logged); a failed read ends the notice (logged).
    fn tell_undone(&mut self, notice: &super::undone::Notice) {
        let Some(history) = self.context.history.clone() else {
            return;
        };
        let page = self.context.limits.read_page.max(1) as usize;
        for ids in notice.ids.chunks(page) {
            if self.instance.is_none() {
                return;
            }
            let rows = match history.rows(ids) {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(community = %self.shared.name, %error, "hidden messages not told to the plugin");
                    return;
                }
            };
            let batch: Vec<abi::RawUndone> = rows
                .iter()
                .filter_map(|row| match history::decode(row) {
                    Ok(raw) => Some(notice.why.raw(raw, notice.undone)),
                    Err(error) => {
                        tracing::warn!(community = %self.shared.name, %error, "left out of an undone notice");
                        None
                    }
                })
                .collect();
            if batch.is_empty() {
                continue;
            }
            if let Err(error) = self.call("undone", |instance| {
                instance.undone(RSlice::from(&batch[..]))
            }) {
                self.report(&error);
            }
        }
    }

    /// Carries out [`Job::Destroy`], logged.
    fn destroy(&mut self, degree: Degree, global_time: u64, keep: &[(MemberId, u64)]) {
        let hard = degree == Degree::Hard;
        let removed = match &self.context.history {
            Some(history) => history.destroy(
                self.context.community_row,
                hard.then_some(keep),
                global_time,
            ),
            None => Err("this community has no store".to_owned()),
        };
        let removed = removed.unwrap_or_else(|error| {
            tracing::warn!(community = %self.shared.name, %error, "a destroyed community's messages were not deleted");
            0
        });
        if hard {
            let again = matches!(*lock(&self.shared.life), Life::Destroyed { .. });
            self.put_down(abi::retire::DESTROYED);
            *lock(&self.shared.life) = Life::Destroyed {
                since: SystemTime::now(),
            };
            if !again {
                tracing::warn!(community = %self.shared.name, global_time, removed, kept = keep.len(), "community destroyed (hard): its plugin instance is retired and every stored message but the destroy and its proof is deleted");
            }
            return;
        }
        tracing::warn!(community = %self.shared.name, freeze = global_time, removed, "community frozen (soft destroy): nothing above its global time is kept or accepted");
        if removed > 0 && self.instance.is_some() {
            // Its state must be that of the frozen history.
            self.put_down(abi::retire::RESTART);
            if let Err(error) = self.renew() {
                tracing::warn!(community = %self.shared.name, %error, "the frozen community's new instance failed");
            }
        }
    }

    /// Makes an operator's change (see [`Change`]), logged.
    fn change(&mut self, change: Change) -> Result<(), LifecycleError> {
        let state = self.shared.health().state;
        let conflict = |hint: &'static str| LifecycleError::Conflict {
            change: change.name(),
            community: self.shared.name.clone(),
            state,
            hint,
        };
        match (change, state) {
            (_, "starting") => Err(conflict("")),
            (_, "destroyed") => Err(conflict("; a destroyed community runs no instance again")),
            (Change::Disable, "disabled") => Err(conflict("")),
            (Change::Disable, _) => {
                self.put_down(abi::retire::DISABLE);
                *lock(&self.shared.life) = Life::Disabled {
                    since: SystemTime::now(),
                };
                tracing::info!(community = %self.shared.name, was = state, "community disabled by the operator: its instance is dropped, deliveries to it are refused and counted until it is enabled");
                Ok(())
            }
            (Change::Enable, "disabled" | "failed") => {
                self.renew()?;
                tracing::info!(community = %self.shared.name, was = state, "community enabled by the operator: a new instance runs");
                Ok(())
            }
            (Change::Enable, "restarting") => Err(conflict("; restart it to skip the backoff")),
            (Change::Enable, _) => Err(conflict("")),
            (Change::Restart, "disabled") => Err(conflict("; enable it")),
            (Change::Restart, _) => {
                self.put_down(abi::retire::RESTART);
                self.shared
                    .operator_restarts
                    .fetch_add(1, Ordering::Relaxed);
                self.renew()?;
                tracing::info!(community = %self.shared.name, was = state, operator_restarts = self.shared.operator_restarts.load(Ordering::Relaxed), "community restarted by the operator: a new instance runs");
                Ok(())
            }
        }
    }

    /// A live upgrade ([`Worker::upgrade`]), logged. The delayed messages stay (the new
    /// instance's check sees them again); the old instance's timers are dropped; the new
    /// instance gets a fresh budget of panic restarts.
    fn upgrade(&mut self, factory: Factory, definition: Definition) -> Result<(), LifecycleError> {
        let state = self.shared.health().state;
        let from = self.context.definition.version.clone();
        let to = definition.version.clone();
        if state == "starting" || state == "destroyed" {
            return Err(LifecycleError::Conflict {
                change: "upgrade",
                community: self.shared.name.clone(),
                state,
                hint: "",
            });
        }
        self.retire(abi::retire::UPGRADE);
        lock(&self.shared.timers).clear();
        self.restart_at = None;
        let old_factory = std::mem::replace(&mut self.factory, factory);
        let old_definition = std::mem::replace(&mut self.context.definition, definition);
        if state == "disabled" {
            self.switched(&from, &to, state);
            return Ok(());
        }
        self.restarted.clear();
        let failure = match self.create() {
            Ok(()) if self.instance.is_some() => None,
            Ok(()) => Some(
                self.shared
                    .health()
                    .reason
                    .unwrap_or_else(|| "its restore failed".to_owned()),
            ),
            Err(error) => Some(format!("create() failed: {}", error.message)),
        };
        let Some(reason) = failure else {
            lock(&self.shared.stats).failed = None;
            self.switched(&from, &to, state);
            return Ok(());
        };
        // Roll back: the version it ran, in a new instance (its panics restart it as usual).
        tracing::warn!(community = %self.shared.name, %from, %to, %reason, "live upgrade failed: rolling back to the version it ran");
        if let Some(broken) = self.instance.take() {
            std::mem::forget(broken);
        }
        lock(&self.shared.timers).clear();
        self.restart_at = None;
        self.factory = old_factory;
        self.context.definition = old_definition;
        self.restarted.clear();
        if let Err(error) = self.create() {
            self.panicked(format!("create() failed on roll-back: {}", error.message));
        }
        Err(LifecycleError::Upgrade {
            community: self.shared.name.clone(),
            from,
            to,
            reason,
        })
    }

    /// Records and logs a switch from version `from` to `to` (the community was `state`).
    fn switched(&self, from: &str, to: &str, state: &str) {
        *lock(&self.shared.versions) = (to.to_owned(), Some(from.to_owned()));
        let upgrades = self.shared.upgrades.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(community = %self.shared.name, %from, %to, was = state, upgrades, "community upgraded live: the new version's instance runs, restored from the store; the old code stays mapped (never unloaded)");
    }

    /// Retires the instance for `reason` ([`WorkerLoop::retire`]) and drops its timers, its
    /// delayed messages (counted as `plugin-down`) and any pending restart.
    fn put_down(&mut self, reason: u8) {
        self.retire(reason);
        lock(&self.shared.timers).clear();
        self.restart_at = None;
        let delayed = self.delayed.len() as u64;
        self.delayed.clear();
        if delayed > 0 {
            lock(&self.shared.stats).drop_reason(DropReason::PluginDown, delayed);
        }
    }

    /// A new instance asked for by the operator, with a fresh budget of panic restarts; on a
    /// failed `create()` the community is failed.
    fn renew(&mut self) -> Result<(), LifecycleError> {
        self.restarted.clear();
        match self.create() {
            Ok(()) => {
                lock(&self.shared.stats).failed = None;
                Ok(())
            }
            Err(error) => {
                let reason = format!("create() failed: {}", error.message);
                tracing::warn!(community = %self.shared.name, %reason, "the operator's new instance failed");
                self.fail(reason);
                Err(LifecycleError::Create {
                    community: self.shared.name.clone(),
                    reason: error.message.to_string(),
                })
            }
        }
    }

    /// The plugin's check of a message this node created: accepted, or why not.
    fn check_created(&mut self, message: &Incoming) -> Result<(), Refusal> {
        let raw = [to_raw(message)];
        let verdicts = self
            .verdicts(&raw)
            .map_err(|e| Refusal::Unchecked(e.message.to_string()))?;
        let Some(verdict) = verdicts.first() else {
            return Err(Refusal::Unchecked("the check returned no verdict".into()));
        };
        let reason = |otherwise: &str| match verdict.reason.as_str() {
            "" => otherwise.to_owned(),
            reason => reason.to_owned(),
        };
        match verdict.kind {
            abi::verdict::ACCEPT => Ok(()),
            abi::verdict::DELAY => Err(Refusal::Deferred(reason("delay"))),
            abi::verdict::WAIT_MESSAGE => {
                Err(Refusal::Deferred(reason("wait for another message")))
            }
            abi::verdict::WAIT_LAST => Err(Refusal::Deferred(reason(
                "wait for a member's last message",
            ))),
            _ => Err(Refusal::Dropped(reason("no reason given"))),
        }
    }

    /// Logs and counts a failed plugin call (not the refusals of a community without an
    /// instance: those are counted where they happen).
    fn report(&self, error: &PluginError) {
        if error.code == abi::ERROR_HOST && self.instance.is_none() {
            return;
        }
        tracing::warn!(community = %self.context.definition.name, %error, "plugin error");
        lock(&self.shared.stats).error(error);
    }

    /// check → store (persistent) → handle for a gathered batch: one check call per meta, one
    /// store transaction for all, one handle call per meta.
    ///
    /// The built-in permission messages (reserved types) were judged by the core: they are
    /// stored without the plugin's check or handle, and the plugin never sees them.
    fn deliver(&mut self, batch: Batch) {
        let mut accepted = Vec::with_capacity(batch.metas.len());
        for (meta, messages) in batch.metas {
            if builtin::is_reserved(meta) {
                let raw = messages.iter().map(to_raw).collect();
                accepted.push(Accepted {
                    meta,
                    messages,
                    raw,
                });
                continue;
            }
            if self.instance.is_none() {
                lock(&self.shared.stats).drop_reason(DropReason::PluginDown, messages.len() as u64);
                continue;
            }
            accepted.extend(self.check(meta, messages));
        }
        self.store_and_handle(accepted);
    }

    /// Calls the plugin's check on `raw`: one verdict per message, or the plugin's error (or a
    /// wrong number of verdicts), reported.
    fn verdicts(&mut self, raw: &[RawMessage]) -> Result<RVec<abi::RawVerdict>, PluginError> {
        let result = match self.call("check", |instance| instance.check(RSlice::from(raw))) {
            Ok(v) if v.len() == raw.len() => return Ok(v),
            Ok(v) => PluginError::new(
                abi::ERROR_INTERNAL,
                format!(
                    "check returned {} verdicts for {} messages",
                    v.len(),
                    raw.len()
                ),
            ),
            Err(error) => error,
        };
        self.report(&result);
        Err(result)
    }

    /// Runs the plugin's check over `messages` of `meta`: delays, parks and drops what it says,
    /// returns the accepted ones. Our own messages (no source) passed the check before they were
    /// published ([`Job::CheckCreated`]) and are accepted without a second one.
    fn check(&mut self, meta: u32, messages: Vec<Incoming>) -> Option<Accepted> {
        if messages.is_empty() {
            return None;
        }
        let raw: Vec<RawMessage> = messages.iter().map(to_raw).collect();
        let own = messages.iter().filter(|m| m.source.is_none()).count();
        let received = raw.len() - own;
        let verdicts = match (own, received) {
            (_, 0) => Ok(RVec::new()),
            (0, _) => self.verdicts(&raw),
            _ => {
                let received: Vec<RawMessage> = raw
                    .iter()
                    .zip(&messages)
                    .filter(|(_, m)| m.source.is_some())
                    .map(|(r, _)| r.clone())
                    .collect();
                self.verdicts(&received)
            }
        };
        let mut verdicts = match verdicts {
            Ok(verdicts) => Some(verdicts.into_iter()),
            Err(_) => {
                lock(&self.shared.stats).drop_reason(DropReason::PluginError, received as u64);
                None
            }
        };
        let now = Instant::now();
        let mut accepted = Accepted {
            meta,
            messages: Vec::with_capacity(messages.len()),
            raw: Vec::with_capacity(messages.len()),
        };
        for (message, raw) in messages.into_iter().zip(raw) {
            let verdict = match (&message.source, verdicts.as_mut()) {
                (None, _) => None,
                (Some(_), Some(verdicts)) => verdicts.next(),
                // The check failed: counted above.
                (Some(_), None) => continue,
            };
            let Some(verdict) = verdict else {
                accepted.messages.push(message);
                accepted.raw.push(raw);
                continue;
            };
            match verdict.kind {
                abi::verdict::ACCEPT => {
                    accepted.messages.push(message);
                    accepted.raw.push(raw);
                }
                abi::verdict::DELAY => {
                    self.delay(meta, message, &verdict.reason, verdict.delay_ms, now)
                }
                abi::verdict::WAIT_MESSAGE | abi::verdict::WAIT_LAST => {
                    self.wait(message, &verdict)
                }
                _ => lock(&self.shared.stats).plugin_reason(verdict.reason.as_str()),
            }
        }
        Some(accepted)
    }

    fn delay(
        &mut self,
        meta: u32,
        message: Incoming,
        reason: &RString,
        delay_ms: u32,
        now: Instant,
    ) {
        let limits = &self.context.limits;
        let mut stats = lock(&self.shared.stats);
        if self.delayed.len() >= limits.delayed {
            stats.delay_expired += 1;
            return;
        }
        stats.delayed += 1;
        tracing::debug!(community = %self.context.definition.name, reason = %reason, "message delayed");
        let wait = Duration::from_millis(u64::from(delay_ms)).min(limits.delay_timeout);
        self.delayed.push_back(DelayedMessage {
            meta,
            message,
            retry_at: now + wait,
            expires_at: now + limits.delay_timeout,
        });
    }

    /// The plugin wants `message` to wait for another message: the protocol task holds it,
    /// asks the sender, and hands it back once the awaited message is stored.
    fn wait(&self, message: Incoming, verdict: &abi::RawVerdict) {
        let member = match verdict.member.len() {
            20 => MemberId::from_slice(&verdict.member).ok(),
            _ => PublicKey::from_bytes(&verdict.member)
                .ok()
                .map(|key| key.member_id()),
        };
        let Some(member) = member else {
            let error = PluginError::new(
                abi::ERROR_INTERNAL,
                "a wait verdict names no valid member (33-byte key or 20-byte id)",
            );
            self.report(&error);
            lock(&self.shared.stats).drop_reason(DropReason::PluginError, 1);
            return;
        };
        if message.source.is_none() {
            lock(&self.shared.stats).drop_reason(DropReason::OwnMessageCannotWait, 1);
            return;
        }
        let awaited = if verdict.kind == abi::verdict::WAIT_MESSAGE {
            Awaited::Message {
                member,
                global_time: verdict.global_time,
            }
        } else {
            Awaited::Last {
                member,
                meta: verdict.meta,
            }
        };
        lock(&self.shared.stats).delayed += 1;
        self.tell(Command::Wait {
            community: self.context.community,
            message: Box::new(message),
            awaited,
        });
    }

    fn retry_delayed(&mut self) {
        if self.instance.is_none() {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        let mut keep = VecDeque::with_capacity(self.delayed.len());
        for delayed in self.delayed.drain(..) {
            if delayed.retry_at <= now {
                due.push(delayed);
            } else {
                keep.push_back(delayed);
            }
        }
        self.delayed = keep;
        for delayed in due {
            let raw = [to_raw(&delayed.message)];
            match self.call("check", |instance| instance.check(RSlice::from(&raw[..]))) {
                Ok(v) => match v.first().map(|v| (v.kind, v.delay_ms)) {
                    Some((abi::verdict::WAIT_MESSAGE | abi::verdict::WAIT_LAST, _)) => {
                        if let Some(verdict) = v.first() {
                            self.wait(delayed.message, verdict);
                        }
                    }
                    Some((abi::verdict::ACCEPT, _)) => {
                        self.store_and_handle(vec![Accepted {
                            meta: delayed.meta,
                            messages: vec![delayed.message],
                            raw: Vec::from(raw),
                        }]);
                    }
                    Some((abi::verdict::DELAY, ms)) if now < delayed.expires_at => {
                        let wait = Duration::from_millis(u64::from(ms));
                        self.delayed.push_back(DelayedMessage {
                            retry_at: (now + wait).min(delayed.expires_at),
                            ..delayed
                        });
                    }
                    Some((abi::verdict::DELAY, _)) => lock(&self.shared.stats).delay_expired += 1,
                    Some((_, _)) | None => {
                        let reason = v.first().map(|v| v.reason.to_string()).unwrap_or_default();
                        lock(&self.shared.stats).plugin_reason(&reason);
                    }
                },
                Err(error) => self.report(&error),
            }
        }
    }

    fn store_and_handle(&mut self, accepted: Vec<Accepted>) {
        if accepted.iter().all(|a| a.messages.is_empty()) {
            return;
        }
        for (handled, stored) in self.store(accepted) {
            if handled.messages.is_empty() || builtin::is_reserved(handled.meta) {
                continue;
            }
            if self.instance.is_none() {
                lock(&self.shared.stats)
                    .drop_reason(DropReason::PluginDown, handled.messages.len() as u64);
                continue;
            }
            match self.call("handle", |instance| {
                instance.handle(RSlice::from(&handled.raw[..]))
            }) {
                Ok(()) => {
                    lock(&self.shared.stats).accepted += handled.messages.len() as u64;
                    self.remember(handled.meta, handled.messages, stored);
                }
                Err(error) => self.report(&error),
            }
        }
    }

    /// Stores the persistent messages of all metas in one insert (one transaction) and waits
    /// for the acknowledgement; returns per meta the messages to handle (those already stored
    /// before, and those that wait or lose, are left out) with their stored flags. Nothing when
    /// storing failed. Gaps and conflicts are told in message order, then the stored news at once.
    fn store(&mut self, accepted: Vec<Accepted>) -> Vec<(Accepted, Vec<bool>)> {
        let total: usize = accepted.iter().map(|a| a.messages.len()).sum();
        let mut metas: Vec<(u32, Vec<Pending>)> = accepted
            .into_iter()
            .map(|batch| (batch.meta, self.pending(batch)))
            .collect();
        let rows: Vec<NewMessage> = metas
            .iter_mut()
            .flat_map(|(_, pending)| pending.iter_mut())
            .filter_map(|p| p.row.take())
            .collect();
        // Our own messages among those stored: the API acknowledges them once stored.
        let ours: Vec<u64> = metas
            .iter()
            .flat_map(|(_, pending)| pending.iter())
            .filter(|p| p.hash.is_some() && p.message.source.is_none())
            .map(|p| p.message.message.message.global_time)
            .collect();
        if !rows.is_empty() {
            let inserted = self.insert(rows, total);
            if !ours.is_empty() {
                self.tell(Command::Durable {
                    community: self.context.community,
                    global_times: ours,
                    error: match &inserted {
                        Ok(_) => None,
                        Err(error) => Some(error.clone()),
                    },
                });
            }
            let Ok(outcomes) = inserted else {
                return Vec::new();
            };
            let mut outcomes = outcomes.into_iter();
            for p in metas.iter_mut().flat_map(|(_, pending)| pending.iter_mut()) {
                if p.hash.is_some() {
                    p.outcome = outcomes.next();
                }
            }
        }
        let mut report = Report::default();
        let mut out = Vec::with_capacity(metas.len());
        for (meta, pending) in metas {
            let mut kept = Accepted {
                meta,
                messages: Vec::with_capacity(pending.len()),
                raw: Vec::with_capacity(pending.len()),
            };
            let mut stored = Vec::with_capacity(pending.len());
            for p in pending {
                let handled = match (p.hash, p.outcome) {
                    (None, _) => Some((p.message, false)),
                    (Some(hash), Some(outcome)) => report
                        .file(p.message, hash, outcome)
                        .map(|message| (message, true)),
                    (Some(_), None) => None,
                };
                if let Some((message, flag)) = handled {
                    kept.messages.push(message);
                    kept.raw.push(p.raw);
                    stored.push(flag);
                }
            }
            out.push((kept, stored));
        }
        self.count(&report);
        if report.has_news() {
            self.tell(Command::StoreReport {
                community: self.context.community,
                report: Box::new(report),
            });
        }
        out
    }

    /// Counts the messages of `report` that are dropped.
    fn count(&self, report: &Report) {
        let mut stats = lock(&self.shared.stats);
        stats.duplicates += report.duplicates;
        if report.stale > 0 {
            stats.drop_reason(DropReason::StaleSequence, report.stale);
        }
        if report.conflicts_lost > 0 {
            stats.drop_reason(DropReason::SequenceConflictLost, report.conflicts_lost);
        }
    }

    /// The messages of `batch` on their way to the store, each with its row when it is
    /// persistent (and has an author).
    fn pending(&self, batch: Accepted) -> Vec<Pending> {
        let meta = self.context.definition.meta_by_id(batch.meta);
        batch
            .messages
            .into_iter()
            .zip(batch.raw)
            .map(|(incoming, raw)| {
                let entry = meta
                    .filter(|_| incoming.persistent)
                    .and_then(|meta| Entry::of(&incoming.message, meta));
                Pending {
                    hash: entry.as_ref().map(|entry| entry.hash),
                    row: entry.map(|entry| NewMessage::new(self.context.community_row, entry)),
                    outcome: None,
                    message: incoming,
                    raw,
                }
            })
            .collect()
    }

    /// Sends `rows` to the store task in one insert and waits for their outcomes, in order.
    /// An error when storing failed (the `total` messages of the round are counted as
    /// dropped; the store task logs the failure once per change of state) or the host is
    /// shutting down.
    fn insert(&self, rows: Vec<NewMessage>, total: usize) -> Result<Vec<Outcome>, String> {
        let (ack, done) = oneshot::channel();
        let count = rows.len();
        let stored = self
            .context
            .store
            .blocking_send(Insert {
                messages: rows,
                ack,
            })
            .ok()
            .and_then(|()| done.blocking_recv().ok());
        match stored {
            Some(Ok(outcomes)) if outcomes.len() == count => Ok(outcomes),
            Some(Ok(outcomes)) => {
                tracing::error!(community = %self.context.definition.name, rows = count, outcomes = outcomes.len(), "store answered for other messages");
                lock(&self.shared.stats).drop_reason(DropReason::StoreFailed, total as u64);
                Err("the store answered for other messages".into())
            }
            Some(Err(error)) => {
                tracing::debug!(community = %self.context.definition.name, %error, "messages not stored");
                lock(&self.shared.stats).drop_reason(DropReason::StoreFailed, total as u64);
                Err(error)
            }
            None => Err("the host is shutting down".into()),
        }
    }

    /// The plugin's answer to a proposed double-member message naming this member as second
    /// author: `cosign`, or `allow_signature` for a plugin older than it. An error refuses.
    fn cosign(&mut self, message: &dispersy_core::wire::CommunityMessage) -> Cosign {
        let raw = raw_message(message, None);
        let answer = match self.call("cosign", |instance| instance.cosign(&raw)) {
            Err(error) if error.code == abi::ERROR_ABSENT => self
                .call("allow_signature", |instance| instance.allow_signature(&raw))
                .map(|allow| if allow { Cosign::Sign } else { Cosign::Refuse }),
            Err(error) => Err(error),
            Ok(answer) => match answer.kind {
                abi::cosign::SIGN => Ok(Cosign::Sign),
                abi::cosign::MODIFY => Ok(Cosign::Modify(answer.payload.into_vec())),
                abi::cosign::APPEND => Ok(Cosign::Append(answer.payload.into_vec())),
                _ => Ok(Cosign::Refuse),
            },
        };
        answer.unwrap_or_else(|error| {
            self.report(&error);
            Cosign::Refuse
        })
    }

    /// Asks the plugin whether to publish the co-signer's `answer` to the message proposed
    /// with `token`. An error declines.
    fn cosigned(
        &mut self,
        token: u64,
        answer: Answer,
        message: &dispersy_core::wire::CommunityMessage,
    ) -> bool {
        let raw = abi::RawCosigned {
            kind: match answer {
                Answer::Signed => abi::cosigned::SIGNED,
                Answer::Modified => abi::cosigned::MODIFIED,
                Answer::Appended => abi::cosigned::APPENDED,
                Answer::Timeout => abi::cosigned::TIMEOUT,
            },
            message: raw_message(message, None),
        };
        match self.call("cosigned", |instance| instance.cosigned(token, &raw)) {
            Ok(accept) => accept,
            Err(error) => {
                self.report(&error);
                false
            }
        }
    }

    /// Tells the protocol task; when its queue is full the news is dropped (sync state and
    /// waits recover from later news and timeouts).
    fn tell(&self, command: Command) {
        if self.context.commands.try_send(command).is_err() {
            tracing::debug!("protocol task not told (queue full)");
        }
    }

    fn remember(&self, meta: u32, handled: Vec<Incoming>, stored: Vec<bool>) {
        let mut recent = lock(&self.shared.recent);
        for (incoming, stored) in handled.into_iter().zip(stored) {
            let message = incoming.message.message;
            let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
            if recent.len() >= self.context.limits.recent {
                recent.pop_front();
            }
            if self.context.limits.recent == 0 {
                continue;
            }
            recent.push_back(Delivered {
                seq,
                meta,
                author: message.authors.into_iter().next(),
                global_time: message.global_time,
                sequence_number: message.sequence_number,
                source: incoming.source,
                stored,
                conversion: message.conversion.as_bytes().to_vec(),
                payload: message.payload,
            });
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while self.instance.is_some() {
            let token = {
                let mut timers = lock(&self.shared.timers);
                match timers.peek() {
                    Some(Reverse((at, _))) if *at <= now => timers.pop().map(|t| t.0.1),
                    _ => None,
                }
            };
            let Some(token) = token else {
                break;
            };
            if let Err(error) = self.call("timer", |instance| instance.timer(token)) {
                self.report(&error);
            }
        }
    }
}

/// Deliveries of several metas taken from a community's queue, each meta's messages in arrival
/// order.
#[derive(Default)]
struct Batch {
    metas: Vec<(u32, Vec<Incoming>)>,
    len: usize,
}

impl Batch {
    fn add(&mut self, meta: u32, messages: Vec<Incoming>) {
        self.len += messages.len();
        match self.metas.iter_mut().find(|(m, _)| *m == meta) {
            Some((_, list)) => list.extend(messages),
            None => self.metas.push((meta, messages)),
        }
    }
}

/// One accepted message on its way through the store: its row while it is not yet sent (only a
/// persistent message has one, and then a packet hash), then what became of it.
struct Pending {
    message: Incoming,
    raw: RawMessage,
    row: Option<NewMessage>,
    hash: Option<PacketHash>,
    outcome: Option<Outcome>,
}

/// Messages of one meta the plugin accepted, with their ABI form (same order, same length).
struct Accepted {
    meta: u32,
    messages: Vec<Incoming>,
    raw: Vec<RawMessage>,
}

fn to_raw(incoming: &Incoming) -> RawMessage {
    raw_message(&incoming.message.message, incoming.source)
}

/// A message as the ABI hands it to a plugin.
pub(super) fn raw_message(
    message: &dispersy_core::wire::CommunityMessage,
    source: Option<SocketAddr>,
) -> RawMessage {
    RawMessage {
        meta: message.message_type,
        conversion: RVec::from(message.conversion.as_bytes().to_vec()),
        authors: message
            .authors
            .iter()
            .map(|key| RVec::from(key.as_bytes().to_vec()))
            .collect(),
        global_time: message.global_time,
        sequence_number: message.sequence_number.unwrap_or(0),
        source: source
            .map(|s| RString::from(s.to_string()))
            .unwrap_or_default(),
        payload: RVec::from(message.payload.clone()),
    }
}

#[cfg(test)]
mod tests;
