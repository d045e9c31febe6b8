//! SQLite storage through sqlx: members, communities, meta-messages and persistent messages.
//!
//! The database is a file in the data folder, in WAL mode with `synchronous=NORMAL`: a process
//! crash (kill -9) loses no committed transaction. Writes go through one task ([`run`]) that
//! takes every insert waiting in its queue and commits them in one transaction, then
//! acknowledges each; a message counts as stored only after that acknowledgement.
//!
//! This file holds the handle ([`Store`]: opening, the pool and its [`Tuning`]), the values
//! that go in and out, and [`StoreError`]. The work is split by concern:
//! - `setup`: members, community and meta-message rows, hashes of old rows;
//! - `write`: the insert transaction, the placement rules for sequence numbers, pairs of signers,
//!   upserts and pruning;
//! - `hidden`: the reason bits of hidden (undone, denied) rows and the rows they flip;
//! - `read`: resume state, missing-* lookups, the API's listing and counts;
//! - `sync_read`: the responder's range and modulo reads and the packets it sends (rows framed as
//!   text inside SQL; its header says why);
//! - `undo`: the targets undos point to, and marking rows undone or redone by an undo;
//! - `task`: the batching store task ([`run`]); `sync_task`: the task running the protocol
//!   task's reads.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use dispersy_core::bloom::PacketHash;
use dispersy_core::identity::MemberId;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

mod hidden;
mod read;
mod setup;
mod sync_read;
pub(crate) mod sync_task;
mod task;
#[cfg(test)]
mod testing;
mod undo;
mod write;

pub use hidden::{Authors, Flips, Mark, Marked, Reason, Span};
pub use read::HistoryQuery;
pub use task::{Health, Insert, InsertSender, run};
pub use undo::UndoMarked;

/// The embedded migrations.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite or sqlx failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed (for example a database written by a newer version).
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store task is gone (shutting down).
    #[error("the store is shut down")]
    Closed,
    /// The database file could not be created private or narrowed to its owner.
    #[error("database file: {0}")]
    File(std::io::Error),
}

/// SQLite page cache per connection by default, in KiB.
pub const DEFAULT_CACHE_KIB: u32 = 8 * 1024;

/// How much memory SQLite may use for a database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Page cache per connection (there are [`CONNECTIONS`]), in KiB: the responder's index
    /// reads stay in memory up to that size.
    pub cache_kib: u32,
    /// The part of the file SQLite reads through a memory map, in MiB (0: none, every page is
    /// read into the page cache). Reads through the map cost no system call and no copy. The
    /// mapped pages are the operating system's file cache, which holds them without the map as
    /// well, but they count in the process's RSS once mapped, with the cached pages around each
    /// one touched (the kernel maps 64 KiB per fault): one index scan at the start (the count of
    /// syncable rows) maps most of the file.
    pub mmap_mib: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            cache_kib: DEFAULT_CACHE_KIB,
            mmap_mib: 0,
        }
    }
}

/// Connections of a file database.
pub const CONNECTIONS: u32 = 4;

/// A handle to the database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Communities that may have denied rows (`hidden.rs`): their reads probe `denied`, the
    /// others' do not. Loaded at open from `denied_count`; a community is added before any
    /// row of it is denied and never removed while this store is open (a stale entry costs
    /// only the probe).
    denying: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
}

/// A persistent message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Community row id.
    pub community: i64,
    /// First author's member id.
    pub member: MemberId,
    /// Global time.
    pub global_time: u64,
    /// Meta-message type.
    pub meta: u32,
    /// Sequence number, if any.
    pub sequence: Option<u32>,
    /// Priority of its meta.
    pub priority: u8,
    /// For last-sync metas: how many messages per member (per pair of signers for
    /// double-member messages) are kept.
    pub history: Option<u16>,
    /// Second author's member id, for double-member messages.
    pub co_signer: Option<MemberId>,
    /// The signed packet.
    pub packet: Vec<u8>,
    /// Its hash (computed once, by whoever built this value).
    pub hash: PacketHash,
}

