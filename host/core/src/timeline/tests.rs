//! The original's timeline scenarios, the bounds, and a randomized test of convergence and of
//! the changes' completeness.

use super::*;
use crate::rng::Rng;

use Permission::{Authorize, Permit, Revoke, Undo};
use StaticResolution::{Linear, Public};

const MASTER: MemberId = MemberId([0; 20]);
const A: MemberId = MemberId([1; 20]);
const B: MemberId = MemberId([2; 20]);
const C: MemberId = MemberId([3; 20]);

/// A Linear meta.
const LINEAR: u32 = 1;
/// A Dynamic(Public, Linear) meta.
const DYNAMIC: u32 = 2;
/// A Public meta.
const PUBLIC: u32 = 3;

fn timeline() -> Timeline {
    Timeline::new(
        MASTER,
        [
            (LINEAR, Resolution::Linear),
            (DYNAMIC, Resolution::Dynamic(vec![Public, Linear])),
            (PUBLIC, Resolution::Public),
        ],
    )
}

/// A record whose id is the hash of its content, as a packet's would be.
fn record(author: MemberId, global_time: u64, act: Act) -> Record {
    let mut bytes = Vec::new();
    bytes.extend(author.0);
    bytes.extend(global_time.to_be_bytes());
    match &act {
        Act::Authorize(grants) | Act::Revoke(grants) => {
            bytes.push(u8::from(matches!(act, Act::Authorize(_))));
            for grant in grants {
                bytes.extend(grant.member.0);
                bytes.extend(subject_bytes(grant.subject));
                bytes.push(grant.permission as u8);
            }
        }
        Act::Settings { meta, policy } => {
            bytes.push(2);
            bytes.extend(meta.to_be_bytes());
            bytes.push(*policy as u8);
        }
    }
    Record {
        id: RecordId::of_packet(&bytes),
        author,
        global_time,
        act,
    }
}

fn grants(member: MemberId, subject: Subject, permissions: &[Permission]) -> Vec<Grant> {
    permissions
        .iter()
        .map(|&permission| Grant {
            member,
            subject,
            permission,
        })
        .collect()
}

fn authorize(author: MemberId, t: u64, to: MemberId, meta: u32, what: &[Permission]) -> Record {
    record(
        author,
        t,
        Act::Authorize(grants(to, Subject::Community(meta), what)),
    )
}

fn revoke(author: MemberId, t: u64, to: MemberId, meta: u32, what: &[Permission]) -> Record {
    record(
        author,
        t,
        Act::Revoke(grants(to, Subject::Community(meta), what)),
    )
}

fn settings(author: MemberId, t: u64, meta: u32, policy: StaticResolution) -> Record {
    record(author, t, Act::Settings { meta, policy })
}

/// Inserts a record that must be new; returns its validity and changes.
fn put(timeline: &mut Timeline, record: &Record) -> (bool, Vec<Change>) {
    match timeline.insert(record.clone()).unwrap() {
        Inserted::Held { valid, changes } => (valid, changes),
        Inserted::Duplicate => panic!("{:?} was already held", record.id),
    }
}

fn allowed(timeline: &Timeline, member: MemberId, meta: u32, t: u64) -> bool {
    timeline
        .may(member, Subject::Community(meta), t)
        .is_allowed()
}

#[test]
fn a_permit_from_the_master_allows_from_its_global_time_on() {
    let mut timeline = timeline();
    assert!(!allowed(&timeline, A, LINEAR, 10));
    assert!(allowed(&timeline, MASTER, LINEAR, 10));
    let grant = authorize(MASTER, 10, A, LINEAR, &[Permit]);
    let (valid, changes) = put(&mut timeline, &grant);
    assert!(valid);
    assert_eq!(
        changes,
        [Change {
            subject: Subject::Community(LINEAR),
            member: Some(A),
            from: 10
        }]
    );
    assert!(!allowed(&timeline, A, LINEAR, 9));
    assert_eq!(
        timeline.may(A, Subject::Community(LINEAR), 10),
        Verdict::Allowed {
            proof: vec![grant.id]
        }
    );
    assert!(allowed(&timeline, A, LINEAR, 1_000));
    // Other members, metas and permissions are untouched.
    assert!(!allowed(&timeline, B, LINEAR, 11));
    assert!(!timeline.holds(A, Subject::Community(LINEAR), Authorize, 11));
    assert!(!timeline.holds(A, Subject::Community(DYNAMIC), Permit, 11));
    assert!(allowed(&timeline, B, PUBLIC, 11));
    assert!(timeline.proof_chain(&grant.id).is_empty());
}

