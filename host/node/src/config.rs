//! Node configuration, layered with figment: built-in defaults, then a TOML file, then
//! `DISPERSY_*` environment variables (nested keys with `__`, e.g. `DISPERSY_LIMITS__MAX_DATAGRAM`),
//! then command-line flags. `config/dispersy.toml` in the repository lists every key with its
//! default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the UDP socket binds to.
    pub bind: IpAddr,
    /// UDP port (0: any free port).
    pub port: u16,
    /// Folder for the key, the database and the API token.
    pub data_dir: PathBuf,
    /// Folders searched for plugin files (`lib*.so`), in order.
    pub plugin_dir: Vec<PathBuf>,
    /// How often the plugin folders are scanned for new plugin files, in milliseconds (0: only
    /// at start and on `POST /v1/plugins`).
    pub plugin_scan_interval_ms: u64,
    /// Trackers, `host:port`.
    pub trackers: Vec<String>,
    /// Peers to contact at start, `host:port`, besides the trackers.
    pub peers: Vec<String>,
    /// Control API address; keep it on loopback.
    pub api: SocketAddr,
    /// Tracker role: answer introductions for every community, load no plugins, store nothing.
    pub tracker: bool,
    /// A file holding a community's master key (hex secret, mode 0600): the node founds that
    /// community when it joins it ([`dispersy_core::node::Node::found`]). Never logged.
    pub founder_key: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax); `RUST_LOG` overrides it.
    pub log: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Walker timing.
    pub walker: Walker,
    /// Bloom-filter synchronisation.
    pub sync: Sync,
    /// Messages waiting for others, and the missing-* requests.
    pub missing: Missing,
    /// Relay distribution.
    pub relay: Relay,
    /// Double-member co-signing.
    pub signature: Signature,
    /// Bounds of every queue and table.
    pub limits: Limits,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Walker timing, in milliseconds (defaults: the original's values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Walker {
    /// Time between two walk steps of a community.
    pub step_interval_ms: u64,
    /// How long an introduction-request waits for its response.
    pub request_timeout_ms: u64,
    /// Walk lifetime of a candidate.
    pub walk_lifetime_ms: u64,
    /// Stumble lifetime of a candidate.
    pub stumble_lifetime_ms: u64,
    /// Intro lifetime of a candidate.
    pub intro_lifetime_ms: u64,
    /// Delay before a candidate may be walked to again.
    pub eligible_delay_ms: u64,
    /// The same for trackers.
    pub tracker_eligible_delay_ms: u64,
    /// Step interval of the fast walker, right after joining a community.
    pub fast_step_interval_ms: u64,
    /// Verified candidates after which the fast walker slows down to `step_interval_ms`.
    pub fast_walker_target: usize,
    /// How long after joining the fast walker may run.
    pub fast_walker_duration_ms: u64,
    /// Candidates not heard of for this long are removed.
    pub candidate_obsolete_after_ms: u64,
    /// How often obsolete candidates, expired votes and idle sessions are removed.
    pub cleanup_interval_ms: u64,
    /// How long a WAN address vote counts.
    pub vote_lifetime_ms: u64,
    /// A session unused this long is forgotten.
    pub session_lifetime_ms: u64,
    /// How long a datagram waits for the identity of its signer.
    pub identity_timeout_ms: u64,
}

impl Default for Walker {
    fn default() -> Self {
        Walker {
            step_interval_ms: 5_000,
            request_timeout_ms: 10_500,
            walk_lifetime_ms: 57_500,
            stumble_lifetime_ms: 57_500,
            intro_lifetime_ms: 27_500,
            eligible_delay_ms: 27_500,
            tracker_eligible_delay_ms: 57_500,
            fast_step_interval_ms: 250,
            fast_walker_target: 15,
            fast_walker_duration_ms: 30_000,
            candidate_obsolete_after_ms: 180_000,
            cleanup_interval_ms: 300_000,
            vote_lifetime_ms: 180_000,
            session_lifetime_ms: 120_000,
            identity_timeout_ms: 10_000,
        }
    }
}

