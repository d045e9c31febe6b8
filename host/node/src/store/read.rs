//! Reads for the node and the control API: where a community resumes, the packets a
//! missing-* request names, stored messages listed for the API, counts.

use dispersy_core::community::Resume;
use dispersy_core::identity::MemberId;
use dispersy_core::meta::builtin;
use dispersy_core::missing::Lookup;
use sqlx::Row as _;

use super::{Store, StoreError, StoredMessage, json_list, limit_i64};

impl Store {
    /// What the core needs to continue where it stopped: the highest stored global time, our
    /// own highest sequence number per meta, how many messages of the `syncable` metas
    /// (priority above 32) are stored and not undone, and the stored authorize, revoke,
    /// dynamic-settings, undo-own and undo-other packets (the permission timeline and the undo
    /// state are rebuilt from them).
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
        let stored: i64 = sqlx::query_scalar(self.visible(
            community,
            "SELECT COUNT(*) FROM json_each(?2) CROSS JOIN sync INDEXED BY sync_cover
             WHERE community = ?1 AND meta = json_each.value AND undone = 0",
        ))
        .bind(community)
        .bind(syncable)
        .fetch_one(&self.pool)
        .await?;
        let authority: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT packet FROM sync WHERE community = ?1 AND meta IN (?2, ?3, ?4, ?5, ?6, ?7)
             ORDER BY id",
        )
        .bind(community)
        .bind(i64::from(builtin::AUTHORIZE))
        .bind(i64::from(builtin::REVOKE))
        .bind(i64::from(builtin::DYNAMIC_SETTINGS))
        .bind(i64::from(builtin::UNDO_OWN))
        .bind(i64::from(builtin::UNDO_OTHER))
        .bind(i64::from(builtin::DESTROY_COMMUNITY))
        .fetch_all(&self.pool)
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
            authority,
        })
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

    /// Stored messages of `community` with a row id above `after`, oldest first, at most
    /// `limit`, hidden ones included (with their [`StoredMessage::undone`] reasons): the API's
    /// listing. Built-in messages (reserved types) are not among them.
    pub async fn messages(
        &self,
        community: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, member, global_time, meta, sequence, packet,
                    undone | CASE WHEN id IN (SELECT id FROM denied) THEN 2 ELSE 0 END, undone_by
             FROM sync
             WHERE community = ?1 AND id > ?2 AND meta < ?4 ORDER BY id LIMIT ?3",
        )
        .bind(community)
        .bind(after)
        .bind(i64::from(limit))
        .bind(i64::from(builtin::RESERVED_FROM))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_message).collect()
    }

    /// Stored plugin messages of `community` matching `query`, in row-id order (the order they
    /// were stored), at most `query.limit`: the pages of a restore and of a plugin's reads. The
    /// built-in messages (reserved types) and hidden messages (undone or denied) are never
    /// among them.
    pub async fn history(
        &self,
        community: i64,
        query: &HistoryQuery,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(self.visible(
            community,
            "SELECT id, member, global_time, meta, sequence, packet, undone, undone_by FROM sync
             WHERE community = ?1 AND id > ?2 AND meta < ?8 AND undone = 0
               AND (?3 IS NULL OR meta = ?3)
               AND (?4 IS NULL OR member = ?4) AND global_time BETWEEN ?5 AND ?6
             ORDER BY id LIMIT ?7",
        ))
        .bind(community)
        .bind(query.after)
        .bind(query.meta.map(i64::from))
        .bind(query.member.map(|m| m.0.to_vec()))
        .bind(super::to_i64(query.global_time_low))
        .bind(super::to_i64(query.global_time_high))
        .bind(i64::from(query.limit))
        .bind(i64::from(builtin::RESERVED_FROM))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_message).collect()
    }

    /// Number of stored messages of `community`.
    pub async fn count(&self, community: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sync WHERE community = ?1")
            .bind(community)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// A filtered page of a community's stored messages ([`Store::history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this meta-message type.
    pub meta: Option<u32>,
    /// Only messages whose first author is this member.
    pub member: Option<MemberId>,
    /// Lowest global time, inclusive.
    pub global_time_low: u64,
    /// Highest global time, inclusive.
    pub global_time_high: u64,
    /// Only rows with an id above this one.
    pub after: i64,
    /// Most rows.
    pub limit: u32,
}

