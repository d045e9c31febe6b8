//! SQLite storage through sqlx: members, communities, meta-messages and persistent messages.
//!
//! The database is a file in the data folder, in WAL mode with `synchronous=NORMAL`: a process
//! crash (kill -9) loses no committed transaction. Writes go through one task ([`run`]) that
//! takes every insert waiting in its queue and commits them in one transaction, then
//! acknowledges each; a message counts as stored only after that acknowledgement.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use dispersy_core::bloom::PacketHash;
use dispersy_core::community::{Definition, Resume};
use dispersy_core::identity::{MemberId, PublicKey};
use dispersy_core::meta::{Distribution, SyncOrder};
use dispersy_core::missing::Lookup;
use dispersy_core::sync::{Query, Range, Row};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub(crate) mod sync_task;

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

/// Rows written by one multi-row INSERT (8 bound values each, far below SQLite's 32,766).
const INSERT_ROWS: usize = 256;

/// The upsert of `rows` rows: the binary-higher packet wins.
fn upsert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO sync (community, member, global_time, meta, sequence, priority, packet, hash) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?)");
    }
    sql.push_str(
        " ON CONFLICT (community, member, global_time) DO UPDATE SET
             meta = excluded.meta, sequence = excluded.sequence,
             priority = excluded.priority, packet = excluded.packet, hash = excluded.hash
         WHERE excluded.packet > sync.packet",
    );
    sql
}

/// Binds the values of `m` for one row of [`upsert_sql`].
fn bind_row<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    m: &'q NewMessage,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(m.community)
        .bind(m.member.0.as_slice())
        .bind(to_i64(m.global_time))
        .bind(i64::from(m.meta))
        .bind(m.sequence.map(i64::from))
        .bind(i64::from(m.priority))
        .bind(m.packet.as_slice())
        .bind(hash_bytes(&m.hash))
}

/// The stored packets under `rows` (community, member, global time) keys, through the unique
/// index.
fn stored_sql(rows: usize) -> String {
    let mut sql = String::from(
        "SELECT community, member, global_time, packet FROM sync
         WHERE (community, member, global_time) IN (VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?)");
    }
    sql.push(')');
    sql
}

/// Upserts `run` (messages without history, at most [`INSERT_ROWS`]); returns for each whether
/// it was stored, exactly as if they had been written one by one in order. The packets already
/// stored under the run's keys are read first (usually none), the outcome of each message is
/// decided from them (a message is stored when its key is free or its packet is binary-higher
/// than the one it meets, SQLite's BLOB order being byte order like Rust's), and only the stored
/// ones are written. Reading the answer back from the INSERT (RETURNING) costs more than this
/// read: sqlx builds a row object per returned row. The caller's transaction is IMMEDIATE, so
/// nothing changes between the read and the write.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    run: &[NewMessage],
) -> Result<Vec<bool>, StoreError> {
    type Key = (i64, MemberId, i64);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(stored_sql(run.len())));
    for m in run {
        query = query
            .bind(m.community)
            .bind(m.member.0.as_slice())
            .bind(to_i64(m.global_time));
    }
    let mut current: HashMap<Key, Vec<u8>> = HashMap::new();
    for row in query.fetch_all(&mut **tx).await? {
        let member: Vec<u8> = row.try_get(1)?;
        let member = MemberId::from_slice(&member).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        current.insert((row.try_get(0)?, member, row.try_get(2)?), row.try_get(3)?);
    }
    let mut stored = Vec::with_capacity(run.len());
    let mut written: HashMap<Key, &[u8]> = HashMap::new();
    for m in run {
        let key = (m.community, m.member, to_i64(m.global_time));
        let before = written
            .get(&key)
            .copied()
            .or_else(|| current.get(&key).map(Vec::as_slice));
        let new = before.is_none_or(|packet| m.packet.as_slice() > packet);
        if new {
            written.insert(key, &m.packet);
        }
        stored.push(new);
    }
    let count = stored.iter().filter(|new| **new).count();
    if count == 0 {
        return Ok(stored);
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(upsert_sql(count)));
    for (m, _) in run.iter().zip(&stored).filter(|(_, new)| **new) {
        query = bind_row(query, m);
    }
    query.execute(&mut **tx).await?;
    Ok(stored)
}

/// Inserts one message that is not plain (numbered, last-sync or double-signed): places a
/// numbered one against its member's sequence, upserts it, records a pair of signers, keeps only
/// the newest `history` of a last-sync meta.
async fn insert_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    m: &NewMessage,
) -> Result<Outcome, StoreError> {
    if let Some(sequence) = m.sequence
        && let Placed::Not(outcome) = place(tx, m, sequence).await?
    {
        return Ok(outcome);
    }
    let result = bind_row(sqlx::query(sqlx::AssertSqlSafe(upsert_sql(1))), m)
        .execute(&mut **tx)
        .await?;
    let mut stored = result.rows_affected() == 1;
    if let (true, Some(co_signer)) = (stored, m.co_signer) {
        pair(tx, m, co_signer).await?;
    }
    if let (true, Some(history)) = (stored, m.history) {
        // Last-sync: keep the newest `history` of this member (or pair of signers) and
        // meta. A message older than all of them goes at once, and counts as not stored.
        match m.co_signer {
            None => {
                sqlx::query(
                    "DELETE FROM sync WHERE id IN (
                         SELECT id FROM sync WHERE community = ?1 AND meta = ?2 AND member = ?3
                         ORDER BY global_time DESC LIMIT -1 OFFSET ?4)",
                )
                .bind(m.community)
                .bind(i64::from(m.meta))
                .bind(m.member.0.as_slice())
                .bind(i64::from(history))
                .execute(&mut **tx)
                .await?;
            }
            Some(co_signer) => {
                let (first, second) = ordered(m.member, co_signer);
                sqlx::query(
                    "DELETE FROM sync WHERE id IN (
                         SELECT s.id FROM sync s JOIN double_signed_sync d ON d.sync = s.id
                         WHERE s.community = ?1 AND s.meta = ?2
                           AND d.member1 = ?3 AND d.member2 = ?4
                         ORDER BY s.global_time DESC LIMIT -1 OFFSET ?5)",
                )
                .bind(m.community)
                .bind(i64::from(m.meta))
                .bind(first.0.as_slice())
                .bind(second.0.as_slice())
                .bind(i64::from(history))
                .execute(&mut **tx)
                .await?;
            }
        }
        let kept: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sync
             WHERE community = ?1 AND member = ?2 AND global_time = ?3",
        )
        .bind(m.community)
        .bind(m.member.0.as_slice())
        .bind(to_i64(m.global_time))
        .fetch_one(&mut **tx)
        .await?;
        stored = kept == 1;
    }
    Ok(if stored {
        Outcome::Stored
    } else {
        Outcome::Duplicate
    })
}

