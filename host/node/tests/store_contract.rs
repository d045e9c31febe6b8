//! The storage contract (`dispersy_core::store`) held against both stores: each case is a script
//! of operations played on the SQLite store and on the reference in-memory store the simulation
//! runs on; the two transcripts must be equal, and each case also checks what the contract says
//! its transcript must hold.

use std::time::Duration;

use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, KeyPair, MemberId};
use dispersy_core::meta::{
    Authentication, Destination, Distribution, MetaMessage, Resolution, SyncOrder,
};
use dispersy_core::missing::Lookup;
use dispersy_core::store::{Entry, Outcome, memory};
use dispersy_core::sync::{Query, Range, Row};
use dispersy_core::wire::Conversion;
use dispersy_node::store::{NewMessage, Store};

/// One operation of a case.
#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<Entry>),
    Query(Query),
    Rows {
        range: Range,
        limit: usize,
        metas: Vec<(u32, SyncOrder, u64)>,
    },
    Lookup(Lookup, usize),
    Prune {
        meta: u32,
        below: u64,
    },
    Packets(Vec<u64>),
    Messages,
    /// A destroy's deletion: hard keeps the (member, global time) listed, soft what is at or
    /// below `above`.
    Destroy {
        keep: Option<Vec<(MemberId, u64)>>,
        above: u64,
    },
}

/// What a store answered to one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Inserted(Vec<Outcome>),
    Queried(Vec<Row>, Vec<Row>),
    Rows(Vec<Row>),
    Packets(Vec<Vec<u8>>),
    Pruned(u64),
    /// How many messages a destroy deleted.
    Destroyed(u64),
    /// The stored messages, in row id order.
    Messages(Vec<Message>),
}

/// (row id, member, global time, meta, sequence, packet) of a stored message.
type Message = (u64, MemberId, u64, u32, Option<u32>, Vec<u8>);

fn definition() -> Definition {
    let master = KeyPair::from_secret(&[3u8; 32]).expect("key");
    Definition {
        undoable: Vec::new(),
        name: "contract".into(),
        version: "1".into(),
        master: master.public().clone(),
        conversions: vec![Conversion::version(1).expect("conversion")],
        metas: vec![MetaMessage {
            id: 1,
            name: "post".into(),
            authentication: Authentication::Member,
            resolution: Resolution::Public,
            distribution: Distribution::FullSync {
                sequence_numbers: false,
                order: SyncOrder::Ascending,
                pruning: None,
            },
            destination: Destination::Community { node_count: 5 },
            priority: 128,
            batch_window: Duration::ZERO,
        }],
    }
}

async fn play_sqlite(ops: &[Op]) -> Vec<Answer> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("contract.db"))
        .await
        .expect("open");
    let community = store
        .ensure_community(&definition())
        .await
        .expect("community");
    let mut out = Vec::new();
    for op in ops {
        out.push(match op {
            Op::Insert(entries) => {
                let rows: Vec<NewMessage> = entries
                    .iter()
                    .map(|e| NewMessage {
                        community,
                        member: e.member,
                        global_time: e.global_time,
                        meta: e.meta,
                        sequence: e.sequence,
                        priority: e.priority,
                        history: e.history,
                        co_signer: e.co_signer,
                        packet: e.packet.clone(),
                        hash: e.hash,
                    })
                    .collect();
                Answer::Inserted(store.insert(&rows).await.expect("insert"))
            }
            Op::Query(query) => {
                let (right, left) = store.sync_query(community, *query).await.expect("query");
                Answer::Queried(right, left)
            }
            Op::Rows {
                range,
                limit,
                metas,
            } => Answer::Rows(
                store
                    .sync_rows(community, *range, *limit, metas)
                    .await
                    .expect("rows"),
            ),
            Op::Lookup(lookup, max_bytes) => Answer::Packets(
                store
                    .lookup(community, lookup, *max_bytes)
                    .await
                    .expect("lookup"),
            ),
            Op::Prune { meta, below } => {
                Answer::Pruned(store.prune(community, *meta, *below).await.expect("prune"))
            }
            Op::Packets(ids) => Answer::Packets(store.packets(ids).await.expect("packets")),
            Op::Destroy { keep, above } => Answer::Destroyed(
                store
                    .destroy(community, keep.as_deref(), *above)
                    .await
                    .expect("destroy"),
            ),
            Op::Messages => Answer::Messages(
                store
                    .messages(community, 0, u32::MAX)
                    .await
                    .expect("messages")
                    .into_iter()
                    .map(|m| {
                        let id = u64::try_from(m.id).expect("row id");
                        (id, m.member, m.global_time, m.meta, m.sequence, m.packet)
                    })
                    .collect(),
            ),
        });
    }
    store.close().await;
    out
}

