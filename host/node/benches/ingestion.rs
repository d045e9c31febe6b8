//! Ingestion benchmark (a bench binary, not a timed test): a `dispersy run` process with the
//! probe plugin receives N (default 20,000) signed full-sync `post` messages of one author,
//! sent as collections over loopback; the node verifies, stores and hands every one to the
//! plugin. Prints messages per second from the first datagram until the plugin has handled all,
//! and the node's CPU time.
//!
//! The sender keeps at most a window of datagrams ahead of what the node has handled (read from
//! the control API), so the node's receive buffer never overflows and nothing is lost.
//!
//! Run: `cargo build --release --workspace && cargo bench -p dispersy-node --bench ingestion`
//! Options (environment): BENCH_MESSAGES, BENCH_WINDOW (datagrams ahead), BENCH_META (2: the
//! stored `post` meta, the default; 1: the direct `example` meta, to see what storing costs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{cpu_time, env_or, feed, post_datagrams, start_node};

#[tokio::main]
async fn main() {
    let messages = env_or("BENCH_MESSAGES", 20_000);
    let window = env_or("BENCH_WINDOW", 1_000) as usize;
    // BENCH_META=1: the direct `example` meta (no storage), to see what storing costs.
    let meta = env_or("BENCH_META", 2);
    let field = if meta == 1 { "received" } else { "posts" };
    let work = tempfile::tempdir().unwrap();
    let (mut child, endpoints) = start_node(work.path(), "node", &[]).await;
    let signing = Instant::now();
    let (mut datagrams, per_datagram) = post_datagrams(messages);
    if meta == 1 {
        datagrams = retype(&datagrams, 1);
    }
    println!(
        "ingestion: {messages} signed messages, {} datagrams ({per_datagram:.1} messages each), signed in {:.2} s",
        datagrams.len(),
        signing.elapsed().as_secs_f64()
    );
    let pid = child.id();
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    let done = feed(
        (&datagrams, per_datagram),
        &endpoints,
        field,
        messages,
        window,
        start + Duration::from_secs(300),
    )
    .await;
    let elapsed = start.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    println!(
        "  {done} of {messages} handled by the plugin in {:.2} s: {:.0} messages/s",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  node CPU {:.2} s = {:.0} µs per message ({:.0} % of one core on average)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / done.max(1) as f64,
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The same messages re-signed as meta `meta` (the author's key is the benchmark's).
fn retype(datagrams: &[Vec<u8>], meta: u32) -> Vec<Vec<u8>> {
    use dispersy_core::identity::KeyPair;
    use dispersy_core::wire::{self, Packet, SignedMessage};
    let author = KeyPair::from_secret(&[5; 32]).unwrap();
    datagrams
        .iter()
        .map(|d| {
            let Ok(Packet::Collection(c)) = wire::decode(d, 1500, &()) else {
                panic!("collection")
            };
            let packets: Vec<Vec<u8>> = c
                .messages
                .into_iter()
                .map(|m| {
                    let mut message = m.message;
                    message.message_type = meta;
                    SignedMessage::sign(message, &[&author]).unwrap().packet
                })
                .collect();
            let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
            wire::encode_collection(0, &refs)
        })
        .collect()
}
