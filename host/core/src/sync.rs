//! Bloom-filter synchronisation, the pure parts (seed: "Bloom filter"; original-implementation
//! §3.3–3.5): which range of global times a new filter covers, what goes in it, when a filter is
//! reused or the sync part skipped, which stored messages a responder offers, and how large a
//! response may be.
//!
//! The core does no I/O: the driver runs the queries these functions describe (a [`Query`]) over
//! its store and hands the [`Row`]s back. Rows carry each packet's hash, computed once when it
//! was stored, so neither side hashes packets per round. The node's sync steps (attaching
//! filters to walks, follow-up rounds, answering filters, `handle_stored`) are in `node/sync.rs`.

use std::collections::{HashMap, VecDeque};
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
    /// Largest response budget per request, in bytes. The default, 1 MiB (about 4,000 messages
    /// of 250 bytes, some 700 datagrams), is reached after eight lossless rounds; it makes a
    /// catch-up need few rounds, and it stays far below the 4 MiB receive buffer of the host.
    pub max_budget: usize,
    /// Requesters whose budget is remembered.
    pub max_peers: usize,
    /// Sync requests being answered at once (waiting for the store).
    pub max_responses: usize,
    /// How long a walk waits for the store's rows before it goes without a filter, and a
    /// response for its rows before it is dropped.
    pub store_timeout: std::time::Duration,
    /// Follow-up rounds: after a round with a peer brought messages, the next request to it
    /// goes once no message from it was stored for this long (the round is complete), without
    /// waiting for the walk. See [`Chase`]. It must exceed the host's gaps between two stored
    /// batches of one response: too short (20 ms in the catch-up benchmark), a round goes before
    /// the last one is stored, and the responder sends again what is still being stored.
    pub follow_up_quiet: std::time::Duration,
    /// A follow-up round that brings nothing within this long ends the follow-ups; sync goes
    /// back to riding on walks.
    pub follow_up_timeout: std::time::Duration,
    /// Most follow-up rounds in a row with one peer (0: none, the original's walk-driven sync
    /// only); a sweep after them has as many again at most.
    pub max_follow_ups: u32,
    /// A chase that brought at least this many messages ends with a sweep (see [`Chase`]): a
    /// catch-up whose losses fell below the follow-ups' windows is completed in seconds, not by
    /// walks in minutes. 0: no sweep.
    pub sweep_after: u64,
    /// A sweep round that brings nothing is followed by the next one after this long (one that
    /// brings messages, once they are stored, as follow-ups are).
    pub sweep_gap: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            strategy: Strategy::Largest,
            min_budget: 5 * 1024,
            max_budget: 1024 * 1024,
            max_peers: 1_024,
            max_responses: 64,
            store_timeout: std::time::Duration::from_secs(2),
            follow_up_quiet: std::time::Duration::from_millis(50),
            follow_up_timeout: std::time::Duration::from_secs(2),
            max_follow_ups: 1_000,
            sweep_after: 1_000,
            sweep_gap: std::time::Duration::from_millis(100),
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
    /// When to send it without a filter (a walk) or drop it (a follow-up round).
    pub deadline: Instant,
    /// A follow-up round ([`Chase`]): its filter is a [`window`] of our newest rows, and it is
    /// not remembered for reuse.
    pub follow_up: bool,
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
    /// Our request waiting for the rows of its filter (one store query per community at a
    /// time).
    pub pending: Option<PendingQuery>,
    /// Running average size of the packets we offer, to know how many rows fill a budget.
    pub packet_size: usize,
    /// Follow-up rounds with the peer of a productive round, while they bring messages.
    pub chase: Option<Chase>,
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
            chase: None,
        }
    }

    /// How many packets one of our filters holds.
    pub fn capacity(&self) -> usize {
        crate::bloom::capacity(self.filter_bytes * 8, ERROR_RATE).max(1)
    }

    /// How many of our newest rows the filter of a follow-up round holds: an eighth of
    /// [`State::capacity`]. A filter that full has a false-positive rate of about 4 in 100
    /// million instead of 1 in 100 (7 functions, 77 bits per row). A message the responder
    /// wrongly believes we have is not offered again by later follow-ups once it is below their
    /// windows, and walk-driven rounds find a few messages deep in a large history only slowly;
    /// so a catch-up of 100,000 messages must expect far less than one. The window still holds
    /// plenty of the last response for the responder to judge its budget by.
    pub fn window(&self) -> usize {
        (self.capacity() / 8).max(1)
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
    /// Up to `limit` rows with global time ≤ `high`, descending ("left"; a sweep round of a
    /// [`Chase`]).
    Below {
        /// The highest global time.
        high: u64,
        /// How many rows at most.
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

/// Fills up to `room` more slots of a selection with `rows` (ordered away from the pivot), as
/// the original does when more than 25 slots remain: the rows kept and where the range must end
/// (the global time left out whole, `None` when every row fitted). `None` when too little room
/// remains.
fn top_up(rows: Vec<Row>, room: usize) -> Option<(Vec<Row>, Option<u64>)> {
    (room > 25).then(|| cut(rows, room))
}

/// A filter to send, and the range it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The range.
    pub range: Range,
    /// The filter over the stored rows in the range.
    pub filter: BloomFilter,
    /// How many rows the filter holds (what it learns later included).
    pub held: usize,
}

/// Builds the filter for `query` from the rows the driver read (`right` ascending; `left`
/// descending, empty for [`Query::Oldest`]); `acceptable` caps the range.
pub fn claim(
    query: Query,
    right: Vec<Row>,
    left: Vec<Row>,
    acceptable: u64,
    filter: BloomFilter,
    capacity: usize,
) -> Claim {
    let (rows, range) = match query {
        Query::Below { high, .. } => return window(left, high.min(acceptable), filter, capacity),
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
            // Rows at the pivot come back on both sides; each side tops up from the other's
            // rows strictly beyond the pivot.
            let below: Vec<Row> = left
                .iter()
                .filter(|r| r.global_time < pivot)
                .copied()
                .collect();
            let above: Vec<Row> = right
                .iter()
                .filter(|r| r.global_time > pivot)
                .copied()
                .collect();
            let (mut right_rows, right_cut) = cut(right, capacity);
            let mut right_range = Range {
                low: pivot,
                high: right_cut.map_or(acceptable, |at| at - 1),
                modulo: 1,
                offset: 0,
            };
            if right_cut.is_none() {
                // Room left on the right (the newest history is short): top up below the pivot,
                // so that the filter covers as much history as it can hold.
                if let Some((rows, low)) = top_up(below, capacity - right_rows.len()) {
                    right_rows.extend(rows);
                    right_range.low = low.map_or(1, |at| at + 1);
                }
                (right_rows, right_range)
            } else {
                // A full right side: the left side may span more global time (a sparser region,
                // covering more history per filter); keep the wider. A left side that is not
                // full (the pivot is near the oldest history) tops up above the pivot, so
                // that the oldest messages are covered by more than pivots at 1.
                let (mut left_rows, left_cut) = cut(left, capacity);
                let mut left_range = Range {
                    low: left_cut.map_or(1, |at| at + 1),
                    high: pivot,
                    modulo: 1,
                    offset: 0,
                };
                if left_cut.is_none()
                    && let Some((rows, high)) = top_up(above, capacity - left_rows.len())
                {
                    left_rows.extend(rows);
                    left_range.high = high.map_or(acceptable, |at| at - 1);
                }
                let width = |r: &Range| r.high.saturating_sub(r.low);
                if width(&left_range) > width(&right_range) {
                    (left_rows, left_range)
                } else {
                    (right_rows, right_range)
                }
            }
        }
    };
    let range = Range {
        low: range.low.min(acceptable).max(1),
        high: range.high.min(acceptable),
        ..range
    };
    Claim::of(range, &rows, filter)
}

