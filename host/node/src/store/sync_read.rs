//! The responder's reads: the rows a sync request's bloom filter is held against (a sync query's
//! pivot, modulo or oldest rows, and the rows of a requested range, meta by meta) and the packets
//! of the rows it then sends.
//!
//! Why rows come back as text built inside SQL. sqlx hands a query's result rows over one by one
//! between SQLite's thread and ours, building a row object for each; for these reads, which
//! return up to thousands of small rows per request, that hand-over cost more than SQLite's own
//! work. So the range reads ([`rows_sql`]) aggregate all their rows into one value with
//! `group_concat(printf('%d:%d:%s:%d', id, global_time, hex(hash), size), ',')`, which
//! [`parse_rows`] splits again, and [`Store::packets`] frames binary packets as
//! `id:length:bytes` in one blob, which [`split_packet`] walks. Together with seeking a residue
//! class in the order wanted so that LIMIT ends the seeks early, this took a modulo request at
//! 5 KiB from 5.0 ms to 0.5 ms over a million stored messages (commits 76009cd and b7a0c53). A
//! row that does not parse is left out, counted and reported with a warning, never silently.

use std::collections::HashMap;

use dispersy_core::meta::SyncOrder;
use dispersy_core::sync::{Query, Range, Row};
use sqlx::Row as _;

use super::{Store, StoreError, hash_from, json_list, limit_i64, to_i64};

impl Store {
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
                let rows = sqlx::query(self.visible(
                    community,
                    "SELECT id, global_time, hash, length(packet) FROM sync
                     WHERE community = ?1 AND priority > 32 AND undone = 0
                       AND global_time % ?2 = ?3
                     ORDER BY global_time, id LIMIT ?4",
                ))
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
        let rows = sqlx::query(self.visible(
            community,
            "SELECT id, global_time, hash, length(packet) FROM sync
             WHERE community = ?1 AND priority > 32 AND undone = 0 AND global_time >= ?2
             ORDER BY global_time, id LIMIT ?3",
        ))
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
        let rows = sqlx::query(self.visible(
            community,
            "SELECT id, global_time, hash, length(packet) FROM sync
             WHERE community = ?1 AND priority > 32 AND undone = 0 AND global_time <= ?2
             ORDER BY global_time DESC, id DESC LIMIT ?3",
        ))
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
            let text: Option<String> = sqlx::query_scalar(self.visible(community, sql))
                .bind(community)
                .bind(to_i64(first))
                .bind(to_i64(last))
                .bind(to_i64(modulo))
                .bind(limit_i64(left))
                .bind(i64::from(*meta))
                .fetch_one(&self.pool)
                .await?;
            let (rows, malformed) = text.as_deref().map(parse_rows).unwrap_or_default();
            if malformed > 0 {
                tracing::warn!(
                    meta,
                    malformed,
                    "sync rows that did not parse were left out"
                );
            }
            out.extend(rows);
        }
        Ok(out)
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

/// The rows of [`rows_sql`]'s text, in order, and how many items did not parse. Rows without a
/// hash yet (an empty hash field) are left out, as expected; an item that does not parse at all
/// (which SQLite's own `printf` should never write) is left out too, but counted, so that the
/// caller can report it.
fn parse_rows(text: &str) -> (Vec<Row>, usize) {
    let mut malformed = 0;
    let rows = text
        .split(',')
        .filter_map(|item| match parse_row(item) {
            Parsed::Row(row) => Some(row),
            Parsed::Unhashed => None,
            Parsed::Malformed => {
                malformed += 1;
                None
            }
        })
        .collect();
    (rows, malformed)
}

/// One item of [`rows_sql`]'s text, parsed.
enum Parsed {
    Row(Row),
    /// A row stored before hashes were kept.
    Unhashed,
    Malformed,
}

/// Parses one `id:global_time:HASH:size` item (fields after the fourth are ignored).
fn parse_row(item: &str) -> Parsed {
    let mut fields = item.split(':');
    let mut number = || fields.next().and_then(|f| f.parse::<u64>().ok());
    let (Some(id), Some(global_time)) = (number(), number()) else {
        return Parsed::Malformed;
    };
    let Some(hash) = fields.next() else {
        return Parsed::Malformed;
    };
    let Some(size) = fields.next().and_then(|f| f.parse().ok()) else {
        return Parsed::Malformed;
    };
    if hash.is_empty() {
        return Parsed::Unhashed;
    }
    match hex::decode(hash).ok().as_deref().and_then(hash_from) {
        Some(hash) => Parsed::Row(Row {
            id,
            global_time,
            hash,
            size,
        }),
        None => Parsed::Malformed,
    }
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

#[cfg(test)]
mod tests {
    use super::super::testing::{definition, post};
    use super::super::*;
    use super::*;

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

    #[test]
    fn malformed_rows_are_counted_and_unhashed_ones_skipped() {
        let hash = "00112233445566778899aabbccddeeff";
        let text = format!("1:10:{hash}:100,garbage,2:20::50,3:30:{hash}:x,4:40:{hash}:7");
        let (rows, malformed) = parse_rows(&text);
        let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 4]);
        assert_eq!(malformed, 2, "`garbage` and the row whose size is `x`");
    }
}