#[test]
fn a_member_without_authorize_cannot_grant() {
    let mut timeline = timeline();
    put(&mut timeline, &authorize(MASTER, 10, A, LINEAR, &[Permit]));
    let (valid, changes) = put(&mut timeline, &authorize(A, 11, B, LINEAR, &[Permit]));
    assert!(!valid);
    assert!(changes.is_empty());
    assert!(!allowed(&timeline, B, LINEAR, 12));
}

#[test]
fn a_member_grants_only_what_it_holds() {
    let mut timeline = timeline();
    put(
        &mut timeline,
        &authorize(MASTER, 10, A, LINEAR, &[Authorize]),
    );
    // A holds Authorize but not Permit: it may pass Authorize on, not Permit.
    let (valid, _) = put(&mut timeline, &authorize(A, 11, B, LINEAR, &[Permit]));
    assert!(!valid);
    let (valid, changes) = put(&mut timeline, &authorize(A, 11, B, LINEAR, &[Authorize]));
    assert!(valid);
    assert!(
        changes.is_empty(),
        "Authorize gates no message: {changes:?}"
    );
    // All or nothing: one grant A may not give spoils the record.
    let mixed = record(
        A,
        12,
        Act::Authorize(vec![
            Grant {
                member: C,
                subject: Subject::Community(LINEAR),
                permission: Authorize,
            },
            Grant {
                member: C,
                subject: Subject::Community(DYNAMIC),
                permission: Authorize,
            },
        ]),
    );
    assert!(!put(&mut timeline, &mixed).0);
    assert!(!timeline.holds(C, Subject::Community(LINEAR), Authorize, 13));
}

#[test]
fn a_chain_from_the_master_through_a_member() {
    let mut timeline = timeline();
    let to_a = authorize(MASTER, 10, A, LINEAR, &[Authorize, Permit]);
    let to_b = authorize(A, 11, B, LINEAR, &[Permit]);
    put(&mut timeline, &to_a);
    assert!(put(&mut timeline, &to_b).0);
    assert!(!allowed(&timeline, B, LINEAR, 10));
    assert_eq!(
        timeline.may(B, Subject::Community(LINEAR), 11),
        Verdict::Allowed {
            proof: vec![to_b.id]
        }
    );
    assert_eq!(timeline.proof_chain(&to_b.id), [to_a.id]);
    assert!(timeline.proof_chain(&to_a.id).is_empty());
}

#[test]
fn a_revoked_authorize_spoils_later_grants_only() {
    let mut timeline = timeline();
    put(
        &mut timeline,
        &authorize(MASTER, 10, A, LINEAR, &[Authorize, Permit]),
    );
    let before = authorize(A, 12, B, LINEAR, &[Permit]);
    assert!(put(&mut timeline, &before).0);
    let (valid, changes) = put(&mut timeline, &revoke(MASTER, 15, A, LINEAR, &[Authorize]));
    assert!(valid);
    assert!(changes.is_empty(), "{changes:?}");
    let after = authorize(A, 20, C, LINEAR, &[Permit]);
    assert!(!put(&mut timeline, &after).0);
    assert_eq!(timeline.is_valid(&before.id), Some(true));
    assert!(allowed(&timeline, B, LINEAR, 30));
    assert!(!allowed(&timeline, C, LINEAR, 30));
    // A keeps its own Permit.
    assert!(allowed(&timeline, A, LINEAR, 30));
}

#[test]
fn a_revoke_inserted_late_invalidates_what_followed_and_says_so() {
    let mut timeline = timeline();
    put(
        &mut timeline,
        &authorize(MASTER, 10, A, LINEAR, &[Authorize, Permit]),
    );
    let to_c = authorize(A, 20, C, LINEAR, &[Permit]);
    assert!(put(&mut timeline, &to_c).0);
    let (valid, changes) = put(&mut timeline, &revoke(MASTER, 15, A, LINEAR, &[Authorize]));
    assert!(valid);
    assert_eq!(timeline.is_valid(&to_c.id), Some(false));
    assert_eq!(
        changes,
        [Change {
            subject: Subject::Community(LINEAR),
            member: Some(C),
            from: 20
        }]
    );
}

