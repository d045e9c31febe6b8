//! The `dispersy` binary: keygen, configuration errors, and the demo end to end (separate
//! processes on loopback, the example plugin loaded from its `.so`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{KillOnDrop, node_command, plugin_dir, plugin_dir_of};
use std::process::Command;

fn dispersy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dispersy"))
}

/// The first word after `prefix` on its line of `dispersy keygen`'s output.
fn keygen_field(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
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
    let public = keygen_field(&text, "public key:");
    assert_eq!(public.len(), 66);
    assert_eq!(keygen_field(&text, "community id:").len(), 40);
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

/// The forum demo: three processes, founding through the API, a moderator, undo-own and
/// undo-other, votes, a co-signed endorsement, moderated mode, and the same forum everywhere.
#[test]
fn forum_demo_ends_with_the_same_moderated_forum_on_three_nodes() {
    let plugins = plugin_dir_of("forum_community");
    let output = dispersy()
        .args([
            "demo",
            "--forum",
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
    for expected in [
        "node2 undid node3's spam (undo-other)",
        "endorsement signed by both",
        "node3's new post refused (403)",
        "forum identical on all three nodes, 1 posts shown, 2 hidden (undone)",
        "\"hello, everyone\" (edited)",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(!text.contains("CHEAP WATCHES"), "{text}");
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

#[test]
fn new_plugin_writes_a_standalone_crate_with_a_fresh_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = dispersy()
        .args(["new-plugin", "chat-room", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let krate = dir.path().join("chat-room");
    let read = |file: &str| std::fs::read_to_string(krate.join(file)).unwrap();

    // Standalone: its own workspace, no workspace keys, the plugin API by path.
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("name = \"chat-room\""), "{manifest}");
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
    assert!(!manifest.contains(".workspace"), "{manifest}");
    assert!(
        manifest.contains("crate-type = [\"cdylib\", \"rlib\"]"),
        "{manifest}"
    );
    let api =
        std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugin-api")).unwrap();
    assert!(
        manifest.contains(&format!(
            "dispersy-plugin-api = {{ path = \"{}\" }}",
            api.display()
        )),
        "{manifest}"
    );
    assert_eq!(
        read("rust-toolchain.toml"),
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../rust-toolchain.toml"
        ))
        .unwrap()
    );
    assert!(read(".gitignore").contains("/master.key"));

    // A fresh master key: the secret in a private file, the public key in the code.
    let key = dispersy_node::keys::load(&krate.join("master.key")).unwrap();
    let public = key.public().to_hex();
    let mode = std::fs::metadata(krate.join("master.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let lib = read("src/lib.rs");
    assert!(
        lib.contains(&format!("MASTER_KEY: &str = \"{public}\"")),
        "{lib}"
    );
    assert!(
        text.contains(&key.public().community_id().to_hex()),
        "{text}"
    );
    // The name substituted everywhere, the tests on the host double, nothing left unfilled.
    assert!(lib.contains("pub struct ChatRoomCommunity"));
    assert!(lib.contains("Definition::new(\"chat-room\""));
    assert!(lib.contains("export_community!(ChatRoomCommunity);"));
    assert!(lib.contains("TestHost::<ChatRoomCommunity>::new()"));
    assert!(!lib.contains("{{") && !manifest.contains("{{"));

    // Never overwritten; bad names refused with one line naming them.
    let again = dispersy()
        .args(["new-plugin", "chat-room", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8(again.stderr)
            .unwrap()
            .contains("exists already")
    );
    let bad = dispersy()
        .args(["new-plugin", "Chat Room", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let error = String::from_utf8(bad.stderr).unwrap();
    assert!(error.contains("\"Chat Room\""), "{error}");
    assert_eq!(error.trim().lines().count(), 1, "{error}");
}

#[test]
fn community_subcommands_change_a_running_node() {
    const EXAMPLE: &str = "e5901df2bfc4bc84bdbe490d5690273cf96491f1";
    let plugins = plugin_dir();
    let data = tempfile::tempdir().unwrap();
    let mut node = KillOnDrop(node_command(data.path(), plugins.path()).spawn().unwrap());
    let community = |action: &str, id: &str| {
        dispersy()
            .args(["community", action, id, "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let listed = dispersy()
            .args(["api", "GET", "/v1/communities", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        if String::from_utf8_lossy(&listed.stdout).contains(EXAMPLE) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = community("disable", EXAMPLE);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"disabled\""));
    let out = community("enable", EXAMPLE);
    assert!(out.status.success(), "{out:?}");
    let out = community("enable", EXAMPLE);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("it is live"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let out = community("restart", EXAMPLE);
    assert!(out.status.success(), "{out:?}");
    let out = community("leave", EXAMPLE);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"left\""));
    let out = community("join", EXAMPLE);
    assert!(out.status.success(), "{out:?}");
    let out = community("leave", &"00".repeat(20));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown community"));
    let out = community("disable", "nothex");
    assert!(!out.status.success());
    let error = String::from_utf8(out.stderr).unwrap();
    assert!(error.contains("40 hexadecimal digits"), "{error}");
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    // Another community of the example type, with a master key from keygen.
    let keygen = dispersy().arg("keygen").output().unwrap();
    let text = String::from_utf8(keygen.stdout).unwrap();
    let master = keygen_field(&text, "public key:");
    let join = |kind: &str, key: &str| {
        dispersy()
            .args(["join", kind, key, "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap()
    };
    let out = join("example", &master);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("\"type_community\": \"{EXAMPLE}\"")),
        "{out:?}"
    );
    let out = join("example", &master);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let out = join("chess", &master);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("no loaded plugin defines community type `chess`"),
        "{out:?}"
    );
    // A live upgrade to the same build: refused (not newer) unless a downgrade is asked for.
    let file = plugins.path().join("libexample_community.so");
    let upgrade = |extra: &[&str]| {
        dispersy()
            .args(["plugin", "upgrade"])
            .arg(&file)
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let out = upgrade(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is not newer than the running 0.1.0"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let out = upgrade(&["--allow-downgrade"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"previous_version\": \"0.1.0\""),
        "{out:?}"
    );
    let stop = dispersy()
        .args(["api", "POST", "/v1/shutdown", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    assert!(node.0.wait().unwrap().success());
}

#[test]
fn permission_subcommands_show_the_timeline_authorize_revoke_and_refuse_settings() {
    let plugins = plugin_dir();
    let data = tempfile::tempdir().unwrap();
    // The instance's master key founds it at this node; another member to grant to.
    let master_file = data.path().join("master.key");
    let keygen = dispersy()
        .args(["keygen", "--out"])
        .arg(&master_file)
        .output()
        .unwrap();
    let text = String::from_utf8(keygen.stdout).unwrap();
    let (master, id) = (
        keygen_field(&text, "public key:"),
        keygen_field(&text, "community id:"),
    );
    let other = String::from_utf8(dispersy().arg("keygen").output().unwrap().stdout).unwrap();
    let member = keygen_field(&other, "public key:");
    let config = data.path().join("node.toml");
    std::fs::write(
        &config,
        format!("founder_key = {:?}\n", master_file.to_str().unwrap()),
    )
    .unwrap();
    let mut node = KillOnDrop(
        node_command(data.path(), plugins.path())
            .arg("--config")
            .arg(&config)
            .spawn()
            .unwrap(),
    );
    let run = |args: &[&str]| {
        dispersy()
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !run(&["join", "example", &master]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Founded once the instance's thread runs: the master's authorize is the first record.
    loop {
        let out = run(&["timeline", &id]);
        assert!(out.status.success(), "{out:?}");
        if String::from_utf8_lossy(&out.stdout).contains("\"kind\": \"authorize\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not founded: {out:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = run(&["authorize", &id, &member, "dynamic-settings:permit"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"sequence_number\": 1"),
        "{out:?}"
    );
    let out = run(&["revoke", &id, &member, "dynamic-settings:permit"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["timeline", &id]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\"kind\": \"revoke\""), "{shown}");
    assert!(shown.contains("\"meta\": \"dynamic-settings\""), "{shown}");
    // The example community has no meta of dynamic resolution.
    let out = run(&["settings", &id, "post", "linear"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not of dynamic resolution"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{out:?}"
    );
    let out = run(&["authorize", &id, &member, "post"]);
    assert!(!out.status.success());
    let error = String::from_utf8(out.stderr).unwrap();
    assert!(error.contains("META:PERMISSION"), "{error}");
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    // Destroy: soft freezes, hard still passes, then nothing more is created.
    let out = run(&["destroy", &id, "--soft"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["destroy", &id]);
    assert!(out.status.success(), "{out:?}");
    // Once stored, the community is destroyed (hard): nothing more.
    while !String::from_utf8_lossy(&run(&["api", "GET", "/v1/communities"]).stdout)
        .contains("\"degree\": \"hard\"")
    {
        assert!(std::time::Instant::now() < deadline, "not destroyed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = run(&["destroy", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let out = run(&["destroy", "beef"]);
    assert!(!out.status.success());
    let stop = run(&["api", "POST", "/v1/shutdown"]);
    assert!(stop.status.success(), "{stop:?}");
    assert!(node.0.wait().unwrap().success());
}
