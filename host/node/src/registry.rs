//! The joined communities of a running host and the plugins behind them.
//!
//! Plugins are loaded at start and whenever a new file appears in a plugin folder (the folders are
//! rescanned every `plugin_scan_interval_ms`, and on `POST /v1/plugins`), so a new community type
//! is deployed by copying its `.so` into the folder: no rebuild, no restart. Loading a file:
//! copy it privately ([`plugin::copy`]: `DATA_DIR/plugins/<sha256>.so`), open and check that
//! copy (abi_stable), refuse a community that is already joined, create the community's rows in
//! the store, ask the protocol task to join it, then start its thread. The registry remembers,
//! per file, the content hash and the copy it runs.
//!
//! Libraries are never unloaded (abi_stable leaks them on purpose), and the operator's file is
//! never mapped, so overwriting, deleting or rewriting it cannot disturb a running community. A
//! file whose community runs and whose content changed is not loaded: it is an upgrade
//! candidate, logged once per new content and shown in its report (`candidate`). A refused file
//! is tried again when it changes.
//!
//! Types and instances. A plugin file defines a community *type*; the master key it carries
//! names the type's own community, joined when the file loads. The operator joins more
//! communities of a loaded type, each with a master key of its own ([`Registry::join_instance`],
//! `POST /v1/communities`): the same plugin code runs each in an instance of its own, on a
//! thread of its own, with its own store rows and candidates. The store remembers each instance
//! with its type (`community.instance_of`), so loading the file at start joins the type's own
//! community, then its instances. A live upgrade switches them all. Leaving and joining again
//! work the same for both.
//!
//! Leaving. [`Registry::leave`] (`DELETE /v1/communities/{id}`) makes the node stop running a
//! community: the protocol task leaves it (`Command::Leave`), its thread ends, and its store row
//! is marked not to be joined at start (`community.auto_load = 0`); its stored messages stay.
//! A left community is not joined again by a folder scan or at the next start (its file is
//! loaded and reported `left`), only by [`Registry::rejoin`] (`POST /v1/communities/{id}/join`)
//! or by loading its file explicitly ([`Registry::load`], `POST /v1/plugins` with its path).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, KeyPair, PublicKey};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::mutex::lock;
use crate::plugin::copy::{self, ContentHash, PrivateCopy};
use crate::plugin::{self, Worker, WorkerContext, WorkerLimits};
use crate::store::{InsertSender, Store};

/// A loaded plugin or a refused plugin file, for `GET /v1/plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    /// The file.
    pub path: PathBuf,
    /// Community type name, when loaded.
    pub name: Option<String>,
    /// Plugin version, when loaded.
    pub version: Option<String>,
    /// The id of the community type's own community (the master key the plugin carries),
    /// when loaded.
    pub community: Option<String>,
    /// How many other communities of this type run ([`Registry::join_instance`]); filled in by
    /// [`Registry::reports`].
    pub instances: usize,
    /// Why it was refused.
    pub error: Option<String>,
    /// SHA-256 of the content loaded, hex, when loaded.
    pub sha256: Option<String>,
    /// The private copy the host loaded (`DATA_DIR/plugins/<sha256>.so`), when loaded.
    pub copy: Option<PathBuf>,
    /// SHA-256 of the file's current content, hex, when it differs from the content loaded:
    /// an upgrade candidate, not loaded while the community runs.
    pub candidate: Option<String>,
    /// The community's health (live, stuck, restarting, failed), when loaded; filled in by
    /// [`Registry::reports`].
    pub health: Option<plugin::Health>,
}

impl PluginReport {
    /// The report of file `path` running `definition` (of the type whose own community is
    /// `kind`) from its private copy `private`.
    fn loaded(
        path: &Path,
        definition: &Definition,
        kind: CommunityId,
        private: &PrivateCopy,
    ) -> Self {
        PluginReport {
            path: path.to_path_buf(),
            name: Some(definition.name.clone()),
            version: Some(definition.version.clone()),
            community: Some(kind.to_hex()),
            instances: 0,
            error: None,
            sha256: Some(private.hash.to_string()),
            copy: Some(private.path.clone()),
            candidate: None,
            health: None,
        }
    }

    fn refused(path: &Path, error: impl ToString) -> Self {
        PluginReport {
            path: path.to_path_buf(),
            name: None,
            version: None,
            community: None,
            instances: 0,
            error: Some(error.to_string()),
            sha256: None,
            copy: None,
            candidate: None,
            health: None,
        }
    }
}

/// What the registry needs from the rest of the host.
pub struct Context {
    /// The database.
    pub store: Store,
    /// The node's key.
    pub key: KeyPair,
    /// Commands to the protocol task.
    pub commands: mpsc::Sender<Command>,
    /// Inserts to the store task.
    pub inserts: InsertSender,
    /// Bounds of community threads.
    pub limits: WorkerLimits,
    /// Peers added as candidates of every joined community.
    pub peers: Vec<SocketAddr>,
    /// Folders scanned for plugins.
    pub dirs: Vec<PathBuf>,
    /// The private folder of plugin copies, `DATA_DIR/plugins`.
    pub copies: PathBuf,
    /// Copies kept there besides the loaded ones (`limits.plugin_copies`).
    pub spare_copies: usize,
}

#[derive(Default)]
struct State {
    workers: HashMap<CommunityId, Arc<Worker>>,
    definitions: HashMap<CommunityId, (Definition, i64, PathBuf)>,
    reports: Vec<PluginReport>,
    /// Plugin files looked at, by absolute path.
    files: HashMap<PathBuf, FileState>,
    /// Private copies mapped into this process: never deleted while it runs.
    mapped: HashSet<PathBuf>,
    /// The plugin of each joined community, its copy and its file's key.
    running: HashMap<CommunityId, Opened>,
    /// Communities the operator left, whose plugin is loaded: joined again on request.
    left: HashMap<CommunityId, Opened>,
    /// The loaded community types, by the id of their own community: the plugin that runs
    /// new instances ([`Registry::join_instance`]).
    types: HashMap<CommunityId, Opened>,
}

