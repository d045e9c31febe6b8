//! Helpers shared by the bench binaries. Every bench node loads the probe test community
//! (`plugins/probe`), whose metas and policies stay fixed so that numbers remain comparable; its
//! `example` (1) and `post` (2) metas are those of the example community when the benchmarks were
//! written. `cargo build --release --workspace` builds it next to the `dispersy` binary.

#![allow(dead_code)] // each bench uses part of it

#[path = "../../tests/common/mod.rs"]
mod process;
pub use process::node_command;

use std::time::Duration;

/// The median of `values` (the upper one of an even count); panics on none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The value of environment variable `name`, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// user + system CPU time of process `pid`, from /proc (clock ticks of 10 ms on Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Signed `post` messages of the probe community by one author, global times 1..=`count`,
/// packed into collection datagrams of at most 1500 bytes. Returns the datagrams and how many
/// messages one holds on average.
pub fn post_datagrams(count: u64) -> (Vec<Vec<u8>>, f64) {
    use dispersy_core::identity::{CommunityId, KeyPair};
    let author = KeyPair::from_secret(&[5; 32]).expect("key");
    let community = CommunityId::from_hex(COMMUNITY).expect("id");
    signed_datagrams(community, 2, &[author], 1, count)
}

/// `count` signed messages of the probe's payload (a text of about 90 bytes and a number) of
/// meta `meta` in `community`: message i (from 0) is by `authors[i % authors.len()]` at global
/// time `first_global_time + i`, so the authors take turns. Packed into collection datagrams of
/// at most 1500 bytes; returns them and how many messages one holds on average.
pub fn signed_datagrams(
    community: dispersy_core::identity::CommunityId,
    meta: u32,
    authors: &[dispersy_core::identity::KeyPair],
    first_global_time: u64,
    count: u64,
) -> (Vec<Vec<u8>>, f64) {
    use dispersy_core::wire::{CommunityMessage, Conversion, SignedMessage};
    let packets: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let gt = first_global_time + i;
            let author = &authors[(i % authors.len() as u64) as usize];
            let text = format!(
                "message {gt:06} of the benchmark, about 250 bytes in all with its header and signature"
            );
            let mut payload = vec![text.len() as u8];
            payload.extend_from_slice(text.as_bytes());
            payload.extend_from_slice(&(gt as i64).to_be_bytes());
            SignedMessage::sign(
                CommunityMessage {
                    community,
                    message_type: meta,
                    conversion: Conversion::version(1).expect("conversion"),
                    authors: vec![author.public().clone()],
                    global_time: gt,
                    sequence_number: None,
                    resolution_index: None,
                    relay_hops: None,
                    payload,
                    authority: None,
                },
                &[author],
            )
            .expect("signed")
            .packet
        })
        .collect();
    pack(&packets)
}

/// `packets` packed into collection datagrams of at most 1500 bytes, in order; returns them and
/// how many packets one holds on average.
pub fn pack(packets: &[Vec<u8>]) -> (Vec<Vec<u8>>, f64) {
    let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
    let datagrams = dispersy_core::wire::encode_collections(0, &refs, 1500).expect("fits");
    let per = packets.len() as f64 / datagrams.len() as f64;
    (datagrams, per)
}

/// The time one thread takes for one signature check of libsecp256k1 (no precomputed table):
/// the mean over `checks` checks of a 250-byte message by one key, each with a different
/// signature. The limit figure beside ingestion rates: no node ingests faster per core.
pub fn signature_check_time(checks: u32) -> Duration {
    use dispersy_core::identity::KeyPair;
    let key = KeyPair::from_secret(&[9; 32]).expect("key");
    let signed: Vec<(Vec<u8>, [u8; 64])> = (0..checks)
        .map(|i| {
            let mut data = vec![0x5a; 250];
            data[..4].copy_from_slice(&i.to_be_bytes());
            let signature = key.sign(&data);
            (data, signature)
        })
        .collect();
    let start = std::time::Instant::now();
    for (data, signature) in &signed {
        key.public().verify(data, signature).expect("valid");
    }
    start.elapsed() / checks.max(1)
}

/// The probe community.
pub const COMMUNITY: &str = "a2954e175d875cfdadc3a03557c72372038ec2b1";

/// The probe plugin's file, built next to the `dispersy` binary.
pub const PLUGIN: &str = "libprobe_community.so";

/// A `dispersy run` process of the release build with the probe plugin and data folder
/// `data`, started on loopback with `extra` flags; returns it with its endpoints.
#[allow(clippy::zombie_processes)] // the caller kills and waits for it
pub async fn start_node(
    work: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> (std::process::Child, dispersy_node::client::Endpoints) {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_dispersy"));
    let built = exe.parent().expect("target folder").join(PLUGIN);
    assert!(
        built.is_file(),
        "run `cargo build --release --workspace` first"
    );
    let plugins = work.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins folder");
    // Never overwrite a library another node has loaded: that crashes it.
    if !plugins.join(PLUGIN).exists() {
        std::fs::copy(&built, plugins.join(PLUGIN)).expect("copy plugin");
    }
    let data = work.join(name);
    let child = node_command(&data, &plugins)
        .args(extra)
        .spawn()
        .expect("spawn");
    loop {
        if let Ok(endpoints) = dispersy_node::client::Endpoints::read(&data) {
            return (child, endpoints);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A status field of the probe plugin at the node behind `client` (0 when unreadable).
pub async fn status(client: &dispersy_node::client::Client, field: &str) -> u64 {
    status_in(client, COMMUNITY, field).await
}

/// A status field of the probe plugin in `community` (id in hex: the probe community or an
/// instance of it) at the node behind `client` (0 when unreadable).
pub async fn status_in(
    client: &dispersy_node::client::Client,
    community: &str,
    field: &str,
) -> u64 {
    match client.get("/v1/communities").await {
        Ok(list) => list
            .as_array()
            .and_then(|l| l.iter().find(|c| c["id"] == community))
            .and_then(|c| c["plugin"]["status"][field].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Sends `datagrams` to `to`, never more than `window` datagrams ahead of what the plugin
/// reports handled in `field` (messages); returns when all `count` are handled or at `deadline`.
pub async fn feed(
    (datagrams, per_datagram): (&[Vec<u8>], f64),
    node: &dispersy_node::client::Endpoints,
    field: &str,
    count: u64,
    window: usize,
    deadline: std::time::Instant,
) -> u64 {
    feed_in(
        COMMUNITY,
        (datagrams, per_datagram),
        node,
        field,
        count,
        window,
        deadline,
    )
    .await
}

/// [`feed`] for the probe plugin in `community` (id in hex: the probe community or an instance).
pub async fn feed_in(
    community: &str,
    (datagrams, per_datagram): (&[Vec<u8>], f64),
    node: &dispersy_node::client::Endpoints,
    field: &str,
    count: u64,
    window: usize,
    deadline: std::time::Instant,
) -> u64 {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("socket");
    let mut sent = 0usize;
    let mut done = 0u64;
    while done < count && std::time::Instant::now() < deadline {
        let allowed = ((done as f64 / per_datagram) as usize + window).min(datagrams.len());
        while sent < allowed {
            socket
                .send_to(&datagrams[sent], node.udp)
                .await
                .expect("send");
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = status_in(&node.client, community, field).await;
    }
    done
}
