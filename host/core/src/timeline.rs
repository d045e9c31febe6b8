//! The permission timeline of one community: who may do what, from which global time on.
//!
//! The timeline takes *records*, the decoded and signature-checked content of the authorize,
//! revoke and dynamic-settings messages of one community, in any order and with duplicates, and
//! answers permission checks. It is pure: the node decides where records come from, which
//! stored messages to check, and what to send.
//!
//! # Rules
//!
//! 1. **Root.** The master member holds every permission on every subject at every global time;
//!    it is the root of every chain. Records signed by the master are always valid.
//! 2. **Order.** Records are ordered by (global time, record id), the id being SHA-256 of the
//!    signed packet. The timeline is the left fold over the records in that order: whether a
//!    record is valid is decided by the fold of the records before it. The state therefore
//!    depends only on the *set* of records held, never on the order they arrived in. Within
//!    one global time the ids decide which record comes first, so a grant reliably counts for
//!    records of later global times (which a member's records after receiving it have: its
//!    clock has seen the grant's time).
//! 3. **Authorize.** A record granting G1..Gn is valid iff, for every Gi = (member, subject,
//!    permission), its author holds `Authorize` on `subject` *and* holds `permission` on
//!    `subject` at the record's global time: a member may grant only what it holds. All or
//!    nothing: an invalid record grants nothing. It stays held, and becomes valid if a record
//!    that sorts before it makes its author hold what it needs (and a valid one becomes invalid
//!    if a revoke that sorts before it takes that away).
//! 4. **Revoke.** A record revoking G1..Gn is valid iff its author holds `Revoke` on every
//!    subject it names at the record's global time. All or nothing, held like rule 3.
//! 5. **Holding.** Whether a member other than the master holds a permission on a subject at
//!    global time t: take the valid grant and revoke entries of (member, subject, permission)
//!    whose time is at most t (an entry's time is its record's global time, so a grant at t
//!    counts at t), keep those at the greatest such time; if one of them is a revoke the member
//!    does not hold it (at one global time a revoke beats a grant), else it does. No entry: it
//!    does not. Inside the fold (rule 2) only the entries of earlier records count.
//! 6. **Dynamic settings.** A settings record switching meta M to a policy is valid iff M's
//!    resolution is dynamic, the policy is one of M's listed policies, and its author holds
//!    `Permit` on [`Subject::DynamicSettings`] at its global time. The policy of M at time t
//!    comes from the valid settings of M with a global time T *strictly below* t (a setting is
//!    effective from the next global time), those with the greatest T; if they disagree, Linear
//!    beats Public. With no such setting, M's policy is its first listed one.
//! 7. **Checks.** A message of meta M by a member at time t ([`Timeline::may`]) is allowed if
//!    M's policy at t is Public, or if it is Linear and the member holds `Permit` on
//!    `Subject::Community(M)` at t. The built-in subjects ([`Subject::DynamicSettings`],
//!    [`Subject::DestroyCommunity`]) are always Linear. A message signed by several members
//!    ([`Timeline::may_all`]) is allowed iff every signer passes. An undo of another member's
//!    message of meta M ([`Timeline::may_undo_other`]) needs `Undo` on `Subject::Community(M)`,
//!    Linear whatever M's policy. The verdict carries its proof: when allowed, the valid grant
//!    records at the deciding time and the settings records that set the policy; when denied,
//!    the settings records that set the policy (sent to a peer whose policy disagrees).
//! 8. **Proof chains.** [`Timeline::proof_chain`] of a valid record lists the records that made
//!    its author hold what it needed, one level up (a requester asks again for the next link).
//! 9. **Changes.** [`Timeline::insert`] reports what the caller must check again among its
//!    stored messages: for every record whose validity changed (the inserted one, or a later one
//!    the insertion made valid or invalid), a grant or revoke of `Permit` or `Undo` to member X
//!    on subject S at time T reports (S, X, from T); a setting of meta M at T reports
//!    (`Community(M)`, every member, from T + 1). `Authorize` and `Revoke` entries gate only
//!    records, whose own changes are reported, so they are not reported themselves.
//! 10. **No removal.** Records are never removed (a destroyed community drops its timeline).
//! 11. **Digest.** [`Timeline::digest`] hashes the valid record ids in order and the effective
//!     entries: two timelines holding the same set of records have the same digest.
//! 12. **Bounds.** A timeline holds at most [`Timeline::with_limit`] records (by default
//!     [`DEFAULT_MAX_RECORDS`]), and a record carries 1..=[`MAX_GRANTS`] grants.
//! 13. **Authorities.** A member is an authority ([`Timeline::is_authority`]) if it is the
//!     master or some valid record grants it `Authorize` or `Revoke` on a subject, or `Permit`
//!     on [`Subject::DynamicSettings`], at any global time. A received record that is invalid
//!     when it arrives is held (stored, synced, invalid until a record before it makes it
//!     valid) if its author is an authority, and waits for its proof otherwise
//!     (`authority::judge`). An authority's records are numbered in one sequence per kind, so
//!     a record of its that a node left waiting (and dropped) would block every later one
//!     behind a sequence gap at that node, while a node that got it when it was valid holds
//!     it and the later ones: nodes would disagree for good (found by the convergence
//!     property test). An authority could create valid records at will, so holding its
//!     invalid ones opens no new way to fill the timeline; a member never granted authority
//!     still cannot make a node store records.
//!
//! # Convergence (issue 11, point 6)
//!
//! Rules 2, 5 and 6 make the state a function of the set of records held; the deterministic
//! answers to the cases the original left open are rule 5 (a grant and a revoke of one
//! permission at one global time: the revoke wins) and rule 6 (two settings at one global
//! time: Linear wins). Re-evaluation ([`Timeline::reevaluation`], and
//! [`Timeline::cosigned_reevaluation`] for messages two members sign, judged by both) is
//! computed from the timeline as it is after a change, so stored flags follow the set too. The
//! property test `sim/convergence_tests.rs` plays seeded random scripts of every permission
//! message into four simulated nodes in random orders, with loss and duplicates, and checks
//! equal digests, visible messages and hidden flags. What may differ between nodes, by design:
//! a message (or a record of a member that is no authority, rule 13) that a node's timeline
//! denies when it arrives waits for its proof and is not stored there, while a node that
//! received it earlier keeps it stored, hidden (or, for a record, invalid); both show the same
//! messages and hold the same valid records. Plugin messages of metas with sequence numbers
//! are exposed to the gap rule 13 fixes for records (a denied one that a node dropped blocks
//! the author's later ones there); the property test does not cover such metas.
//!
//! # Where we differ from the original (timeline.py)
//!
//! - The original applied records in arrival order and replayed them sorted only at load; we
//!   always fold in (global time, id) order, so every node holding the same records agrees.
//! - A grant and a revoke of one permission at one global time raised `NotImplementedError`;
//!   here the revoke wins (rule 5).
//! - Disagreeing settings at one global time were settled by the last writer; here Linear, the
//!   more restrictive policy, wins (rule 6).
//! - The original's check accepted an authorize if its author held the granted permission on
//!   any one target meta, and applied it if the author held `Authorize` on every target meta;
//!   here both are required of every grant, and an invalid record is applied nothing (rule 3).
//! - A rejected authorize or revoke stayed rejected until the next load; here it becomes valid
//!   as soon as the record it lacked is held, and every flip is reported (rule 9). The original
//!   re-evaluated stored messages only after a revoke or a setting, over the range from its
//!   global time to the local one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound::{Excluded, Unbounded};