#[test]
fn a_grant_named_twice_is_applied_and_withdrawn_once() {
    let mut timeline = timeline();
    put(
        &mut timeline,
        &authorize(MASTER, 10, A, LINEAR, &[Authorize, Permit]),
    );
    let twice = authorize(A, 20, B, LINEAR, &[Permit, Permit]);
    assert!(put(&mut timeline, &twice).0);
    assert!(allowed(&timeline, B, LINEAR, 20));
    put(&mut timeline, &revoke(MASTER, 15, A, LINEAR, &[Authorize]));
    assert_eq!(timeline.is_valid(&twice.id), Some(false));
    assert!(!allowed(&timeline, B, LINEAR, 20));
}

#[test]
fn at_one_global_time_a_revoke_beats_a_grant_in_either_order() {
    let earlier = authorize(MASTER, 5, A, LINEAR, &[Permit]);
    let grant = authorize(MASTER, 10, A, LINEAR, &[Permit]);
    let revocation = revoke(MASTER, 10, A, LINEAR, &[Permit]);
    for order in [[&grant, &revocation], [&revocation, &grant]] {
        let mut timeline = timeline();
        put(&mut timeline, &earlier);
        for record in order {
            put(&mut timeline, record);
        }
        assert!(allowed(&timeline, A, LINEAR, 9));
        assert!(!allowed(&timeline, A, LINEAR, 10));
        assert!(!allowed(&timeline, A, LINEAR, 11));
        // A grant at a later time holds again.
        put(&mut timeline, &authorize(MASTER, 12, A, LINEAR, &[Permit]));
        assert!(allowed(&timeline, A, LINEAR, 12));
    }
}

#[test]
fn dynamic_settings_switch_the_policy_from_the_next_global_time() {
    let mut timeline = timeline();
    assert_eq!(timeline.policy(DYNAMIC, 5), Some(Public));
    assert!(allowed(&timeline, A, DYNAMIC, 5));
    let to_linear = settings(MASTER, 12, DYNAMIC, Linear);
    let (valid, changes) = put(&mut timeline, &to_linear);
    assert!(valid);
    assert_eq!(
        changes,
        [Change {
            subject: Subject::Community(DYNAMIC),
            member: None,
            from: 13
        }]
    );
    let to_public = settings(MASTER, 22, DYNAMIC, Public);
    put(&mut timeline, &to_public);
    let grant_b = authorize(MASTER, 14, B, DYNAMIC, &[Permit]);
    put(&mut timeline, &grant_b);

    assert!(allowed(&timeline, A, DYNAMIC, 12));
    assert_eq!(
        timeline.may(A, Subject::Community(DYNAMIC), 13),
        Verdict::Denied {
            proof: vec![to_linear.id]
        }
    );
    assert_eq!(
        timeline.may(B, Subject::Community(DYNAMIC), 15),
        Verdict::Allowed {
            proof: vec![to_linear.id, grant_b.id]
        }
    );
    assert!(!allowed(&timeline, A, DYNAMIC, 22));
    assert_eq!(timeline.policy(DYNAMIC, 22), Some(Linear));
    assert_eq!(
        timeline.may(A, Subject::Community(DYNAMIC), 23),
        Verdict::Allowed {
            proof: vec![to_public.id]
        }
    );
    // Linear metas ignore settings' absence; unknown metas are denied.
    assert_eq!(timeline.policy(LINEAR, 23), Some(Linear));
    assert_eq!(timeline.policy(99, 23), None);
    assert!(!allowed(&timeline, MASTER, 99, 23));
}

#[test]
fn disagreeing_settings_at_one_global_time_resolve_to_linear() {
    let setter = authorize_settings(A, 5);
    let public = settings(A, 12, DYNAMIC, Public);
    let linear = settings(MASTER, 12, DYNAMIC, Linear);
    for order in [[&public, &linear], [&linear, &public]] {
        let mut timeline = timeline();
        put(&mut timeline, &setter);
        for record in order {
            assert!(put(&mut timeline, record).0);
        }
        assert_eq!(timeline.policy(DYNAMIC, 13), Some(Linear));
        assert_eq!(
            timeline.may(B, Subject::Community(DYNAMIC), 13),
            Verdict::Denied {
                proof: vec![linear.id]
            }
        );
        assert_eq!(timeline.proof_chain(&public.id), [setter.id]);
    }
}

