//! The tokio driver: it moves bytes between the UDP socket and the sans-IO core, arms the core's
//! timer, and routes the core's events to community threads. It makes no protocol decisions.
//!
//! Tasks (all stopped by one cancellation token, all awaited by [`Running::wait`]):
//! - **receive**: reads datagrams, as many as are waiting (`limits.receive_batch` at most), and
//!   queues them as one batch for the verifiers;
//! - **verifier threads** (one per core, `limits.verifiers` at most; std threads, not tokio
//!   tasks, so that signature checks never hold up a tokio worker): each takes the next batch,
//!   decodes and verifies its datagrams (`wire::decode`, the CPU-heavy part, with a bounded cache
//!   of parsed author keys) and queues the results as one batch;
//! - **protocol**: owns the core [`Node`]; handles datagrams, commands and timeouts, sends what the
//!   core asks, hands verified messages to community threads;
//! - **store**: batches inserts into SQLite;
//! - **api**: the control API.
//!
//! Community plugins run on their own threads (see [`crate::plugin`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dispersy_core::identity::{CommunityId, KeyPair};
use dispersy_core::member::KeyCache;
use dispersy_core::node::{CreateError, Created, Event, Incoming, Node};
use dispersy_core::stats::Counters;
use dispersy_core::time::Instant as CoreInstant;
use dispersy_core::verifier::{self, Verifier};
use dispersy_core::wire::{self, DecodeError, Packet};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::plugin::{self, Job, WorkerLimits, lock};
use crate::registry::{self, Registry};
use crate::store::{self, Store};
use crate::{api, keys};

/// A request to the protocol task.
pub enum Command {
    /// Create and send a message (from the API or a plugin).
    Create {
        /// The community.
        community: CommunityId,
        /// Meta-message name.
        meta: String,
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
        request: u32,
        /// The rows.
        rows: Vec<dispersy_core::sync::Row>,
    },
    /// The store read the packets to send.
    PacketsRead {
        /// The request.
        request: u32,
        /// The packets.
        packets: Vec<Vec<u8>>,
    },
    /// A community thread stored these messages (told after the gaps of the same batch).
    Stored {
        /// The community.
        community: CommunityId,
        /// The messages.
        messages: Vec<dispersy_core::node::Stored>,
    },
    /// The store found sequence numbers `low..=high` missing before this message.
    SequenceGap {
        /// The community.
        community: CommunityId,
        /// The message, to retry once the gap is filled.
        message: Box<dispersy_core::node::Incoming>,
        /// First missing number.
        low: u32,
        /// Last missing number.
        high: u32,
    },
    /// A message lost a sequence-number conflict against our stored `packet`: it goes back to
    /// the sender.
    Conflict {
        /// The loser's sender.
        to: SocketAddr,
        /// Our winning packet.
        packet: Vec<u8>,
    },
    /// A plugin decided whether to co-sign ([`Event::SignatureAsked`]).
    SignatureVerdict {
        /// The question.
        ask: u32,
        /// Whether it signs.
        allow: bool,
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
        request: u32,
        /// The packets.
        packets: Vec<Vec<u8>>,
    },
    /// The candidates of one community.
    Candidates {
        /// The community.
        community: CommunityId,
        /// The answer; `None` for an unknown community.
        reply: oneshot::Sender<Option<Vec<CandidateView>>>,
    },
}

/// Node facts, as the control API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    /// Public key, hex.
    pub member: String,
    /// Member id, hex.
    pub mid: String,
    /// Bound UDP address.
    pub udp: SocketAddr,
    /// LAN address as the node reports it.
    pub lan: SocketAddr,
    /// WAN address as peers see it.
    pub wan: SocketAddr,
    /// `public`, `unknown` or `symmetric-NAT`.
    pub connection_type: &'static str,
    /// Tracker role.
    pub tracker: bool,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Communities known (a tracker's bare ones included).
    pub communities: usize,
    /// Sessions established with peers.
    pub sessions: usize,
    /// Traffic counters.
    pub stats: NodeStats,
}

/// Node traffic counters.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Accepted packets by kind.
    pub packets: HashMap<&'static str, u64>,
    /// Dropped packets by reason (core and driver).
    pub dropped: HashMap<&'static str, u64>,
}