use sha2::{Digest, Sha256};

use crate::identity::MemberId;
use crate::meta::{Resolution, StaticResolution};

/// The most grants (or revocations) one record may carry; the wire decoder enforces the same.
pub const MAX_GRANTS: usize = 1024;

/// The number of records a timeline holds unless [`Timeline::with_limit`] says otherwise.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;

/// What a member may do on a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Create messages of the subject (needed when its policy is Linear).
    Permit,
    /// Grant permissions on the subject to others.
    Authorize,
    /// Revoke permissions on the subject.
    Revoke,
    /// Undo other members' messages of the subject.
    Undo,
}

impl Permission {
    /// Every permission, in order.
    pub const ALL: [Permission; 4] = [
        Permission::Permit,
        Permission::Authorize,
        Permission::Revoke,
        Permission::Undo,
    ];

    /// The permission's name: `permit`, `authorize`, `revoke` or `undo`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Permit => "permit",
            Permission::Authorize => "authorize",
            Permission::Revoke => "revoke",
            Permission::Undo => "undo",
        }
    }

    /// The permission named `name` (as [`Permission::name`] gives it); `None` for any other
    /// text.
    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What a permission is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// The messages of one meta-message of the community's plugin (its wire type).
    Community(u32),
    /// The built-in dynamic-settings message (always Linear).
    DynamicSettings,
    /// The built-in destroy-community message (always Linear).
    DestroyCommunity,
}

/// One permission of one member on one subject, as an authorize or revoke record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    /// Who receives (or loses) the permission.
    pub member: MemberId,
    /// What it is on.
    pub subject: Subject,
    /// Which permission.
    pub permission: Permission,
}

/// The id of a record: SHA-256 of its signed packet. Records are ordered by (global time, id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; 32]);

impl RecordId {
    /// The id of the record carried by the signed packet `bytes`.
    pub fn of_packet(bytes: &[u8]) -> Self {
        RecordId(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", &hex::encode(&self.0[..4]))
    }
}

/// The content of one signature-checked authorize, revoke or dynamic-settings message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// SHA-256 of the signed packet; equal ids must mean equal records.
    pub id: RecordId,
    /// The signer.
    pub author: MemberId,
    /// The message's global time.
    pub global_time: u64,
    /// What it does.
    pub act: Act,
}

/// What a record does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Grants each permission to its member (rule 3).
    Authorize(Vec<Grant>),
    /// Takes each permission from its member (rule 4).
    Revoke(Vec<Grant>),
    /// Switches a meta of dynamic resolution to one of its policies from the next global time
    /// on (rule 6).
    Settings {
        /// The meta's wire type.
        meta: u32,
        /// The policy it switches to.
        policy: StaticResolution,
    },
}

impl Act {
    /// The grants an authorize or revoke names, with whether they are granted.
    fn grants(&self) -> Option<(&[Grant], bool)> {
        match self {
            Act::Authorize(grants) => Some((grants, true)),
            Act::Revoke(grants) => Some((grants, false)),
            Act::Settings { .. } => None,
        }
    }
}

/// The answer to a permission check, with the ids of the records that prove it (rule 7), in
/// (global time, id) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; `proof` holds the deciding grant records and the settings records that set the
    /// policy (empty for the master under a default policy, or a Public default).
    Allowed {
        /// Records to send to a peer that asks for the proof.
        proof: Vec<RecordId>,
    },
    /// Denied; `proof` holds the settings records that set the policy, if any.
    Denied {
        /// Records to send to the peer, to fix a policy disagreement.
        proof: Vec<RecordId>,
    },
}

impl Verdict {
    /// Whether the check passed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. })
    }

    /// The ids of the records that prove the verdict.
    pub fn proof(&self) -> &[RecordId] {
        match self {
            Verdict::Allowed { proof } | Verdict::Denied { proof } => proof,
        }
    }
}

