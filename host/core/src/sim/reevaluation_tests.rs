//! Retroactive re-evaluation on the simulated network: a revoke, a new grant or a
//! dynamic-settings switch reaching back over stored messages makes the node emit
//! [`Event::Reevaluate`], and the driver's denied flags (the simulated store's set) follow
//! the timeline: denied from the change's global time on, shown again where allowed again.

use std::time::Duration;

use super::permission_tests::*;
use super::*;
use crate::authority::{Body, MemberRef, Target};
use crate::identity::MemberId;
use crate::timeline::{Permission, Subject};
use crate::wire::SignedMessage;

/// The global times of `author`'s stored messages of `meta` that node `i` holds denied.
fn denied(sim: &Sim, i: usize, meta: u32, author: MemberId) -> Vec<u64> {
    sim.stores[i]
        .1
        .iter()
        .filter(|(c, m, who, _)| *c == id() && *m == meta && *who == author)
        .map(|(_, _, _, t)| *t)
        .collect()
}

/// Whether node `i` stores `message`.
fn stored(sim: &Sim, i: usize, message: &SignedMessage) -> bool {
    sim.stores[i]
        .rows
        .iter()
        .any(|k| k.packet == message.packet)
}

fn permit(meta: u32) -> Vec<(Subject, Permission)> {
    vec![(Subject::Community(meta), Permission::Permit)]
}

fn revoke(sequence: u32, global_time: u64, of: MemberId, meta: u32) -> SignedMessage {
    permission(
        &master(),
        sequence,
        global_time,
        Body::Revoke(vec![Target {
            member: MemberRef::from_id(of),
            grants: permit(meta),
        }]),
    )
}

#[test]
fn a_revoke_denies_the_members_messages_from_its_global_time_and_a_new_grant_shows_them_again() {
    let mut sim = network(2);
    let (a, b) = (1, 2);
    let g = global_time(&sim, a) + 1;
    let grant = authorize(&master(), 1, g, member(b), &permit(DECREE));
    deliver(&mut sim, b, a, &[&grant]);
    sim.run_for(Duration::from_millis(100));
    let decrees: Vec<SignedMessage> = (1..=10u64)
        .map(|k| plugin_message(&key(b), DECREE, g + k, format!("decree {k}").as_bytes()))
        .collect();
    let refs: Vec<&SignedMessage> = decrees.iter().collect();
    deliver(&mut sim, b, a, &refs);
    sim.run_for(Duration::from_millis(200));
    assert!(decrees.iter().all(|d| stored(&sim, a, d)));
    assert!(denied(&sim, a, DECREE, member(b)).is_empty());

    // The founder revokes B's permit at g + 5: B's decrees from g + 5 on are denied, the
    // older ones stay shown.
    deliver(&mut sim, b, a, &[&revoke(1, g + 5, member(b), DECREE)]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        denied(&sim, a, DECREE, member(b)),
        (g + 5..=g + 10).collect::<Vec<_>>()
    );
    assert!(
        decrees.iter().all(|d| stored(&sim, a, d)),
        "denied, not deleted"
    );

    // A new grant at g + 8 shows B's decrees from g + 8 on again.
    let again = authorize(&master(), 2, g + 8, member(b), &permit(DECREE));
    deliver(&mut sim, b, a, &[&again]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        denied(&sim, a, DECREE, member(b)),
        (g + 5..=g + 7).collect::<Vec<_>>()
    );
    // The events carried spans, not messages: one event per record here.
    let reevaluations = sim.events[a]
        .iter()
        .filter(|e| matches!(e, Event::Reevaluate { meta, .. } if *meta == DECREE))
        .count();
    assert_eq!(reevaluations, 3, "the grant, the revoke, the new grant");
}

#[test]
fn a_switch_to_linear_denies_the_notices_of_members_without_a_permit_only() {
    let mut sim = network(3);
    let (a, b, c) = (1, 2, 3);
    let g = global_time(&sim, a) + 1;
    let grant = authorize(&master(), 1, g, member(b), &permit(NOTICE));
    deliver(&mut sim, b, a, &[&grant]);
    sim.run_for(Duration::from_millis(100));
    // Public (the first listed policy): anyone's notices are stored.
    let notices: Vec<SignedMessage> = (1..=6u64)
        .flat_map(|k| {
            [b, c].map(|who| {
                plugin_message(&key(who), NOTICE, g + k, format!("{who} {k}").as_bytes())
            })
        })
        .collect();
    for notice in &notices {
        deliver(&mut sim, c, a, &[notice]);
    }
    sim.run_for(Duration::from_millis(200));
    for notice in &notices {
        assert!(stored(&sim, a, notice), "{:?}", notice.message.payload);
    }

    // Linear from g + 3 + 1 on: C's notices from g + 4 are denied, B's (permit) are not.
    let settings = permission(
        &master(),
        1,
        g + 3,
        Body::DynamicSettings {
            meta: NOTICE,
            index: 1,
        },
    );
    deliver(&mut sim, b, a, &[&settings]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        denied(&sim, a, NOTICE, member(c)),
        (g + 4..=g + 6).collect::<Vec<_>>()
    );
    assert!(denied(&sim, a, NOTICE, member(b)).is_empty());

    // Revoking B's permit then reaches B's notices too, from the revoke's time.
    deliver(&mut sim, b, a, &[&revoke(1, g + 4, member(b), NOTICE)]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        denied(&sim, a, NOTICE, member(b)),
        (g + 4..=g + 6).collect::<Vec<_>>()
    );
    // Back to Public at g + 5 (from g + 6): everyone's notice at g + 6 is shown again.
    let public = permission(
        &master(),
        2,
        g + 5,
        Body::DynamicSettings {
            meta: NOTICE,
            index: 0,
        },
    );
    deliver(&mut sim, b, a, &[&public]);
    sim.run_for(Duration::from_millis(200));
    assert!(stored(&sim, a, &public));
    assert_eq!(
        denied(&sim, a, NOTICE, member(b)),
        (g + 4..=g + 5).collect::<Vec<_>>()
    );
    assert_eq!(
        denied(&sim, a, NOTICE, member(c)),
        (g + 4..=g + 5).collect::<Vec<_>>()
    );
}