impl State {
    /// Makes `report` the report of the file of key `key`, replacing its earlier one.
    fn file_report(&mut self, key: &Path, report: PluginReport) {
        self.reports.retain(|r| file_key(&r.path) != key);
        self.reports.push(report);
    }
}

/// A loaded plugin, its private copy and the key of its file; `plugin.definition` is the one of
/// the community it runs (an instance has its own master key), `kind` the id of its type's own
/// community.
#[derive(Clone)]
struct Opened {
    plugin: plugin::Plugin,
    private: PrivateCopy,
    key: PathBuf,
    kind: CommunityId,
}

impl Opened {
    /// The same plugin running the community of master key `master`.
    fn instance(&self, master: PublicKey) -> Opened {
        Opened {
            plugin: self.plugin.instance(master),
            ..self.clone()
        }
    }
}

/// Why a community could not be left or joined again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No plugin of this node defines it.
    #[error("unknown community {0}")]
    Unknown(CommunityId),
    /// It runs already (joining again).
    #[error("community {0} is joined already")]
    Joined(CommunityId),
    /// It was left already (leaving).
    #[error("community {0} was left already; POST /v1/communities/{0}/join joins it again")]
    Left(CommunityId),
    /// The store or the node failed; the message says which.
    #[error("community {community}: {reason}")]
    Failed {
        /// The community.
        community: CommunityId,
        /// What failed.
        reason: String,
    },
}

/// A community joined as an instance of a loaded type ([`Registry::join_instance`]).
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    /// The new community's id, hex.
    pub community: String,
    /// Its community type name.
    pub name: String,
    /// The plugin version that runs it.
    pub version: String,
    /// The id of its type's own community, hex (what `GET /v1/plugins` shows as `community`).
    pub type_community: String,
    /// Its master key, hex.
    pub master_key: String,
    /// The plugin file of its type.
    pub path: PathBuf,
}

/// Why a community could not be joined as an instance of a type ([`Registry::join_instance`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// No loaded plugin defines this type.
    #[error("no loaded plugin defines community type `{0}` (GET /v1/plugins lists them)")]
    UnknownType(String),
    /// Several loaded plugins have this name.
    #[error("several loaded plugins are named `{name}`; give the id of the type's own community instead: {}", ids.join(", "))]
    AmbiguousType {
        /// The name.
        name: String,
        /// The ids of their own communities.
        ids: Vec<String>,
    },
    /// The community runs already.
    #[error("community {0} is joined already")]
    Joined(CommunityId),
    /// The community was left, and runs another type's plugin.
    #[error(
        "community {0} was left and belongs to another community type; POST /v1/communities/{0}/join joins it again"
    )]
    OtherType(CommunityId),
    /// Joining failed; the message says why.
    #[error("community {community}: {reason}")]
    Failed {
        /// The community.
        community: CommunityId,
        /// What failed.
        reason: String,
    },
}

/// How long [`Registry::upgrade`] waits for the switch at least (the plugin call deadline if
/// longer); a switch still running then finishes without its caller.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A live upgrade on its way: what the registry records once the community's thread switched.
struct Switch {
    id: CommunityId,
    new: Definition,
    row: i64,
    path: PathBuf,
    key: PathBuf,
    old_key: PathBuf,
    stamp: Option<Stamp>,
    plugin: plugin::Plugin,
    private: PrivateCopy,
    kind: CommunityId,
}

/// Why a live upgrade ([`Registry::upgrade`]) was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// The file could not be copied or opened as a plugin.
    #[error("{0}")]
    Load(String),
    /// Its community does not run on this node (unknown, or left).
    #[error(
        "plugin {}: community {community} does not run on this node; POST /v1/plugins with its path loads it",
        path.display()
    )]
    NotRunning {
        /// The file.
        path: PathBuf,
        /// Its community.
        community: CommunityId,
    },
    /// A version is not semver.
    #[error("plugin {}: version `{version}` is not a semver version: {reason}", path.display())]
    BadVersion {
        /// The file.
        path: PathBuf,
        /// The version.
        version: String,
        /// The parser's reason.
        reason: String,
    },
    /// Its version is not newer than the running one, and no downgrade was asked for.
    #[error(
        "plugin {}: version {new} of community {name} is not newer than the running {running}; allow_downgrade switches anyway",
        path.display()
    )]
    NotNewer {
        /// The file.
        path: PathBuf,
        /// Community type name.
        name: String,
        /// The running version.
        running: String,
        /// The file's version.
        new: String,
    },
    /// A meta of the running definition is missing from the new one, or changed kind.
    #[error("plugin {}: meta {meta} (id {id}) {reason}; stored messages use it", path.display())]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The meta's name in the running definition.
        meta: String,
        /// Its id.
        id: u32,
        /// What changed.
        reason: String,
    },
    /// The switch on the community's thread failed (rolled back) or was not made.
    #[error(transparent)]
    Switch(#[from] plugin::LifecycleError),
    /// The node stops.
    #[error("the node is stopping")]
    Stopping,
    /// The switch runs longer than the caller waits (a long restore); it goes on, and its
    /// outcome shows in `GET /v1/plugins` and the log.
    #[error(
        "community {name}: the switch still runs after {wait_ms} ms (restoring its history?); GET /v1/plugins shows its outcome"
    )]
    Pending {
        /// Community type name.
        name: String,
        /// How long the caller waited.
        wait_ms: u64,
    },
}

/// The checks of a live upgrade from `old` to `new` (file `path`): a newer semver version
/// (unless `allow_downgrade`), and every meta of `old` kept in `new` with the same id and the
/// same distribution kind (direct, full-sync, last-sync, …).
fn check_upgrade(
    path: &Path,
    old: &Definition,
    new: &Definition,
    allow_downgrade: bool,
) -> Result<(), UpgradeError> {
    let parse = |version: &str| {
        semver::Version::parse(version).map_err(|e| UpgradeError::BadVersion {
            path: path.to_path_buf(),
            version: version.to_owned(),
            reason: e.to_string(),
        })
    };
    if !allow_downgrade && parse(&new.version)? <= parse(&old.version)? {
        return Err(UpgradeError::NotNewer {
            path: path.to_path_buf(),
            name: old.name.clone(),
            running: old.version.clone(),
            new: new.version.clone(),
        });
    }
    for meta in &old.metas {
        let incompatible = |reason: String| UpgradeError::Incompatible {
            path: path.to_path_buf(),
            meta: meta.name.clone(),
            id: meta.id,
            reason,
        };
        let Some(kept) = new.metas.iter().find(|m| m.id == meta.id) else {
            return Err(incompatible("is missing from the new version".to_owned()));
        };
        if std::mem::discriminant(&kept.distribution) != std::mem::discriminant(&meta.distribution)
        {
            return Err(incompatible(format!(
                "changed its distribution from {:?} to {:?}",
                meta.distribution, kept.distribution
            )));
        }
    }
    Ok(())
}

