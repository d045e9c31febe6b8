//! One community (overlay): its definition, its global time, its candidates.
//!
//! A community joined through a plugin has a [`Definition`] (the meta-messages the plugin exports).
//! A tracker also keeps bare communities, without a definition, for every community id it is asked
//! about: it walks nobody there and handles no messages, it only introduces peers.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::candidate;
use crate::destroy::Destroyed;
use crate::identity::{CommunityId, MemberId, PublicKey};
use crate::meta::{self, MetaMessage};
use crate::stats::CommunityStats;
use crate::sync;
use crate::time::Instant;
use crate::timeline::{Subject, Timeline};
use crate::undo::Undos;
use crate::wire::Conversion;

/// What a community type (plugin) declares about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// Community type name, e.g. `example`.
    pub name: String,
    /// Version of the plugin that defines it.
    pub version: String,
    /// The master member's public key; the community id is its member id.
    pub master: PublicKey,
    /// Conversions the plugin decodes, the first being the one it encodes new messages with.
    pub conversions: Vec<Conversion>,
    /// The meta-messages.
    pub metas: Vec<MetaMessage>,
    /// The ids of the plugin metas whose messages may be undone (undo-own by their author,
    /// undo-other by a member holding `undo` on the meta); the plugin declares them (its root
    /// module's `undoable`). Built-in metas are never undoable, whatever this lists.
    pub undoable: Vec<u32>,
}

/// Why a definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// A meta-message is invalid.
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    /// No conversion declared.
    #[error("a community must declare at least one conversion")]
    NoConversion,
    /// Empty or over-long name.
    #[error("community name {0:?} must be 1..=64 printable characters")]
    Name(String),
}

impl Definition {
    /// The community id: the member id of the master key.
    pub fn id(&self) -> CommunityId {
        self.master.community_id()
    }

    /// Checks the name, the conversions and every meta-message.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(DefinitionError::Name(self.name.clone()));
        }
        if self.conversions.is_empty() {
            return Err(DefinitionError::NoConversion);
        }
        meta::validate_all(&self.metas)?;
        Ok(())
    }

    /// The meta-message called `name`.
    pub fn meta_by_name(&self, name: &str) -> Option<&MetaMessage> {
        self.metas.iter().find(|m| m.name == name)
    }

    /// The meta-message of wire type `id`: one of the plugin's, or a handled built-in one
    /// ([`meta::builtin::metas`], part of every community).
    pub fn meta_by_id(&self, id: u32) -> Option<&MetaMessage> {
        self.metas
            .iter()
            .find(|m| m.id == id)
            .or_else(|| meta::builtin::meta(id))
    }

    /// Whether messages of meta `id` may be undone: a plugin meta the definition lists in
    /// [`Definition::undoable`]; never a built-in meta (rule 8 of [`crate::undo`]).
    pub fn is_undoable(&self, id: u32) -> bool {
        !meta::builtin::is_reserved(id)
            && self.undoable.contains(&id)
            && self.metas.iter().any(|m| m.id == id)
    }

    /// The name of a permission subject: the plugin meta's name (its wire type in decimal if
    /// the definition has no such meta), `dynamic-settings` or `destroy-community`.
    pub fn subject_name(&self, subject: Subject) -> String {
        match subject {
            Subject::Community(id) => self
                .metas
                .iter()
                .find(|m| m.id == id)
                .map_or_else(|| id.to_string(), |m| m.name.clone()),
            Subject::DynamicSettings => "dynamic-settings".into(),
            Subject::DestroyCommunity => "destroy-community".into(),
        }
    }

    /// The permission subject called `name` ([`Definition::subject_name`]): a plugin meta of
    /// the definition, `dynamic-settings` or `destroy-community`.
    pub fn subject_by_name(&self, name: &str) -> Option<Subject> {
        match name {
            "dynamic-settings" => Some(Subject::DynamicSettings),
            "destroy-community" => Some(Subject::DestroyCommunity),
            _ => self.meta_by_name(name).map(|m| Subject::Community(m.id)),
        }
    }

    /// Every meta-message of the community: the plugin's, then the handled built-in ones.
    pub fn all_metas(&self) -> impl Iterator<Item = &MetaMessage> {
        self.metas.iter().chain(meta::builtin::metas())
    }

    /// Whether any meta-message is synchronised (stored, priority above 32): always, since the
    /// built-in permission messages are.
    pub fn syncs(&self) -> bool {
        self.all_metas().any(MetaMessage::is_synced)
    }

    /// The resolutions of the plugin's metas, as the permission timeline takes them.
    pub fn resolutions(&self) -> impl Iterator<Item = (u32, meta::Resolution)> + '_ {
        self.metas.iter().map(|m| (m.id, m.resolution.clone()))
    }
}