impl Claim {
    /// The claim over `range` whose filter holds those of `rows` in it.
    fn of(range: Range, rows: &[Row], mut filter: BloomFilter) -> Claim {
        let mut held = 0;
        for row in rows.iter().filter(|r| range.contains(r.global_time)) {
            filter.insert(&row.hash);
            held += 1;
        }
        Claim {
            range,
            filter,
            held,
        }
    }
}

/// Builds the filter of a follow-up round ([`Chase`]) from our newest stored rows (`newest`,
/// descending by global time, as the left side of a [`Query::Pivot`] above every global time
/// comes back): it holds at most `window` of them, never splitting a global time, and the range
/// runs from just above the first one left out (or from 1) to `acceptable`. So the responder
/// offers what it has beyond what we hold, plus what we miss among our newest rows: a
/// catch-up from a peer that sends in ascending order moves up by a whole response per round,
/// and a message lost or wrongly filtered in the last round is offered again. Rows below the
/// window are left to walk-driven rounds.
pub fn window(newest: Vec<Row>, acceptable: u64, filter: BloomFilter, window: usize) -> Claim {
    let (rows, cut_at) = cut(newest, window);
    let range = Range {
        low: cut_at
            .map_or(1, |at| at.saturating_add(1))
            .min(acceptable)
            .max(1),
        high: acceptable,
        modulo: 1,
        offset: 0,
    };
    Claim::of(range, &rows, filter)
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
/// messages (up to [`MAX_REUSE`] times) while it holds fewer rows than its capacity, and skip
/// sync more and more often after filters that brought nothing.
///
/// A reused filter learns every message stored in its range, so during a long catch-up it would
/// fill far beyond its capacity: its false-positive rate climbs towards 100 % and the responder
/// believes we hold everything. The cache therefore counts what the filter holds and builds a
/// new one (a new range, moving on) once it is full, even while it is productive.
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

/// How full a reused filter may get, as a fraction (numerator, denominator) of its capacity:
/// new filters hold up to their capacity (1 % false positives), so a productive one must be
/// allowed to learn some more to be reused at all; at 1.5 times its capacity its
/// false-positive rate is about 5.7 % (7 functions, 6.4 bits per row), the most of what we
/// lack it hides from the responder. Beyond, a new filter moves on.
pub const MAX_FILL: (usize, usize) = (3, 2);

impl Cache {
    /// Decides what the next request to `target` carries; `capacity` is what one filter holds.
    /// `behind`: the target last reported a higher global time than ours, so it holds messages
    /// we lack; such a request is never skipped (the original skips blindly, and a node whose
    /// first filters met an empty community would go on skipping 90 % of its rounds).
    pub fn next(
        &mut self,
        rng: &mut Rng,
        target: SocketAddr,
        capacity: usize,
        behind: bool,
    ) -> Next {
        if let Some(claim) = self.reuse(target, capacity) {
            return Next::Reuse(claim);
        }
        if let Some(last) = &self.last {
            if last.responses > 0 {
                self.skips = 0;
            } else if last.used <= 1 {
                self.skips = (self.skips + 1).min(SKIP_CURVE.len());
            }
        }
        if self.skips > 0 && !behind && rng.unit() < SKIP_CURVE[self.skips - 1] {
            self.last = None;
            return Next::Skip;
        }
        Next::New
    }

    /// The cached filter again, for `target`, if it brought messages since it was last sent,
    /// was used fewer than [`MAX_REUSE`] times and holds fewer than [`MAX_FILL`] times
    /// `capacity` rows.
    pub fn reuse(&mut self, target: SocketAddr, capacity: usize) -> Option<Claim> {
        let last = self.last.as_mut()?;
        let room = capacity.saturating_mul(MAX_FILL.0) / MAX_FILL.1;
        if last.responses == 0 || last.used >= MAX_REUSE || last.claim.held >= room {
            return None;
        }
        self.skips = 0;
        last.used += 1;
        last.responses = 0;
        last.target = Some(target);
        Some(last.claim.clone())
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
    /// Returns whether it counted as a response.
    pub fn stored(
        &mut self,
        hash: &PacketHash,
        global_time: u64,
        source: Option<SocketAddr>,
    ) -> bool {
        if let Some(last) = &mut self.last
            && last.claim.range.contains(global_time)
        {
            last.claim.filter.insert(hash);
            last.claim.held += 1;
            if source.is_some() && source == last.target {
                last.responses += 1;
                return true;
            }
        }
        false
    }
}

/// Follow-up rounds ("chase") with the peer `target` of a productive sync round.
///
/// A sync request rides on a walk step, and a walk to the same candidate waits its eligible
/// delay (27.5 s): a fresh node with one peer holding much would get one response per half
/// minute. Instead, once a round with a peer brought messages and none has been stored from it
/// for [`Config::follow_up_quiet`] (the response is complete and stored, so the next filter
/// holds it and the responder's budget sees it arrived), the node sends that peer a sync-only
/// introduction-request at once (advice off: the peer introduces nobody) whose filter is a
/// [`window`] of our newest rows. A round that brings nothing within
/// [`Config::follow_up_timeout`] ends the chase; so does reaching [`Config::max_follow_ups`]
/// rounds. Sync then rides on walks again (a later productive walk round starts a new chase).
/// One chase per community, one request of it in flight; while it runs, walk steps carry no
/// filter (the chase is the community's sync).
///
/// A message lost (or hidden by a false positive) below the windows is not offered by later
/// follow-ups, and a walk-driven round covers a given old message rarely (one filter's worth of
/// a large history). So a chase that brought at least [`Config::sweep_after`] messages ends
/// with a sweep: rounds whose filters hold our rows from the newest down, a filter's capacity
/// each ([`Query::Below`], [`window`]), until the oldest; what the peer has in between and we
/// lack comes back. A sweep round waits for its response as a follow-up does, or
/// [`Config::sweep_gap`] when nothing comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chase {
    /// The peer.
    pub target: SocketAddr,
    /// Follow-up requests sent so far.
    pub rounds: u32,
    /// When the current round began (its request was sent, or the walk round's first message
    /// was stored).
    pub since: Instant,
    /// When a message of the current round was last stored from the target; `None` while the
    /// round has brought nothing.
    pub last_arrival: Option<Instant>,
    /// The walk identifier of the follow-up request in flight, if any.
    pub walk: Option<u32>,
    /// Messages stored from the target during the chase.
    pub brought: u64,
    /// The sweep, once it runs.
    pub sweep: Option<Sweep>,
}

/// Where a [`Chase`]'s sweep is. A round that brought messages is repeated (some of its
/// response may have been lost); one that brought nothing is followed by the next range down;
/// after the oldest, a pass that brought anything is followed by another from the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// The current round covers our rows at or below this global time.
    pub high: u64,
    /// The highest global time below the current round's range (0: it reached the oldest).
    pub below: u64,
    /// Whether a round of this pass brought messages.
    pub brought: bool,
}