/// Synchronisation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sync {
    /// `largest` (around a recent pivot, the original's default) or `modulo`.
    pub strategy: SyncStrategy,
    /// First and smallest response budget per request, in bytes (the original's fixed 5 KiB).
    pub min_budget: usize,
    /// Largest response budget per request, in bytes; it grows towards this while responses
    /// arrive. Equal to `min_budget`: the original's fixed budget.
    pub max_budget: usize,
    /// How far beyond our global time (or our neighbours' median) a received stored message may
    /// be.
    pub global_time_margin: u64,
    /// How long a walk waits for the store to build its filter, and a response for its rows.
    pub store_timeout_ms: u64,
    /// Follow-up rounds: after a round with a peer brought messages, the next sync request goes
    /// to it once no message from it was stored for this long, without waiting for the walk.
    pub follow_up_quiet_ms: u64,
    /// A follow-up round that brings nothing within this long ends the follow-ups.
    pub follow_up_timeout_ms: u64,
    /// Most follow-up rounds in a row with one peer (0: sync only rides on walks, as in the
    /// original).
    pub max_follow_ups: u32,
    /// A chase that brought at least this many messages ends with a sweep of our history, a
    /// filter at a time, so that what a catch-up lost is fetched at once (0: never).
    pub sweep_after: u64,
    /// A sweep round that brings nothing is followed by the next after this long.
    pub sweep_gap_ms: u64,
}

/// Messages that wait for others (a sequence gap, a plugin's wait) and the missing-sequence,
/// -message and -last-message requests that fetch what they wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Missing {
    /// Messages waiting at once, across all communities; more are dropped and counted.
    pub max_waiting: usize,
    /// Longest a message waits, in milliseconds (the original's 10 s).
    pub timeout_ms: u64,
    /// An unanswered request is sent again after this long, in milliseconds.
    pub retry_ms: u64,
    /// Bytes of stored packets one answer carries at most (the original's 10 KiB).
    pub answer_bytes: usize,
}

impl Default for Missing {
    fn default() -> Self {
        let core = dispersy_core::missing::Config::default();
        Missing {
            max_waiting: core.max_delayed,
            timeout_ms: core.timeout.as_millis() as u64,
            retry_ms: core.retry.as_millis() as u64,
            answer_bytes: core.answer_bytes,
        }
    }
}

/// Relay distribution: how far and how wide messages of relay metas travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// Hops a message created here may travel after its first receivers.
    pub hops: u32,
    /// Candidates each node passes a relayed message on to.
    pub fanout: usize,
    /// Relayed packets remembered, to handle and forward each once.
    pub max_seen: usize,
}

impl Default for Relay {
    fn default() -> Self {
        let core = dispersy_core::relay::Config::default();
        Relay {
            hops: core.hops,
            fanout: core.fanout,
            max_seen: core.max_seen,
        }
    }
}

/// Double-member messages: how long a co-signer may take, and how many wait at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Signature {
    /// How long a signature-request waits for its response (and a request to us for our
    /// plugin's verdict), in milliseconds (the original's 10 s).
    pub timeout_ms: u64,
    /// Signature-requests in flight at once, on each side.
    pub max_pending: usize,
}

impl Default for Signature {
    fn default() -> Self {
        let core = dispersy_core::signature::Config::default();
        Signature {
            timeout_ms: core.timeout.as_millis() as u64,
            max_pending: core.max_pending,
        }
    }
}

/// Range strategy of new filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncStrategy {
    /// Around a pivot biased to recent global times.
    Largest,
    /// One residue class of global times per round.
    Modulo,
}

impl Default for Sync {
    fn default() -> Self {
        Sync {
            strategy: SyncStrategy::Largest,
            min_budget: 5 * 1024,
            max_budget: 1024 * 1024,
            global_time_margin: 10_000,
            store_timeout_ms: 2_000,
            follow_up_quiet_ms: 50,
            follow_up_timeout_ms: 2_000,
            max_follow_ups: 1_000,
            sweep_after: 1_000,
            sweep_gap_ms: 100,
        }
    }
}

