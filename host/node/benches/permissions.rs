//! Permissions benchmark (a bench binary, not a timed test): how fast a node ingests messages of
//! a Linear meta from authorized members, against messages of a Public meta, in the same run
//! (issue 11's goal: at least 90 % of the Public rate).
//!
//! Each round starts a fresh `dispersy run` process with the probe plugin and joins it to an
//! instance of the probe community whose master key the bench holds. The master signs one
//! authorize per Linear author (a permit on `linear-post`), sent to the node first; the bench
//! waits until the node's timeline lists them all valid. Then the node receives N (default
//! 20,000) signed `post` messages (Public, full-sync) and N `linear-post` messages (Linear,
//! full-sync), each of MANY authors taking turns (default 100; two disjoint sets of keys, so
//! neither side meets keys the other made hot in the verifier), fed as collections over
//! loopback exactly as the ingestion bench feeds them. The round alternates which side goes
//! first. Prints per round and as medians: messages per second from the first datagram until the
//! plugin handled all, node CPU µs per message, the Linear / Public ratio and PASS/FAIL; beside
//! them the limit: one libsecp256k1 signature check on one thread of the bench process.
//!
//! Run: `cargo build --release --workspace && cargo bench -p dispersy-node --bench permissions`
//! Options (environment): BENCH_MESSAGES (per side), BENCH_AUTHORS (per side), BENCH_ROUNDS,
//! BENCH_WINDOW (datagrams ahead), BENCH_CHECKS (signature checks timed for the limit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    cpu_time, env_or, feed_in, median, pack, signature_check_time, signed_datagrams, start_node,
};
use dispersy_core::authority::{self, Body, MemberRef, Target};
use dispersy_core::identity::{CommunityId, KeyPair};
use dispersy_core::timeline::{Permission, Subject};
use dispersy_core::wire::SignedMessage;
use serde_json::json;

/// The probe's Public full-sync meta `post`.
const PUBLIC_META: u32 = 2;
/// The probe's Linear full-sync meta `linear-post`.
const LINEAR_META: u32 = 8;
/// The goal: Linear at least this share of the Public rate.
const GOAL: f64 = 0.90;

/// One side's figures in one round.
#[derive(Clone, Copy)]
struct Side {
    handled: u64,
    rate: f64,
    cpu_per_message_us: f64,
}

#[tokio::main]
async fn main() {
    let messages = env_or("BENCH_MESSAGES", 20_000);
    let authors = env_or("BENCH_AUTHORS", 100).clamp(1, 60_000);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let window = env_or("BENCH_WINDOW", 1_000) as usize;
    let checks = env_or("BENCH_CHECKS", 10_000) as u32;

    let check = signature_check_time(checks);
    println!(
        "permissions: {messages} messages per side by {authors} authors each, {rounds} rounds; \
         limit: one signature check (libsecp256k1, one thread, mean of {checks}) {:.1} µs = {:.0} checks/s per core",
        check.as_secs_f64() * 1e6,
        1.0 / check.as_secs_f64()
    );
    let public_authors = keys(1, authors);
    let linear_authors = keys(2, authors);

    let mut public = Vec::new();
    let mut linear = Vec::new();
    for round in 0..rounds {
        let linear_first = round % 2 == 1;
        let (p, l) = run_round(
            round,
            linear_first,
            messages,
            &public_authors,
            &linear_authors,
            window,
        )
        .await;
        println!(
            "  round {} ({} first): public {:.0} msg/s, {:.1} µs CPU/msg ({} handled); linear {:.0} msg/s, {:.1} µs CPU/msg ({} handled); ratio {:.1} %",
            round + 1,
            if linear_first { "linear" } else { "public" },
            p.rate,
            p.cpu_per_message_us,
            p.handled,
            l.rate,
            l.cpu_per_message_us,
            l.handled,
            100.0 * l.rate / p.rate
        );
        public.push(p);
        linear.push(l);
    }

    let public_rate = median(public.iter().map(|s| s.rate));
    let linear_rate = median(linear.iter().map(|s| s.rate));
    let ratio = linear_rate / public_rate;
    println!(
        "  medians: public {public_rate:.0} msg/s, {:.1} µs CPU/msg; linear {linear_rate:.0} msg/s, {:.1} µs CPU/msg; per-round ratio {:.1} %",
        median(public.iter().map(|s| s.cpu_per_message_us)),
        median(linear.iter().map(|s| s.cpu_per_message_us)),
        100.0 * median(public.iter().zip(&linear).map(|(p, l)| l.rate / p.rate)),
    );
    let complete = public
        .iter()
        .chain(&linear)
        .all(|side| side.handled == messages);
    println!(
        "  {}: median linear rate / median public rate = {:.1} % (goal >= {:.0} %){}",
        if ratio >= GOAL && complete {
            "PASS"
        } else {
            "FAIL"
        },
        100.0 * ratio,
        100.0 * GOAL,
        if complete {
            ""
        } else {
            ", and not every message was handled"
        }
    );
}

