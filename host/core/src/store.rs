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
//! - A new row gets the highest row id + 1, as SQLite assigns them (so an id freed at the top
//!   by a deletion may be given again); a new version of a message keeps its row id.
//!
//! [`Entry`] is what a store is given, [`Outcome`] what it answers for each entry. The SQLite
//! store of `host/node` and `memory::Store` (feature `memory-store`), the reference the simulation runs on, implement
//! these rules; one suite of cases (`host/node/tests/store_contract.rs`) holds them together.
//!
//! What an outcome means for the node is decided here too, once for every driver: the driver
//! files each message's outcome in a [`Report`] ([`Report::file`] says whether the community's
//! plugin handles the message) and hands the report to
//! [`Node::handle_store_report`](crate::node::Node::handle_store_report).

use std::net::SocketAddr;

use crate::bloom::PacketHash;
use crate::identity::MemberId;
use crate::message::{Incoming, Stored};
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

/// What a store did with one batch of messages, as the node is told it: filled by the driver
/// with [`Report::file`], one message at a time, in the order the messages were stored, and
/// handed to [`Node::handle_store_report`](crate::node::Node::handle_store_report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Messages stored (new, or replacing a lower version): sync state learns them and the
    /// messages waiting for them resume.
    pub stored: Vec<Stored>,
    /// Messages behind a sequence gap, with the missing numbers `low..=high`: they wait for
    /// them, and the numbers are requested from their sender.
    pub gaps: Vec<(Incoming, u32, u32)>,
    /// Our winning packet for each lost conflict of a message from the network, and its
    /// sender, to whom it goes back.
    pub conflicts: Vec<(SocketAddr, Vec<u8>)>,
    /// Messages from the network that the store had already (for the driver's counters).
    pub duplicates: u64,
    /// Messages numbered next but not newer than their author's last one (dropped).
    pub stale: u64,
    /// Messages whose sequence number a stored message holds and wins (dropped).
    pub conflicts_lost: u64,
    /// The built-in permission messages among `stored`: their records go into the
    /// community's permission timeline.
    pub authority: Vec<SignedMessage>,
}

impl Report {
    /// Files the store's `outcome` for `incoming` (whose packet hash is `hash`). Returns the
    /// message when the community's plugin handles it: when it was stored, and when it is our
    /// own message even if the store had it already (a message this node creates is always
    /// handled). A message behind a gap is kept in the report, to wait.
    pub fn file(
        &mut self,
        incoming: Incoming,
        hash: PacketHash,
        outcome: Outcome,
    ) -> Option<Incoming> {
        match outcome {
            Outcome::Stored => {
                self.stored
                    .extend(Stored::of(&incoming.message, hash, incoming.source));
                if incoming.message.message.authority.is_some() {
                    self.authority.push(incoming.message.clone());
                }
                Some(incoming)
            }
            Outcome::Duplicate if incoming.source.is_none() => Some(incoming),
            Outcome::Duplicate => {
                self.duplicates += 1;
                None
            }
            Outcome::Stale => {
                self.stale += 1;
                None
            }
            Outcome::Gap { low, high } => {
                self.gaps.push((incoming, low, high));
                None
            }
            Outcome::Conflict(ours) => {
                self.conflicts_lost += 1;
                self.conflicts.extend(incoming.source.map(|to| (to, ours)));
                None
            }
        }
    }

    /// Whether the node has anything to learn from this report (its counts are the driver's).
    pub fn has_news(&self) -> bool {
        !(self.stored.is_empty() && self.gaps.is_empty() && self.conflicts.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CommunityId, KeyPair};
    use crate::wire::{CommunityMessage, Conversion};

    fn incoming(global_time: u64, source: Option<SocketAddr>) -> Incoming {
        let key = KeyPair::from_secret(&[7u8; 32]).expect("key");
        Incoming {
            message: SignedMessage {
                message: CommunityMessage {
                    community: CommunityId([1; 20]),
                    message_type: 1,
                    conversion: Conversion::version(1).expect("conversion"),
                    authors: vec![key.public().clone()],
                    global_time,
                    sequence_number: None,
                    resolution_index: None,
                    relay_hops: None,
                    payload: Vec::new(),
                    authority: None,
                },
                packet: vec![global_time as u8; 80],
            },
            source,
            persistent: true,
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn a_report_hands_on_what_the_plugin_handles_and_keeps_what_the_node_is_told() {
        let mut report = Report::default();
        let hash = PacketHash(1, 2);
        let handled = |m: Option<Incoming>| m.map(|m| m.message.message.global_time);
        assert_eq!(
            handled(report.file(incoming(1, Some(peer())), hash, Outcome::Stored)),
            Some(1)
        );
        // Our own message is handled even when the store had it; another's is not.
        assert_eq!(
            handled(report.file(incoming(2, None), hash, Outcome::Duplicate)),
            Some(2)
        );
        assert_eq!(
            handled(report.file(incoming(3, Some(peer())), hash, Outcome::Duplicate)),
            None
        );
        assert_eq!(
            handled(report.file(incoming(4, Some(peer())), hash, Outcome::Stale)),
            None
        );
        let gap = Outcome::Gap { low: 2, high: 3 };
        assert_eq!(
            handled(report.file(incoming(5, Some(peer())), hash, gap)),
            None
        );
        let lost = || Outcome::Conflict(vec![9]);
        assert_eq!(
            handled(report.file(incoming(6, Some(peer())), hash, lost())),
            None
        );
        assert_eq!(handled(report.file(incoming(7, None), hash, lost())), None);

        let stored: Vec<u64> = report.stored.iter().map(|s| s.global_time).collect();
        assert_eq!(stored, [1]);
        assert_eq!(report.stored[0].hash, hash);
        let gaps: Vec<(u64, u32, u32)> = report
            .gaps
            .iter()
            .map(|(m, low, high)| (m.message.message.global_time, *low, *high))
            .collect();
        assert_eq!(gaps, [(5, 2, 3)]);
        // Only a sender from the network gets our winning packet back.
        assert_eq!(report.conflicts, [(peer(), vec![9])]);
        assert_eq!(
            (report.duplicates, report.stale, report.conflicts_lost),
            (1, 1, 2)
        );
        assert!(report.has_news());
        assert!(!Report::default().has_news());
    }
}