fn authorize_settings(member: MemberId, t: u64) -> Record {
    record(
        MASTER,
        t,
        Act::Authorize(grants(member, Subject::DynamicSettings, &[Permit])),
    )
}

#[test]
fn settings_need_a_permit_a_dynamic_meta_and_a_listed_policy() {
    let mut timeline = timeline();
    assert!(!put(&mut timeline, &settings(A, 12, DYNAMIC, Linear)).0);
    assert_eq!(timeline.policy(DYNAMIC, 13), Some(Public));
    assert!(!put(&mut timeline, &settings(MASTER, 12, LINEAR, Public)).0);
    assert!(!put(&mut timeline, &settings(MASTER, 12, 99, Public)).0);
    let mut narrow = Timeline::new(MASTER, [(DYNAMIC, Resolution::Dynamic(vec![Linear]))]);
    assert!(!put(&mut narrow, &settings(MASTER, 12, DYNAMIC, Public)).0);
    assert_eq!(narrow.policy(DYNAMIC, 1), Some(Linear));
}

#[test]
fn a_late_record_validates_an_earlier_invalid_one_and_reports_both() {
    let mut timeline = timeline();
    let to_b = authorize(A, 20, B, LINEAR, &[Permit]);
    let (valid, changes) = put(&mut timeline, &to_b);
    assert!(!valid);
    assert!(changes.is_empty());
    assert!(!allowed(&timeline, B, LINEAR, 20));

    let to_a = authorize(MASTER, 10, A, LINEAR, &[Authorize, Permit]);
    let (valid, changes) = put(&mut timeline, &to_a);
    assert!(valid);
    assert_eq!(timeline.is_valid(&to_b.id), Some(true));
    assert!(allowed(&timeline, B, LINEAR, 20));
    assert_eq!(
        changes,
        [
            Change {
                subject: Subject::Community(LINEAR),
                member: Some(A),
                from: 10
            },
            Change {
                subject: Subject::Community(LINEAR),
                member: Some(B),
                from: 20
            },
        ]
    );
}

#[test]
fn within_one_global_time_records_fold_in_id_order() {
    // A's grant and the master's grant to A share a global time: A's counts only if its id
    // sorts after the master's. Either way every order of arrival agrees.
    let to_a = authorize(MASTER, 10, A, LINEAR, &[Authorize, Permit]);
    let to_b = authorize(A, 10, B, LINEAR, &[Permit]);
    let mut one = timeline();
    put(&mut one, &to_a);
    put(&mut one, &to_b);
    let mut other = timeline();
    put(&mut other, &to_b);
    put(&mut other, &to_a);
    assert_eq!(one.digest(), other.digest());
    assert_eq!(one.is_valid(&to_b.id), Some(to_a.id < to_b.id));
}

#[test]
fn double_signed_messages_need_every_signer() {
    let mut timeline = timeline();
    put(&mut timeline, &authorize(MASTER, 10, A, LINEAR, &[Permit]));
    let linear = Subject::Community(LINEAR);
    assert!(!timeline.may_all(&[A, B], linear, 11).is_allowed());
    assert!(!timeline.may_all(&[B, A], linear, 11).is_allowed());
    assert!(!timeline.may_all(&[], linear, 11).is_allowed());
    assert!(
        timeline
            .may_all(&[], Subject::Community(PUBLIC), 11)
            .is_allowed()
    );
    let to_b = authorize(MASTER, 11, B, LINEAR, &[Permit]);
    put(&mut timeline, &to_b);
    assert_eq!(timeline.may_all(&[A, B], linear, 11).proof().len(), 2);
    assert!(timeline.may_all(&[MASTER, B], linear, 11).is_allowed());
}

#[test]
fn built_in_subjects_and_undo_other_are_always_linear() {
    let mut timeline = timeline();
    assert!(!timeline.may(A, Subject::DestroyCommunity, 5).is_allowed());
    assert!(
        timeline
            .may(MASTER, Subject::DestroyCommunity, 5)
            .is_allowed()
    );
    assert!(!timeline.may_undo_other(A, PUBLIC, 5).is_allowed());
    let undo = authorize(MASTER, 4, A, PUBLIC, &[Undo]);
    let (_, changes) = put(&mut timeline, &undo);
    assert_eq!(
        changes,
        [Change {
            subject: Subject::Community(PUBLIC),
            member: Some(A),
            from: 4
        }]
    );
    assert_eq!(
        timeline.may_undo_other(A, PUBLIC, 5),
        Verdict::Allowed {
            proof: vec![undo.id]
        }
    );
    let destroy = record(
        MASTER,
        6,
        Act::Authorize(grants(A, Subject::DestroyCommunity, &[Permit])),
    );
    put(&mut timeline, &destroy);
    assert!(timeline.may(A, Subject::DestroyCommunity, 6).is_allowed());
}

