//! Helpers shared by the binary's integration tests (and its benches, which include this file):
//! each test binary uses a part of them.

/// A private folder holding a copy of the example plugin that `cargo test --workspace` built
/// for the tests crate (the build folder itself also holds proc-macro libraries, which must never
/// be loaded). Readable by all, for nodes started in other network namespaces.
#[allow(dead_code)]
pub fn plugin_dir() -> tempfile::TempDir {
    plugin_dir_of("example_community")
}

/// A temporary plugin folder holding a copy of this build's `lib{name}.so` (mode 0755, as a
/// plugin folder must not be writable by others).
#[allow(dead_code)]
pub fn plugin_dir_of(name: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let file = format!("lib{name}.so");
    let exe = std::env::current_exe().expect("test executable");
    let built = exe.parent().expect("deps folder").join(&file);
    assert!(
        built.is_file(),
        "{file} not built: run `cargo test --workspace` from the workspace root"
    );
    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::copy(&built, dir.path().join(&file)).expect("copy the plugin");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("permissions");
    dir
}

/// The command of a `dispersy run` process of this build on loopback (ephemeral UDP and API
/// ports), with data folder `data` and plugin folder `plugins`, warnings logged only, its input
/// and output discarded (a caller may set them again).
#[allow(dead_code)]
pub fn node_command(data: &std::path::Path, plugins: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dispersy"));
    command
        .args([
            "run",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--api",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--plugin-dir")
        .arg(plugins)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// A node process killed and waited for when dropped (a test that fails before it stops its node
/// leaves none behind).
#[allow(dead_code)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
