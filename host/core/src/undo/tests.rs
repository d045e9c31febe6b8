//! The original's undo scenarios, the bounds, and a randomized test of order independence, of
//! the rules against a fold from scratch, and of the flips' completeness.

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::meta::Resolution;
use crate::rng::Rng;
use crate::timeline::{self, Act, Grant, Permission};

const MASTER: MemberId = MemberId([0; 20]);
const A: MemberId = MemberId([1; 20]);
const B: MemberId = MemberId([2; 20]);
const C: MemberId = MemberId([3; 20]);

/// An undoable meta.
const NOTE: u32 = 1;
/// A meta whose messages cannot be undone (an authorize, say).
const FIXED: u32 = 2;

fn timeline() -> Timeline {
    Timeline::new(
        MASTER,
        [(NOTE, Resolution::Public), (FIXED, Resolution::Linear)],
    )
}

fn target(member: MemberId, global_time: u64) -> Target {
    Target {
        member,
        global_time,
    }
}

fn stored(target: Target, meta: u32) -> Stored {
    Stored {
        target,
        meta,
        undoable: meta != FIXED,
    }
}

/// An undo whose packet starts with `salt`, so that a test chooses which of two undos is the
/// binary-lower; its id is the packet's hash, as a real one's would be.
fn undo(author: MemberId, global_time: u64, target: Target, kind: Kind, salt: u8) -> Record {
    let mut packet = vec![salt, u8::from(kind == Kind::Own)];
    packet.extend(author.0);
    packet.extend(global_time.to_be_bytes());
    packet.extend(target.member.0);
    packet.extend(target.global_time.to_be_bytes());
    Record {
        id: RecordId::of_packet(&packet),
        packet_order: packet,
        author,
        global_time,
        target,
        kind,
    }
}

fn own(author: MemberId, global_time: u64, of: Target, salt: u8) -> Record {
    undo(author, global_time, of, Kind::Own, salt)
}

fn other(author: MemberId, global_time: u64, of: Target, salt: u8) -> Record {
    undo(author, global_time, of, Kind::Other, salt)
}

/// A timeline record granting (or revoking) `Undo` on `meta` to `to`.
fn undo_permission(
    author: MemberId,
    t: u64,
    to: MemberId,
    meta: u32,
    grant: bool,
) -> timeline::Record {
    let grants = vec![Grant {
        member: to,
        subject: Subject::Community(meta),
        permission: Permission::Undo,
    }];
    let mut packet = vec![u8::from(grant)];
    packet.extend(author.0);
    packet.extend(t.to_be_bytes());
    packet.extend(to.0);
    packet.extend(meta.to_be_bytes());
    timeline::Record {
        id: RecordId::of_packet(&packet),
        author,
        global_time: t,
        act: if grant {
            Act::Authorize(grants)
        } else {
            Act::Revoke(grants)
        },
    }
}

/// Inserts a timeline record and passes its changes on, as the node does.
fn apply(timeline: &mut Timeline, undos: &mut Undos, record: timeline::Record) -> Vec<Flip> {
    match timeline.insert(record).unwrap() {
        timeline::Inserted::Held { changes, .. } => undos.reevaluate(timeline, &changes),
        timeline::Inserted::Duplicate => Vec::new(),
    }
}

/// Inserts an undo whose target is stored; returns its validity, supersession and flips.
fn held(
    undos: &mut Undos,
    record: &Record,
    timeline: &Timeline,
) -> (bool, Option<RecordId>, Vec<Flip>) {
    match undos.insert(record.clone(), timeline).unwrap() {
        Inserted::Held {
            valid,
            superseded_by,
            flips,
        } => (valid, superseded_by, flips),
        other => panic!("{:?}: {other:?}", record.id),
    }
}

/// Inserts an undo whose target is not yet known: it must wait.
fn waits(undos: &mut Undos, record: &Record, timeline: &Timeline) {
    assert_eq!(
        undos.insert(record.clone(), timeline),
        Ok(Inserted::Waiting)
    );
}

