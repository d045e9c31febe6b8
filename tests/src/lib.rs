//! Test harness for black-box tests: in-process nodes on 127.0.0.1 with ephemeral ports,
//! temporary data folders, and the real plugin `.so` files copied into a private folder.
//!
//! `cargo test` builds the plugins because this crate dev-depends on them (their `rlib` is never
//! linked; the `cdylib` lands in `target/<profile>/deps/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dispersy_core::stats::DropReason;
use dispersy_node::client::Client;
use dispersy_node::config::{Config, Walker};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub mod peer;

/// The id of the example community (from its master key): the template, `plugins/example`.
pub const EXAMPLE: &str = "e5901df2bfc4bc84bdbe490d5690273cf96491f1";
/// The id of the probe test community (`plugins/probe`): every meta kind, fault counters.
pub const PROBE: &str = "a2954e175d875cfdadc3a03557c72372038ec2b1";
/// The id of the faulty test community.
pub const FAULTY: &str = "6d68501485e1b1c41272e8dca867d570e89f9e29";

/// Path of the built plugin `lib<name>.so`.
pub fn plugin_file(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    for dir in [deps, deps.parent().unwrap()] {
        let path = dir.join(&file);
        if path.is_file() {
            return path;
        }
    }
    panic!("{file} not built; run the tests with `cargo test` from the workspace root");
}

/// A private folder holding copies of the named plugins.
pub fn plugin_dir(names: &[&str]) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("plugins-")
        .tempdir()
        .unwrap();
    for name in names {
        let source = plugin_file(name);
        std::fs::copy(&source, dir.path().join(source.file_name().unwrap())).unwrap();
    }
    dir
}

/// A configuration for a test node: loopback, ephemeral ports, fast walker.
pub fn config(data_dir: &Path, plugin_dir: &Path) -> Config {
    Config {
        bind: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        data_dir: data_dir.to_path_buf(),
        plugin_dir: vec![plugin_dir.to_path_buf()],
        api: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        walker: Walker {
            step_interval_ms: 200,
            eligible_delay_ms: 1_000,
            ..Walker::default()
        },
        ..Config::default()
    }
}

/// A node running in this process.
pub struct TestNode {
    /// Its UDP address.
    pub udp: SocketAddr,
    /// A client for its API.
    pub client: Client,
    shutdown: CancellationToken,
    running: Option<dispersy_node::Running>,
    _data: TempDir,
}

impl TestNode {
    /// Starts a node with `plugins`, after `tweak` adjusted its configuration.
    pub async fn start(plugins: &Path, tweak: impl FnOnce(&mut Config)) -> TestNode {
        let data = tempfile::Builder::new().prefix("node-").tempdir().unwrap();
        TestNode::start_in(data, plugins, tweak).await
    }

    /// Starts a node on the data folder `data` (a new one, or one a stopped node left with
    /// [`TestNode::stop_keeping_data`]), with `plugins`, after `tweak`.
    pub async fn start_in(
        data: TempDir,
        plugins: &Path,
        tweak: impl FnOnce(&mut Config),
    ) -> TestNode {
        let mut config = config(data.path(), plugins);
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let running = dispersy_node::start(config, shutdown.clone())
            .await
            .unwrap();
        TestNode {
            udp: running.udp,
            client: Client::new(running.api, running.token.clone()),
            shutdown,
            running: Some(running),
            _data: data,
        }
    }

    /// The node's data folder.
    pub fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// The node's member public key, hex.
    pub fn member(&self) -> &str {
        &self.running.as_ref().unwrap().member
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Value {
        self.client.get(path).await.unwrap()
    }

    /// The entry of `community` in `GET /v1/communities`.
    pub async fn community(&self, community: &str) -> Value {
        let list = self.get("/v1/communities").await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == community)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The report of the file that provides `community` in `GET /v1/plugins` (Null if none).
    pub async fn plugin_report(&self, community: &str) -> Value {
        let list = self.get("/v1/plugins").await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["community"] == community)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// `method path` with an optional JSON `body`: the status and the JSON answer (Null when
    /// the answer is not JSON).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self
            .client
            .raw(
                method,
                path,
                body.map(|b| b.to_string()),
                Some(self.client.token()),
            )
            .await
            .unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Joins the community of master key `master` (hex) as an instance of type `kind`
    /// (`POST /v1/communities`): the status and the JSON answer.
    pub async fn join_instance(&self, kind: &str, master: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/communities",
            Some(serde_json::json!({"type": kind, "master_key": master})),
        )
        .await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let (_, text) = self
            .client
            .raw("GET", "/metrics", None, Some(self.client.token()))
            .await
            .unwrap();
        text
    }

