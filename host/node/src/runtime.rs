//! Start-up and shutdown of a node: [`start`] locks the data folder (one process each), opens
//! the keys, the sockets and the store, then spawns the tasks and threads; [`Running::wait`]
//! joins them; [`run`] is both, the binary's and the tests' entry.
//!
//! Tasks (all stopped by one cancellation token, all awaited by [`Running::wait`]):
//! - **receive** (`net`): reads datagrams, as many as are waiting
//!   (`limits.receive_batch` at most), and queues them as one batch for the verifiers;
//! - **verifier threads** (`net`; one per core, `limits.verifiers` at most; std threads,
//!   not tokio tasks, so that signature checks never hold up a tokio worker): each takes the next
//!   batch, decodes and verifies its datagrams (`wire::decode`, the CPU-heavy part, with a bounded
//!   cache of parsed author keys) and queues the results as one batch;
//! - **protocol** (`protocol`): owns the core `Node`; handles datagrams, commands and
//!   timeouts, sends what the core asks, hands verified messages to community threads;
//! - **store** ([`crate::store`]): batches inserts into SQLite; **sync reads**
//!   (`store::sync_task`): the store reads the protocol task asks for;
//! - **plugin scan**: loads plugin files that appear in the plugin folders;
//! - **watchdog**: reports (once) a community whose plugin call runs past
//!   `limits.plugin_call_deadline_ms`;
//! - **api** ([`crate::api`]): the control API.
//!
//! Community plugins run on their own threads (see [`crate::plugin`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dispersy_core::identity::KeyPair;
use dispersy_core::member::KeyCache;
use dispersy_core::node::Node;
use dispersy_core::verifier::{self, Verifier};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Shared};
use crate::command::Command;
use crate::config::{Config, Limits};
use crate::keys;
use crate::lock::{self, DataLock};
use crate::net::{self, Datagram, RawBatch};
use crate::plugin::WorkerLimits;
use crate::protocol::{Clock, Protocol};
use crate::registry::{self, Registry};
use crate::store::{self, Store};

/// The folder in the data folder that holds the master keys of the communities this node
/// created (`POST /v1/communities` without a master key), one `<community id>.key` file each,
/// mode 0600, in a 0700 folder. The node founds such a community whenever it joins it.
pub const MASTERS_DIR: &str = "masters";
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
    /// Another process uses the data folder, or it cannot be locked.
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
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
    /// The data folder's lock, released when the node is gone.
    lock: DataLock,
    /// How long shutdown waits for the community threads.
    stop_timeout: Duration,
}

impl Running {
    /// Waits until every task ended (after the shutdown token was cancelled), then stops the
    /// community threads, waiting for them at most the plugin call deadline plus a second: a
    /// thread stuck in a plugin call is left behind (logged), so shutdown always finishes.
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
            let timeout = self.stop_timeout;
            let stopped = tokio::task::spawn_blocking(move || registry.stop_all(timeout)).await;
            if let Err(error) = stopped {
                tracing::error!(%error, "stopping community threads failed");
            }
        }
        drop(self.lock);
    }
}