impl Sweep {
    /// The first round of a sweep: our newest rows.
    fn start() -> Self {
        Sweep {
            high: u64::MAX,
            below: u64::MAX,
            brought: false,
        }
    }

    /// The round after the current one, which `brought` messages or not; `None`: the sweep is
    /// over.
    fn next(&self, brought: bool) -> Option<Sweep> {
        if brought {
            Some(Sweep {
                brought: true,
                ..*self
            })
        } else if self.below > 0 {
            Some(Sweep {
                high: self.below,
                below: self.below,
                brought: self.brought,
            })
        } else if self.brought {
            Some(Sweep::start())
        } else {
            None
        }
    }
}

/// What a [`Chase`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaseStep {
    /// Nothing before this time.
    Wait(Instant),
    /// Send the next follow-up request now.
    Send,
    /// The chase is over.
    Stop,
}

impl Chase {
    /// A chase with `target`, whose (walk) round brought a message at `now`.
    pub fn begin(target: SocketAddr, now: Instant) -> Self {
        Chase {
            target,
            rounds: 0,
            since: now,
            last_arrival: Some(now),
            walk: None,
            brought: 1,
            sweep: None,
        }
    }

    /// A message from the target was stored at `now`.
    pub fn arrived(&mut self, now: Instant) {
        self.last_arrival = Some(now);
        self.brought += 1;
    }

