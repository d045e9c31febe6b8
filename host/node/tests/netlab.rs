//! NAT traversal on real Linux NATs: `shared/netlab` builds a small Internet of network
//! namespaces (a public segment with trackers, private LANs behind nftables NAT routers), and
//! real `dispersy` processes run inside it. The nodes must become walk candidates of each other
//! over a direct path, as the control API of each node shows.
//!
//! Needs root, `ip netns`, nftables and conntrack (`.ci/run` installs them). Where namespaces
//! cannot be made, each test prints why and passes without running, except under CI (`CI` set),
//! where that is a failure: CI can make them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

const COMMUNITY: &str = "e5901df2bfc4bc84bdbe490d5690273cf96491f1";

fn netlab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/netlab/netlab")
}

/// Why the lab cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !netlab_script().is_file() {
        return Some(format!("{} not found", netlab_script().display()));
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` missing (apt-get install iproute2 nftables conntrack)"
            ));
        }
    }
    None
}

/// A running lab; `down` on drop (which also kills every process inside it).
struct Lab {
    prefix: String,
    work: tempfile::TempDir,
    children: Vec<Child>,
    env: Vec<(String, String)>,
}

impl Lab {
    /// `netlab up ARGS` under a private prefix; `None` (with a message) where labs cannot run.
    fn up(prefix: &str, args: &[&str]) -> Option<Lab> {
        if let Some(reason) = unavailable() {
            assert!(
                std::env::var_os("CI").is_none(),
                "netlab tests must run in CI, but: {reason}"
            );
            eprintln!("SKIPPED: network namespaces unavailable here ({reason})");
            return None;
        }
        let mut lab = Lab {
            prefix: prefix.to_owned(),
            work: tempfile::tempdir().unwrap(),
            children: Vec::new(),
            env: Vec::new(),
        };
        lab.netlab(&["down"]);
        let up = lab.netlab(&[&["up"], args].concat());
        assert!(
            up.status.success(),
            "netlab up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let env = lab.netlab(&["env"]);
        lab.env = String::from_utf8_lossy(&env.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Some(lab)
    }

    fn netlab(&self, args: &[&str]) -> std::process::Output {
        Command::new(netlab_script())
            .args(args)
            .env("NETLAB_PREFIX", &self.prefix)
            .output()
            .expect("netlab runs")
    }

    fn var(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("netlab env has no {name}"))
    }

    fn data_dir(&self, host: &str) -> PathBuf {
        self.work.path().join(host)
    }

    /// Starts `dispersy ARGS` in `host`'s namespace with its own data folder.
    fn start(&mut self, host: &str, args: &[&str]) {
        let log = std::fs::File::create(self.work.path().join(format!("{host}.log"))).unwrap();
        let child = Command::new(netlab_script())
            .env("NETLAB_PREFIX", &self.prefix)
            .env("DISPERSY_WALKER__STEP_INTERVAL_MS", "1000")
            .env("RUST_LOG", "info")
            .args(["exec", host, env!("CARGO_BIN_EXE_dispersy")])
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir(host))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn tracker(&mut self, host: &str) {
        self.start(host, &["tracker", "--port", "7000"]);
    }

    fn node(&mut self, host: &str, trackers: &[String], plugins: &Path) {
        let mut args = vec![
            "run",
            "--port",
            "7759",
            "--plugin-dir",
            plugins.to_str().unwrap(),
        ];
        for tracker in trackers {
            args.extend(["--tracker", tracker.as_str()]);
        }
        self.start(host, &args);
    }

    /// `dispersy api GET PATH` inside `host`'s namespace.
    fn api(&self, host: &str, path: &str) -> Option<Value> {
        let output = Command::new(netlab_script())
            .env("NETLAB_PREFIX", &self.prefix)
            .args([
                "exec",
                host,
                env!("CARGO_BIN_EXE_dispersy"),
                "api",
                "--data-dir",
            ])
            .arg(self.data_dir(host))
            .args(["GET", path])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    fn member(&self, host: &str) -> Option<String> {
        self.api(host, "/v1/node")?["mid"]
            .as_str()
            .map(str::to_owned)
    }

    /// The candidate of `host` whose member is `member`, if any.
    fn candidate(&self, host: &str, member: &str) -> Option<Value> {
        let list = self.api(host, &format!("/v1/communities/{COMMUNITY}/candidates"))?;
        list.as_array()?
            .iter()
            .find(|c| c["member"] == member)
            .cloned()
    }

    fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.work.path().join(format!("{host}.log"))).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.netlab(&["down"]);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a tracker on T and nodes on A and B, and waits until A and B are walk candidates of
/// each other. Returns the lab and the candidate entries (A's view of B, B's view of A).
fn direct_pair(prefix: &str, args: &[&str]) -> Option<(Lab, Value, Value)> {
    let mut lab = Lab::up(prefix, args)?;
    let plugins = common::plugin_dir();
    let tracker = format!("{}:7000", lab.var("NL_T"));
    lab.tracker("T");
    std::thread::sleep(Duration::from_millis(300));
    lab.node("A", std::slice::from_ref(&tracker), plugins.path());
    lab.node("B", &[tracker], plugins.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = (|| {
            let a = lab.member("A")?;
            let b = lab.member("B")?;
            let a_sees_b = lab.candidate("A", &b)?;
            let b_sees_a = lab.candidate("B", &a)?;
            (a_sees_b["category"] == "walk" && b_sees_a["category"] == "walk")
                .then_some((a_sees_b, b_sees_a))
        })();
        if let Some((ab, ba)) = found {
            return Some((lab, ab, ba));
        }
        assert!(
            Instant::now() < deadline,
            "{args:?}: A and B did not walk to each other in 60 s\nA: {}\nB: {}",
            lab.log("A"),
            lab.log("B")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A and B behind routers R1 and R2 reach each other at the routers' public addresses.
fn assert_direct_between_routers(prefix: &str, nat1: &str, nat2: &str) {
    if let Some((lab, ab, ba)) = direct_pair(prefix, &["nat2", "--nat1", nat1, "--nat2", nat2]) {
        assert!(
            ab["address"]
                .as_str()
                .unwrap()
                .starts_with(&lab.var("NL_R2")),
            "{ab}"
        );
        assert!(
            ba["address"]
                .as_str()
                .unwrap()
                .starts_with(&lab.var("NL_R1")),
            "{ba}"
        );
    }
}

#[test]
fn cone_to_cone() {
    assert_direct_between_routers("dc1-", "cone", "cone");
}

#[test]
fn restricted_to_restricted() {
    assert_direct_between_routers("dc2-", "restricted", "restricted");
}

#[test]
fn full_cone_to_symmetric() {
    assert_direct_between_routers("dc3-", "full-cone", "symmetric");
}

#[test]
fn restricted_to_symmetric() {
    assert_direct_between_routers("dc4-", "restricted", "symmetric");
}

#[test]
fn two_nodes_in_one_lan_meet_on_their_lan_addresses() {
    if let Some((lab, ab, ba)) = direct_pair("dc5-", &["lan", "--nat", "cone"]) {
        assert_eq!(ab["address"], format!("{}:7759", lab.var("NL_B")), "{ab}");
        assert_eq!(ba["address"], format!("{}:7759", lab.var("NL_A")), "{ba}");
    }
}

#[test]
fn symmetric_to_symmetric_fails_cleanly() {
    let Some(mut lab) = Lab::up(
        "dc6-",
        &[
            "nat2",
            "--nat1",
            "symmetric",
            "--nat2",
            "symmetric",
            "--public-hosts",
            "1",
        ],
    ) else {
        return;
    };
    let plugins = common::plugin_dir();
    // Two trackers: votes from two IPs reveal the symmetric NATs.
    let trackers = [
        format!("{}:7000", lab.var("NL_T")),
        format!("{}:7000", lab.var("NL_P1")),
    ];
    lab.tracker("T");
    lab.tracker("P1");
    std::thread::sleep(Duration::from_millis(300));
    lab.node("A", &trackers, plugins.path());
    lab.node("B", &trackers, plugins.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let symmetric = |host: &str| {
        lab.api(host, "/v1/node")
            .is_some_and(|n| n["connection_type"] == "symmetric-NAT")
    };
    while !(symmetric("A") && symmetric("B")) {
        assert!(
            Instant::now() < deadline,
            "the nodes did not detect their symmetric NATs\nA: {}",
            lab.log("A")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // From then on the trackers refuse to introduce them to each other, and say so.
    std::thread::sleep(Duration::from_secs(15));
    let b = lab.member("B").unwrap();
    assert!(
        lab.candidate("A", &b)
            .is_none_or(|c| c["category"] != "walk")
    );
    let refused: u64 = ["T", "P1"]
        .iter()
        .filter_map(|t| lab.api(t, "/v1/communities"))
        .flat_map(|list| list.as_array().cloned().unwrap_or_default())
        .map(|c| c["stats"]["introductions_refused"].as_u64().unwrap_or(0))
        .sum();
    assert!(refused > 0, "the trackers count refused introductions");
}
