//! Destroy-community scenarios on the simulated network (the original's
//! test_destroycommunity, and the soft freeze it never built): a hard destroy by the founder
//! spreads to every node, which keep only it and its proof, answer introduction-requests with
//! it and accept nothing new; a destroy without permit waits for a proof that never comes;
//! a soft destroy freezes the community at its global time; the state survives a restart.

use std::time::Duration;

use super::fixtures::synced;
use super::*;
use crate::authority::{self, Body, Degree, MemberRef, Target};
use crate::community::{Definition, Resume};
use crate::identity::CommunityId;
use crate::meta::{Resolution, builtin};
use crate::node::{AuthorityError, CreateError};
use crate::stats::DropReason;
use crate::timeline::{Permission, Subject};
use crate::wire::{self, CommunityMessage, Conversion, SignedMessage};

/// A Linear meta.
const DECREE: u32 = 9;
/// A Public meta.
const POST: u32 = 2;

/// Long enough for sync alone to spread a message to every node of [`network`].
const SPREAD: Duration = Duration::from_secs(300);

fn definition() -> Definition {
    Definition {
        name: "destroyable".into(),
        version: "0.1.0".into(),
        master: master().public().clone(),
        conversions: vec![Conversion::version(1).expect("valid")],
        metas: vec![
            synced(POST, "post", Resolution::Public),
            synced(DECREE, "decree", Resolution::Linear),
        ],
        undoable: Vec::new(),
    }
}

fn master() -> KeyPair {
    Sim::key(998)
}

fn id() -> CommunityId {
    definition().id()
}

fn key(i: usize) -> KeyPair {
    Sim::key(i as u64 + 1)
}

/// A tracker (node 0) and `peers` nodes that found each other; node 1 founded the community
/// (holds the permit on destroy-community) and every node holds the founding authorize.
fn network(peers: usize) -> Sim {
    let mut sim = super::fixtures::network(21, peers, &definition(), super::fixtures::peer);
    let now = sim.now;
    sim.nodes[1].found(now, id(), &master()).expect("founded");
    sim.run_for(SPREAD);
    sim
}

