//! `dispersy demo`: a tracker and three nodes on loopback, each a separate `dispersy` process
//! loading the example plugin from its `.so`. It shows the nodes discovering each other through
//! the tracker, makes each node send example messages, and ends with a summary that includes
//! `delivered X/Y`.

pub mod forum;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::client::{Client, ClientError, Endpoints};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes besides the tracker.
    pub nodes: usize,
    /// Example messages each node sends.
    pub messages: usize,
    /// Walk step interval of the demo nodes, in milliseconds.
    pub step_interval_ms: u64,
    /// Where the plugin files are (default: beside the executable).
    pub plugin_dir: Option<PathBuf>,
    /// Longest wait for discovery and delivery.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            messages: 20,
            step_interval_ms: 1_000,
            plugin_dir: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Messages received by plugins from other nodes.
    pub delivered: u64,
    /// Messages that should have been received (each created message times its destinations).
    pub expected: u64,
    /// Messages a plugin saw twice.
    pub duplicates: u64,
    /// Whether every node knew every other node as a verified candidate.
    pub discovered: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo's plugin file is not there.
    #[error("no plugin file {0}: build it first with `cargo build --release`")]
    NoPlugin(PathBuf),
    /// A process could not be started.
    #[error("starting {what}: {source}")]
    Spawn {
        /// Which process.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A node did not come up.
    #[error("{what} did not start in time; its log: {log}")]
    NotStarted {
        /// Which node.
        what: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The control API failed.
    #[error("control API of {what}: {source}")]
    Api {
        /// Which node.
        what: String,
        /// The error.
        source: ClientError,
    },
    /// Local I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct Process {
    name: String,
    child: Child,
    udp: SocketAddr,
    client: Client,
}

/// Runs the demo, printing progress to stdout.
pub async fn run(options: Options) -> Result<Summary, DemoError> {
    let plugin_dir = plugin_dir(&options, "example_community")?;
    let network = Network::start(&options, &plugin_dir).await?;
    let result = demo(network.nodes(), &options).await;
    network.stop().await;
    result
}

/// The folder holding the plugin file `library` (options or beside the executable); an error
/// naming the file when it is not there.
fn plugin_dir(options: &Options, library: &str) -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe()?;
    let dir = match &options.plugin_dir {
        Some(dir) => dir.clone(),
        None => exe
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let plugin = dir.join(format!(
        "{}{library}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    if !plugin.is_file() {
        return Err(DemoError::NoPlugin(plugin));
    }
    Ok(dir)
}

/// A tracker and nodes on loopback, each a `dispersy` process, in a temporary work folder
/// (their data folders and logs) that goes with them.
struct Network {
    /// The tracker first, then the nodes.
    processes: Vec<Process>,
    _work: tempfile::TempDir,
}

impl Network {
    /// Starts the tracker and `options.nodes` nodes loading plugins from `plugin_dir`, and
    /// prints them. On an error the processes started so far are stopped.
    async fn start(options: &Options, plugin_dir: &Path) -> Result<Network, DemoError> {
        let exe = std::env::current_exe()?;
        let work = tempfile::Builder::new()
            .prefix("dispersy-demo-")
            .tempdir()?;
        println!(
            "Dispersy demo: a tracker and {} nodes on 127.0.0.1",
            options.nodes
        );
        println!("  plugins: {}", plugin_dir.display());
        println!(
            "  walk step: {} ms (default 5000 ms)",
            options.step_interval_ms
        );
        println!("  work folder: {}", work.path().display());
        let mut network = Network {
            processes: Vec::new(),
            _work: work,
        };
        let dir = network._work.path().to_path_buf();
        let started = async {
            let tracker = spawn(&exe, &dir, "tracker", &["tracker".into()], options).await?;
            println!("  tracker  udp {}", tracker.udp);
            let tracker_udp = tracker.udp;
            network.processes.push(tracker);
            for i in 1..=options.nodes {
                let name = format!("node{i}");
                let args = vec![
                    "run".into(),
                    "--tracker".into(),
                    tracker_udp.to_string(),
                    "--plugin-dir".into(),
                    plugin_dir.display().to_string(),
                ];
                let node = spawn(&exe, &dir, &name, &args, options).await?;
                println!(
                    "  {name}    udp {}  api {}",
                    node.udp,
                    node.client.address()
                );
                network.processes.push(node);
            }
            Ok::<(), DemoError>(())
        }
        .await;
        match started {
            Ok(()) => Ok(network),
            Err(error) => {
                network.stop().await;
                Err(error)
            }
        }
    }

    /// The nodes (not the tracker).
    fn nodes(&self) -> &[Process] {
        self.processes.get(1..).unwrap_or_default()
    }

    /// Shuts every process down (killing those that do not stop in 5 s); the work folder goes.
    async fn stop(self) {
        for process in &self.processes {
            let _ = process.client.post("/v1/shutdown", &json!({})).await;
        }
        for mut process in self.processes {
            let waited = tokio::time::timeout(Duration::from_secs(5), process.child.wait()).await;
            if waited.is_err() {
                let _ = process.child.kill().await;
            }
        }
    }
}

async fn spawn(
    exe: &Path,
    work: &Path,
    name: &str,
    args: &[String],
    options: &Options,
) -> Result<Process, DemoError> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    let log = work.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log)?;
    let child = Command::new(exe)
        .args(args)
        .args(["--bind", "127.0.0.1", "--port", "0", "--api", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&dir)
        .env(
            "DISPERSY_WALKER__STEP_INTERVAL_MS",
            options.step_interval_ms.to_string(),
        )
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            what: name.to_owned(),
            source,
        })?;
    for _ in 0..200 {
        if let Ok(endpoints) = Endpoints::read(&dir) {
            return Ok(Process {
                name: name.to_owned(),
                child,
                udp: endpoints.udp,
                client: endpoints.client,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(DemoError::NotStarted {
        what: name.to_owned(),
        log,
    })
}

fn api_error(process: &Process) -> impl FnOnce(ClientError) -> DemoError + '_ {
    move |source| DemoError::Api {
        what: process.name.clone(),
        source,
    }
}

async fn demo(nodes: &[Process], options: &Options) -> Result<Summary, DemoError> {
    let communities = nodes[0]
        .client
        .get("/v1/communities")
        .await
        .map_err(api_error(&nodes[0]))?;
    let community = communities
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == "example"))
        .and_then(|c| c["id"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| DemoError::Api {
            what: nodes[0].name.clone(),
            source: ClientError::Malformed,
        })?;
    println!("\nexample community {community}");
    let names: HashMap<SocketAddr, &str> = nodes.iter().map(|n| (n.udp, n.name.as_str())).collect();

    println!("\ndiscovery:");
    let started = tokio::time::Instant::now();
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    let wanted = nodes.len() * (nodes.len() - 1);
    while known.len() < wanted && started.elapsed() < options.timeout {
        for node in nodes {
            let list = node
                .client
                .get(&format!("/v1/communities/{community}/candidates"))
                .await
                .map_err(api_error(node))?;
            for candidate in list.as_array().into_iter().flatten() {
                let Some(address) = candidate["address"].as_str().and_then(|a| a.parse().ok())
                else {
                    continue;
                };
                let Some(other) = names.get(&address) else {
                    continue;
                };
                if candidate["verified"] == true
                    && known.insert((node.name.clone(), (*other).to_owned()))
                {
                    println!(
                        "  {:>6.1} s  {} knows {} ({} candidate)",
                        started.elapsed().as_secs_f64(),
                        node.name,
                        other,
                        candidate["category"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let discovered = known.len() == wanted;
    if discovered {
        println!("  every node knows every other node");
    } else {
        println!("  discovery incomplete after {:?}", options.timeout);
    }

    println!(
        "\nmessages: each node sends {} example messages",
        options.messages
    );
    let mut expected = 0;
    for node in nodes {
        for k in 1..=options.messages {
            let body = json!({
                "meta": "example",
                "payload": { "text": format!("hello from {} #{k}", node.name), "amount": k },
            });
            let created = node
                .client
                .post(&format!("/v1/communities/{community}/messages"), &body)
                .await
                .map_err(api_error(node))?;
            expected += created["sent_to"].as_u64().unwrap_or(0);
        }
    }
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        received.clear();
        for node in nodes {
            let list = node
                .client
                .get("/v1/communities")
                .await
                .map_err(api_error(node))?;
            let status = list
                .as_array()
                .and_then(|l| l.iter().find(|c| c["id"] == community.as_str()))
                .map(|c| c["plugin"]["status"].clone())
                .unwrap_or(Value::Null);
            received.push((
                node.name.clone(),
                status["received"].as_u64().unwrap_or(0),
                status["duplicates"].as_u64().unwrap_or(0),
                status["last_text"].as_str().unwrap_or("").to_owned(),
            ));
        }
        let delivered: u64 = received.iter().map(|r| r.1).sum();
        if delivered >= expected || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, count, _, last) in &received {
        println!("  {name} received {count} messages, the last: {last:?}");
    }
    let summary = Summary {
        delivered: received.iter().map(|r| r.1).sum(),
        expected,
        duplicates: received.iter().map(|r| r.2).sum(),
        discovered,
    };
    println!(
        "\nsummary: {} nodes, discovery {}, delivered {}/{}, duplicates {}",
        nodes.len(),
        if discovered { "complete" } else { "incomplete" },
        summary.delivered,
        summary.expected,
        summary.duplicates
    );
    Ok(summary)
}