/// One round on a fresh node: authorizes the Linear authors, then feeds both sides in the order
/// given; returns (public, linear).
async fn run_round(
    round: u64,
    linear_first: bool,
    messages: u64,
    public_authors: &[KeyPair],
    linear_authors: &[KeyPair],
    window: usize,
) -> (Side, Side) {
    let work = tempfile::tempdir().unwrap();
    let (mut child, endpoints) = start_node(work.path(), "node", &[]).await;
    let master = KeyPair::from_secret(&secret(3, round)).unwrap();
    let community = CommunityId::from(master.member_id());
    let id = community.to_hex();
    endpoints
        .client
        .post(
            "/v1/communities",
            &json!({"type": "probe", "master_key": master.public().to_hex()}),
        )
        .await
        .expect("join the instance");

    // One authorize per Linear author, global times 1..=authors, delivered and stored first.
    let permits = authorizes(&master, community, linear_authors);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (datagrams, _) = pack(&permits);
    for datagram in &datagrams {
        socket.send_to(datagram, endpoints.udp).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let timeline = endpoints
            .client
            .get(&format!("/v1/communities/{id}/timeline"))
            .await
            .unwrap_or_default();
        let valid = timeline["records"].as_array().map_or(0, |records| {
            records.iter().filter(|r| r["valid"] == true).count()
        });
        if valid == linear_authors.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {valid} of {} authorizes stored valid: {timeline}",
            linear_authors.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report_losses(&endpoints.client, &id, "after the authorizes").await;

    // The first side's messages follow the authorizes in global time, the second side's follow
    // the first's: a live community's order.
    let first_time = linear_authors.len() as u64 + 1;
    let (public_time, linear_time) = if linear_first {
        (first_time + messages, first_time)
    } else {
        (first_time, first_time + messages)
    };
    let public_data = signed_datagrams(
        community,
        PUBLIC_META,
        public_authors,
        public_time,
        messages,
    );
    let linear_data = signed_datagrams(
        community,
        LINEAR_META,
        linear_authors,
        linear_time,
        messages,
    );
    let feeding = Feeding {
        pid: child.id(),
        community: &id,
        node: &endpoints,
        messages,
        window,
    };
    let (public, linear) = if linear_first {
        let linear = feeding.measure(&linear_data, "linear_posts").await;
        let public = feeding.measure(&public_data, "posts").await;
        (public, linear)
    } else {
        let public = feeding.measure(&public_data, "posts").await;
        let linear = feeding.measure(&linear_data, "linear_posts").await;
        (public, linear)
    };
    report_losses(&endpoints.client, &id, "after both sides").await;
    let _ = child.kill();
    let _ = child.wait();
    (public, linear)
}

/// What feeding one side to the node needs besides its datagrams.
struct Feeding<'a> {
    pid: u32,
    community: &'a str,
    node: &'a dispersy_node::client::Endpoints,
    messages: u64,
    window: usize,
}