/// What the registry knows of one plugin file.
#[derive(Default)]
struct FileState {
    /// Its metadata when last looked at (tried, or hashed for a candidate).
    stamp: Option<Stamp>,
    /// The content whose community runs, and its copy.
    loaded: Option<PrivateCopy>,
    /// The last upgrade candidate reported.
    candidate: Option<ContentHash>,
}

/// What changes whenever a file's content may have changed: size, times (the change time
/// cannot be set back) and inode (a file renamed over it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// The communities a host joined through plugins.
pub struct Registry {
    context: Context,
    state: Mutex<State>,
    /// Loads run one at a time.
    loading: Arc<tokio::sync::Mutex<()>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(context: Context) -> Self {
        Registry {
            context,
            state: Mutex::new(State::default()),
            loading: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The thread of community `id`.
    pub fn worker(&self, id: &CommunityId) -> Option<Arc<Worker>> {
        lock(&self.state).workers.get(id).cloned()
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.context.store
    }

    /// All community threads.
    pub fn workers(&self) -> Vec<(CommunityId, Arc<Worker>)> {
        lock(&self.state)
            .workers
            .iter()
            .map(|(id, w)| (*id, w.clone()))
            .collect()
    }

    /// The definition and store row of community `id`.
    pub fn definition(&self, id: &CommunityId) -> Option<(Definition, i64)> {
        lock(&self.state)
            .definitions
            .get(id)
            .map(|(d, row, _)| (d.clone(), *row))
    }

    /// Every plugin file tried, loaded or refused; a loaded one with its community's health.
    pub fn reports(&self) -> Vec<PluginReport> {
        let state = lock(&self.state);
        let mut instances: HashMap<CommunityId, usize> = HashMap::new();
        for (id, opened) in &state.running {
            if *id != opened.kind {
                *instances.entry(opened.kind).or_default() += 1;
            }
        }
        let mut reports = state.reports.clone();
        for report in &mut reports {
            let Some(kind) = report
                .community
                .as_deref()
                .and_then(|id| CommunityId::from_hex(id).ok())
            else {
                continue;
            };
            report.health = state.workers.get(&kind).map(|w| w.shared.health());
            if state.left.contains_key(&kind) {
                report.health = Some(plugin::Health::left(&kind.to_hex()));
            }
            report.instances = instances.get(&kind).copied().unwrap_or(0);
        }
        reports
    }

    /// The communities the operator left whose plugin is loaded.
    pub fn left(&self) -> Vec<CommunityId> {
        lock(&self.state).left.keys().copied().collect()
    }

    /// Looks at the plugin files of the plugin folders that are new or changed since they were
    /// last looked at: loads them, or reports an upgrade candidate; returns their reports.
    pub async fn scan(&self) -> Vec<PluginReport> {
        let mut out = Vec::new();
        for path in plugin::discover(&self.context.dirs) {
            let stamp = stamp(&path);
            let fresh = lock(&self.state)
                .files
                .get(&file_key(&path))
                .is_none_or(|file| file.stamp != stamp);
            if fresh {
                out.push(self.load_file(&path, false).await);
            }
        }
        out
    }

    /// `path` as a plugin file the operator may load by name: an existing file directly in
    /// one of the configured plugin folders (compared after resolving links and `..`), as its
    /// resolved path. Anything else is refused before it is opened, with why, so no code from
    /// elsewhere runs in the node.
    pub fn loadable(&self, path: &Path) -> Result<PathBuf, String> {
        let resolved = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !resolved.is_file() {
            return Err(format!("{} is not a file", path.display()));
        }
        let inside = self.context.dirs.iter().any(|dir| {
            dir.canonicalize()
                .is_ok_and(|dir| resolved.parent() == Some(dir.as_path()))
        });
        if inside {
            return Ok(resolved);
        }
        let folders: Vec<String> = self
            .context
            .dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Err(format!(
            "{} is not in a plugin folder ({}): copy it into one first",
            path.display(),
            folders.join(", ")
        ))
    }

    /// Loads one plugin file and joins its community, even one the operator left; if the
    /// file's community already runs, only compares its content with the content loaded (see
    /// [`PluginReport::candidate`]).
    pub async fn load(&self, path: &Path) -> PluginReport {
        self.load_file(path, true).await
    }

    /// [`Registry::load`]; a community the operator left is joined only when `rejoin`.
    async fn load_file(&self, path: &Path, rejoin: bool) -> PluginReport {
        let _one_at_a_time = self.loading.lock().await;
        let key = file_key(path);
        // Taken before the content is read: a change during the read is seen by the next scan.
        let stamp = stamp(path);
        let loaded = lock(&self.state)
            .files
            .get(&key)
            .and_then(|file| file.loaded.clone());
        let report = match loaded {
            Some(loaded) => self.compare(&key, path, &loaded).await,
            None => match self.try_load(&key, path, rejoin).await {
                Ok(report) => report,
                Err(error) => {
                    tracing::warn!("{error}");
                    PluginReport::refused(path, error)
                }
            },
        };
        let mut state = lock(&self.state);
        state.files.entry(key.clone()).or_default().stamp = stamp;
        state.file_report(&key, report.clone());
        report
    }

    /// The report of file `path`, whose community runs `loaded`, after comparing its current
    /// content with `loaded`.
    async fn compare(&self, key: &Path, path: &Path, loaded: &PrivateCopy) -> PluginReport {
        let owned = path.to_path_buf();
        let current = tokio::task::spawn_blocking(move || copy::digest(&owned)).await;
        let mut state = lock(&self.state);
        let mut report = state
            .reports
            .iter()
            .find(|r| file_key(&r.path) == key)
            .cloned()
            .unwrap_or_else(|| PluginReport::refused(path, "no report"));
        let Some(file) = state.files.get_mut(key) else {
            return report;
        };
        match current {
            Ok(Ok(hash)) if hash == loaded.hash => file.candidate = None,
            Ok(Ok(hash)) => {
                if file.candidate != Some(hash) {
                    tracing::info!(
                        path = %path.display(),
                        candidate = %hash,
                        running = %loaded.hash,
                        community = report.community.as_deref().unwrap_or_default(),
                        "plugin file changed: an upgrade candidate, not loaded; its community keeps running the content it loaded"
                    );
                }
                file.candidate = Some(hash);
            }
            Ok(Err(error)) => tracing::warn!("{error}"),
            Err(error) => tracing::warn!(path = %path.display(), %error, "hashing failed"),
        }
        report.candidate = file.candidate.map(|hash| hash.to_string());
        report
    }

    /// Copies file `path` privately and loads the copy: the first step of [`Registry::load`].
    async fn try_load(
        &self,
        key: &Path,
        path: &Path,
        rejoin: bool,
    ) -> Result<PluginReport, String> {
        let (plugin, private) = self.copy_and_open(path).await?;
        let kind = plugin.definition.id();
        let opened = Opened {
            plugin,
            private,
            key: key.to_path_buf(),
            kind,
        };
        let report = self.start(path, opened.clone(), rejoin).await?;
        lock(&self.state).types.insert(kind, opened.clone());
        self.start_instances(path, &opened).await;
        Ok(report)
    }

    /// Joins the stored instances of the community type `opened` runs (its own community
    /// started): the ones the operator left are remembered as left. A failure is logged and the
    /// others go on.
    async fn start_instances(&self, path: &Path, opened: &Opened) {
        let instances = match self.context.store.instances(opened.kind).await {
            Ok(instances) => instances,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "reading the stored instances of the plugin's community type failed; none joined");
                return;
            }
        };
        for master in instances {
            let id = master.community_id();
            if lock(&self.state).definitions.contains_key(&id) {
                continue;
            }
            if let Err(error) = self.start(path, opened.instance(master), false).await {
                tracing::warn!(community = %id, "{error}");
            }
        }
    }

