//! Undo scenarios on the simulated network (the original's test_undo): undo-own hides its
//! target on every node and sync stops offering it; undo-other needs `undo` on the target's
//! meta; two undo-own of one target converge on the binary-lower; an undo whose target is
//! missing fetches it with missing-message; the state does not depend on arrival order.

use std::time::Duration;

use super::fixtures::synced;
use super::*;
use crate::authority::{self, Body, MemberRef, Target as Grantee};
use crate::community::{Definition, Resume};
use crate::identity::{CommunityId, MemberId};
use crate::meta::Resolution;
use crate::node::{UndoError, UndoFlip};
use crate::sync::Query;
use crate::timeline::{Permission, Subject};
use crate::undo::Target;
use crate::wire::{self, CommunityMessage, Conversion, SignedMessage};

/// A Public, undoable meta.
const POST: u32 = 2;
/// A Public meta that is not undoable.
const NOTE: u32 = 3;

const SPREAD: Duration = Duration::from_secs(300);

fn definition() -> Definition {
    Definition {
        name: "undo".into(),
        version: "0.1.0".into(),
        master: master().public().clone(),
        conversions: vec![Conversion::version(1).expect("valid")],
        metas: vec![
            synced(POST, "post", Resolution::Public),
            synced(NOTE, "note", Resolution::Public),
        ],
        undoable: vec![POST],
    }
}

fn master() -> KeyPair {
    Sim::key(999)
}

fn id() -> CommunityId {
    definition().id()
}

fn key(i: usize) -> KeyPair {
    Sim::key(i as u64 + 1)
}

fn member(i: usize) -> MemberId {
    key(i).member_id()
}

/// A tracker (node 0) and `peers` joined nodes that found each other.
fn network(peers: usize, seed: u64) -> Sim {
    super::fixtures::network(seed, peers, &definition(), super::fixtures::peer)
}

fn signed(author: &KeyPair, global_time: u64, sequence: Option<u32>, body: Body) -> SignedMessage {
    let message = authority::message(id(), author.public().clone(), global_time, sequence, body);
    SignedMessage::sign(message, &[author]).expect("signed")
}

fn undo_own(author: &KeyPair, sequence: u32, global_time: u64, target: u64) -> SignedMessage {
    let body = Body::UndoOwn {
        target_global_time: target,
    };
    signed(author, global_time, Some(sequence), body)
}

fn undo_other(
    author: &KeyPair,
    sequence: u32,
    global_time: u64,
    target: MemberId,
    target_time: u64,
) -> SignedMessage {
    let body = Body::UndoOther {
        target: MemberRef::from_id(target),
        target_global_time: target_time,
    };
    signed(author, global_time, Some(sequence), body)
}

fn grant_undo(sequence: u32, global_time: u64, to: MemberId) -> SignedMessage {
    let body = Body::Authorize(vec![Grantee {
        member: MemberRef::from_id(to),
        grants: vec![(Subject::Community(POST), Permission::Undo)],
    }]);
    signed(&master(), global_time, Some(sequence), body)
}

fn post(author: &KeyPair, meta: u32, global_time: u64, payload: &[u8]) -> SignedMessage {
    SignedMessage::sign(
        CommunityMessage {
            community: id(),
            message_type: meta,
            conversion: Conversion::version(1).expect("valid"),
            authors: vec![author.public().clone()],
            global_time,
            sequence_number: None,
            resolution_index: None,
            relay_hops: None,
            payload: payload.to_vec(),
            authority: None,
        },
        &[author],
    )
    .expect("signed")
}

fn deliver(sim: &mut Sim, from: usize, to: usize, messages: &[&SignedMessage]) {
    let packets: Vec<&[u8]> = messages.iter().map(|m| m.packet.as_slice()).collect();
    let (from, to) = (sim.address(from), sim.address(to));
    sim.inject(from, to, wire::encode_collection(0, &packets));
}

fn global_time(sim: &Sim, i: usize) -> u64 {
    sim.nodes[i].community(&id()).expect("joined").global_time
}

/// Node `i`'s stored row of `target`: (undone bits, the undo's (member, global time)).
fn row_state(sim: &Sim, i: usize, target: Target) -> Option<(u8, Option<(MemberId, u64)>)> {
    let store = &sim.stores[i];
    let kept = store
        .messages(id())
        .find(|k| k.member == target.member && k.row.global_time == target.global_time)?;
    let by = kept.undone_by.and_then(|row| {
        store
            .messages(id())
            .find(|k| k.row.id == row)
            .map(|k| (k.member, k.row.global_time))
    });
    Some((kept.undone, by))
}