/// Starts a node; it runs until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    config.validate()?;
    let trackers = config.tracker_addresses()?;
    let peers = config.peer_addresses()?;
    let data_dir = config.data_dir.clone();
    create_private_dir(&data_dir)?;
    // First, before the keys or the store are touched: one process per data folder.
    let lock = lock::acquire(&data_dir)?;
    let key = keys::load_or_create(&data_dir.join("member.key"))?;
    let token = keys::load_or_create_token(&data_dir.join("api-token"))?;
    // A community's master key, to found it when it is joined (refused unless private).
    let founder = config.founder_key.as_deref().map(keys::load).transpose()?;
    let seed = keys::random_seed().map_err(|e| StartError::Random(e.to_string()))?;

    let (socket, udp) = bind_udp(&config)?;
    let udp_inode = net::socket_inode(&socket);
    let (listener, api_address) = bind_api(&config).await?;
    let store = if config.tracker {
        None
    } else {
        Some(open_store(&config, &data_dir, &key).await?)
    };

    let clock = Clock {
        start: tokio::time::Instant::now(),
    };
    let interfaces = net::local_interfaces();
    let lan = net::lan_address(udp, &interfaces);
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
    let health = Arc::new(store::Health::default());
    let registry = store.as_ref().map(|store| {
        let inserts = spawn_store_tasks(
            store,
            &config.limits,
            sync_jobs_rx,
            &commands_tx,
            &shutdown,
            &health,
            &mut tasks,
        );
        Arc::new(Registry::new(registry::Context {
            store: store.clone(),
            key: key.clone(),
            commands: commands_tx.clone(),
            inserts,
            limits: worker_limits(&config.limits),
            peers,
            dirs: config.plugin_dir.clone(),
            copies: data_dir.join("plugins"),
            spare_copies: config.limits.plugin_copies,
        }))
    });
    let (raw_tx, threads) = spawn_verifiers(&config.limits, batches, datagrams_tx)?;
    tasks.push(tokio::spawn(net::receive(
        socket.clone(),
        raw_tx,
        config.limits.max_datagram,
        config.limits.receive_batch,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(
        Protocol::new(node, udp, socket, clock, sync_jobs_tx, registry.clone())
            .with_founder(founder)
            .with_masters(data_dir.join(MASTERS_DIR))
            .run(datagrams_rx, commands_rx, shutdown.clone()),
    ));
    if let Some(registry) = &registry {
        tasks.push(tokio::spawn(watchdog(
            registry.clone(),
            Duration::from_millis(config.limits.plugin_call_deadline_ms),
            shutdown.clone(),
        )));
        load_plugins(registry, &config, &shutdown, &mut tasks).await;
    }
    write_endpoints(&data_dir, udp, api_address, &key);
    let shared = Arc::new(Shared {
        commands: commands_tx,
        registry: registry.clone(),
        store,
        token: token.clone(),
        shutdown: shutdown.clone(),
        api_body: config.limits.api_body,
        api_connections: config.limits.api_connections,
        api_candidates: config.limits.api_candidates,
        api_header_timeout: Duration::from_millis(config.limits.api_header_timeout_ms),
        api_connection: Duration::from_millis(config.limits.api_connection_ms),
        udp_inode,
        masters: data_dir.join(MASTERS_DIR),
        store_health: health,
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
        lock,
        stop_timeout: Duration::from_millis(config.limits.plugin_call_deadline_ms)
            + Duration::from_secs(1),
    })
}

/// Binds the UDP socket; returns it with its bound address.
fn bind_udp(config: &Config) -> Result<(Arc<UdpSocket>, SocketAddr), StartError> {
    let address = SocketAddr::new(config.bind, config.port);
    let error = |source| StartError::Udp { address, source };
    let socket = net::bind_udp(address, config.limits.recv_buffer).map_err(error)?;
    let bound = socket.local_addr().map_err(error)?;
    Ok((Arc::new(socket), bound))
}

/// Binds the control API's listener; returns it with its bound address.
async fn bind_api(config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Api {
        address: config.api,
        source,
    };
    let listener = TcpListener::bind(config.api).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// Opens the database in the data folder (migrating it), fills in packet hashes missing from
/// older rows, and records our own member.
async fn open_store(config: &Config, data_dir: &Path, key: &KeyPair) -> Result<Store, StartError> {
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
    Ok(store)
}

/// Spawns the store task (batched inserts) and the sync-read task into `tasks`; returns the
/// sender of inserts.
fn spawn_store_tasks(
    store: &Store,
    limits: &Limits,
    sync_jobs: mpsc::Receiver<store::sync_task::SyncJob>,
    commands: &mpsc::Sender<Command>,
    shutdown: &CancellationToken,
    health: &Arc<store::Health>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> store::InsertSender {
    let (inserts_tx, inserts_rx) = mpsc::channel(limits.store_queue);
    tasks.push(tokio::spawn(store::run(
        store.clone(),
        inserts_rx,
        limits.store_batch,
        shutdown.clone(),
        health.clone(),
    )));
    tasks.push(tokio::spawn(store::sync_task::run(
        store.clone(),
        sync_jobs,
        commands.clone(),
        shutdown.clone(),
    )));
    inserts_tx
}

/// The bounds of community threads, from the configured limits.
fn worker_limits(limits: &Limits) -> WorkerLimits {
    WorkerLimits {
        queue: limits.plugin_queue,
        batch: limits.plugin_batch,
        recent: limits.recent_messages,
        delayed: limits.delayed_messages,
        delay_timeout: Duration::from_millis(limits.delay_timeout_ms),
        timers: limits.plugin_timers,
        deadline: Duration::from_millis(limits.plugin_call_deadline_ms),
        restarts: limits.plugin_restarts,
        restart_window: Duration::from_millis(limits.plugin_restart_window_ms),
        restart_backoff: Duration::from_millis(limits.plugin_restart_backoff_ms),
        read_page: limits.plugin_read_page,
    }
}

/// Looks at every community's running plugin call four times per `deadline` (at most every
/// 250 ms) and reports, once per call, those past it.
async fn watchdog(registry: Arc<Registry>, deadline: Duration, shutdown: CancellationToken) {
    let every = (deadline / 4).clamp(Duration::from_millis(1), Duration::from_millis(250));
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                for (_, worker) in registry.workers() {
                    worker.shared.watch();
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
}

/// Starts the verifier threads (one per core, `limits.verifiers` at most), all taking batches
/// from one queue of `batches` and handing results to `datagrams`; returns the sender of raw
/// batches and the threads.
fn spawn_verifiers(
    limits: &Limits,
    batches: usize,
    datagrams: mpsc::Sender<Vec<Datagram>>,
) -> Result<(mpsc::Sender<RawBatch>, Vec<std::thread::JoinHandle<()>>), StartError> {
    let verifier_count = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, limits.verifiers.max(1));
    let (raw_tx, raw_rx) = mpsc::channel(batches);
    let raw_rx = Arc::new(std::sync::Mutex::new(raw_rx));
    let mut threads = Vec::with_capacity(verifier_count);
    for n in 0..verifier_count {
        let raw = raw_rx.clone();
        let datagrams = datagrams.clone();
        let max_datagram = limits.max_datagram;
        let keys = limits.verifier_keys;
        let combs = verifier::Config {
            hot_after: limits.verifier_hot_after,
            max_tables: limits.verifier_tables,
            max_counted: keys,
        };
        let thread = std::thread::Builder::new()
            .name(format!("verifier-{n}"))
            .spawn(move || {
                net::verify(
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
    Ok((raw_tx, threads))
}

/// Loads the plugins found at start and, when configured, spawns the rescan task into `tasks`.
async fn load_plugins(
    registry: &Arc<Registry>,
    config: &Config,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) {
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

/// Writes `endpoints.json` (mode 0600: it names the API's address) through a temporary file.
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
    // A temporary file left by a crash would refuse the new one: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let written = crate::keys::write_secret(&tmp, &text)
        .map_err(std::io::Error::other)
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "could not write endpoints file");
    }
}