fn flip(target: Target, undone_by: Option<&Record>) -> Flip {
    Flip {
        target,
        undone_by: undone_by.map(|record| record.id),
    }
}

#[test]
fn an_author_undoes_its_own_message() {
    let timeline = timeline();
    let mut undos = Undos::new();
    let note = target(A, 10);
    let undo = own(A, 11, note, 0);
    waits(&mut undos, &undo, &timeline);
    assert!(undos.awaits(&note));
    assert_eq!(
        undos.stored(stored(note, NOTE), &timeline),
        [flip(note, Some(&undo))]
    );
    assert_eq!(undos.undone_by(&note), Some(undo.id));
    assert_eq!(undos.is_valid(&undo.id), Some(true));
    assert_eq!(undos.superseded_by(&undo.id), None);
    assert_eq!(undos.insert(undo, &timeline), Ok(Inserted::Duplicate));
    assert!(!undos.awaits(&note));
    assert_eq!(undos.len(), 1);
    assert_eq!(undos.waiting(), 0);
}

#[test]
fn malformed_undos_are_refused() {
    let timeline = timeline();
    let mut undos = Undos::new();
    let note = target(A, 10);
    assert_eq!(
        undos.insert(own(B, 11, note, 0), &timeline),
        Err(InsertError::NotOwn)
    );
    for at in [9, 10] {
        assert_eq!(
            undos.insert(other(B, at, note, 0), &timeline),
            Err(InsertError::NotBefore {
                global_time: at,
                target_time: 10
            })
        );
    }
    assert!(undos.is_empty());
    assert!(!undos.awaits(&note));
}

#[test]
fn an_undo_other_becomes_valid_when_its_grant_arrives() {
    let mut timeline = timeline();
    let mut undos = Undos::new();
    let note = target(A, 10);
    let undo = other(B, 20, note, 0);
    waits(&mut undos, &undo, &timeline);
    assert!(undos.stored(stored(note, NOTE), &timeline).is_empty());
    assert_eq!(undos.is_valid(&undo.id), Some(false));
    // A grant after the undo's global time does not reach it.
    let late = undo_permission(MASTER, 21, B, NOTE, true);
    assert!(apply(&mut timeline, &mut undos, late).is_empty());
    assert_eq!(undos.undone_by(&note), None);
    // A grant to someone else does not either.
    let to_c = undo_permission(MASTER, 5, C, NOTE, true);
    assert!(apply(&mut timeline, &mut undos, to_c).is_empty());
    let grant = undo_permission(MASTER, 20, B, NOTE, true);
    assert_eq!(
        apply(&mut timeline, &mut undos, grant),
        [flip(note, Some(&undo))]
    );
    assert_eq!(undos.is_valid(&undo.id), Some(true));
    // Once the grant is held, a new undo-other by B is valid at once, and the author's own undo
    // is not superseded by it.
    let second = target(A, 12);
    let mine = own(A, 22, second, 0);
    let theirs = other(B, 21, second, 0);
    waits(&mut undos, &mine, &timeline);
    waits(&mut undos, &theirs, &timeline);
    let flips = undos.stored(stored(second, NOTE), &timeline);
    let lower = if mine.packet_order < theirs.packet_order {
        &mine
    } else {
        &theirs
    };
    assert_eq!(flips, [flip(second, Some(lower))]);
    assert_eq!(undos.superseded_by(&mine.id), None);
}

#[test]
fn an_undo_of_a_meta_that_is_not_undoable_never_counts() {
    let mut timeline = timeline();
    let mut undos = Undos::new();
    let grant = target(MASTER, 3);
    let by_master = own(MASTER, 4, grant, 0);
    let by_b = other(B, 4, grant, 0);
    waits(&mut undos, &by_master, &timeline);
    waits(&mut undos, &by_b, &timeline);
    assert!(undos.stored(stored(grant, FIXED), &timeline).is_empty());
    apply(
        &mut timeline,
        &mut undos,
        undo_permission(MASTER, 1, B, FIXED, true),
    );
    assert!(timeline.may_undo_other(B, FIXED, 4).is_allowed());
    assert_eq!(undos.is_valid(&by_master.id), Some(false));
    assert_eq!(undos.is_valid(&by_b.id), Some(false));
    assert_eq!(undos.undone_by(&grant), None);
    // A later undo of it is judged at once, and invalid too.
    let again = own(MASTER, 5, grant, 0);
    assert_eq!(
        held(&mut undos, &again, &timeline),
        (false, None, Vec::new())
    );
}

