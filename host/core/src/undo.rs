//! The undo state of one community: which stored messages are undone, and by which undo.
//!
//! The module takes *records*, the decoded and signature-checked content of the undo-own and
//! undo-other messages of one community, in any order and with duplicates; the node tells it
//! what it stores of the messages they point to (*targets*, [`Stored`]) and how the permission
//! timeline changed. It answers which targets are undone, by which undo, and after every call
//! which targets flipped (undone, redone, or undone by another undo), so the node marks its rows
//! and tells the plugin. It is pure: the node decides where records come from, what to store,
//! what to ask for and what to send.
//!
//! # Rules
//!
//! 1. **Well-formed.** An undo record is well-formed iff its target's global time is below its
//!    own, and, for an undo-own, its author is the target's author. [`Undos::insert`] refuses
//!    a malformed record with a typed error and keeps nothing of it.
//! 2. **Waiting.** An undo is *waiting* while the node has not said that its target is stored
//!    ([`Undos::stored`]): it is held, neither valid nor counted, and the node asks for the
//!    target (missing-message). When the target is stored the waiting undos of it are judged.
//!    The waiting undos are bounded; the node gives up on a target that never comes with
//!    [`Undos::abandon`].
//! 3. **Undoable.** An undo of a target whose meta is not undoable ([`Stored::undoable`]) is
//!    invalid: it stays held, is reported invalid and never becomes valid.
//! 4. **Validity.** An undo-own is valid iff rules 1 to 3 pass: it needs no permission. An
//!    undo-other is valid iff rules 1 to 3 pass and its author holds `Undo` on the target's
//!    meta at the undo's global time ([`Timeline::may_undo_other`]). The timeline changes, so
//!    an undo-other is judged again by [`Undos::reevaluate`] for every [`Change`] on
//!    `Subject::Community` of the target's meta whose member is the undo's author (or every
//!    member) and whose `from` is at most the undo's global time.
//! 5. **Undone.** A target is undone iff at least one valid undo points to it. It is undone *by*
//!    the valid undo with the binary-lowest signed packet ([`Record::packet_order`] compared as
//!    bytes, then the id). Every undo is kept, valid or not.
//! 6. **Superseded.** A second undo-own of one target (necessarily by the same member) is kept,
//!    and the binary-lower one is the member's undo of it; the valid others are *superseded*:
//!    [`Undos::superseded_by`] (and the answer of [`Undos::insert`]) names the binary-lowest,
//!    which the node sends back to the sender so that a member's repeated undos stop spreading.
//!    Several undo-other of one target are normal and supersede nothing.
//! 7. **Independent of denial.** Whether a target is undone (here) and whether its author was
//!    allowed to create it (the timeline) are separate facts; the node shows and syncs a message
//!    only if it is neither undone nor denied. This module never looks at the target's own
//!    permission: a revoke never redoes a message its author undid, and a grant never redoes a
//!    message a valid undo-other undid.
//! 8. **Not undoable metas.** Undo records, authorize, revoke, dynamic-settings and
//!    destroy-community cannot be undone: the node stores them with `undoable == false`, so an
//!    undo of one is invalid by rule 3.
//! 9. **Flips.** [`Undos::insert`], [`Undos::stored`] and [`Undos::reevaluate`] return a
//!    [`Flip`] for every target whose `undone_by` differs after the call from before it (and
//!    only those), sorted by target.
//! 10. **Order independence and digest.** The state (which undos are valid, which targets are
//!     undone by which) depends only on the set of records held, the targets stored and the
//!     timeline, never on the order they came in. [`Undos::digest`] hashes it: every undone
//!     target with its valid undos in rule 5 order.
//! 11. **Bounds.** [`Undos::with_limit`] sets how many records are held (by default
//!     [`DEFAULT_MAX_RECORDS`]) and how many of them may wait (by default
//!     [`DEFAULT_MAX_WAITING`]); a record over a bound is refused with a typed error.
//!
//! # How the node drives it
//!
//! Target information is kept only for targets some held undo points to. So the node inserts
//! an undo first; when the answer is [`Inserted::Waiting`] it looks the target up in its store
//! and calls [`Undos::stored`] if it is there, or asks for it otherwise; and when it stores a
//! message that [`Undos::awaits`], it calls [`Undos::stored`]. A `stored` call for a target no
//! undo points to is ignored. It passes every [`Change`] its timeline reports to
//! [`Undos::reevaluate`].
//!
//! # Where we differ from the original (community.py `check_undo`, `on_undo`, `_update_timerange`)
//!
//! - The original's re-evaluation after a revoke or a setting ignored why a message was undone:
//!   it redid any message of the meta that its author was allowed to create, even one undone by
//!   undo-own or undo-other (and undid allowed ones it found denied). Here undo and denial are
//!   separate (rule 7): a revoke of `Undo` re-judges the undo-others it reaches (rule 4), and a
//!   target stays undone while any valid undo points to it (rule 5).
//! - An accepted undo-other stayed accepted; here it becomes invalid when a revoke before its
//!   global time takes its author's `Undo` away, and valid again if a grant restores it.
//! - An undo-other that failed its check waited for a proof and was dropped on timeout; here it
//!   is held invalid and becomes valid when the timeline allows it (the node may still ask for
//!   the proof with missing-proof).
//! - An undo of a meta without an undo callback was dropped; here it is held invalid (rule 3),
//!   so every node holding the same records agrees.
//! - Of two undo-own of one target, the original marked the binary-higher one as undone by the
//!   lower one; here both are simply held, the higher one superseded (rule 6). The winner is
//!   sent back to the sender as in the original.
//! - Later undos of one author in one batch inherited the fate of a failed earlier one (for
//!   sequence numbers); here each undo is judged alone, sequence numbers being the store's rule
//!   (`missing::check`).
//! - The original's `undone` column held the undo's row id; here a target is undone by a
//!   [`RecordId`], the id of the winning undo (rule 5), which the node maps to its row.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha2::{Digest, Sha256};