#[test]
fn a_rebuilt_timeline_re_evaluates_nothing() {
    let mut sim = network(2);
    let (a, b) = (1, 2);
    let g = global_time(&sim, a) + 1;
    let grant = authorize(&master(), 1, g, member(b), &permit(DECREE));
    deliver(
        &mut sim,
        b,
        a,
        &[&grant, &revoke(1, g + 2, member(b), DECREE)],
    );
    sim.run_for(Duration::from_millis(200));
    let before = sim.events[a].len();
    let packets: Vec<Vec<u8>> = vec![grant.packet.clone()];
    let now = sim.now;
    sim.nodes[a].leave(id()).expect("leave");
    sim.nodes[a]
        .join(
            now,
            definition(),
            crate::community::Resume {
                authority: packets,
                ..Default::default()
            },
        )
        .expect("join");
    sim.run_for(Duration::from_millis(100));
    assert!(
        !sim.events[a][before..]
            .iter()
            .any(|e| matches!(e, Event::Reevaluate { .. })),
        "the stored flags stand"
    );
}

/// A covenant (double-member, Linear) signed by `first` and `second` at `global_time`.
fn covenant(first: usize, second: usize, global_time: u64, payload: &[u8]) -> SignedMessage {
    let message = crate::wire::CommunityMessage {
        community: id(),
        message_type: COVENANT,
        conversion: crate::wire::Conversion::version(1).expect("valid"),
        authors: vec![key(first).public().clone(), key(second).public().clone()],
        global_time,
        sequence_number: None,
        resolution_index: None,
        relay_hops: None,
        payload: payload.to_vec(),
        authority: None,
    };
    SignedMessage::sign(message, &[&key(first), &key(second)]).expect("signed")
}

/// The global times of the stored covenants node `i` holds denied.
fn denied_covenants(sim: &Sim, i: usize) -> Vec<u64> {
    sim.stores[i]
        .1
        .iter()
        .filter(|(c, m, _, _)| *c == id() && *m == COVENANT)
        .map(|(_, _, _, t)| *t)
        .collect()
}

#[test]
fn a_revoke_of_either_signer_denies_a_co_signed_message_and_a_grant_shows_it_only_if_both_hold() {
    let mut sim = network(3);
    let (a, b, c) = (1, 2, 3);
    let g = global_time(&sim, a) + 1;
    for (sequence, who) in [(1, b), (2, c)] {
        deliver(
            &mut sim,
            b,
            a,
            &[&authorize(
                &master(),
                sequence,
                g + u64::from(sequence) - 1,
                member(who),
                &permit(COVENANT),
            )],
        );
        sim.run_for(Duration::from_millis(100));
    }
    // B first, C second at g + 2 and g + 4; C first, B second at g + 6.
    let deals = [
        covenant(b, c, g + 2, b"one"),
        covenant(b, c, g + 4, b"two"),
        covenant(c, b, g + 6, b"three"),
    ];
    deliver(&mut sim, b, a, &deals.iter().collect::<Vec<_>>());
    sim.run_for(Duration::from_millis(200));
    assert!(deals.iter().all(|d| stored(&sim, a, d)));
    assert!(denied_covenants(&sim, a).is_empty());

    // The second signer of the first two loses its permit at g + 3: whatever the order of
    // signing, its covenants from then on are denied.
    deliver(&mut sim, b, a, &[&revoke(1, g + 3, member(c), COVENANT)]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(denied_covenants(&sim, a), vec![g + 4, g + 6]);

    // B loses its permit at g + 5, then C gets it back at g + 4: the covenant at g + 4 is
    // shown again (both hold it there), the one at g + 6 stays denied (B does not).
    deliver(&mut sim, b, a, &[&revoke(2, g + 5, member(b), COVENANT)]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(denied_covenants(&sim, a), vec![g + 4, g + 6]);
    let again = authorize(&master(), 3, g + 4, member(c), &permit(COVENANT));
    deliver(&mut sim, b, a, &[&again]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(denied_covenants(&sim, a), vec![g + 6]);
}
