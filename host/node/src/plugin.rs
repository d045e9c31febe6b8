//! Plugins: finding and loading community plugin files, and the thread that drives each
//! community instance.
//!
//! Loading uses `lib_header_from_path` + `init_root_module` (never `RootModule::load_from_*`,
//! which caches one module per interface type per process). abi_stable checks the plugin-api
//! version and the layout of every type crossing the boundary; a mismatch is reported in one line
//! naming the file, with abi_stable's full report at debug level. Libraries are never unloaded.
//!
//! Each community instance lives on its own thread ([`Worker`]): plugin calls are synchronous and
//! may be slow, and a plugin keeps its own copy of std and its statics, so it never runs on a tokio
//! worker. The thread receives [`Job`]s through a bounded channel, runs check → store → handle for
//! delivered messages, keeps delayed messages and plugin timers (both bounded), and answers the
//! control API's requests (JSON conversion, status).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::library::{LibraryError, lib_header_from_path};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, PublicKey};
use dispersy_core::meta::{
    Authentication, Destination, Distribution, MetaMessage, Pruning, Resolution, StaticResolution,
    SyncOrder,
};
use dispersy_core::node::Incoming;
use dispersy_core::wire::Conversion;
use dispersy_plugin_api::abi::{
    self, CandidateInfo, CommunityBox, HostApi, HostApi_TO, MetaDef, PluginError, PluginModuleRef,
    RawMessage,
};
use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::mutex::lock;
use crate::store::{Insert, InsertSender, NewMessage, Outcome};
use dispersy_core::identity::MemberId;
use dispersy_core::missing::Awaited;
use dispersy_core::node::Stored;

/// A loaded plugin file and the community type it defines.
#[derive(Clone)]
pub struct Plugin {
    /// The file.
    pub path: PathBuf,
    /// Its root module.
    pub module: PluginModuleRef,
    /// Its definition, validated.
    pub definition: Definition,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("name", &self.definition.name)
            .finish()
    }
}

/// Why a plugin file was refused. The message is one line and names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened as a library or is not a plugin.
    #[error("plugin {path}: {reason}")]
    Library {
        /// The file.
        path: PathBuf,
        /// Summary.
        reason: String,
    },
    /// Built against an incompatible plugin API.
    #[error(
        "plugin {path}: built against an incompatible plugin ABI ({reason}); rebuild it against dispersy-plugin-api {host}"
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Summary.
        reason: String,
        /// The host's plugin-api version.
        host: &'static str,
    },
    /// The plugin's entry points failed or its definition is invalid.
    #[error("plugin {path}: {reason}")]
    Definition {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another plugin already defines this community.
    #[error("plugin {path}: community {community} is already provided by {other}")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The community id.
        community: CommunityId,
        /// The first file.
        other: PathBuf,
    },
}

/// The plugin-api version this host was built with.
pub const HOST_API_VERSION: &str = env!("CARGO_PKG_VERSION");

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// The plugin files (`lib*.so`) in `dirs`, in directory order then by name, without repeats.
pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("lib") && n.ends_with(std::env::consts::DLL_SUFFIX)
                    })
            })
            .collect();
        found.sort();
        for path in found {
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if !seen.contains(&canonical) {
                seen.push(canonical);
                files.push(path);
            }
        }
    }
    files
}

/// Loads and validates one plugin file.
pub fn load(path: &Path) -> Result<Plugin, LoadError> {
    let library_error = |reason: String| LoadError::Library {
        path: path.to_path_buf(),
        reason,
    };
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::OpenError { .. } => library_error(first_line(&e.to_string())),
        LibraryError::GetSymbolError { .. } => {
            library_error("not a Dispersy plugin (no abi_stable root module)".into())
        }
        other => library_error(first_line(&other.to_string())),
    })?;
    let module = header.init_root_module::<PluginModuleRef>().map_err(|e| {
        tracing::debug!(path = %path.display(), report = %e, "plugin ABI report");
        match e {
            LibraryError::AbiInstability(_) => LoadError::Incompatible {
                path: path.to_path_buf(),
                reason: "type layouts differ".into(),
                host: HOST_API_VERSION,
            },
            LibraryError::IncompatibleVersionNumber { .. } => LoadError::Incompatible {
                path: path.to_path_buf(),
                reason: first_line(&e.to_string()),
                host: HOST_API_VERSION,
            },
            other => library_error(first_line(&other.to_string())),
        }
    })?;
    let definition_error = |reason: String| LoadError::Definition {
        path: path.to_path_buf(),
        reason,
    };
    let version = (module.abi_version())();
    if version != abi::ABI_VERSION {
        return Err(LoadError::Incompatible {
            path: path.to_path_buf(),
            reason: format!(
                "ABI version {version}, the host speaks {}",
                abi::ABI_VERSION
            ),
            host: HOST_API_VERSION,
        });
    }
    let raw = (module.definition())()
        .into_result()
        .map_err(|e| definition_error(format!("definition failed: {e}")))?;
    let definition = definition_from_raw(&raw).map_err(definition_error)?;
    Ok(Plugin {
        path: path.to_path_buf(),
        module,
        definition,
    })
}

