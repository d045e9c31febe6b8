//! Community messages as they pass between the node and its driver: [`Incoming`], a verified
//! message on its way to the plugin and the store, and [`Stored`], what the store reports it
//! kept. The node emits the first and takes the second back (it re-exports both); the pure rules
//! of [`crate::missing`] reason about them too, which is why they live here and not in the node.

use std::net::SocketAddr;

use crate::bloom::PacketHash;
use crate::identity::MemberId;
use crate::wire::SignedMessage;

/// A verified community message, for the community's plugin (and storage when persistent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The message and its packet bytes.
    pub message: SignedMessage,
    /// The address it came from; `None` for a message this node created.
    pub source: Option<SocketAddr>,
    /// Whether its distribution stores it.
    pub persistent: bool,
}

/// A message the driver stored: new, or replacing a lower version of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its packet hash.
    pub hash: PacketHash,
    /// Where it came from; `None` for our own.
    pub source: Option<SocketAddr>,
    /// Its (first) author.
    pub member: MemberId,
    /// Its meta.
    pub meta: u32,
    /// Its global time.
    pub global_time: u64,
    /// Its sequence number, if numbered.
    pub sequence: Option<u32>,
}

impl Stored {
    /// What the store keeps of `message`, which has `hash`.
    pub fn of(
        message: &SignedMessage,
        hash: PacketHash,
        source: Option<SocketAddr>,
    ) -> Option<Stored> {
        let m = &message.message;
        Some(Stored {
            hash,
            source,
            member: m.authors.first()?.member_id(),
            meta: m.message_type,
            global_time: m.global_time,
            sequence: m.sequence_number,
        })
    }
}