/// Whether node `i`'s store offers `target` to sync (the oldest-first query of every row).
fn offered(sim: &Sim, i: usize, target: Target) -> bool {
    let (rows, _) = sim.stores[i].sync_query(id(), Query::Oldest { limit: 10_000 });
    let kept: Vec<u64> = sim.stores[i]
        .messages(id())
        .filter(|k| k.member == target.member && k.row.global_time == target.global_time)
        .map(|k| k.row.id)
        .collect();
    rows.iter().any(|r| kept.contains(&r.id))
}

fn undone(sim: &Sim, i: usize) -> Vec<UndoFlip> {
    sim.nodes[i].undone(&id()).expect("joined")
}

#[test]
fn an_undo_own_hides_its_target_on_every_node_and_sync_stops_offering_it() {
    let mut sim = network(3, 21);
    let (a, b) = (1, 2);
    let gt = global_time(&sim, a) + 1;
    let message = post(&key(a), POST, gt, b"first");
    deliver(&mut sim, b, a, &[&message]);
    sim.run_for(SPREAD);
    let target = Target {
        member: member(a),
        global_time: gt,
    };
    for i in 1..=3 {
        assert_eq!(row_state(&sim, i, target), Some((0, None)), "node {i}");
        assert!(offered(&sim, i, target), "node {i}");
    }
    // B is not its author and holds no undo: refused before signing.
    let meta = sim.stores[b].meta_of(id(), target.member, target.global_time);
    assert_eq!(meta, Some(POST));
    let now = sim.now;
    let refused = sim.nodes[b].create_undo(now, id(), target, meta);
    assert!(
        matches!(refused, Err(UndoError::NotPermitted(_))),
        "{refused:?}"
    );
    // A undoes its own post.
    let created = sim.nodes[a]
        .create_undo(now, id(), target, meta)
        .expect("undo");
    assert!(!created.existing);
    assert_eq!(created.kind, "undo-own");
    sim.run_for(SPREAD);
    let by = (member(a), created.global_time);
    for i in 1..=3 {
        assert_eq!(row_state(&sim, i, target), Some((1, Some(by))), "node {i}");
        assert!(!offered(&sim, i, target), "node {i}");
        let flips = undone(&sim, i);
        assert_eq!(flips.len(), 1, "node {i}");
        assert_eq!(flips[0].target, target);
        assert!(sim.events[i].iter().any(|e| matches!(e,
            Event::Undone { flips, .. } if flips.iter().any(|f| f.target == target && f.undone_by.is_some()))));
    }
    // A second undo of the same target by A returns the first, signing nothing.
    let now = sim.now;
    let again = sim.nodes[a]
        .create_undo(now, id(), target, meta)
        .expect("undo");
    assert!(again.existing);
    assert_eq!(again.global_time, created.global_time);
    // Not stored, not undoable: refused.
    let note = post(&key(a), NOTE, global_time(&sim, a) + 1, b"note");
    deliver(&mut sim, b, a, &[&note]);
    sim.run_for(Duration::from_secs(2));
    let note_target = Target {
        member: member(a),
        global_time: note.message.global_time,
    };
    let now = sim.now;
    let meta = sim.stores[a].meta_of(id(), note_target.member, note_target.global_time);
    assert!(matches!(
        sim.nodes[a].create_undo(now, id(), note_target, meta),
        Err(UndoError::NotUndoable(_))
    ));
    let missing = Target {
        member: member(a),
        global_time: 1,
    };
    assert!(matches!(
        sim.nodes[a].create_undo(now, id(), missing, None),
        Err(UndoError::NotStored { .. })
    ));
    // Restart: the undo state is rebuilt from the stored undo packets; the row stays hidden.
    let packets: Vec<Vec<u8>> = sim.stores[b]
        .messages(id())
        .filter(|k| crate::meta::builtin::is_handled(k.meta))
        .map(|k| k.packet.clone())
        .collect();
    sim.nodes[b].leave(id()).expect("leave");
    let now = sim.now;
    let resume = Resume {
        authority: packets,
        ..Resume::default()
    };
    sim.nodes[b]
        .join(now, definition(), resume)
        .expect("join again");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(undone(&sim, b), undone(&sim, a));
    assert_eq!(row_state(&sim, b, target), Some((1, Some(by))));
}