use crate::identity::MemberId;
use crate::timeline::{Change, RecordId, Subject, Timeline};

/// The number of records held unless [`Undos::with_limit`] says otherwise.
pub const DEFAULT_MAX_RECORDS: usize = 100_000;

/// The number of waiting records held unless [`Undos::with_limit`] says otherwise.
pub const DEFAULT_MAX_WAITING: usize = 1_000;

/// A message of the community as an undo names it: its author and global time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The target's author.
    pub member: MemberId,
    /// The target's global time.
    pub global_time: u64,
}

/// Which undo message a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Undo-own: the target's author undoes its own message (no permission needed).
    Own,
    /// Undo-other: a member holding `Undo` on the target's meta undoes someone's message.
    Other,
}

/// The content of one signature-checked undo-own or undo-other message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// SHA-256 of the signed packet; equal ids must mean equal records.
    pub id: RecordId,
    /// The signed packet's bytes: the order in which undos of one target win (rule 5).
    pub packet_order: Vec<u8>,
    /// The signer.
    pub author: MemberId,
    /// The undo's global time.
    pub global_time: u64,
    /// The message it undoes.
    pub target: Target,
    /// Undo-own or undo-other.
    pub kind: Kind,
}

/// What the node stores of a target: its meta, and whether messages of that meta may be undone
/// (false for undo, authorize, revoke, dynamic-settings and destroy-community, and for metas
/// whose plugin declares no undo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The stored message.
    pub target: Target,
    /// Its meta's wire type.
    pub meta: u32,
    /// Whether its meta is undoable (rules 3 and 8).
    pub undoable: bool,
}

/// A target whose undo state changed (rule 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flip {
    /// The target.
    pub target: Target,
    /// `Some`: now undone by that undo; `None`: no longer undone (redone).
    pub undone_by: Option<RecordId>,
}