/// Bounds. Every queue, table and cache of the node has one, and it is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest datagram sent or accepted, in bytes.
    pub max_datagram: usize,
    /// Kernel receive buffer of the UDP socket, in bytes.
    pub recv_buffer: usize,
    /// Received datagrams waiting for a verifier, and verified ones for the protocol task.
    pub datagram_queue: usize,
    /// Datagrams read from the socket and handed to a verifier at once (the queues above hold
    /// `datagram_queue / receive_batch` batches).
    pub receive_batch: usize,
    /// Verifier threads (decoding and signature checks), at most one per core.
    pub verifiers: usize,
    /// Parsed author keys each verifier thread keeps (and keys it counts towards a comb).
    pub verifier_keys: usize,
    /// Precomputed combs each verifier thread keeps for the keys that sign most (about 700 KiB
    /// each; a signature by such a key is checked in about 60 % of the time). 0: none.
    pub verifier_tables: usize,
    /// Valid signatures a key makes before a verifier builds it a comb (the build costs about
    /// 150 checks).
    pub verifier_hot_after: u32,
    /// Commands (API, plugins) waiting for the protocol task.
    pub command_queue: usize,
    /// Batches waiting for one community's plugin thread.
    pub plugin_queue: usize,
    /// Messages a community thread takes from its queue at once: one check call per meta, one
    /// store transaction, one handle call per meta.
    pub plugin_batch: usize,
    /// Messages waiting for the store.
    pub store_queue: usize,
    /// Store reads for synchronisation waiting for the sync task.
    pub sync_queue: usize,
    /// Candidates per community.
    pub max_candidates: usize,
    /// Communities (a tracker keeps one per community id it hears of).
    pub max_communities: usize,
    /// Outstanding introduction-requests per community.
    pub max_pending_walks: usize,
    /// Recently delivered messages kept per community for the API.
    pub recent_messages: usize,
    /// Messages a plugin may keep delayed per community.
    pub delayed_messages: usize,
    /// Longest a delayed message waits before it is dropped, in milliseconds.
    pub delay_timeout_ms: u64,
    /// Timers a plugin may have scheduled at once.
    pub plugin_timers: usize,
    /// Private copies of plugin files kept in `DATA_DIR/plugins` besides those this process
    /// loaded (the most recently used; older ones are deleted). 0: only the loaded ones.
    pub plugin_copies: usize,
    /// Messages created here (API, plugins) waiting for their plugin's check before they are
    /// sent, numbered ones waiting for the check of the previous number included.
    pub created_checks: usize,
    /// Longest a message created here waits for its plugin's check, in milliseconds; then it is
    /// given up (nothing sent or stored). Keep it below the API's 10 s wait.
    pub created_check_timeout_ms: u64,
    /// Kinds (meta, conversion) of messages its plugin cannot read remembered per community,
    /// each logged once and shown in the API (`unreadable`); later kinds are only counted.
    pub unreadable_kinds: usize,
    /// Undo-own and undo-other records each community holds in memory (its undo state); an
    /// undo beyond it stays stored but has no effect here (counted `undo-refused`).
    pub undos: usize,
    /// Of those, how many may wait for the message they undo (being fetched).
    pub undos_waiting: usize,
    /// Longest a call into a plugin (create, check, handle, timer, JSON, status) may run, in
    /// milliseconds. A community whose call runs longer is reported stuck: deliveries and API
    /// calls to it are refused (and counted) until the call returns. Shutdown waits at most this
    /// long (plus a second) for community threads, then leaves a stuck one behind.
    pub plugin_call_deadline_ms: u64,
    /// Restarts of a community after a plugin panic within `plugin_restart_window_ms`; one more
    /// panic and it stays failed. 0: the first panic fails it.
    pub plugin_restarts: u32,
    /// The window over which `plugin_restarts` are counted, in milliseconds.
    pub plugin_restart_window_ms: u64,
    /// Wait before the first restart after a panic, in milliseconds; doubled for each restart
    /// within the window.
    pub plugin_restart_backoff_ms: u64,
    /// Stored messages in one page of a plugin's restore or store read.
    pub plugin_read_page: u32,
    /// Messages written to the database in one transaction.
    pub store_batch: usize,
    /// SQLite page cache per database connection (there are 4), in KiB.
    pub store_cache_kib: u32,
    /// Part of the database file read through a memory map, in MiB (0: none). Saves a system
    /// call and a copy per page read (large sync responses of big stores); the mapped pages
    /// count in the RSS as file cache.
    pub store_mmap_mib: u32,
    /// Largest API request body, in bytes (larger: 413).
    pub api_body: usize,
    /// Control API connections open at once; one more is closed at once, unanswered.
    pub api_connections: usize,
    /// Explicit destinations (`candidates`) one message created through the API may name.
    pub api_candidates: usize,
    /// How long a control API connection may take to send a request's headers (also while it
    /// idles between requests), in milliseconds; then it is closed.
    pub api_header_timeout_ms: u64,
    /// How long one control API connection may stay open at all, in milliseconds.
    pub api_connection_ms: u64,
    /// Sessions kept (one per peer address).
    pub max_sessions: usize,
    /// Session handshakes waiting for their response.
    pub max_handshakes: usize,
    /// Public keys of other members kept.
    pub max_keys: usize,
    /// Datagrams waiting for the identity of their signer.
    pub identity_waiting: usize,
    /// Requesters whose response budget is remembered.
    pub sync_peers: usize,
    /// Sync requests being answered at once.
    pub sync_responses: usize,
    /// WAN address votes kept.
    pub max_voters: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_datagram: dispersy_core::wire::DEFAULT_MAX_DATAGRAM,
            recv_buffer: 4 << 20,
            datagram_queue: 4_096,
            receive_batch: 64,
            verifiers: 8,
            verifier_keys: 1_024,
            verifier_tables: 4,
            verifier_hot_after: 256,
            command_queue: 4_096,
            plugin_queue: 1_024,
            plugin_batch: 1_000,
            store_queue: 4_096,
            sync_queue: 256,
            max_candidates: 1_000,
            max_communities: 10_000,
            max_pending_walks: 64,
            recent_messages: 10_000,
            delayed_messages: 1_000,
            delay_timeout_ms: 10_000,
            plugin_timers: 1_024,
            plugin_copies: 16,
            created_checks: 4_096,
            created_check_timeout_ms: 5_000,
            unreadable_kinds: 64,
            undos: dispersy_core::undo::DEFAULT_MAX_RECORDS,
            undos_waiting: dispersy_core::undo::DEFAULT_MAX_WAITING,
            plugin_call_deadline_ms: 5_000,
            plugin_restarts: 3,
            plugin_restart_window_ms: 600_000,
            plugin_restart_backoff_ms: 1_000,
            plugin_read_page: 256,
            store_batch: 1_000,
            store_cache_kib: crate::store::DEFAULT_CACHE_KIB,
            store_mmap_mib: 0,
            api_body: 64 << 10,
            api_connections: 64,
            api_candidates: 16,
            api_header_timeout_ms: 10_000,
            api_connection_ms: 300_000,
            max_sessions: 10_000,
            max_handshakes: 1_024,
            max_keys: 10_000,
            identity_waiting: 256,
            sync_peers: 1_024,
            sync_responses: 64,
            max_voters: 100,
        }
    }
}