/// State carried over from storage when a community is joined again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Highest global time of the stored messages (0 when none).
    pub global_time: u64,
    /// Highest sequence number of our own stored messages, by meta id.
    pub sequences: Vec<(u32, u32)>,
    /// Number of stored syncable messages.
    pub stored: u64,
    /// The stored authorize, revoke, dynamic-settings, undo-own, undo-other and
    /// destroy-community packets of the community, in any order: the permission timeline, the
    /// undo state and the destroyed state are rebuilt from them at join.
    pub authority: Vec<Vec<u8>>,
}

/// An introduction-request we sent, waiting for its response and for the puncture of the peer
/// it introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingWalk {
    /// Where it went.
    pub destination: SocketAddr,
    /// The random value the puncture must echo.
    pub random: u32,
    /// When it times out.
    pub deadline: Instant,
    /// Whether the introduction-response arrived.
    pub answered: bool,
    /// A sync-only request of follow-up rounds ([`sync::Chase`]), not a walk step: its
    /// response and its expiry are not counted as walk successes or failures.
    pub sync_only: bool,
}

impl Community {
    /// Registers an introduction-request to `destination` (a walk step, or a sync-only request
    /// when `sync_only`) under a fresh walk identifier; returns (walk, random).
    pub(crate) fn start_walk(
        &mut self,
        rng: &mut crate::rng::Rng,
        destination: SocketAddr,
        deadline: Instant,
        sync_only: bool,
    ) -> (u32, u32) {
        let walk = loop {
            let walk = rng.nonzero_u32();
            if !self.pending_walks.contains_key(&walk) {
                break walk;
            }
        };
        let random = rng.nonzero_u32();
        self.pending_walks.insert(
            walk,
            PendingWalk {
                destination,
                random,
                deadline,
                answered: false,
                sync_only,
            },
        );
        (walk, random)
    }
}

/// The state of one community in the node.
#[derive(Debug, Clone)]
pub struct Community {
    /// The id.
    pub id: CommunityId,
    /// The plugin's definition; `None` for a tracker's bare community.
    pub definition: Option<Definition>,
    /// The Lamport clock: the highest global time seen or claimed.
    pub global_time: u64,
    /// The peers.
    pub candidates: candidate::Table,
    /// When the next walk step is due.
    pub next_step: Instant,
    /// Our outstanding introduction-requests by walk identifier.
    pub pending_walks: HashMap<u32, PendingWalk>,
    /// Our last claimed sequence number per meta id.
    pub sequences: HashMap<u32, u32>,
    /// When each tracker last answered one of our walks.
    pub tracker_walks: HashMap<SocketAddr, Instant>,
    /// Counters.
    pub stats: CommunityStats,
    /// When anything last happened here (bare communities are forgotten when idle).
    pub last_activity: Instant,
    /// Until when the walker may take fast steps (while it knows few peers).
    pub fast_until: Instant,
    /// Semi round robin over walk and stumble candidates: the last one introduced of each.
    pub introduce_cursors: [Option<SocketAddr>; 2],
    /// Bloom-filter synchronisation state.
    pub sync: sync::State,
    /// Per pruning meta: messages below this global time were pruned.
    pub pruned_below: HashMap<u32, u64>,
    /// The permission timeline: the authorize, revoke and dynamic-settings records stored,
    /// rooted at the master member, for the resolutions of the definition's metas.
    pub timeline: Timeline,
    /// The undo state: the undo-own and undo-other records stored, which targets they undo.
    pub undos: Undos,
    /// The destroy message that destroyed (hard) or froze (soft) the community, if one did
    /// ([`crate::destroy`]).
    pub destroyed: Option<Destroyed>,
}

impl Community {
    /// A community with no candidates yet.
    pub fn new(
        id: CommunityId,
        definition: Option<Definition>,
        resume: Resume,
        candidates: candidate::Config,
        now: Instant,
        fast_until: Instant,
        sync: sync::State,
    ) -> Self {
        let timeline = timeline_of(id, definition.as_ref());
        Community {
            timeline,
            undos: Undos::new(),
            id,
            definition,
            global_time: resume.global_time.max(1),
            candidates: candidate::Table::new(candidates),
            next_step: now,
            pending_walks: HashMap::new(),
            sequences: resume.sequences.into_iter().collect(),
            tracker_walks: HashMap::new(),
            stats: CommunityStats::default(),
            last_activity: now,
            fast_until,
            introduce_cursors: [None, None],
            sync,
            pruned_below: HashMap::new(),
            destroyed: None,
        }
    }

    /// Whether a hard destroy ended the community ([`crate::destroy`], rule 1).
    pub fn is_hard_destroyed(&self) -> bool {
        self.destroyed
            .as_ref()
            .is_some_and(|d| d.degree == crate::authority::Degree::Hard)
    }