#[test]
fn bounds_duplicates_and_conflicts() {
    let mut timeline = timeline().with_limit(2);
    let first = authorize(MASTER, 1, A, LINEAR, &[Permit]);
    put(&mut timeline, &first);
    assert_eq!(timeline.insert(first.clone()), Ok(Inserted::Duplicate));
    let mut forged = first.clone();
    forged.global_time = 2;
    assert_eq!(
        timeline.insert(forged),
        Err(InsertError::Conflict { id: first.id })
    );
    assert_eq!(
        timeline.insert(record(MASTER, 2, Act::Authorize(Vec::new()))),
        Err(InsertError::Grants { count: 0 })
    );
    let many = vec![
        Grant {
            member: A,
            subject: Subject::Community(LINEAR),
            permission: Permit
        };
        MAX_GRANTS + 1
    ];
    assert_eq!(
        timeline.insert(record(MASTER, 2, Act::Revoke(many))),
        Err(InsertError::Grants {
            count: MAX_GRANTS + 1
        })
    );
    put(&mut timeline, &authorize(MASTER, 2, B, LINEAR, &[Permit]));
    assert_eq!(
        timeline.insert(authorize(MASTER, 3, C, LINEAR, &[Permit])),
        Err(InsertError::Full { limit: 2 })
    );
    assert_eq!(timeline.len(), 2);
}

// ------------------------------------------------------------------------------------------
// Randomized: every order of arrival converges, and the changes cover every flipped verdict.

/// One random community and its records.
struct Scenario {
    timeline: Timeline,
    members: Vec<MemberId>,
    subjects: Vec<Subject>,
    records: Vec<Record>,
    last_time: u64,
}

const LAST_TIME: u64 = 40;

fn scenario(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed);
    let members: Vec<MemberId> = (1..=5 + rng.index(6) as u8)
        .map(|n| MemberId([n; 20]))
        .collect();
    let metas: Vec<u32> = (1..=2 + rng.index(3) as u32).collect();
    let resolutions: Vec<(u32, Resolution)> = metas
        .iter()
        .map(|&meta| match rng.index(3) {
            0 => (meta, Resolution::Linear),
            _ => (meta, Resolution::Dynamic(vec![Public, Linear])),
        })
        .collect();
    let mut subjects: Vec<Subject> = metas.iter().map(|&meta| Subject::Community(meta)).collect();
    subjects.extend([Subject::DynamicSettings, Subject::DestroyCommunity]);

    let count = 100 + rng.index(201);
    let mut records = Vec::with_capacity(count);
    let mut ids = std::collections::HashSet::new();
    while records.len() < count {
        // The master signs a fifth of the records; a few grants go to a stranger or the master.
        let author = if rng.index(5) == 0 {
            MASTER
        } else {
            members[rng.index(members.len())]
        };
        let global_time = 1 + rng.index(LAST_TIME as usize) as u64;
        let act = if rng.index(6) == 0 {
            let meta = if rng.index(8) == 0 {
                99
            } else {
                metas[rng.index(metas.len())]
            };
            let policy = if rng.index(2) == 0 { Public } else { Linear };
            Act::Settings { meta, policy }
        } else {
            let list: Vec<Grant> = (0..1 + rng.index(3))
                .map(|_| Grant {
                    member: match rng.index(20) {
                        0 => MASTER,
                        1 => MemberId([200; 20]),
                        _ => members[rng.index(members.len())],
                    },
                    subject: subjects[rng.index(subjects.len())],
                    permission: [Permit, Authorize, Revoke, Undo][rng.index(4)],
                })
                .collect();
            if rng.index(4) == 0 {
                Act::Revoke(list)
            } else {
                Act::Authorize(list)
            }
        };
        let next = record(author, global_time, act);
        if ids.insert(next.id) {
            records.push(next);
        }
    }
    let mut checked = members.clone();
    checked.push(MemberId([200; 20]));
    Scenario {
        timeline: Timeline::new(MASTER, resolutions),
        members: checked,
        subjects,
        records,
        last_time: LAST_TIME,
    }
}