    /// Copies file `path` privately and opens the copy (the plugin's own code runs then).
    async fn copy_and_open(&self, path: &Path) -> Result<(plugin::Plugin, PrivateCopy), String> {
        let owned = path.to_path_buf();
        let copies = self.context.copies.clone();
        let spare = self.context.spare_copies;
        let mapped = lock(&self.state).mapped.clone();
        let private = tokio::task::spawn_blocking(move || {
            let private = copy::private_copy(&owned, &copies).map_err(|e| e.to_string())?;
            let mut keep = mapped;
            keep.insert(private.path.clone());
            let deleted = copy::prune(&copies, &keep, spare);
            if deleted > 0 {
                tracing::debug!(deleted, folder = %copies.display(), "old plugin copies deleted");
            }
            Ok::<_, String>(private)
        })
        .await
        .map_err(|e| format!("plugin {}: copying failed: {e}", path.display()))??;
        // Mapping the copy runs the plugin's own code (its root module, its definition): on a
        // thread of its own, waited for at most the plugin call deadline.
        let plugin = self.open(path, &private.path).await;
        let plugin = match plugin {
            Ok(plugin) => {
                lock(&self.state).mapped.insert(private.path.clone());
                plugin
            }
            Err(OpenError::Load(error)) => {
                if error.mapped() {
                    lock(&self.state).mapped.insert(private.path.clone());
                }
                return Err(error.to_string());
            }
            Err(OpenError::Other(error)) => {
                // A loader that ran past its deadline may still map the copy: keep it.
                lock(&self.state).mapped.insert(private.path.clone());
                return Err(error);
            }
        };
        Ok((plugin, private))
    }

