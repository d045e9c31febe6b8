//! The Dispersy host: everything that touches the world around the sans-IO core.
//!
//! - [`runtime`]: start-up and shutdown (`start`/`run`/[`Running`]), shared by the binary and the
//!   tests; it wires the tasks below together;
//! - `net` (private): the UDP socket, the receive task and the verifier threads;
//! - `protocol` (private): the protocol task, sole owner of the core `Node`;
//! - [`command`]: the requests everybody else sends to the protocol task;
//! - [`plugin`]: loading community plugins, the thread that drives each community, and the host
//!   handle plugins call;
//! - [`registry`]: the joined communities and their plugins, loaded at start and at run time;
//! - [`store`]: SQLite through sqlx, the batching store task and the sync-read task;
//! - [`api`]: the control API and the JSON views it shows, [`client`]: a small client for it;
//! - [`config`]: layered configuration, [`keys`]: key and token files, [`lock`]: one process
//!   per data folder, [`logging`];
//! - [`mutex`]: locking that survives a panicked holder;
//! - [`demo`]: `dispersy demo`, a tracker and three nodes on loopback.

pub mod api;
pub mod client;
pub mod command;
pub mod config;
pub mod demo;
pub mod keys;
pub mod lock;
pub mod logging;
pub mod mutex;
mod net;
pub mod new_plugin;
pub mod plugin;
mod protocol;
pub mod registry;
pub mod runtime;
pub mod store;

pub use config::Config;
pub use runtime::{Running, StartError, run, start};
