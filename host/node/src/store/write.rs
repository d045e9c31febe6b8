//! Writes: the insert transaction (plain runs upserted many rows per statement, numbered,
//! last-sync and double-signed messages one by one), the placement rules for sequence numbers,
//! pairs of signers, and global-time pruning.

use std::collections::HashMap;

use dispersy_core::identity::MemberId;
use sqlx::Row as _;

use super::{NewMessage, Outcome, Store, StoreError, hash_bytes, to_i64};

impl Store {
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
    ///
    /// A failed insert stores nothing and leaves the store usable: its connection is closed
    /// instead of going back to the pool. A full disk fails the COMMIT after SQLite has rolled
    /// the transaction back by itself; sqlx's ROLLBACK on drop then fails too, and the
    /// connection would stay marked as inside a transaction, refusing every later one
    /// ("begin_with at non-zero transaction depth") even once space returns. The next insert
    /// gets a fresh connection (`tests/disk_full.rs`).
    pub async fn insert(&self, messages: &[NewMessage]) -> Result<Vec<Outcome>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let result = insert_in(&mut connection, messages).await;
        if result.is_err() {
            connection.close_on_drop();
        }
        result
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
}

/// [`Store::insert`]'s transaction, on `connection`.
async fn insert_in(
    connection: &mut sqlx::SqliteConnection,
    messages: &[NewMessage],
) -> Result<Vec<Outcome>, StoreError> {
    use sqlx::Connection as _;
    // IMMEDIATE: the transaction writes, and reads before it writes (`insert_rows`, `place`).
    let mut tx = connection.begin_with("BEGIN IMMEDIATE").await?;

    let mut outcomes = Vec::with_capacity(messages.len());
    let mut rest = messages;
    while !rest.is_empty() {
        let plain = rest
            .iter()
            .take(INSERT_ROWS)
            .take_while(|m| m.sequence.is_none() && m.history.is_none() && m.co_signer.is_none())
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

impl Store {
    /// Removes the messages of `community` that a destroy-community does not keep
    /// (`dispersy_core::node::Event::Destroyed`), in one transaction: with `keep` (hard), every
    /// one but those named by (first author, global time); without (soft), those above global
    /// time `above`. Returns how many; removing again removes nothing more.
    pub async fn destroy(
        &self,
        community: i64,
        keep: Option<&[(MemberId, u64)]>,
        above: u64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query("SELECT id, member, global_time FROM sync WHERE community = ?1")
            .bind(community)
            .fetch_all(&mut *tx)
            .await?;
        let mut doomed: Vec<i64> = Vec::new();
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let member: Vec<u8> = row.try_get(1)?;
            let global_time = u64::try_from(row.try_get::<i64, _>(2)?).unwrap_or(0);
            let kept = match keep {
                Some(keep) => keep
                    .iter()
                    .any(|(m, t)| m.0.as_slice() == member.as_slice() && *t == global_time),
                None => global_time <= above,
            };
            if !kept {
                doomed.push(id);
            }
        }
        for chunk in doomed.chunks(DELETE_ROWS) {
            let list = vec!["?"; chunk.len()].join(",");
            for table in [
                "DELETE FROM double_signed_sync WHERE sync IN",
                "DELETE FROM sync WHERE id IN",
            ] {
                // Placeholders only: the ids are bound.
                let sql = format!("{table} ({list})");
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(*id);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(doomed.len() as u64)
    }
}

/// Rows deleted by one statement of [`Store::destroy`].
const DELETE_ROWS: usize = 500;

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
                let (first, second) = dispersy_core::store::pair(m.member, co_signer);
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

/// Records the pair of signers of a stored double-member message.
async fn pair(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    m: &NewMessage,
    co_signer: MemberId,
) -> Result<(), StoreError> {
    let (first, second) = dispersy_core::store::pair(m.member, co_signer);
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

#[cfg(test)]
mod tests {
    use dispersy_core::bloom::PacketHash;
    use dispersy_core::identity::{KeyPair, MemberId};
    use dispersy_core::missing::Lookup;

    use super::super::testing::definition;
    use super::super::*;

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
}