#[test]
fn of_two_undo_own_the_binary_lower_wins_in_either_order() {
    let timeline = timeline();
    let note = target(A, 10);
    // The later undo has the lower packet.
    let higher = own(A, 11, note, 9);
    let lower = own(A, 12, note, 1);
    assert!(lower.packet_order < higher.packet_order);

    let mut first = Undos::new();
    first.stored(stored(note, NOTE), &timeline); // no undo points to it yet: ignored
    waits(&mut first, &higher, &timeline);
    first.stored(stored(note, NOTE), &timeline);
    assert_eq!(
        held(&mut first, &lower, &timeline),
        (true, None, vec![flip(note, Some(&lower))])
    );
    assert_eq!(first.superseded_by(&higher.id), Some(lower.id));

    let mut second = Undos::new();
    waits(&mut second, &lower, &timeline);
    second.stored(stored(note, NOTE), &timeline);
    assert_eq!(
        held(&mut second, &higher, &timeline),
        (true, Some(lower.id), Vec::new())
    );
    assert_eq!(second.superseded_by(&lower.id), None);

    for undos in [&first, &second] {
        assert_eq!(undos.undone_by(&note), Some(lower.id));
        assert_eq!(undos.is_valid(&higher.id), Some(true));
        assert_eq!(undos.len(), 2);
    }
    assert_eq!(first.digest(), second.digest());
}

#[test]
fn several_undo_other_of_one_target_are_normal() {
    let mut timeline = timeline();
    let mut undos = Undos::new();
    for member in [B, C] {
        apply(
            &mut timeline,
            &mut undos,
            undo_permission(MASTER, 1, member, NOTE, true),
        );
    }
    let note = target(A, 10);
    let by_b = other(B, 11, note, 1);
    let by_c = other(C, 11, note, 2);
    waits(&mut undos, &by_b, &timeline);
    assert_eq!(
        undos.stored(stored(note, NOTE), &timeline),
        [flip(note, Some(&by_b))]
    );
    assert_eq!(held(&mut undos, &by_c, &timeline), (true, None, Vec::new()));
    assert_eq!(undos.superseded_by(&by_c.id), None);
    // B loses Undo before its undo: C's undo takes over.
    assert_eq!(
        apply(
            &mut timeline,
            &mut undos,
            undo_permission(MASTER, 11, B, NOTE, false)
        ),
        [flip(note, Some(&by_c))]
    );
    assert_eq!(undos.is_valid(&by_b.id), Some(false));
}

#[test]
fn a_revoke_redoes_what_only_an_undo_other_undid() {
    let mut timeline = timeline();
    let mut undos = Undos::new();
    apply(
        &mut timeline,
        &mut undos,
        undo_permission(MASTER, 1, B, NOTE, true),
    );
    let alone = target(A, 10);
    let also_own = target(A, 11);
    let by_b = other(B, 20, alone, 0);
    // B's undo is the binary-lower of the two on `also_own`, so it wins there first.
    let by_b_too = other(B, 20, also_own, 0);
    let by_a = own(A, 21, also_own, 5);
    for (undo, note) in [(&by_b, alone), (&by_b_too, also_own), (&by_a, also_own)] {
        if undos.insert(undo.clone(), &timeline) == Ok(Inserted::Waiting) {
            undos.stored(stored(note, NOTE), &timeline);
        }
    }
    assert_eq!(undos.undone_by(&alone), Some(by_b.id));
    assert_eq!(undos.undone_by(&also_own), Some(by_b_too.id));
    // The revoke at B's undo time: both undo-other fall, the author's own undo stays (rule 7).
    let flips = apply(
        &mut timeline,
        &mut undos,
        undo_permission(MASTER, 20, B, NOTE, false),
    );
    assert_eq!(flips, [flip(alone, None), flip(also_own, Some(&by_a))]);
    // A grant again after the undo's time changes nothing; one at its time restores it.
    assert!(
        apply(
            &mut timeline,
            &mut undos,
            undo_permission(MASTER, 25, B, NOTE, true)
        )
        .is_empty()
    );
    assert_eq!(undos.undone_by(&alone), None);
    let regrant = undo_permission(MASTER, 20, B, NOTE, true);
    // At one global time a revoke beats a grant (timeline rule 5): still revoked.
    assert!(apply(&mut timeline, &mut undos, regrant).is_empty());
    assert_eq!(undos.is_valid(&by_b.id), Some(false));
}