    /// Joins the community of an opened plugin and starts its thread (a community the
    /// operator left only when `rejoin`; else it is remembered as left): the last step of
    /// [`Registry::load`] and [`Registry::rejoin`].
    async fn start(
        &self,
        path: &Path,
        opened: Opened,
        rejoin: bool,
    ) -> Result<PluginReport, String> {
        let Opened {
            plugin,
            private,
            key,
            kind,
        } = opened.clone();
        let definition = plugin.definition.clone();
        let id = definition.id();
        self.refuse_joined(path, id)?;
        let context = &self.context;
        let fail = |e: &dyn std::fmt::Display| format!("plugin {}: {e}", path.display());
        let row = context
            .store
            .ensure_community(&definition)
            .await
            .map_err(|e| fail(&e))?;
        // A stored instance joined at start has its type recorded already.
        if id != kind && rejoin {
            context
                .store
                .set_instance_of(row, kind)
                .await
                .map_err(|e| fail(&e))?;
        }
        let auto_load = context.store.auto_load(row).await.map_err(|e| fail(&e))?;
        if !auto_load && !rejoin {
            tracing::info!(community = %id, name = %definition.name, path = %path.display(), "community not joined: the operator left it (POST /v1/communities/{id}/join joins it again)");
            let mut state = lock(&self.state);
            state.left.insert(id, opened);
            return Ok(PluginReport::loaded(path, &definition, kind, &private));
        }
        if !auto_load {
            context
                .store
                .set_auto_load(row, true)
                .await
                .map_err(|e| fail(&e))?;
        }
        context
            .store
            .remember_member(&definition.master)
            .await
            .map_err(|e| fail(&e))?;
        let syncable: Vec<u32> = definition
            .all_metas()
            .filter(|m| m.is_synced())
            .map(|m| m.id)
            .collect();
        let resume = context
            .store
            .resume(row, context.key.member_id(), &syncable)
            .await
            .map_err(|e| fail(&e))?;
        // Known before the join, so that the protocol task can read the community's rows from
        // its first walk on.
        lock(&self.state)
            .definitions
            .insert(id, (definition.clone(), row, path.to_path_buf()));
        let joined = self.join(&definition, resume).await;
        if let Err(error) = joined {
            lock(&self.state).definitions.remove(&id);
            return Err(fail(&error));
        }
        let worker_context = WorkerContext {
            community: id,
            definition: definition.clone(),
            community_row: row,
            member: context.key.public().clone(),
            commands: context.commands.clone(),
            store: context.inserts.clone(),
            history: tokio::runtime::Handle::try_current().ok().map(|runtime| {
                Arc::new(crate::plugin::history::StoreHistory {
                    store: context.store.clone(),
                    runtime,
                    timeout: context.limits.deadline,
                }) as Arc<dyn crate::plugin::history::History>
            }),
            limits: context.limits.clone(),
        };
        // create() runs on the community's thread: wait for it at most the call deadline.
        let (worker, created) = Worker::start(&plugin, worker_context)
            .map_err(|e| fail(&format!("creating the community failed: {e}")))?;
        let deadline = context.limits.deadline;
        match tokio::time::timeout(deadline, created).await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(community = %id, name = %definition.name, type_community = %kind, path = %path.display(), "community joined");
            }
            Ok(Ok(Err(error))) => {
                return Err(fail(&format!("creating the community failed: {error}")));
            }
            Ok(Err(_)) => return Err(fail(&"creating the community failed: its thread ended")),
            Err(_) => {
                tracing::warn!(community = %id, name = %definition.name, path = %path.display(), deadline_ms = deadline.as_millis() as u64, "community stuck: its plugin's create() runs past the deadline; the other plugins go on");
            }
        }
        let report = PluginReport::loaded(path, &definition, kind, &private);
        {
            let mut state = lock(&self.state);
            state.workers.insert(id, Arc::new(worker));
            state.left.remove(&id);
            state.running.insert(id, opened);
            let file = state.files.entry(key).or_default();
            file.loaded = Some(private);
            file.candidate = None;
        }
        // Its thread takes messages now: the protocol task may publish in it (founding).
        let _ = context
            .commands
            .send(Command::Running { community: id })
            .await;
        Ok(report)
    }

    /// Opens and checks a plugin file on a thread of its own (the plugin's `definition()` runs
    /// then), waiting at most the call deadline: a plugin that hangs there is refused, and its
    /// thread left behind.
    async fn open(&self, path: &Path, private: &Path) -> Result<plugin::Plugin, OpenError> {
        let (reply, answer) = oneshot::channel();
        let owned = path.to_path_buf();
        let private = private.to_path_buf();
        std::thread::Builder::new()
            .name("plugin-load".into())
            .spawn(move || {
                let _ = reply.send(plugin::load_from(&owned, &private));
            })
            .map_err(|e| {
                OpenError::Other(format!(
                    "plugin {}: starting the loader: {e}",
                    path.display()
                ))
            })?;
        let deadline = self.context.limits.deadline;
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(loaded)) => loaded.map_err(OpenError::Load),
            Ok(Err(_)) => Err(OpenError::Other(format!(
                "plugin {}: the loader failed",
                path.display()
            ))),
            Err(_) => Err(OpenError::Other(format!(
                "plugin {}: loading it ran past the plugin call deadline ({} ms)",
                path.display(),
                deadline.as_millis()
            ))),
        }
    }

    /// Refuses a file whose community `id` another file already provides.
    fn refuse_joined(&self, path: &Path, id: CommunityId) -> Result<(), String> {
        match lock(&self.state).definitions.get(&id) {
            Some((_, _, other)) => Err(plugin::LoadError::Duplicate {
                path: path.to_path_buf(),
                community: id,
                other: other.clone(),
            }
            .to_string()),
            None => Ok(()),
        }
    }

    /// Asks the protocol task to join the community.
    async fn join(
        &self,
        definition: &Definition,
        resume: dispersy_core::community::Resume,
    ) -> Result<(), String> {
        let (reply, joined) = oneshot::channel();
        self.context
            .commands
            .send(Command::Join {
                definition: Box::new(definition.clone()),
                resume,
                peers: self.context.peers.clone(),
                reply,
            })
            .await
            .map_err(|_| "the node is stopping".to_owned())?;
        joined
            .await
            .map_err(|_| "the node is stopping".to_owned())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Leaves community `id` for good (see the module doc): not joined again by a scan or at
    /// start; its stored messages stay. Its thread is given the plugin call deadline to end,
    /// then left behind (logged).
    pub async fn leave(&self, id: CommunityId) -> Result<(), MembershipError> {
        let _one_at_a_time = self.loading.lock().await;
        let failed = |reason: String| MembershipError::Failed {
            community: id,
            reason,
        };
        let (row, name) = {
            let state = lock(&self.state);
            match state.definitions.get(&id) {
                Some((definition, row, _)) => (*row, definition.name.clone()),
                None if state.left.contains_key(&id) => return Err(MembershipError::Left(id)),
                None => return Err(MembershipError::Unknown(id)),
            }
        };
        // Persisted first: once it is written, a crash cannot bring the community back.
        self.context
            .store
            .set_auto_load(row, false)
            .await
            .map_err(|e| failed(format!("recording the leave in the store: {e}")))?;
        let (worker, opened) = {
            let mut state = lock(&self.state);
            state.definitions.remove(&id);
            let worker = state.workers.remove(&id);
            let opened = state.running.remove(&id);
            if let Some(opened) = &opened {
                // The file runs nothing any more: loading it again joins its community.
                let used = state.running.values().any(|o| o.key == opened.key);
                if let Some(file) = state.files.get_mut(&opened.key)
                    && !used
                {
                    file.loaded = None;
                    file.candidate = None;
                }
                state.left.insert(id, opened.clone());
            }
            (worker, opened)
        };
        let (reply, answer) = oneshot::channel();
        let asked = self
            .context
            .commands
            .send(Command::Leave {
                community: id,
                reply,
            })
            .await;
        match (asked, answer.await) {
            (Ok(()), Ok(Ok(()))) => {}
            (Ok(()), Ok(Err(error))) => tracing::warn!(community = %id, %error, "leaving"),
            _ => return Err(failed("the node is stopping".to_owned())),
        }
        if let Some(worker) = worker {
            let deadline = self.context.limits.deadline;
            let ended = tokio::task::spawn_blocking(move || {
                worker.stop(deadline, dispersy_plugin_api::abi::retire::LEAVE)
            })
            .await
            .unwrap_or(false);
            if !ended {
                tracing::warn!(community = %id, %name, "the left community's thread did not end within the plugin call deadline; left behind");
            }
        }
        let path = opened.map(|o| o.key.display().to_string());
        tracing::info!(community = %id, %name, path = path.unwrap_or_default(), "community left by the operator: no longer walked, synced or handled; its stored messages stay; not joined again at start");
        Ok(())
    }

    /// Joins community `id` again, which the operator left (see the module doc), from the
    /// plugin loaded for it; returns its plugin file's report.
    pub async fn rejoin(&self, id: CommunityId) -> Result<PluginReport, MembershipError> {
        let _one_at_a_time = self.loading.lock().await;
        let opened = {
            let state = lock(&self.state);
            match state.left.get(&id) {
                Some(opened) => opened.clone(),
                None if state.definitions.contains_key(&id) => {
                    return Err(MembershipError::Joined(id));
                }
                None => return Err(MembershipError::Unknown(id)),
            }
        };
        let path = opened.plugin.path.clone();
        let key = opened.key.clone();
        let report =
            self.start(&path, opened, true)
                .await
                .map_err(|reason| MembershipError::Failed {
                    community: id,
                    reason,
                })?;
        let mut state = lock(&self.state);
        state.file_report(&key, report.clone());
        Ok(report)
    }

    /// Joins a new community of a loaded community type: the community of master key `master`,
    /// run by the plugin of type `kind` (its name, or the id of its own community when two
    /// loaded plugins share a name). The join is stored: at start the community is joined
    /// again after its type's own community ([`Store::instances`]). A community left earlier
    /// is joined again.
    pub async fn join_instance(
        &self,
        kind: &str,
        master: PublicKey,
    ) -> Result<InstanceReport, InstanceError> {
        let _one_at_a_time = self.loading.lock().await;
        let id = master.community_id();
        let by_id = CommunityId::from_hex(kind).ok();
        let opened = {
            let state = lock(&self.state);
            let matching: Vec<&Opened> = state
                .types
                .values()
                .filter(|o| o.plugin.definition.name == kind || Some(o.kind) == by_id)
                .collect();
            let opened = match matching.as_slice() {
                [] => return Err(InstanceError::UnknownType(kind.to_owned())),
                [one] => (*one).clone(),
                several => {
                    let mut ids: Vec<String> = several.iter().map(|o| o.kind.to_hex()).collect();
                    ids.sort();
                    return Err(InstanceError::AmbiguousType {
                        name: kind.to_owned(),
                        ids,
                    });
                }
            };
            if state.definitions.contains_key(&id) {
                return Err(InstanceError::Joined(id));
            }
            match state.left.get(&id) {
                Some(left) if left.kind != opened.kind => {
                    return Err(InstanceError::OtherType(id));
                }
                Some(left) => left.clone(),
                None => opened.instance(master),
            }
        };
        let path = opened.plugin.path.clone();
        let report = InstanceReport {
            community: id.to_hex(),
            name: opened.plugin.definition.name.clone(),
            version: opened.plugin.definition.version.clone(),
            type_community: opened.kind.to_hex(),
            master_key: opened.plugin.definition.master.to_hex(),
            path: path.clone(),
        };
        self.start(&path, opened, true)
            .await
            .map_err(|reason| InstanceError::Failed {
                community: id,
                reason,
            })?;
        tracing::info!(community = %id, name = %report.name, type_community = %report.type_community, "community joined as an instance of its type by the operator");
        Ok(report)
    }

    /// The plugin file of running community `id` (its upgrade candidate, when it changed).
    pub fn plugin_file(&self, id: &CommunityId) -> Option<PathBuf> {
        lock(&self.state).running.get(id).map(|o| o.key.clone())
    }

    /// Live upgrade of a running community type to plugin file `path` (README, "Upgrading a
    /// plugin"): the file is copied privately and opened; it must define a community type this
    /// node runs (same master key: its own community, or an instance of it), in a newer semver
    /// version unless `allow_downgrade`, keeping every meta of the running definition with the
    /// same id and the same distribution kind (so every stored message keeps a meta that reads
    /// it the same way). Every running community of the type switches, its own first, then its
    /// instances, one at a time, each on its own thread ([`Worker::upgrade`]); then the store
    /// records the new version and metas, and the protocol task the new definition
    /// (`Command::Redefine`). A community whose switch fails rolls back alone (the others keep
    /// the new version; the first error is returned). The type's file becomes `path` (its
    /// report shows the new version; the health shows `version`, `previous_version` and
    /// `upgrades`). The old library stays mapped: abi_stable never unloads one. Other types
    /// are not touched.
    pub async fn upgrade(
        self: &Arc<Self>,
        path: &Path,
        allow_downgrade: bool,
    ) -> Result<PluginReport, UpgradeError> {
        let one_at_a_time = self.loading.clone().lock_owned().await;
        let key = file_key(path);
        let stamp = stamp(path);
        let (plugin, private) = self.copy_and_open(path).await.map_err(UpgradeError::Load)?;
        let kind = plugin.definition.id();
        let name = plugin.definition.name.clone();
        let mut targets = self.running_of(kind);
        if targets.is_empty() {
            return Err(UpgradeError::NotRunning {
                path: path.to_path_buf(),
                community: kind,
            });
        }
        // Its own community first, then the instances in a stable order.
        targets.sort_by_key(|(id, ..)| (*id != kind, *id));
        let mut switches = Vec::with_capacity(targets.len());
        for (id, old, row, worker, old_key) in targets {
            let instance = plugin.instance(old.master.clone());
            check_upgrade(path, &old, &instance.definition, allow_downgrade)?;
            let switch = Switch {
                id,
                new: instance.definition.clone(),
                row,
                path: path.to_path_buf(),
                key: key.clone(),
                old_key,
                stamp,
                plugin: instance,
                private: private.clone(),
                kind,
            };
            switches.push((worker, switch));
        }
        let own = Opened {
            plugin,
            private,
            key,
            kind,
        };
        // The switches go on without the caller if it waits no longer: the registry records
        // each once its community's thread answers (a long restore, a slow create()).
        let registry = self.clone();
        let finish = tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            let mut report = None;
            let mut first_error = None;
            for (worker, switch) in switches {
                let id = switch.id;
                match registry.switch(&worker, switch).await {
                    Ok(switched) => report = Some(switched),
                    Err(error) => {
                        tracing::warn!(community = %id, %error, "live upgrade of one community of the type failed; it keeps its version");
                        first_error.get_or_insert(error);
                    }
                }
            }
            if report.is_some() {
                lock(&registry.state).types.insert(kind, own);
            }
            match (first_error, report) {
                (Some(error), _) => Err(error),
                (None, Some(report)) => Ok(report),
                (None, None) => Err(UpgradeError::Stopping),
            }
        });
        let wait = self.context.limits.deadline.max(UPGRADE_WAIT);
        match tokio::time::timeout(wait, finish).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(UpgradeError::Stopping),
            Err(_) => Err(UpgradeError::Pending {
                name,
                wait_ms: wait.as_millis() as u64,
            }),
        }
    }

    /// The running communities of the type whose own community is `kind`: id, definition,
    /// store row, thread and plugin file key.
    fn running_of(
        &self,
        kind: CommunityId,
    ) -> Vec<(CommunityId, Definition, i64, Arc<Worker>, PathBuf)> {
        let state = lock(&self.state);
        state
            .running
            .iter()
            .filter(|(_, opened)| opened.kind == kind)
            .filter_map(|(id, opened)| {
                let (definition, row, _) = state.definitions.get(id)?;
                let worker = state.workers.get(id)?;
                Some((
                    *id,
                    definition.clone(),
                    *row,
                    worker.clone(),
                    opened.key.clone(),
                ))
            })
            .collect()
    }

    /// One community's live upgrade: the switch on its thread, then the registry's part.
    async fn switch(&self, worker: &Worker, switch: Switch) -> Result<PluginReport, UpgradeError> {
        let answer = worker
            .upgrade(&switch.plugin)
            .map_err(|e| UpgradeError::Switch(e.into()))?;
        answer
            .await
            .map_err(|_| UpgradeError::Switch(plugin::QueueError::Stopped.into()))?
            .map_err(UpgradeError::Switch)?;
        self.switched(switch).await
    }

    /// The registry's part of a live upgrade, once the community's thread runs the new version.
    async fn switched(&self, switch: Switch) -> Result<PluginReport, UpgradeError> {
        let Switch {
            id,
            new,
            row,
            path,
            key,
            old_key,
            stamp,
            plugin,
            private,
            kind,
        } = switch;
        // The instance of the new version runs: record its version and metas, then teach the
        // protocol task its definition (the metas it keeps decode the same meanwhile).
        if let Err(error) = self.context.store.ensure_community(&new).await {
            tracing::warn!(community = %id, %error, "recording the upgraded plugin's version and metas in the store failed");
        }
        let (reply, answer) = oneshot::channel();
        let asked = self
            .context
            .commands
            .send(Command::Redefine {
                community: id,
                definition: Box::new(new.clone()),
                reply,
            })
            .await;
        match (asked, answer.await) {
            (Ok(()), Ok(Ok(()))) => {}
            (Ok(()), Ok(Err(error))) => {
                tracing::warn!(community = %id, %error, "the node did not take the upgraded definition");
            }
            _ => {
                return Err(UpgradeError::Stopping);
            }
        }
        let report = PluginReport::loaded(&path, &new, kind, &private);
        let mut state = lock(&self.state);
        state.definitions.insert(id, (new.clone(), row, path));
        if old_key != key {
            if let Some(file) = state.files.get_mut(&old_key) {
                file.loaded = None;
                file.candidate = None;
            }
            state.reports.retain(|r| file_key(&r.path) != old_key);
        }
        state.file_report(&key, report.clone());
        let file = state.files.entry(key.clone()).or_default();
        file.loaded = Some(private.clone());
        file.candidate = None;
        file.stamp = stamp;
        state.running.insert(
            id,
            Opened {
                plugin,
                private,
                key,
                kind,
            },
        );
        drop(state);
        Ok(report)
    }

    /// Stops every community thread (after the queued jobs), waiting for them together at most
    /// `timeout`; a thread still running then (stuck in a plugin call) is left behind and
    /// logged. Blocking; returns the names of the communities left behind.
    pub fn stop_all(&self, timeout: std::time::Duration) -> Vec<String> {
        let workers: Vec<Arc<Worker>> = lock(&self.state).workers.drain().map(|(_, w)| w).collect();
        for worker in &workers {
            worker.signal_stop();
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut left = Vec::new();
        for worker in workers {
            if !worker.wait_stopped(deadline) {
                let call = worker.shared.health().reason.unwrap_or_default();
                tracing::warn!(community = %worker.name(), timeout_ms = timeout.as_millis() as u64, %call, "community thread did not stop in time; left behind");
                left.push(worker.name().to_owned());
            }
        }
        left
    }
}

