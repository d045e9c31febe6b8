//! Isolation benchmark (a bench binary, not a timed test): how much of one community's throughput
//! is left while another community of the same node is stuck in a handler that never returns.
//!
//! In each round, two fresh `dispersy run` processes of the release build load the probe community
//! and the faulty test community (`plugins/faulty`). The first ingests N (default 20,000) signed
//! probe messages with the faulty community idle: the baseline. The second is sent a faulty `boom` message whose
//! handler loops forever (stage `loop:`; it sleeps in its loop, so that the stuck thread takes no
//! CPU from the others: this measures the host, not a core's contention), is waited for until the
//! control API reports the faulty community stuck (after `plugin_call_deadline_ms`, default 5 s),
//! then ingests the same probe messages while faulty messages keep arriving (they are refused and
//! counted as `plugin-stuck`), and is stopped with SIGTERM, the handler still looping. Prints per
//! round both rates, the refused count and the exit time, then the medians and their ratio (the
//! goal: at least 95 %). The rounds alternate so that load from elsewhere hits both alike.
//!
//! Run: `cargo build --release --workspace && cargo bench -p dispersy-node --bench isolation`
//! Options (environment): BENCH_MESSAGES, BENCH_WINDOW (datagrams ahead), BENCH_ROUNDS (default
//! 5), BENCH_FAULTY_RATE (faulty datagrams sent per 10 ms while stuck, default 1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{env_or, feed, median, post_datagrams, start_node};
use dispersy_core::identity::{CommunityId, KeyPair};
use dispersy_core::wire::{self, CommunityMessage, Conversion, SignedMessage};

/// The faulty test community.
const FAULTY: &str = "6d68501485e1b1c41272e8dca867d570e89f9e29";
/// Its plugin file, built next to the `dispersy` binary.
const FAULTY_PLUGIN: &str = "libfaulty_community.so";