/// Community facts, as the control API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct CommunityInfo {
    /// Community id, hex.
    pub id: String,
    /// Type name (`null` for a tracker's bare community).
    pub name: Option<String>,
    /// Plugin version.
    pub version: Option<String>,
    /// Global time.
    pub global_time: u64,
    /// Candidates by category.
    pub candidates: HashMap<&'static str, usize>,
    /// Walker and message counters.
    pub stats: CommunityStatsView,
}

/// Per-community counters.
#[derive(Debug, Clone, Serialize)]
pub struct CommunityStatsView {
    /// Introduction-requests sent.
    pub walk_attempts: u64,
    /// Introduction-responses received.
    pub walk_successes: u64,
    /// Introduction-requests that timed out.
    pub walk_failures: u64,
    /// Introduction-requests received.
    pub stumbles: u64,
    /// Session handshakes completed as responder.
    pub handshakes: u64,
    /// Introduction-responses that introduced nobody.
    pub responses_without_introduction: u64,
    /// Introductions refused because both peers are behind symmetric NATs.
    pub introductions_refused: u64,
    /// Punctures received for our walks.
    pub punctures: u64,
    /// Introduction-requests sent with a new bloom filter.
    pub sync_new: u64,
    /// Introduction-requests sent with a reused filter.
    pub sync_reused: u64,
    /// Introduction-requests sent without a filter.
    pub sync_skipped: u64,
    /// Sync-only follow-up requests sent (catch-up rounds that do not wait for the walk).
    pub sync_follow_ups: u64,
    /// Sync-only sweep requests sent (after a catch-up, our whole history a filter at a time).
    pub sync_sweeps: u64,
    /// Stored messages sent answering filters.
    pub sync_packets_sent: u64,
    /// Stored messages sent answering missing-sequence, -message and -last-message.
    pub missing_packets_sent: u64,
    /// Relayed messages passed on (one per copy).
    pub relayed: u64,
    /// Received messages that waited for others (a sequence gap, a plugin's wait).
    pub delayed: u64,
    /// Messages created here.
    pub messages_created: u64,
    /// Verified messages passed to the plugin.
    pub messages_received: u64,
    /// Messages dropped by the host, by reason.
    pub dropped: HashMap<&'static str, u64>,
}

/// One candidate, as the control API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateView {
    /// Address used to reach it.
    pub address: SocketAddr,
    /// Its LAN address.
    pub lan: SocketAddr,
    /// Its WAN address.
    pub wan: SocketAddr,
    /// Member id, hex, once verified.
    pub member: Option<String>,
    /// `walk`, `stumble`, `intro` or `none`.
    pub category: &'static str,
    /// Whether it is verified (walk or stumble).
    pub verified: bool,
    /// Its connection type as reported.
    pub connection_type: &'static str,
    /// Its global time as reported.
    pub global_time: u64,
    /// Milliseconds since we last heard of it.
    pub last_seen_ms: Option<u64>,
}

/// A decoded datagram on its way to the protocol task (with its bytes: one naming a member
/// whose key only the protocol task knows is decoded again there).
struct Datagram {
    from: SocketAddr,
    bytes: Vec<u8>,
    decoded: Result<Packet, DecodeError>,
}

/// Maps tokio time to the core's millisecond clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> CoreInstant {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        CoreInstant::from_millis(millis)
    }

    fn to_tokio(self, at: CoreInstant) -> tokio::time::Instant {
        self.start + Duration::from_millis(at.as_millis())
    }
}

/// Why the node could not start. Each message names the culprit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data folder cannot be used.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A key or token file cannot be used.
    #[error(transparent)]
    Secret(#[from] keys::SecretError),
    /// The database cannot be opened.
    #[error("database {path}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// The error.
        source: store::StoreError,
    },
    /// The UDP socket cannot be bound.
    #[error("UDP {address}: {source}")]
    Udp {
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The control API cannot be bound.
    #[error("control API {address}: {source}")]
    Api {
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A plugin's community could not be joined.
    #[error("community {name}: {reason}")]
    Community {
        /// Community type name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The operating system's random generator failed.
    #[error("random generator: {0}")]
    Random(String),
    /// A thread could not be started.
    #[error("starting a thread: {0}")]
    Thread(String),
}

/// A started node. Drop does not stop it: cancel the token given to [`start`] and call
/// [`Running::wait`].
pub struct Running {
    /// The bound UDP address.
    pub udp: SocketAddr,
    /// The bound control API address.
    pub api: SocketAddr,
    /// The control API token.
    pub token: String,
    /// The node's member public key, hex.
    pub member: String,
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    registry: Option<Arc<Registry>>,
}

impl Running {
    /// Waits until every task ended (after the shutdown token was cancelled), then stops the
    /// community threads.
    pub async fn wait(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "task failed");
            }
        }
        // The verifier threads end once the receive task is gone and their queue is empty.
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a verifier thread panicked");
                }
            }
        })
        .await;
        if let Err(error) = joined {
            tracing::error!(%error, "joining verifier threads failed");
        }
        if let Some(registry) = self.registry {
            let stopped = tokio::task::spawn_blocking(move || registry.stop_all()).await;
            if let Err(error) = stopped {
                tracing::error!(%error, "stopping community threads failed");
            }
        }
    }
}