/// The key of a plugin file: its absolute path, symbolic links not followed (a link pointed
/// at another file is the same plugin file with a new content).
fn file_key(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        device: m.dev(),
        inode: m.ino(),
        size: m.size(),
        modified: (m.mtime(), m.mtime_nsec()),
        changed: (m.ctime(), m.ctime_nsec()),
    })
}

/// Why a plugin file could not be opened.
enum OpenError {
    /// The loader refused it.
    Load(plugin::LoadError),
    /// The loader did not answer (it failed or ran past the deadline).
    Other(String),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dispersy_core::meta::{Authentication, Destination, Distribution, MetaMessage, Resolution};
    use dispersy_core::wire::Conversion;

    use super::*;

    /// A registry over plugin folder `dir`, with an in-memory store; the receiver stands for the
    /// protocol task.
    async fn registry(dir: &Path) -> (Registry, mpsc::Receiver<Command>) {
        let (commands, commands_rx) = mpsc::channel(8);
        let (inserts, _) = mpsc::channel(8);
        let store = Store::open_in_memory().await.unwrap();
        let registry = Registry::new(Context {
            store,
            key: KeyPair::from_secret(&[5u8; 32]).unwrap(),
            commands,
            inserts,
            limits: WorkerLimits {
                queue: 8,
                batch: 8,
                recent: 8,
                delayed: 8,
                delay_timeout: Duration::from_secs(1),
                timers: 1,
                deadline: Duration::from_secs(5),
                restarts: 0,
                restart_window: Duration::from_secs(60),
                restart_backoff: Duration::from_secs(1),
                read_page: 8,
            },
            peers: Vec::new(),
            dirs: vec![dir.to_path_buf()],
            copies: dir.join("private"),
            spare_copies: 2,
        });
        (registry, commands_rx)
    }