/// Three orders of arrival of the records: oldest first (the plain left fold of rule 2: no
/// record is ever judged again), newest first (most re-judging), and a shuffle with a tenth of
/// the records again as duplicates.
fn orders(records: &[Record], rng: &mut Rng) -> Vec<Vec<Record>> {
    let mut oldest_first = records.to_vec();
    oldest_first.sort_by_key(|record| (record.global_time, record.id));
    let newest_first = oldest_first.iter().rev().cloned().collect();
    let mut shuffled = records.to_vec();
    rng.shuffle(&mut shuffled);
    for _ in 0..records.len() / 10 {
        let copy = shuffled[rng.index(shuffled.len())].clone();
        let at = rng.index(shuffled.len() + 1);
        shuffled.insert(at, copy);
    }
    vec![oldest_first, newest_first, shuffled]
}

/// Every verdict of every (member, subject, permission) at every global time, in a fixed order.
fn grid(scenario: &Scenario, timeline: &Timeline) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for &member in &scenario.members {
        for &subject in &scenario.subjects {
            for t in 0..=scenario.last_time + 2 {
                verdicts.push(timeline.may(member, subject, t));
                if let Subject::Community(meta) = subject {
                    verdicts.push(timeline.may_undo_other(member, meta, t));
                }
            }
        }
    }
    verdicts
}

/// Whether each verdict of [`grid`] allows.
fn allowed_grid(scenario: &Scenario, timeline: &Timeline) -> Vec<bool> {
    grid(scenario, timeline)
        .iter()
        .map(Verdict::is_allowed)
        .collect()
}

/// The (member, subject, time) of each cell of [`grid`], twice for community subjects.
fn cells(scenario: &Scenario) -> Vec<(MemberId, Subject, u64)> {
    let mut cells = Vec::new();
    for &member in &scenario.members {
        for &subject in &scenario.subjects {
            for t in 0..=scenario.last_time + 2 {
                cells.push((member, subject, t));
                if let Subject::Community(_) = subject {
                    cells.push((member, subject, t));
                }
            }
        }
    }
    cells
}

fn covered(changes: &[Change], (member, subject, t): (MemberId, Subject, u64)) -> bool {
    changes.iter().any(|change| {
        change.subject == subject && change.member.is_none_or(|m| m == member) && t >= change.from
    })
}

