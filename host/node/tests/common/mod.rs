//! Helpers shared by the binary's integration tests.

/// A private folder holding a copy of the example plugin that `cargo test --workspace` built
/// for the tests crate (the build folder itself also holds proc-macro libraries, which must never
/// be loaded). Readable by all, for nodes started in other network namespaces.
pub fn plugin_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().expect("test executable");
    let built = exe
        .parent()
        .expect("deps folder")
        .join("libexample_community.so");
    assert!(
        built.is_file(),
        "libexample_community.so not built: run `cargo test --workspace` from the workspace root"
    );
    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::copy(&built, dir.path().join("libexample_community.so")).expect("copy the plugin");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("permissions");
    dir
}