#[test]
fn a_target_replaced_by_another_meta_is_judged_again() {
    let timeline = timeline();
    let mut undos = Undos::new();
    let note = target(A, 10);
    let undo = own(A, 11, note, 0);
    waits(&mut undos, &undo, &timeline);
    assert_eq!(
        undos.stored(stored(note, NOTE), &timeline),
        [flip(note, Some(&undo))]
    );
    assert_eq!(
        undos.stored(stored(note, FIXED), &timeline),
        [flip(note, None)]
    );
    assert!(undos.stored(stored(note, FIXED), &timeline).is_empty());
}

#[test]
fn bounds_duplicates_conflicts_and_abandon() {
    let timeline = timeline();
    let mut undos = Undos::new().with_limit(3, 2);
    let (one, two, three) = (target(A, 1), target(A, 2), target(A, 3));
    let first = own(A, 5, one, 0);
    waits(&mut undos, &first, &timeline);
    let mut forged = first.clone();
    forged.global_time = 6;
    assert_eq!(
        undos.insert(forged, &timeline),
        Err(InsertError::Conflict { id: first.id })
    );
    waits(&mut undos, &own(A, 5, two, 0), &timeline);
    assert_eq!(
        undos.insert(own(A, 5, three, 0), &timeline),
        Err(InsertError::WaitingFull { limit: 2 })
    );
    // A second undo of a target that is stored does not wait.
    undos.stored(stored(one, NOTE), &timeline);
    assert_eq!(undos.waiting(), 1);
    let again = own(A, 6, one, 0);
    assert!(held(&mut undos, &again, &timeline).0);
    assert_eq!(
        undos.insert(own(A, 7, one, 0), &timeline),
        Err(InsertError::Full { limit: 3 })
    );
    assert_eq!(undos.insert(again, &timeline), Ok(Inserted::Duplicate));
    // Giving up on a target drops its waiting undos only.
    assert!(undos.abandon(&one).is_empty());
    assert_eq!(undos.abandon(&two).len(), 1);
    assert_eq!((undos.len(), undos.waiting()), (2, 0));
    assert!(!undos.awaits(&two));
    waits(&mut undos, &own(A, 5, three, 0), &timeline);
}

// ------------------------------------------------------------------------------------------
// Randomized: every order of arrival reaches the state a fold from scratch gives, and the
// flips of every call are exactly the targets that changed.

/// One random community: targets, undo records, and a timeline of `Undo` grants and revokes.
struct Scenario {
    metas: Vec<(u32, bool)>,
    targets: Vec<Stored>,
    undos: Vec<Record>,
    permissions: Vec<timeline::Record>,
}

/// Something the node learns.
#[derive(Clone)]
enum Event {
    Undo(Record),
    Store(Stored),
    Permission(timeline::Record),
}

