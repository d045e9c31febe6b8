//! Scale benchmark (a bench binary, not a timed test): a node's store holding N (default
//! 1,000,000) messages of one community; how long the responder's work for one sync request
//! takes (read the rows of the requested range, choose what the requester's filter lacks within
//! the budget, read their packets: the exact calls the running node makes), and how much memory
//! a node process holding them uses.
//!
//! Run: `cargo build --release --workspace && cargo bench -p dispersy-node --bench scale`
//! (`BENCH_MESSAGES`, `BENCH_REQUESTS` per kind, default 200; `BENCH_KINDS`, a comma-separated
//! choice of `fresh`, `pivot`, `modulo`; `DISPERSY_LIMITS__STORE_MMAP_MIB`, the store's memory map).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{env_or, start_node};
use dispersy_core::bloom::{BloomFilter, PacketHash};
use dispersy_core::identity::MemberId;
use dispersy_core::meta::SyncOrder;
use dispersy_core::rng::Rng;
use dispersy_core::sync::{ERROR_RATE, Range};
use dispersy_node::store::{NewMessage, Store};

/// Bytes of a filter in an introduction-request (what `Node::filter_bytes` gives for 1500-byte
/// datagrams, rounded down).
const FILTER_BYTES: usize = 1_000;

#[tokio::main]
async fn main() {
    let count = env_or("BENCH_MESSAGES", 1_000_000);
    let requests = env_or("BENCH_REQUESTS", 200) as usize;
    // BENCH_KINDS: which requests to time (default all three).
    let kinds = std::env::var("BENCH_KINDS").unwrap_or_else(|_| "fresh,pivot,modulo".into());
    let work = tempfile::tempdir().unwrap();

    // A node creates its database and the community, then stops; the store is filled directly
    // (synthetic ~250-byte packets: the responder never verifies its own store).
    let (mut a, endpoints) = start_node(work.path(), "a", &[]).await;
    let _ = endpoints.client.get("/v1/node").await;
    a.kill().unwrap();
    a.wait().unwrap();
    let db = work.path().join("a").join("dispersy.db");
    // The node's setting, if given (DISPERSY_LIMITS__STORE_MMAP_MIB reaches the node processes
    // below as well).
    let tuning = dispersy_node::store::Tuning {
        mmap_mib: env_or("DISPERSY_LIMITS__STORE_MMAP_MIB", 0) as u32,
        ..Default::default()
    };
    let store = Store::open_with(&db, tuning).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let community: i64 = sqlx::query_scalar("SELECT id FROM community")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let filled = Instant::now();
    let mut rng = Rng::new(7);
    let authors: Vec<MemberId> = (0..100u8).map(|i| MemberId([i; 20])).collect();
    let mut gt = 0u64;
    while gt < count {
        let batch: Vec<NewMessage> = (0..10_000.min(count - gt))
            .map(|_| {
                gt += 1;
                let mut packet = vec![0u8; 250];
                for chunk in packet.chunks_mut(8) {
                    let word = rng.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&word[..chunk.len()]);
                }
                NewMessage {
                    community,
                    member: authors[(gt % 100) as usize],
                    global_time: gt,
                    meta: 2,
                    sequence: None,
                    priority: 128,
                    history: None,
                    co_signer: None,
                    hash: PacketHash::of(&packet),
                    packet,
                }
            })
            .collect();
        store.insert(&batch).await.unwrap();
    }
    println!(
        "scale: made and stored {count} messages in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    // The responder's work, for three kinds of request at the largest (256 KiB) and the
    // smallest (5 KiB) budget.
    let capacity = dispersy_core::bloom::capacity(FILTER_BYTES * 8, ERROR_RATE);
    let metas = [(2u32, SyncOrder::Ascending, 0u64)];
    for budget in [256 * 1024usize, 5 * 1024] {
        for kind in kinds
            .split(',')
            .filter(|k| ["fresh", "pivot", "modulo"].contains(k))
        {
            // The requests first (a pivot request reads its range to fill its filter), then
            // the responder's work on each, timed: no request is timed right after its own
            // range was read.
            let mut asked = Vec::with_capacity(requests);
            for _ in 0..requests {
                let mut filter =
                    BloomFilter::sized(FILTER_BYTES, ERROR_RATE, rng.next_u32()).expect("filter");
                let range = match kind {
                    // A node that has nothing: everything is missing.
                    "fresh" => Range {
                        low: 1,
                        high: count,
                        modulo: 1,
                        offset: 0,
                    },
                    // A node holding every other message around a random pivot.
                    "pivot" => {
                        let span = count.saturating_sub(2 * capacity as u64).max(1);
                        let low = 1 + rng.next_u64() % span;
                        let high = low + 2 * capacity as u64;
                        let rows = store
                            .sync_rows(
                                community,
                                Range {
                                    low,
                                    high,
                                    modulo: 1,
                                    offset: 0,
                                },
                                3 * capacity,
                                &metas,
                            )
                            .await
                            .unwrap();
                        for row in rows.iter().step_by(2) {
                            filter.insert(&row.hash);
                        }
                        Range {
                            low,
                            high,
                            modulo: 1,
                            offset: 0,
                        }
                    }
                    // The modulo strategy: one residue class of everything.
                    _ => {
                        let modulo = (count / capacity as u64).max(2) as u32;
                        Range {
                            low: 1,
                            high: count,
                            modulo,
                            offset: rng.next_u64() % u64::from(modulo),
                        }
                    }
                };
                asked.push((filter, range));
            }
            let mut times = Vec::with_capacity(requests);
            let mut sent = 0usize;
            for (filter, range) in &asked {
                let start = Instant::now();
                // As the node does: enough rows to fill the budget past what the filter holds.
                let limit =
                    dispersy_core::sync::rows_to_read(budget, filter.estimated_count(), 256);
                let rows = store
                    .sync_rows(community, *range, limit, &metas)
                    .await
                    .unwrap();
                let chosen = dispersy_core::sync::missing(filter, range, &rows, budget);
                let ids: Vec<u64> = chosen.iter().map(|r| r.id).collect();
                let packets = store.packets(&ids).await.unwrap();
                times.push(start.elapsed());
                sent += packets.len();
            }
            if times.is_empty() {
                continue;
            }
            times.sort();
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
            println!(
                "  budget {:>3} KiB, {kind:<6}: median {:>6.2} ms, p99 {:>6.2} ms, max {:>6.2} ms ({} packets per response)",
                budget / 1024,
                ms(at(0.5)),
                ms(at(0.99)),
                ms(at(1.0)),
                sent / requests.max(1)
            );
        }
    }
    store.close().await;

    // Memory of a node process holding them: at start, and after a fresh peer synchronised
    // with it for a while (it cannot verify the synthetic packets; the responder works all the
    // same).
    let (mut a, a_endpoints) = start_node(work.path(), "a", &[]).await;
    let _ = a_endpoints.client.get("/v1/node").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("  node holding them: {}", memory(a.id()));
    let peer = a_endpoints.udp.to_string();
    let (mut b, _) = start_node(work.path(), "b", &["--peer", &peer]).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    println!("  after 30 s with a fresh peer: {}", memory(a.id()));
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// VmRSS and VmHWM of process `pid`.
fn memory(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap_or_default()
    };
    format!("RSS {} (peak {})", field("VmRSS:"), field("VmHWM:"))
}