/// Everything the API needs.
pub(crate) struct Shared {
    pub commands: mpsc::Sender<Command>,
    /// `None` for a tracker.
    pub registry: Option<Arc<Registry>>,
    pub store: Option<Store>,
    pub token: String,
    pub shutdown: CancellationToken,
    pub api_body: usize,
}

/// Starts a node; it runs until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    config.validate()?;
    let trackers = config.tracker_addresses()?;
    let peers = config.peer_addresses()?;
    let data_dir = config.data_dir.clone();
    create_private_dir(&data_dir)?;
    let key = keys::load_or_create(&data_dir.join("member.key"))?;
    let token = keys::load_or_create_token(&data_dir.join("api-token"))?;
    let seed = keys::random_seed().map_err(|e| StartError::Random(e.to_string()))?;

    let socket = Arc::new(bind_udp(&config)?);
    let udp = socket.local_addr().map_err(|source| StartError::Udp {
        address: SocketAddr::new(config.bind, config.port),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|source| StartError::Api {
            address: config.api,
            source,
        })?;
    let api_address = listener.local_addr().map_err(|source| StartError::Api {
        address: config.api,
        source,
    })?;
    let store = if config.tracker {
        None
    } else {
        let path = data_dir.join("dispersy.db");
        let store_error = |source| StartError::Store {
            path: path.clone(),
            source,
        };
        let store = Store::open_with(
            &path,
            store::Tuning {
                cache_kib: config.limits.store_cache_kib,
                mmap_mib: config.limits.store_mmap_mib,
            },
        )
        .await
        .map_err(store_error)?;
        store.backfill_hashes().await.map_err(store_error)?;
        store
            .remember_member(key.public())
            .await
            .map_err(store_error)?;
        Some(store)
    };

    let clock = Clock {
        start: tokio::time::Instant::now(),
    };
    let interfaces = local_interfaces();
    let lan = lan_address(udp, &interfaces);
    let node = Node::new(
        config.core(trackers, interfaces),
        key.clone(),
        lan,
        seed,
        clock.now(),
    );
    let (commands_tx, commands_rx) = mpsc::channel(config.limits.command_queue);
    // Both datagram queues hold batches of up to `receive_batch` datagrams; their bound in
    // datagrams is `datagram_queue`.
    let batches = config
        .limits
        .datagram_queue
        .div_ceil(config.limits.receive_batch)
        .max(1);
    let (datagrams_tx, datagrams_rx) = mpsc::channel(batches);
    let mut tasks = Vec::new();
    let (sync_jobs_tx, sync_jobs_rx) = mpsc::channel(config.limits.sync_queue);
    let registry = match &store {
        None => None,
        Some(store) => {
            let (inserts_tx, inserts_rx) = mpsc::channel(config.limits.store_queue);
            tasks.push(tokio::spawn(store::run(
                store.clone(),
                inserts_rx,
                config.limits.store_batch,
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(sync_reads(
                store.clone(),
                sync_jobs_rx,
                commands_tx.clone(),
                shutdown.clone(),
            )));
            let limits = &config.limits;
            Some(Arc::new(Registry::new(registry::Context {
                store: store.clone(),
                key: key.clone(),
                commands: commands_tx.clone(),
                inserts: inserts_tx,
                limits: WorkerLimits {
                    queue: limits.plugin_queue,
                    batch: limits.plugin_batch,
                    recent: limits.recent_messages,
                    delayed: limits.delayed_messages,
                    delay_timeout: Duration::from_millis(limits.delay_timeout_ms),
                    timers: limits.plugin_timers,
                },
                peers,
                dirs: config.plugin_dir.clone(),
            })))
        }
    };
    let verifier_count = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, config.limits.verifiers.max(1));
    let (raw_tx, raw_rx) = mpsc::channel(batches);
    let raw_rx = Arc::new(std::sync::Mutex::new(raw_rx));
    let mut threads = Vec::with_capacity(verifier_count);
    for n in 0..verifier_count {
        let raw = raw_rx.clone();
        let datagrams = datagrams_tx.clone();
        let max_datagram = config.limits.max_datagram;
        let keys = config.limits.verifier_keys;
        let combs = verifier::Config {
            hot_after: config.limits.verifier_hot_after,
            max_tables: config.limits.verifier_tables,
            max_counted: keys,
        };
        let thread = std::thread::Builder::new()
            .name(format!("verifier-{n}"))
            .spawn(move || {
                verify(
                    &raw,
                    &datagrams,
                    max_datagram,
                    &KeyCache::new(keys),
                    &mut Verifier::new(combs),
                )
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        threads.push(thread);
    }
    drop(datagrams_tx);
    tasks.push(tokio::spawn(receive(
        socket.clone(),
        raw_tx,
        config.limits.max_datagram,
        config.limits.receive_batch,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(
        Protocol {
            node,
            udp,
            sync_jobs: sync_jobs_tx,
            socket,
            clock,
            registry: registry.clone(),
            dropped: Counters::default(),
            last_refresh: tokio::time::Instant::now(),
            signing: HashMap::new(),
        }
        .run(datagrams_rx, commands_rx, shutdown.clone()),
    ));
    if let Some(registry) = &registry {
        let loaded = registry.scan().await;
        if loaded.iter().all(|r| r.error.is_some()) {
            tracing::warn!(dirs = ?config.plugin_dir, "no community plugin loaded");
        }
        if config.plugin_scan_interval_ms > 0 {
            tasks.push(tokio::spawn(rescan(
                registry.clone(),
                Duration::from_millis(config.plugin_scan_interval_ms),
                shutdown.clone(),
            )));
        }
    }
    write_endpoints(&data_dir, udp, api_address, &key);
    let shared = Arc::new(Shared {
        commands: commands_tx,
        registry: registry.clone(),
        store,
        token: token.clone(),
        shutdown: shutdown.clone(),
        api_body: config.limits.api_body,
    });
    tasks.push(tokio::spawn(api::serve(listener, shared, shutdown.clone())));
    tracing::info!(%udp, api = %api_address, member = %key.member_id(), tracker = config.tracker, "node started");
    Ok(Running {
        udp,
        api: api_address,
        token,
        member: key.public().to_hex(),
        tasks,
        threads,
        registry,
    })
}

/// A read of the store for synchronisation.
enum SyncJob {
    Query {
        community: CommunityId,
        row: i64,
        query: dispersy_core::sync::Query,
    },
    Rows {
        request: u32,
        row: i64,
        range: dispersy_core::sync::Range,
        limit: usize,
        metas: Vec<(u32, dispersy_core::meta::SyncOrder, u64)>,
    },
    Prune {
        row: i64,
        meta: u32,
        below: u64,
    },
    Packets {
        request: u32,
        ids: Vec<u64>,
    },
    Lookup {
        request: u32,
        row: i64,
        lookup: dispersy_core::missing::Lookup,
        max_bytes: usize,
    },
}

/// The sync task: runs the store reads the protocol task asks for and hands the results back.
async fn sync_reads(
    store: Store,
    mut jobs: mpsc::Receiver<SyncJob>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let command = match job {
            SyncJob::Query {
                community,
                row,
                query,
            } => match store.sync_query(row, query).await {
                Ok((right, left)) => Command::SyncQueried {
                    community,
                    right,
                    left,
                },
                Err(error) => {
                    tracing::warn!(%error, "sync query failed");
                    continue;
                }
            },
            SyncJob::Rows {
                request,
                row,
                range,
                limit,
                metas,
            } => match store.sync_rows(row, range, limit, &metas).await {
                Ok(rows) => Command::SyncRowsRead { request, rows },
                Err(error) => {
                    tracing::warn!(%error, "sync rows failed");
                    continue;
                }
            },
            SyncJob::Prune { row, meta, below } => {
                match store.prune(row, meta, below).await {
                    Ok(n) => tracing::debug!(meta, below, removed = n, "pruned"),
                    Err(error) => tracing::warn!(%error, "pruning failed"),
                }
                continue;
            }
            SyncJob::Lookup {
                request,
                row,
                lookup,
                max_bytes,
            } => match store.lookup(row, &lookup, max_bytes).await {
                Ok(packets) => Command::AnswerRead { request, packets },
                Err(error) => {
                    tracing::warn!(%error, "reading missing packets failed");
                    continue;
                }
            },
            SyncJob::Packets { request, ids } => match store.packets(&ids).await {
                Ok(packets) => Command::PacketsRead { request, packets },
                Err(error) => {
                    tracing::warn!(%error, "reading packets failed");
                    continue;
                }
            },
        };
        if commands.send(command).await.is_err() {
            break;
        }
    }
}

/// Loads plugin files that appear in the plugin folders.
async fn rescan(registry: Arc<Registry>, every: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                registry.scan().await;
            }
            () = shutdown.cancelled() => break,
        }
    }
}

/// Starts a node and runs it until `shutdown` is cancelled: the binary's and the tests' entry.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let running = start(config, shutdown).await?;
    running.wait().await;
    Ok(())
}

