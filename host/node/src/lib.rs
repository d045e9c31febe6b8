//! The Dispersy host: everything that touches the world around the sans-IO core.
//!
//! - [`runtime`]: the tokio driver (UDP, timers, tasks) and `start`/`run`, shared by the binary and
//!   the tests;
//! - [`plugin`]: loading community plugins and the thread that drives each community;
//! - [`registry`]: the joined communities and their plugins, loaded at start and at run time;
//! - [`store`]: SQLite through sqlx;
//! - [`api`]: the control API, [`client`]: a small client for it;
//! - [`config`]: layered configuration, [`keys`]: key and token files, [`logging`];
//! - [`demo`]: `dispersy demo`, a tracker and three nodes on loopback.

pub mod api;
pub mod client;
pub mod config;
pub mod demo;
pub mod keys;
pub mod logging;
pub mod plugin;
pub mod registry;
pub mod runtime;
pub mod store;

pub use config::Config;
pub use runtime::{Running, StartError, run, start};
