//! The reference store: the rules of [`crate::store`] over a vector, in memory.
//!
//! The simulation stores with it, and `host/node`'s contract suite holds the SQLite store to the
//! same answers. It favours being obviously right over being fast: every call scans.

use crate::identity::{CommunityId, MemberId};
use crate::meta::{SYNC_PRIORITY_THRESHOLD, SyncOrder};
use crate::missing::{Lookup, Numbered, Verdict};
use crate::store::{Entry, Outcome, pair};
use crate::sync::{Query, Range, Row};

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Its community.
    pub community: CommunityId,
    /// Its meta-message type.
    pub meta: u32,
    /// Its first author.
    pub member: MemberId,
    /// Its sequence number, if numbered.
    pub sequence: Option<u32>,
    /// Its meta's priority.
    pub priority: u8,
    /// Its pair of signers ([`pair`] order), for double-member messages.
    pub signers: Option<(MemberId, MemberId)>,
    /// Row id, global time, hash and size.
    pub row: Row,
    /// The packet.
    pub packet: Vec<u8>,
    /// Why it is hidden, a set of bits (0: shown; 1: undone by a valid undo, the SQLite store's
    /// `sync.undone`).
    pub undone: u8,
    /// The row id of the undo it is undone by (bit 1).
    pub undone_by: Option<u64>,
}

impl Kept {
    fn numbered(&self) -> Numbered<'_> {
        Numbered {
            sequence: self.sequence.unwrap_or(0),
            global_time: self.row.global_time,
            packet: &self.packet,
        }
    }
}

/// Persistent messages of any number of communities, in row id order.
#[derive(Debug, Default)]
pub struct Store {
    /// The stored messages, in row id order.
    pub rows: Vec<Kept>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Stores `entries` of `community` one by one, in order; says what became of each.
    pub fn insert(&mut self, community: CommunityId, entries: &[Entry]) -> Vec<Outcome> {
        entries
            .iter()
            .map(|e| self.insert_one(community, e))
            .collect()
    }