/// Stored messages whose verdict an insertion may have changed (rule 9): those needing a
/// permission on `subject` (its meta's messages, and undoes of them), signed by `member` (by
/// anyone when `None`: a policy change), with a global time of at least `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The subject whose messages to check again.
    pub subject: Subject,
    /// Whose messages; `None` for every member's.
    pub member: Option<MemberId>,
    /// The lowest global time concerned.
    pub from: u64,
}

/// A run of global times, `low..=high`, over which one member's messages of one meta are all
/// allowed or all denied ([`Timeline::allowed_spans`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The first global time.
    pub low: u64,
    /// The last global time (inclusive).
    pub high: u64,
    /// Whether the member may create messages of the meta at these times.
    pub allowed: bool,
}

/// Whose stored messages a [`Reevaluation`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authors {
    /// The messages whose (first) author is this member.
    One(MemberId),
    /// Every author but these (sorted).
    AllBut(Vec<MemberId>),
    /// The double-member messages (a meta whose messages two members sign) whose two signers
    /// are, in either order, one matching the first [`Signers`] and the other the second
    /// ([`Timeline::cosigned_reevaluation`]); a message signed by one member never matches.
    Pair(Signers, Signers),
}

/// One side of an [`Authors::Pair`]: which members a signer may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signers {
    /// This member.
    One(MemberId),
    /// Every member but these (sorted).
    AllBut(Vec<MemberId>),
}

impl Signers {
    /// Whether `member` is one of these signers.
    pub fn matches(&self, member: &MemberId) -> bool {
        match self {
            Signers::One(one) => one == member,
            Signers::AllBut(excepted) => !excepted.contains(member),
        }
    }
}

impl Authors {
    /// Whether a stored message whose first author is `author`, and whose two signers are
    /// `signers` when two members signed it, is one of these authors' messages.
    pub fn matches(&self, author: &MemberId, signers: Option<(&MemberId, &MemberId)>) -> bool {
        match (self, signers) {
            (Authors::One(member), _) => member == author,
            (Authors::AllBut(members), _) => !members.contains(author),
            (Authors::Pair(a, b), Some((first, second))) => {
                (a.matches(first) && b.matches(second)) || (a.matches(second) && b.matches(first))
            }
            (Authors::Pair(..), None) => false,
        }
    }
}

/// The stored messages of some authors and one meta to judge again after a change
/// ([`Timeline::reevaluation`]): within each span, all of them are allowed or all denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reevaluation {
    /// Whose messages.
    pub authors: Authors,
    /// The spans, in order, covering the change's `from..=u64::MAX`.
    pub spans: Vec<Span>,
}

/// What [`Timeline::insert`] did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A record with this id is already held; nothing changed.
    Duplicate,
    /// The record is now held.
    Held {
        /// Whether it is valid now (an invalid one may become valid later).
        valid: bool,
        /// What to check again, at most one change per (subject, member), sorted.
        changes: Vec<Change>,
    },
}

/// Why [`Timeline::insert`] refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The timeline holds its maximum number of records.
    #[error("the timeline holds its maximum of {limit} records")]
    Full {
        /// The limit.
        limit: usize,
    },
    /// An authorize or revoke with no grant or more than [`MAX_GRANTS`].
    #[error("a record carries {count} grants, 1..={MAX_GRANTS} allowed")]
    Grants {
        /// How many it carries.
        count: usize,
    },
    /// A record with this id and other content is held (ids must be hashes of the content).
    #[error("record {id} is already held with other content")]
    Conflict {
        /// The id.
        id: RecordId,
    },
}

/// A permission a member holds now, after every record held ([`Timeline::holdings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The member (never the master, who holds everything).
    pub member: MemberId,
    /// What it is on.
    pub subject: Subject,
    /// Which permission.
    pub permission: Permission,
    /// The global time of the grants that decide it (the member holds it from then on).
    pub since: u64,
    /// The valid grant records at that time, in fold order.
    pub proof: Vec<RecordId>,
}

/// The policy a meta of dynamic resolution has after every record held
/// ([`Timeline::policies`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyNow {
    /// The meta's wire type.
    pub meta: u32,
    /// The policy.
    pub policy: StaticResolution,
    /// The first global time it applies at (the deciding settings' time plus one); `None`
    /// for the meta's default policy (no valid setting).
    pub since: Option<u64>,
    /// The settings records that set it, in fold order (empty for the default).
    pub proof: Vec<RecordId>,
}

/// The position of a record, or of an entry, in the fold: (global time, record id).
type Position = (u64, RecordId);

/// A permission of a member on a subject: what an entry is about, and what a record needs.
type Key = (MemberId, Subject, Permission);

/// The permission timeline of one community (see the module doc for its rules).
///
/// It keeps the fold of rule 2 up to date incrementally: an inserted record is judged against
/// the entries before it, and a record already held is judged again only when an entry of a
/// permission it needs changed before it (its validity depends on nothing else).
#[derive(Debug, Clone)]
pub struct Timeline {
    rules: Rules,
    limit: usize,
    /// Every record held, in fold order.
    records: BTreeMap<Position, Slot>,
    /// The global time of every record held, by id.
    times: HashMap<RecordId, u64>,
    /// The records that need each permission (the master's need none).
    dependents: HashMap<Key, BTreeSet<Position>>,
    /// The effect of the valid records.
    state: State,
}

/// What does not change: the root and the resolutions of the community's metas.
#[derive(Debug, Clone)]
struct Rules {
    master: MemberId,
    resolutions: BTreeMap<u32, Resolution>,
}

/// One record held, with what the fold decided about it.
#[derive(Debug, Clone)]
struct Slot {
    record: Record,
    valid: bool,
    /// When valid: the records that made its author hold what it needed (rule 8).
    proof: Vec<RecordId>,
}

