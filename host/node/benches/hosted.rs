//! Hosted benchmark (a bench binary, not a timed test): one `dispersy run` process of the release
//! build hosting N (default 100) communities of several plugin types (the probe and example
//! communities, and the legacy community built against the previous plugin-api; one file each): its memory per community, its idle CPU, and how long it takes
//! from spawning the process until all N communities are joined and live.
//!
//! Phases, each on loopback with its own data folder under one tempdir, no tracker, no peers:
//! 1. host alone: a node with an empty plugin folder (what the host costs before any community);
//! 2. types only (the baseline): a node with the plugin folder, running one community per type;
//! 3. joined: the same node joins further communities of those types through the control API
//!    (`POST /v1/communities` with a fresh master key each, the types in turn) until it runs N;
//! 4. restart: the node is stopped (`POST /v1/shutdown`) and started again on the same data
//!    folder; the start time runs from the spawn until `GET /v1/communities` (polled every 20 ms)
//!    lists all N communities live.
//!
//! After each phase the node settles (BENCH_SETTLE_SECS, default 35: past the 30 s in which a
//! newly joined community walks every 250 ms, the fast walker; the CPU of this time is shown too)
//! and is measured over an idle window (BENCH_IDLE_SECS, default 20): its CPU (utime + stime from
//! /proc/PID/stat, as % of one core, also by thread name from /proc/PID/task), VmRSS and RssAnon
//! (/proc/PID/status), threads, and the datagrams it sends per second (`stats.datagrams_sent` of
//! `GET /v1/node`). Beside them, the limits of the measurement: the
//! CPU of a `sleep` process over the same window, the clock-tick resolution, and how busy the
//! whole machine was. RSS per community = (RSS after restart − RSS of the baseline) / (N − the
//! baseline's count). Prints PASS/FAIL against the goals (idle ≤ 1 % of a core, ≤ 1 MB RSS per
//! idle community, all joined within 2 s of start); it reports and exits 0 either way.
//!
//! Run: `cargo build --release --workspace && cargo bench -p dispersy-node --bench hosted`
//! Options (environment): BENCH_COMMUNITIES (N), BENCH_SETTLE_SECS, BENCH_IDLE_SECS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{cpu_time, env_or, node_command};
use dispersy_node::client::{Client, ClientError, Endpoints};

/// The plugin files of the community types the node hosts, built next to the `dispersy` binary.
const PLUGINS: [&str; 3] = [
    "libprobe_community.so",
    "libexample_community.so",
    "liblegacy_plugin.so",
];

/// The goals of the benchmark.
const GOAL_IDLE_CPU_PERCENT: f64 = 1.0;
const GOAL_RSS_PER_COMMUNITY_KIB: f64 = 1024.0;
const GOAL_START: Duration = Duration::from_secs(2);

/// How long a start may take before the bench gives up on it.
const START_LIMIT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() {
    let target = env_or("BENCH_COMMUNITIES", 100) as usize;
    // Past the fast walker of new communities (`walker.fast_walker_duration_ms`, 30 s), which
    // steps every 250 ms: idle is what comes after it.
    let settle = Duration::from_secs(env_or("BENCH_SETTLE_SECS", 35));
    let window = Duration::from_secs(env_or("BENCH_IDLE_SECS", 20).max(1));
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let plugins = install_plugins(work.path());
    println!(
        "hosted: up to {target} communities of the types in {} in one node; each phase measured over {} s of idle after {} s of settling",
        PLUGINS.join(", "),
        window.as_secs(),
        settle.as_secs()
    );
    let mut rows = Vec::new();

    // 1. The host alone.
    let bare_data = work.path().join("bare");
    let (mut node, started) = Node::start(&bare_data, &empty, None).await;
    rows.push(
        node.measure("host alone (no plugins)", started, settle, window)
            .await,
    );
    node.stop().await;

    // 2. One community per type.
    let data = work.path().join("node");
    let (mut node, started) = Node::start(&data, &plugins, None).await;
    let baseline = node
        .measure("types only (baseline)", started, settle, window)
        .await;
    rows.push(baseline.clone());
    let types = node.types().await;

    // 3. Instances joined through the API until the node runs `target` communities.
    let target = target.max(baseline.communities);
    let joining = Instant::now();
    let joined = node.join_until(target, &types).await;
    let joins = joining.elapsed();
    let reached = node.wait_live(joined, START_LIMIT).await;
    let join_time = joining.elapsed();
    println!(
        "  joined {} communities through the API in {:.2} s ({:.2} s until all live){}",
        joined - baseline.communities,
        joins.as_secs_f64(),
        join_time.as_secs_f64(),
        if reached { "" } else { ": not all became live" }
    );
    rows.push(
        node.measure(&format!("{joined} joined (live)"), None, settle, window)
            .await,
    );
    let stop = node.stop().await;

    // 4. The same data folder started again: every joined community is joined again.
    let (mut node, started) = Node::start(&data, &plugins, Some(joined)).await;
    let restarted = node
        .measure(&format!("{joined} after restart"), started, settle, window)
        .await;
    rows.push(restarted.clone());
    node.stop().await;

    print_table(&rows);
    println!("  stop with {joined} communities (POST /v1/shutdown until exit): {stop}");
    report(&rows[0], &baseline, &restarted, target, window);
}

