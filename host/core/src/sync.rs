//! Bloom-filter synchronisation, the pure parts (seed: "Bloom filter"; original-implementation
//! §3.3–3.5): which range of global times a new filter covers, what goes in it, when a filter is
//! reused or the sync part skipped, which stored messages a responder offers, and how large a
//! response may be.
//!
//! The core does no I/O: the driver runs the queries these functions describe (a [`Query`]) over
//! its store and hands the [`Row`]s back. Rows carry each packet's hash, computed once when it
//! was stored, so neither side hashes packets per round.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use crate::bloom::{BloomFilter, PacketHash};
use crate::rng::Rng;
use crate::time::Instant;
use crate::wire::IntroductionRequest;

/// The false-positive rate filters are sized for (the original's 1 %).
pub const ERROR_RATE: f64 = 0.01;

/// How new filters choose what they cover (original §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Around a pivot biased to recent global times; the wider side when both sides are full
    /// (the original's default, "largest").
    #[default]
    Largest,
    /// Every global time `t` with `t % modulo == offset`, modulo = stored / capacity, a random
    /// offset each round.
    Modulo,
}

/// Bounds of synchronisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Range strategy of new filters.
    pub strategy: Strategy,
    /// Smallest (and first) response budget per request, in bytes (the original's fixed 5 KiB).
    pub min_budget: usize,
    /// Largest response budget per request, in bytes.
    pub max_budget: usize,
    /// Requesters whose budget is remembered.
    pub max_peers: usize,
    /// Sync requests being answered at once (waiting for the store).
    pub max_responses: usize,
    /// How long a walk waits for the store's rows before it goes without a filter, and a
    /// response for its rows before it is dropped.
    pub store_timeout: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            strategy: Strategy::Largest,
            min_budget: 5 * 1024,
            max_budget: 256 * 1024,
            max_peers: 1_024,
            max_responses: 64,
            store_timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// An introduction-request waiting for the rows of its filter.
#[derive(Debug, Clone)]
pub struct PendingQuery {
    /// Where it goes.
    pub target: SocketAddr,
    /// The request, without its sync part yet.
    pub request: IntroductionRequest,
    /// What was asked of the store.
    pub query: Query,
    /// When to send it without a filter.
    pub deadline: Instant,
}

/// A sync request waiting for the store's rows.
#[derive(Debug, Clone)]
pub struct PendingResponse {
    /// The community.
    pub community: crate::identity::CommunityId,
    /// The requester.
    pub to: SocketAddr,
    /// Our session with it.
    pub session: u32,
    /// The requested range.
    pub range: Range,
    /// The requester's filter.
    pub filter: BloomFilter,
    /// How many bytes to send.
    pub budget: usize,
    /// When to give up.
    pub deadline: Instant,
}

/// The sync state of one community.
#[derive(Debug, Clone)]
pub struct State {
    /// Filter reuse and skipping.
    pub cache: Cache,
    /// Response budgets per requester.
    pub budgets: Budgets,
    /// Syncable messages stored (decides between the oldest-first and the pivot strategy).
    pub stored: u64,
    /// Bytes a filter may take in our introduction-requests.
    pub filter_bytes: usize,
    /// Our request waiting for the rows of its filter.
    pub pending: Option<PendingQuery>,
    /// Running average size of the packets we offer, to know how many rows fill a budget.
    pub packet_size: usize,
}

impl State {
    /// The state of a community holding `stored` syncable messages.
    pub fn new(config: &Config, stored: u64, filter_bytes: usize) -> Self {
        State {
            cache: Cache::default(),
            budgets: Budgets::new(config.min_budget, config.max_budget, config.max_peers),
            stored,
            filter_bytes,
            pending: None,
            packet_size: 256,
        }
    }

    /// How many packets one of our filters holds.
    pub fn capacity(&self) -> usize {
        crate::bloom::capacity(self.filter_bytes * 8, ERROR_RATE).max(1)
    }
}

/// A stored persistent message as sync sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The store's row id.
    pub id: u64,
    /// Its global time.
    pub global_time: u64,
    /// Its packet hash.
    pub hash: PacketHash,
    /// Its packet size in bytes.
    pub size: u32,
}

/// The part of global time a filter covers: `low..=high`, and only the global times `t` with
/// `t % modulo == offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Lowest global time, at least 1.
    pub low: u64,
    /// Highest global time.
    pub high: u64,
    /// At least 1.
    pub modulo: u32,
    /// Below `modulo`.
    pub offset: u64,
}