    fn insert_one(&mut self, community: CommunityId, e: &Entry) -> Outcome {
        let author =
            |k: &&Kept| k.community == community && k.member == e.member && k.meta == e.meta;
        if let Some(sequence) = e.sequence {
            let last = self
                .rows
                .iter()
                .filter(author)
                .filter(|k| k.sequence.is_some())
                .max_by_key(|k| k.sequence);
            let same = self
                .rows
                .iter()
                .filter(author)
                .find(|k| k.sequence == Some(sequence));
            let verdict = crate::missing::check(
                sequence,
                e.global_time,
                &e.packet,
                last.map(Kept::numbered),
                same.map(Kept::numbered),
            );
            match verdict {
                Verdict::Store => {}
                Verdict::Duplicate => return Outcome::Duplicate,
                Verdict::Stale => return Outcome::Stale,
                Verdict::Gap { low, high } => return Outcome::Gap { low, high },
                Verdict::Keep => {
                    return Outcome::Conflict(same.map(|k| k.packet.clone()).unwrap_or_default());
                }
                Verdict::Replace => self
                    .rows
                    .retain(|k| !(author(&k) && k.sequence.is_some_and(|s| s >= sequence))),
            }
        }
        let signers = e.co_signer.map(|co| pair(e.member, co));
        let key = |k: &Kept| {
            k.community == community && k.member == e.member && k.row.global_time == e.global_time
        };
        let stored = match self.rows.iter_mut().find(|k| key(k)) {
            // Two versions of one message: the binary-higher packet wins, in its row.
            Some(existing) if e.packet > existing.packet => {
                existing.meta = e.meta;
                existing.sequence = e.sequence;
                existing.priority = e.priority;
                existing.packet = e.packet.clone();
                existing.row.hash = e.hash;
                existing.row.size = size(&e.packet);
                if signers.is_some() {
                    existing.signers = signers;
                }
                true
            }
            Some(_) => false,
            None => {
                let id = self.rows.last().map_or(1, |k| k.row.id + 1);
                self.rows.push(Kept {
                    community,
                    meta: e.meta,
                    member: e.member,
                    sequence: e.sequence,
                    priority: e.priority,
                    signers,
                    row: Row {
                        id,
                        global_time: e.global_time,
                        hash: e.hash,
                        size: size(&e.packet),
                    },
                    packet: e.packet.clone(),
                    undone: 0,
                    undone_by: None,
                });
                true
            }
        };
        if !stored {
            return Outcome::Duplicate;
        }
        if let Some(history) = e.history {
            // Keep the newest `history` of this author (or pair of signers) and meta.
            let mine = |k: &Kept| {
                k.community == community
                    && k.meta == e.meta
                    && match signers {
                        None => k.member == e.member,
                        Some(signers) => k.signers == Some(signers),
                    }
            };
            let mut times: Vec<u64> = self
                .rows
                .iter()
                .filter(|k| mine(k))
                .map(|k| k.row.global_time)
                .collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&oldest_kept) = times.get(usize::from(history).saturating_sub(1)) {
                self.rows
                    .retain(|k| !(mine(k) && k.row.global_time < oldest_kept));
            }
            if !self.rows.iter().any(key) {
                return Outcome::Duplicate;
            }
        }
        Outcome::Stored
    }

    /// The packets a missing-* request names, in its order (sequence order; newest first for
    /// the last messages), stopping once `max_bytes` are reached (the packet crossing it is
    /// included).
    pub fn lookup(
        &self,
        community: CommunityId,
        lookup: &Lookup,
        max_bytes: usize,
    ) -> Vec<Vec<u8>> {
        let of = |k: &&Kept| k.community == community;
        let mut found: Vec<&Kept> = match lookup {
            Lookup::Sequences {
                member,
                meta,
                low,
                high,
            } => {
                let mut found: Vec<&Kept> = self
                    .rows
                    .iter()
                    .filter(of)
                    .filter(|k| k.member == *member && k.meta == *meta)
                    .filter(|k| k.sequence.is_some_and(|s| (*low..=*high).contains(&s)))
                    .collect();
                found.sort_by_key(|k| k.sequence);
                found
            }
            Lookup::GlobalTimes {
                member,
                global_times,
            } => {
                let mut found: Vec<&Kept> = self
                    .rows
                    .iter()
                    .filter(of)
                    .filter(|k| k.member == *member && global_times.contains(&k.row.global_time))
                    .collect();
                found.sort_by_key(|k| k.row.global_time);
                found
            }
            Lookup::Last {
                member,
                meta,
                count,
            } => {
                let mut found: Vec<&Kept> = self
                    .rows
                    .iter()
                    .filter(of)
                    .filter(|k| k.member == *member && k.meta == *meta)
                    .collect();
                found.sort_by_key(|k| std::cmp::Reverse(k.row.global_time));
                found.truncate(usize::from(*count));
                found
            }
        };
        let mut used = 0;
        found.retain(|k| {
            let keep = used < max_bytes;
            used += k.packet.len();
            keep
        });
        found.into_iter().map(|k| k.packet.clone()).collect()
    }

    /// The syncable rows of `community` (priority above 32), ascending by (global time, id).
    fn syncable(&self, community: CommunityId) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .filter(|k| k.community == community && k.priority > SYNC_PRIORITY_THRESHOLD)
            .filter(|k| k.undone == 0)
            .map(|k| k.row)
            .collect();
        rows.sort_by_key(|r| (r.global_time, r.id));
        rows
    }

    /// The syncable rows `query` describes: `right` ascending and `left` descending (empty for
    /// the oldest-first and modulo queries).
    pub fn sync_query(&self, community: CommunityId, query: Query) -> (Vec<Row>, Vec<Row>) {
        let rows = self.syncable(community);
        let above = |low: u64, limit: usize| -> Vec<Row> {
            rows.iter()
                .filter(|r| r.global_time >= low)
                .take(limit)
                .copied()
                .collect()
        };
        let below = |high: u64, limit: usize| -> Vec<Row> {
            rows.iter()
                .rev()
                .filter(|r| r.global_time <= high)
                .take(limit)
                .copied()
                .collect()
        };
        match query {
            Query::Oldest { limit } => (above(0, limit), Vec::new()),
            Query::Modulo {
                modulo,
                offset,
                limit,
            } => (
                rows.iter()
                    .filter(|r| r.global_time % u64::from(modulo.max(1)) == offset)
                    .take(limit)
                    .copied()
                    .collect(),
                Vec::new(),
            ),
            Query::Below { high, limit } => (Vec::new(), below(high, limit)),
            Query::Pivot { pivot, limit } => (above(pivot, limit), below(pivot, limit)),
        }
    }

    /// The rows of `range`, meta by meta in the order given, each meta's rows in its own order
    /// (ties of global time by hash) and from its lowest active global time, at most `limit` in
    /// all. A random order gives the rows in ascending order here: only which rows, not their
    /// order, is then part of the contract.
    pub fn sync_rows(
        &self,
        community: CommunityId,
        range: Range,
        limit: usize,
        metas: &[(u32, SyncOrder, u64)],
    ) -> Vec<Row> {
        let modulo = u64::from(range.modulo.max(1));
        let mut out = Vec::new();
        for (meta, order, active_from) in metas {
            let mut rows: Vec<Row> = self
                .rows
                .iter()
                .filter(|k| k.community == community && k.meta == *meta && k.undone == 0)
                .map(|k| k.row)
                .filter(|r| {
                    r.global_time >= range.low.max(*active_from)
                        && r.global_time <= range.high
                        && r.global_time % modulo == range.offset % modulo
                })
                .collect();
            // Ties in the digest's byte order, as SQLite orders the hash BLOBs of its index.
            rows.sort_by_key(|r| {
                (
                    r.global_time,
                    r.hash.0.to_le_bytes(),
                    r.hash.1.to_le_bytes(),
                )
            });
            if *order == SyncOrder::Descending {
                rows.reverse();
            }
            out.extend(rows);
        }
        out.truncate(limit);
        out
    }

    /// The meta of the stored message of `member` at `global_time`, hidden or not.
    pub fn meta_of(
        &self,
        community: CommunityId,
        member: MemberId,
        global_time: u64,
    ) -> Option<u32> {
        self.find(community, member, global_time).map(|k| k.meta)
    }

    /// Marks the stored message of `member` at `global_time` undone by the stored undo of
    /// `undone_by` (author, global time), or no longer undone by any (`None`): reason bit 1
    /// and `undone_by` (the undo's row). Returns whether the row changed (false when it is not
    /// stored, or marked so already).
    pub fn mark_undone(
        &mut self,
        community: CommunityId,
        member: MemberId,
        global_time: u64,
        undone_by: Option<(MemberId, u64)>,
    ) -> bool {
        let by = undone_by.and_then(|(m, g)| self.find(community, m, g).map(|k| k.row.id));
        let Some(kept) = self.rows.iter_mut().find(|k| {
            k.community == community && k.member == member && k.row.global_time == global_time
        }) else {
            return false;
        };
        let (undone, undone_by) = match undone_by {
            Some(_) => (kept.undone | 1, by),
            None => (kept.undone & !1, None),
        };
        let changed = (undone, undone_by) != (kept.undone, kept.undone_by);
        kept.undone = undone;
        kept.undone_by = undone_by;
        changed
    }

    fn find(&self, community: CommunityId, member: MemberId, global_time: u64) -> Option<&Kept> {
        self.rows.iter().find(|k| {
            k.community == community && k.member == member && k.row.global_time == global_time
        })
    }

    /// Removes the messages of `meta` below global time `below`; returns how many.
    pub fn prune(&mut self, community: CommunityId, meta: u32, below: u64) -> u64 {
        let before = self.rows.len();
        self.rows
            .retain(|k| !(k.community == community && k.meta == meta && k.row.global_time < below));
        (before - self.rows.len()) as u64
    }

    /// Removes the messages of `community` that a destroy does not keep
    /// ([`crate::node::Event::Destroyed`]): with `keep` (hard), all but those named by (first
    /// author, global time); with `above` (soft), those above that global time. Returns how
    /// many.
    pub fn destroy(
        &mut self,
        community: CommunityId,
        keep: Option<&[(MemberId, u64)]>,
        above: u64,
    ) -> u64 {
        let before = self.rows.len();
        self.rows.retain(|k| {
            k.community != community
                || match keep {
                    Some(keep) => keep.contains(&(k.member, k.row.global_time)),
                    None => k.row.global_time <= above,
                }
        });
        (before - self.rows.len()) as u64
    }

    /// The packets of rows `ids`, in that order (missing rows, and repeats, left out).
    pub fn packets(&self, ids: &[u64]) -> Vec<Vec<u8>> {
        let mut given = std::collections::HashSet::new();
        ids.iter()
            .filter(|id| given.insert(**id))
            .filter_map(|id| self.rows.iter().find(|k| k.row.id == *id))
            .map(|k| k.packet.clone())
            .collect()
    }

    /// The stored messages of `community`, in row id order.
    pub fn messages(&self, community: CommunityId) -> impl Iterator<Item = &Kept> {
        self.rows.iter().filter(move |k| k.community == community)
    }

    /// Number of messages stored for `community`.
    pub fn count(&self, community: CommunityId) -> usize {
        self.messages(community).count()
    }
}

fn size(packet: &[u8]) -> u32 {
    u32::try_from(packet.len()).unwrap_or(u32::MAX)
}