/// What [`Undos::insert`] did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A record with this id is already held; nothing changed.
    Duplicate,
    /// The record is held and waits for its target (rule 2): the node looks it up in its
    /// store, or asks for it.
    Waiting,
    /// The record is held and judged.
    Held {
        /// Whether it is valid now (an invalid undo-other may become valid later).
        valid: bool,
        /// For a valid undo-own that is not the binary-lowest of its target: the lowest one,
        /// to send back to the sender (rule 6).
        superseded_by: Option<RecordId>,
        /// The targets that flipped (rule 9).
        flips: Vec<Flip>,
    },
}

/// Why [`Undos::insert`] refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The target's global time is not below the undo's (rule 1).
    #[error("an undo at global time {global_time} names a target at {target_time}, not before it")]
    NotBefore {
        /// The undo's global time.
        global_time: u64,
        /// The target's global time.
        target_time: u64,
    },
    /// An undo-own signed by another member than its target's author (rule 1).
    #[error("an undo-own signed by another member than its target's author")]
    NotOwn,
    /// A record with this id and other content is held (ids must be hashes of the packet).
    #[error("undo {id} is already held with other content")]
    Conflict {
        /// The id.
        id: RecordId,
    },
    /// The maximum number of records is held (rule 11).
    #[error("the undo state holds its maximum of {limit} records")]
    Full {
        /// The limit.
        limit: usize,
    },
    /// The maximum number of waiting records is held (rule 11).
    #[error("the undo state holds its maximum of {limit} waiting records")]
    WaitingFull {
        /// The limit.
        limit: usize,
    },
}

/// The undo state of one community (see the module doc for its rules).
///
/// Every held undo is judged when it is inserted or its target stored, and judged again only
/// when something it depends on changes: its target's meta ([`Undos::stored`]) or, for an
/// undo-other, its author's `Undo` on that meta before its global time ([`Undos::reevaluate`]).
#[derive(Debug, Clone)]
pub struct Undos {
    max_records: usize,
    max_waiting: usize,
    /// Every record held, with whether it is valid.
    records: HashMap<RecordId, Slot>,
    /// Every target some held record points to.
    targets: BTreeMap<Target, TargetState>,
    /// How many held records point to targets not stored.
    waiting: usize,
    /// The undo-other records of stored targets, by (target meta, author, global time, id):
    /// what a timeline change reaches.
    others: BTreeSet<(u32, MemberId, u64, RecordId)>,
}

/// One record held.
#[derive(Debug, Clone)]
struct Slot {
    record: Record,
    valid: bool,
}

/// What is known of one target.
#[derive(Debug, Clone, Default)]
struct TargetState {
    /// What the node stores; `None` while its undos wait.
    stored: Option<TargetMeta>,
    /// Every record held that points to it.
    undos: Vec<RecordId>,
    /// The valid ones, in rule 5 order: the first is the one it is undone by.
    valid: BTreeSet<(Vec<u8>, RecordId)>,
}

impl TargetState {
    fn undone_by(&self) -> Option<RecordId> {
        self.valid.first().map(|(_, id)| *id)
    }
}

/// A stored target's meta and whether it is undoable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TargetMeta {
    meta: u32,
    undoable: bool,
}

impl Default for Undos {
    fn default() -> Self {
        Self::new()
    }
}

impl Undos {
    /// An empty undo state holding up to [`DEFAULT_MAX_RECORDS`] records, of which up to
    /// [`DEFAULT_MAX_WAITING`] wait.
    pub fn new() -> Self {
        Undos {
            max_records: DEFAULT_MAX_RECORDS,
            max_waiting: DEFAULT_MAX_WAITING,
            records: HashMap::new(),
            targets: BTreeMap::new(),
            waiting: 0,
            others: BTreeSet::new(),
        }
    }

    /// The same state, holding at most `records` records of which at most `waiting` wait
    /// (rule 11).
    pub fn with_limit(mut self, records: usize, waiting: usize) -> Self {
        self.max_records = records;
        self.max_waiting = waiting;
        self
    }

