//! Discovery benchmark (a bench binary, not a timed test):
//!
//! 1. time until each of N nodes (default 50) on loopback knows at least K (default 10) verified
//!    peers, with the default configuration: a tracker and N `dispersy run` processes, each
//!    loading the probe plugin, started together;
//! 2. idle CPU of one node with those peers, after discovery, over a window (default 30 s),
//!    from /proc (user + system time).
//!
//! Run: `cargo build --release --workspace && cargo bench -p dispersy-node --bench discovery`
//! Options (environment): BENCH_NODES, BENCH_PEERS, BENCH_IDLE_SECS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{COMMUNITY, PLUGIN, cpu_time, env_or};
use dispersy_node::client::{Client, Endpoints};

struct Process {
    child: Child,
    client: Option<Client>,
    dir: PathBuf,
    udp: String,
}

fn plugin_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dispersy"));
    let dir = exe.parent().unwrap().to_path_buf();
    assert!(
        dir.join(PLUGIN).is_file(),
        "{} has no {PLUGIN}: run `cargo build --release --workspace` first",
        dir.display()
    );
    let private =
        std::env::temp_dir().join(format!("dispersy-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&private).unwrap();
    std::fs::copy(dir.join(PLUGIN), private.join(PLUGIN)).unwrap();
    private
}

fn spawn(work: &Path, name: &str, args: &[&str]) -> Process {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dispersy"))
        .args(args)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--api",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process {
        child,
        client: None,
        dir,
        udp: String::new(),
    }
}

fn connect(process: &mut Process) -> bool {
    if process.client.is_some() {
        return true;
    }
    match Endpoints::read(&process.dir) {
        Ok(endpoints) => {
            process.udp = endpoints.udp.to_string();
            process.client = Some(endpoints.client);
            true
        }
        Err(_) => false,
    }
}

async fn verified(process: &Process) -> usize {
    let Some(client) = &process.client else {
        return 0;
    };
    match client
        .get(&format!("/v1/communities/{COMMUNITY}/candidates"))
        .await
    {
        Ok(list) => list
            .as_array()
            .map_or(0, |l| l.iter().filter(|c| c["verified"] == true).count()),
        Err(_) => 0,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let nodes = env_or("BENCH_NODES", 50) as usize;
    let peers = env_or("BENCH_PEERS", 10) as usize;
    let idle = Duration::from_secs(env_or("BENCH_IDLE_SECS", 30));
    let plugins = plugin_dir();
    let work = tempfile::tempdir().unwrap();

    let mut tracker = spawn(work.path(), "tracker", &["tracker"]);
    while !connect(&mut tracker) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tracker_udp = tracker.udp.clone();
    let start = Instant::now();
    let mut processes: Vec<Process> = (0..nodes)
        .map(|i| {
            spawn(
                work.path(),
                &format!("node{i}"),
                &[
                    "run",
                    "--tracker",
                    &tracker_udp,
                    "--plugin-dir",
                    plugins.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let spawned = start.elapsed();
    let mut reached: Vec<Option<Duration>> = vec![None; nodes];
    let deadline = start + Duration::from_secs(120);
    while reached.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, process) in processes.iter_mut().enumerate() {
            if reached[i].is_none() && connect(process) && verified(process).await >= peers {
                reached[i] = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times: Vec<Duration> = reached.iter().flatten().copied().collect();
    times.sort();
    println!("discovery: {nodes} nodes, {peers} verified peers each, default configuration");
    println!("  processes spawned in {:.2} s", spawned.as_secs_f64());
    if times.len() == nodes {
        println!(
            "  all {nodes} nodes reached {peers} verified peers in {:.2} s (median node {:.2} s, first {:.2} s)",
            times[nodes - 1].as_secs_f64(),
            times[nodes / 2].as_secs_f64(),
            times[0].as_secs_f64()
        );
    } else {
        println!(
            "  only {} of {nodes} nodes reached {peers} verified peers in 120 s",
            times.len()
        );
    }

    // Idle CPU of one node once discovery is done (let the fast walker finish first).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = processes[0].child.id();
    let before = cpu_time(pid);
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let used = cpu_time(pid) - before;
    let wall = t0.elapsed();
    let peers_now = verified(&processes[0]).await;
    println!(
        "idle: one node with {peers_now} verified peers used {:.3} s of CPU in {:.1} s = {:.2} % of a core",
        used.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * used.as_secs_f64() / wall.as_secs_f64()
    );

    for process in &mut processes {
        let _ = process.child.kill();
        let _ = process.child.wait();
    }
    let _ = tracker.child.kill();
    let _ = tracker.child.wait();
    let _ = std::fs::remove_dir_all(&plugins);
}
