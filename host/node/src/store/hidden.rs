//! Hidden messages: the two reasons a stored message is hidden and the rows whose visibility
//! they flip.
//!
//! A stored message is hidden (not offered by sync, not counted, not read by plugins, not
//! restored) while one of two independent reasons holds ([`Reason`]): *undone* by a valid undo
//! (bit 1 of `sync.undone`, `undone_by` naming the undo's row; migration 0007) or *denied* by
//! the timeline (its id in the narrow table `denied`; migration 0008, which moved bit 2 of
//! `sync.undone` there). Every reader filters `undone = 0` and the denied probe, and the API
//! listing shows both as bits (`undone | 2 if denied`). An operation sets or clears one reason
//! and never looks at the other, so a revoke never redoes a message its author undid, and a redo
//! never shows a message the timeline denies. An operation reports the rows whose *visibility*
//! flipped (no reason before, one after, or back): those are the ones a plugin is told of. A row
//! that gains a second reason, or loses one of two, flips nothing (counted as quiet).
//!
//! Two shapes:
//! - [`Store::mark`]: one row by its key (community, member, global time); used by undo.
//! - [`Store::deny_range`]: the rows of one meta by one author (or by every author but some, or
//!   by a pair of signers of double-member messages, through `double_signed_sync`) in
//!   a global-time range, in one transaction of three statements whatever the range's size,
//!   durable on return; the flipped ids wait in the `flip` journal and [`Store::flipped`] hands
//!   them out afterwards in pages (the plugin may be told after the flags hold).
//!   [`Store::mark_range`] is both in turn.
//!
//! The readers: a read of a community that may have denied rows adds `sync.id NOT IN (SELECT id
//! FROM denied)` to its `undone = 0` ([`Store::visible`]): one rowid probe per candidate row
//! (every index carries the row id: the responder's reads stay on `sync_cover`). The store keeps
//! the set of such communities in memory, loaded at open from `denied_count` (rows per
//! community) and added to before a row is denied; any other community's reads run the SQL they
//! ran before 0008. A trigger removes a deleted row's denial (and its count), so a reused id
//! starts allowed.
//!
//! Why a side table (issue 11: a revoke over 1,000,000 stored messages re-evaluated in ≤ 1 s).
//! Measured with `benches/reevaluation.rs` (release, 2 shared cores, 1M Linear messages by 1,000
//! authors, a revoke of author L reaching back to global time 100,000, then a new grant):
//! - 0007's per-row bit (one UPDATE of `sync.undone` per page of ids): 180,831 rows flipped in
//!   2.3–3.3 s, 809,769 in 3.4–3.6 s; one plain UPDATE of the same rows alone 1.1–2.3 s: every
//!   page of `sync` and of `sync_cover` (which holds `undone`) is rewritten.
//! - This design (ids appended to `denied` and to `flip`): flags durable in 0.06–0.07 s (revoke)
//!   and 0.12 s (grant) for 180,831 rows, 0.34 s and 0.48 s for 809,769 rows; the ids paged for
//!   the plugin by 0.11–0.16 s and 0.50–0.64 s (two runs, 2026-12-02). A first version that
//!   took the undone rows with `undone != 0` scanned all of the meta's `sync_cover` (not a
//!   range) twice: 0.79 s for the grant; `undone > 0` is a range.
//! - Spans (`denied_span(community, meta, member, low, high)`, O(spans) writes) were not
//!   chosen: the responder reads `sync_cover`, which has no member, so excluding a span costs a
//!   table visit per row (or `member` in the covering index) for every read, and every-author
//!   spans need exceptions; the row-id probe needs neither.
//! - Readers (Python's sqlite3 3.40 over the same schema, 1M rows, the responder's range read,
//!   400 reads each): 1,000 rows 0.649 ms bare, 0.663 ms with a probe guarded in SQL by
//!   `denied_count`, 0.673 ms with the probe of an empty `denied`; 30 rows 0.025–0.029 ms
//!   either way. The `scale` bench (1M rows, medians fresh/pivot/modulo, shared machine, one
//!   run each): without any probe 1.30/2.21/7.09 ms at 256 KiB, 0.09/0.72/0.25 ms at 5 KiB;
//!   with the SQL-guarded probe 1.21–1.42/2.37–2.58/5.94–7.24 and 0.29/0.85–1.04/0.41–0.56;
//!   with the guard in memory (this version: the very SQL of before for a community with
//!   nothing denied) 1.52/2.29/6.05 and 0.28/0.93/0.49; main before 0008 (fc8db1e), rerun
//!   afterwards: 1.74/2.57/6.44 and 0.38/1.02/0.49. So the 0.09 ms run was an outlier, and
//!   reads of a community with nothing denied are not measurably slower.