/// The effect of the valid records: permission entries and policy settings, each list in fold
/// order. Lists are never empty.
#[derive(Debug, Clone, Default)]
struct State {
    entries: BTreeMap<Key, Vec<Entry>>,
    policies: BTreeMap<u32, Vec<Setting>>,
}

/// One grant (`granted`) or revocation of a permission, by the record at `at`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Position,
    granted: bool,
}

/// One valid dynamic setting, by the record at `at`.
#[derive(Debug, Clone, Copy)]
struct Setting {
    at: Position,
    policy: StaticResolution,
}

impl Timeline {
    /// An empty timeline rooted at `master`, for a community whose metas have the given
    /// resolutions (a later pair replaces an earlier one of the same meta). Holds up to
    /// [`DEFAULT_MAX_RECORDS`] records.
    pub fn new(master: MemberId, resolutions: impl IntoIterator<Item = (u32, Resolution)>) -> Self {
        Timeline {
            rules: Rules {
                master,
                resolutions: resolutions.into_iter().collect(),
            },
            limit: DEFAULT_MAX_RECORDS,
            records: BTreeMap::new(),
            times: HashMap::new(),
            dependents: HashMap::new(),
            state: State::default(),
        }
    }

    /// The same timeline, holding at most `max_records` records (rule 12).
    pub fn with_limit(mut self, max_records: usize) -> Self {
        self.limit = max_records;
        self
    }

    /// The number of records held, valid or not.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether the record `id` is valid; `None` when it is not held.
    pub fn is_valid(&self, id: &RecordId) -> Option<bool> {
        self.slot(id).map(|slot| slot.valid)
    }

    /// Whether `record` would be valid if it were inserted now (rules 3, 4 and 6 against the
    /// records held that sort before it), without inserting it. A record already held answers
    /// its current validity; one with no grant or more than [`MAX_GRANTS`] is not valid.
    pub fn judge(&self, record: &Record) -> bool {
        if let Some(held) = self.slot(&record.id) {
            return held.valid;
        }
        if check_grants(&record.act).is_err() {
            return false;
        }
        let at = (record.global_time, record.id);
        self.state.judge(&self.rules, record, at).is_some()
    }

    /// The record `id`, if held (valid or not).
    pub fn record(&self, id: &RecordId) -> Option<&Record> {
        self.slot(id).map(|slot| &slot.record)
    }

