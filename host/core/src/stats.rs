//! Counters kept by the node, per node and per community.
//!
//! Keys are `&'static str` names from the code (packet kinds, drop reasons), so every map has a
//! bounded, small number of entries whatever the network sends.

use std::collections::BTreeMap;

/// A bounded family of named counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(BTreeMap<&'static str, u64>);

impl Counters {
    /// Adds one to `name`.
    pub fn bump(&mut self, name: &'static str) {
        *self.0.entry(name).or_default() += 1;
    }

    /// Adds `n` to `name`.
    pub fn add(&mut self, name: &'static str, n: u64) {
        *self.0.entry(name).or_default() += n;
    }

    /// The value of `name` (0 when never counted).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// All non-zero counters, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }
}

/// Node-wide traffic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to the node.
    pub datagrams_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams the node asked to send.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Accepted packets by kind (`introduction-request`, `collection`, …).
    pub packets: Counters,
    /// Dropped packets by reason (`malformed`, `bad-signature`, `unknown-community`, …).
    pub dropped: Counters,
}

/// Counters of one community.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommunityStats {
    /// Introduction-requests sent.
    pub walk_attempts: u64,
    /// Introduction-responses received for our requests.
    pub walk_successes: u64,
    /// Introduction-requests that timed out.
    pub walk_failures: u64,
    /// Introduction-requests received.
    pub stumbles: u64,
    /// Session handshakes completed as responder.
    pub handshakes: u64,
    /// Introduction-responses that introduced nobody.
    pub responses_without_introduction: u64,
    /// Requests answered without an introduction because every candidate was excluded (the
    /// only ones left were behind a symmetric NAT, like the requester).
    pub introductions_refused: u64,
    /// Punctures received for our walks.
    pub punctures: u64,
    /// Introduction-requests sent with a new filter.
    pub sync_new: u64,
    /// Introduction-requests sent with a reused (productive) filter.
    pub sync_reused: u64,
    /// Introduction-requests sent without a filter (skipped, or the store was too slow).
    pub sync_skipped: u64,
    /// Sync-only introduction-requests of follow-up rounds sent (`sync::Chase`).
    pub sync_follow_ups: u64,
    /// Sync-only introduction-requests of a chase's sweep sent (`sync::Chase`).
    pub sync_sweeps: u64,
    /// Stored messages sent to requesters.
    pub sync_packets_sent: u64,
    /// Stored messages sent answering missing-sequence, -message and -last-message requests.
    pub missing_packets_sent: u64,
    /// Relayed messages passed on (one per copy sent).
    pub relayed: u64,
    /// Received messages that waited for others (a sequence gap, a plugin's wait).
    pub delayed: u64,
    /// Messages this node created.
    pub messages_created: u64,
    /// Verified messages passed to the community's plugin.
    pub messages_received: u64,
    /// Community messages dropped, by reason.
    pub dropped: Counters,
}