/// Converts and validates a plugin's raw definition.
pub fn definition_from_raw(raw: &abi::CommunityDef) -> Result<Definition, String> {
    let master = PublicKey::from_bytes(&raw.master_key).map_err(|e| format!("master key: {e}"))?;
    let conversions = raw
        .conversions
        .iter()
        .map(|c| Conversion::new(c).map_err(|e| format!("conversion {c:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let metas = raw
        .metas
        .iter()
        .map(meta_from_raw)
        .collect::<Result<Vec<_>, _>>()?;
    let definition = Definition {
        name: raw.name.to_string(),
        version: raw.version.to_string(),
        master,
        conversions,
        metas,
    };
    definition.validate().map_err(|e| e.to_string())?;
    Ok(definition)
}

fn meta_from_raw(raw: &MetaDef) -> Result<MetaMessage, String> {
    let unknown = |policy: &str, code: u8| {
        format!(
            "meta-message {:?}: unknown {policy} code {code} (plugin newer than the host?)",
            raw.name.as_str()
        )
    };
    let authentication = match raw.authentication {
        abi::authentication::NONE => Authentication::None,
        abi::authentication::MEMBER => Authentication::Member,
        abi::authentication::DOUBLE_MEMBER => Authentication::DoubleMember,
        code => return Err(unknown("authentication", code)),
    };
    let static_resolution = |code: u8| match code {
        abi::resolution::PUBLIC => Ok(StaticResolution::Public),
        abi::resolution::LINEAR => Ok(StaticResolution::Linear),
        code => Err(unknown("resolution", code)),
    };
    let resolution = match raw.resolution {
        abi::resolution::PUBLIC => Resolution::Public,
        abi::resolution::LINEAR => Resolution::Linear,
        abi::resolution::DYNAMIC => Resolution::Dynamic(
            raw.dynamic_policies
                .iter()
                .map(|c| static_resolution(*c))
                .collect::<Result<_, _>>()?,
        ),
        code => return Err(unknown("resolution", code)),
    };
    let order = match raw.order {
        abi::order::ASCENDING => SyncOrder::Ascending,
        abi::order::DESCENDING => SyncOrder::Descending,
        abi::order::RANDOM => SyncOrder::Random,
        code => return Err(unknown("order", code)),
    };
    let pruning = (raw.prune_inactive != 0 || raw.prune_remove != 0).then_some(Pruning {
        inactive_after: raw.prune_inactive,
        prune_after: raw.prune_remove,
    });
    let distribution = match raw.distribution {
        abi::distribution::DIRECT => Distribution::Direct,
        abi::distribution::RELAY => Distribution::Relay,
        abi::distribution::FULL_SYNC => Distribution::FullSync {
            sequence_numbers: raw.sequence_numbers,
            order,
            pruning,
        },
        abi::distribution::LAST_SYNC => Distribution::LastSync {
            history: raw.history,
            order,
            pruning,
        },
        code => return Err(unknown("distribution", code)),
    };
    let destination = match raw.destination {
        abi::destination::CANDIDATE => Destination::Candidate,
        abi::destination::COMMUNITY => Destination::Community {
            node_count: raw.node_count,
        },
        code => return Err(unknown("destination", code)),
    };
    Ok(MetaMessage {
        id: raw.id,
        name: raw.name.to_string(),
        authentication,
        resolution,
        distribution,
        destination,
        priority: raw.priority,
        batch_window: Duration::from_millis(u64::from(raw.batch_window_ms)),
    })
}

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
}

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
    /// Messages the plugin dropped, by reason (at most 64 reasons; more go under "other").
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
    fn drop_reason(&mut self, reason: &str, n: u64) {
        let key = if self.dropped.contains_key(reason) || self.dropped.len() < 64 {
            reason.to_owned()
        } else {
            "other".to_owned()
        };
        *self.dropped.entry(key).or_default() += n;
    }

    fn error(&mut self, error: &PluginError) {
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
    recent: Mutex<VecDeque<Delivered>>,
    next_seq: AtomicU64,
    timers: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
}

impl Shared {
    fn new() -> Self {
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
        /// The answer.
        reply: oneshot::Sender<Result<Vec<u8>, PluginError>>,
    },
    /// The plugin's status document.
    Status {
        /// The answer.
        reply: oneshot::Sender<Result<serde_json::Value, PluginError>>,
    },
    /// Another member proposes a double-member message with ours as second author: ask the
    /// plugin whether we sign.
    AllowSignature {
        /// The protocol task's question.
        ask: u32,
        /// The message.
        message: Box<dispersy_core::wire::CommunityMessage>,
    },
    /// A timer was scheduled: recompute the wake-up time.
    Wake,
    /// Finish the jobs queued before this one, then end the thread.
    Stop,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is full.
    #[error("the community's queue is full")]
    Full,
    /// The thread is gone.
    #[error("the community's thread has stopped")]
    Stopped,
}

/// The handle of one community's thread.
pub struct Worker {
    jobs: SyncSender<Job>,
    /// Shared state.
    pub shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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
    /// Bounds.
    pub limits: WorkerLimits,
}

impl Worker {
    /// Creates the community instance and starts its thread.
    pub fn start(plugin: &Plugin, context: WorkerContext) -> Result<Worker, PluginError> {
        let shared = Arc::new(Shared::new());
        let (jobs, receiver) = std::sync::mpsc::sync_channel(context.limits.queue);
        let host = HostHandle {
            community: context.community,
            name: context.definition.name.clone(),
            member: context.member.clone(),
            commands: context.commands.clone(),
            shared: shared.clone(),
            wake: jobs.clone(),
            max_timers: context.limits.timers,
        };
        let instance =
            (plugin.module.create())(HostApi_TO::from_value(host, TD_Opaque)).into_result()?;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("community-{}", context.definition.name))
            .spawn(move || {
                WorkerLoop {
                    instance,
                    context,
                    shared: thread_shared,
                    delayed: VecDeque::new(),
                }
                .run(receiver)
            })
            .map_err(|e| PluginError::new(abi::ERROR_HOST, format!("spawning thread: {e}")))?;
        Ok(Worker {
            jobs,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a job without blocking.
    pub fn submit(&self, job: Job) -> Result<(), QueueError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                lock(&self.shared.stats).queue_full += 1;
                QueueError::Full
            }
            TrySendError::Disconnected(_) => QueueError::Stopped,
        })
    }

    /// Stops the thread after the jobs already queued. (Dropping the sender is not enough: the
    /// community's host handle holds a sender too, to wake the thread for timers.)
    pub fn stop(&self) {
        if self.jobs.send(Job::Stop).is_err() {
            tracing::debug!("community thread already stopped");
        }
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // A plugin that panicked was caught at the boundary; a join error means a panic in
            // the host's own loop, already reported by the panic hook.
            let _ = thread.join();
        }
    }
}