/// The default UDP port.
pub const DEFAULT_PORT: u16 = 7759;
/// The default control API address.
pub const DEFAULT_API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7760);

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            data_dir: default_data_dir(),
            plugin_dir: default_plugin_dirs(),
            plugin_scan_interval_ms: 5_000,
            trackers: Vec::new(),
            peers: Vec::new(),
            api: DEFAULT_API,
            tracker: false,
            founder_key: None,
            log: "info".into(),
            log_format: LogFormat::Text,
            walker: Walker::default(),
            sync: Sync::default(),
            missing: Missing::default(),
            relay: Relay::default(),
            signature: Signature::default(),
            limits: Limits::default(),
        }
    }
}

/// `$XDG_DATA_HOME/dispersy`, `$HOME/.local/share/dispersy`, or `./dispersy-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("dispersy");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/dispersy"),
        None => PathBuf::from("dispersy-data"),
    }
}

/// The executable's folder, its `plugins` subfolder, and `./plugins`.
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(dir.join("plugins"));
        dirs.push(dir);
    }
    dirs.push(PathBuf::from("plugins"));
    dirs
}

/// Why the configuration is unusable. Each message names the culprit.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a key has the wrong type.
    #[error("configuration: {0}")]
    Figment(Box<figment::Error>),
    /// A tracker or peer address does not resolve.
    #[error("configuration: {key} entry {value:?} is not a reachable host:port ({reason})")]
    Address {
        /// `trackers` or `peers`.
        key: &'static str,
        /// The entry.
        value: String,
        /// Why.
        reason: String,
    },
    /// A value out of range.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Layers defaults, `file` (if given; it must exist), `DISPERSY_*` variables and `flags`.
    pub fn load(file: Option<&Path>, flags: impl Serialize) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("DISPERSY_").split("__"))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| ConfigError::Figment(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("limits.datagram_queue", l.datagram_queue),
            ("limits.receive_batch", l.receive_batch),
            ("limits.verifiers", l.verifiers),
            ("limits.command_queue", l.command_queue),
            ("limits.plugin_queue", l.plugin_queue),
            ("limits.plugin_batch", l.plugin_batch),
            ("limits.store_queue", l.store_queue),
            ("limits.sync_queue", l.sync_queue),
            ("limits.max_candidates", l.max_candidates),
            ("limits.max_communities", l.max_communities),
            ("limits.max_pending_walks", l.max_pending_walks),
            ("limits.store_batch", l.store_batch),
            ("limits.plugin_timers", l.plugin_timers),
            ("limits.created_checks", l.created_checks),
            ("limits.unreadable_kinds", l.unreadable_kinds),
            ("limits.undos", l.undos),
            ("limits.undos_waiting", l.undos_waiting),
            ("limits.max_sessions", l.max_sessions),
            ("limits.max_handshakes", l.max_handshakes),
            ("limits.max_keys", l.max_keys),
            ("limits.max_voters", l.max_voters),
            ("limits.sync_peers", l.sync_peers),
            ("limits.sync_responses", l.sync_responses),
            ("limits.api_connections", l.api_connections),
            ("sync.min_budget", self.sync.min_budget),
            ("missing.answer_bytes", self.missing.answer_bytes),
            ("relay.max_seen", self.relay.max_seen),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if !(576..=65_507).contains(&l.max_datagram) {
            return Err(ConfigError::Invalid(
                "limits.max_datagram must be 576..=65507".into(),
            ));
        }
        for (key, value) in [
            ("walker.step_interval_ms", self.walker.step_interval_ms),
            (
                "walker.fast_step_interval_ms",
                self.walker.fast_step_interval_ms,
            ),
            (
                "walker.cleanup_interval_ms",
                self.walker.cleanup_interval_ms,
            ),
            (
                "limits.created_check_timeout_ms",
                l.created_check_timeout_ms,
            ),
            ("limits.plugin_call_deadline_ms", l.plugin_call_deadline_ms),
            ("limits.api_header_timeout_ms", l.api_header_timeout_ms),
            ("limits.api_connection_ms", l.api_connection_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }

    /// The trackers, resolved.
    pub fn tracker_addresses(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        resolve_all("trackers", &self.trackers)
    }

    /// The peers, resolved.
    pub fn peer_addresses(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        resolve_all("peers", &self.peers)
    }

    /// The core's configuration derived from this one.
    pub fn core(
        &self,
        trackers: Vec<SocketAddr>,
        interfaces: Vec<dispersy_core::address::Interface>,
    ) -> dispersy_core::node::Config {
        let w = &self.walker;
        let l = &self.limits;
        let ms = Duration::from_millis;
        dispersy_core::node::Config {
            max_datagram: self.limits.max_datagram,
            step_interval: ms(w.step_interval_ms),
            fast_step_interval: ms(w.fast_step_interval_ms),
            fast_walker_target: w.fast_walker_target,
            fast_walker_duration: ms(w.fast_walker_duration_ms),
            request_timeout: ms(w.request_timeout_ms),
            cleanup_interval: ms(w.cleanup_interval_ms),
            candidate_obsolete_after: ms(w.candidate_obsolete_after_ms),
            vote_lifetime: ms(w.vote_lifetime_ms),
            max_voters: l.max_voters,
            sessions: dispersy_core::session::Config {
                lifetime: ms(w.session_lifetime_ms),
                max_sessions: l.max_sessions,
                max_pending: l.max_handshakes,
                handshake_timeout: ms(w.request_timeout_ms),
            },
            members: dispersy_core::member::Config {
                max_keys: l.max_keys,
                max_waiting: l.identity_waiting,
                identity_timeout: ms(w.identity_timeout_ms),
            },
            interfaces,
            global_time_margin: self.sync.global_time_margin,
            sync: dispersy_core::sync::Config {
                strategy: match self.sync.strategy {
                    SyncStrategy::Largest => dispersy_core::sync::Strategy::Largest,
                    SyncStrategy::Modulo => dispersy_core::sync::Strategy::Modulo,
                },
                min_budget: self.sync.min_budget,
                max_budget: self.sync.max_budget.max(self.sync.min_budget),
                max_peers: l.sync_peers,
                max_responses: l.sync_responses,
                store_timeout: ms(self.sync.store_timeout_ms),
                follow_up_quiet: ms(self.sync.follow_up_quiet_ms),
                follow_up_timeout: ms(self.sync.follow_up_timeout_ms),
                max_follow_ups: self.sync.max_follow_ups,
                sweep_after: self.sync.sweep_after,
                sweep_gap: ms(self.sync.sweep_gap_ms),
            },
            missing: dispersy_core::missing::Config {
                max_delayed: self.missing.max_waiting,
                timeout: ms(self.missing.timeout_ms),
                retry: ms(self.missing.retry_ms.max(1)),
                answer_bytes: self.missing.answer_bytes,
            },
            signature: dispersy_core::signature::Config {
                timeout: ms(self.signature.timeout_ms),
                max_pending: self.signature.max_pending,
            },
            relay: dispersy_core::relay::Config {
                hops: self.relay.hops,
                fanout: self.relay.fanout,
                max_seen: self.relay.max_seen,
            },
            candidates: dispersy_core::candidate::Config {
                walk_lifetime: ms(w.walk_lifetime_ms),
                stumble_lifetime: ms(w.stumble_lifetime_ms),
                intro_lifetime: ms(w.intro_lifetime_ms),
                eligible_delay: ms(w.eligible_delay_ms),
                tracker_eligible_delay: ms(w.tracker_eligible_delay_ms),
                max_candidates: self.limits.max_candidates,
            },
            trackers,
            tracker: self.tracker,
            max_communities: self.limits.max_communities,
            max_pending_walks: self.limits.max_pending_walks,
            max_checking: l.created_checks,
            check_timeout: ms(l.created_check_timeout_ms),
            max_unreadable: l.unreadable_kinds,
            max_undos: l.undos,
            max_undos_waiting: l.undos_waiting,
            ..dispersy_core::node::Config::default()
        }
    }
}

fn resolve_all(key: &'static str, entries: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for entry in entries {
        let error = |reason: String| ConfigError::Address {
            key,
            value: entry.clone(),
            reason,
        };
        let mut addresses = entry.to_socket_addrs().map_err(|e| error(e.to_string()))?;
        let address = addresses.next().ok_or_else(|| error("no address".into()))?;
        out.push(address);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    }

    #[test]
    fn the_annotated_example_file_holds_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/dispersy.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let parsed: Config = toml_from(&text);
        let defaults = Config::default();
        assert_eq!(parsed.port, defaults.port);
        assert_eq!(parsed.api, defaults.api);
        assert_eq!(parsed.walker, defaults.walker);
        assert_eq!(parsed.limits, defaults.limits);
        assert_eq!(parsed.sync, defaults.sync);
        assert_eq!(parsed.missing, defaults.missing);
        assert_eq!(parsed.relay, defaults.relay);
        assert_eq!(parsed.signature, defaults.signature);
        assert_eq!(parsed.log, defaults.log);
        assert_eq!(parsed.founder_key, defaults.founder_key);
    }

    fn toml_from(text: &str) -> Config {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .unwrap()
    }

    #[test]
    fn layers_apply_in_order_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "port = 1111\ntrackers = [\"127.0.0.1:9\"]\n[walker]\nstep_interval_ms = 250\n",
        )
        .unwrap();
        let config = Config::load(Some(&file), Flags::default()).unwrap();
        assert_eq!(config.port, 1111);
        assert_eq!(config.walker.step_interval_ms, 250);
        assert_eq!(config.tracker_addresses().unwrap().len(), 1);
        let config = Config::load(Some(&file), Flags { port: Some(2222) }).unwrap();
        assert_eq!(config.port, 2222);

        std::fs::write(&file, "prot = 1\n").unwrap();
        let error = Config::load(Some(&file), Flags::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("prot"), "{error}");
        std::fs::write(&file, "[limits]\nmax_datagram = 10\n").unwrap();
        let error = Config::load(Some(&file), Flags::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("limits.max_datagram"), "{error}");
        let missing = dir.path().join("missing.toml");
        assert!(Config::load(Some(&missing), Flags::default()).is_err());
        let bad = Config {
            trackers: vec!["no-port".into()],
            ..Config::default()
        };
        let error = bad.tracker_addresses().unwrap_err().to_string();
        assert!(error.contains("no-port"), "{error}");
    }
}