#[test]
fn every_order_of_arrival_converges() {
    let (mut valid, mut invalid) = (0, 0);
    for seed in 0..200 {
        let scenario = scenario(seed);
        let mut rng = Rng::new(seed ^ 0xA5A5);
        let mut outcomes = Vec::new();
        for order in orders(&scenario.records, &mut rng) {
            let mut timeline = scenario.timeline.clone();
            for record in order {
                timeline.insert(record).unwrap();
            }
            assert_eq!(timeline.len(), scenario.records.len());
            let records: Vec<(Option<bool>, Vec<RecordId>)> = scenario
                .records
                .iter()
                .map(|record| {
                    let valid = timeline.is_valid(&record.id);
                    (valid, timeline.proof_chain(&record.id))
                })
                .collect();
            valid += records.iter().filter(|(v, _)| *v == Some(true)).count();
            invalid += records.iter().filter(|(v, _)| *v == Some(false)).count();
            // Verdicts follow from the entries and settings the digest covers: a grid of them
            // on one seed in ten checks that nothing else leaks in.
            let verdicts = (seed % 10 == 0).then(|| grid(&scenario, &timeline));
            outcomes.push((timeline.digest(), records, verdicts));
        }
        for other in &outcomes[1..] {
            assert!(other.0 == outcomes[0].0, "seed {seed}: digests differ");
            assert!(
                other.1 == outcomes[0].1,
                "seed {seed}: validity or proofs differ"
            );
            assert!(other.2 == outcomes[0].2, "seed {seed}: verdicts differ");
        }
    }
    // The scenarios exercise both outcomes in earnest.
    assert!(
        valid > 10_000 && invalid > 10_000,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn changes_cover_every_flipped_verdict() {
    let (mut flips, mut grids) = (0, 0);
    for seed in 0..40 {
        let scenario = scenario(seed);
        let cells = cells(&scenario);
        let mut rng = Rng::new(seed ^ 0x5A5A);
        let order = orders(&scenario.records, &mut rng).swap_remove(1 + rng.index(2));
        let mut timeline = scenario.timeline.clone();
        let mut before = allowed_grid(&scenario, &timeline);
        let mut digest = timeline.digest();
        for record in order {
            let id = record.id;
            let changes = match timeline.insert(record).unwrap() {
                Inserted::Duplicate => Vec::new(),
                Inserted::Held { valid, changes } => {
                    assert_eq!(timeline.is_valid(&id), Some(valid));
                    changes
                }
            };
            // The digest covers every entry and setting, which decide every verdict: when it
            // stays, no verdict can have changed.
            if timeline.digest() == digest {
                continue;
            }
            digest = timeline.digest();
            grids += 1;
            let after = allowed_grid(&scenario, &timeline);
            for (cell, (old, new)) in cells.iter().zip(before.iter().zip(&after)) {
                if old != new {
                    flips += 1;
                    assert!(
                        covered(&changes, *cell),
                        "seed {seed}: {cell:?} flipped, not in {changes:?}"
                    );
                }
            }
            before = after;
        }
    }
    assert!(flips > 1_000, "only {flips} flips in {grids} grids");
}

#[test]
fn judge_answers_what_insert_would_without_inserting() {
    let mut t = timeline();
    let grant = authorize(MASTER, 5, A, LINEAR, &[Permit, Authorize]);
    let by_a = authorize(A, 7, B, LINEAR, &[Permit]);
    let early = authorize(A, 4, B, LINEAR, &[Permit]);
    let dynamic = settings(A, 8, DYNAMIC, Linear);
    assert!(t.judge(&grant));
    assert!(!t.judge(&by_a));
    assert!(t.is_empty(), "judging inserts nothing");
    put(&mut t, &grant);
    assert!(t.judge(&by_a));
    // Before the grant's time A held nothing.
    assert!(!t.judge(&early));
    // A holds no permit on the settings subject.
    assert!(!t.judge(&dynamic));
    assert!(t.judge(&settings(MASTER, 8, DYNAMIC, Linear)));
    // A setting of a static meta, or an empty authorize, is never valid.
    assert!(!t.judge(&settings(MASTER, 8, LINEAR, Linear)));
    assert!(!t.judge(&record(MASTER, 9, Act::Authorize(Vec::new()))));
    // A held record answers its validity; the records are found by id.
    let (valid, _) = put(&mut t, &early);
    assert!(!valid);
    assert!(!t.judge(&early));
    assert!(t.judge(&grant));
    assert_eq!(t.record(&grant.id), Some(&grant));
    assert_eq!(t.record(&by_a.id), None);
    assert_eq!(t.master(), MASTER);
    // Every record held, valid or not, in fold order.
    let held: Vec<RecordId> = t.records().map(|r| r.id).collect();
    assert_eq!(held, [early.id, grant.id]);
}

#[test]
fn a_rebuilt_timeline_holds_the_same_records_under_new_resolutions() {
    let mut t = timeline();
    put(&mut t, &authorize(MASTER, 5, A, PUBLIC, &[Permit]));
    put(&mut t, &authorize(MASTER, 6, B, DYNAMIC, &[Permit]));
    let same = t.rebuilt([
        (LINEAR, Resolution::Linear),
        (DYNAMIC, Resolution::Dynamic(vec![Public, Linear])),
        (PUBLIC, Resolution::Public),
    ]);
    assert_eq!(same.digest(), t.digest());
    assert_eq!(same.len(), 2);
    // PUBLIC turned Linear: A's permit now counts, C has none.
    let linear = t.rebuilt([(PUBLIC, Resolution::Linear)]);
    assert!(allowed(&linear, A, PUBLIC, 6));
    assert!(!allowed(&linear, C, PUBLIC, 6));
    assert!(allowed(&t, C, PUBLIC, 6));
}

#[test]
fn holdings_and_policies_show_the_state_after_every_record() {
    let mut t = timeline();
    let grant = authorize(MASTER, 5, A, LINEAR, &[Permit, Authorize]);
    let later = authorize(MASTER, 7, A, LINEAR, &[Permit]);
    let taken = revoke(MASTER, 6, B, LINEAR, &[Permit]);
    let by_b = authorize(MASTER, 3, B, LINEAR, &[Permit]);
    let switch = settings(MASTER, 8, DYNAMIC, Linear);
    for r in [&grant, &later, &taken, &by_b, &switch] {
        put(&mut t, r);
    }
    let held: Vec<(MemberId, Subject, Permission, u64, Vec<RecordId>)> = t
        .holdings()
        .into_iter()
        .map(|h| (h.member, h.subject, h.permission, h.since, h.proof))
        .collect();
    // A's permit is decided by the latest grant; B's was revoked; the master is never listed.
    assert_eq!(
        held,
        [
            (A, Subject::Community(LINEAR), Permit, 7, vec![later.id]),
            (A, Subject::Community(LINEAR), Authorize, 5, vec![grant.id]),
        ]
    );
    let policies = t.policies();
    assert_eq!(
        policies,
        [PolicyNow {
            meta: DYNAMIC,
            policy: Linear,
            since: Some(9),
            proof: vec![switch.id],
        }]
    );
    let validity: Vec<bool> = t.records_with_validity().map(|(_, valid)| valid).collect();
    assert_eq!(validity, [true; 5]);
    assert_eq!(timeline().policies()[0].since, None);
    for permission in Permission::ALL {
        assert_eq!(Permission::from_name(permission.name()), Some(permission));
    }
    assert_eq!(Permission::from_name("Permit"), None);
}

#[test]
fn allowed_spans_agree_with_may_at_every_global_time() {
    for seed in 0..40u64 {
        let mut scenario = scenario(seed);
        for record in scenario.records.clone() {
            let _ = scenario.timeline.insert(record);
        }
        let timeline = &scenario.timeline;
        let mut members = scenario.members.clone();
        members.push(MASTER);
        for &member in &members {
            for &subject in &scenario.subjects {
                let Subject::Community(meta) = subject else {
                    continue;
                };
                for from in [0, 1, 7, scenario.last_time / 2] {
                    let spans = timeline.allowed_spans(member, meta, from);
                    assert_eq!(spans.first().map(|s| s.low), Some(from));
                    assert_eq!(spans.last().map(|s| s.high), Some(u64::MAX));
                    for pair in spans.windows(2) {
                        assert_eq!(pair[0].high + 1, pair[1].low, "no gap, no overlap");
                        assert_ne!(pair[0].allowed, pair[1].allowed, "maximal runs");
                    }
                    for t in from..=scenario.last_time + 3 {
                        let span = spans.iter().find(|s| s.low <= t && t <= s.high).unwrap();
                        assert_eq!(
                            span.allowed,
                            timeline.may(member, subject, t).is_allowed(),
                            "seed {seed} member {member:?} meta {meta} t {t}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn cosigned_reevaluation_agrees_with_may_all_for_every_pair_of_signers() {
    for seed in 0..40u64 {
        let mut scenario = scenario(seed);
        for record in scenario.records.clone() {
            let _ = scenario.timeline.insert(record);
        }
        let timeline = &scenario.timeline;
        let mut members = scenario.members.clone();
        members.push(MASTER);
        // A member the timeline never heard of signs too.
        members.push(MemberId([0xee; 20]));
        let from = 1;
        for &subject in &scenario.subjects {
            let Subject::Community(meta) = subject else {
                continue;
            };
            let changes = members.iter().map(|m| Some(*m)).chain([None]);
            for member in changes {
                let change = Change {
                    subject,
                    member,
                    from,
                };
                let Some((_, pairs)) = timeline.cosigned_reevaluation(&change) else {
                    continue;
                };
                for &first in &members {
                    for &second in &members {
                        let matching: Vec<&Reevaluation> = pairs
                            .iter()
                            .filter(|r| r.authors.matches(&first, Some((&first, &second))))
                            .collect();
                        let concerned = member.is_none_or(|m| m == first || m == second);
                        if !concerned {
                            continue;
                        }
                        assert_eq!(
                            matching.len(),
                            1,
                            "seed {seed}: signers {first:?} and {second:?} match one pair"
                        );
                        let spans = &matching[0].spans;
                        for t in from..=scenario.last_time + 3 {
                            let span = spans.iter().find(|s| s.low <= t && t <= s.high).unwrap();
                            assert_eq!(
                                span.allowed,
                                timeline.may_all(&[first, second], subject, t).is_allowed(),
                                "seed {seed} signers {first:?} {second:?} meta {meta} t {t}"
                            );
                        }
                    }
                }
            }
        }
    }
}