impl Range {
    /// Whether `global_time` is in the range.
    pub fn contains(&self, global_time: u64) -> bool {
        (self.low..=self.high).contains(&global_time)
            && global_time % u64::from(self.modulo.max(1)) == self.offset
    }
}

/// What the driver must read from its store to build a filter: the syncable rows (priority
/// above 32, not undone) of the community.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The first `limit` rows from global time 1 upwards (small stores, or no pivot).
    Oldest {
        /// How many rows at most.
        limit: usize,
    },
    /// Around a pivot: up to `limit` rows with global time ≥ `pivot` ascending ("right") and up
    /// to `limit` rows with global time ≤ `pivot` descending ("left").
    Pivot {
        /// The pivot.
        pivot: u64,
        /// How many rows at most on each side.
        limit: usize,
    },
    /// The first `limit` rows, ascending, whose global time `t` has `t % modulo == offset`.
    Modulo {
        /// At least 2.
        modulo: u32,
        /// Below `modulo`.
        offset: u64,
        /// How many rows at most.
        limit: usize,
    },
}

/// Chooses what a new filter should cover (original "largest" strategy, step 2): a pivot drawn
/// from an exponential distribution with mean `global_time / 2` below our global time, biased to
/// recent messages. With fewer stored messages than a filter holds, or a pivot at 1, the filter
/// covers everything from the start. `capacity` is what one filter holds; the queries ask one
/// row more, to detect that a range must be cut.
pub fn query(
    rng: &mut Rng,
    strategy: Strategy,
    global_time: u64,
    stored: u64,
    capacity: usize,
) -> Query {
    let limit = capacity + 1;
    if stored <= capacity as u64 || global_time <= 1 {
        return Query::Oldest { limit };
    }
    if strategy == Strategy::Modulo {
        let modulo = u32::try_from(stored.div_ceil(capacity.max(1) as u64))
            .unwrap_or(u32::MAX)
            .max(2);
        let offset = rng.next_u64() % u64::from(modulo);
        return Query::Modulo {
            modulo,
            offset,
            limit,
        };
    }
    let mean = global_time as f64 / 2.0;
    let draw = -mean * (1.0 - rng.unit()).ln();
    let pivot = if draw < global_time as f64 {
        global_time - draw as u64
    } else {
        1 + (rng.next_u64() % global_time)
    };
    if pivot <= 1 {
        Query::Oldest { limit }
    } else {
        Query::Pivot { pivot, limit }
    }
}

/// Keeps at most `capacity` of `rows` (ordered along the range), never splitting a global time:
/// when more rows came back than fit, the last fitting global time is dropped whole, and the
/// range ends before it. Returns the kept rows and whether the range was cut (and where).
fn cut(mut rows: Vec<Row>, capacity: usize) -> (Vec<Row>, Option<u64>) {
    if rows.len() <= capacity {
        return (rows, None);
    }
    let boundary = rows[capacity].global_time;
    rows.truncate(capacity);
    rows.retain(|r| r.global_time != boundary);
    (rows, Some(boundary))
}

/// A filter to send, and the range it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The range.
    pub range: Range,
    /// The filter over the stored rows in the range.
    pub filter: BloomFilter,
}