    /// When the chase next has something to do.
    pub fn due(&self, config: &Config) -> Instant {
        match (self.last_arrival, self.sweep) {
            (Some(at), _) => at + config.follow_up_quiet,
            (None, None) => self.since + config.follow_up_timeout,
            (None, Some(_)) => self.since + config.sweep_gap,
        }
    }

    /// What to do at `now`. When the follow-ups are over and the chase has earned a sweep, the
    /// sweep begins (its first round is due at once).
    pub fn step(&mut self, now: Instant, config: &Config) -> ChaseStep {
        let due = self.due(config);
        if now < due {
            return ChaseStep::Wait(due);
        }
        match self.sweep {
            None if self.last_arrival.is_some() && self.rounds < config.max_follow_ups => {
                ChaseStep::Send
            }
            None if config.sweep_after > 0 && self.brought >= config.sweep_after => {
                self.sweep = Some(Sweep::start());
                self.rounds = 0;
                ChaseStep::Send
            }
            Some(sweep)
                if self.rounds < config.max_follow_ups
                    && sweep.next(self.last_arrival.is_some()).is_some() =>
            {
                ChaseStep::Send
            }
            _ => ChaseStep::Stop,
        }
    }

    /// The next follow-up request (walk identifier `walk`) was sent at `now`. A sweep moves on
    /// by what its previous round brought.
    pub fn sent(&mut self, now: Instant, walk: u32) {
        if let Some(sweep) = self.sweep
            && self.rounds > 0
        {
            self.sweep = sweep.next(self.last_arrival.is_some());
        }
        self.rounds += 1;
        self.since = now;
        self.last_arrival = None;
        self.walk = Some(walk);
    }
}