    fn plugin_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(format!("lib{name}{}", std::env::consts::DLL_SUFFIX));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[tokio::test]
    async fn each_refused_file_gets_its_own_report_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = plugin_file(dir.path(), "text", b"not a library");
        let empty = plugin_file(dir.path(), "empty", b"");
        std::fs::write(dir.path().join("notes.txt"), b"not a plugin file name").unwrap();
        let (registry, _commands) = registry(dir.path()).await;
        let reports = registry.scan().await;
        let mut paths: Vec<&Path> = reports.iter().map(|r| r.path.as_path()).collect();
        paths.sort();
        let mut expected = vec![empty.as_path(), text.as_path()];
        expected.sort();
        assert_eq!(paths, expected, "only lib*.so files are tried");
        for report in &reports {
            let error = report.error.as_deref().unwrap_or_default();
            assert!(
                error.contains(&report.path.display().to_string()),
                "{error:?} names {}",
                report.path.display()
            );
            assert!(report.name.is_none() && report.community.is_none());
        }
        let missing = dir.path().join("libgone.so");
        let report = registry.load(&missing).await;
        assert!(report.error.unwrap().contains("libgone.so"));
        assert_eq!(registry.reports().len(), 3);
        assert!(registry.workers().is_empty());
    }

    #[tokio::test]
    async fn a_file_is_tried_again_only_once_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = plugin_file(dir.path(), "broken", b"v1");
        let (registry, _commands) = registry(dir.path()).await;
        assert_eq!(registry.scan().await.len(), 1);
        assert!(
            registry.scan().await.is_empty(),
            "unchanged: not tried again"
        );
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        drop(file);
        assert_eq!(registry.scan().await.len(), 1, "changed: tried again");
        assert_eq!(registry.reports().len(), 1, "one report per file");
    }

    /// A definition with one direct meta `post`, its master key made from `secret`.
    fn one_meta(name: &str, version: &str, secret: u8) -> Definition {
        Definition {
            undoable: Vec::new(),
            name: name.into(),
            version: version.into(),
            master: KeyPair::from_secret(&[secret; 32])
                .unwrap()
                .public()
                .clone(),
            conversions: vec![Conversion::version(1).unwrap()],
            metas: vec![MetaMessage {
                id: 1,
                name: "post".into(),
                authentication: Authentication::Member,
                resolution: Resolution::Public,
                distribution: Distribution::Direct,
                destination: Destination::Community { node_count: 5 },
                priority: 128,
                batch_window: Duration::ZERO,
            }],
        }
    }

    #[tokio::test]
    async fn a_community_already_provided_by_another_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, _commands) = registry(dir.path()).await;
        let definition = one_meta("twice", "1", 3);
        let id = definition.id();
        let first = dir.path().join("libfirst.so");
        let second = dir.path().join("libsecond.so");
        assert_eq!(registry.refuse_joined(&first, id), Ok(()));
        lock(&registry.state)
            .definitions
            .insert(id, (definition, 1, first.clone()));
        let error = registry.refuse_joined(&second, id).unwrap_err();
        assert!(error.contains("libsecond.so"), "{error}");
        assert!(error.contains("libfirst.so"), "{error}");
        assert!(error.contains(&id.to_string()), "{error}");
        assert_eq!(registry.definition(&id).map(|(_, row)| row), Some(1));
    }

    #[test]
    fn an_upgrade_needs_a_newer_version_and_keeps_every_meta_and_its_kind() {
        let old = one_meta("up", "1.2.0", 4);
        let path = Path::new("libup.so");
        let with = |version: &str| {
            let mut new = old.clone();
            new.version = version.into();
            new
        };
        assert_eq!(check_upgrade(path, &old, &with("1.10.0"), false), Ok(()));
        for version in ["1.2.0", "1.1.9", "1.2.0-beta"] {
            let error = check_upgrade(path, &old, &with(version), false).unwrap_err();
            assert!(matches!(error, UpgradeError::NotNewer { .. }), "{error}");
            assert_eq!(check_upgrade(path, &old, &with(version), true), Ok(()));
        }
        let error = check_upgrade(path, &old, &with("two"), false).unwrap_err();
        assert!(error.to_string().contains("`two`"), "{error}");

        let mut added = with("1.3.0");
        let mut extra = added.metas[0].clone();
        extra.id = 2;
        extra.name = "new".into();
        added.metas.push(extra);
        assert_eq!(
            check_upgrade(path, &old, &added, false),
            Ok(()),
            "a new meta is fine"
        );
        let mut gone = with("1.3.0");
        gone.metas[0].id = 3;
        let error = check_upgrade(path, &old, &gone, false).unwrap_err();
        assert!(
            error.to_string().contains("meta post (id 1) is missing"),
            "{error}"
        );
        let mut changed = with("1.3.0");
        changed.metas[0].distribution = Distribution::FullSync {
            sequence_numbers: false,
            order: dispersy_core::meta::SyncOrder::Ascending,
            pruning: None,
        };
        let error = check_upgrade(path, &old, &changed, false).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("meta post (id 1) changed its distribution"),
            "{error}"
        );
    }
}
