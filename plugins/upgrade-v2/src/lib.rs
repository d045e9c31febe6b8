//! Test-only plugin: the example community's own source, built as a crate of version 0.2.0.
//! Its definition takes its version from this crate (`env!("CARGO_PKG_VERSION")`), so it is the
//! same community (master key, name, metas, conversions) as `plugins/example` in a newer
//! version: the file the live-upgrade tests upgrade a node to. Its status shows `version`.

#[path = "../../example/src/lib.rs"]
mod example;

pub use example::*;
