//! Re-evaluation benchmark (a bench binary, not a timed test), issue 11's two goals for a
//! community of 1,000,000 stored messages: a revoke re-evaluated in ≤ 1 s, and the timeline
//! ready ≤ 1 s after a restart.
//!
//! For each of two communities (default 1,000,000 messages of a Linear meta each, 1,000
//! authors, global times 1..=N, one author L holding a large share: 20 % "large share", 90 %
//! "worst case: one author holding most rows"), a fresh SQLite store (the node's own, through
//! its `Store` API) is filled directly with synthetic 250-byte packets (untimed), with
//! BENCH_RECORDS (default 1,000) authorize records signed by the master granting each author a
//! permit. The timeline is built from them (untimed: the running node holds it). Then, timed,
//! what the node does when a revoke of L's permit reaching back to global time N / 10 is
//! stored: insert the record into the timeline, turn its changes into spans
//! (`Timeline::reevaluation`), and apply each span to the store as the community thread does
//! (`Store::deny_range`); the time ends when the flags are committed (durable, every reader
//! honouring them). Then, printed apart, the flipped ids read in pages of `MARK_PAGE` for the
//! plugin (`Store::flipped`), which the plugin may be told of after the flags. Then the same for a new grant of L one global time
//! later (the flags flip back). Printed: time, rows flipped, spans (range updates).
//!
//! The restart: the store is closed and opened again, the node's resume state read
//! (`Store::resume`, which reads every stored permission packet), and a core `Node` joins the
//! community with it (the timeline rebuilt: every record decoded, its signature checked, and
//! folded); the time ends when the timeline answers (`Node::timeline_view`). In process: the
//! spawn of a `dispersy` process and the plugin's own restore are not in it.
//!
//! Run: `cargo build --release --workspace --locked && cargo bench -p dispersy-node --bench reevaluation`
//! Options (environment): BENCH_MESSAGES, BENCH_AUTHORS, BENCH_RECORDS, BENCH_RESTARTS
//! (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::env_or;
use dispersy_core::authority::{self, Body, MemberRef, Target};
use dispersy_core::bloom::PacketHash;
use dispersy_core::community::Definition;
use dispersy_core::identity::{KeyPair, MemberId};
use dispersy_core::meta::{
    Authentication, Destination, Distribution, MetaMessage, Resolution, SyncOrder, builtin,
};
use dispersy_core::rng::Rng;
use dispersy_core::timeline::{Inserted, Permission, Subject, Timeline};
use dispersy_core::wire::{Conversion, SignedMessage};
use dispersy_node::store::{NewMessage, Span, Store};

/// The Linear meta of the bench community.
const META: u32 = 8;
/// Rows flipped per statement, as the community thread flips them.
const PAGE: usize = dispersy_node::plugin::worker::MARK_PAGE;
/// The goal, for both.
const GOAL: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() {
    let count = env_or("BENCH_MESSAGES", 1_000_000);
    let authors = env_or("BENCH_AUTHORS", 1_000).max(2) as usize;
    let records = (env_or("BENCH_RECORDS", 1_000) as usize).max(authors);
    let restarts = env_or("BENCH_RESTARTS", 3).max(1);
    println!(
        "reevaluation: {count} Linear messages by {authors} authors, {records} permission records; revoke reaching back to global time {}",
        count / 10
    );
    for (label, share) in [("large share", 0.20), ("worst case", 0.90)] {
        run(label, share, count, authors, records, restarts).await;
    }
}