    /// Every record held, valid or not, in fold order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values().map(|slot| &slot.record)
    }

    /// Every record held with whether it is valid now, in fold order.
    pub fn records_with_validity(&self) -> impl Iterator<Item = (&Record, bool)> {
        self.records.values().map(|slot| (&slot.record, slot.valid))
    }

    /// Every permission a member other than the master holds after every record held (rule
    /// 5 at the greatest global time), sorted by (member, subject, permission).
    pub fn holdings(&self) -> Vec<Holding> {
        self.state
            .entries
            .keys()
            .filter_map(|&key| {
                let grants = self.state.holding(&self.rules, key, |_| true)?;
                let since = grants.first()?.at.0;
                let (member, subject, permission) = key;
                Some(Holding {
                    member,
                    subject,
                    permission,
                    since,
                    proof: record_ids(grants.iter().map(|entry| entry.at).collect()),
                })
            })
            .collect()
    }

    /// The policy of every meta of dynamic resolution after every record held (rule 6 at the
    /// greatest global time), by meta id.
    pub fn policies(&self) -> Vec<PolicyNow> {
        self.rules
            .resolutions
            .iter()
            .filter(|(_, resolution)| matches!(resolution, Resolution::Dynamic(_)))
            .filter_map(|(&meta, _)| {
                let (policy, positions) = self.state.policy(&self.rules, meta, u64::MAX)?;
                let since = positions.iter().map(|at| at.0.saturating_add(1)).max();
                Some(PolicyNow {
                    meta,
                    policy,
                    since,
                    proof: record_ids(positions),
                })
            })
            .collect()
    }

    /// The master member, root of every chain.
    pub fn master(&self) -> MemberId {
        self.rules.master
    }

    /// A timeline with the same master and limit holding the same records, for metas of the
    /// given resolutions (a community whose definition changed). Records the new limit cannot
    /// hold are left out.
    pub fn rebuilt(&self, resolutions: impl IntoIterator<Item = (u32, Resolution)>) -> Timeline {
        let mut timeline = Timeline::new(self.rules.master, resolutions).with_limit(self.limit);
        for slot in self.records.values() {
            // The records were accepted once: only the bound can refuse them again.
            let _ = timeline.insert(slot.record.clone());
        }
        timeline
    }

    /// Takes a record in (rule 9): refuses it if a bound is exceeded or its id is held with
    /// other content, reports a duplicate, or holds it, brings the fold up to date, and reports
    /// its validity and what the caller must check again.
    pub fn insert(&mut self, record: Record) -> Result<Inserted, InsertError> {
        check_grants(&record.act)?;
        if let Some(held) = self.slot(&record.id) {
            return if held.record == record {
                Ok(Inserted::Duplicate)
            } else {
                Err(InsertError::Conflict { id: record.id })
            };
        }
        if self.records.len() >= self.limit {
            return Err(InsertError::Full { limit: self.limit });
        }

        let position = (record.global_time, record.id);
        for key in needs(&self.rules, &record) {
            self.dependents.entry(key).or_default().insert(position);
        }
        self.times.insert(record.id, record.global_time);
        self.records.insert(
            position,
            Slot {
                record,
                valid: false,
                proof: Vec::new(),
            },
        );

        // Judge the new record, then, in fold order, every record that needs a permission
        // whose entries changed before it: each is judged once, after all that precedes it.
        let mut changes = Changes::default();
        let mut queue = BTreeSet::from([position]);
        while let Some(at) = queue.pop_first() {
            let Some(slot) = self.records.get_mut(&at) else {
                continue;
            };
            let judged = self.state.judge(&self.rules, &slot.record, at);
            let valid = judged.is_some();
            slot.proof = judged.map(record_ids).unwrap_or_default();
            if valid == slot.valid {
                continue;
            }
            slot.valid = valid;
            if valid {
                self.state.apply(at, &slot.record);
            } else {
                self.state.unapply(at, &slot.record);
            }
            changes.note(&self.rules, &slot.record);
            for grant in slot
                .record
                .act
                .grants()
                .map_or(&[][..], |(grants, _)| grants)
            {
                let key = (grant.member, grant.subject, grant.permission);
                if let Some(dependents) = self.dependents.get(&key) {
                    queue.extend(dependents.range((Excluded(at), Unbounded)));
                }
            }
        }
        Ok(Inserted::Held {
            valid: self.records.get(&position).is_some_and(|slot| slot.valid),
            changes: changes.into_vec(),
        })
    }

    /// Whether `member` is or was an authority of the community (rule 13): the master, or a
    /// member with a valid grant of `Authorize` or `Revoke` on any subject, or of `Permit` on
    /// [`Subject::DynamicSettings`], at any global time.
    pub fn is_authority(&self, member: MemberId) -> bool {
        if member == self.rules.master {
            return true;
        }
        let first = (member, Subject::Community(0), Permission::Permit);
        self.state
            .entries
            .range(first..)
            .take_while(|((holder, _, _), _)| *holder == member)
            .any(|((_, subject, permission), entries)| {
                let authority = matches!(permission, Permission::Authorize | Permission::Revoke)
                    || (*subject == Subject::DynamicSettings && *permission == Permission::Permit);
                authority && entries.iter().any(|entry| entry.granted)
            })
    }

    /// Whether `member` holds `permission` on `subject` at global time `t` (rules 1 and 5).
    pub fn holds(
        &self,
        member: MemberId,
        subject: Subject,
        permission: Permission,
        t: u64,
    ) -> bool {
        self.state
            .holding(&self.rules, (member, subject, permission), |at| at.0 <= t)
            .is_some()
    }

    /// The policy of `meta` at global time `t` (rule 6); `None` for a meta the timeline was
    /// not given.
    pub fn policy(&self, meta: u32, t: u64) -> Option<StaticResolution> {
        self.state
            .policy(&self.rules, meta, t)
            .map(|(policy, _)| policy)
    }

    /// Whether `member` may create a message on `subject` at global time `t` (rule 7), with its
    /// proof. A meta the timeline was not given is denied.
    pub fn may(&self, member: MemberId, subject: Subject, t: u64) -> Verdict {
        self.may_all(&[member], subject, t)
    }

    /// Whether a message on `subject` at global time `t` signed by all of `signers` is allowed:
    /// every signer must pass (rule 7). With no signer only a Public policy allows.
    pub fn may_all(&self, signers: &[MemberId], subject: Subject, t: u64) -> Verdict {
        self.check(signers, subject, Permission::Permit, t, false)
    }

    /// Whether `member` may undo another member's message of `meta` at global time `t`: it
    /// needs `Undo` on the meta, whatever the meta's policy (rule 7).
    pub fn may_undo_other(&self, member: MemberId, meta: u32, t: u64) -> Verdict {
        self.check(
            &[member],
            Subject::Community(meta),
            Permission::Undo,
            t,
            true,
        )
    }

    /// Where `member` may create messages of `meta` (rule 7, as [`Timeline::may`] answers),
    /// from global time `from` on: the maximal runs of global times with one answer, in
    /// order, covering `from..=u64::MAX` without gaps ([`Span`]). The answer changes only at
    /// the times of `member`'s `Permit` entries on the meta and one after the times of its
    /// settings, so this costs O(entries + settings) checks, whatever the number of messages
    /// the spans cover: the node re-evaluates stored messages span by span (one range update
    /// each), not message by message. A meta the timeline was not given is denied throughout.
    pub fn allowed_spans(&self, member: MemberId, meta: u32, from: u64) -> Vec<Span> {
        let key = (member, Subject::Community(meta), Permission::Permit);
        let mut breaks: BTreeSet<u64> = BTreeSet::from([from]);
        if member != self.rules.master {
            let entries = self.state.entries.get(&key).map_or(&[][..], Vec::as_slice);
            breaks.extend(entries.iter().map(|entry| entry.at.0).filter(|t| *t > from));
        }
        let settings = self
            .state
            .policies
            .get(&meta)
            .map_or(&[][..], Vec::as_slice);
        breaks.extend(
            settings
                .iter()
                .filter_map(|setting| setting.at.0.checked_add(1))
                .filter(|t| *t > from),
        );
        let allowed_at = |t: u64| -> bool {
            match self.state.policy(&self.rules, meta, t) {
                None => false,
                Some((StaticResolution::Public, _)) => true,
                Some((StaticResolution::Linear, _)) => self
                    .state
                    .holding(&self.rules, key, |at| at.0 <= t)
                    .is_some(),
            }
        };
        let mut spans: Vec<Span> = Vec::new();
        let starts: Vec<u64> = breaks.into_iter().collect();
        for (index, &low) in starts.iter().enumerate() {
            let high = starts.get(index + 1).map_or(u64::MAX, |next| next - 1);
            let allowed = allowed_at(low);
            match spans.last_mut() {
                Some(last) if last.allowed == allowed => last.high = high,
                _ => spans.push(Span { low, high, allowed }),
            }
        }
        spans
    }

    /// The policy of `meta` from global time `from` on, as maximal runs `(low, high, policy)`
    /// covering `from..=u64::MAX` (rule 6); empty for a meta the timeline was not given.
    pub fn policy_spans(&self, meta: u32, from: u64) -> Vec<(u64, u64, StaticResolution)> {
        let mut starts: BTreeSet<u64> = BTreeSet::from([from]);
        if let Some(settings) = self.state.policies.get(&meta) {
            starts.extend(
                settings
                    .iter()
                    .filter_map(|setting| setting.at.0.checked_add(1))
                    .filter(|t| *t > from),
            );
        }
        let starts: Vec<u64> = starts.into_iter().collect();
        let mut spans: Vec<(u64, u64, StaticResolution)> = Vec::new();
        for (index, &low) in starts.iter().enumerate() {
            let high = starts.get(index + 1).map_or(u64::MAX, |next| next - 1);
            let Some((policy, _)) = self.state.policy(&self.rules, meta, low) else {
                return Vec::new();
            };
            match spans.last_mut() {
                Some(last) if last.2 == policy => last.1 = high,
                _ => spans.push((low, high, policy)),
            }
        }
        spans
    }

    /// The members (the master among them) who hold `Permit` on `meta` at some global time,
    /// or held it: every member whose messages of `meta` a Linear policy may allow.
    pub fn permitted(&self, meta: u32) -> Vec<MemberId> {
        let mut members: Vec<MemberId> = self
            .state
            .entries
            .keys()
            .filter(|(_, subject, permission)| {
                *subject == Subject::Community(meta) && *permission == Permission::Permit
            })
            .map(|(member, _, _)| *member)
            .collect();
        members.push(self.rules.master);
        members.sort_unstable();
        members.dedup();
        members
    }

    /// What the stored messages of a plugin meta need after `change` (rule 9), as spans of
    /// allowed and denied global times per group of authors ([`Reevaluation`]): for one
    /// member, its [`Timeline::allowed_spans`] from the change on; for a policy change (every
    /// member), those of each [`Timeline::permitted`] member, and for everyone else the
    /// policy's spans (Public allows, Linear denies). `None` for a change on a built-in
    /// subject or a meta of static Public resolution (nothing is ever denied there) or one the
    /// timeline was not given.
    pub fn reevaluation(&self, change: &Change) -> Option<(u32, Vec<Reevaluation>)> {
        let Subject::Community(meta) = change.subject else {
            return None;
        };
        match self.rules.resolutions.get(&meta)? {
            Resolution::Public => return None,
            Resolution::Linear | Resolution::Dynamic(_) => {}
        }
        if let Some(member) = change.member {
            let spans = self.allowed_spans(member, meta, change.from);
            return Some((
                meta,
                vec![Reevaluation {
                    authors: Authors::One(member),
                    spans,
                }],
            ));
        }
        let permitted = self.permitted(meta);
        let mut others: Vec<Span> = Vec::new();
        for (low, high, policy) in self.policy_spans(meta, change.from) {
            let allowed = policy == StaticResolution::Public;
            match others.last_mut() {
                Some(last) if last.allowed == allowed => last.high = high,
                _ => others.push(Span { low, high, allowed }),
            }
        }
        let mut all: Vec<Reevaluation> = permitted
            .iter()
            .map(|member| Reevaluation {
                authors: Authors::One(*member),
                spans: self.allowed_spans(*member, meta, change.from),
            })
            .collect();
        all.push(Reevaluation {
            authors: Authors::AllBut(permitted),
            spans: others,
        });
        Some((meta, all))
    }

    /// [`Timeline::reevaluation`] for a meta whose messages two members sign (rule 7: every
    /// signer must pass), as spans per pair of signer groups ([`Authors::Pair`]): the groups
    /// are each [`Timeline::permitted`] member alone and everyone else together (who share the
    /// policy's spans); a pair's spans are the intersection of its two groups' spans (allowed
    /// where both are). For a change of one member X, the pairs of X with every group; for a
    /// policy change, every unordered pair of groups (each with itself too), so
    /// (|permitted| + 1)(|permitted| + 2) / 2 of them. The pairs are disjoint: every
    /// double-signed message matches exactly one. `None` as for [`Timeline::reevaluation`].
    pub fn cosigned_reevaluation(&self, change: &Change) -> Option<(u32, Vec<Reevaluation>)> {
        let (meta, groups) = self.reevaluation(&Change {
            member: None,
            ..*change
        })?;
        let groups: Vec<(Signers, Vec<Span>)> = groups
            .into_iter()
            .filter_map(|group| match group.authors {
                Authors::One(member) => Some((Signers::One(member), group.spans)),
                Authors::AllBut(members) => Some((Signers::AllBut(members), group.spans)),
                Authors::Pair(..) => None,
            })
            .collect();
        let mut pairs = Vec::new();
        match change.member {
            Some(member) => {
                let mine = self.allowed_spans(member, meta, change.from);
                for (signers, spans) in &groups {
                    pairs.push(Reevaluation {
                        authors: Authors::Pair(Signers::One(member), signers.clone()),
                        spans: intersect(&mine, spans),
                    });
                }
            }
            None => {
                for (i, (a, spans_a)) in groups.iter().enumerate() {
                    for (b, spans_b) in &groups[i..] {
                        pairs.push(Reevaluation {
                            authors: Authors::Pair(a.clone(), b.clone()),
                            spans: intersect(spans_a, spans_b),
                        });
                    }
                }
            }
        }
        Some((meta, pairs))
    }

    /// The records that made the author of the valid record `id` hold what it needed, one level
    /// up the chain, in fold order (rule 8). Empty for a master-signed record, and for a record
    /// not held or not valid.
    pub fn proof_chain(&self, id: &RecordId) -> Vec<RecordId> {
        match self.slot(id) {
            Some(slot) if slot.valid => slot.proof.clone(),
            _ => Vec::new(),
        }
    }

    /// A hash of the canonical state: the valid record ids in fold order, then every permission
    /// entry and every setting (rule 11).
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"dispersy timeline 1");
        for slot in self.records.values().filter(|slot| slot.valid) {
            hash.update(slot.record.id.0);
        }
        hash.update(b"entries");
        for ((member, subject, permission), entries) in &self.state.entries {
            hash.update(member.0);
            hash.update(subject_bytes(*subject));
            hash.update([*permission as u8]);
            hash.update((entries.len() as u64).to_be_bytes());
            for entry in entries {
                hash.update(entry.at.0.to_be_bytes());
                hash.update(entry.at.1.0);
                hash.update([u8::from(entry.granted)]);
            }
        }
        hash.update(b"settings");
        for (meta, settings) in &self.state.policies {
            hash.update(meta.to_be_bytes());
            hash.update((settings.len() as u64).to_be_bytes());
            for setting in settings {
                hash.update(setting.at.0.to_be_bytes());
                hash.update(setting.at.1.0);
                hash.update([setting.policy as u8]);
            }
        }
        hash.finalize().into()
    }

    fn slot(&self, id: &RecordId) -> Option<&Slot> {
        let time = self.times.get(id)?;
        self.records.get(&(*time, *id))
    }

    /// Rule 7 for every signer needing `permission` on `subject`; `linear` ignores the
    /// subject's policy.
    fn check(
        &self,
        signers: &[MemberId],
        subject: Subject,
        permission: Permission,
        t: u64,
        linear: bool,
    ) -> Verdict {
        let (policy, mut proof) = match subject {
            Subject::Community(meta) if !linear => match self.state.policy(&self.rules, meta, t) {
                Some(resolved) => resolved,
                None => return Verdict::Denied { proof: Vec::new() },
            },
            _ => (StaticResolution::Linear, Vec::new()),
        };
        if policy == StaticResolution::Linear {
            if signers.is_empty() {
                return Verdict::Denied {
                    proof: record_ids(proof),
                };
            }
            for signer in signers {
                let key = (*signer, subject, permission);
                match self.state.holding(&self.rules, key, |at| at.0 <= t) {
                    Some(grants) => proof.extend(grants.iter().map(|entry| entry.at)),
                    None => {
                        return Verdict::Denied {
                            proof: record_ids(proof),
                        };
                    }
                }
            }
        }
        Verdict::Allowed {
            proof: record_ids(proof),
        }
    }
}

