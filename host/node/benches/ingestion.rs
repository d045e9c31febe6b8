//! Ingestion benchmark (a bench binary, not a timed test): a `dispersy run` process with the
//! example plugin receives N (default 20,000) signed full-sync `post` messages of one author,
//! sent as collections over loopback; the node verifies, stores and hands every one to the
//! plugin. Prints messages per second from the first datagram until the plugin has handled all,
//! and the node's CPU time.
//!
//! The sender keeps at most a window of datagrams ahead of what the node has handled (read from
//! the control API), so the node's receive buffer never overflows and nothing is lost.
//!
//! Run: `cargo build --release && cargo bench -p dispersy-node --bench ingestion`
//! Options (environment): BENCH_MESSAGES, BENCH_WINDOW (datagrams ahead), BENCH_META (2: the
//! stored `post` meta, the default; 1: the direct `example` meta, to see what storing costs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_time, env_or};
use dispersy_core::identity::{CommunityId, KeyPair};
use dispersy_core::wire::{self, CommunityMessage, Conversion, SignedMessage};
use dispersy_node::client::{Client, Endpoints};

const COMMUNITY: &str = "e5901df2bfc4bc84bdbe490d5690273cf96491f1";

async fn handled(client: &Client, field: &str) -> u64 {
    match client.get("/v1/communities").await {
        Ok(list) => list
            .as_array()
            .and_then(|l| l.iter().find(|c| c["id"] == COMMUNITY))
            .and_then(|c| c["plugin"]["status"][field].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::main]
async fn main() {
    let messages = env_or("BENCH_MESSAGES", 20_000);
    let window = env_or("BENCH_WINDOW", 1_000) as usize;
    // BENCH_META=1: the direct `example` meta (no storage), to see what storing costs.
    let meta = env_or("BENCH_META", 2) as u32;
    let field = if meta == 1 { "received" } else { "posts" };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dispersy"));
    let built = exe.parent().unwrap().join("libexample_community.so");
    assert!(built.is_file(), "run `cargo build --release` first");
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(&built, plugins.join("libexample_community.so")).unwrap();
    let data = work.path().join("node");
    let mut child = Command::new(&exe)
        .args([
            "run",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--api",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--plugin-dir")
        .arg(&plugins)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (udp, client) = loop {
        if let Ok(endpoints) = Endpoints::read(&data) {
            break (endpoints.udp, endpoints.client);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The messages: one author, global times 1..=N, the example payload (conversion 1).
    let author = KeyPair::from_secret(&[5; 32]).unwrap();
    let community = CommunityId::from_hex(COMMUNITY).unwrap();
    let signing = Instant::now();
    let packets: Vec<Vec<u8>> = (1..=messages)
        .map(|gt| {
            let text = format!(
                "message {gt:06} of the ingestion benchmark, about 250 bytes in all with its header"
            );
            let mut payload = vec![text.len() as u8];
            payload.extend_from_slice(text.as_bytes());
            payload.extend_from_slice(&(gt as i64).to_be_bytes());
            SignedMessage::sign(
                CommunityMessage {
                    community,
                    message_type: meta,
                    conversion: Conversion::version(1).unwrap(),
                    authors: vec![author.public().clone()],
                    global_time: gt,
                    sequence_number: None,
                    resolution_index: None,
                    relay_hops: None,
                    payload,
                },
                &[&author],
            )
            .unwrap()
            .packet
        })
        .collect();
    let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
    let datagrams = wire::encode_collections(0, &refs, 1500).unwrap();
    let per_datagram = messages as f64 / datagrams.len() as f64;
    println!(
        "ingestion: {messages} signed messages of {} bytes, {} datagrams ({per_datagram:.1} messages each), signed in {:.2} s",
        packets[0].len(),
        datagrams.len(),
        signing.elapsed().as_secs_f64()
    );

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pid = child.id();
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    let mut sent = 0usize;
    let mut done = 0u64;
    let deadline = start + Duration::from_secs(300);
    while done < messages && Instant::now() < deadline {
        let allowed = ((done as f64 / per_datagram) as usize + window).min(datagrams.len());
        while sent < allowed {
            socket.send_to(&datagrams[sent], udp).await.unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = handled(&client, field).await;
    }
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