/// Builds the filter for `query` from the rows the driver read (`right` ascending; `left`
/// descending, empty for [`Query::Oldest`]); `acceptable` caps the range.
pub fn claim(
    query: Query,
    right: Vec<Row>,
    left: Vec<Row>,
    acceptable: u64,
    mut filter: BloomFilter,
    capacity: usize,
) -> Claim {
    let (rows, range) = match query {
        Query::Oldest { .. } | Query::Modulo { .. } => {
            let (modulo, offset) = match query {
                Query::Modulo { modulo, offset, .. } => (modulo, offset),
                _ => (1, 0),
            };
            let (rows, cut_at) = cut(right, capacity);
            let high = cut_at.map_or(acceptable, |at| at - 1);
            (
                rows,
                Range {
                    low: 1,
                    high,
                    modulo,
                    offset,
                },
            )
        }
        Query::Pivot { pivot, .. } => {
            let (right_rows, right_cut) = cut(right, capacity);
            let right_range = Range {
                low: pivot,
                high: right_cut.map_or(acceptable, |at| at - 1),
                modulo: 1,
                offset: 0,
            };
            // A full right side: the left side may span more global time (a sparser region,
            // covering more history per filter); keep the wider.
            if right_cut.is_some() {
                let (left_rows, left_cut) = cut(left, capacity);
                let left_range = Range {
                    low: left_cut.map_or(1, |at| at + 1),
                    high: pivot,
                    modulo: 1,
                    offset: 0,
                };
                let width = |r: &Range| r.high.saturating_sub(r.low);
                if width(&left_range) > width(&right_range) {
                    (left_rows, left_range)
                } else {
                    (right_rows, right_range)
                }
            } else {
                // Room left on the right: the range reaches down to the pivot only.
                (right_rows, right_range)
            }
        }
    };
    let range = Range {
        low: range.low.min(acceptable).max(1),
        high: range.high.min(acceptable),
        ..range
    };
    for row in rows.iter().filter(|r| range.contains(r.global_time)) {
        filter.insert(&row.hash);
    }
    Claim { range, filter }
}

/// Rows a responder reads for one request: enough to fill `budget` with packets of about
/// `packet_size` bytes even though the requester already holds `held` rows of the range (its
/// filter's estimated count), with a margin. Reading only this many, not the whole range, keeps a
/// request cheap however many messages are stored.
pub fn rows_to_read(budget: usize, held: usize, packet_size: usize) -> usize {
    let fill = budget.div_ceil(packet_size.max(64));
    fill + fill / 4 + held + held / 8 + 16
}

/// What the responder offers: the rows in the request's range that the requester's filter lacks,
/// in the order given (the driver orders by priority, highest first, then each meta's order),
/// until `budget` bytes are reached (the row crossing the budget is included, as in the
/// original). Returns the chosen rows.
pub fn missing<'a>(
    filter: &BloomFilter,
    range: &Range,
    rows: impl IntoIterator<Item = &'a Row>,
    budget: usize,
) -> Vec<Row> {
    let mut out = Vec::new();
    let mut used = 0usize;
    for row in rows {
        if used >= budget {
            break;
        }
        if range.contains(row.global_time) && !filter.contains(&row.hash) {
            used += row.size as usize;
            out.push(*row);
        }
    }
    out
}

/// The sync part of our next introduction-request (original §3.4): reuse a filter that brought
/// messages (up to 100 times), and skip sync more and more often after filters that brought
/// nothing.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    last: Option<Cached>,
    skips: usize,
}

#[derive(Debug, Clone)]
struct Cached {
    claim: Claim,
    used: u32,
    responses: u32,
    target: Option<SocketAddr>,
}

/// Decision for the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send this filter again (it was productive).
    Reuse(Claim),
    /// Send no sync part this time.
    Skip,
    /// Build a new filter.
    New,
}