use dispersy_core::identity::MemberId;
pub use dispersy_core::timeline::{Authors, Signers};
use sqlx::Row as _;

use super::{Store, StoreError, to_i64};

/// One reason a stored message is hidden: one bit of `sync.undone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Undone by a valid undo-own or undo-other (bit 1; `undone_by` names the undo's row).
    Undo,
    /// Denied: the permission timeline no longer lets its author have created it (bit 2).
    Denied,
}

impl Reason {
    /// Its bit in `sync.undone`.
    pub fn bit(self) -> i64 {
        match self {
            Reason::Undo => 1,
            Reason::Denied => 2,
        }
    }
}

/// A change of one reason bit of one row ([`Store::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Set the undo bit, naming the undo (its `sync.id`). On a row undone already, only the
    /// undo it is undone by changes (no flip).
    Undo {
        /// The undo's row id.
        by: i64,
    },
    /// Clear the undo bit (no valid undo points to the row any more); `undone_by` is cleared.
    Redo,
    /// Set the denied bit.
    Deny,
    /// Clear the denied bit.
    Allow,
}

/// The rows of some authors and one meta in a global-time range, both ends inclusive
/// ([`Store::mark_range`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Community row id.
    pub community: i64,
    /// Meta-message type.
    pub meta: u32,
    /// Whose rows: by their (first) author, or by both signers ([`Authors::Pair`]).
    pub authors: Authors,
    /// Lowest global time.
    pub low: u64,
    /// Highest global time.
    pub high: u64,
}

/// What one [`Store::mark_range`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marked {
    /// Rows whose visibility flipped (all of them were handed to the callback).
    pub flipped: u64,
    /// Rows whose bit changed without a flip (they keep or had another reason).
    pub quiet: u64,
}

/// A query of this module.
type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// The value bound to a range's authors: one member id, or the hex ids of the excepted ones
/// as a JSON list.
enum Bound {
    Blob(Vec<u8>),
    Text(String),
}

/// The upper-case hex ids of `members`, as SQLite's `hex(member)` gives them.
fn hex_ids(members: &[MemberId]) -> Vec<String> {
    members.iter().map(|m| m.to_hex().to_uppercase()).collect()
}

/// The JSON object an [`Authors::Pair`] binds: `a` and `b` the two sides' hex ids, `an` and
/// `bn` 1 where the side is every member but those, else 0.
fn pair_json(a: &Signers, b: &Signers) -> Result<String, StoreError> {
    let side = |signers: &Signers| match signers {
        Signers::One(member) => (hex_ids(std::slice::from_ref(member)), 0),
        Signers::AllBut(members) => (hex_ids(members), 1),
    };
    let ((a, an), (b, bn)) = (side(a), side(b));
    let object = serde_json::json!({ "a": a, "an": an, "b": b, "bn": bn });
    Ok(serde_json::to_string(&object).map_err(|e| sqlx::Error::Protocol(e.to_string()))?)
}

/// The rows one [`Store::deny_range`] flipped, durable, waiting in the `flip` journal until
/// [`Store::flipped`] hands them out (and forgets them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flips {
    /// The counts.
    pub marked: Marked,
    /// Its batch in the journal.
    batch: i64,
}