impl NewMessage {
    /// The row of `entry` (what the storage contract keeps of a message) in the community of
    /// row id `community`.
    pub fn new(community: i64, entry: dispersy_core::store::Entry) -> NewMessage {
        NewMessage {
            community,
            member: entry.member,
            global_time: entry.global_time,
            meta: entry.meta,
            sequence: entry.sequence,
            priority: entry.priority,
            history: entry.history,
            co_signer: entry.co_signer,
            packet: entry.packet,
            hash: entry.hash,
        }
    }
}

/// A stored message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Row id (increasing in insertion order).
    pub id: i64,
    /// Author's member id.
    pub member: MemberId,
    /// Global time.
    pub global_time: u64,
    /// Meta-message type.
    pub meta: u32,
    /// Sequence number.
    pub sequence: Option<u32>,
    /// The signed packet.
    pub packet: Vec<u8>,
    /// Why it is hidden: 0 (shown), or a set of [`Reason`] bits (1 undone by an undo, 2
    /// denied by the timeline).
    pub undone: u8,
    /// For the undo bit: the row id of the undo it is undone by.
    pub undone_by: Option<i64>,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A row count as SQLite takes it.
fn limit_i64(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// `values` as a JSON array, for `json_each`.
fn json_list<T: serde::Serialize>(values: &[T]) -> Result<String, StoreError> {
    Ok(serde_json::to_string(values).map_err(|e| sqlx::Error::Protocol(e.to_string()))?)
}

fn hash_bytes(hash: &PacketHash) -> Vec<u8> {
    let mut bytes = hash.0.to_le_bytes().to_vec();
    bytes.extend_from_slice(&hash.1.to_le_bytes());
    bytes
}

fn hash_from(bytes: &[u8]) -> Option<PacketHash> {
    let a: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let b: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
    Some(PacketHash(u64::from_le_bytes(a), u64::from_le_bytes(b)))
}

impl Store {
    /// Opens (creating if needed) the database file at `path` and applies migrations, with the
    /// default [`Tuning`].
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, Tuning::default()).await
    }

    /// [`Store::open`] with the memory given in `tuning`. The database file (and so its WAL and
    /// shared-memory files, which SQLite creates with the database's permissions) is private to
    /// the owner: created with mode 0600, and narrowed to it if an older version left it wider.
    pub async fn open_with(path: &Path, tuning: Tuning) -> Result<Store, StoreError> {
        private_file(path).map_err(StoreError::File)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", format!("-{}", tuning.cache_kib.max(64)))
            .pragma("mmap_size", (u64::from(tuning.mmap_mib) << 20).to_string());
        Self::connect(options, CONNECTIONS).await
    }

    /// A private in-memory database (tests).
    pub async fn open_in_memory() -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // An in-memory database exists per connection: keep exactly one.
        Self::connect(options, 1).await
    }

    async fn connect(options: SqliteConnectOptions, connections: u32) -> Result<Store, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        // Flips of a re-evaluation a previous run committed but did not hand out: its plugin
        // was not told then and is not now (it restores the visible rows anyway).
        sqlx::query("DELETE FROM flip").execute(&pool).await?;
        let denying: Vec<i64> =
            sqlx::query_scalar("SELECT community FROM denied_count WHERE rows > 0")
                .fetch_all(&pool)
                .await?;
        Ok(Store {
            pool,
            denying: std::sync::Arc::new(std::sync::Mutex::new(denying.into_iter().collect())),
        })
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes the database file at `path` private to its owner (mode 0600): creates it empty (which
/// SQLite takes as a new database) or narrows the permissions of the files it already has.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    for file in [path.to_path_buf(), wal.into(), shm.into()] {
        if let Ok(metadata) = std::fs::metadata(&file)
            && metadata.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// What became of one message given to [`Store::insert`]: the core's storage contract.
pub use dispersy_core::store::Outcome;