async fn run(label: &str, share: f64, count: u64, authors: usize, records: usize, restarts: u64) {
    let master = KeyPair::from_secret(&[0x5a; 32]).unwrap();
    let definition = definition(&master);
    let community_id = definition.id();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("dispersy.db");
    let store = Store::open(&db).await.unwrap();
    let community = store.ensure_community(&definition).await.unwrap();

    // Authors: member ids only (the synthetic packets are never verified by this path).
    let members: Vec<MemberId> = (0..authors)
        .map(|i| {
            let mut id = [0u8; 20];
            id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            MemberId(id)
        })
        .collect();
    let large = members[0];

    // The permission records: the master grants each author a permit, several per record.
    let filled = Instant::now();
    let mut timeline = Timeline::new(master.member_id(), [(META, Resolution::Linear)]);
    let mut rows = Vec::with_capacity(records);
    let per_record = members.len().div_ceil(records).max(1);
    for (sequence, (k, chunk)) in
        (1u32..).zip(members.chunks(per_record).cycle().take(records).enumerate())
    {
        let targets = chunk
            .iter()
            .map(|member| Target {
                member: MemberRef::from_id(*member),
                grants: vec![(Subject::Community(META), Permission::Permit)],
            })
            .collect();
        // One global time per record of the master (the store keys messages by author and
        // global time), in sequence order.
        let signed = sign(
            &master,
            community_id,
            1 + k as u64,
            sequence,
            Body::Authorize(targets),
        );
        let _ = timeline.insert(record(&definition, &signed));
        rows.push(built_in(
            community,
            &master,
            &signed,
            sequence,
            builtin::AUTHORIZE,
        ));
    }
    // Authorize numbers are one sequence per member: store them one by one in order.
    for row in rows {
        store.insert(std::slice::from_ref(&row)).await.unwrap();
    }

    let mut rng = Rng::new(11);
    let mut batch = Vec::with_capacity(10_000);
    let mut large_rows = 0u64;
    for global_time in 1..=count {
        let member = if rng.unit() < share {
            large_rows += 1;
            large
        } else {
            members[1 + rng.index(members.len() - 1)]
        };
        let mut packet = vec![0u8; 250];
        packet[..8].copy_from_slice(&global_time.to_be_bytes());
        packet[8..28].copy_from_slice(&member.0);
        batch.push(NewMessage {
            community,
            member,
            global_time,
            meta: META,
            sequence: None,
            priority: 128,
            history: None,
            co_signer: None,
            hash: PacketHash::of(&packet),
            packet,
        });
        if batch.len() == 10_000 {
            store.insert(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.insert(&batch).await.unwrap();
    println!(
        "{label}: L holds {large_rows} of {count} messages ({:.0} %); store filled in {:.1} s",
        100.0 * large_rows as f64 / count as f64,
        filled.elapsed().as_secs_f64()
    );

    // The revoke, then a new grant one global time later: each from the record to the flags.
    let reach = count / 10;
    let revoke = sign(
        &master,
        community_id,
        reach,
        1,
        Body::Revoke(vec![Target {
            member: MemberRef::from_id(large),
            grants: vec![(Subject::Community(META), Permission::Permit)],
        }]),
    );
    let regrant = sign(
        &master,
        community_id,
        reach + 1,
        records as u32 + 1,
        Body::Authorize(vec![Target {
            member: MemberRef::from_id(large),
            grants: vec![(Subject::Community(META), Permission::Permit)],
        }]),
    );
    for (what, signed) in [("revoke", &revoke), ("new grant", &regrant)] {
        let started = Instant::now();
        let Ok(Inserted::Held { changes, .. }) = timeline.insert(record(&definition, signed))
        else {
            panic!("the {what} is not held");
        };
        let mut flipped = 0u64;
        let mut spans = 0usize;
        let mut flips = Vec::new();
        for change in &changes {
            let Some((meta, reevaluations)) = timeline.reevaluation(change) else {
                continue;
            };
            for reevaluation in reevaluations {
                for span in reevaluation.spans {
                    let range = Span {
                        community,
                        meta,
                        authors: reevaluation.authors.clone(),
                        low: span.low,
                        high: span.high,
                    };
                    let marked = store.deny_range(&range, !span.allowed).await.unwrap();
                    flipped += marked.marked.flipped;
                    spans += 1;
                    flips.push(marked);
                }
            }
        }
        let elapsed = started.elapsed();
        // Then, as the community thread does after the flags are durable: the flipped ids in
        // pages for the plugin.
        let mut pages: Vec<Vec<i64>> = Vec::new();
        for marked in &flips {
            store
                .flipped(marked, PAGE, |ids| pages.push(ids))
                .await
                .unwrap();
        }
        let paged = started.elapsed();
        assert_eq!(
            pages.iter().map(Vec::len).sum::<usize>() as u64,
            flipped,
            "every flipped id is handed out once"
        );
        println!(
            "  {what} of L at global time {}: flags durable in {:.3} s, {flipped} rows flipped, {spans} range updates; goal ≤ {} s: {}; their ids read in {} pages for the plugin by {:.3} s",
            signed.message.global_time,
            elapsed.as_secs_f64(),
            GOAL.as_secs(),
            if elapsed <= GOAL { "PASS" } else { "FAIL" },
            pages.len(),
            paged.as_secs_f64(),
        );
    }
    store.close().await;

    // The limit, in the same run: the same rows flagged by one plain UPDATE statement (no
    // paging, no ids back), committed; then put back (untimed).
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let started = Instant::now();
    let limit_rows = sqlx::query(
        "UPDATE sync SET undone = 2 WHERE community = ?1 AND meta = ?2 AND member = ?3
         AND global_time >= ?4",
    )
    .bind(community)
    .bind(i64::from(META))
    .bind(large.0.as_slice())
    .bind(reach as i64 + 1)
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    let limit = started.elapsed();
    sqlx::query("UPDATE sync SET undone = 0 WHERE community = ?1 AND meta = ?2 AND member = ?3")
        .bind(community)
        .bind(i64::from(META))
        .bind(large.0.as_slice())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    println!(
        "  for comparison, the per-row flag of migration 0007: one plain UPDATE of sync.undone over the same author's {limit_rows} rows (committed): {:.3} s",
        limit.as_secs_f64()
    );

    // Restarts: from opening the store to the timeline answering.
    let me = KeyPair::from_secret(&[0x77; 32]).unwrap();
    for restart in 1..=restarts {
        let started = Instant::now();
        let store = Store::open(&db).await.unwrap();
        let resume = store
            .resume(community, me.member_id(), &[META])
            .await
            .unwrap();
        let stored_records = resume.authority.len();
        let read = started.elapsed();
        let mut node = dispersy_core::node::Node::new(
            dispersy_core::node::Config::default(),
            me.clone(),
            "127.0.0.1:9".parse().unwrap(),
            restart,
            dispersy_core::time::Instant::from_millis(0),
        );
        node.join(
            dispersy_core::time::Instant::from_millis(0),
            definition.clone(),
            resume,
        )
        .unwrap();
        let view = node.timeline_view(&community_id).unwrap();
        let elapsed = started.elapsed();
        assert!(
            view.records.len() >= records,
            "the timeline holds every record"
        );
        println!(
            "  restart {restart}: timeline of {stored_records} records ready in {:.3} s (store opened and resume read in {:.3} s); goal ≤ {} s: {}",
            elapsed.as_secs_f64(),
            read.as_secs_f64(),
            GOAL.as_secs(),
            if elapsed <= GOAL { "PASS" } else { "FAIL" }
        );
        store.close().await;
    }
}

/// The bench community: one Linear full-sync meta.
fn definition(master: &KeyPair) -> Definition {
    Definition {
        name: "reevaluation".into(),
        version: "0.1.0".into(),
        master: master.public().clone(),
        conversions: vec![Conversion::version(1).unwrap()],
        metas: vec![MetaMessage {
            id: META,
            name: "linear-post".into(),
            authentication: Authentication::Member,
            resolution: Resolution::Linear,
            distribution: Distribution::FullSync {
                sequence_numbers: false,
                order: SyncOrder::Ascending,
                pruning: None,
            },
            destination: Destination::Community { node_count: 10 },
            priority: 128,
            batch_window: Duration::ZERO,
        }],
        undoable: Vec::new(),
    }
}

/// A permission message signed by `author`.
fn sign(
    author: &KeyPair,
    community: dispersy_core::identity::CommunityId,
    global_time: u64,
    sequence: u32,
    body: Body,
) -> SignedMessage {
    let message = authority::message(
        community,
        author.public().clone(),
        global_time,
        Some(sequence),
        body,
    );
    SignedMessage::sign(message, &[author]).unwrap()
}

/// The timeline record of a signed permission message.
fn record(definition: &Definition, signed: &SignedMessage) -> dispersy_core::timeline::Record {
    let resolution = |meta| definition.meta_by_id(meta).map(|m| &m.resolution);
    authority::record(&signed.message, &signed.packet, resolution).unwrap()
}

/// The store row of a signed built-in message.
fn built_in(
    community: i64,
    author: &KeyPair,
    signed: &SignedMessage,
    sequence: u32,
    meta: u32,
) -> NewMessage {
    NewMessage {
        community,
        member: author.member_id(),
        global_time: signed.message.global_time,
        meta,
        sequence: Some(sequence),
        priority: builtin::meta(meta).map_or(128, |m| m.priority),
        history: None,
        co_signer: None,
        hash: PacketHash::of(&signed.packet),
        packet: signed.packet.clone(),
    }
}