    /// The number of records held, waiting or judged.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The number of records waiting for their target (rule 2).
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Takes a record in: refuses it if it is malformed (rule 1), its id is held with other
    /// content, or a bound is exceeded (rule 11); reports a duplicate; holds it waiting if its
    /// target is not stored (rule 2); otherwise holds it, judges it (rules 3 and 4) and reports
    /// its validity, the record it is superseded by (rule 6) and the flips (rule 9).
    pub fn insert(&mut self, record: Record, timeline: &Timeline) -> Result<Inserted, InsertError> {
        well_formed(&record)?;
        if let Some(held) = self.records.get(&record.id) {
            return if held.record == record {
                Ok(Inserted::Duplicate)
            } else {
                Err(InsertError::Conflict { id: record.id })
            };
        }
        if self.records.len() >= self.max_records {
            return Err(InsertError::Full {
                limit: self.max_records,
            });
        }
        let stored = self
            .targets
            .get(&record.target)
            .and_then(|state| state.stored);
        if stored.is_none() && self.waiting >= self.max_waiting {
            return Err(InsertError::WaitingFull {
                limit: self.max_waiting,
            });
        }

        let id = record.id;
        let target = record.target;
        self.targets.entry(target).or_default().undos.push(id);
        let Some(meta) = stored else {
            self.waiting += 1;
            self.records.insert(
                id,
                Slot {
                    record,
                    valid: false,
                },
            );
            return Ok(Inserted::Waiting);
        };
        if record.kind == Kind::Other {
            self.others
                .insert((meta.meta, record.author, record.global_time, id));
        }
        let valid = judge(&record, meta, timeline);
        self.records.insert(
            id,
            Slot {
                record,
                valid: false,
            },
        );
        let mut flips = Flips::default();
        self.set_valid(id, valid, &mut flips);
        Ok(Inserted::Held {
            valid,
            superseded_by: self.superseded_by(&id),
            flips: flips.into_vec(&self.targets),
        })
    }

    /// Whether held undos wait for `target` (rule 2): the node then calls [`Undos::stored`]
    /// when it has it.
    pub fn awaits(&self, target: &Target) -> bool {
        self.targets
            .get(target)
            .is_some_and(|state| state.stored.is_none())
    }

