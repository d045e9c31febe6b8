//! The Dispersy wire protocol, version 2: the `.proto` schema (`protos/dispersy.proto`, the
//! project's public wire contract) and the types prost generates from it.
//!
//! Nothing else lives here. These types accept any field combination the schema allows; the
//! host's `wire` module turns them into validated domain types and back, so no other code
//! touches a prost type.

#![allow(missing_docs)] // generated code: the .proto file documents every message

include!(concat!(env!("OUT_DIR"), "/dispersy.rs"));

/// The schema text, for tools that want to ship or print it.
pub const SCHEMA: &str = include_str!("../protos/dispersy.proto");