/// The machine's interfaces, for telling LAN from WAN peers.
fn local_interfaces() -> Vec<dispersy_core::address::Interface> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .map(|i| match i.addr {
                if_addrs::IfAddr::V4(v4) => dispersy_core::address::Interface {
                    address: v4.ip.into(),
                    netmask: v4.netmask.into(),
                },
                if_addrs::IfAddr::V6(v6) => dispersy_core::address::Interface {
                    address: v6.ip.into(),
                    netmask: v6.netmask.into(),
                },
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot list network interfaces; private ranges count as LAN");
            Vec::new()
        }
    }
}

/// Our LAN address: the bound address, or for a wildcard bind the first non-loopback IPv4
/// interface (loopback when there is none), with the bound port.
fn lan_address(bound: SocketAddr, interfaces: &[dispersy_core::address::Interface]) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = interfaces
        .iter()
        .map(|i| i.address)
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    SocketAddr::new(ip, bound.port())
}

fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StartError::DataDir {
            path: path.to_path_buf(),
            source,
        })
}

fn bind_udp(config: &Config) -> Result<UdpSocket, StartError> {
    use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
    let address = SocketAddr::new(config.bind, config.port);
    let error = |source| StartError::Udp { address, source };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(IpProtocol::UDP),
    )
    .map_err(error)?;
    // The default buffer holds about a hundred datagrams; bursts need more (rust-stack.md §4.12).
    if let Err(e) = socket.set_recv_buffer_size(config.limits.recv_buffer) {
        tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
    }
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    UdpSocket::from_std(socket.into()).map_err(error)
}