fn scenario(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed);
    let members: Vec<MemberId> = (1..=3 + rng.index(4) as u8)
        .map(|n| MemberId([n; 20]))
        .collect();
    let metas: Vec<(u32, bool)> = (1..=3).map(|meta| (meta, rng.index(4) != 0)).collect();
    let pick = |rng: &mut Rng, list: &[MemberId]| list[rng.index(list.len())];

    // Targets, a few of which are never stored.
    let mut targets = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 + rng.index(20) {
        let target = target(pick(&mut rng, &members), 1 + rng.index(30) as u64);
        if seen.insert(target) {
            let (meta, undoable) = metas[rng.index(metas.len())];
            targets.push(Stored {
                target,
                meta,
                undoable,
            });
        }
    }

    // Undos: own and other, malformed ones (another author's undo-own, a time not after the
    // target's), and equal packets (duplicates) from the small salt range.
    let mut undos = Vec::new();
    for _ in 0..30 + rng.index(60) {
        let of = targets[rng.index(targets.len())].target;
        let global_time = match rng.index(12) {
            0 => of.global_time - rng.index(2) as u64,
            _ => of.global_time + 1 + rng.index(10) as u64,
        };
        let salt = rng.index(4) as u8;
        let record = match rng.index(3) {
            0 => {
                let author = if rng.index(10) == 0 {
                    pick(&mut rng, &members)
                } else {
                    of.member
                };
                own(author, global_time, of, salt)
            }
            _ => other(pick(&mut rng, &members), global_time, of, salt),
        };
        undos.push(record);
    }
    let kept = targets.len() - targets.len() / 8;
    targets.truncate(kept);

    // Permissions: the master grants and revokes Undo; the first member, given Authorize and
    // Revoke on every meta early or late, passes Undo on and takes it away.
    let deputy = members[0];
    let mut permissions = Vec::new();
    let deputy_time = 1 + rng.index(30) as u64;
    for &(meta, _) in &metas {
        permissions.push(timeline::Record {
            id: RecordId::of_packet(&[b'd', meta as u8, deputy_time as u8]),
            author: MASTER,
            global_time: deputy_time,
            act: Act::Authorize(
                [Permission::Authorize, Permission::Revoke, Permission::Undo]
                    .into_iter()
                    .map(|permission| Grant {
                        member: deputy,
                        subject: Subject::Community(meta),
                        permission,
                    })
                    .collect(),
            ),
        });
    }
    for _ in 0..10 + rng.index(30) {
        let author = if rng.index(3) == 0 { deputy } else { MASTER };
        let record = undo_permission(
            author,
            1 + rng.index(40) as u64,
            pick(&mut rng, &members),
            metas[rng.index(metas.len())].0,
            rng.index(3) != 0,
        );
        if permissions.iter().all(|held| held.id != record.id) {
            permissions.push(record);
        }
    }
    Scenario {
        metas,
        targets,
        undos,
        permissions,
    }
}

/// The events of a scenario in several orders: permissions, then targets, then undos (each
/// undo judged once, on insert); undos, then targets, then permissions (every undo waits, and
/// is judged again at every change); and shuffles with a tenth of the events repeated.
fn orders(scenario: &Scenario, rng: &mut Rng) -> Vec<Vec<Event>> {
    let permissions = scenario.permissions.iter().cloned().map(Event::Permission);
    let targets = scenario.targets.iter().copied().map(Event::Store);
    let undos = scenario.undos.iter().cloned().map(Event::Undo);
    let forward: Vec<Event> = permissions
        .clone()
        .chain(targets.clone())
        .chain(undos.clone())
        .collect();
    let backward: Vec<Event> = undos.chain(targets).chain(permissions).collect();
    let mut all = vec![forward.clone(), backward];
    for _ in 0..3 {
        let mut shuffled = forward.clone();
        rng.shuffle(&mut shuffled);
        for _ in 0..shuffled.len() / 10 {
            let copy = shuffled[rng.index(shuffled.len())].clone();
            let at = rng.index(shuffled.len() + 1);
            shuffled.insert(at, copy);
        }
        all.push(shuffled);
    }
    all
}

/// A node as the module doc describes it: a store of targets, a timeline, the undo state.
struct Node {
    store: HashMap<Target, Stored>,
    timeline: Timeline,
    undos: Undos,
    refused: BTreeMap<RecordId, InsertError>,
}