/// The original's skip probabilities after 1, 2, … fruitless filters.
const SKIP_CURVE: [f64; 11] = [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// How often one productive filter is reused at most.
pub const MAX_REUSE: u32 = 100;

impl Cache {
    /// Decides what the next request to `target` carries.
    pub fn next(&mut self, rng: &mut Rng, target: SocketAddr) -> Next {
        if let Some(last) = &mut self.last {
            if last.responses > 0 {
                self.skips = 0;
                if last.used < MAX_REUSE {
                    last.used += 1;
                    last.responses = 0;
                    last.target = Some(target);
                    return Next::Reuse(last.claim.clone());
                }
            } else if last.used <= 1 {
                self.skips = (self.skips + 1).min(SKIP_CURVE.len());
            }
        }
        if self.skips > 0 && rng.unit() < SKIP_CURVE[self.skips - 1] {
            self.last = None;
            return Next::Skip;
        }
        Next::New
    }

    /// Remembers the new filter sent to `target`.
    pub fn sent(&mut self, claim: Claim, target: SocketAddr) {
        self.last = Some(Cached {
            claim,
            used: 1,
            responses: 0,
            target: Some(target),
        });
    }

    /// A message with `hash` and `global_time` was stored, from `source`: a cached filter
    /// covering it learns it, and counts a response when it came from the filter's target.
    pub fn stored(&mut self, hash: &PacketHash, global_time: u64, source: Option<SocketAddr>) {
        if let Some(last) = &mut self.last
            && last.claim.range.contains(global_time)
        {
            last.claim.filter.insert(hash);
            if source.is_some() && source == last.target {
                last.responses += 1;
            }
        }
    }
}

/// The response budget towards one requester, adapted to what arrives (AIMD): the responder
/// remembers the hashes it sent last time; when the requester's next filter over the same range
/// contains (nearly) all of them, they arrived and the budget doubles, up to `max`; when many are
/// missing, the path is lossy or slow and the budget halves, down to `min` (the original's fixed
/// 5 KiB is `min == max`).
#[derive(Debug, Clone)]
pub struct Budgets {
    min: usize,
    max: usize,
    peers: HashMap<SocketAddr, Peer>,
    order: VecDeque<SocketAddr>,
    max_peers: usize,
}

#[derive(Debug, Clone)]
struct Peer {
    budget: usize,
    sent: HashSet<(u64, u64)>,
    sent_times: (u64, u64),
}

impl Budgets {
    /// Budgets between `min` and `max` bytes, for at most `max_peers` requesters.
    pub fn new(min: usize, max: usize, max_peers: usize) -> Self {
        Budgets {
            min,
            max: max.max(min),
            peers: HashMap::new(),
            order: VecDeque::new(),
            max_peers,
        }
    }

    /// The budget for a request from `peer` carrying `filter` over `range`, adapted to what the
    /// filter says arrived of our last response.
    pub fn budget(&mut self, peer: SocketAddr, range: &Range, filter: &BloomFilter) -> usize {
        let (min, max) = (self.min, self.max);
        let Some(state) = self.peers.get_mut(&peer) else {
            return min;
        };
        let overlaps = state.sent_times.0 <= range.high && range.low <= state.sent_times.1;
        if overlaps && !state.sent.is_empty() {
            let arrived = state
                .sent
                .iter()
                .filter(|(a, b)| filter.contains(&PacketHash(*a, *b)))
                .count();
            if arrived * 10 >= state.sent.len() * 9 {
                state.budget = (state.budget * 2).min(max);
            } else {
                state.budget = (state.budget / 2).max(min);
            }
            state.sent.clear();
        }
        state.budget
    }

    /// Records what we sent to `peer`.
    pub fn sent(&mut self, peer: SocketAddr, rows: &[Row]) {
        if !self.peers.contains_key(&peer) {
            if self.peers.len() >= self.max_peers
                && let Some(oldest) = self.order.pop_front()
            {
                self.peers.remove(&oldest);
            }
            self.order.push_back(peer);
            self.peers.insert(
                peer,
                Peer {
                    budget: self.min,
                    sent: HashSet::new(),
                    sent_times: (u64::MAX, 0),
                },
            );
        }
        if let Some(state) = self.peers.get_mut(&peer) {
            state.sent = rows.iter().map(|r| (r.hash.0, r.hash.1)).collect();
            state.sent_times = rows.iter().fold((u64::MAX, 0), |(lo, hi), r| {
                (lo.min(r.global_time), hi.max(r.global_time))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, global_time: u64) -> Row {
        let mut rng = Rng::new(id);
        Row {
            id,
            global_time,
            hash: PacketHash(rng.next_u64(), rng.next_u64()),
            size: 250,
        }
    }

    fn empty_filter(salt: u32) -> BloomFilter {
        BloomFilter::sized(1270, 0.01, salt).expect("filter")
    }

    #[test]
    fn small_stores_sync_everything_from_the_start() {
        let mut rng = Rng::new(1);
        assert_eq!(
            query(&mut rng, Strategy::Largest, 500, 100, 1059),
            Query::Oldest { limit: 1060 }
        );
        let rows: Vec<Row> = (1..=100).map(|i| row(i, i * 5)).collect();
        let claim = claim(
            Query::Oldest { limit: 1060 },
            rows.clone(),
            vec![],
            600,
            empty_filter(7),
            1059,
        );
        assert_eq!(
            claim.range,
            Range {
                low: 1,
                high: 600,
                modulo: 1,
                offset: 0
            }
        );
        assert!(rows.iter().all(|r| claim.filter.contains(&r.hash)));
    }

    #[test]
    fn the_modulo_strategy_covers_one_residue_class() {
        let mut rng = Rng::new(2);
        let query = query(&mut rng, Strategy::Modulo, 50_000, 10_000, 1059);
        let Query::Modulo { modulo, offset, .. } = query else {
            panic!("{query:?}");
        };
        assert_eq!(modulo, 10);
        assert!(offset < 10);
        let rows: Vec<Row> = (0..50).map(|i| row(i, i * 10 + offset)).collect();
        let claim = claim(query, rows.clone(), vec![], 60_000, empty_filter(3), 1059);
        assert_eq!(
            claim.range,
            Range {
                low: 1,
                high: 60_000,
                modulo: 10,
                offset
            }
        );
        assert!(rows.iter().all(|r| claim.filter.contains(&r.hash)));
    }

    #[test]
    fn a_range_never_splits_a_global_time() {
        // 6 rows for a capacity of 4; rows 4 and 5 share global time 40.
        let rows = vec![
            row(1, 10),
            row(2, 20),
            row(3, 30),
            row(4, 40),
            row(5, 40),
            row(6, 50),
        ];
        let claim = claim(
            Query::Oldest { limit: 5 },
            rows.clone(),
            vec![],
            1000,
            empty_filter(1),
            4,
        );
        assert_eq!(claim.range.high, 39);
        assert!(claim.filter.contains(&rows[2].hash));
        // Rows at 40 are left out, and the range says so: the responder will offer them.
        assert!(!claim.range.contains(40));
    }

    #[test]
    fn pivots_prefer_recent_history() {
        let mut rng = Rng::new(3);
        let mut recent = 0;
        let draws = 10_000;
        for _ in 0..draws {
            match query(&mut rng, Strategy::Largest, 10_000, 1_000_000, 1059) {
                Query::Pivot { pivot, .. } if pivot > 5_000 => recent += 1,
                Query::Pivot { .. } | Query::Oldest { .. } | Query::Modulo { .. } => {}
            }
        }
        // pivot > global_time / 2 when X < mean (1 - 1/e ≈ 63.2 %), plus half of the uniform
        // fallback drawn when X ≥ global_time (e^-2 / 2 ≈ 6.8 %): about 70 %.
        let share = f64::from(recent) / f64::from(draws);
        assert!((0.67..0.73).contains(&share), "{share}");
    }

    #[test]
    fn the_wider_side_of_a_full_pivot_wins() {
        // Dense on the right of the pivot (gt 1000..1004), sparse on the left (gt 10, 200, 400…).
        let right: Vec<Row> = (0..5).map(|i| row(100 + i, 1000 + i)).collect();
        let left: Vec<Row> = [900u64, 700, 400, 200, 10]
            .iter()
            .enumerate()
            .map(|(i, gt)| row(i as u64, *gt))
            .collect();
        let claim = claim(
            Query::Pivot {
                pivot: 1000,
                limit: 4,
            },
            right,
            left,
            5000,
            empty_filter(2),
            3,
        );
        assert_eq!(claim.range.high, 1000);
        assert!(
            claim.range.low > 200 && claim.range.low <= 400,
            "{:?}",
            claim.range
        );
    }

    #[test]
    fn the_responder_offers_what_the_filter_lacks_within_budget() {
        let rows: Vec<Row> = (1..=100).map(|i| row(i, i)).collect();
        let mut filter = empty_filter(5);
        for r in &rows[..50] {
            filter.insert(&r.hash);
        }
        let range = Range {
            low: 1,
            high: 100,
            modulo: 1,
            offset: 0,
        };
        let all = missing(&filter, &range, &rows, usize::MAX);
        assert!(all.len() >= 49 && all.len() <= 50, "{}", all.len());
        assert!(all.iter().all(|r| r.id > 50 || !filter.contains(&r.hash)));
        // 5 KiB of 250-byte rows: 21 rows (the one crossing the budget included).
        assert_eq!(missing(&filter, &range, &rows, 5 * 1024).len(), 21);
        // Modulo selection: only even global times.
        let even = Range {
            low: 1,
            high: 100,
            modulo: 2,
            offset: 0,
        };
        assert!(
            missing(&filter, &even, &rows, usize::MAX)
                .iter()
                .all(|r| r.global_time % 2 == 0)
        );
    }

    #[test]
    fn productive_filters_are_reused_and_fruitless_ones_skipped() {
        let mut rng = Rng::new(8);
        let target: SocketAddr = "10.0.0.1:1".parse().expect("address");
        let mut cache = Cache::default();
        assert_eq!(cache.next(&mut rng, target), Next::New);
        let claim = Claim {
            range: Range {
                low: 1,
                high: 100,
                modulo: 1,
                offset: 0,
            },
            filter: empty_filter(1),
        };
        cache.sent(claim.clone(), target);
        let r = row(1, 50);
        cache.stored(&r.hash, 50, Some(target));
        match cache.next(&mut rng, target) {
            Next::Reuse(again) => assert!(again.filter.contains(&r.hash)),
            other => panic!("expected reuse, got {other:?}"),
        }
        // Fruitless filters: after a few, some requests carry no sync part.
        let mut skipped = 0;
        for _ in 0..200 {
            match cache.next(&mut rng, target) {
                Next::Skip => skipped += 1,
                Next::New => cache.sent(claim.clone(), target),
                Next::Reuse(_) => {}
            }
        }
        assert!(skipped > 50, "{skipped}");
    }

    #[test]
    fn budgets_grow_while_responses_arrive_and_shrink_on_loss() {
        let peer: SocketAddr = "10.0.0.2:1".parse().expect("address");
        let mut budgets = Budgets::new(5 * 1024, 256 * 1024, 10);
        let range = Range {
            low: 1,
            high: 1000,
            modulo: 1,
            offset: 0,
        };
        let rows: Vec<Row> = (1..=20).map(|i| row(i, i)).collect();
        assert_eq!(budgets.budget(peer, &range, &empty_filter(1)), 5 * 1024);
        budgets.sent(peer, &rows);
        // Everything arrived: the next filter holds it all.
        let mut filter = empty_filter(2);
        for r in &rows {
            filter.insert(&r.hash);
        }
        assert_eq!(budgets.budget(peer, &range, &filter), 10 * 1024);
        budgets.sent(peer, &rows);
        assert_eq!(budgets.budget(peer, &range, &filter), 20 * 1024);
        // Lost: the filter lacks what we sent.
        budgets.sent(peer, &rows);
        assert_eq!(budgets.budget(peer, &range, &empty_filter(3)), 10 * 1024);
    }
}

mod driving {
    //! The sync steps of the node: attaching filters to our walks, answering others' filters.

    use std::net::SocketAddr;

    use super::{Claim, ERROR_RATE, Next, PendingQuery, PendingResponse, Range, Row};
    use crate::bloom::{BloomFilter, PacketHash};
    use crate::identity::CommunityId;
    use crate::node::{Event, Node};
    use crate::time::Instant;
    use crate::wire::{self, ConnectionType, IntroductionRequest, Packet, Synchronization};

    impl Node {
        /// Bytes a filter may take in an introduction-request of `community`: what the datagram
        /// budget leaves after the largest request without filter bytes.
        pub(crate) fn filter_bytes(&self, community: CommunityId) -> usize {
            let v6: SocketAddr = "[ffff::ffff]:65535".parse().unwrap_or(self.lan);
            let probe = |bloom: usize| {
                Packet::IntroductionRequest(IntroductionRequest {
                    community,
                    member: self.key.public().clone(),
                    session: u32::MAX,
                    walk: u32::MAX,
                    random: u32::MAX,
                    global_time: u64::MAX,
                    destination: v6,
                    source_lan: v6,
                    source_wan: v6,
                    connection_type: ConnectionType::SymmetricNat,
                    advice: true,
                    sync: Some(Synchronization {
                        low: u64::MAX,
                        high: u64::MAX,
                        modulo: u32::MAX,
                        offset: u64::MAX,
                        functions: 64,
                        prefix: u32::MAX,
                        bloom: vec![0; bloom],
                    }),
                })
                .encode(&self.key)
                .len()
            };
            let overhead = probe(1000) - 1000;
            self.config.max_datagram.saturating_sub(overhead + 4).max(8)
        }

        /// Sends our introduction-request, with a sync part when the community syncs: a reused
        /// filter, none (skip), or a new one built from the store's rows (then the request waits
        /// for [`Node::handle_sync_query`]).
        pub(crate) fn send_request(
            &mut self,
            now: Instant,
            id: CommunityId,
            target: SocketAddr,
            mut request: IntroductionRequest,
        ) {
            let timeout = self.config.sync.store_timeout;
            let Some(c) = self.communities.get_mut(&id) else {
                return;
            };
            let syncs = c.definition.as_ref().is_some_and(|d| d.syncs());
            if !syncs || c.sync.filter_bytes == 0 {
                self.send(target, Packet::IntroductionRequest(request));
                return;
            }
            // A request still waiting for its rows goes now, without a filter.
            if let Some(stale) = c.sync.pending.take() {
                self.send(stale.target, Packet::IntroductionRequest(stale.request));
                let Some(c) = self.communities.get_mut(&id) else {
                    return;
                };
                c.stats.sync_skipped += 1;
            }
            let Some(c) = self.communities.get_mut(&id) else {
                return;
            };
            match c.sync.cache.next(&mut self.rng, target) {
                Next::Reuse(claim) => {
                    c.stats.sync_reused += 1;
                    request.sync = Some(synchronization(&claim));
                    self.send(target, Packet::IntroductionRequest(request));
                }
                Next::Skip => {
                    c.stats.sync_skipped += 1;
                    self.send(target, Packet::IntroductionRequest(request));
                }
                Next::New => {
                    let query = super::query(
                        &mut self.rng,
                        self.config.sync.strategy,
                        c.global_time,
                        c.sync.stored,
                        c.sync.capacity(),
                    );
                    c.sync.pending = Some(PendingQuery {
                        target,
                        request,
                        query,
                        deadline: now + timeout,
                    });
                    self.push(Event::SyncQuery {
                        community: id,
                        query,
                    });
                }
            }
        }

        /// The store did not answer in time: the walk goes without a filter.
        pub(crate) fn expire_sync_query(&mut self, now: Instant, id: CommunityId) {
            let Some(c) = self.communities.get_mut(&id) else {
                return;
            };
            if c.sync.pending.as_ref().is_some_and(|p| p.deadline <= now)
                && let Some(pending) = c.sync.pending.take()
            {
                c.stats.sync_skipped += 1;
                self.send(pending.target, Packet::IntroductionRequest(pending.request));
            }
        }

        /// The rows answering the [`Event::SyncQuery`] of `community` (`right` ascending, `left`
        /// descending): builds the filter and sends the waiting introduction-request.
        pub fn handle_sync_query(
            &mut self,
            now: Instant,
            community: CommunityId,
            right: Vec<Row>,
            left: Vec<Row>,
        ) {
            let margin = self.config.global_time_margin;
            let salt = self.rng.next_u32();
            let Some(c) = self.communities.get_mut(&community) else {
                return;
            };
            let Some(pending) = c.sync.pending.take() else {
                return;
            };
            let acceptable = c.acceptable_global_time(now, margin);
            let Ok(filter) = BloomFilter::sized(c.sync.filter_bytes, ERROR_RATE, salt) else {
                self.send(pending.target, Packet::IntroductionRequest(pending.request));
                return;
            };
            let capacity = c.sync.capacity();
            let claim = super::claim(pending.query, right, left, acceptable, filter, capacity);
            let mut request = pending.request;
            request.sync = Some(synchronization(&claim));
            c.sync.cache.sent(claim, pending.target);
            c.stats.sync_new += 1;
            self.send(pending.target, Packet::IntroductionRequest(request));
        }

        /// A request from `from` (over session `session`) carried a filter: ask the store for
        /// the rows of its range.
        pub(crate) fn request_sync_rows(
            &mut self,
            now: Instant,
            community: CommunityId,
            from: SocketAddr,
            session: u32,
            sync: &Synchronization,
        ) {
            let timeout = self.config.sync.store_timeout;
            let max = self.config.sync.max_responses;
            let margin = self.config.global_time_margin;
            let Some(c) = self.communities.get_mut(&community) else {
                return;
            };
            if !c.definition.as_ref().is_some_and(|d| d.syncs()) {
                return;
            }
            let Ok(filter) =
                BloomFilter::from_bytes(sync.bloom.clone(), sync.functions, sync.prefix)
            else {
                self.stats.dropped.bump("bad-filter");
                return;
            };
            let acceptable = c.acceptable_global_time(now, margin);
            let high = if sync.high == 0 {
                c.global_time
            } else {
                sync.high
            };
            let range = Range {
                low: sync.low,
                high: high.min(acceptable),
                modulo: sync.modulo,
                offset: sync.offset,
            };
            let budget = c.sync.budgets.budget(from, &range, &filter);
            let limit = super::rows_to_read(budget, filter.estimated_count(), c.sync.packet_size);
            if self.responses.len() >= max {
                self.stats.dropped.bump("sync-busy");
                return;
            }
            let metas = synced_metas(c);
            let request = self.next_response_id();
            self.responses.insert(
                request,
                PendingResponse {
                    community,
                    to: from,
                    session,
                    range,
                    filter,
                    budget,
                    deadline: now + timeout,
                },
            );
            self.push(Event::SyncRows {
                community,
                request,
                range,
                limit,
                metas,
            });
        }

        /// The rows answering [`Event::SyncRows`]: chooses what the requester lacks, within its
        /// budget, and asks for their packets.
        pub fn handle_sync_rows(&mut self, _now: Instant, request: u32, rows: Vec<Row>) {
            let Some(pending) = self.responses.get(&request) else {
                return;
            };
            let chosen = super::missing(&pending.filter, &pending.range, &rows, pending.budget);
            let (to, community) = (pending.to, pending.community);
            if !rows.is_empty()
                && let Some(c) = self.communities.get_mut(&community)
            {
                let mean = rows.iter().map(|r| r.size as usize).sum::<usize>() / rows.len();
                c.sync.packet_size = (c.sync.packet_size * 7 + mean) / 8;
            }
            if chosen.is_empty() {
                self.responses.remove(&request);
                return;
            }
            if let Some(c) = self.communities.get_mut(&community) {
                c.sync.budgets.sent(to, &chosen);
            }
            self.push(Event::SendPackets {
                request,
                rows: chosen.iter().map(|r| r.id).collect(),
            });
        }

        /// The packets answering [`Event::SendPackets`]: sent as collections.
        pub fn send_packets(&mut self, _now: Instant, request: u32, packets: Vec<Vec<u8>>) {
            let Some(pending) = self.responses.remove(&request) else {
                return;
            };
            let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
            // Each packet fits a datagram alone (it was received or created within the budget).
            let mut sent = 0;
            for chunk in refs.chunks(64) {
                match wire::encode_collections(pending.session, chunk, self.config.max_datagram) {
                    Ok(datagrams) => {
                        for datagram in datagrams {
                            self.send_bytes(pending.to, datagram);
                        }
                        sent += chunk.len();
                    }
                    Err(_) => self.stats.dropped.bump("oversized-stored-packet"),
                }
            }
            if let Some(c) = self.communities.get_mut(&pending.community) {
                c.stats.sync_packets_sent += sent as u64;
            }
        }

        /// The driver stored these syncable messages of `community` (hash, global time, source):
        /// counts them, and a cached filter covering them learns them.
        pub fn handle_stored(
            &mut self,
            community: CommunityId,
            stored: &[(PacketHash, u64, Option<SocketAddr>)],
        ) {
            if let Some(c) = self.communities.get_mut(&community) {
                c.sync.stored += stored.len() as u64;
                for (hash, global_time, source) in stored {
                    c.sync.cache.stored(hash, *global_time, *source);
                }
            }
        }
    }

    /// The synchronised metas of a community, highest priority first, with their order and the
    /// lowest global time still active (inactive messages of pruning metas are never offered).
    fn synced_metas(c: &crate::community::Community) -> Vec<(u32, crate::meta::SyncOrder, u64)> {
        use crate::meta::Distribution;
        let Some(definition) = &c.definition else {
            return Vec::new();
        };
        let mut metas: Vec<(u8, u32, crate::meta::SyncOrder, u64)> = definition
            .metas
            .iter()
            .filter(|m| m.is_synced())
            .filter_map(|m| match &m.distribution {
                Distribution::FullSync { order, .. } | Distribution::LastSync { order, .. } => {
                    let active_from = m
                        .distribution
                        .pruning()
                        .map_or(0, |p| (c.global_time + 1).saturating_sub(p.inactive_after));
                    Some((m.priority, m.id, *order, active_from))
                }
                _ => None,
            })
            .collect();
        metas.sort_by_key(|(priority, id, _, _)| (std::cmp::Reverse(*priority), *id));
        metas
            .into_iter()
            .map(|(_, id, order, active_from)| (id, order, active_from))
            .collect()
    }

    fn synchronization(claim: &Claim) -> Synchronization {
        Synchronization {
            low: claim.range.low,
            high: claim.range.high,
            modulo: claim.range.modulo,
            offset: claim.range.offset,
            functions: claim.filter.functions(),
            prefix: claim.filter.salt(),
            bloom: claim.filter.as_bytes().to_vec(),
        }
    }
}
