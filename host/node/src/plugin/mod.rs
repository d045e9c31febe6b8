//! Plugins: finding and loading community plugin files ([`mod@load`]) from private copies
//! ([`copy`]), the thread that drives each community instance ([`worker`]) and its job queue
//! ([`queue`]), the notices of hidden messages ([`undone`]), and the host side plugins call
//! ([`host`]).
//!
//! A plugin file defines one community type; the registry loads it ([`load()`]), then starts a
//! [`Worker`] for its community, whose plugin instance gets a [`host`] handle to the node.

pub mod copy;
pub mod history;
pub mod host;
pub mod load;
pub mod queue;
pub mod undone;
pub mod worker;

pub use host::{Delivered, Health, PluginStats, Shared, candidate_infos};
pub use load::{
    LoadError, Plugin, definition_from_raw, discover, host_api_version, load, load_from,
};
pub use worker::{
    Change, Created, Job, LifecycleError, QueueError, Worker, WorkerContext, WorkerLimits,
};