/// One measured phase.
#[derive(Debug, Clone)]
struct Sample {
    label: String,
    /// Communities listed by `GET /v1/communities`, and how many of them are live.
    communities: usize,
    live: usize,
    /// From the spawn until all communities were live (`None`: not a start, or never).
    start: Option<Duration>,
    rss_kib: u64,
    anon_kib: u64,
    threads: u64,
    /// The node's CPU while it settled (the fast walker of new communities), % of one core.
    settle_cpu_percent: f64,
    /// The node's CPU over the idle window, % of one core.
    cpu_percent: f64,
    /// Datagrams the node sent per second over the window.
    sent_per_second: f64,
    /// CPU of a `sleep` process over the same window, ms.
    sleep_cpu_ms: u128,
    /// How busy the whole machine was over the window, % of all its cores.
    machine_percent: f64,
    /// The node's CPU over the window by thread name: (name, threads, ms), most first.
    by_thread: Vec<(String, usize, u64)>,
}

/// A running node process and its API.
struct Node {
    child: Child,
    client: Client,
}

impl Node {
    /// Spawns `dispersy run` on `data` with `plugins`; returns it once its API answers, with the
    /// time from the spawn until all its communities were live (`expect` of them, when given;
    /// otherwise the first sight of the list that then stays the same for 200 ms), or `None` if
    /// that took longer than [`START_LIMIT`].
    async fn start(data: &Path, plugins: &Path, expect: Option<usize>) -> (Node, Option<Duration>) {
        // A stale endpoints file from an earlier run would point at a closed API.
        let _ = std::fs::remove_file(data.join("endpoints.json"));
        let spawned = Instant::now();
        let child = node_command(data, plugins).spawn().expect("spawn");
        let client = loop {
            if let Ok(endpoints) = Endpoints::read(data) {
                break endpoints.client;
            }
            assert!(spawned.elapsed() < START_LIMIT, "the node never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut node = Node { child, client };
        let live = match expect {
            Some(count) => node
                .wait_live(count, START_LIMIT)
                .await
                .then(|| spawned.elapsed()),
            None => node
                .wait_settled_list()
                .await
                .map(|at| at.duration_since(spawned)),
        };
        (node, live)
    }

    /// Polls `GET /v1/communities` every 20 ms until it lists at least `count` communities, all
    /// live; returns false if that did not happen within `limit`.
    async fn wait_live(&mut self, count: usize, limit: Duration) -> bool {
        let waiting = Instant::now();
        loop {
            let (listed, live) = self.communities().await;
            if listed >= count && live == listed {
                return true;
            }
            if waiting.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the communities are all live and their number has not changed for 200 ms;
    /// returns when that state was first seen (`None`: not within [`START_LIMIT`]).
    async fn wait_settled_list(&mut self) -> Option<Instant> {
        let waiting = Instant::now();
        let mut last = (usize::MAX, 0);
        let mut since = Instant::now();
        loop {
            let now = self.communities().await;
            if now != last {
                last = now;
                since = Instant::now();
            } else if now.0 == now.1 && since.elapsed() >= Duration::from_millis(200) {
                return Some(since);
            }
            if waiting.elapsed() > START_LIMIT {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (communities listed, live ones).
    async fn communities(&self) -> (usize, usize) {
        let Ok(list) = self.client.get("/v1/communities").await else {
            return (0, 0);
        };
        let list = list.as_array().cloned().unwrap_or_default();
        let live = list
            .iter()
            .filter(|c| c["plugin"]["state"] == "live")
            .count();
        (list.len(), live)
    }

    /// The community type names of the communities the node runs, each once, in list order.
    async fn types(&self) -> Vec<String> {
        let list = self.client.get("/v1/communities").await.unwrap();
        let mut types: Vec<String> = Vec::new();
        for name in list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
        {
            if !types.iter().any(|t| t == name) {
                types.push(name.to_owned());
            }
        }
        types
    }

    /// Joins communities of `types` in turn, each with a fresh master key, until the node runs
    /// `target`; stops at the first refusal (printed). Returns how many the node runs.
    async fn join_until(&mut self, target: usize, types: &[String]) -> usize {
        let mut count = self.communities().await.0;
        let mut turn = 0;
        while count < target && !types.is_empty() {
            let master = dispersy_node::keys::generate().expect("random key");
            let body = serde_json::json!({
                "type": types[turn % types.len()],
                "master_key": master.public().to_hex(),
            });
            turn += 1;
            match self.client.post("/v1/communities", &body).await {
                Ok(answer) if answer["community"].is_string() => count += 1,
                Ok(answer) => {
                    println!("  join refused: the answer names no community: {answer}");
                    break;
                }
                Err(ClientError::Status { status, body }) => {
                    println!("  join refused with {status}: {}", body.trim());
                    break;
                }
                Err(error) => {
                    println!("  join failed: {error}");
                    break;
                }
            }
        }
        self.communities().await.0
    }

    /// Lets the node settle, then measures it over an idle window of `window`.
    async fn measure(
        &mut self,
        label: &str,
        start: Option<Duration>,
        settle: Duration,
        window: Duration,
    ) -> Sample {
        let pid = self.child.id();
        let settling = Instant::now();
        let settle_cpu_before = cpu_time(pid);
        tokio::time::sleep(settle).await;
        let settle_cpu = cpu_time(pid) - settle_cpu_before;
        let settle_cpu_percent =
            100.0 * settle_cpu.as_secs_f64() / settling.elapsed().as_secs_f64();
        let (communities, live) = self.communities().await;
        let mut sleeper = std::process::Command::new("sleep")
            .arg(format!("{}", window.as_secs() + 1))
            .spawn()
            .expect("spawn sleep");
        let machine_before = machine_ticks();
        let sent_before = self.datagrams_sent().await;
        let threads_before = thread_ticks(pid);
        let cpu_before = cpu_time(pid);
        let sleep_before = cpu_time(sleeper.id());
        let began = Instant::now();
        tokio::time::sleep(window).await;
        let cpu = cpu_time(pid) - cpu_before;
        let threads_after = thread_ticks(pid);
        let sleep_cpu = cpu_time(sleeper.id()) - sleep_before;
        let elapsed = began.elapsed();
        let sent = self.datagrams_sent().await - sent_before;
        let machine_after = machine_ticks();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let busy = (machine_after.0 - machine_before.0) as f64;
        let total = (machine_after.1 - machine_before.1) as f64;
        Sample {
            label: label.to_owned(),
            communities,
            live,
            start,
            rss_kib: status_field(&status, "VmRSS:"),
            anon_kib: status_field(&status, "RssAnon:"),
            threads: status_field(&status, "Threads:"),
            settle_cpu_percent,
            cpu_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
            sent_per_second: sent as f64 / elapsed.as_secs_f64(),
            sleep_cpu_ms: sleep_cpu.as_millis(),
            machine_percent: if total > 0.0 {
                100.0 * busy / total
            } else {
                0.0
            },
            by_thread: by_thread(&threads_before, &threads_after),
        }
    }

    /// The node's `stats.datagrams_sent`.
    async fn datagrams_sent(&self) -> u64 {
        let node = self.client.get("/v1/node").await.unwrap();
        node["stats"]["datagrams_sent"].as_u64().unwrap()
    }

    /// Asks the node to shut down and waits for it to exit (killed after 60 s); says how long
    /// it took.
    async fn stop(&mut self) -> String {
        let stopping = Instant::now();
        let _ = self
            .client
            .post("/v1/shutdown", &serde_json::json!({}))
            .await;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("{:.2} s ({status})", stopping.elapsed().as_secs_f64());
            }
            if stopping.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return "more than 60 s: killed".into();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` field of /proc/PID/status (or a plain count such as `Threads:`), 0 when absent.
fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Each thread of process `pid`: its id, name and user + system clock ticks, from
/// /proc/PID/task/TID/stat.
fn thread_ticks(pid: u32) -> Vec<(u32, String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((tid, name, ticks))
        })
        .collect()
}

/// CPU between two [`thread_ticks`] readings by thread name: (name, threads, ms), most first.
/// Threads that ended in between are not counted.
fn by_thread(
    before: &[(u32, String, u64)],
    after: &[(u32, String, u64)],
) -> Vec<(String, usize, u64)> {
    let mut groups: Vec<(String, usize, u64)> = Vec::new();
    for (tid, name, ticks) in after {
        let earlier = before
            .iter()
            .find(|(t, _, _)| t == tid)
            .map_or(0, |(_, _, ticks)| *ticks);
        let ms = ticks.saturating_sub(earlier) * 10;
        match groups.iter_mut().find(|(n, _, _)| n == name) {
            Some(group) => {
                group.1 += 1;
                group.2 += ms;
            }
            None => groups.push((name.clone(), 1, ms)),
        }
    }
    groups.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    groups
}

/// (busy, total) clock ticks of all cores of the machine, from the first line of /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Copies the plugin files into the bench's plugin folder; returns the folder.
fn install_plugins(work: &Path) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dispersy"));
    let folder = work.join("plugins");
    std::fs::create_dir_all(&folder).unwrap();
    for plugin in PLUGINS {
        let built = exe.parent().unwrap().join(plugin);
        assert!(
            built.is_file(),
            "{plugin} missing: run `cargo build --release --workspace` first"
        );
        std::fs::copy(&built, folder.join(plugin)).unwrap();
    }
    folder
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_table(rows: &[Sample]) {
    println!(
        "  {:<26} {:>11} {:>11} {:>9} {:>9} {:>8} {:>15} {:>14} {:>8} {:>12} {:>13}",
        "phase",
        "communities",
        "start→live",
        "RSS MiB",
        "anon MiB",
        "threads",
        "settle CPU %core",
        "idle CPU %core",
        "sent/s",
        "sleep CPU ms",
        "machine busy %"
    );
    for row in rows {
        let start = match row.start {
            Some(d) => format!("{:.3} s", d.as_secs_f64()),
            None => "-".into(),
        };
        let communities = if row.live == row.communities {
            row.communities.to_string()
        } else {
            format!("{} ({} live)", row.communities, row.live)
        };
        println!(
            "  {:<26} {:>11} {:>11} {:>9.1} {:>9.1} {:>8} {:>16.2} {:>14.2} {:>8.2} {:>12} {:>14.1}",
            row.label,
            communities,
            start,
            mib(row.rss_kib),
            mib(row.anon_kib),
            row.threads,
            row.settle_cpu_percent,
            row.cpu_percent,
            row.sent_per_second,
            row.sleep_cpu_ms,
            row.machine_percent
        );
    }
    for row in rows {
        let threads: Vec<String> = row
            .by_thread
            .iter()
            .filter(|(_, _, ms)| *ms > 0)
            .map(|(name, count, ms)| format!("{name} ×{count}: {ms} ms"))
            .collect();
        println!(
            "  CPU by thread, {}: {}",
            row.label,
            if threads.is_empty() {
                "none counted".to_owned()
            } else {
                threads.join(", ")
            }
        );
    }
}

/// Per-community figures and the verdicts against the goals.
fn report(bare: &Sample, baseline: &Sample, restarted: &Sample, target: usize, window: Duration) {
    let per = |from: &Sample, to: &Sample, field: fn(&Sample) -> u64| {
        let added = to.communities.saturating_sub(from.communities);
        (added > 0).then(|| (field(to) as f64 - field(from) as f64) / added as f64)
    };
    let rss = |s: &Sample| s.rss_kib;
    let anon = |s: &Sample| s.anon_kib;
    if let (Some(r), Some(a)) = (per(bare, baseline, rss), per(bare, baseline, anon)) {
        println!(
            "  per type community (baseline vs host alone, each with its plugin file loaded): RSS {r:.0} KiB, anon {a:.0} KiB"
        );
    }
    let joined = per(baseline, restarted, rss);
    if let (Some(r), Some(a)) = (joined, per(baseline, restarted, anon)) {
        println!(
            "  per joined community (after restart vs baseline): RSS {r:.0} KiB, anon {a:.0} KiB"
        );
    }
    println!(
        "  limits: CPU time counts in ticks of 10 ms ({:.2} % of a core over the window); RSS counts resident pages only (thread stacks are reserved, not resident)",
        100.0 * 0.010 / window.as_secs_f64()
    );

    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    if restarted.communities < target {
        println!(
            "  FAIL the node ran {} communities, not the {target} asked for: the figures below are for {}",
            restarted.communities, restarted.communities
        );
    }
    println!(
        "  {} idle CPU with {} communities: {:.2} % of a core (goal: at most {GOAL_IDLE_CPU_PERCENT} %)",
        verdict(restarted.cpu_percent <= GOAL_IDLE_CPU_PERCENT),
        restarted.communities,
        restarted.cpu_percent
    );
    match joined {
        Some(kib) => println!(
            "  {} RSS per idle community: {:.0} KiB (goal: at most {GOAL_RSS_PER_COMMUNITY_KIB:.0} KiB)",
            verdict(kib <= GOAL_RSS_PER_COMMUNITY_KIB),
            kib
        ),
        None => println!(
            "  FAIL RSS per idle community: not measured (no community joined beyond the baseline)"
        ),
    }
    match restarted.start {
        Some(start) => println!(
            "  {} start until all {} communities live: {:.3} s (goal: at most {} s)",
            verdict(start <= GOAL_START),
            restarted.communities,
            start.as_secs_f64(),
            GOAL_START.as_secs()
        ),
        None => println!(
            "  FAIL start: not all {} communities live within {} s",
            restarted.communities,
            START_LIMIT.as_secs()
        ),
    }
}