#[tokio::main]
async fn main() {
    let messages = env_or("BENCH_MESSAGES", 20_000);
    let window = env_or("BENCH_WINDOW", 1_000) as usize;
    let faulty_rate = env_or("BENCH_FAULTY_RATE", 1) as usize;
    let rounds = env_or("BENCH_ROUNDS", 5).max(1);
    let work = tempfile::tempdir().unwrap();
    install_faulty(work.path());
    let (datagrams, per_datagram) = post_datagrams(messages);
    println!(
        "isolation: {messages} signed probe messages in {} datagrams into a fresh node, {rounds} rounds of (faulty community idle, faulty community stuck)",
        datagrams.len()
    );
    let mut idle_rates = Vec::new();
    let mut stuck_rates = Vec::new();
    for round in 1..=rounds {
        // Baseline: the faulty community idle.
        let (mut idle, endpoints) = start_node(work.path(), &format!("idle-{round}"), &[]).await;
        let rate = ingest(&datagrams, per_datagram, &endpoints, messages, window).await;
        let _ = idle.kill();
        let _ = idle.wait();
        idle_rates.push(rate);

        // The faulty community stuck in a handler that never returns, its messages still coming.
        let (mut stuck, endpoints) = start_node(work.path(), &format!("stuck-{round}"), &[]).await;
        let faulty = faulty_datagrams(messages);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&faulty[0], endpoints.udp).await.unwrap();
        let waiting = Instant::now();
        while state(&endpoints.client).await != "stuck" {
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "the faulty community never became stuck"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stuck_after = waiting.elapsed();
        let target = endpoints.udp;
        let noise = tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for chunk in faulty[1..].chunks(faulty_rate.max(1)) {
                for datagram in chunk {
                    let _ = socket.send_to(datagram, target).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let rate = ingest(&datagrams, per_datagram, &endpoints, messages, window).await;
        noise.abort();
        let refused = refused(&endpoints.client).await;
        stuck_rates.push(rate);
        let exit = terminate(&mut stuck).await;
        println!(
            "  round {round}: idle {:.0} messages/s, stuck {rate:.0} messages/s ({:.1} %; stuck reported {:.1} s after the looping message, {refused} faulty messages refused as plugin-stuck, exit on SIGTERM {exit})",
            idle_rates[idle_rates.len() - 1],
            100.0 * rate / idle_rates[idle_rates.len() - 1],
            stuck_after.as_secs_f64(),
        );
    }
    let idle = median(idle_rates.iter().copied());
    let stuck = median(stuck_rates.iter().copied());
    println!(
        "  median: idle {idle:.0} messages/s, stuck {stuck:.0} messages/s: {:.1} % of the baseline (goal: at least 95 %)",
        100.0 * stuck / idle
    );
}

/// Feeds the probe messages to the node; returns messages handled per second.
async fn ingest(
    datagrams: &[Vec<u8>],
    per_datagram: f64,
    endpoints: &dispersy_node::client::Endpoints,
    messages: u64,
    window: usize,
) -> f64 {
    let start = Instant::now();
    let done = feed(
        (datagrams, per_datagram),
        endpoints,
        "posts",
        messages,
        window,
        start + Duration::from_secs(300),
    )
    .await;
    assert_eq!(done, messages, "not all messages handled");
    done as f64 / start.elapsed().as_secs_f64()
}

/// Sends SIGTERM to `child` and waits for it to exit (killed after 60 s); says how long it took.
async fn terminate(child: &mut std::process::Child) -> String {
    let stopping = Instant::now();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return format!("{:.2} s ({status})", stopping.elapsed().as_secs_f64());
        }
        if stopping.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return "more than 60 s: killed".into();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies the faulty plugin next to the probe plugin in the bench's plugin folder.
fn install_faulty(work: &std::path::Path) {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_dispersy"));
    let built = exe.parent().unwrap().join(FAULTY_PLUGIN);
    assert!(
        built.is_file(),
        "run `cargo build --release --workspace` first"
    );
    let plugins = work.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(&built, plugins.join(FAULTY_PLUGIN)).unwrap();
}

/// Faulty `boom` messages, one per datagram: the first loops forever in the handler, the others
/// (`count` of them) would do nothing.
fn faulty_datagrams(count: u64) -> Vec<Vec<u8>> {
    let author = KeyPair::from_secret(&[6; 32]).unwrap();
    let community = CommunityId::from_hex(FAULTY).unwrap();
    (0..=count)
        .map(|n| {
            let stage: &[u8] = if n == 0 { b"loop:" } else { b"none" };
            let mut payload = vec![stage.len() as u8];
            payload.extend_from_slice(stage);
            let packet = SignedMessage::sign(
                CommunityMessage {
                    community,
                    message_type: 1,
                    conversion: Conversion::version(1).unwrap(),
                    authors: vec![author.public().clone()],
                    global_time: n + 1,
                    sequence_number: None,
                    resolution_index: None,
                    relay_hops: None,
                    payload,
                    authority: None,
                },
                &[&author],
            )
            .unwrap()
            .packet;
            wire::encode_collection(0, &[packet.as_slice()])
        })
        .collect()
}

/// The faulty community's entry in `GET /v1/communities`.
async fn faulty_plugin(client: &dispersy_node::client::Client) -> serde_json::Value {
    match client.get("/v1/communities").await {
        Ok(list) => list
            .as_array()
            .and_then(|l| l.iter().find(|c| c["id"] == FAULTY))
            .map(|c| c["plugin"].clone())
            .unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// The faulty community's state.
async fn state(client: &dispersy_node::client::Client) -> String {
    faulty_plugin(client).await["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Faulty messages refused because the community is stuck.
async fn refused(client: &dispersy_node::client::Client) -> u64 {
    faulty_plugin(client).await["dropped"]["plugin-stuck"]
        .as_u64()
        .unwrap_or(0)
}