fn play_memory(ops: &[Op]) -> Vec<Answer> {
    let community: CommunityId = definition().id();
    let mut store = memory::Store::new();
    ops.iter()
        .map(|op| match op {
            Op::Insert(entries) => Answer::Inserted(store.insert(community, entries)),
            Op::Query(query) => {
                let (right, left) = store.sync_query(community, *query);
                Answer::Queried(right, left)
            }
            Op::Rows {
                range,
                limit,
                metas,
            } => Answer::Rows(store.sync_rows(community, *range, *limit, metas)),
            Op::Lookup(lookup, max_bytes) => {
                Answer::Packets(store.lookup(community, lookup, *max_bytes))
            }
            Op::Prune { meta, below } => Answer::Pruned(store.prune(community, *meta, *below)),
            Op::Packets(ids) => Answer::Packets(store.packets(ids)),
            Op::Destroy { keep, above } => {
                Answer::Destroyed(store.destroy(community, keep.as_deref(), *above))
            }
            Op::Messages => Answer::Messages(
                store
                    .messages(community)
                    .map(|k| {
                        let (id, gt) = (k.row.id, k.row.global_time);
                        (id, k.member, gt, k.meta, k.sequence, k.packet.clone())
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// Plays `ops` on both stores, asserts they answered alike, and returns the answers.
async fn both(ops: &[Op]) -> Vec<Answer> {
    let sqlite = play_sqlite(ops).await;
    let memory = play_memory(ops);
    assert_eq!(sqlite.len(), memory.len());
    for (i, (s, m)) in sqlite.iter().zip(&memory).enumerate() {
        assert_eq!(
            s, m,
            "operation {i} ({:?}): SQLite (left) and memory (right) differ",
            ops[i]
        );
    }
    sqlite
}

fn member(n: u8) -> MemberId {
    MemberId([n; 20])
}

/// A 100-byte packet (every real packet holds a 64-byte signature at least) that starts with
/// `tag`, so tests choose which of two versions is binary-higher.
fn packet(tag: u8, member: MemberId, global_time: u64) -> Vec<u8> {
    let mut p = vec![tag];
    p.extend_from_slice(&member.0);
    p.extend_from_slice(&global_time.to_be_bytes());
    p.resize(100, 0xAA);
    p
}

/// A plain full-sync entry of meta 1 by `who` at `global_time`.
fn post(who: u8, global_time: u64) -> Entry {
    tagged(who, global_time, 1)
}

fn tagged(who: u8, global_time: u64, tag: u8) -> Entry {
    let member = member(who);
    let packet = packet(tag, member, global_time);
    Entry {
        member,
        co_signer: None,
        global_time,
        meta: 1,
        sequence: None,
        priority: 128,
        history: None,
        hash: dispersy_core::bloom::PacketHash::of(&packet),
        packet,
    }
}

fn numbered(who: u8, global_time: u64, sequence: u32, tag: u8) -> Entry {
    Entry {
        meta: 2,
        sequence: Some(sequence),
        ..tagged(who, global_time, tag)
    }
}

fn last_sync(who: u8, global_time: u64, history: u16) -> Entry {
    Entry {
        meta: 3,
        history: Some(history),
        ..post(who, global_time)
    }
}

fn pact(who: u8, with: u8, global_time: u64) -> Entry {
    Entry {
        meta: 4,
        history: Some(1),
        co_signer: Some(member(with)),
        ..post(who, global_time)
    }
}

fn inserted(answer: &Answer) -> &[Outcome] {
    match answer {
        Answer::Inserted(outcomes) => outcomes,
        other => panic!("not an insert: {other:?}"),
    }
}

fn kept(answer: &Answer) -> Vec<(u8, u64)> {
    match answer {
        Answer::Messages(rows) => rows.iter().map(|r| (r.1.0[0], r.2)).collect(),
        other => panic!("not messages: {other:?}"),
    }
}

#[tokio::test]
async fn a_message_is_kept_once_and_the_binary_higher_version_wins() {
    let ops = [
        Op::Insert(vec![
            post(1, 5),
            post(1, 5),
            tagged(1, 5, 9),
            tagged(1, 5, 0),
        ]),
        Op::Insert(vec![post(1, 5), post(2, 5), tagged(1, 5, 8)]),
        Op::Messages,
    ];
    let answers = both(&ops).await;
    use Outcome::{Duplicate, Stored};
    assert_eq!(
        inserted(&answers[0]),
        [Stored, Duplicate, Stored, Duplicate]
    );
    assert_eq!(inserted(&answers[1]), [Duplicate, Stored, Duplicate]);
    let Answer::Messages(rows) = &answers[2] else {
        panic!("messages")
    };
    // The winning version keeps its row (id 1); the other member's message is row 2.
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].0, rows[0].5[0]), (1, 9));
    assert_eq!((rows[1].0, rows[1].1), (2, member(2)));
}

#[tokio::test]
async fn last_sync_keeps_the_newest_per_member() {
    let ops = [
        Op::Insert(vec![
            last_sync(1, 1, 2),
            last_sync(1, 2, 2),
            last_sync(2, 3, 2),
            last_sync(1, 4, 2),
        ]),
        // Older than both kept: not kept.
        Op::Insert(vec![last_sync(1, 1, 2)]),
        Op::Messages,
    ];
    let answers = both(&ops).await;
    use Outcome::{Duplicate, Stored};
    assert_eq!(inserted(&answers[0]), [Stored, Stored, Stored, Stored]);
    assert_eq!(inserted(&answers[1]), [Duplicate]);
    assert_eq!(kept(&answers[2]), [(1, 2), (2, 3), (1, 4)]);
}

#[tokio::test]
async fn last_sync_of_double_member_messages_keeps_the_newest_per_pair() {
    let ops = [
        Op::Insert(vec![pact(1, 2, 1), pact(2, 1, 2), pact(1, 3, 3)]),
        Op::Messages,
        // Older than the pair's kept message.
        Op::Insert(vec![pact(2, 1, 1)]),
        Op::Messages,
    ];
    let answers = both(&ops).await;
    use Outcome::{Duplicate, Stored};
    assert_eq!(inserted(&answers[0]), [Stored, Stored, Stored]);
    // (1, 2) and (2, 1) are one pair: only its newest is kept; (1, 3) is another pair.
    assert_eq!(kept(&answers[1]), [(2, 2), (1, 3)]);
    assert_eq!(inserted(&answers[2]), [Duplicate]);
    assert_eq!(kept(&answers[3]), [(2, 2), (1, 3)]);
}

#[tokio::test]
async fn sequence_numbers_have_gaps_conflicts_and_stale_claims() {
    let ops = [
        Op::Insert(vec![numbered(1, 10, 1, 5), numbered(1, 11, 2, 5)]),
        // A gap, a repeat, a stale next number.
        Op::Insert(vec![
            numbered(1, 14, 5, 5),
            numbered(1, 11, 2, 5),
            numbered(1, 11, 3, 5),
        ]),
        // Number 2 claimed again at a later global time: ours wins and is sent back.
        Op::Insert(vec![numbered(1, 12, 2, 5)]),
        Op::Insert(vec![numbered(1, 12, 3, 5)]),
        // Number 2 claimed at an earlier global time: it wins, number 2 on are removed.
        Op::Insert(vec![numbered(1, 9, 2, 7)]),
        Op::Messages,
    ];
    let answers = both(&ops).await;
    use Outcome::{Duplicate, Gap, Stale, Stored};
    assert_eq!(inserted(&answers[0]), [Stored, Stored]);
    assert_eq!(
        inserted(&answers[1]),
        [Gap { low: 3, high: 4 }, Duplicate, Stale]
    );
    assert_eq!(
        inserted(&answers[2]),
        [Outcome::Conflict(numbered(1, 11, 2, 5).packet)]
    );
    assert_eq!(inserted(&answers[3]), [Stored]);
    assert_eq!(inserted(&answers[4]), [Stored]);
    assert_eq!(kept(&answers[5]), [(1, 10), (1, 9)]);
}

#[tokio::test]
async fn pruning_removes_one_meta_below_a_global_time() {
    let ops = [
        Op::Insert(vec![post(1, 1), post(1, 2), last_sync(1, 3, 5), post(2, 4)]),
        Op::Prune { meta: 1, below: 4 },
        Op::Prune { meta: 1, below: 4 },
        Op::Messages,
    ];
    let answers = both(&ops).await;
    assert_eq!(answers[1], Answer::Pruned(2));
    assert_eq!(answers[2], Answer::Pruned(0));
    assert_eq!(kept(&answers[3]), [(1, 3), (2, 4)]);
}

#[tokio::test]
async fn a_destroy_keeps_what_it_names_or_what_is_not_newer() {
    let ops = [
        Op::Insert(vec![
            post(1, 1),
            post(2, 2),
            last_sync(1, 3, 5),
            post(2, 4),
            post(3, 6),
        ]),
        // Soft at 4: what is above goes, twice is harmless.
        Op::Destroy {
            keep: None,
            above: 4,
        },
        Op::Destroy {
            keep: None,
            above: 4,
        },
        Op::Messages,
        // Hard: all but the two named.
        Op::Destroy {
            keep: Some(vec![(member(2), 2), (member(1), 3), (member(9), 9)]),
            above: 0,
        },
        Op::Messages,
    ];
    let answers = both(&ops).await;
    assert_eq!(answers[1], Answer::Destroyed(1));
    assert_eq!(answers[2], Answer::Destroyed(0));
    assert_eq!(kept(&answers[3]), [(1, 1), (2, 2), (1, 3), (2, 4)]);
    assert_eq!(answers[4], Answer::Destroyed(2));
    assert_eq!(kept(&answers[5]), [(2, 2), (1, 3)]);
}

/// Messages of three members at global times 1..=30, one meta of priority 32 (not synchronised)
/// among them, and a numbered meta.
fn history() -> Vec<Entry> {
    (1..=30u64)
        .map(|gt| match gt % 5 {
            0 => Entry {
                priority: 32,
                meta: 5,
                ..post(3, gt)
            },
            1 | 2 => post(1, gt),
            _ => post(2, gt),
        })
        .collect()
}

#[tokio::test]
async fn sync_queries_read_only_syncable_rows_in_global_time_order() {
    let mut ops = vec![Op::Insert(history())];
    for query in [
        Query::Oldest { limit: 7 },
        Query::Oldest { limit: 100 },
        Query::Pivot {
            pivot: 12,
            limit: 4,
        },
        Query::Below { high: 20, limit: 6 },
        Query::Modulo {
            modulo: 3,
            offset: 1,
            limit: 5,
        },
        Query::Modulo {
            modulo: 4,
            offset: 0,
            limit: 100,
        },
    ] {
        ops.push(Op::Query(query));
    }
    let answers = both(&ops).await;
    let Answer::Queried(all, _) = &answers[2] else {
        panic!("query")
    };
    assert_eq!(all.len(), 24, "the priority-32 meta is not synchronised");
    let Answer::Queried(right, left) = &answers[3] else {
        panic!("query")
    };
    let times = |rows: &[Row]| rows.iter().map(|r| r.global_time).collect::<Vec<_>>();
    assert_eq!(times(right), [12, 13, 14, 16]);
    assert_eq!(times(left), [12, 11, 9, 8]);
}

#[tokio::test]
async fn range_reads_go_meta_by_meta_in_each_order_within_the_limit() {
    let mut entries = history();
    entries.extend((31..=40).map(|gt| Entry {
        meta: 6,
        ..post(1, gt)
    }));
    let mut ops = vec![Op::Insert(entries)];
    let range = |low, high, modulo, offset| Range {
        low,
        high,
        modulo,
        offset,
    };
    let asc = SyncOrder::Ascending;
    let desc = SyncOrder::Descending;
    for (range, limit, metas) in [
        (range(1, 40, 1, 0), 100, vec![(1, asc, 0), (6, desc, 0)]),
        (range(1, 40, 1, 0), 9, vec![(6, desc, 0), (1, asc, 0)]),
        (range(5, 35, 2, 1), 100, vec![(1, desc, 0), (6, asc, 0)]),
        (range(1, 40, 3, 2), 100, vec![(1, asc, 10), (5, asc, 0)]),
        (range(1, 40, 4, 3), 3, vec![(1, desc, 0)]),
        (range(20, 10, 1, 0), 100, vec![(1, asc, 0)]),
    ] {
        ops.push(Op::Rows {
            range,
            limit,
            metas,
        });
    }
    let answers = both(&ops).await;
    let Answer::Rows(rows) = &answers[2] else {
        panic!("rows")
    };
    let times: Vec<u64> = rows.iter().map(|r| r.global_time).collect();
    assert_eq!(times, [40, 39, 38, 37, 36, 35, 34, 33, 32]);
}

#[tokio::test]
async fn missing_lookups_and_packets_come_back_in_their_order_within_budget() {
    let mut entries: Vec<Entry> = (1..=6u32)
        .map(|n| numbered(1, u64::from(n) * 10, n, 5))
        .collect();
    entries.extend((1..=5).map(|gt| post(2, gt)));
    entries.extend((1..=3).map(|gt| last_sync(2, 100 + gt, 3)));
    let ops = [
        Op::Insert(entries),
        Op::Lookup(
            Lookup::Sequences {
                member: member(1),
                meta: 2,
                low: 2,
                high: 5,
            },
            10_000,
        ),
        // 250 bytes: the third 100-byte packet crosses the budget and is the last.
        Op::Lookup(
            Lookup::Sequences {
                member: member(1),
                meta: 2,
                low: 1,
                high: 6,
            },
            250,
        ),
        Op::Lookup(
            Lookup::GlobalTimes {
                member: member(2),
                global_times: vec![4, 2, 9, 102],
            },
            10_000,
        ),
        Op::Lookup(
            Lookup::Last {
                member: member(2),
                meta: 3,
                count: 2,
            },
            10_000,
        ),
        Op::Packets(vec![3, 1, 99, 2]),
    ];
    let answers = both(&ops).await;
    let count = |a: &Answer| match a {
        Answer::Packets(p) => p.len(),
        other => panic!("not packets: {other:?}"),
    };
    assert_eq!(count(&answers[1]), 4);
    assert_eq!(count(&answers[2]), 3);
    assert_eq!(count(&answers[3]), 3);
    assert_eq!(count(&answers[4]), 2);
    assert_eq!(
        answers[5],
        Answer::Packets(vec![
            numbered(1, 30, 3, 5).packet,
            numbered(1, 10, 1, 5).packet,
            numbered(1, 20, 2, 5).packet,
        ])
    );
}
