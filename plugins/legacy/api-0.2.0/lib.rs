//! FROZEN FIXTURE: the part of dispersy-plugin-api 0.2.0 that a plugin's binary interface is
//! made of, for the test-only plugin `plugins/legacy`: its raw ABI module (`abi_0_2_0.rs`, a
//! verbatim copy of 0.2.0's `abi.rs`) under 0.2.0's module path `dispersy_plugin_api::abi`, and
//! the abi_stable re-export 0.2.0's lib root had. Left out: 0.2.0's `sdk`, `codec` and `testing`
//! modules (Rust-side conveniences that put nothing of their own across the boundary; the
//! plugin calls the raw ABI instead). Do not change it.

#![allow(non_local_definitions)] // as 0.2.0's lib root: `#[sabi_trait]` expansions trip this lint

#[rustfmt::skip]
#[path = "abi_0_2_0.rs"]
pub mod abi;

/// Re-exported as 0.2.0 did (its `export_community!` expanded through it).
pub use abi_stable;