/// The sync rows of query rows (id, global time, hash, size); rows without a hash yet are left
/// out.
fn sync_rows_of(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let global_time: i64 = row.try_get(1)?;
        let hash: Option<Vec<u8>> = row.try_get(2)?;
        let size: i64 = row.try_get(3)?;
        out.extend(hash.as_deref().and_then(hash_from).map(|hash| Row {
            id: u64::try_from(id).unwrap_or(0),
            global_time: u64::try_from(global_time).unwrap_or(0),
            hash,
            size: u32::try_from(size).unwrap_or(u32::MAX),
        }));
    }
    Ok(out)
}

impl Store {
    /// Opens (creating if needed) the database file at `path` and applies migrations, with the
    /// default [`Tuning`].
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, Tuning::default()).await
    }

    /// [`Store::open`] with the memory given in `tuning`.
    pub async fn open_with(path: &Path, tuning: Tuning) -> Result<Store, StoreError> {
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
        Ok(Store { pool })
    }

    /// Records the member's public key (idempotent).
    pub async fn remember_member(&self, key: &PublicKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO member (mid, public_key) VALUES (?1, ?2)
             ON CONFLICT (mid) DO UPDATE SET public_key = excluded.public_key",
        )
        .bind(key.member_id().0.to_vec())
        .bind(key.as_bytes().to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates or refreshes the community row and its meta-message rows; returns the row id.
    pub async fn ensure_community(&self, definition: &Definition) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO community (cid, name, master_key, plugin_version) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (cid) DO UPDATE SET name = excluded.name,
                 plugin_version = excluded.plugin_version
             RETURNING id",
        )
        .bind(definition.id().0.to_vec())
        .bind(&definition.name)
        .bind(definition.master.as_bytes().to_vec())
        .bind(&definition.version)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        for meta in &definition.metas {
            let direction = match &meta.distribution {
                Distribution::FullSync { order, .. } | Distribution::LastSync { order, .. } => {
                    match order {
                        SyncOrder::Ascending => 0,
                        SyncOrder::Descending => 1,
                        SyncOrder::Random => 2,
                    }
                }
                _ => 0,
            };
            sqlx::query(
                "INSERT INTO meta_message (community, type, name, priority, direction)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (community, type) DO UPDATE SET name = excluded.name,
                     priority = excluded.priority, direction = excluded.direction",
            )
            .bind(id)
            .bind(i64::from(meta.id))
            .bind(&meta.name)
            .bind(i64::from(meta.priority))
            .bind(direction)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// What the core needs to continue where it stopped: the highest stored global time, our
    /// own highest sequence number per meta, and how many messages of the `syncable` metas
    /// (priority above 32) are stored and not undone.
    pub async fn resume(
        &self,
        community: i64,
        me: MemberId,
        syncable: &[u32],
    ) -> Result<Resume, StoreError> {
        let global_time: Option<i64> =
            sqlx::query_scalar("SELECT MAX(global_time) FROM sync WHERE community = ?1")
                .bind(community)
                .fetch_one(&self.pool)
                .await?;
        let rows = sqlx::query(
            "SELECT meta, MAX(sequence) FROM sync
             WHERE community = ?1 AND member = ?2 AND sequence IS NOT NULL GROUP BY meta",
        )
        .bind(community)
        .bind(me.0.to_vec())
        .fetch_all(&self.pool)
        .await?;
        // From the covering index: a row's priority is its meta's.
        let syncable = json_list(syncable)?;
        let stored: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM json_each(?2) CROSS JOIN sync INDEXED BY sync_cover
             WHERE community = ?1 AND meta = json_each.value AND undone = 0",
        )
        .bind(community)
        .bind(syncable)
        .fetch_one(&self.pool)
        .await?;
        let mut sequences = Vec::new();
        for row in rows {
            let meta: i64 = row.try_get(0)?;
            let sequence: i64 = row.try_get(1)?;
            if let (Ok(meta), Ok(sequence)) = (u32::try_from(meta), u32::try_from(sequence)) {
                sequences.push((meta, sequence));
            }
        }
        Ok(Resume {
            global_time: global_time.and_then(|g| u64::try_from(g).ok()).unwrap_or(0),
            sequences,
            stored: u64::try_from(stored).unwrap_or(0),
        })
    }

    /// Inserts `messages` in one transaction; returns what became of each. Two versions of one
    /// message (same community, member and global time, other bytes: another signature or
    /// payload) are resolved the same way on every node: the binary-higher packet is kept (the
    /// original's rule), so the lower one arriving later is not stored, and a higher one
    /// replaces the lower. Messages with sequence numbers are first placed against what is
    /// stored of their member and meta ([`dispersy_core::missing::check`]), in the same
    /// transaction.
    ///
    /// Runs of plain messages (no sequence number, no last-sync history, one signer) are written
    /// up to 256 per statement (`INSERT_ROWS`) (sqlx costs per statement, not per row); the others one by
    /// one, in order.
    pub async fn insert(&self, messages: &[NewMessage]) -> Result<Vec<Outcome>, StoreError> {
        // IMMEDIATE: the transaction writes, and reads before it writes (`insert_rows`, `place`).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut rest = messages;
        while !rest.is_empty() {
            let plain = rest
                .iter()
                .take(INSERT_ROWS)
                .take_while(|m| {
                    m.sequence.is_none() && m.history.is_none() && m.co_signer.is_none()
                })
                .count();
            if plain > 0 {
                let (run, after) = rest.split_at(plain);
                outcomes.extend(insert_rows(&mut tx, run).await?.into_iter().map(|stored| {
                    if stored {
                        Outcome::Stored
                    } else {
                        Outcome::Duplicate
                    }
                }));
                rest = after;
            } else if let Some((m, after)) = rest.split_first() {
                outcomes.push(insert_one(&mut tx, m).await?);
                rest = after;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The stored packets a missing-* request names, in its order (sequence order; newest first
    /// for the last messages), stopping once `max_bytes` are reached (the packet crossing it is
    /// included).
    pub async fn lookup(
        &self,
        community: i64,
        lookup: &Lookup,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        // Every stored packet holds a signature at least: no more rows than this can fit, and a
        // requester's range of sequence numbers may be as wide as it likes.
        let most = max_bytes / dispersy_core::identity::SIGNATURE_LEN + 1;
        let rows = match lookup {
            Lookup::Sequences {
                member,
                meta,
                low,
                high,
            } => {
                sqlx::query(
                    "SELECT packet FROM sync
                     WHERE community = ?1 AND meta = ?2 AND member = ?3
                       AND sequence BETWEEN ?4 AND ?5
                     ORDER BY sequence LIMIT ?6",
                )
                .bind(community)
                .bind(i64::from(*meta))
                .bind(member.0.as_slice())
                .bind(i64::from(*low))
                .bind(i64::from(*high))
                .bind(limit_i64(most))
                .fetch_all(&self.pool)
                .await?
            }
            Lookup::GlobalTimes {
                member,
                global_times,
            } => {
                let list = json_list(global_times)?;
                sqlx::query(
                    "SELECT packet FROM sync JOIN json_each(?3) ON sync.global_time = json_each.value
                     WHERE community = ?1 AND member = ?2
                     ORDER BY global_time",
                )
                .bind(community)
                .bind(member.0.as_slice())
                .bind(list)
                .fetch_all(&self.pool)
                .await?
            }
            Lookup::Last {
                member,
                meta,
                count,
            } => {
                sqlx::query(
                    "SELECT packet FROM sync WHERE community = ?1 AND meta = ?2 AND member = ?3
                     ORDER BY global_time DESC LIMIT ?4",
                )
                .bind(community)
                .bind(i64::from(*meta))
                .bind(member.0.as_slice())
                .bind(i64::from(*count))
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut out = Vec::new();
        let mut used = 0;
        for row in rows {
            if used >= max_bytes {
                break;
            }
            let packet: Vec<u8> = row.try_get(0)?;
            used += packet.len();
            out.push(packet);
        }
        Ok(out)
    }

    /// Stored messages of `community` with a row id above `after`, oldest first, at most `limit`.
    pub async fn messages(
        &self,
        community: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, member, global_time, meta, sequence, packet FROM sync
             WHERE community = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .bind(community)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let member: Vec<u8> = row.try_get(1)?;
            let global_time: i64 = row.try_get(2)?;
            let meta: i64 = row.try_get(3)?;
            let sequence: Option<i64> = row.try_get(4)?;
            out.push(StoredMessage {
                id: row.try_get(0)?,
                member: MemberId::from_slice(&member)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                global_time: u64::try_from(global_time).unwrap_or(0),
                meta: u32::try_from(meta).unwrap_or(0),
                sequence: sequence.and_then(|s| u32::try_from(s).ok()),
                packet: row.try_get(5)?,
            });
        }
        Ok(out)
    }

    /// Number of stored messages of `community`.
    pub async fn count(&self, community: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sync WHERE community = ?1")
            .bind(community)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Computes the packet hash of rows stored before hashes were kept.
    pub async fn backfill_hashes(&self) -> Result<u64, StoreError> {
        let rows =
            sqlx::query("SELECT id, packet FROM sync INDEXED BY sync_unhashed WHERE hash IS NULL")
                .fetch_all(&self.pool)
                .await?;
        let mut tx = self.pool.begin().await?;
        for row in &rows {
            let id: i64 = row.try_get(0)?;
            let packet: Vec<u8> = row.try_get(1)?;
            sqlx::query("UPDATE sync SET hash = ?1 WHERE id = ?2")
                .bind(hash_bytes(&PacketHash::of(&packet)))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// The syncable rows (priority above 32, not undone) that `query` describes: `right`
    /// ascending and `left` descending (empty for the oldest-first query).
    pub async fn sync_query(
        &self,
        community: i64,
        query: Query,
    ) -> Result<(Vec<Row>, Vec<Row>), StoreError> {
        match query {
            Query::Oldest { limit } => {
                Ok((self.rows_above(community, 0, limit).await?, Vec::new()))
            }
            Query::Modulo {
                modulo,
                offset,
                limit,
            } => {
                let rows = sqlx::query(
                    "SELECT id, global_time, hash, length(packet) FROM sync
                     WHERE community = ?1 AND priority > 32 AND undone = 0
                       AND global_time % ?2 = ?3
                     ORDER BY global_time, id LIMIT ?4",
                )
                .bind(community)
                .bind(i64::from(modulo))
                .bind(to_i64(offset))
                .bind(limit_i64(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok((sync_rows_of(&rows)?, Vec::new()))
            }
            Query::Below { high, limit } => {
                Ok((Vec::new(), self.rows_below(community, high, limit).await?))
            }
            Query::Pivot { pivot, limit } => Ok((
                self.rows_above(community, pivot, limit).await?,
                self.rows_below(community, pivot, limit).await?,
            )),
        }
    }

    /// Up to `limit` syncable rows at or above global time `low`, ascending.
    async fn rows_above(
        &self,
        community: i64,
        low: u64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, global_time, hash, length(packet) FROM sync
             WHERE community = ?1 AND priority > 32 AND undone = 0 AND global_time >= ?2
             ORDER BY global_time, id LIMIT ?3",
        )
        .bind(community)
        .bind(to_i64(low))
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        sync_rows_of(&rows)
    }

    /// Up to `limit` syncable rows at or below global time `high`, descending.
    async fn rows_below(
        &self,
        community: i64,
        high: u64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, global_time, hash, length(packet) FROM sync
             WHERE community = ?1 AND priority > 32 AND undone = 0 AND global_time <= ?2
             ORDER BY global_time DESC, id DESC LIMIT ?3",
        )
        .bind(community)
        .bind(to_i64(high))
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        sync_rows_of(&rows)
    }

    /// The syncable rows of `range`, meta by meta in the order given (the driver lists the
    /// synchronised metas highest priority first, each with its order and the lowest global
    /// time still active), each meta's rows in its own order, at most `limit` in all. Every query
    /// walks the (community, meta, undone, global_time) index.
    pub async fn sync_rows(
        &self,
        community: i64,
        range: Range,
        limit: usize,
        metas: &[(u32, SyncOrder, u64)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut out = Vec::new();
        for (meta, order, active_from) in metas {
            let left = limit.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            let low = range.low.max(*active_from);
            let modulo = u64::from(range.modulo.max(1));
            // The first global time of the residue class at or above `low`.
            let first = low + (range.offset % modulo + modulo - low % modulo) % modulo;
            if first > range.high {
                continue;
            }
            // The last one at or below `high`.
            let last = first + (range.high - first) / modulo * modulo;
            let sql = rows_sql(enumerate_residues(first, last, modulo, left), *order);
            // One row holding them all: sqlx hands rows over one by one between threads, which
            // costs more than SQLite's own work here.
            let text: Option<String> = sqlx::query_scalar(sql)
                .bind(community)
                .bind(to_i64(first))
                .bind(to_i64(last))
                .bind(to_i64(modulo))
                .bind(limit_i64(left))
                .bind(i64::from(*meta))
                .fetch_one(&self.pool)
                .await?;
            out.extend(text.as_deref().map(parse_rows).unwrap_or_default());
        }
        Ok(out)
    }

    /// Removes the messages of `meta` below global time `below` (global-time pruning); returns
    /// how many.
    pub async fn prune(&self, community: i64, meta: u32, below: u64) -> Result<u64, StoreError> {
        let result =
            sqlx::query("DELETE FROM sync WHERE community = ?1 AND meta = ?2 AND global_time < ?3")
                .bind(community)
                .bind(i64::from(meta))
                .bind(to_i64(below))
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected())
    }

    /// The packets of rows `ids`, in that order (missing rows are left out).
    pub async fn packets(&self, ids: &[u64]) -> Result<Vec<Vec<u8>>, StoreError> {
        let list = json_list(ids)?;
        // One value holding them all, each as `id:length:` and its bytes: sqlx hands rows over
        // one by one between threads, which costs more than reading them.
        let all: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT group_concat(printf('%d:%d:', sync.id, length(packet)) || packet, '')
             FROM json_each(?1) CROSS JOIN sync ON sync.id = json_each.value",
        )
        .bind(list)
        .fetch_one(&self.pool)
        .await?;
        let mut by_id = HashMap::with_capacity(ids.len());
        let mut rest = all.as_deref().unwrap_or_default();
        while !rest.is_empty() {
            let (id, packet, after) =
                split_packet(rest).ok_or_else(|| sqlx::Error::Protocol("packet framing".into()))?;
            by_id.insert(id, packet.to_vec());
            rest = after;
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// What became of one message given to [`Store::insert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (new, or replacing a lower version of itself or a losing claim on its sequence
    /// number).
    Stored,
    /// Not stored: the same message (or a winning version of it, or newer last-sync messages)
    /// is stored.
    Duplicate,
    /// Not stored: sequence numbers `low..=high` of its member and meta are missing before it.
    Gap {
        /// First missing number.
        low: u32,
        /// Last missing number.
        high: u32,
    },
    /// Not stored: its sequence number is held by this stored packet, which wins.
    Conflict(Vec<u8>),
    /// Not stored: numbered next, but not newer than the member's last message of the meta.
    Stale,
}

/// The two signers of a pair in a fixed order (the lower member id first), so that a pair is
/// one key whoever signed first.
fn ordered(a: MemberId, b: MemberId) -> (MemberId, MemberId) {
    if a.0 <= b.0 { (a, b) } else { (b, a) }
}

/// Records the pair of signers of a stored double-member message.
async fn pair(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    m: &NewMessage,
    co_signer: MemberId,
) -> Result<(), StoreError> {
    let (first, second) = ordered(m.member, co_signer);
    let id: i64 = sqlx::query_scalar(
        "SELECT id FROM sync WHERE community = ?1 AND member = ?2 AND global_time = ?3",
    )
    .bind(m.community)
    .bind(m.member.0.as_slice())
    .bind(to_i64(m.global_time))
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM double_signed_sync WHERE sync = ?1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO double_signed_sync (sync, member1, member2) VALUES (?1, ?2, ?3)")
        .bind(id)
        .bind(first.0.as_slice())
        .bind(second.0.as_slice())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The responder's row query: scanning the index over the range (keeping the residue class), or
/// one index seek per global time of the class (`enumerate`; CROSS JOIN keeps the class as the
/// outer loop, whatever the planner would think), in `order`. Parameters: ?1
/// community, ?2 first global time of the class, ?3 last one, ?4 modulo, ?5 limit, ?6 meta.
fn rows_sql(enumerate: bool, order: SyncOrder) -> &'static str {
    // Rows as text `id:global_time:HASH:size`, comma-separated, in the query's order.
    macro_rules! scan {
        ($order:literal) => {
            concat!(
                "SELECT group_concat(printf('%d:%d:%s:%d', id, global_time, hex(hash), size), ',')
                 FROM (SELECT id, global_time, hash, length(packet) AS size
                       FROM sync INDEXED BY sync_cover
                       WHERE community = ?1 AND meta = ?6 AND undone = 0
                         AND global_time BETWEEN ?2 AND ?3 AND (global_time - ?2) % ?4 = 0
                       ORDER BY ",
                $order,
                " LIMIT ?5)"
            )
        };
    }
    // One index seek per global time of the residue class, in the order wanted: the class is
    // the outer loop (CROSS JOIN) and a recursive CTE yields its rows as it makes them, so
    // without ORDER BY the rows come in that order and LIMIT ends the seeks early.
    macro_rules! seek {
        ($classes:literal, $order:literal) => {
            concat!(
                "WITH RECURSIVE t(g) AS (",
                $classes,
                ")
                 SELECT group_concat(printf('%d:%d:%s:%d', id, global_time, hex(hash), size), ',')
                 FROM (SELECT id, global_time, hash, length(packet) AS size
                       FROM t CROSS JOIN sync INDEXED BY sync_cover
                       WHERE community = ?1 AND meta = ?6 AND undone = 0 AND global_time = t.g ",
                $order,
                " LIMIT ?5)"
            )
        };
    }
    // Random order: a random sample of the candidates (all of them are read to shuffle).
    match (enumerate, order) {
        (false, SyncOrder::Ascending) => scan!("global_time"),
        (false, SyncOrder::Descending) => scan!("global_time DESC"),
        (false, SyncOrder::Random) => scan!("random()"),
        (true, SyncOrder::Ascending) => {
            seek!(
                "SELECT ?2 UNION ALL SELECT g + ?4 FROM t WHERE g + ?4 <= ?3",
                ""
            )
        }
        (true, SyncOrder::Descending) => {
            seek!(
                "SELECT ?3 UNION ALL SELECT g - ?4 FROM t WHERE g - ?4 >= ?2",
                ""
            )
        }
        (true, SyncOrder::Random) => seek!(
            "SELECT ?2 UNION ALL SELECT g + ?4 FROM t WHERE g + ?4 <= ?3",
            "ORDER BY random()"
        ),
    }
}

/// The first `id:length:bytes` item of [`Store::packets`]' value: (id, its bytes, the rest).
/// None when it is not framed so.
fn split_packet(text: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let number = |text: &[u8]| -> Option<(u64, usize)> {
        let end = text.iter().position(|&b| b == b':')?;
        let value = std::str::from_utf8(&text[..end]).ok()?.parse().ok()?;
        Some((value, end + 1))
    };
    let (id, first) = number(text)?;
    let (length, second) = number(&text[first..])?;
    let start = first + second;
    let end = start.checked_add(usize::try_from(length).ok()?)?;
    Some((id, text.get(start..end)?, &text[end..]))
}

/// The rows of [`rows_sql`]'s text, in order; rows without a hash yet are left out.
fn parse_rows(text: &str) -> Vec<Row> {
    text.split(',')
        .filter_map(|item| {
            let mut fields = item.split(':');
            let id = fields.next()?.parse().ok()?;
            let global_time = fields.next()?.parse().ok()?;
            let hash = hash_from(&hex::decode(fields.next()?).ok()?)?;
            let size = fields.next()?.parse().ok()?;
            Some(Row {
                id,
                global_time,
                hash,
                size,
            })
        })
        .collect()
}

/// Whether reading the global times `first, first + modulo, … ≤ high` one index seek each is
/// cheaper than scanning the index from `first` until `limit` of them are found. A seek costs
/// about as much as passing over 20 index entries (measured on SQLite 3.4x); a scan passes over
/// about `modulo` entries per row found when global times are dense.
fn enumerate_residues(first: u64, high: u64, modulo: u64, limit: usize) -> bool {
    if modulo < 2 {
        return false;
    }
    let seeks = (high - first) / modulo + 1;
    let scanned = (high - first + 1).min((limit as u64).saturating_mul(modulo));
    seeks.saturating_mul(20) < scanned
}

enum Placed {
    Store,
    Not(Outcome),
}

/// Places a numbered message against what is stored of its member and meta; on a conflict it
/// wins, removes the loser and everything numbered after it.
async fn place(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    m: &NewMessage,
    sequence: u32,
) -> Result<Placed, StoreError> {
    use dispersy_core::missing::{Numbered, Verdict};
    let member = m.member.0.to_vec();
    let at =
        |row: Option<sqlx::sqlite::SqliteRow>| -> Result<Option<(u32, u64, Vec<u8>)>, StoreError> {
            let Some(row) = row else { return Ok(None) };
            let sequence: i64 = row.try_get(0)?;
            let global_time: i64 = row.try_get(1)?;
            let packet: Vec<u8> = row.try_get(2)?;
            Ok(Some((
                u32::try_from(sequence).unwrap_or(0),
                u64::try_from(global_time).unwrap_or(0),
                packet,
            )))
        };
    let last = at(sqlx::query(
        "SELECT sequence, global_time, packet FROM sync
         WHERE community = ?1 AND meta = ?2 AND member = ?3 AND sequence IS NOT NULL
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(m.community)
    .bind(i64::from(m.meta))
    .bind(&member)
    .fetch_optional(&mut **tx)
    .await?)?;
    let same = match &last {
        Some((highest, _, _)) if sequence <= *highest => at(sqlx::query(
            "SELECT sequence, global_time, packet FROM sync
             WHERE community = ?1 AND meta = ?2 AND member = ?3 AND sequence = ?4",
        )
        .bind(m.community)
        .bind(i64::from(m.meta))
        .bind(&member)
        .bind(i64::from(sequence))
        .fetch_optional(&mut **tx)
        .await?)?,
        _ => None,
    };
    fn numbered(n: &(u32, u64, Vec<u8>)) -> Numbered<'_> {
        Numbered {
            sequence: n.0,
            global_time: n.1,
            packet: &n.2,
        }
    }
    let verdict = dispersy_core::missing::check(
        sequence,
        m.global_time,
        &m.packet,
        last.as_ref().map(numbered),
        same.as_ref().map(numbered),
    );
    Ok(match verdict {
        Verdict::Store => Placed::Store,
        Verdict::Duplicate => Placed::Not(Outcome::Duplicate),
        Verdict::Stale => Placed::Not(Outcome::Stale),
        Verdict::Gap { low, high } => Placed::Not(Outcome::Gap { low, high }),
        Verdict::Keep => Placed::Not(Outcome::Conflict(
            same.map(|(_, _, packet)| packet).unwrap_or_default(),
        )),
        Verdict::Replace => {
            sqlx::query(
                "DELETE FROM sync WHERE community = ?1 AND meta = ?2 AND member = ?3
                 AND sequence >= ?4",
            )
            .bind(m.community)
            .bind(i64::from(m.meta))
            .bind(&member)
            .bind(i64::from(sequence))
            .execute(&mut **tx)
            .await?;
            Placed::Store
        }
    })
}

/// A batch of messages for the store task; `ack` gets what became of each.
#[derive(Debug)]
pub struct Insert {
    /// The messages.
    pub messages: Vec<NewMessage>,
    /// Answered after the transaction committed.
    pub ack: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

/// A sender of inserts to the store task.
pub type InsertSender = mpsc::Sender<Insert>;

/// The store task: commits every waiting insert (up to `batch` messages) in one transaction.
pub async fn run(
    store: Store,
    mut inserts: mpsc::Receiver<Insert>,
    batch: usize,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            insert = inserts.recv() => match insert {
                Some(insert) => insert,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let mut count = first.messages.len();
        let mut pending = vec![first];
        while count < batch {
            match inserts.try_recv() {
                Ok(insert) => {
                    count += insert.messages.len();
                    pending.push(insert);
                }
                Err(_) => break,
            }
        }
        let mut all: Vec<NewMessage> = Vec::with_capacity(count);
        let mut acks = Vec::with_capacity(pending.len());
        for insert in pending {
            acks.push((insert.messages.len(), insert.ack));
            all.extend(insert.messages);
        }
        let result = store.insert(&all).await.map_err(|e| e.to_string());
        if let Err(error) = &result {
            tracing::error!(%error, messages = all.len(), "storing messages failed");
        }
        // Each insert gets its own outcomes, in order (moved, not copied: a conflict's carries
        // a packet).
        let (mut outcomes, failure) = match result {
            Ok(outcomes) => (outcomes.into_iter(), None),
            Err(error) => (Vec::new().into_iter(), Some(error)),
        };
        for (n, ack) in acks {
            let answer = match &failure {
                None => Ok(outcomes.by_ref().take(n).collect()),
                Some(error) => Err(error.clone()),
            };
            // The waiting plugin thread may be gone (shutdown); nothing to do then.
            let _ = ack.send(answer);
        }
    }
    store.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispersy_core::identity::KeyPair;
    use dispersy_core::meta::{Authentication, Destination, MetaMessage, Resolution};
    use dispersy_core::wire::Conversion;

    fn definition() -> Definition {
        let master = KeyPair::from_secret(&[3u8; 32]).unwrap();
        Definition {
            name: "test".into(),
            version: "1".into(),
            master: master.public().clone(),
            conversions: vec![Conversion::version(1).unwrap()],
            metas: vec![MetaMessage {
                id: 7,
                name: "post".into(),
                authentication: Authentication::Member,
                resolution: Resolution::Public,
                distribution: Distribution::FullSync {
                    sequence_numbers: true,
                    order: SyncOrder::Descending,
                    pruning: None,
                },
                destination: Destination::Community { node_count: 5 },
                priority: 128,
                batch_window: Duration::ZERO,
            }],
        }
    }

    #[tokio::test]
    async fn messages_are_stored_once_and_resume_state_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        assert_eq!(store.ensure_community(&definition()).await.unwrap(), id);
        let me = KeyPair::from_secret(&[4u8; 32]).unwrap();
        store.remember_member(me.public()).await.unwrap();
        let message = |gt: u64, seq: u32| NewMessage {
            community: id,
            member: me.member_id(),
            global_time: gt,
            meta: 7,
            sequence: Some(seq),
            priority: 128,
            history: None,
            co_signer: None,
            packet: vec![gt as u8; 10],
            hash: PacketHash::of(&[gt as u8; 10]),
        };
        let outcomes = store
            .insert(&[message(5, 1), message(9, 2), message(5, 1)])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            vec![Outcome::Stored, Outcome::Stored, Outcome::Duplicate]
        );
        // Two versions of the message at global time 9: the binary-higher one wins, in any order.
        let mut lower = message(9, 2);
        lower.packet = vec![1; 10];
        lower.hash = PacketHash::of(&lower.packet);
        let mut higher = message(9, 2);
        higher.packet = vec![200; 10];
        higher.hash = PacketHash::of(&higher.packet);
        assert_eq!(
            store.insert(&[higher.clone()]).await.unwrap(),
            vec![Outcome::Stored]
        );
        assert_eq!(
            store.insert(&[lower.clone()]).await.unwrap(),
            vec![Outcome::Conflict(higher.packet.clone())]
        );
        let kept = store.messages(id, 0, 10).await.unwrap();
        assert_eq!(kept[1].packet, vec![200; 10]);
        let resume = store.resume(id, me.member_id(), &[7]).await.unwrap();
        assert_eq!(resume.global_time, 9);
        assert_eq!(resume.sequences, vec![(7, 2)]);
        assert_eq!(resume.stored, 2);
        let other = store.resume(id, me.member_id(), &[8]).await.unwrap();
        assert_eq!(other.stored, 0, "only the metas named count");
        let stored = store.messages(id, 0, 10).await.unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1].packet, vec![200u8; 10]);
        assert_eq!(store.count(id).await.unwrap(), 2);
        store.close().await;

        // Reopening runs the migrations again without harm and finds the data.
        let store = Store::open(&dir.path().join("db")).await.unwrap();
        assert_eq!(store.count(id).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn sequence_numbers_are_placed_and_served() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let member = MemberId([5; 20]);
        let message = |gt: u64, seq: u32, byte: u8| {
            let packet = vec![byte; 300];
            NewMessage {
                community: id,
                member,
                global_time: gt,
                meta: 7,
                sequence: Some(seq),
                priority: 128,
                history: None,
                co_signer: None,
                hash: PacketHash::of(&packet),
                packet,
            }
        };
        use Outcome::{Duplicate, Gap, Stale, Stored};
        let outcomes = store
            .insert(&[
                message(10, 1, 1),
                message(20, 4, 4),
                message(12, 2, 2),
                message(11, 3, 3),
            ])
            .await
            .unwrap();
        // 4 before 2 and 3 (a gap); 3 newer in number but older in time than 2 (stale).
        assert_eq!(
            outcomes,
            vec![Stored, Gap { low: 2, high: 3 }, Stored, Stale]
        );
        let outcomes = store
            .insert(&[message(13, 3, 3), message(20, 4, 4), message(13, 3, 3)])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![Stored, Stored, Duplicate]);
        // An older claim on number 2 wins: 2, 3 and 4 of the loser go.
        let outcomes = store.insert(&[message(8, 2, 9)]).await.unwrap();
        assert_eq!(outcomes, vec![Stored]);
        let kept: Vec<(u32, u64)> = store
            .messages(id, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| (m.sequence.unwrap(), m.global_time))
            .collect();
        assert_eq!(kept, vec![(1, 10), (2, 8)]);
        // A newer claim on 2 loses, and learns ours.
        let outcomes = store.insert(&[message(30, 2, 7)]).await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Conflict(vec![9; 300])]);
        // Answers: in sequence order, within the byte budget (the crossing packet included).
        let lookup = |low, high| Lookup::Sequences {
            member,
            meta: 7,
            low,
            high,
        };
        let packets = store.lookup(id, &lookup(1, 5), 10_000).await.unwrap();
        assert_eq!(packets, vec![vec![1; 300], vec![9; 300]]);
        let packets = store.lookup(id, &lookup(1, 5), 100).await.unwrap();
        assert_eq!(packets, vec![vec![1; 300]]);
        let times = Lookup::GlobalTimes {
            member,
            global_times: vec![8, 99],
        };
        assert_eq!(
            store.lookup(id, &times, 10_000).await.unwrap(),
            vec![vec![9; 300]]
        );
        let last = Lookup::Last {
            member,
            meta: 7,
            count: 1,
        };
        assert_eq!(
            store.lookup(id, &last, 10_000).await.unwrap(),
            vec![vec![1; 300]]
        );
    }

    #[tokio::test]
    async fn last_sync_of_double_member_messages_keeps_the_newest_per_pair() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let (a, b, c) = (MemberId([1; 20]), MemberId([2; 20]), MemberId([3; 20]));
        let message = |first: MemberId, second: MemberId, gt: u64| NewMessage {
            community: id,
            member: first,
            global_time: gt,
            meta: 9,
            sequence: None,
            priority: 128,
            history: Some(1),
            co_signer: Some(second),
            packet: vec![gt as u8; 4],
            hash: PacketHash::of(&[gt as u8; 4]),
        };
        use Outcome::{Duplicate, Stored};
        let outcomes = store
            .insert(&[
                message(a, b, 5),
                // The same pair, the other signing first: replaces the first.
                message(b, a, 7),
                // Another pair with a: kept beside it.
                message(a, c, 6),
                // Older than the pair's newest: not kept.
                message(a, b, 4),
            ])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![Stored, Stored, Stored, Duplicate]);
        let mut kept: Vec<u64> = store
            .messages(id, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.global_time)
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![6, 7]);
        let pairs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM double_signed_sync")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(pairs, 2, "rows of removed messages go with them");
    }

    /// A plain message of meta 7 at `global_time`, by a member of its own.
    fn post(community: i64, global_time: u64, packet: Vec<u8>) -> NewMessage {
        NewMessage {
            community,
            member: MemberId([global_time as u8; 20]),
            global_time,
            meta: 7,
            sequence: None,
            priority: 128,
            history: None,
            co_signer: None,
            hash: PacketHash::of(&packet),
            packet,
        }
    }

    #[tokio::test]
    async fn packets_come_back_whole_and_in_the_order_asked() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        // Binary packets with NUL bytes, colons and digits, of many lengths.
        let packet = |gt: u64| -> Vec<u8> {
            (0..gt * 37 % 300)
                .map(|i| [0u8, b':', b'7', 0xff][(i % 4) as usize] ^ (gt as u8))
                .collect()
        };
        let batch: Vec<NewMessage> = (1..=60u64).map(|gt| post(id, gt, packet(gt))).collect();
        store.insert(&batch).await.unwrap();
        let range = Range {
            low: 1,
            high: 60,
            modulo: 1,
            offset: 0,
        };
        let rows = store
            .sync_rows(id, range, 100, &[(7, SyncOrder::Descending, 0)])
            .await
            .unwrap();
        assert_eq!(rows.len(), 60);
        let mut ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        ids.insert(10, 999_999); // not stored: left out
        let packets = store.packets(&ids).await.unwrap();
        let expected: Vec<Vec<u8>> = rows.iter().map(|r| packet(r.global_time)).collect();
        assert_eq!(packets, expected);
        assert!(store.packets(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn range_rows_are_the_same_by_scan_and_by_seeks() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        // Global times 1..=3000 but the multiples of 7.
        let batch: Vec<NewMessage> = (1..=3000u64)
            .filter(|gt| gt % 7 != 0)
            .map(|gt| NewMessage {
                community: id,
                member: MemberId([(gt % 50) as u8; 20]),
                global_time: gt,
                meta: 7,
                sequence: None,
                priority: 128,
                history: None,
                co_signer: None,
                packet: gt.to_be_bytes().to_vec(),
                hash: PacketHash::of(&gt.to_be_bytes()),
            })
            .collect();
        store.insert(&batch).await.unwrap();
        let times = |rows: Vec<Row>| rows.iter().map(|r| r.global_time).collect::<Vec<_>>();
        for (modulo, offset, limit) in [(100u32, 7u64, 10usize), (100, 42, 40), (2, 1, 25)] {
            let range = Range {
                low: 5,
                high: 2900,
                modulo,
                offset,
            };
            let expected: Vec<u64> = (5..=2900u64)
                .filter(|gt| gt % 7 != 0 && gt % u64::from(modulo) == offset)
                .collect();
            for (order, want) in [
                (
                    SyncOrder::Ascending,
                    expected.iter().copied().take(limit).collect(),
                ),
                (
                    SyncOrder::Descending,
                    expected
                        .iter()
                        .rev()
                        .copied()
                        .take(limit)
                        .collect::<Vec<_>>(),
                ),
            ] {
                let rows = store
                    .sync_rows(id, range, limit, &[(7, order, 0)])
                    .await
                    .unwrap();
                assert_eq!(
                    times(rows),
                    want,
                    "modulo {modulo} offset {offset} {order:?}"
                );
            }
            let mut random = times(
                store
                    .sync_rows(id, range, limit, &[(7, SyncOrder::Random, 0)])
                    .await
                    .unwrap(),
            );
            random.sort_unstable();
            assert_eq!(random.len(), limit.min(expected.len()));
            assert!(random.iter().all(|gt| expected.contains(gt)));
        }
        // Which way is taken: seeks for a sparse class, a scan for a dense one.
        assert!(enumerate_residues(5, 2900, 100, 10));
        assert!(!enumerate_residues(5, 2900, 2, 25));
        assert!(!enumerate_residues(5, 2900, 1, 25));
    }

    #[tokio::test]
    async fn one_batch_resolves_repeats_and_versions_as_one_by_one_inserts() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let message = |member: u8, gt: u64, byte: u8, history: Option<u16>| NewMessage {
            community: id,
            member: MemberId([member; 20]),
            global_time: gt,
            meta: if history.is_some() { 9 } else { 7 },
            sequence: None,
            priority: 128,
            history,
            co_signer: None,
            packet: vec![byte; 6],
            hash: PacketHash::of(&[byte; 6]),
        };
        let batch = [
            message(1, 1, 10, None),
            message(1, 1, 10, None), // the same bytes again
            message(1, 1, 20, None), // a higher version replaces it
            message(1, 1, 10, None), // the lower one again
            message(1, 2, 30, None),
            message(1, 2, 5, None),    // a lower version of global time 2
            message(2, 3, 1, Some(1)), // last-sync in between
            message(2, 4, 1, Some(1)), // pushes global time 3 out
            message(2, 2, 1, Some(1)), // older than the one kept
            message(1, 2, 30, None),
            message(1, 5, 1, None),
        ];
        let stored: Vec<bool> = store
            .insert(&batch)
            .await
            .unwrap()
            .into_iter()
            .map(|outcome| outcome == Outcome::Stored)
            .collect();
        assert_eq!(
            stored,
            vec![
                true, false, true, false, true, false, true, true, false, false, true
            ]
        );
        let kept: Vec<(u64, Vec<u8>)> = store
            .messages(id, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.global_time, m.packet))
            .collect();
        assert_eq!(
            kept,
            vec![
                (1, vec![20; 6]),
                (2, vec![30; 6]),
                (4, vec![1; 6]),
                (5, vec![1; 6])
            ]
        );
        // More rows than one statement takes: every one is new, then none is.
        let many: Vec<NewMessage> = (1..=600)
            .map(|gt| message(3, gt, (gt % 200) as u8, None))
            .collect();
        let outcomes = store.insert(&many).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == Outcome::Stored));
        let outcomes = store.insert(&many).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == Outcome::Duplicate));
        assert_eq!(store.count(id).await.unwrap(), 604);
    }

    #[tokio::test]
    async fn last_sync_keeps_the_newest_per_member() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let member = MemberId([7; 20]);
        let message = |gt: u64| NewMessage {
            community: id,
            member,
            global_time: gt,
            meta: 9,
            sequence: None,
            priority: 128,
            history: Some(2),
            co_signer: None,
            packet: vec![gt as u8; 4],
            hash: PacketHash::of(&[gt as u8; 4]),
        };
        let flags = store
            .insert(&[message(5), message(9), message(7), message(3)])
            .await
            .unwrap();
        // 3 is older than the two kept (7 and 9): not stored.
        use Outcome::{Duplicate, Stored};
        assert_eq!(flags, vec![Stored, Stored, Stored, Duplicate]);
        let kept: Vec<u64> = store
            .messages(id, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.global_time)
            .collect();
        assert_eq!(kept, vec![9, 7]);
    }

    #[tokio::test]
    async fn the_store_task_batches_and_acknowledges() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(store.clone(), rx, 100, shutdown.clone()));
        let mut acks = Vec::new();
        for gt in 1..=5u64 {
            let (ack, done) = oneshot::channel();
            let messages = vec![post(id, gt, vec![1, 2, 3])];
            tx.send(Insert { messages, ack }).await.unwrap();
            acks.push(done);
        }
        for done in acks {
            assert_eq!(done.await.unwrap().unwrap(), vec![Outcome::Stored]);
        }
        assert_eq!(store.count(id).await.unwrap(), 5);
        shutdown.cancel();
        task.await.unwrap();
    }
}