fn plugin_message(author: &KeyPair, meta: u32, global_time: u64, payload: &[u8]) -> SignedMessage {
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

fn destroy(author: &KeyPair, global_time: u64, degree: Degree) -> SignedMessage {
    let message = authority::message(
        id(),
        author.public().clone(),
        global_time,
        None,
        Body::Destroy(degree),
    );
    SignedMessage::sign(message, &[author]).expect("signed")
}

fn deliver(sim: &mut Sim, from: usize, to: usize, messages: &[&SignedMessage]) {
    let packets: Vec<&[u8]> = messages.iter().map(|m| m.packet.as_slice()).collect();
    let (from, to) = (sim.address(from), sim.address(to));
    sim.inject(from, to, wire::encode_collection(0, &packets));
}

fn community(sim: &Sim, i: usize) -> &crate::community::Community {
    sim.nodes[i].community(&id()).expect("joined")
}

fn degree(sim: &Sim, i: usize) -> Option<Degree> {
    community(sim, i).destroyed.as_ref().map(|d| d.degree)
}

fn rows(sim: &Sim, i: usize) -> Vec<(u32, u64)> {
    sim.stores[i]
        .messages(id())
        .map(|k| (k.meta, k.row.global_time))
        .collect()
}

fn stored(sim: &Sim, i: usize, packet: &[u8]) -> bool {
    sim.stores[i].messages(id()).any(|k| k.packet == packet)
}

fn dropped(sim: &Sim, i: usize, reason: DropReason) -> u64 {
    community(sim, i).stats.dropped.get(reason)
}

#[test]
fn a_hard_destroy_by_the_founder_spreads_and_leaves_only_itself_and_its_proof() {
    let mut sim = network(4);
    let founder = 1;
    for (i, text) in [(1, b"one"), (2, b"two"), (3, b"six")] {
        sim.create(i, id(), "post", text.to_vec(), &[])
            .expect("public");
    }
    sim.create(founder, id(), "decree", b"law".to_vec(), &[])
        .expect("the founder may");
    // A grant that is no proof of the destroy: deleted with the rest.
    let now = sim.now;
    let grant = Body::Authorize(vec![Target {
        member: MemberRef::from_key(key(2).public().clone()),
        grants: vec![(Subject::Community(DECREE), Permission::Permit)],
    }]);
    sim.nodes[founder]
        .create_authority(now, id(), grant)
        .expect("the founder may grant");
    sim.run_for(SPREAD);
    for i in 1..=4 {
        assert_eq!(
            rows(&sim, i).len(),
            6,
            "node {i}: 2 authorizes, 3 posts, decree"
        );
        assert_eq!(community(&sim, i).timeline.records().count(), 2, "node {i}");
    }

    let now = sim.now;
    let created = sim.nodes[founder]
        .create_authority(now, id(), Body::Destroy(Degree::Hard))
        .expect("the founder holds the permit");
    assert_eq!(created.sequence_number, 0);
    // Forwarded epidemically: it reaches every node well before sync would.
    sim.run_for(Duration::from_secs(2));
    for i in 1..=4 {
        assert_eq!(degree(&sim, i), Some(Degree::Hard), "node {i}");
        let mut kept = rows(&sim, i);
        kept.sort_unstable();
        assert_eq!(
            kept.iter().map(|(meta, _)| *meta).collect::<Vec<_>>(),
            [builtin::AUTHORIZE, builtin::DESTROY_COMMUNITY],
            "node {i} keeps the founding authorize and the destroy"
        );
        assert_eq!(community(&sim, i).timeline.records().count(), 1, "node {i}");
        assert!(
            sim.events[i].iter().any(|e| matches!(
                e,
                Event::Destroyed {
                    degree: Degree::Hard,
                    ..
                }
            )),
            "node {i} told its driver"
        );
    }

    // Nothing new is accepted, nothing created.
    let late = plugin_message(&key(3), POST, created.global_time + 1, b"late");
    let before = dropped(&sim, 2, DropReason::Destroyed);
    deliver(&mut sim, 3, 2, &[&late]);
    sim.run_for(Duration::from_millis(200));
    assert!(!stored(&sim, 2, &late.packet));
    assert_eq!(dropped(&sim, 2, DropReason::Destroyed), before + 1);
    assert_eq!(
        sim.create(2, id(), "post", b"no".to_vec(), &[]),
        Err(CreateError::Destroyed(id()))
    );
    let now = sim.now;
    assert_eq!(
        sim.nodes[founder].create_authority(now, id(), Body::Destroy(Degree::Soft)),
        Err(AuthorityError::Destroyed(id()))
    );

    // A node joining now walks to the destroyed nodes: they answer with the destroy (no
    // introduction-response), it asks for the proof and ends destroyed too.
    let trackers = vec![sim.address(0)];
    let fresh = sim.add_node(
        None,
        Config {
            trackers,
            ..Config::default()
        },
    );
    let now = sim.now;
    sim.nodes[fresh]
        .join(now, definition(), Resume::default())
        .expect("join");
    sim.run_for(Duration::from_secs(30));
    assert_eq!(degree(&sim, fresh), Some(Degree::Hard));
    assert_eq!(rows(&sim, fresh).len(), 2);
    let answers: u64 = (1..=4)
        .map(|i| community(&sim, i).stats.destroy_answers)
        .sum();
    assert!(answers > 0);
    let me = sim.address(fresh);
    for i in 1..=4 {
        let from = sim.address(i);
        let responses = sim.kinds.get(&(from, me, "introduction-response"));
        assert_eq!(responses, None, "node {i} answered with the destroy alone");
    }
}

#[test]
fn a_destroy_without_permit_is_refused_at_creation_and_waits_for_proof_in_vain() {
    let mut sim = network(3);
    let now = sim.now;
    assert!(matches!(
        sim.nodes[2].create_authority(now, id(), Body::Destroy(Degree::Hard)),
        Err(AuthorityError::NotPermitted { .. })
    ));
    let forged = destroy(&key(2), community(&sim, 3).global_time + 1, Degree::Hard);
    deliver(&mut sim, 2, 3, &[&forged]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(community(&sim, 3).stats.delayed, 1);
    sim.run_for(SPREAD);
    assert_eq!(degree(&sim, 3), None);
    assert!(!stored(&sim, 3, &forged.packet));
    assert_eq!(
        sim.nodes[3].stats().dropped.get(DropReason::ProofTimeout),
        1
    );
    sim.create(3, id(), "post", b"still alive".to_vec(), &[])
        .expect("not destroyed");
}

#[test]
fn a_soft_destroy_freezes_at_its_global_time_and_a_hard_one_still_wins() {
    let mut sim = network(3);
    let (founder, b, c) = (1, 2, 3);
    let early = sim
        .create(b, id(), "post", b"early".to_vec(), &[])
        .expect("post");
    sim.run_for(SPREAD);
    // C holds a message far above what the others know when the soft destroy comes.
    let ahead = plugin_message(&key(c), POST, community(&sim, c).global_time + 50, b"ahead");
    deliver(&mut sim, b, c, &[&ahead]);
    sim.run_for(Duration::from_millis(100));
    assert!(stored(&sim, c, &ahead.packet));
    let now = sim.now;
    let soft = sim.nodes[founder]
        .create_authority(now, id(), Body::Destroy(Degree::Soft))
        .expect("permitted");
    let freeze = soft.global_time;
    assert!(freeze < ahead.message.global_time && freeze > early.global_time);
    sim.run_for(SPREAD);
    for i in 1..=3 {
        assert_eq!(degree(&sim, i), Some(Degree::Soft), "node {i}");
        assert!(community(&sim, i).global_time <= freeze, "node {i}");
        assert!(rows(&sim, i).iter().all(|(_, t)| *t <= freeze), "node {i}");
        assert!(
            sim.stores[i]
                .messages(id())
                .any(|k| k.meta == POST && k.row.global_time == early.global_time),
            "node {i} keeps what is older"
        );
    }
    assert!(sim.events[c].iter().any(|e| matches!(
        e,
        Event::Destroyed { degree: Degree::Soft, global_time, .. } if *global_time == freeze
    )));

    // Newer messages are refused, older ones still accepted, nothing created.
    let newer = plugin_message(&key(5), POST, freeze + 1, b"newer");
    let older = plugin_message(&key(6), POST, freeze - 1, b"older");
    let higher_soft = destroy(&master(), freeze + 2, Degree::Soft);
    deliver(&mut sim, c, b, &[&newer, &older, &higher_soft]);
    sim.run_for(Duration::from_millis(200));
    assert!(!stored(&sim, b, &newer.packet));
    assert!(!stored(&sim, b, &higher_soft.packet));
    assert!(stored(&sim, b, &older.packet));
    assert_eq!(dropped(&sim, b, DropReason::Frozen), 2);
    assert_eq!(
        sim.create(b, id(), "post", b"no".to_vec(), &[]),
        Err(CreateError::Destroyed(id()))
    );

    // A lower soft destroy freezes lower, everywhere.
    let lower = destroy(&master(), early.global_time, Degree::Soft);
    deliver(&mut sim, c, b, &[&lower]);
    sim.run_for(SPREAD);
    for i in 1..=3 {
        assert_eq!(
            community(&sim, i).destroyed.as_ref().map(|d| d.global_time),
            Some(early.global_time),
            "node {i}"
        );
    }

    // A hard destroy still passes the freeze and wins.
    let now = sim.now;
    sim.nodes[founder]
        .create_authority(now, id(), Body::Destroy(Degree::Hard))
        .expect("a hard destroy of a frozen community");
    sim.run_for(Duration::from_secs(2));
    for i in 1..=3 {
        assert_eq!(degree(&sim, i), Some(Degree::Hard), "node {i}");
    }
}

#[test]
fn a_restarted_node_comes_back_destroyed_from_its_store() {
    let mut sim = network(2);
    let now = sim.now;
    sim.nodes[1]
        .create_authority(now, id(), Body::Destroy(Degree::Hard))
        .expect("permitted");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(degree(&sim, 2), Some(Degree::Hard));
    let packets: Vec<Vec<u8>> = sim.stores[2]
        .messages(id())
        .map(|k| k.packet.clone())
        .collect();
    // A new node given the same stored packets (a restart's Resume).
    let restarted = sim.add_node(None, Config::default());
    let now = sim.now;
    let resume = Resume {
        authority: packets,
        ..Resume::default()
    };
    sim.nodes[restarted]
        .join(now, definition(), resume)
        .expect("join");
    assert_eq!(degree(&sim, restarted), Some(Degree::Hard));
    // The timeline it rebuilds is the one the running node kept.
    assert_eq!(
        sim.nodes[restarted].timeline_digest(&id()),
        sim.nodes[2].timeline_digest(&id())
    );
    assert!(sim.nodes[restarted].announce_destroyed(id()));
    sim.run_for(Duration::from_millis(10));
    assert!(
        sim.events[restarted]
            .iter()
            .any(|e| matches!(e, Event::Destroyed { keep, .. } if keep.len() == 2))
    );
    // A destroy by someone without permit does not destroy at join.
    let other = sim.add_node(None, Config::default());
    let forged = destroy(&key(other), 5, Degree::Hard);
    let resume = Resume {
        authority: vec![forged.packet],
        ..Resume::default()
    };
    let now = sim.now;
    sim.nodes[other]
        .join(now, definition(), resume)
        .expect("join");
    assert_eq!(degree(&sim, other), None);
}

#[test]
fn a_message_above_the_freeze_that_waited_for_a_sequence_number_is_not_kept() {
    // Found by the convergence property test: a numbered message above the freeze that
    // arrived with the destroy waited for its missing number (the wait was taken after the
    // freeze check), and was stored once that number came, after the deletion.
    let mut sim = network(2);
    let (a, b) = (1, 2);
    let t = community(&sim, a).global_time + 3;
    let soft = destroy(&master(), t, Degree::Soft);
    let undo = |sequence: u32, global_time: u64| {
        let body = Body::UndoOwn {
            target_global_time: t - 2,
        };
        let message = authority::message(
            id(),
            key(b).public().clone(),
            global_time,
            Some(sequence),
            body,
        );
        SignedMessage::sign(message, &[&key(b)]).expect("signed")
    };
    let (first, second) = (undo(1, t - 1), undo(2, t + 2));
    deliver(&mut sim, b, a, &[&soft, &second]);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(degree(&sim, a), Some(Degree::Soft));
    deliver(&mut sim, b, a, &[&first]);
    sim.run_for(Duration::from_secs(1));
    assert!(stored(&sim, a, &first.packet));
    assert!(!stored(&sim, a, &second.packet), "nothing above the freeze");
}