impl HistoryQuery {
    /// Every message after row `after`, at most `limit`.
    pub fn all(after: i64, limit: u32) -> Self {
        HistoryQuery {
            meta: None,
            member: None,
            global_time_low: 0,
            global_time_high: u64::MAX,
            after,
            limit,
        }
    }
}

/// A row of `id, member, global_time, meta, sequence, packet, undone, undone_by`.
pub(super) fn stored_message(row: &sqlx::sqlite::SqliteRow) -> Result<StoredMessage, StoreError> {
    let member: Vec<u8> = row.try_get(1)?;
    let global_time: i64 = row.try_get(2)?;
    let meta: i64 = row.try_get(3)?;
    let sequence: Option<i64> = row.try_get(4)?;
    Ok(StoredMessage {
        id: row.try_get(0)?,
        member: MemberId::from_slice(&member).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        global_time: u64::try_from(global_time).unwrap_or(0),
        meta: u32::try_from(meta).unwrap_or(0),
        sequence: sequence.and_then(|s| u32::try_from(s).ok()),
        packet: row.try_get(5)?,
        undone: u8::try_from(row.try_get::<i64, _>(6)?).unwrap_or(u8::MAX),
        undone_by: row.try_get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{definition, post};
    use super::super::*;
    use super::*;

    #[tokio::test]
    async fn history_pages_in_row_order_by_meta_member_and_global_time() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        // Stored out of global-time order: rows come back in the order they were stored.
        let times = [5u64, 1, 9, 3, 7, 2];
        let batch: Vec<NewMessage> = times
            .iter()
            .map(|&gt| post(id, gt, vec![gt as u8; 80]))
            .collect();
        store.insert(&batch).await.unwrap();
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .history(id, &HistoryQuery::all(after, 4))
                .await
                .unwrap();
            seen.extend(page.iter().map(|r| r.global_time));
            let Some(last) = page.last() else { break };
            after = last.id;
        }
        assert_eq!(seen, times);
        let select = |query: HistoryQuery| {
            let store = store.clone();
            async move {
                let rows = store.history(id, &query).await.unwrap();
                rows.iter().map(|r| r.global_time).collect::<Vec<_>>()
            }
        };
        let member = HistoryQuery {
            member: Some(MemberId([9; 20])),
            ..HistoryQuery::all(0, 10)
        };
        assert_eq!(select(member).await, [9]);
        let range = HistoryQuery {
            global_time_low: 2,
            global_time_high: 5,
            ..HistoryQuery::all(0, 10)
        };
        assert_eq!(select(range).await, [5, 3, 2]);
        let meta = |meta| HistoryQuery {
            meta: Some(meta),
            ..HistoryQuery::all(0, 10)
        };
        assert_eq!(select(meta(7)).await.len(), 6);
        assert!(select(meta(8)).await.is_empty());
    }

    #[tokio::test]
    async fn built_in_messages_resume_the_timeline_and_never_reach_the_plugins_history() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let built_in = |meta: u32, global_time: u64| NewMessage {
            meta,
            sequence: Some(1),
            ..post(id, global_time, vec![meta as u8, global_time as u8, 1])
        };
        let rows = vec![
            post(id, 1, vec![1; 80]),
            built_in(builtin::AUTHORIZE, 2),
            built_in(builtin::DYNAMIC_SETTINGS, 3),
            built_in(builtin::REVOKE, 4),
        ];
        store.insert(&rows).await.unwrap();
        let resume = store.resume(id, MemberId([0; 20]), &[7]).await.unwrap();
        let packets: Vec<&Vec<u8>> = rows[1..].iter().map(|r| &r.packet).collect();
        assert_eq!(resume.authority.iter().collect::<Vec<_>>(), packets);
        let history = store.history(id, &HistoryQuery::all(0, 10)).await.unwrap();
        let metas: Vec<u32> = history.iter().map(|r| r.meta).collect();
        assert_eq!(metas, [7]);
        let all = HistoryQuery {
            meta: Some(builtin::AUTHORIZE),
            ..HistoryQuery::all(0, 10)
        };
        assert!(store.history(id, &all).await.unwrap().is_empty());
    }
}
