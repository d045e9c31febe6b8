//! Candidates: the peers a community knows, by address, and what it knows of them.
//!
//! A candidate is a temporary pointer to the address of a peer (seed: "Peer Discovery"). What the
//! node has seen from it puts it in a category, each with a lifetime (DESIGN.md §7):
//! - **walk**: it answered our introduction-request (57.5 s);
//! - **stumble**: it sent us an introduction-request (57.5 s);
//! - **intro**: another peer introduced it to us (27.5 s);
//! - **none**: nothing recent; such candidates are removed by [`Table::cleanup`].
//!
//! Walk and stumble candidates are *verified*: we heard from them within their lifetime, so their
//! NAT is most likely still open towards us. Trackers are not candidates: the community keeps them
//! apart as bootstrap addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::MemberId;
use crate::rng::Rng;
use crate::time::Instant;
use crate::wire::ConnectionType;

/// Lifetimes and bounds of the candidate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a walk candidate stays one after its last introduction-response.
    pub walk_lifetime: Duration,
    /// How long a stumble candidate stays one after its last introduction-request.
    pub stumble_lifetime: Duration,
    /// How long an introduced candidate stays one.
    pub intro_lifetime: Duration,
    /// How long after walking to a candidate it may be walked to again.
    pub eligible_delay: Duration,
    /// The same for trackers.
    pub tracker_eligible_delay: Duration,
    /// Most candidates kept per community.
    pub max_candidates: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            walk_lifetime: Duration::from_millis(57_500),
            stumble_lifetime: Duration::from_millis(57_500),
            intro_lifetime: Duration::from_millis(27_500),
            eligible_delay: Duration::from_millis(27_500),
            tracker_eligible_delay: Duration::from_millis(57_500),
            max_candidates: 1_000,
        }
    }
}

/// What the node has recently seen from a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Answered our introduction-request.
    Walk,
    /// Sent us an introduction-request.
    Stumble,
    /// Introduced to us by another peer.
    Intro,
    /// Nothing within any lifetime.
    None,
}

impl Category {
    /// The name used by the control API.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Walk => "walk",
            Category::Stumble => "stumble",
            Category::Intro => "intro",
            Category::None => "none",
        }
    }
}

/// One peer of a community.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The address we send to.
    pub address: SocketAddr,
    /// Its LAN address as last reported.
    pub lan: SocketAddr,
    /// Its WAN address as last reported or seen.
    pub wan: SocketAddr,
    /// The member behind it, once a signed message from it was verified.
    pub member: Option<MemberId>,
    /// Its connection type as it reported it.
    pub connection_type: ConnectionType,
    /// Its global time as it last reported it.
    pub global_time: u64,
    /// When it last answered our introduction-request.
    pub last_walk: Option<Instant>,
    /// When it last sent us an introduction-request.
    pub last_stumble: Option<Instant>,
    /// When it was last introduced to us.
    pub last_intro: Option<Instant>,
    /// When we last sent it an introduction-request.
    pub last_walk_attempt: Option<Instant>,
}

impl Candidate {
    fn new(address: SocketAddr) -> Self {
        Candidate {
            address,
            lan: address,
            wan: address,
            member: None,
            connection_type: ConnectionType::Unknown,
            global_time: 0,
            last_walk: None,
            last_stumble: None,
            last_intro: None,
            last_walk_attempt: None,
        }
    }

    /// The category at `now`, walk before stumble before intro.
    pub fn category(&self, now: Instant, config: &Config) -> Category {
        let within = |at: Option<Instant>, lifetime: Duration| {
            at.is_some_and(|at| now.saturating_since(at) < lifetime)
        };
        if within(self.last_walk, config.walk_lifetime) {
            Category::Walk
        } else if within(self.last_stumble, config.stumble_lifetime) {
            Category::Stumble
        } else if within(self.last_intro, config.intro_lifetime) {
            Category::Intro
        } else {
            Category::None
        }
    }

    /// Whether we heard from it within the walk or stumble lifetime.
    pub fn is_verified(&self, now: Instant, config: &Config) -> bool {
        matches!(
            self.category(now, config),
            Category::Walk | Category::Stumble
        )
    }

    /// Whether we may walk to it now.
    pub fn is_eligible(&self, now: Instant, config: &Config) -> bool {
        let rested = self
            .last_walk_attempt
            .is_none_or(|at| now.saturating_since(at) >= config.eligible_delay);
        rested && self.category(now, config) != Category::None
    }