impl Node {
    fn new(metas: &[(u32, bool)]) -> Self {
        Node {
            store: HashMap::new(),
            timeline: Timeline::new(
                MASTER,
                metas.iter().map(|&(meta, _)| (meta, Resolution::Public)),
            ),
            undos: Undos::new(),
            refused: BTreeMap::new(),
        }
    }

    /// Handles one event and returns the flips it caused.
    fn handle(&mut self, event: Event) -> Vec<Flip> {
        match event {
            Event::Undo(record) => {
                let (id, of) = (record.id, record.target);
                match self.undos.insert(record, &self.timeline) {
                    Ok(Inserted::Waiting) => match self.store.get(&of) {
                        Some(stored) => self.undos.stored(*stored, &self.timeline),
                        None => Vec::new(),
                    },
                    Ok(Inserted::Held { valid, flips, .. }) => {
                        assert_eq!(self.undos.is_valid(&id), Some(valid));
                        flips
                    }
                    Ok(Inserted::Duplicate) => Vec::new(),
                    Err(error) => {
                        self.refused.insert(id, error);
                        Vec::new()
                    }
                }
            }
            Event::Store(stored) => {
                self.store.insert(stored.target, stored);
                self.undos.stored(stored, &self.timeline)
            }
            Event::Permission(record) => match self.timeline.insert(record).unwrap() {
                timeline::Inserted::Held { changes, .. } => {
                    self.undos.reevaluate(&self.timeline, &changes)
                }
                timeline::Inserted::Duplicate => Vec::new(),
            },
        }
    }
}

/// The state rules 1 to 6 give from scratch, given the final timeline: each record's validity
/// (`None`: refused), each undone target's winner, and what each record is superseded by.
struct Expected {
    validity: BTreeMap<RecordId, Option<bool>>,
    winners: BTreeMap<Target, RecordId>,
    superseded: BTreeMap<RecordId, Option<RecordId>>,
}

fn expected(scenario: &Scenario, timeline: &Timeline) -> Expected {
    let stored: HashMap<Target, Stored> = scenario
        .targets
        .iter()
        .map(|stored| (stored.target, *stored))
        .collect();
    let mut validity = BTreeMap::new();
    let mut winners: BTreeMap<Target, &Record> = BTreeMap::new();
    for record in &scenario.undos {
        let well_formed = record.target.global_time < record.global_time
            && (record.kind == Kind::Other || record.author == record.target.member);
        if !well_formed {
            validity.insert(record.id, None);
            continue;
        }
        let valid = stored.get(&record.target).is_some_and(|target| {
            target.undoable
                && (record.kind == Kind::Own
                    || timeline
                        .may_undo_other(record.author, target.meta, record.global_time)
                        .is_allowed())
        });
        validity.insert(record.id, Some(valid));
        if valid {
            let winner = winners.entry(record.target).or_insert(record);
            if (&record.packet_order, record.id) < (&winner.packet_order, winner.id) {
                *winner = record;
            }
        }
    }
    let mut superseded = BTreeMap::new();
    for record in &scenario.undos {
        let lowest_own = scenario
            .undos
            .iter()
            .filter(|own| {
                own.kind == Kind::Own
                    && own.target == record.target
                    && validity.get(&own.id) == Some(&Some(true))
            })
            .min_by(|a, b| (&a.packet_order, a.id).cmp(&(&b.packet_order, b.id)));
        let by = lowest_own.filter(|lowest| {
            record.kind == Kind::Own
                && validity.get(&record.id) == Some(&Some(true))
                && lowest.id != record.id
        });
        superseded.insert(record.id, by.map(|lowest| lowest.id));
    }
    Expected {
        validity,
        winners: winners
            .into_iter()
            .map(|(target, record)| (target, record.id))
            .collect(),
        superseded,
    }
}