/// The permissions the author of `record` needs for it to be valid (rules 3, 4 and 6); none for
/// the master.
/// The spans allowed where both `a` and `b` are, as maximal runs: both cover the same range
/// without gaps (as [`Timeline::allowed_spans`] gives them).
fn intersect(a: &[Span], b: &[Span]) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        let low = x.low.max(y.low);
        let high = x.high.min(y.high);
        if low <= high {
            let allowed = x.allowed && y.allowed;
            match out.last_mut() {
                Some(last) if last.allowed == allowed && last.high.checked_add(1) == Some(low) => {
                    last.high = high;
                }
                _ => out.push(Span { low, high, allowed }),
            }
        }
        if x.high <= y.high {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn needs(rules: &Rules, record: &Record) -> Vec<Key> {
    let author = record.author;
    if author == rules.master {
        return Vec::new();
    }
    match &record.act {
        Act::Authorize(grants) => grants
            .iter()
            .flat_map(|grant| {
                [
                    (author, grant.subject, Permission::Authorize),
                    (author, grant.subject, grant.permission),
                ]
            })
            .collect(),
        Act::Revoke(grants) => grants
            .iter()
            .map(|grant| (author, grant.subject, Permission::Revoke))
            .collect(),
        Act::Settings { .. } => vec![(author, Subject::DynamicSettings, Permission::Permit)],
    }
}

impl State {
    /// Rules 1 and 5 over the entries whose position passes `counts` (a prefix of fold order):
    /// `Some` with the deciding grants (none for the master) when the member holds the
    /// permission.
    fn holding(
        &self,
        rules: &Rules,
        key: Key,
        counts: impl Fn(Position) -> bool,
    ) -> Option<&[Entry]> {
        if key.0 == rules.master {
            return Some(&[]);
        }
        let entries = self.entries.get(&key)?;
        let deciding = last_time(entries, |entry| counts(entry.at));
        if deciding.is_empty() || deciding.iter().any(|entry| !entry.granted) {
            return None;
        }
        Some(deciding)
    }

    /// Rule 6: the policy of `meta` at `t` with the positions of the settings that set it;
    /// `None` for an unknown meta.
    fn policy(
        &self,
        rules: &Rules,
        meta: u32,
        t: u64,
    ) -> Option<(StaticResolution, Vec<Position>)> {
        let listed = match rules.resolutions.get(&meta)? {
            Resolution::Public => return Some((StaticResolution::Public, Vec::new())),
            Resolution::Linear => return Some((StaticResolution::Linear, Vec::new())),
            Resolution::Dynamic(listed) => listed,
        };
        // `meta::MetaMessage::validate` refuses an empty list; were one given, Linear is safe.
        let default = listed.first().copied().unwrap_or(StaticResolution::Linear);
        let settings = self.policies.get(&meta).map_or(&[][..], Vec::as_slice);
        let deciding = last_time(settings, |setting| setting.at.0 < t);
        if deciding.is_empty() {
            return Some((default, Vec::new()));
        }
        let policy = if deciding
            .iter()
            .any(|setting| setting.policy == StaticResolution::Linear)
        {
            StaticResolution::Linear
        } else {
            StaticResolution::Public
        };
        let proof = deciding
            .iter()
            .filter(|setting| setting.policy == policy)
            .map(|setting| setting.at)
            .collect();
        Some((policy, proof))
    }

    /// Rules 3, 4 and 6 for the record at `at`, against the entries before it: `Some` with the
    /// positions of the records that prove it valid, `None` when it is invalid.
    fn judge(&self, rules: &Rules, record: &Record, at: Position) -> Option<Vec<Position>> {
        if let Act::Settings { meta, policy } = &record.act {
            let listed = matches!(
                rules.resolutions.get(meta),
                Some(Resolution::Dynamic(listed)) if listed.contains(policy)
            );
            if !listed {
                return None;
            }
        }
        let mut proof = Vec::new();
        for key in needs(rules, record) {
            let grants = self.holding(rules, key, |entry_at| entry_at < at)?;
            proof.extend(grants.iter().map(|entry| entry.at));
        }
        Some(proof)
    }

    /// Adds the effect of the valid record at `at`.
    fn apply(&mut self, at: Position, record: &Record) {
        match &record.act {
            Act::Authorize(grants) | Act::Revoke(grants) => {
                let granted = matches!(record.act, Act::Authorize(_));
                for grant in grants {
                    let list = self
                        .entries
                        .entry((grant.member, grant.subject, grant.permission))
                        .or_default();
                    // A record naming one grant twice adds (and `unapply` removes) two entries.
                    let index = list.partition_point(|entry| entry.at < at);
                    list.insert(index, Entry { at, granted });
                }
            }
            Act::Settings { meta, policy } => {
                let list = self.policies.entry(*meta).or_default();
                let index = list.partition_point(|setting| setting.at < at);
                list.insert(
                    index,
                    Setting {
                        at,
                        policy: *policy,
                    },
                );
            }
        }
    }

    /// Removes the effect of the record at `at`, no longer valid.
    fn unapply(&mut self, at: Position, record: &Record) {
        match &record.act {
            Act::Authorize(grants) | Act::Revoke(grants) => {
                for grant in grants {
                    let key = (grant.member, grant.subject, grant.permission);
                    remove_at(&mut self.entries, key, at, |entry: &Entry| entry.at);
                }
            }
            Act::Settings { meta, .. } => {
                remove_at(&mut self.policies, *meta, at, |setting: &Setting| {
                    setting.at
                });
            }
        }
    }
}

/// The changes one insertion reports, the lowest `from` per (subject, member).
#[derive(Default)]
struct Changes(BTreeMap<(Subject, Option<MemberId>), u64>);

impl Changes {
    /// Notes what the validity flip of `record` may change (rule 9).
    fn note(&mut self, rules: &Rules, record: &Record) {
        let time = record.global_time;
        match &record.act {
            Act::Authorize(grants) | Act::Revoke(grants) => {
                for grant in grants {
                    let gates_messages =
                        matches!(grant.permission, Permission::Permit | Permission::Undo);
                    if gates_messages && grant.member != rules.master {
                        self.add(grant.subject, Some(grant.member), time);
                    }
                }
            }
            Act::Settings { meta, .. } => {
                self.add(Subject::Community(*meta), None, time.saturating_add(1));
            }
        }
    }

    fn add(&mut self, subject: Subject, member: Option<MemberId>, from: u64) {
        let lowest = self.0.entry((subject, member)).or_insert(from);
        *lowest = (*lowest).min(from);
    }

    fn into_vec(self) -> Vec<Change> {
        self.0
            .into_iter()
            .map(|((subject, member), from)| Change {
                subject,
                member,
                from,
            })
            .collect()
    }
}

/// The items of `list` (in fold order) that pass `counts` and share the greatest time among
/// them; `counts` must hold for a prefix of the list.
fn last_time<T: Timed>(list: &[T], counts: impl Fn(&T) -> bool) -> &[T] {
    let end = list.partition_point(counts);
    let Some(last) = end.checked_sub(1).and_then(|index| list.get(index)) else {
        return &[];
    };
    let time = last.time();
    let start = list[..end].partition_point(|item| item.time() < time);
    &list[start..end]
}

/// Removes the item at position `at` from the sorted list `map[key]`, and the list if it
/// empties.
fn remove_at<K: Ord, T>(
    map: &mut BTreeMap<K, Vec<T>>,
    key: K,
    at: Position,
    position: impl Fn(&T) -> Position,
) {
    if let Some(list) = map.get_mut(&key) {
        let index = list.partition_point(|item| position(item) < at);
        if list.get(index).is_some_and(|item| position(item) == at) {
            list.remove(index);
        }
        if list.is_empty() {
            map.remove(&key);
        }
    }
}

/// Positions sorted and deduplicated, as ids.
fn record_ids(mut positions: Vec<Position>) -> Vec<RecordId> {
    positions.sort_unstable();
    positions.dedup();
    positions.into_iter().map(|(_, id)| id).collect()
}

fn subject_bytes(subject: Subject) -> [u8; 5] {
    match subject {
        Subject::Community(meta) => {
            let [a, b, c, d] = meta.to_be_bytes();
            [0, a, b, c, d]
        }
        Subject::DynamicSettings => [1, 0, 0, 0, 0],
        Subject::DestroyCommunity => [2, 0, 0, 0, 0],
    }
}

/// Something placed at a global time.
trait Timed {
    fn time(&self) -> u64;
}

impl Timed for Entry {
    fn time(&self) -> u64 {
        self.at.0
    }
}

impl Timed for Setting {
    fn time(&self) -> u64 {
        self.at.0
    }
}

/// Refuses an authorize or revoke whose grants are not 1..=[`MAX_GRANTS`] (rule 12).
fn check_grants(act: &Act) -> Result<(), InsertError> {
    match act.grants() {
        Some((grants, _)) if !(1..=MAX_GRANTS).contains(&grants.len()) => {
            Err(InsertError::Grants {
                count: grants.len(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
