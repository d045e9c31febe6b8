//! The `dispersy` binary: keygen, configuration errors, and the demo end to end (separate
//! processes on loopback, the example plugin loaded from its `.so`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::plugin_dir;
use std::process::Command;

fn dispersy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dispersy"))
}

#[test]
fn keygen_prints_ids_and_writes_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let output = dispersy()
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .unwrap()
        .trim();
    assert_eq!(public.len(), 66);
    let community = text
        .lines()
        .find_map(|l| l.strip_prefix("community id:"))
        .unwrap();
    assert_eq!(community.split_whitespace().next().unwrap().len(), 40);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The file is a key the node accepts.
    let key = dispersy_node::keys::load(&path).unwrap();
    assert_eq!(key.public().to_hex(), public);
    // Never overwritten.
    assert!(
        !dispersy()
            .args(["keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap()
            .status
            .success()
    );
}

#[test]
fn configuration_errors_are_one_line_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "port = \"seven\"\n").unwrap();
    let output = dispersy()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("port"), "{error}");
    assert_eq!(error.trim().lines().count(), 1, "{error}");

    let output = dispersy()
        .args(["run", "--tracker", "nowhere", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("trackers entry \"nowhere\""), "{error}");

    let key_dir = dir.path().join("keyed");
    std::fs::create_dir(&key_dir).unwrap();
    std::fs::write(key_dir.join("member.key"), "00\n").unwrap();
    std::fs::set_permissions(
        key_dir.join("member.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let output = dispersy()
        .args(["run", "--port", "0", "--api", "127.0.0.1:0", "--data-dir"])
        .arg(&key_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("readable by others"), "{error}");
}

#[test]
fn demo_discovers_peers_and_delivers_every_message() {
    let plugins = plugin_dir();
    let output = dispersy()
        .args([
            "demo",
            "--messages",
            "5",
            "--step-interval-ms",
            "300",
            "--plugin-dir",
        ])
        .arg(plugins.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("every node knows every other node"), "{text}");
    // 3 nodes × 5 messages × 2 receivers.
    assert!(text.contains("delivered 30/30"), "{text}");
    assert!(text.contains("duplicates 0"), "{text}");
}