#[test]
fn every_order_reaches_the_fold_from_scratch_and_flips_are_complete() {
    let (mut flips_seen, mut valid, mut invalid, mut superseded, mut refused) = (0, 0, 0, 0, 0);
    for seed in 0..60 {
        let scenario = scenario(seed);
        let mut rng = Rng::new(seed ^ 0xC3C3);
        let mut outcomes = Vec::new();
        for order in orders(&scenario, &mut rng) {
            let mut node = Node::new(&scenario.metas);
            let mut before: BTreeMap<Target, RecordId> = BTreeMap::new();
            for event in order {
                let flips = node.handle(event);
                let after: BTreeMap<Target, RecordId> = node.undos.undone().collect();
                let changed: Vec<Flip> = before
                    .keys()
                    .chain(after.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|target| before.get(target) != after.get(target))
                    .map(|target| Flip {
                        target: *target,
                        undone_by: after.get(target).copied(),
                    })
                    .collect();
                assert_eq!(flips, changed, "seed {seed}: flips are not the changes");
                flips_seen += flips.len();
                before = after;
            }

            let Expected {
                validity,
                winners,
                superseded: supersession,
            } = expected(&scenario, &node.timeline);
            for (id, expected) in &validity {
                let got = match node.refused.get(id) {
                    Some(_) => None,
                    None => node.undos.is_valid(id),
                };
                assert_eq!(got, *expected, "seed {seed}: validity of {id:?}");
            }
            assert_eq!(before, winners, "seed {seed}: winners");
            for (id, by) in &supersession {
                assert_eq!(
                    node.undos.superseded_by(id),
                    *by,
                    "seed {seed}: supersession of {id:?}"
                );
            }
            let supersessions: Vec<Option<RecordId>> = scenario
                .undos
                .iter()
                .map(|record| node.undos.superseded_by(&record.id))
                .collect();
            outcomes.push((node.undos.digest(), supersessions, node.refused));
            valid += validity.values().filter(|v| **v == Some(true)).count();
            invalid += validity.values().filter(|v| **v == Some(false)).count();
        }
        for other in &outcomes[1..] {
            assert!(other.0 == outcomes[0].0, "seed {seed}: digests differ");
            assert!(
                other.1 == outcomes[0].1,
                "seed {seed}: supersessions differ"
            );
            assert!(other.2 == outcomes[0].2, "seed {seed}: refusals differ");
        }
        superseded += outcomes[0].1.iter().flatten().count();
        refused += outcomes[0].2.len();
    }
    // The scenarios exercise every outcome in earnest.
    assert!(
        flips_seen > 2_000 && valid > 2_000 && invalid > 2_000 && superseded > 50 && refused > 100,
        "{flips_seen} flips, {valid} valid, {invalid} invalid, {superseded} superseded, \
         {refused} refused"
    );
}

#[test]
fn retain_drops_records_as_if_never_held_and_reports_the_flips() {
    let timeline = timeline();
    let (note, other_note, lost) = (target(A, 10), target(B, 11), target(C, 12));
    let low = own(A, 13, note, 0);
    let high = own(A, 20, note, 1);
    let only_high = own(B, 21, other_note, 0);
    let waiting = own(C, 22, lost, 0);
    let mut undos = Undos::new();
    for record in [&low, &high, &only_high] {
        waits(&mut undos, record, &timeline);
    }
    waits(&mut undos, &waiting, &timeline);
    undos.stored(stored(note, NOTE), &timeline);
    undos.stored(stored(other_note, NOTE), &timeline);
    assert_eq!(undos.waiting(), 1);
    // The state of a node that never held the undos above 15.
    let mut fresh = Undos::new();
    waits(&mut fresh, &low, &timeline);
    fresh.stored(stored(note, NOTE), &timeline);

    let flips = undos.retain(|record| record.global_time <= 15);
    assert_eq!(flips, [flip(other_note, None)]);
    assert_eq!(undos.digest(), fresh.digest());
    assert_eq!(undos.len(), 1);
    assert_eq!(undos.waiting(), 0);
    assert!(!undos.awaits(&lost));
    assert_eq!(undos.undone_by(&note), Some(low.id));
    assert_eq!(undos.records_of(&other_note), []);
    assert_eq!(undos.retain(|_| false), [flip(note, None)]);
    assert!(undos.is_empty());
}