#[test]
fn an_undo_other_needs_undo_on_the_meta_and_becomes_valid_after_a_grant() {
    let mut sim = network(3, 22);
    let (a, b, c) = (1, 2, 3);
    let gt = global_time(&sim, a) + 1;
    let message = post(&key(a), POST, gt, b"by a");
    let target = Target {
        member: member(a),
        global_time: gt,
    };
    deliver(&mut sim, c, a, &[&message]);
    sim.run_for(SPREAD);
    // B undoes A's post without holding undo: stored and synced, but held invalid.
    let undo = undo_other(&key(b), 1, gt + 2, member(a), gt);
    deliver(&mut sim, c, b, &[&undo]);
    sim.run_for(SPREAD);
    for i in 1..=3 {
        assert_eq!(row_state(&sim, i, target), Some((0, None)), "node {i}");
        assert!(undone(&sim, i).is_empty(), "node {i}");
        assert!(
            sim.stores[i]
                .messages(id())
                .any(|k| k.packet == undo.packet),
            "node {i} stores the invalid undo"
        );
    }
    // The master grants B undo on posts before the undo's global time: valid everywhere.
    let grant = grant_undo(1, gt + 1, member(b));
    deliver(&mut sim, c, a, &[&grant]);
    sim.run_for(SPREAD * 3);
    for i in 1..=3 {
        assert_eq!(
            row_state(&sim, i, target),
            Some((1, Some((member(b), gt + 2)))),
            "node {i}"
        );
    }
    let digests: Vec<[u8; 32]> = (1..=3)
        .map(|i| sim.nodes[i].undo_digest(&id()).expect("joined"))
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn two_undo_own_of_one_target_converge_on_the_binary_lower() {
    let mut sim = network(3, 23);
    let a = 1;
    let gt = global_time(&sim, a) + 1;
    let message = post(&key(a), POST, gt, b"twice");
    let target = Target {
        member: member(a),
        global_time: gt,
    };
    let first = undo_own(&key(a), 1, gt + 1, gt);
    let second = undo_own(&key(a), 2, gt + 2, gt);
    let lower = if first.packet < second.packet {
        &first
    } else {
        &second
    };
    // Everyone gets the post and the first undo; node 3 gets the second one alone, first.
    deliver(&mut sim, a, 3, &[&message, &second]);
    deliver(&mut sim, 3, 1, &[&message, &first]);
    deliver(&mut sim, 3, 2, &[&message, &first]);
    sim.run_for(SPREAD);
    let by = (member(a), lower.message.global_time);
    for i in 1..=3 {
        assert_eq!(row_state(&sim, i, target), Some((1, Some(by))), "node {i}");
        let kept = sim.stores[i]
            .messages(id())
            .filter(|k| k.packet == first.packet || k.packet == second.packet)
            .count();
        assert_eq!(kept, 2, "node {i} keeps both undos");
    }
}

#[test]
fn an_undo_whose_target_is_missing_fetches_it_with_missing_message() {
    let mut sim = network(2, 24);
    let (a, b) = (1, 2);
    let gt = global_time(&sim, a) + 1;
    let message = post(&key(a), POST, gt, b"late");
    let undo = undo_own(&key(a), 1, gt + 1, gt);
    // A stores the post; B receives only the undo, from A, before any sync round.
    deliver(&mut sim, b, a, &[&message]);
    sim.run_for(Duration::from_millis(100));
    deliver(&mut sim, a, b, &[&undo]);
    sim.run_for(Duration::from_secs(1));
    let asked = sim
        .kinds
        .iter()
        .filter(|((from, _, kind), _)| *from == sim.address(b) && *kind == "missing-message")
        .count();
    assert!(asked > 0, "B asked A for the target");
    let target = Target {
        member: member(a),
        global_time: gt,
    };
    assert_eq!(
        row_state(&sim, b, target),
        Some((1, Some((member(a), gt + 1))))
    );
}

#[test]
fn the_undo_state_does_not_depend_on_arrival_order_or_duplicates() {
    let (a, b, c) = (key(1), key(2), key(3));
    // Global times: posts at 10 and 11, the grant of undo to C at 12, undos from 13.
    let post_a = post(&a, POST, 10, b"a");
    let post_b = post(&b, POST, 11, b"b");
    let note_a = post(&a, NOTE, 9, b"not undoable");
    let grant = grant_undo(1, 12, c.member_id());
    let other = undo_other(&c, 1, 13, a.member_id(), 10);
    let own_1 = undo_own(&b, 1, 14, 11);
    let own_2 = undo_own(&b, 2, 15, 11);
    let of_note = undo_own(&a, 1, 16, 9);
    let all = [
        &post_a, &post_b, &note_a, &grant, &other, &own_1, &own_2, &of_note,
    ];
    let mut rng = Rng::new(5);
    let mut outcomes = Vec::new();
    for round in 0..12 {
        let mut sim = network(1, 100 + round);
        let mut order: Vec<&SignedMessage> = all.to_vec();
        // Duplicates: about half of the messages arrive twice.
        for m in all {
            if rng.next_u64().is_multiple_of(2) {
                order.push(m);
            }
        }
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for m in order {
            deliver(&mut sim, 0, 1, &[m]);
            sim.run_for(Duration::from_millis(50));
        }
        sim.run_for(Duration::from_secs(60));
        let state = undone(&sim, 1);
        let digest = sim.nodes[1].undo_digest(&id()).expect("joined");
        outcomes.push((state, digest));
    }
    let expected: Vec<Target> = vec![
        Target {
            member: a.member_id(),
            global_time: 10,
        },
        Target {
            member: b.member_id(),
            global_time: 11,
        },
    ];
    let mut expected = expected;
    expected.sort();
    for (state, digest) in &outcomes {
        let targets: Vec<Target> = state.iter().map(|f| f.target).collect();
        assert_eq!(targets, expected);
        assert_eq!(digest, &outcomes[0].1);
        assert_eq!(state, &outcomes[0].0);
    }
}

#[test]
fn an_undo_whose_sender_lacks_the_target_asks_walked_peers_until_one_has_it() {
    // Found by the convergence property test: the target is undone at every node that has
    // it, so sync never offers it, and the undo's sender was the only one asked.
    let mut sim = network(3, 25);
    let (a, b, c) = (1, 2, 3);
    let gt = global_time(&sim, a) + 1;
    let message = post(&key(a), POST, gt, b"lost on the way to C");
    let undo = undo_own(&key(a), 1, gt + 1, gt);
    let target = Target {
        member: member(a),
        global_time: gt,
    };
    for i in [a, b] {
        deliver(&mut sim, c, i, &[&message, &undo]);
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(row_state(&sim, c, target), None);
    // C gets the undo alone, from the tracker (which holds nothing of the community).
    deliver(&mut sim, 0, c, &[&undo]);
    sim.run_for(SPREAD);
    let by = Some((member(a), gt + 1));
    for i in [a, b, c] {
        assert_eq!(row_state(&sim, i, target), Some((1, by)), "node {i}");
    }
    let digests: Vec<[u8; 32]> = [a, b, c]
        .iter()
        .map(|i| sim.nodes[*i].undo_digest(&id()).expect("joined"))
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_soft_destroy_below_an_undo_drops_it_and_shows_its_target_again() {
    // Found by the convergence property test: the undo state kept the undos a soft destroy
    // deleted, so their targets stayed undone at nodes that had them before the destroy.
    let mut sim = network(2, 26);
    let (a, b) = (1, 2);
    let gt = global_time(&sim, a) + 1;
    let message = post(&key(a), POST, gt, b"older than the freeze");
    let undo = undo_own(&key(a), 1, gt + 2, gt);
    let soft = signed(
        &master(),
        gt + 1,
        None,
        Body::Destroy(crate::authority::Degree::Soft),
    );
    let target = Target {
        member: member(a),
        global_time: gt,
    };
    // A stores the post and its undo, then the destroy; B the destroy first.
    deliver(&mut sim, b, a, &[&message, &undo]);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        row_state(&sim, a, target),
        Some((1, Some((member(a), gt + 2))))
    );
    deliver(&mut sim, b, a, &[&soft]);
    deliver(&mut sim, a, b, &[&soft]);
    sim.run_for(Duration::from_millis(100));
    deliver(&mut sim, a, b, &[&message, &undo]);
    sim.run_for(Duration::from_secs(1));
    for i in [a, b] {
        assert_eq!(row_state(&sim, i, target), Some((0, None)), "node {i}");
        assert!(undone(&sim, i).is_empty(), "node {i}");
        assert!(
            !sim.stores[i]
                .messages(id())
                .any(|k| k.packet == undo.packet),
            "node {i} keeps nothing above the freeze"
        );
    }
    assert_eq!(
        sim.nodes[a].undo_digest(&id()),
        sim.nodes[b].undo_digest(&id())
    );
    assert!(
        sim.events[a].iter().any(|e| matches!(e,
            Event::Undone { flips, .. } if flips.iter().any(|f| f.target == target && f.undone_by.is_none()))),
        "A's driver was told to show the post again"
    );
}
