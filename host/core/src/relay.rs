//! Relay distribution: a message that is not stored but travels further than its first
//! receivers (the original declared relay and never carried it).
//!
//! The author signs a hop budget into the message (`CommunityMessage.relay_hops`) and sends it to
//! its destination like a direct message, in a collection that says how many hops it may still
//! travel after the receiver (`Collection.relay_hops`, unsigned). Every node that receives it
//! hands it to its plugin once and, while hops remain, passes the same signed packet on to
//! [`Config::fanout`] random verified candidates other than the one it came from, with one hop
//! less. The unsigned count can only be lowered in effect: a receiver never forwards beyond the
//! author's signed budget, and a bounded cache of the packets seen ([`Config::max_seen`]) makes
//! every node handle and forward a packet once, so neither loops nor a relay that resets the
//! count make a message circulate for long.

use std::collections::{HashSet, VecDeque};

use crate::bloom::PacketHash;

/// Relay bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Hops a message this node creates may travel after its first receivers.
    pub hops: u32,
    /// Candidates each relay passes a message on to.
    pub fanout: usize,
    /// Relayed packets remembered, to handle and forward each once.
    pub max_seen: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hops: 3,
            fanout: 5,
            max_seen: 65_536,
        }
    }
}

/// The relayed packets seen lately (first in, first out).
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    hashes: HashSet<PacketHash>,
    order: VecDeque<PacketHash>,
}

impl Seen {
    /// Remembers `hash`; whether it was new.
    pub fn insert(&mut self, hash: PacketHash, max: usize) -> bool {
        if !self.hashes.insert(hash) {
            return false;
        }
        self.order.push_back(hash);
        while self.order.len() > max.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.hashes.remove(&old);
            }
        }
        true
    }
}

/// Hops a received relayed message may still travel from here: what its collection says, never
/// more than the author signed; `None` when it travels no further.
pub fn remaining(collection: Option<u32>, signed: Option<u32>) -> Option<u32> {
    let hops = collection.unwrap_or(0).min(signed.unwrap_or(0));
    hops.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_never_exceed_the_signed_budget() {
        assert_eq!(remaining(Some(3), Some(3)), Some(2));
        assert_eq!(remaining(Some(9), Some(2)), Some(1));
        assert_eq!(remaining(Some(1), Some(3)), Some(0));
        assert_eq!(remaining(Some(0), Some(3)), None);
        assert_eq!(remaining(None, Some(3)), None);
        assert_eq!(remaining(Some(3), None), None);
    }

    #[test]
    fn each_packet_is_seen_once_within_the_bound() {
        let mut seen = Seen::default();
        let h = |n: u64| PacketHash(n, n);
        assert!(seen.insert(h(1), 2));
        assert!(!seen.insert(h(1), 2));
        assert!(seen.insert(h(2), 2));
        assert!(seen.insert(h(3), 2));
        // The oldest was forgotten.
        assert!(seen.insert(h(1), 2));
    }
}
