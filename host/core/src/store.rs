//! The storage contract: what a store keeps of a persistent message and what it answers.
//!
//! The core performs no I/O, so it never stores anything itself: its driver does, when the node
//! asks (`Event::Messages`, `SyncQuery`, `SyncRows`, `ReadPackets`, `SendPackets`, `Prune`).
//! Every store follows the rules written here, whatever holds the bytes:
//!
//! - A message is keyed by (community, first author, global time). Two versions of one key: the
//!   binary-higher packet wins, the other is a [`Outcome::Duplicate`].
//! - Numbered messages (full-sync with sequence numbers) are placed against their author's
//!   numbers of the same meta with [`crate::missing::check`]: gaps, stale numbers, conflicts
//!   won (everything from the loser's number on is removed) and lost.
//! - Last-sync metas keep the newest `history` messages per author, or per pair of signers for
//!   double-member messages ([`pair`]); a message older than all of them is not kept
//!   ([`Outcome::Duplicate`]).
//! - Sync reads see only syncable rows (priority above 32) in (global time, row id) order; the
//!   rows of a range are read meta by meta in each meta's order.
//! - Row ids grow with insertion; a new version of a message keeps its row id.
//!
//! [`Entry`] is what a store is given, [`Outcome`] what it answers for each entry. The SQLite
//! store of `host/node` and [`memory::Store`], the reference the simulation runs on, implement
//! these rules; one suite of cases (`host/node/tests/store_contract.rs`) holds them together.

use crate::bloom::PacketHash;
use crate::identity::MemberId;
use crate::meta::{Distribution, MetaMessage};
use crate::wire::SignedMessage;

#[cfg(any(test, feature = "memory-store"))]
pub mod memory;

/// What a store keeps of one persistent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// First author's member id.
    pub member: MemberId,
    /// Second author's member id, for double-member messages.
    pub co_signer: Option<MemberId>,
    /// Global time.
    pub global_time: u64,
    /// Meta-message type.
    pub meta: u32,
    /// Sequence number, if its meta numbers messages.
    pub sequence: Option<u32>,
    /// Priority of its meta (only above 32 is synchronised).
    pub priority: u8,
    /// For last-sync metas: how many messages per author (per pair of signers for
    /// double-member messages) are kept.
    pub history: Option<u16>,
    /// Hash of the packet (computed once, by whoever built this value).
    pub hash: PacketHash,
    /// The signed packet, verbatim.
    pub packet: Vec<u8>,
}

impl Entry {
    /// What a store keeps of `message`, a message of `meta`; `None` when the message has no
    /// author (only direct, unstored messages may have none).
    pub fn of(message: &SignedMessage, meta: &MetaMessage) -> Option<Entry> {
        let m = &message.message;
        Some(Entry {
            member: m.authors.first()?.member_id(),
            co_signer: m.authors.get(1).map(|a| a.member_id()),
            global_time: m.global_time,
            meta: m.message_type,
            sequence: m.sequence_number,
            priority: meta.priority,
            history: match meta.distribution {
                Distribution::LastSync { history, .. } => Some(history),
                _ => None,
            },
            hash: PacketHash::of(&message.packet),
            packet: message.packet.clone(),
        })
    }
}

/// What became of one [`Entry`] given to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (new, or replacing a lower version of itself or a losing claim on its sequence
    /// number).
    Stored,
    /// Not stored: the same message (or a winning version of it, or newer last-sync messages)
    /// is stored.
    Duplicate,
    /// Not stored: sequence numbers `low..=high` of its member and meta are missing before it.
    Gap {
        /// First missing number.
        low: u32,
        /// Last missing number.
        high: u32,
    },
    /// Not stored: its sequence number is held by this stored packet, which wins.
    Conflict(Vec<u8>),
    /// Not stored: numbered next, but not newer than the member's last message of the meta.
    Stale,
}

/// The two signers of a double-member message in a fixed order (the lower member id first), so
/// that a pair is one key whoever signed first.
pub fn pair(a: MemberId, b: MemberId) -> (MemberId, MemberId) {
    if a.0 <= b.0 { (a, b) } else { (b, a) }
}