/// Writes `endpoints.json` (bound addresses), so that scripts and the demo can find a node
/// started on port 0.
fn write_endpoints(dir: &std::path::Path, udp: SocketAddr, api: SocketAddr, key: &KeyPair) {
    let text = serde_json::json!({
        "udp": udp,
        "api": api,
        "member": key.public().to_hex(),
        "pid": std::process::id(),
    })
    .to_string();
    let path = dir.join("endpoints.json");
    let tmp = dir.join("endpoints.json.tmp");
    if let Err(error) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
        tracing::warn!(path = %path.display(), %error, "could not write endpoints file");
    }
}

/// A batch of received datagrams: (source, bytes).
type RawBatch = Vec<(SocketAddr, Vec<u8>)>;

/// The receive task: reads every datagram waiting (up to `batch`) and hands them to the
/// verifiers as one batch.
async fn receive(
    socket: Arc<UdpSocket>,
    verifiers: mpsc::Sender<RawBatch>,
    max_datagram: usize,
    batch: usize,
    shutdown: CancellationToken,
) {
    // One byte more than the limit, so an oversized datagram is seen as such, not truncated.
    let mut buffer = vec![0u8; max_datagram + 1];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            () = shutdown.cancelled() => break,
        };
        let mut datagrams = Vec::with_capacity(batch.min(64));
        match received {
            Ok((len, from)) => datagrams.push((from, buffer[..len].to_vec())),
            // ICMP errors from earlier sends surface here on Linux; they concern nobody.
            Err(error) => tracing::trace!(%error, "receive error"),
        }
        // Whatever else is already waiting, without waiting for more.
        for _ in 1..batch {
            match socket.try_recv_from(&mut buffer) {
                Ok((len, from)) => datagrams.push((from, buffer[..len].to_vec())),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => tracing::trace!(%error, "receive error"),
            }
        }
        if !datagrams.is_empty() && verifiers.send(datagrams).await.is_err() {
            break;
        }
    }
}