    /// Whether `signers` may create a message of `meta` at the next global time: always for a
    /// Public meta; else the timeline must allow every signer (Linear, or Dynamic resolving to
    /// Linear then).
    pub fn permits(&self, meta: &MetaMessage, signers: &[MemberId]) -> bool {
        meta.resolution == meta::Resolution::Public
            || self
                .timeline
                .may_all(
                    signers,
                    Subject::Community(meta.id),
                    self.global_time.saturating_add(1),
                )
                .is_allowed()
    }

    /// Claims the next global time for a new message.
    pub fn claim_global_time(&mut self) -> u64 {
        self.global_time = self.global_time.saturating_add(1);
        self.global_time
    }

    /// Claims the next global time for a message of ours of built-in meta `meta` numbered
    /// `sequence` (chosen by the caller), and records that number as claimed.
    pub fn claim_numbered(&mut self, meta: u32, sequence: u32) -> u64 {
        let global_time = self.claim_global_time();
        let numbered = self.sequences.entry(meta).or_insert(0);
        *numbered = (*numbered).max(sequence);
        global_time
    }

    /// Claims the next sequence number of meta `meta`.
    pub fn claim_sequence_number(&mut self, meta: u32) -> u32 {
        let next = self.sequences.entry(meta).or_insert(0);
        *next = next.saturating_add(1);
        *next
    }

    /// Raises the clock to `global_time` if it is higher.
    pub fn observe_global_time(&mut self, global_time: u64) {
        self.global_time = self.global_time.max(global_time);
    }

    /// Whether a message of `meta` with `global_time` is still active (pruning metas: younger
    /// than their inactive threshold; other metas: always).
    pub fn is_active(&self, meta: &MetaMessage, global_time: u64) -> bool {
        match meta.distribution.pruning() {
            Some(pruning) => self.global_time.saturating_sub(global_time) < pruning.inactive_after,
            None => true,
        }
    }

    /// The pruning metas whose removal threshold moved since last asked: (meta, remove every
    /// message with a lower global time). The caller tells the store.
    pub fn prune_thresholds(&mut self) -> Vec<(u32, u64)> {
        let Some(definition) = &self.definition else {
            return Vec::new();
        };
        let mut moved = Vec::new();
        for meta in &definition.metas {
            if let Some(pruning) = meta.distribution.pruning()
                && self.global_time > pruning.prune_after
            {
                let below = self.global_time - pruning.prune_after + 1;
                let last = self.pruned_below.entry(meta.id).or_insert(0);
                if below > *last {
                    *last = below;
                    moved.push((meta.id, below));
                }
            }
        }
        moved
    }

    /// The meta `id` of this community's definition (none for a bare community).
    pub fn meta(&self, id: u32) -> Option<&MetaMessage> {
        self.definition.as_ref()?.meta_by_id(id)
    }

    /// The highest global time a received persistent message may carry at `now`: our own global
    /// time or, when more than five verified neighbours reported theirs, their median if higher,
    /// plus `margin` (seed: "Global time"; original-implementation §5). A peer cannot push the
    /// clock far ahead and exhaust the 64-bit range.
    pub fn acceptable_global_time(&self, now: Instant, margin: u64) -> u64 {
        acceptable_global_time(
            self.global_time,
            self.candidates.verified(now).map(|c| c.global_time),
            margin,
        )
    }
}

/// An empty permission timeline of community `id` (rooted at its master member, whose member
/// id is the community id) for the resolutions of `definition`'s metas.
pub fn timeline_of(id: CommunityId, definition: Option<&Definition>) -> Timeline {
    let resolutions: Vec<(u32, meta::Resolution)> =
        definition.map_or_else(Vec::new, |d| d.resolutions().collect());
    Timeline::new(MemberId(id.0), resolutions)
}

/// `max(local, median of the neighbours' global times) + margin`, where the median counts only
/// with more than five non-zero values (the upper middle for an even count), capped at
/// `i64::MAX` (SQLite's integer range).
pub fn acceptable_global_time(
    local: u64,
    neighbours: impl Iterator<Item = u64>,
    margin: u64,
) -> u64 {
    let mut times: Vec<u64> = neighbours.filter(|t| *t > 0).collect();
    let median = if times.len() > 5 {
        times.sort_unstable();
        times[times.len() / 2]
    } else {
        0
    };
    local
        .max(median)
        .saturating_add(margin)
        .min(i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptable_global_time_uses_the_median_of_enough_neighbours() {
        assert_eq!(
            acceptable_global_time(7, [100, 200].into_iter(), 10_000),
            10_007
        );
        let many = [1, 2, 3, 500, 600, 700, 0, 0].into_iter();
        assert_eq!(acceptable_global_time(7, many, 10_000), 10_500);
        let liars = [u64::MAX; 6].into_iter();
        assert_eq!(acceptable_global_time(7, liars, 10_000), i64::MAX as u64);
    }
}