/// The response budget towards one requester, adapted to what arrives (AIMD): the responder
/// remembers the hashes and global times it sent last time; when the requester's next filter
/// contains (nearly) all of those inside its range, they arrived and the budget doubles, up to
/// `max`; when many are missing, the path is lossy or slow and the budget halves, down to `min`
/// (the original's fixed 5 KiB is `min == max`). Only rows inside the new range count: a filter
/// elsewhere (or a follow-up's window, which holds the newest part of the last response only)
/// says nothing about the others; a request whose range holds none of them leaves the budget as
/// it is.
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
    /// (hash, global time) of the rows of our last response.
    sent: Vec<(PacketHash, u64)>,
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
        let (mut inside, mut arrived) = (0usize, 0usize);
        for (hash, global_time) in &state.sent {
            if range.contains(*global_time) {
                inside += 1;
                if filter.contains(hash) {
                    arrived += 1;
                }
            }
        }
        if inside > 0 {
            if arrived * 10 >= inside * 9 {
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
                    sent: Vec::new(),
                },
            );
        }
        if let Some(state) = self.peers.get_mut(&peer) {
            state.sent = rows.iter().map(|r| (r.hash, r.global_time)).collect();
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
                Query::Below { .. } => panic!("walks never sweep"),
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
        assert_eq!(cache.next(&mut rng, target, 1059, false), Next::New);
        let claim = Claim {
            range: Range {
                low: 1,
                high: 100,
                modulo: 1,
                offset: 0,
            },
            filter: empty_filter(1),
            held: 0,
        };
        cache.sent(claim.clone(), target);
        let r = row(1, 50);
        cache.stored(&r.hash, 50, Some(target));
        match cache.next(&mut rng, target, 1059, false) {
            Next::Reuse(again) => assert!(again.filter.contains(&r.hash)),
            other => panic!("expected reuse, got {other:?}"),
        }
        // Fruitless filters: after a few, some requests carry no sync part.
        let mut skipped = 0;
        for _ in 0..200 {
            match cache.next(&mut rng, target, 1059, false) {
                Next::Skip => skipped += 1,
                Next::New => cache.sent(claim.clone(), target),
                Next::Reuse(_) => {}
            }
        }
        assert!(skipped > 50, "{skipped}");
        // Unless the target told us it holds more (a higher global time than ours).
        for _ in 0..50 {
            assert_ne!(cache.next(&mut rng, target, 1059, true), Next::Skip);
        }
    }

    #[test]
    fn a_productive_filter_is_not_reused_once_it_is_too_full() {
        let mut rng = Rng::new(9);
        let target: SocketAddr = "10.0.0.1:1".parse().expect("address");
        let mut cache = Cache::default();
        let claim = Claim {
            range: Range {
                low: 1,
                high: 10_000,
                modulo: 1,
                offset: 0,
            },
            filter: empty_filter(1),
            held: 0,
        };
        cache.sent(claim, target);
        // Every round brings 40 messages; a filter holds 100, reuse stops at 150: reused three
        // times (at 40, 80 and 120), then full.
        let mut reused = 0;
        let mut gt = 0;
        loop {
            for _ in 0..40 {
                gt += 1;
                assert!(cache.stored(&row(gt, gt).hash, gt, Some(target)));
            }
            match cache.next(&mut rng, target, 100, false) {
                Next::Reuse(again) => {
                    assert!(again.held < 150, "{}", again.held);
                    reused += 1;
                }
                // Productive but full: a new filter (a new range), never a skip.
                Next::New => break,
                Next::Skip => panic!("a productive filter is never followed by a skip"),
            }
        }
        assert_eq!(reused, 3);
        // A message from someone else is learnt but is no response.
        let other: SocketAddr = "10.0.0.9:1".parse().expect("address");
        assert!(!cache.stored(&row(999, 5).hash, 5, Some(other)));
    }

    #[test]
    fn a_follow_up_window_holds_our_newest_rows_and_reaches_past_them() {
        // Newest first, as the left side of a pivot above everything comes back; 5 rows for a
        // window of 3, rows 2 and 3 share global time 80.
        let newest = vec![row(1, 100), row(2, 90), row(3, 80), row(4, 80), row(5, 70)];
        let claim = window(newest.clone(), 10_100, empty_filter(4), 3);
        assert_eq!(
            claim.range,
            Range {
                low: 81,
                high: 10_100,
                modulo: 1,
                offset: 0
            }
        );
        assert_eq!(claim.held, 2);
        assert!(claim.filter.contains(&newest[0].hash) && claim.filter.contains(&newest[1].hash));
        // Fewer rows than the window: everything from the start.
        let claim = window(newest[..2].to_vec(), 10_100, empty_filter(4), 3);
        assert_eq!(claim.range.low, 1);
        // Nothing stored: everything.
        let claim = window(Vec::new(), 10_001, empty_filter(4), 3);
        assert_eq!(
            (claim.range.low, claim.range.high, claim.held),
            (1, 10_001, 0)
        );
    }

    #[test]
    fn a_chase_follows_up_when_a_round_is_complete_and_stops_when_one_brings_nothing() {
        let config = Config {
            follow_up_quiet: std::time::Duration::from_millis(50),
            follow_up_timeout: std::time::Duration::from_secs(2),
            max_follow_ups: 3,
            ..Config::default()
        };
        let target: SocketAddr = "10.0.0.1:1".parse().expect("address");
        let t = |ms: u64| Instant::from_millis(ms);
        let mut chase = Chase::begin(target, t(1_000));
        // Messages keep arriving: the round is not complete.
        chase.arrived(t(1_040));
        assert_eq!(chase.step(t(1_060), &config), ChaseStep::Wait(t(1_090)));
        assert_eq!(chase.step(t(1_090), &config), ChaseStep::Send);
        chase.sent(t(1_090), 7);
        // The request is out; nothing yet: wait up to the timeout.
        assert_eq!(chase.step(t(1_500), &config), ChaseStep::Wait(t(3_090)));
        chase.arrived(t(1_600));
        assert_eq!(chase.step(t(1_650), &config), ChaseStep::Send);
        chase.sent(t(1_650), 8);
        // A round that brings nothing ends it.
        assert_eq!(chase.step(t(3_650), &config), ChaseStep::Stop);
        // So does the bound on rounds.
        let mut chase = Chase::begin(target, t(0));
        for round in 0..3u64 {
            assert_eq!(chase.step(t(100 * round + 50), &config), ChaseStep::Send);
            chase.sent(t(100 * round + 50), 1);
            chase.arrived(t(100 * round + 60));
        }
        assert_eq!(chase.step(t(1_000), &config), ChaseStep::Stop);
    }

    #[test]
    fn a_chase_that_brought_enough_ends_with_a_sweep_that_repeats_what_brings_messages() {
        let config = Config {
            follow_up_quiet: std::time::Duration::from_millis(50),
            follow_up_timeout: std::time::Duration::from_secs(2),
            max_follow_ups: 100,
            sweep_after: 3,
            sweep_gap: std::time::Duration::from_millis(100),
            ..Config::default()
        };
        let target: SocketAddr = "10.0.0.1:1".parse().expect("address");
        let t = |ms: u64| Instant::from_millis(ms);
        // Too little brought: no sweep.
        let mut small = Chase::begin(target, t(0));
        assert_eq!(small.step(t(50), &config), ChaseStep::Send);
        small.sent(t(50), 1);
        assert_eq!(small.step(t(2_050), &config), ChaseStep::Stop);
        assert_eq!(small.sweep, None);
        // Enough: the sweep starts from our newest rows, at once.
        let mut chase = Chase::begin(target, t(0));
        chase.arrived(t(10));
        chase.arrived(t(20));
        assert_eq!(chase.step(t(70), &config), ChaseStep::Send);
        chase.sent(t(70), 1);
        assert_eq!(chase.step(t(2_070), &config), ChaseStep::Send);
        assert_eq!(chase.sweep, Some(Sweep::start()));
        chase.sent(t(2_070), 2);
        assert_eq!(chase.sweep.map(|s| s.high), Some(u64::MAX));
        // What the driver found below the first round's range.
        let below = |chase: &mut Chase, at: u64| {
            if let Some(sweep) = chase.sweep.as_mut() {
                sweep.below = at;
            }
        };
        below(&mut chase, 500);
        // Nothing within the gap: the next range down.
        assert_eq!(chase.step(t(2_150), &config), ChaseStep::Wait(t(2_170)));
        assert_eq!(chase.step(t(2_170), &config), ChaseStep::Send);
        chase.sent(t(2_170), 3);
        assert_eq!(chase.sweep.map(|s| s.high), Some(500));
        below(&mut chase, 200);
        // It brought messages: once they are stored, the same range again.
        chase.arrived(t(2_200));
        assert_eq!(chase.step(t(2_250), &config), ChaseStep::Send);
        chase.sent(t(2_250), 4);
        assert_eq!(chase.sweep.map(|s| (s.high, s.brought)), Some((500, true)));
        below(&mut chase, 200);
        assert_eq!(chase.step(t(2_350), &config), ChaseStep::Send);
        chase.sent(t(2_350), 5);
        assert_eq!(chase.sweep.map(|s| s.high), Some(200));
        // The oldest reached in a pass that brought something: another pass from the newest.
        below(&mut chase, 0);
        assert_eq!(chase.step(t(2_450), &config), ChaseStep::Send);
        chase.sent(t(2_450), 6);
        assert_eq!(chase.sweep, Some(Sweep::start()));
        // A pass that brings nothing ends the sweep.
        below(&mut chase, 0);
        assert_eq!(chase.step(t(2_550), &config), ChaseStep::Stop);
    }

    #[test]
    fn budgets_judge_only_what_the_new_range_covers() {
        let peer: SocketAddr = "10.0.0.2:1".parse().expect("address");
        let mut budgets = Budgets::new(5 * 1024, 256 * 1024, 10);
        let rows: Vec<Row> = (1..=100).map(|i| row(i, i)).collect();
        let all = Range {
            low: 1,
            high: 1000,
            modulo: 1,
            offset: 0,
        };
        assert_eq!(budgets.budget(peer, &all, &empty_filter(1)), 5 * 1024);
        budgets.sent(peer, &rows);
        // A follow-up window over the newest 25 rows of the response, which all arrived.
        let newest = Range { low: 76, ..all };
        let mut filter = empty_filter(2);
        for r in &rows[75..] {
            filter.insert(&r.hash);
        }
        assert_eq!(budgets.budget(peer, &newest, &filter), 10 * 1024);
        // A range that holds none of the last response says nothing.
        budgets.sent(peer, &rows);
        let elsewhere = Range { low: 500, ..all };
        assert_eq!(
            budgets.budget(peer, &elsewhere, &empty_filter(3)),
            10 * 1024
        );
        // The same response judged later by an overlapping filter lacking it: halved.
        assert_eq!(budgets.budget(peer, &newest, &empty_filter(4)), 5 * 1024);
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
