//! Catch-up benchmark (a bench binary, not a timed test): node A holds N (default 100,000) posts
//! of one community; a fresh node B is started with A as its only peer; prints how many posts B
//! has after how long (until all, or BENCH_TIMEOUT_SECS, default 120). Default configuration.
//!
//! Run: `cargo build --release --workspace && cargo bench -p dispersy-node --bench catchup`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{env_or, feed, post_datagrams, start_node, status};

#[tokio::main]
async fn main() {
    let count = env_or("BENCH_MESSAGES", 100_000);
    let timeout = Duration::from_secs(env_or("BENCH_TIMEOUT_SECS", 120));
    let work = tempfile::tempdir().unwrap();
    let (datagrams, per) = post_datagrams(count);
    let (mut a, a_endpoints) = start_node(work.path(), "a", &[]).await;
    let filled = Instant::now();
    let held = feed(
        (&datagrams, per),
        &a_endpoints,
        "posts",
        count,
        1_000,
        Instant::now() + Duration::from_secs(600),
    )
    .await;
    println!(
        "catch-up: A holds {held} posts (filled in {:.1} s)",
        filled.elapsed().as_secs_f64()
    );
    let peer = a_endpoints.udp.to_string();
    let start = Instant::now();
    let (mut b, b_endpoints) = start_node(work.path(), "b", &["--peer", &peer]).await;
    let mut last = 0;
    let mut report = Instant::now();
    while last < held && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = status(&b_endpoints.client, "posts").await;
        if report.elapsed() >= Duration::from_secs(10) {
            println!("  {:>5.1} s: B has {last}", start.elapsed().as_secs_f64());
            report = Instant::now();
        }
    }
    println!(
        "  B has {last} of {held} posts after {:.1} s{}",
        start.elapsed().as_secs_f64(),
        if last >= held { "" } else { " (timeout)" }
    );
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for (name, e) in [("A", &a_endpoints), ("B", &b_endpoints)] {
            println!("{name} node: {:?}", e.client.get("/v1/node").await);
            println!(
                "{name} communities: {:?}",
                e.client.get("/v1/communities").await
            );
        }
    }
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