    /// The targets held undos wait for (rule 2), in target order: the node asks peers for
    /// them again now and then (an undone target is not offered by sync, so the undo's sender
    /// may be the only one asked otherwise).
    pub fn awaited(&self) -> impl Iterator<Item = Target> + '_ {
        self.targets
            .iter()
            .filter(|(_, state)| state.stored.is_none())
            .map(|(target, _)| *target)
    }

    /// The node stores (or stored) the message `stored.target`: the undos of it are judged
    /// (rules 2 to 4) and the flips reported (rule 9). A later call for the same target
    /// replaces what an earlier one said (a new version of the message) and judges its undos
    /// again. Ignored when no held undo points to the target.
    pub fn stored(&mut self, stored: Stored, timeline: &Timeline) -> Vec<Flip> {
        let meta = TargetMeta {
            meta: stored.meta,
            undoable: stored.undoable,
        };
        let Some(state) = self.targets.get_mut(&stored.target) else {
            return Vec::new();
        };
        let previous = state.stored.replace(meta);
        if previous == Some(meta) {
            return Vec::new();
        }
        let ids = state.undos.clone();
        if previous.is_none() {
            self.waiting -= ids.len();
        }
        let mut flips = Flips::default();
        for id in ids {
            let Some(slot) = self.records.get(&id) else {
                continue;
            };
            let record = &slot.record;
            if record.kind == Kind::Other {
                if let Some(old) = previous {
                    self.others
                        .remove(&(old.meta, record.author, record.global_time, id));
                }
                self.others
                    .insert((meta.meta, record.author, record.global_time, id));
            }
            let valid = judge(record, meta, timeline);
            self.set_valid(id, valid, &mut flips);
        }
        flips.into_vec(&self.targets)
    }

    /// Judges again the undo-other records the timeline's `changes` reach (rule 4), against
    /// `timeline` as it is now, and reports the flips (rule 9).
    pub fn reevaluate(&mut self, timeline: &Timeline, changes: &[Change]) -> Vec<Flip> {
        let mut reached = BTreeSet::new();
        for change in changes {
            let Subject::Community(meta) = change.subject else {
                continue;
            };
            let (first, last) = match change.member {
                Some(member) => (
                    (meta, member, change.from, RecordId([0; 32])),
                    (meta, member, u64::MAX, RecordId([0xff; 32])),
                ),
                None => (
                    (meta, MemberId([0; 20]), 0, RecordId([0; 32])),
                    (meta, MemberId([0xff; 20]), u64::MAX, RecordId([0xff; 32])),
                ),
            };
            reached.extend(
                self.others
                    .range(first..=last)
                    .filter(|(_, _, global_time, _)| *global_time >= change.from)
                    .map(|(_, _, _, id)| *id),
            );
        }
        let mut flips = Flips::default();
        for id in reached {
            let Some(slot) = self.records.get(&id) else {
                continue;
            };
            let Some(meta) = self
                .targets
                .get(&slot.record.target)
                .and_then(|state| state.stored)
            else {
                continue;
            };
            let valid = judge(&slot.record, meta, timeline);
            self.set_valid(id, valid, &mut flips);
        }
        flips.into_vec(&self.targets)
    }

    /// Drops the records waiting for `target` (rule 2), which the node gave up asking for, and
    /// returns their ids. Records of a stored target are never dropped.
    pub fn abandon(&mut self, target: &Target) -> Vec<RecordId> {
        if !self.awaits(target) {
            return Vec::new();
        }
        let Some(state) = self.targets.remove(target) else {
            return Vec::new();
        };
        for id in &state.undos {
            self.records.remove(id);
        }
        self.waiting -= state.undos.len();
        state.undos
    }

    /// Drops every held record for which `keep` is false, as if it had never been held (a
    /// destroyed community deletes them, `crate::destroy`), and reports the flips (rule 9): a
    /// target undone only by dropped records is redone. Targets no record points to any more
    /// are forgotten.
    pub fn retain(&mut self, keep: impl Fn(&Record) -> bool) -> Vec<Flip> {
        let dropped: Vec<RecordId> = self
            .records
            .values()
            .filter(|slot| !keep(&slot.record))
            .map(|slot| slot.record.id)
            .collect();
        let mut flips = Flips::default();
        for id in dropped {
            self.set_valid(id, false, &mut flips);
            let Some(Slot { record, .. }) = self.records.remove(&id) else {
                continue;
            };
            let Some(state) = self.targets.get_mut(&record.target) else {
                continue;
            };
            state.undos.retain(|held| *held != id);
            match state.stored {
                None => self.waiting -= 1,
                Some(meta) => {
                    self.others
                        .remove(&(meta.meta, record.author, record.global_time, id));
                }
            }
        }
        let flips = flips.into_vec(&self.targets);
        self.targets.retain(|_, state| !state.undos.is_empty());
        flips
    }

    /// The undo `target` is undone by (rule 5); `None` when it is not undone.
    pub fn undone_by(&self, target: &Target) -> Option<RecordId> {
        self.targets.get(target).and_then(TargetState::undone_by)
    }

    /// Every undone target with the undo it is undone by, in target order.
    pub fn undone(&self) -> impl Iterator<Item = (Target, RecordId)> + '_ {
        self.targets
            .iter()
            .filter_map(|(target, state)| Some((*target, state.undone_by()?)))
    }

    /// The held record `id`, waiting or judged.
    pub fn record(&self, id: &RecordId) -> Option<&Record> {
        self.records.get(id).map(|slot| &slot.record)
    }

    /// Every held record pointing to `target`, with whether it is valid, in insertion order.
    pub fn records_of(&self, target: &Target) -> Vec<(&Record, bool)> {
        let Some(state) = self.targets.get(target) else {
            return Vec::new();
        };
        state
            .undos
            .iter()
            .filter_map(|id| self.records.get(id))
            .map(|slot| (&slot.record, slot.valid))
            .collect()
    }

    /// Whether the record `id` is valid (rule 4); `Some(false)` while it waits, `None` when it
    /// is not held.
    pub fn is_valid(&self, id: &RecordId) -> Option<bool> {
        self.records.get(id).map(|slot| slot.valid)
    }

    /// For a valid undo-own that is not the binary-lowest valid undo-own of its target, the
    /// lowest one (rule 6); `None` otherwise.
    pub fn superseded_by(&self, id: &RecordId) -> Option<RecordId> {
        let slot = self.records.get(id)?;
        if !slot.valid || slot.record.kind != Kind::Own {
            return None;
        }
        let state = self.targets.get(&slot.record.target)?;
        let lowest = state.valid.iter().find_map(|(_, other)| {
            let held = self.records.get(other)?;
            (held.record.kind == Kind::Own).then_some(*other)
        })?;
        (lowest != *id).then_some(lowest)
    }

    /// A hash of the canonical state (rule 10): every undone target, in target order, with
    /// its valid undos in rule 5 order (the first being the one it is undone by).
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"dispersy undo 1");
        for (target, state) in &self.targets {
            if state.valid.is_empty() {
                continue;
            }
            hash.update(target.member.0);
            hash.update(target.global_time.to_be_bytes());
            hash.update((state.valid.len() as u64).to_be_bytes());
            for (_, id) in &state.valid {
                hash.update(id.0);
            }
        }
        hash.finalize().into()
    }

    /// Records that the held record `id` is now `valid`, noting its target's state before the
    /// first change of this call.
    fn set_valid(&mut self, id: RecordId, valid: bool, flips: &mut Flips) {
        let Some(slot) = self.records.get_mut(&id) else {
            return;
        };
        if slot.valid == valid {
            return;
        }
        slot.valid = valid;
        let Some(state) = self.targets.get_mut(&slot.record.target) else {
            return;
        };
        flips.touch(slot.record.target, state.undone_by());
        let key = (slot.record.packet_order.clone(), id);
        if valid {
            state.valid.insert(key);
        } else {
            state.valid.remove(&key);
        }
    }
}