    /// Counter `reason` of the node's dropped packets, read by its name in the control API.
    pub async fn dropped(&self, reason: DropReason) -> u64 {
        self.get("/v1/node").await["stats"]["dropped"][reason.as_str()]
            .as_u64()
            .unwrap_or(0)
    }

    /// Whether `other` is a verified candidate of `community` here.
    pub async fn knows(&self, community: &str, other: SocketAddr) -> bool {
        let list = self
            .get(&format!("/v1/communities/{community}/candidates"))
            .await;
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["address"] == other.to_string().as_str() && c["verified"] == true)
    }

    /// Stops the node and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
    }

    /// Stops the node, waits for it, and hands back its data folder (to start it again).
    pub async fn stop_keeping_data(mut self) -> TempDir {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
        self._data
    }
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node founding the community of master key `master` (`founder_key`: its key file
/// `master.key` in the returned folder, which must outlive the nodes) and a second node given
/// the first as a peer, both with `plugins`.
pub async fn founder_and_peer(
    plugins: &Path,
    master: &dispersy_core::identity::KeyPair,
) -> (TestNode, TestNode, TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("master.key");
    dispersy_node::keys::save(&path, master).unwrap();
    let a = TestNode::start(plugins, move |c| c.founder_key = Some(path)).await;
    let a_udp = a.udp;
    let b = TestNode::start(plugins, |c| c.peers = vec![a_udp.to_string()]).await;
    (a, b, keys)
}

/// A founder and a peer ([`founder_and_peer`]) that both joined the probe community instance of
/// master key `peer::key(seed)`. Keep every field alive for the test's length (the folders go
/// when dropped).
pub struct FoundedProbe {
    /// The founder.
    pub a: TestNode,
    /// The peer.
    pub b: TestNode,
    /// The instance's master key.
    pub master: dispersy_core::identity::KeyPair,
    /// The instance's community id, hex.
    pub id: String,
    /// The plugin folder (the probe plugin).
    pub plugins: TempDir,
    /// The folder of the founder's key file.
    pub keys: TempDir,
}

/// [`FoundedProbe`]: started, and the instance joined on both nodes.
pub async fn founded_probe(seed: u8) -> FoundedProbe {
    let plugins = plugin_dir(&["probe_community"]);
    let master = peer::key(seed);
    let hex = master.public().to_hex();
    let (a, b, keys) = founder_and_peer(plugins.path(), &master).await;
    for node in [&a, &b] {
        let (code, answer) = node.join_instance("probe", &hex).await;
        assert_eq!(code, 201, "{answer}");
    }
    FoundedProbe {
        a,
        b,
        id: master.member_id().to_hex(),
        master,
        plugins,
        keys,
    }
}

/// Two nodes with `plugins` that know each other in `community` (the second was given the first
/// as a peer).
pub async fn pair(plugins: &Path, community: &str) -> (TestNode, TestNode) {
    pair_with(plugins, community, |_| {}).await
}

/// [`pair`], both nodes' configuration adjusted by `tweak`.
pub async fn pair_with(
    plugins: &Path,
    community: &str,
    tweak: impl Fn(&mut Config),
) -> (TestNode, TestNode) {
    let a = TestNode::start(plugins, &tweak).await;
    let a_udp = a.udp;
    let b = TestNode::start(plugins, |c| {
        tweak(c);
        c.peers = vec![a_udp.to_string()];
    })
    .await;
    let b_udp = b.udp;
    wait_until(
        Duration::from_secs(20),
        "the nodes to know each other",
        || async { a.knows(community, b_udp).await && b.knows(community, a_udp).await },
    )
    .await;
    (a, b)
}