/// The SQL expression of a `sync` row's reason bits: bit 1 from `undone`, bit 2 from `denied`.
pub(super) const BITS: &str =
    "(undone | CASE WHEN id IN (SELECT id FROM denied) THEN 2 ELSE 0 END)";

impl Store {
    /// `sql`, a read of `community`'s visible rows that filters `undone = 0`, with the probe
    /// of `denied` added to that filter when the community may have denied rows; as it is
    /// otherwise (no cost for a community with none).
    pub(super) fn visible(&self, community: i64, sql: &'static str) -> sqlx::AssertSqlSafe<String> {
        let denying = self
            .denying
            .lock()
            .map_or(true, |set| set.contains(&community));
        sqlx::AssertSqlSafe(if denying {
            sql.replace(
                "undone = 0",
                "undone = 0 AND sync.id NOT IN (SELECT id FROM denied)",
            )
        } else {
            sql.to_owned()
        })
    }

    /// Notes that `community` may have denied rows from now on (before any is written).
    fn denying(&self, community: i64) {
        if let Ok(mut set) = self.denying.lock() {
            set.insert(community);
        }
    }

    /// Applies `mark` to the row of `member` at `global_time` in `community`; returns its row
    /// id if its visibility flipped (hidden for [`Mark::Undo`] and [`Mark::Deny`], visible
    /// again for the others), `None` when it did not or there is no such row.
    pub async fn mark(
        &self,
        community: i64,
        member: MemberId,
        global_time: u64,
        mark: Mark,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, {BITS} FROM sync WHERE community = ?1 AND member = ?2 AND global_time = ?3"
        )))
        .bind(community)
        .bind(member.0.as_slice())
        .bind(to_i64(global_time))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.try_get(0)?;
        let before: i64 = row.try_get(1)?;
        let after = match mark {
            Mark::Undo { by } => {
                sqlx::query("UPDATE sync SET undone = ?2, undone_by = ?3 WHERE id = ?1")
                    .bind(id)
                    .bind(Reason::Undo.bit())
                    .bind(by)
                    .execute(&mut *tx)
                    .await?;
                before | Reason::Undo.bit()
            }
            Mark::Redo => {
                sqlx::query("UPDATE sync SET undone = 0, undone_by = NULL WHERE id = ?1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                before & !Reason::Undo.bit()
            }
            Mark::Deny => {
                self.denying(community);
                let added = sqlx::query("INSERT OR IGNORE INTO denied (id) VALUES (?1)")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                count_denied(&mut tx, community, added as i64).await?;
                before | Reason::Denied.bit()
            }
            Mark::Allow => {
                let removed = sqlx::query("DELETE FROM denied WHERE id = ?1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                count_denied(&mut tx, community, -(removed as i64)).await?;
                before & !Reason::Denied.bit()
            }
        };
        tx.commit().await?;
        Ok(((before == 0) != (after == 0)).then_some(id))
    }

    /// Sets (`denied`) or clears the denied bit of every row of `range`, then hands the ids of
    /// the rows whose visibility flipped to `on_page`, in pages of at most `page` ids (in row-id
    /// order), and returns the counts: [`Store::deny_range`] then [`Store::flipped`]. The flags
    /// are committed before the first page is handed out.
    pub async fn mark_range(
        &self,
        range: &Span,
        denied: bool,
        page: usize,
        on_page: impl FnMut(Vec<i64>),
    ) -> Result<Marked, StoreError> {
        let flips = self.deny_range(range, denied).await?;
        self.flipped(&flips, page, on_page).await?;
        Ok(flips.marked)
    }

    /// Sets (`denied`) or clears the denied bit of every row of `range`, in one transaction of
    /// three statements whatever the range's size, durable on return. The ids of the rows whose
    /// visibility flips (no undo, and not denied before for a deny; denied before, without an
    /// undo, for an allow) are copied into the `flip` journal under a new batch; the rows that
    /// keep an undo change quietly. The range is walked in `sync_member` (community, meta,
    /// member, global_time: one author's rows, or every author's of the meta), each row probed
    /// in `denied` by its id; the rows with an undo come from `sync_cover`'s hidden part (few).
    /// Hand the flips out with [`Store::flipped`] (a journal left behind is emptied at the next
    /// open).
    pub async fn deny_range(&self, range: &Span, denied: bool) -> Result<Flips, StoreError> {
        // ?1 community, ?2 meta, ?3 the author(s), ?4..?5 global times, ?6 the batch.
        let (authors, bound) = match &range.authors {
            Authors::One(member) => ("member = ?3", Bound::Blob(member.0.to_vec())),
            Authors::AllBut(members) => (
                "hex(member) NOT IN (SELECT value FROM json_each(?3))",
                Bound::Text(super::json_list(&hex_ids(members))?),
            ),
            // Both signers, in either order, through `double_signed_sync`; ?3 is one JSON
            // object: each side's ids and whether it is every member but those.
            Authors::Pair(a, b) => (
                "id IN (SELECT d.sync FROM double_signed_sync AS d WHERE
                     ((hex(d.member1) IN (SELECT value FROM json_each(?3, '$.a'))) != json_extract(?3, '$.an')
                      AND (hex(d.member2) IN (SELECT value FROM json_each(?3, '$.b'))) != json_extract(?3, '$.bn'))
                  OR ((hex(d.member2) IN (SELECT value FROM json_each(?3, '$.a'))) != json_extract(?3, '$.an')
                      AND (hex(d.member1) IN (SELECT value FROM json_each(?3, '$.b'))) != json_extract(?3, '$.bn')))",
                Bound::Text(pair_json(a, b)?),
            ),
        };
        // The range's rows with an undo (bit 1): they never flip.
        let undone_rows = format!(
            "SELECT id FROM sync INDEXED BY sync_cover
             WHERE community = ?1 AND meta = ?2 AND undone > 0
               AND global_time BETWEEN ?4 AND ?5 AND {authors}"
        );
        let was = if denied { "NOT IN" } else { "IN" };
        let flips_sql = format!(
            "INSERT INTO flip (batch, id)
             SELECT ?6, id FROM sync INDEXED BY sync_member
             WHERE community = ?1 AND meta = ?2 AND {authors} AND global_time BETWEEN ?4 AND ?5
               AND id {was} (SELECT id FROM denied) AND id NOT IN ({undone_rows})"
        );
        let (quiet_sql, apply_sql) = if denied {
            (
                format!("INSERT OR IGNORE INTO denied (id) {undone_rows}"),
                "INSERT INTO denied (id) SELECT id FROM flip WHERE batch = ?6",
            )
        } else {
            (
                format!("DELETE FROM denied WHERE id IN ({undone_rows})"),
                "DELETE FROM denied WHERE id IN (SELECT id FROM flip WHERE batch = ?6)",
            )
        };
        if denied {
            self.denying(range.community);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let batch: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(batch), 0) + 1 FROM flip")
            .fetch_one(&mut *tx)
            .await?;
        // Binds the first `count` of ?1..?6 (a statement takes as many as its highest).
        let bind = |sql: String, count: usize| -> Query<'static> {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(range.community)
                .bind(i64::from(range.meta));
            query = match &bound {
                Bound::Blob(bytes) => query.bind(bytes.clone()),
                Bound::Text(text) => query.bind(text.clone()),
            };
            query = query.bind(to_i64(range.low)).bind(to_i64(range.high));
            if count > 5 {
                query = query.bind(batch);
            }
            query
        };
        let flipped = bind(flips_sql, 6).execute(&mut *tx).await?.rows_affected();
        let quiet = bind(quiet_sql, 5).execute(&mut *tx).await?.rows_affected();
        bind(apply_sql.to_owned(), 6).execute(&mut *tx).await?;
        let changed = i64::try_from(flipped + quiet).unwrap_or(i64::MAX);
        count_denied(
            &mut tx,
            range.community,
            if denied { changed } else { -changed },
        )
        .await?;
        tx.commit().await?;
        Ok(Flips {
            marked: Marked { flipped, quiet },
            batch,
        })
    }

    /// Hands the ids `flips` names to `on_page` in pages of at most `page` (row-id order), then
    /// forgets them. One read per page, from the narrow journal.
    pub async fn flipped(
        &self,
        flips: &Flips,
        page: usize,
        mut on_page: impl FnMut(Vec<i64>),
    ) -> Result<(), StoreError> {
        let mut after = (flips.marked.flipped > 0).then_some(i64::MIN);
        while let Some(cursor) = after {
            let ids = self.flipped_page(flips, cursor, page).await?;
            after = ids.last().copied().filter(|_| ids.len() >= page.max(1));
            if !ids.is_empty() {
                on_page(ids);
            }
        }
        self.forget(flips).await
    }

    /// The ids `flips` names above `after`, at most `page` of them, in row-id order.
    pub async fn flipped_page(
        &self,
        flips: &Flips,
        after: i64,
        page: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let page = i64::try_from(page.max(1)).unwrap_or(i64::MAX);
        // A page's ids come back as one JSON list (one result row, not one per id: sqlx costs
        // per row).
        let list: String = sqlx::query_scalar(
            "SELECT json_group_array(id) FROM (
                 SELECT id FROM flip WHERE batch = ?1 AND id > ?2 ORDER BY id LIMIT ?3)",
        )
        .bind(flips.batch)
        .bind(after)
        .bind(page)
        .fetch_one(&self.pool)
        .await?;
        Ok(serde_json::from_str(&list)
            .map_err(|e| sqlx::Error::Protocol(format!("a page of ids: {e}")))?)
    }

    /// Forgets the journal of `flips` (once the plugin was told).
    pub async fn forget(&self, flips: &Flips) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM flip WHERE batch = ?1")
            .bind(flips.batch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored rows among `ids` (any state, hidden or not), in the order of `ids`; ids no
    /// longer stored are left out. For telling a plugin of the rows a mark flipped.
    pub async fn rows(&self, ids: &[i64]) -> Result<Vec<super::StoredMessage>, StoreError> {
        let list = super::json_list(ids)?;
        let rows = sqlx::query(
            "SELECT s.id, s.member, s.global_time, s.meta, s.sequence, s.packet,
                    s.undone | CASE WHEN s.id IN (SELECT id FROM denied) THEN 2 ELSE 0 END,
                    s.undone_by
             FROM json_each(?1) AS j CROSS JOIN sync AS s ON s.id = j.value
             ORDER BY j.key",
        )
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::read::stored_message).collect()
    }
}