    /// The most recent time we heard of it in any way.
    pub fn last_seen(&self) -> Option<Instant> {
        [self.last_walk, self.last_stumble, self.last_intro]
            .into_iter()
            .flatten()
            .max()
    }
}

/// Why a candidate was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// The table is full of candidates that are still alive.
    #[error("candidate table full")]
    Full,
}

/// The candidates of one community, bounded by [`Config::max_candidates`].
#[derive(Debug, Clone)]
pub struct Table {
    config: Config,
    candidates: HashMap<SocketAddr, Candidate>,
}

impl Table {
    /// An empty table.
    pub fn new(config: Config) -> Self {
        Table {
            config,
            candidates: HashMap::new(),
        }
    }

    /// The table's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The candidate at `address`, if known.
    pub fn get(&self, address: &SocketAddr) -> Option<&Candidate> {
        self.candidates.get(address)
    }

    /// All candidates, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.values()
    }

    /// Number of candidates, whatever their category.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The candidate at `address`, created when absent. When the table is full, a candidate in
    /// category none is evicted to make room; if there is none, the new one is refused.
    pub fn entry(&mut self, address: SocketAddr, now: Instant) -> Result<&mut Candidate, AddError> {
        if !self.candidates.contains_key(&address)
            && self.candidates.len() >= self.config.max_candidates
        {
            let config = &self.config;
            let victim = self
                .candidates
                .values()
                .filter(|c| c.category(now, config) == Category::None)
                .min_by_key(|c| c.last_seen())
                .map(|c| c.address)
                .ok_or(AddError::Full)?;
            self.candidates.remove(&victim);
        }
        Ok(self
            .candidates
            .entry(address)
            .or_insert_with(|| Candidate::new(address)))
    }

    /// Verified candidates (walk or stumble) at `now`.
    pub fn verified(&self, now: Instant) -> impl Iterator<Item = &Candidate> {
        self.candidates
            .values()
            .filter(move |c| c.is_verified(now, &self.config))
    }

    /// `count` distinct random verified candidates (fewer when fewer exist), excluding `exclude`.
    pub fn random_verified(
        &self,
        now: Instant,
        rng: &mut Rng,
        count: usize,
        exclude: Option<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .verified(now)
            .map(|c| c.address)
            .filter(|a| Some(*a) != exclude)
            .collect();
        // HashMap order is not deterministic across runs; sort before drawing.
        all.sort_unstable();
        rng.shuffle(&mut all);
        all.truncate(count);
        all
    }

    /// Chooses whom to walk to: a category with the seed's weights (walk 49.75 %, stumble
    /// 24.825 %, intro 24.825 %; an empty category's share goes to the others), then the eligible
    /// candidate of that category we walked to longest ago. `None` when nobody is eligible.
    pub fn choose_walk(&self, now: Instant, rng: &mut Rng) -> Option<SocketAddr> {
        const WEIGHTS: [(Category, f64); 3] = [
            (Category::Walk, 0.4975),
            (Category::Stumble, 0.24825),
            (Category::Intro, 0.24825),
        ];
        let mut oldest: [Option<&Candidate>; 3] = [None; 3];
        for candidate in self.candidates.values() {
            if !candidate.is_eligible(now, &self.config) {
                continue;
            }
            let slot = match candidate.category(now, &self.config) {
                Category::Walk => 0,
                Category::Stumble => 1,
                Category::Intro => 2,
                Category::None => continue,
            };
            let key = |c: &Candidate| (c.last_walk_attempt, c.address);
            if oldest[slot].is_none_or(|best| key(candidate) < key(best)) {
                oldest[slot] = Some(candidate);
            }
        }
        let total: f64 = WEIGHTS
            .iter()
            .zip(&oldest)
            .filter(|(_, c)| c.is_some())
            .map(|((_, w), _)| w)
            .sum();
        if total == 0.0 {
            return None;
        }
        let mut pick = rng.unit() * total;
        for ((_, weight), candidate) in WEIGHTS.iter().zip(&oldest) {
            if let Some(candidate) = candidate {
                if pick < *weight {
                    return Some(candidate.address);
                }
                pick -= weight;
            }
        }
        oldest.iter().flatten().last().map(|c| c.address)
    }

    /// Removes obsolete candidates: those not heard of for `obsolete_after` (seed: cleanup every
    /// five minutes of candidates older than three).
    pub fn cleanup(&mut self, now: Instant, obsolete_after: Duration) {
        self.candidates.retain(|_, c| {
            c.last_seen()
                .is_some_and(|seen| now.saturating_since(seen) < obsolete_after)
        });
    }

    /// Removes the candidates at `addresses` (our own addresses, once we learn them).
    pub fn remove(&mut self, addresses: &[SocketAddr]) {
        for address in addresses {
            self.candidates.remove(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn categories_follow_lifetimes() {
        let config = Config::default();
        let mut c = Candidate::new(addr(1));
        let t0 = Instant::from_millis(1_000_000);
        assert_eq!(c.category(t0, &config), Category::None);
        c.last_intro = Some(t0);
        assert_eq!(c.category(t0, &config), Category::Intro);
        assert_eq!(
            c.category(t0 + Duration::from_millis(27_499), &config),
            Category::Intro
        );
        assert_eq!(
            c.category(t0 + Duration::from_millis(27_500), &config),
            Category::None
        );
        c.last_stumble = Some(t0);
        assert_eq!(c.category(t0, &config), Category::Stumble);
        c.last_walk = Some(t0);
        assert_eq!(c.category(t0, &config), Category::Walk);
        assert_eq!(
            c.category(t0 + Duration::from_millis(57_500), &config),
            Category::None
        );
    }

    #[test]
    fn eligibility_waits_after_a_walk() {
        let config = Config::default();
        let t0 = Instant::from_millis(1_000_000);
        let mut c = Candidate::new(addr(1));
        c.last_walk = Some(t0);
        assert!(c.is_eligible(t0, &config));
        c.last_walk_attempt = Some(t0);
        assert!(!c.is_eligible(t0 + Duration::from_millis(27_499), &config));
        c.last_walk = Some(t0 + Duration::from_millis(20_000));
        assert!(c.is_eligible(t0 + Duration::from_millis(27_500), &config));
    }

    #[test]
    fn full_table_evicts_only_dead_candidates() {
        let config = Config {
            max_candidates: 2,
            ..Config::default()
        };
        let mut table = Table::new(config);
        let t0 = Instant::from_millis(100_000);
        table.entry(addr(1), t0).unwrap().last_stumble = Some(t0);
        table.entry(addr(2), t0).unwrap().last_stumble = Some(t0);
        assert_eq!(table.entry(addr(3), t0).err(), Some(AddError::Full));
        let later = t0 + Duration::from_secs(60);
        table.entry(addr(3), later).unwrap().last_stumble = Some(later);
        assert_eq!(table.len(), 2);
        // Candidate 2 is in category none but not yet obsolete.
        table.cleanup(later, Duration::from_secs(180));
        assert_eq!(table.len(), 2);
        table.cleanup(t0 + Duration::from_secs(180), Duration::from_secs(180));
        assert_eq!(table.len(), 1);
        table.remove(&[addr(3)]);
        assert!(table.is_empty());
    }

    #[test]
    fn walk_choice_follows_category_weights_and_oldest_first() {
        let mut table = Table::new(Config::default());
        let t0 = Instant::from_millis(1_000_000);
        for port in 1..=3 {
            let c = table.entry(addr(port), t0).unwrap();
            c.last_walk = Some(t0);
            c.last_walk_attempt = Some(t0 - Duration::from_secs(100 - u64::from(port)));
        }
        table.entry(addr(10), t0).unwrap().last_stumble = Some(t0);
        table.entry(addr(20), t0).unwrap().last_intro = Some(t0);
        let mut rng = Rng::new(5);
        let mut counts: HashMap<SocketAddr, u32> = HashMap::new();
        let n = 40_000;
        for _ in 0..n {
            *counts
                .entry(table.choose_walk(t0, &mut rng).unwrap())
                .or_default() += 1;
        }
        // Only the oldest walk candidate is ever chosen from the walk category.
        assert_eq!(counts.get(&addr(2)), None);
        assert_eq!(counts.get(&addr(3)), None);
        let share = |a| f64::from(counts[&a]) / f64::from(n);
        let total = 0.4975 + 0.24825 + 0.24825;
        assert!((share(addr(1)) - 0.4975 / total).abs() < 0.02);
        assert!((share(addr(10)) - 0.24825 / total).abs() < 0.02);
        assert!((share(addr(20)) - 0.24825 / total).abs() < 0.02);
    }
}