impl Feeding<'_> {
    /// Feeds `data` (datagrams, messages per datagram) until the probe's status `field` counts
    /// every message (or 300 s pass): the rate and the node's CPU per message.
    async fn measure(&self, data: &(Vec<Vec<u8>>, f64), field: &str) -> Side {
        let cpu_before = cpu_time(self.pid);
        let start = Instant::now();
        let handled = feed_in(
            self.community,
            (&data.0, data.1),
            self.node,
            field,
            self.messages,
            self.window,
            start + Duration::from_secs(300),
        )
        .await;
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = (cpu_time(self.pid) - cpu_before).as_secs_f64();
        Side {
            handled,
            rate: handled as f64 / elapsed,
            cpu_per_message_us: cpu * 1e6 / handled.max(1) as f64,
        }
    }
}

/// One authorize by `master` per member of `members`, granting a permit on `linear-post`; the
/// i-th (from 0) has sequence number and global time i + 1. The signed packets, in order.
fn authorizes(master: &KeyPair, community: CommunityId, members: &[KeyPair]) -> Vec<Vec<u8>> {
    members
        .iter()
        .enumerate()
        .map(|(i, member)| {
            let body = Body::Authorize(vec![Target {
                member: MemberRef::from_key(member.public().clone()),
                grants: vec![(Subject::Community(LINEAR_META), Permission::Permit)],
            }]);
            let message = authority::message(
                community,
                master.public().clone(),
                i as u64 + 1,
                Some(i as u32 + 1),
                body,
            );
            SignedMessage::sign(message, &[master]).unwrap().packet
        })
        .collect()
}

/// Prints the community's counters that show messages not handled at once (delayed, dropped by
/// reason, expired delays), when any is not zero, labelled `when` (they count since the start).
async fn report_losses(client: &dispersy_node::client::Client, id: &str, when: &str) {
    let Ok(list) = client.get("/v1/communities").await else {
        return;
    };
    let Some(entry) = list
        .as_array()
        .and_then(|l| l.iter().find(|c| c["id"] == id))
    else {
        return;
    };
    let stats = &entry["stats"];
    let plugin = &entry["plugin"];
    let quiet = |v: &serde_json::Value| {
        v.is_null()
            || v.as_u64() == Some(0)
            || v.as_object()
                .is_some_and(|o| o.values().all(|n| n.as_u64() == Some(0)))
    };
    let fields = [
        ("stats.delayed", &stats["delayed"]),
        ("stats.dropped", &stats["dropped"]),
        ("plugin.delayed", &plugin["delayed"]),
        ("plugin.delay_expired", &plugin["delay_expired"]),
        ("plugin.dropped", &plugin["dropped"]),
        ("plugin.queue_full", &plugin["queue_full"]),
    ];
    for (name, value) in fields {
        if !quiet(value) {
            println!("    {when}: {name} {value}");
        }
    }
    // What the node asked the sender for: a delayed message makes it request what it lacks.
    if let Ok(node) = client.get("/v1/node").await {
        for name in ["missing-sequence-sent", "missing-proof-sent"] {
            let value = &node["stats"]["packets"][name];
            if !quiet(value) {
                println!("    {when}: node {name} {value}");
            }
        }
    }
}

/// `count` keys of set `set`, each from its own secret.
fn keys(set: u8, count: u64) -> Vec<KeyPair> {
    (0..count)
        .map(|i| KeyPair::from_secret(&secret(set, i)).unwrap())
        .collect()
}

/// A valid secret key, distinct for every (set, index).
fn secret(set: u8, index: u64) -> [u8; 32] {
    let mut secret = [7; 32];
    secret[0] = set;
    secret[1..9].copy_from_slice(&index.to_be_bytes());
    secret
}