struct DelayedMessage {
    meta: u32,
    message: Incoming,
    retry_at: Instant,
    expires_at: Instant,
}

struct WorkerLoop {
    instance: CommunityBox,
    context: WorkerContext,
    shared: Arc<Shared>,
    delayed: VecDeque<DelayedMessage>,
}

impl WorkerLoop {
    fn run(mut self, jobs: Receiver<Job>) {
        // A job taken from the queue while gathering a batch, to run right after it.
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(job) => Ok(job),
                None => {
                    let now = Instant::now();
                    let next_timer = lock(&self.shared.timers).peek().map(|t| t.0.0);
                    let next_delay = self.delayed.iter().map(|d| d.retry_at).min();
                    let wake = [next_timer, next_delay].into_iter().flatten().min();
                    match wake {
                        Some(at) => jobs.recv_timeout(at.saturating_duration_since(now)),
                        None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    }
                }
            };
            match job {
                Ok(Job::Stop) => break,
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
            self.fire_timers();
            self.retry_delayed();
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
                            .instance
                            .payload_to_json(
                                meta,
                                RSlice::from(&conversion[..]),
                                RSlice::from(&payload[..]),
                            )
                            .into_result()
                            .map_err(|e| e.message.to_string())?;
                        serde_json::from_str(json.as_str()).map_err(|e| e.to_string())
                    })
                    .collect();
                let _ = reply.send(rendered);
            }
            Job::FromJson { meta, json, reply } => {
                let result = self
                    .instance
                    .payload_from_json(meta, RStr::from(json.as_str()))
                    .into_result()
                    .map(RVec::into_vec);
                if let Err(e) = &result
                    && e.code != abi::ERROR_INVALID
                {
                    lock(&self.shared.stats).error(e);
                }
                let _ = reply.send(result);
            }
            Job::Status { reply } => {
                let result = self.instance.status().into_result().and_then(|text| {
                    serde_json::from_str(text.as_str()).map_err(|e| {
                        PluginError::new(abi::ERROR_INTERNAL, format!("status is not JSON: {e}"))
                    })
                });
                if let Err(e) = &result {
                    lock(&self.shared.stats).error(e);
                }
                let _ = reply.send(result);
            }
            Job::AllowSignature { ask, message } => {
                let raw = raw_message(&message, None);
                let allow = match self.instance.allow_signature(&raw).into_result() {
                    Ok(allow) => allow,
                    Err(error) => {
                        self.report(&error);
                        false
                    }
                };
                self.tell(Command::SignatureVerdict { ask, allow });
            }
            Job::Wake | Job::Stop => {}
        }
    }

    fn report(&self, error: &PluginError) {
        tracing::warn!(community = %self.context.definition.name, %error, "plugin error");
        lock(&self.shared.stats).error(error);
    }

    /// check → store (persistent) → handle for a gathered batch: one check call per meta, one
    /// store transaction for all, one handle call per meta.
    fn deliver(&mut self, batch: Batch) {
        let mut accepted = Vec::with_capacity(batch.metas.len());
        for (meta, messages) in batch.metas {
            accepted.extend(self.check(meta, messages));
        }
        self.store_and_handle(accepted);
    }

    /// Runs the plugin's check over `messages` of `meta`: delays, parks and drops what it says,
    /// returns the accepted ones.
    fn check(&mut self, meta: u32, messages: Vec<Incoming>) -> Option<Accepted> {
        if messages.is_empty() {
            return None;
        }
        let raw: Vec<RawMessage> = messages.iter().map(to_raw).collect();
        let verdicts = match self.instance.check(RSlice::from(&raw[..])).into_result() {
            Ok(v) if v.len() == messages.len() => v,
            Ok(v) => {
                let error = PluginError::new(
                    abi::ERROR_INTERNAL,
                    format!(
                        "check returned {} verdicts for {} messages",
                        v.len(),
                        messages.len()
                    ),
                );
                self.report(&error);
                lock(&self.shared.stats).drop_reason("plugin error", messages.len() as u64);
                return None;
            }
            Err(error) => {
                self.report(&error);
                lock(&self.shared.stats).drop_reason("plugin error", messages.len() as u64);
                return None;
            }
        };
        let now = Instant::now();
        let mut accepted = Accepted {
            meta,
            messages: Vec::with_capacity(messages.len()),
            raw: Vec::with_capacity(messages.len()),
        };
        for ((message, raw), verdict) in messages.into_iter().zip(raw).zip(verdicts) {
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
                _ => lock(&self.shared.stats).drop_reason(verdict.reason.as_str(), 1),
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
            lock(&self.shared.stats).drop_reason("plugin error", 1);
            return;
        };
        if message.source.is_none() {
            lock(&self.shared.stats).drop_reason("own message cannot wait", 1);
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
            match self.instance.check(RSlice::from(&raw[..])).into_result() {
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
                        lock(&self.shared.stats).drop_reason(&reason, 1);
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
            if handled.messages.is_empty() {
                continue;
            }
            match self
                .instance
                .handle(RSlice::from(&handled.raw[..]))
                .into_result()
            {
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
    /// storing failed.
    fn store(&mut self, accepted: Vec<Accepted>) -> Vec<(Accepted, Vec<bool>)> {
        // Per message, its row in `rows` if it is stored.
        let mut slots: Vec<Vec<Option<usize>>> = Vec::with_capacity(accepted.len());
        let mut rows: Vec<NewMessage> = Vec::new();
        for batch in &accepted {
            let definition = self.context.definition.meta_by_id(batch.meta);
            let priority = definition.map_or(128, |m| m.priority);
            let history = definition.and_then(|m| match m.distribution {
                dispersy_core::meta::Distribution::LastSync { history, .. } => Some(history),
                _ => None,
            });
            let mut meta_slots = Vec::with_capacity(batch.messages.len());
            for incoming in &batch.messages {
                let message = &incoming.message.message;
                let member = message.authors.first().map(PublicKey::member_id);
                let (true, Some(member)) = (incoming.persistent, member) else {
                    meta_slots.push(None);
                    continue;
                };
                let packet = &incoming.message.packet;
                meta_slots.push(Some(rows.len()));
                rows.push(NewMessage {
                    community: self.context.community_row,
                    member,
                    global_time: message.global_time,
                    meta: batch.meta,
                    sequence: message.sequence_number,
                    priority,
                    history,
                    co_signer: message.authors.get(1).map(|a| a.member_id()),
                    hash: dispersy_core::bloom::PacketHash::of(packet),
                    packet: packet.clone(),
                });
            }
            slots.push(meta_slots);
        }
        if rows.is_empty() {
            return accepted
                .into_iter()
                .map(|a| {
                    let n = a.messages.len();
                    (a, vec![false; n])
                })
                .collect();
        }
        let hashes: Vec<dispersy_core::bloom::PacketHash> =
            rows.iter().map(|row| row.hash).collect();
        let (ack, done) = oneshot::channel();
        let count = rows.len();
        let total: usize = accepted.iter().map(|a| a.messages.len()).sum();
        let stored = self
            .context
            .store
            .blocking_send(Insert {
                messages: rows,
                ack,
            })
            .ok()
            .and_then(|()| done.blocking_recv().ok());
        let outcomes = match stored {
            Some(Ok(outcomes)) if outcomes.len() == count => outcomes,
            Some(Ok(outcomes)) => {
                tracing::error!(community = %self.context.definition.name, rows = count, outcomes = outcomes.len(), "store answered for other messages");
                lock(&self.shared.stats).drop_reason("store failed", total as u64);
                return Vec::new();
            }
            Some(Err(error)) => {
                tracing::error!(community = %self.context.definition.name, %error, "messages not stored");
                lock(&self.shared.stats).drop_reason("store failed", total as u64);
                return Vec::new();
            }
            None => return Vec::new(), // shutting down
        };
        let mut outcomes: Vec<Option<Outcome>> = outcomes.into_iter().map(Some).collect();
        let mut new = Vec::new();
        let mut out = Vec::with_capacity(accepted.len());
        for (batch, meta_slots) in accepted.into_iter().zip(slots) {
            let n = batch.messages.len();
            let mut kept = Accepted {
                meta: batch.meta,
                messages: Vec::with_capacity(n),
                raw: Vec::with_capacity(n),
            };
            let mut stored = Vec::with_capacity(n);
            for ((message, raw), slot) in batch.messages.into_iter().zip(batch.raw).zip(meta_slots)
            {
                let Some(row) = slot else {
                    kept.messages.push(message);
                    kept.raw.push(raw);
                    stored.push(false);
                    continue;
                };
                let (Some(outcome), Some(hash)) = (
                    outcomes.get_mut(row).and_then(Option::take),
                    hashes.get(row),
                ) else {
                    continue;
                };
                match outcome {
                    Outcome::Stored => {
                        new.extend(Stored::of(&message.message, *hash, message.source));
                        kept.messages.push(message);
                        kept.raw.push(raw);
                        stored.push(true);
                    }
                    // Our own messages are handled even if storage already had them.
                    Outcome::Duplicate if message.source.is_none() => {
                        kept.messages.push(message);
                        kept.raw.push(raw);
                        stored.push(true);
                    }
                    Outcome::Duplicate => lock(&self.shared.stats).duplicates += 1,
                    Outcome::Stale => lock(&self.shared.stats).drop_reason("stale-sequence", 1),
                    Outcome::Gap { low, high } => self.tell(Command::SequenceGap {
                        community: self.context.community,
                        message: Box::new(message),
                        low,
                        high,
                    }),
                    Outcome::Conflict(ours) => {
                        lock(&self.shared.stats).drop_reason("sequence-conflict-lost", 1);
                        if let Some(to) = message.source {
                            self.tell(Command::Conflict { to, packet: ours });
                        }
                    }
                }
            }
            out.push((kept, stored));
        }
        if !new.is_empty() {
            self.tell(Command::Stored {
                community: self.context.community,
                messages: new,
            });
        }
        out
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
        loop {
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
            if let Err(error) = self.instance.timer(token).into_result() {
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
fn raw_message(
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

/// The host side of [`HostApi`] for one community instance.
struct HostHandle {
    community: CommunityId,
    name: String,
    member: PublicKey,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    wake: SyncSender<Job>,
    max_timers: usize,
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
