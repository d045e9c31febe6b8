//! The sans-IO Dispersy protocol core.
//!
//! Everything here is pure computation over values: no sockets, no files, no clock, no global
//! random generator, no threads. The driver (`host/node`, or the simulation in tests) feeds inputs
//! with the time they happened — `Node::handle_datagram(now, from, bytes)`, `handle_timeout(now)`,
//! `create_message(now, …)`, `handle_created_check(now, …)` — and drains outputs: datagrams to send (`poll_transmit`), events for
//! communities and storage (`poll_event`), and when to be woken next (`poll_timeout`). This is the
//! quinn-proto model, and it makes every protocol rule testable in a deterministic simulation.
//!
//! Modules are named after protocol nouns. All but [`node`] are pure: they hold rules and
//! bounded state, and none imports the node. [`node`] owns the [`node::Node`] and, one child file
//! per concern, how it reacts with those rules:
//! - [`identity`]: keys, member and community ids, signatures;
//! - [`verifier`]: signature checks in batches, with precomputed combs for frequent signers;
//! - [`wire`]: datagrams to validated domain types and back (the only user of `dispersy-proto`);
//! - [`meta`]: meta-message policies, and the ids reserved for built-in messages;
//! - [`authority`]: the built-in permission messages (authorize, revoke, undo, dynamic settings,
//!   destroy) as domain types, and the timeline records they make;
//! - [`address`]: LAN/WAN estimation, WAN address voting, connection type;
//! - [`session`]: sessions against IP spoofing;
//! - [`signature`]: double-member co-signing: bounds, errors, requests in flight;
//! - [`member`]: known public keys and the datagrams waiting for a missing identity;
//! - [`candidate`]: peers of a community and their categories;
//! - [`bloom`]: bloom filters for synchronisation;
//! - [`message`]: verified messages for plugins and storage, and what the store kept;
//! - [`missing`]: messages waiting for others, the missing-* lookups, the sequence-number rule;
//! - [`relay`]: relay distribution (hop-limited forwarding of messages that are not stored);
//! - [`sync`]: sync ranges, filter reuse, the responder's choice, adaptive budgets, follow-ups;
//! - [`walker`]: the walk's rules: whom to introduce, reported addresses completed;
//! - [`timeline`]: the permission timeline: who may do what from which global time (order-independent rules);
//! - [`undo`]: which stored messages are undone, and by which undo (order-independent rules);
//! - [`community`]: one community's state (definition, global time, candidates);
//! - [`node`]: the state machine that ties them together (walk, messages, sync, waits, co-signing);
//! - [`stats`]: counters kept per node and per community;
//! - [`store`]: the storage contract every driver's store follows, and the reference store;
//! - [`time`], [`rng`]: the clock and randomness the driver hands in.

pub mod address;
pub mod authority;
pub mod bloom;
pub mod candidate;
pub mod community;
pub mod destroy;
pub mod identity;
pub mod member;
pub mod message;
pub mod meta;
pub mod missing;
pub mod node;
pub mod relay;
pub mod rng;
pub mod session;
pub mod signature;
pub mod stats;
pub mod store;
pub mod sync;
pub mod time;
pub mod timeline;
pub mod undo;
pub mod verifier;
pub mod walker;
pub mod wire;

#[cfg(test)]
mod sim;