/// Rule 1.
fn well_formed(record: &Record) -> Result<(), InsertError> {
    if record.target.global_time >= record.global_time {
        return Err(InsertError::NotBefore {
            global_time: record.global_time,
            target_time: record.target.global_time,
        });
    }
    if record.kind == Kind::Own && record.author != record.target.member {
        return Err(InsertError::NotOwn);
    }
    Ok(())
}

/// Rules 3 and 4 for a well-formed record whose target is stored with `meta`.
fn judge(record: &Record, meta: TargetMeta, timeline: &Timeline) -> bool {
    if !meta.undoable {
        return false;
    }
    match record.kind {
        Kind::Own => true,
        Kind::Other => timeline
            .may_undo_other(record.author, meta.meta, record.global_time)
            .is_allowed(),
    }
}

/// The targets one call touched, with what they were undone by before it.
#[derive(Default)]
struct Flips(BTreeMap<Target, Option<RecordId>>);

impl Flips {
    fn touch(&mut self, target: Target, undone_by: Option<RecordId>) {
        self.0.entry(target).or_insert(undone_by);
    }

    /// The touched targets whose state differs now, in target order.
    fn into_vec(self, targets: &BTreeMap<Target, TargetState>) -> Vec<Flip> {
        self.0
            .into_iter()
            .filter_map(|(target, before)| {
                let now = targets.get(&target).and_then(TargetState::undone_by);
                (now != before).then_some(Flip {
                    target,
                    undone_by: now,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