/// A verifier thread: takes the next batch from the shared queue, decodes and verifies its
/// datagrams (the CPU-heavy part; all signatures of a batch checked together, see
/// `dispersy_core::verifier`) and hands them on as one batch. A datagram longer than the buffer
/// arrived truncated to `max_datagram + 1` bytes, which decoding reports as oversized. Ends when
/// the receive task or the protocol task is gone.
fn verify(
    raw: &std::sync::Mutex<mpsc::Receiver<RawBatch>>,
    datagrams: &mpsc::Sender<Vec<Datagram>>,
    max_datagram: usize,
    keys: &KeyCache,
    verifier: &mut Verifier,
) {
    loop {
        // Whoever holds the lock waits for the next batch; the others wait for the lock.
        let Some(batch) = lock(raw).blocking_recv() else {
            break;
        };
        let bytes: Vec<&[u8]> = batch.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        let decoded = wire::decode_batch(&bytes, max_datagram, keys, verifier);
        let verified: Vec<Datagram> = batch
            .into_iter()
            .zip(decoded)
            .map(|((from, bytes), decoded)| Datagram {
                decoded,
                from,
                bytes,
            })
            .collect();
        if datagrams.blocking_send(verified).is_err() {
            break;
        }
    }
}

struct Protocol {
    node: Node,
    udp: SocketAddr,
    sync_jobs: mpsc::Sender<SyncJob>,
    socket: Arc<UdpSocket>,
    clock: Clock,
    registry: Option<Arc<Registry>>,
    /// Drops decided by the driver (full queues).
    dropped: Counters,
    last_refresh: tokio::time::Instant,
    /// API calls waiting for a co-signed message, by signature request (bounded by the core's
    /// `signature.max_pending`: every request ends in an `Event::Signed`).
    signing: HashMap<u32, oneshot::Sender<Result<Created, CreateError>>>,
}