/// Adds `delta` to the count of `community`'s denied rows (`denied_count`, which lets the
/// readers of a community without any skip the probe of `denied`).
async fn count_denied(
    tx: &mut sqlx::SqliteConnection,
    community: i64,
    delta: i64,
) -> Result<(), StoreError> {
    if delta != 0 {
        sqlx::query(
            "INSERT INTO denied_count (community, rows) VALUES (?1, ?2)
             ON CONFLICT (community) DO UPDATE SET rows = rows + excluded.rows",
        )
        .bind(community)
        .bind(delta)
        .execute(tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{definition, post};
    use super::super::*;
    use super::*;

    fn range(community: i64, member: MemberId, low: u64, high: u64) -> Span {
        Span {
            community,
            meta: 7,
            authors: Authors::One(member),
            low,
            high,
        }
    }

    /// Messages of meta 7 by one member at global times `times`.
    fn posts(community: i64, times: std::ops::RangeInclusive<u64>) -> Vec<NewMessage> {
        times
            .map(|gt| NewMessage {
                member: MemberId([1; 20]),
                ..post(community, gt, vec![gt as u8; 20])
            })
            .collect()
    }

    async fn undone(store: &Store, community: i64) -> Vec<(u64, i64)> {
        sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(format!(
            "SELECT global_time, {BITS} FROM sync WHERE community = ?1 ORDER BY global_time"
        )))
        .bind(community)
        .fetch_all(&store.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(gt, undone)| (gt as u64, undone))
        .collect()
    }

    #[tokio::test]
    async fn the_reason_bits_are_independent_and_only_flips_are_reported() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let rows = posts(id, 1..=10);
        let member = rows[0].member;
        store.insert(&rows).await.unwrap();
        // Row 4 undone by an undo (row id 99 stands for the undo).
        let flipped = store
            .mark(id, member, 4, Mark::Undo { by: 99 })
            .await
            .unwrap();
        assert!(flipped.is_some(), "undoing a visible row flips it");
        // Deny 3..=6 in pages of 2: rows 3, 5, 6 flip; row 4 gains a second reason quietly.
        let mut pages = Vec::new();
        let marked = store
            .mark_range(&range(id, member, 3, 6), true, 2, |p| pages.push(p))
            .await
            .unwrap();
        assert_eq!(
            marked,
            Marked {
                flipped: 3,
                quiet: 1
            }
        );
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        let flipped_rows = store.rows(&pages.concat()).await.unwrap();
        let mut times: Vec<u64> = flipped_rows.iter().map(|r| r.global_time).collect();
        times.sort_unstable();
        assert_eq!(times, [3, 5, 6]);
        assert!(flipped_rows.iter().all(|r| r.undone == 2));
        // Denying all: only the rows not hidden yet flip (1, 2, 7..=10).
        let again = store
            .mark_range(&range(id, member, 1, 10), true, 100, |_| {})
            .await
            .unwrap();
        assert_eq!(
            again,
            Marked {
                flipped: 6,
                quiet: 0
            }
        );
        let allowed = store
            .mark_range(&range(id, member, 1, 2), false, 100, |_| {})
            .await
            .unwrap();
        assert_eq!(allowed.flipped, 2);
        // Row 4 holds both reasons: clearing either one flips nothing.
        assert_eq!(store.mark(id, member, 4, Mark::Deny).await.unwrap(), None);
        assert_eq!(store.mark(id, member, 4, Mark::Redo).await.unwrap(), None);
        let state = undone(&store, id).await;
        assert_eq!(state[3], (4, 2), "still denied after the redo");
        // Setting the undo bit on a denied row flips nothing; clearing denial while undone
        // flips nothing either.
        assert_eq!(
            store
                .mark(id, member, 5, Mark::Undo { by: 98 })
                .await
                .unwrap(),
            None
        );
        let marked = store
            .mark_range(&range(id, member, 3, 10), false, 100, |_| {})
            .await
            .unwrap();
        assert_eq!(
            marked,
            Marked {
                flipped: 7,
                quiet: 1
            },
            "3, 4 and 6..=10 flip back (4 has only the denial left); 5 stays undone"
        );
        let state = undone(&store, id).await;
        assert_eq!(
            state,
            [
                (1, 0),
                (2, 0),
                (3, 0),
                (4, 0),
                (5, 1),
                (6, 0),
                (7, 0),
                (8, 0),
                (9, 0),
                (10, 0)
            ]
        );
        let undo_of_5 = store.rows(&[flipped.unwrap() + 1]).await.unwrap();
        assert_eq!(undo_of_5[0].undone_by, Some(98));
        // Redoing the last reason flips it visible.
        assert!(
            store
                .mark(id, member, 5, Mark::Redo)
                .await
                .unwrap()
                .is_some()
        );
        // A row that is not stored flips nothing.
        assert_eq!(store.mark(id, member, 77, Mark::Deny).await.unwrap(), None);
    }

    #[tokio::test]
    async fn every_author_but_some_is_marked_in_pages_over_the_meta_index() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let by = |member: u8| {
            (1..=5u64).map(move |gt| NewMessage {
                member: MemberId([member; 20]),
                ..post(id, gt, vec![member, gt as u8])
            })
        };
        let rows: Vec<NewMessage> = by(1).chain(by(2)).chain(by(3)).collect();
        store.insert(&rows).await.unwrap();
        let span = |low, high| Span {
            community: id,
            meta: 7,
            authors: Authors::AllBut(vec![MemberId([1; 20])]),
            low,
            high,
        };
        let mut pages = Vec::new();
        let marked = store
            .mark_range(&span(2, 4), true, 4, |p| pages.push(p.len()))
            .await
            .unwrap();
        assert_eq!(marked.flipped, 6, "members 2 and 3 at 2..=4");
        assert_eq!(pages, [4, 2]);
        let hidden: Vec<(u8, u64)> = store
            .messages(id, 0, 100)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.undone != 0)
            .map(|r| (r.member.0[0], r.global_time))
            .collect();
        assert_eq!(hidden.len(), 6);
        assert!(hidden.iter().all(|(m, t)| *m != 1 && (2..=4).contains(t)));
        let marked = store
            .mark_range(&span(0, u64::MAX), false, 100, |_| {})
            .await
            .unwrap();
        assert_eq!(marked.flipped, 6);
    }

    #[tokio::test]
    async fn a_pair_of_signers_marks_their_double_signed_rows_in_either_order() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let m = |b: u8| MemberId([b; 20]);
        // (first author, co-signer) at global times 1..=6; one single-signed row of 1 at 7.
        let pairs = [(1, 2), (2, 1), (1, 3), (3, 2), (1, 1), (2, 4)];
        let mut rows: Vec<NewMessage> = pairs
            .iter()
            .zip(1u64..)
            .map(|(&(a, b), gt)| NewMessage {
                member: m(a),
                co_signer: Some(m(b)),
                ..post(id, gt, vec![a, b, gt as u8])
            })
            .collect();
        rows.push(NewMessage {
            member: m(1),
            ..post(id, 7, vec![1, 7])
        });
        store.insert(&rows).await.unwrap();
        let hidden = |store: &Store| {
            let store = store.clone();
            async move {
                let rows = store.messages(id, 0, 100).await.unwrap();
                let mut times: Vec<u64> = rows
                    .iter()
                    .filter(|r| r.undone != 0)
                    .map(|r| r.global_time)
                    .collect();
                times.sort_unstable();
                times
            }
        };
        let span = |a: Signers, b: Signers| Span {
            community: id,
            meta: 7,
            authors: Authors::Pair(a, b),
            low: 0,
            high: u64::MAX,
        };
        // Members 1 and 2, in either order: rows 1 and 2.
        let one_two = span(Signers::One(m(1)), Signers::One(m(2)));
        let marked = store.mark_range(&one_two, true, 10, |_| {}).await.unwrap();
        assert_eq!(marked.flipped, 2);
        assert_eq!(hidden(&store).await, [1, 2]);
        // Member 1 with anyone but 2 and 3: row 5 (1 with itself) only, never the single one.
        let others = span(Signers::One(m(1)), Signers::AllBut(vec![m(2), m(3)]));
        store.mark_range(&others, true, 10, |_| {}).await.unwrap();
        assert_eq!(hidden(&store).await, [1, 2, 5]);
        // Anyone but 1 with anyone but 1: rows 4 (3, 2) and 6 (2, 4).
        let rest = span(Signers::AllBut(vec![m(1)]), Signers::AllBut(vec![m(1)]));
        store.mark_range(&rest, true, 1, |_| {}).await.unwrap();
        assert_eq!(hidden(&store).await, [1, 2, 4, 5, 6]);
        let marked = store.mark_range(&one_two, false, 10, |_| {}).await.unwrap();
        assert_eq!(marked.flipped, 2);
        assert_eq!(hidden(&store).await, [4, 5, 6]);
    }

    #[tokio::test]
    async fn hidden_rows_are_not_restored_nor_read_by_plugins() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let rows = posts(id, 1..=4);
        let member = rows[0].member;
        store.insert(&rows).await.unwrap();
        store
            .mark_range(&range(id, member, 2, 3), true, 10, |_| {})
            .await
            .unwrap();
        let seen: Vec<u64> = store
            .history(id, &HistoryQuery::all(0, 10))
            .await
            .unwrap()
            .iter()
            .map(|r| r.global_time)
            .collect();
        assert_eq!(seen, [1, 4]);
        let listed = store.messages(id, 0, 10).await.unwrap();
        let states: Vec<(u64, u8)> = listed.iter().map(|r| (r.global_time, r.undone)).collect();
        assert_eq!(states, [(1, 0), (2, 2), (3, 2), (4, 0)]);
    }
    /// The rows of `community` the responder offers, by global time (every reader of sync
    /// goes through the same filter).
    async fn offered(store: &Store, community: i64) -> Vec<u64> {
        use dispersy_core::meta::SyncOrder;
        use dispersy_core::sync::{Query, Range};
        let range = Range {
            low: 1,
            high: 100,
            modulo: 1,
            offset: 0,
        };
        let by_range: Vec<u64> = store
            .sync_rows(community, range, 100, &[(7, SyncOrder::Ascending, 0)])
            .await
            .unwrap()
            .iter()
            .map(|r| r.global_time)
            .collect();
        let (above, _) = store
            .sync_query(community, Query::Oldest { limit: 100 })
            .await
            .unwrap();
        let by_query: Vec<u64> = above.iter().map(|r| r.global_time).collect();
        assert_eq!(by_range, by_query, "both responder reads agree");
        by_range
    }

    async fn denied_count(store: &Store, community: i64) -> i64 {
        sqlx::query_scalar("SELECT COALESCE(SUM(rows), 0) FROM denied_count WHERE community = ?1")
            .bind(community)
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn denied_rows_are_not_offered_and_a_deleted_row_takes_its_denial_along() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let rows = posts(id, 1..=6);
        let member = rows[0].member;
        store.insert(&rows).await.unwrap();
        assert_eq!(offered(&store, id).await, [1, 2, 3, 4, 5, 6]);
        // Row 2 undone, rows 2..=4 denied (2 quietly), row 6 denied alone.
        store
            .mark(id, member, 2, Mark::Undo { by: 99 })
            .await
            .unwrap();
        let flips = store
            .deny_range(&range(id, member, 2, 4), true)
            .await
            .unwrap();
        assert_eq!(
            flips.marked,
            Marked {
                flipped: 2,
                quiet: 1
            }
        );
        assert!(
            store
                .mark(id, member, 6, Mark::Deny)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(denied_count(&store, id).await, 4);
        // Durable before the flips are handed out, and every reader honours it.
        assert_eq!(offered(&store, id).await, [1, 5]);
        let mut pages = Vec::new();
        store.flipped(&flips, 1, |p| pages.push(p)).await.unwrap();
        assert_eq!(pages.len(), 2, "rows 3 and 4, one per page");
        let mut again = Vec::new();
        store.flipped(&flips, 1, |p| again.push(p)).await.unwrap();
        assert!(again.is_empty(), "handed out once");
        // A deleted denied row leaves no denial behind.
        sqlx::query("DELETE FROM sync WHERE community = ?1 AND global_time = 6")
            .bind(id)
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(denied_count(&store, id).await, 3);
        // Allowing all: 3 and 4 flip back, 2 keeps its undo (quiet); no denial is left.
        let marked = store
            .mark_range(&range(id, member, 1, 10), false, 10, |_| {})
            .await
            .unwrap();
        assert_eq!(
            marked,
            Marked {
                flipped: 2,
                quiet: 1
            }
        );
        assert_eq!(denied_count(&store, id).await, 0);
        assert_eq!(offered(&store, id).await, [1, 3, 4, 5]);
    }
    #[tokio::test]
    async fn a_reopened_store_still_hides_the_denied_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = Store::open(&path).await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let rows = posts(id, 1..=4);
        let member = rows[0].member;
        store.insert(&rows).await.unwrap();
        store
            .mark_range(&range(id, member, 2, 3), true, 10, |_| {})
            .await
            .unwrap();
        store.close().await;
        let store = Store::open(&path).await.unwrap();
        assert_eq!(offered(&store, id).await, [1, 4]);
        store.close().await;
    }
}