impl Protocol {
    async fn run(
        mut self,
        mut datagrams: mpsc::Receiver<Vec<Datagram>>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        self.refresh();
        loop {
            let deadline = self.node.poll_timeout().map(|t| self.clock.to_tokio(t));
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                batch = datagrams.recv() => match batch {
                    Some(batch) => {
                        let mut handled = batch.len();
                        self.datagrams(batch);
                        // Take what else is waiting before flushing (bounded, to stay fair).
                        while handled < 1024 {
                            match datagrams.try_recv() {
                                Ok(batch) => {
                                    handled += batch.len();
                                    self.datagrams(batch);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                () = timer => {
                    self.node.handle_timeout(self.clock.now());
                    self.refresh();
                }
            }
            self.flush().await;
            if self.last_refresh.elapsed() >= Duration::from_millis(250) {
                self.refresh();
            }
        }
    }

    fn datagrams(&mut self, batch: Vec<Datagram>) {
        let now = self.clock.now();
        for d in batch {
            self.node.handle_decoded(now, d.from, &d.bytes, d.decoded);
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.clock.now();
        match command {
            Command::Create {
                community,
                meta,
                payload,
                candidates,
                co_signer: Some((key, address)),
                reply,
            } => {
                let requested = self.node.request_signature(
                    now,
                    community,
                    &meta,
                    payload,
                    key,
                    address,
                    &candidates,
                );
                match (requested, reply) {
                    (Ok(request), Some(reply)) => {
                        self.signing.insert(request, reply);
                    }
                    (Ok(_), None) => {}
                    (Err(error), reply) => {
                        tracing::debug!(%community, %meta, %error, "co-signed message not started");
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
            Command::Create {
                community,
                meta,
                payload,
                candidates,
                co_signer: None,
                reply,
            } => {
                let result = self
                    .node
                    .create_message(now, community, &meta, payload, &candidates);
                if let Err(error) = &result {
                    tracing::debug!(%community, %meta, %error, "message not created");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Join {
                definition,
                resume,
                peers,
                reply,
            } => {
                let joined = self.node.join(now, *definition, resume);
                if let Ok(id) = &joined {
                    for peer in peers {
                        if let Err(error) = self.node.add_candidate(now, *id, peer) {
                            tracing::warn!(%peer, %error, "peer not added");
                        }
                    }
                }
                let _ = reply.send(joined);
            }
            Command::SyncQueried {
                community,
                right,
                left,
            } => self.node.handle_sync_query(now, community, right, left),
            Command::SyncRowsRead { request, rows } => {
                self.node.handle_sync_rows(now, request, rows);
            }
            Command::PacketsRead { request, packets } => {
                self.node.send_packets(now, request, packets);
            }
            Command::Stored {
                community,
                messages,
            } => self.node.handle_stored(now, community, &messages),
            Command::SequenceGap {
                community,
                message,
                low,
                high,
            } => self
                .node
                .handle_sequence_gap(now, community, *message, low, high),
            Command::Conflict { to, packet } => self.node.handle_conflict(now, to, &packet),
            Command::Wait {
                community,
                message,
                awaited,
            } => self.node.handle_wait(now, community, *message, awaited),
            Command::SignatureVerdict { ask, allow } => {
                self.node.handle_signature_verdict(now, ask, allow);
            }
            Command::AnswerRead { request, packets } => {
                self.node.send_answer(now, request, packets);
            }
            Command::Node { reply } => {
                let _ = reply.send(self.node_info(now));
            }
            Command::Communities { reply } => {
                let _ = reply.send(self.communities(now));
            }
            Command::Candidates { community, reply } => {
                let _ = reply.send(self.candidates(community, now));
            }
        }
    }

    /// Sends what the core queued and hands events to community threads.
    async fn flush(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            if let Err(error) = self
                .socket
                .send_to(&transmit.bytes, transmit.destination)
                .await
            {
                tracing::debug!(destination = %transmit.destination, %error, "send failed");
                self.dropped.bump("send-failed");
            }
        }
        // Messages of one community and meta go to its thread as one job per flush.
        let mut deliveries: Vec<(CommunityId, u32, Vec<Incoming>)> = Vec::new();
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::Messages {
                    community,
                    meta,
                    messages,
                } => match deliveries
                    .iter_mut()
                    .find(|(c, m, _)| *c == community && *m == meta)
                {
                    Some((_, _, list)) => list.extend(messages),
                    None => deliveries.push((community, meta, messages)),
                },
                Event::SyncQuery { community, query } => {
                    self.sync_job(community, |row| SyncJob::Query {
                        community,
                        row,
                        query,
                    });
                }
                Event::SyncRows {
                    community,
                    request,
                    range,
                    limit,
                    metas,
                } => {
                    self.sync_job(community, |row| SyncJob::Rows {
                        request,
                        row,
                        range,
                        limit,
                        metas,
                    });
                }
                Event::Prune {
                    community,
                    meta,
                    below,
                } => self.sync_job(community, |row| SyncJob::Prune { row, meta, below }),
                Event::ReadPackets {
                    request,
                    community,
                    lookup,
                    max_bytes,
                } => self.sync_job(community, |row| SyncJob::Lookup {
                    request,
                    row,
                    lookup,
                    max_bytes,
                }),
                Event::SignatureAsked {
                    community,
                    ask,
                    message,
                } => match self.registry.as_ref().and_then(|r| r.worker(&community)) {
                    // Unanswered questions expire in the core.
                    Some(worker) => {
                        let job = Job::AllowSignature {
                            ask,
                            message: Box::new(message),
                        };
                        if worker.submit(job).is_err() {
                            self.dropped.bump("plugin-queue-full");
                        }
                    }
                    None => self.dropped.bump("no-plugin"),
                },
                Event::Signed { request, result } => {
                    if let Some(reply) = self.signing.remove(&request) {
                        let _ = reply.send(result);
                    }
                }
                Event::SendPackets { request, rows } => {
                    let job = SyncJob::Packets { request, ids: rows };
                    if self.sync_jobs.try_send(job).is_err() {
                        self.dropped.bump("sync-queue-full");
                    }
                }
            }
        }
        for (community, meta, messages) in deliveries {
            match self.registry.as_ref().and_then(|r| r.worker(&community)) {
                Some(worker) => {
                    let n = messages.len() as u64;
                    if worker.submit(Job::Deliver { meta, messages }).is_err() {
                        self.dropped.add("plugin-queue-full", n);
                    }
                }
                None => self.dropped.bump("no-plugin"),
            }
        }
    }

    /// Hands a store read to the sync task; when it is busy the read is dropped (the walk then
    /// goes without a filter, the request without an answer).
    fn sync_job(&mut self, community: CommunityId, job: impl FnOnce(i64) -> SyncJob) {
        let row = self
            .registry
            .as_ref()
            .and_then(|r| r.definition(&community))
            .map(|(_, row)| row);
        match row {
            Some(row) => {
                if self.sync_jobs.try_send(job(row)).is_err() {
                    self.dropped.bump("sync-queue-full");
                }
            }
            None => self.dropped.bump("no-plugin"),
        }
    }

    /// Publishes global times and candidate lists to the community threads.
    fn refresh(&mut self) {
        self.last_refresh = tokio::time::Instant::now();
        let now = self.clock.now();
        let Some(registry) = &self.registry else {
            return;
        };
        for (id, worker) in registry.workers() {
            if let Some(community) = self.node.community(&id) {
                worker
                    .shared
                    .global_time
                    .store(community.global_time, Ordering::Relaxed);
                *lock(&worker.shared.candidates) = plugin::candidate_infos(community, now);
            }
        }
    }

    fn node_info(&self, now: CoreInstant) -> NodeInfo {
        let stats = self.node.stats();
        let mut dropped: HashMap<&'static str, u64> = stats.dropped.iter().collect();
        for (name, n) in self.dropped.iter() {
            *dropped.entry(name).or_default() += n;
        }
        NodeInfo {
            member: self.node.key().public().to_hex(),
            mid: self.node.key().member_id().to_hex(),
            udp: self.udp,
            lan: self.node.lan_address(),
            wan: self.node.wan_address(),
            connection_type: self.node.connection_type().as_str(),
            tracker: self.node.config().tracker,
            uptime_ms: now.as_millis(),
            communities: self.node.communities().count(),
            sessions: self.node.session_count(),
            stats: NodeStats {
                datagrams_received: stats.datagrams_received,
                bytes_received: stats.bytes_received,
                datagrams_sent: stats.datagrams_sent,
                bytes_sent: stats.bytes_sent,
                packets: stats.packets.iter().collect(),
                dropped,
            },
        }
    }

    fn communities(&self, now: CoreInstant) -> Vec<CommunityInfo> {
        let mut out: Vec<CommunityInfo> = self
            .node
            .communities()
            .map(|c| {
                let config = c.candidates.config();
                let mut candidates = HashMap::from([("walk", 0), ("stumble", 0), ("intro", 0)]);
                for candidate in c.candidates.iter() {
                    let category = candidate.category(now, config);
                    if category != dispersy_core::candidate::Category::None {
                        *candidates.entry(category.as_str()).or_default() += 1;
                    }
                }
                CommunityInfo {
                    id: c.id.to_hex(),
                    name: c.definition.as_ref().map(|d| d.name.clone()),
                    version: c.definition.as_ref().map(|d| d.version.clone()),
                    global_time: c.global_time,
                    candidates,
                    stats: CommunityStatsView {
                        walk_attempts: c.stats.walk_attempts,
                        walk_successes: c.stats.walk_successes,
                        walk_failures: c.stats.walk_failures,
                        stumbles: c.stats.stumbles,
                        handshakes: c.stats.handshakes,
                        responses_without_introduction: c.stats.responses_without_introduction,
                        introductions_refused: c.stats.introductions_refused,
                        punctures: c.stats.punctures,
                        sync_new: c.stats.sync_new,
                        sync_reused: c.stats.sync_reused,
                        sync_skipped: c.stats.sync_skipped,
                        sync_follow_ups: c.stats.sync_follow_ups,
                        sync_sweeps: c.stats.sync_sweeps,
                        sync_packets_sent: c.stats.sync_packets_sent,
                        missing_packets_sent: c.stats.missing_packets_sent,
                        relayed: c.stats.relayed,
                        delayed: c.stats.delayed,
                        messages_created: c.stats.messages_created,
                        messages_received: c.stats.messages_received,
                        dropped: c.stats.dropped.iter().collect(),
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn candidates(&self, id: CommunityId, now: CoreInstant) -> Option<Vec<CandidateView>> {
        let community = self.node.community(&id)?;
        let config = community.candidates.config();
        let mut out: Vec<CandidateView> = community
            .candidates
            .iter()
            .map(|c| {
                let category = c.category(now, config);
                CandidateView {
                    address: c.address,
                    lan: c.lan,
                    wan: c.wan,
                    member: c.member.map(|m| m.to_hex()),
                    category: category.as_str(),
                    verified: c.is_verified(now, config),
                    connection_type: c.connection_type.as_str(),
                    global_time: c.global_time,
                    last_seen_ms: c
                        .last_seen()
                        .map(|t| now.saturating_since(t).as_millis() as u64),
                }
            })
            .collect();
        out.sort_by_key(|c| c.address);
        Some(out)
    }
}
