//! Messages that wait for other messages, and the missing-* requests that fetch them
//! (original-implementation §6.2, §9; seed: "missing-sequence", "missing-message",
//! "missing-last-message").
//!
//! Three things make a received message wait:
//! - a gap before its sequence number (full-sync with sequence numbers): the store saw it, found
//!   `low..=high` missing and handed it back ([`crate::node::Node::handle_store_report`]); the
//!   node asks the sender with a missing-sequence;
//! - its plugin waits for another message of a member at a global time (a reply to a post not
//!   here yet): missing-message;
//! - its plugin waits for the newest message of a member and meta: missing-last-message.
//!
//! The waiting messages are held here, bounded in count and time (the original's 10 s). When the
//! driver reports what it stored ([`crate::node::Node::handle_store_report`]), the messages whose
//! wait is over are handed to the driver again as [`crate::node::Event::Messages`], to be checked
//! and stored as if they had just arrived. A request is sent once per awaited thing, repeated
//! after [`Config::retry`] while the wait lasts; a missing-sequence answered in part (the
//! responder's byte budget) is followed by one for the rest as soon as the part is stored.
//!
//! The pure rule deciding where an incoming sequence number stands is [`check`]; the driver's
//! store applies it inside its write transaction, so a verdict never races a concurrent write.
//! The node's side (delaying, requesting, resuming, answering) is in `node/missing.rs`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::{CommunityId, MemberId};
use crate::message::{Incoming, Stored};
use crate::time::Instant;

/// Bounds of waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most messages waiting at once; more are dropped and counted.
    pub max_delayed: usize,
    /// How long a message waits at most (the original's 10 s).
    pub timeout: Duration,
    /// How long an unanswered request waits before it is sent again.
    pub retry: Duration,
    /// Bytes of stored packets one answer to a missing-* request carries at most (the
    /// original's 10 KiB for missing-sequence).
    pub answer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_delayed: 4_096,
            timeout: Duration::from_secs(10),
            retry: Duration::from_secs(1),
            answer_bytes: 10 * 1024,
        }
    }
}

/// Where an incoming message with a sequence number stands against what is stored of its member
/// and meta (original §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next number, newer than the last: store it.
    Store,
    /// The very packet is stored already.
    Duplicate,
    /// Numbers `low..=high` are missing before it: it waits, and they are requested.
    Gap {
        /// First missing number.
        low: u32,
        /// Last missing number.
        high: u32,
    },
    /// Another message holds this number and wins (the lower global time; at the same global
    /// time the binary-higher packet, as for two versions of one message): drop the incoming
    /// one and send ours back, so the sender learns it.
    Keep,
    /// Another message holds this number and loses: delete it and every later number of this
    /// member and meta, then store the incoming one.
    Replace,
    /// The next number, but not newer than the last stored message: dropped.
    Stale,
}

/// What the store holds at one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered<'a> {
    /// Its sequence number.
    pub sequence: u32,
    /// Its global time.
    pub global_time: u64,
    /// Its packet.
    pub packet: &'a [u8],
}

/// Decides an incoming message numbered `sequence` at `global_time` with `packet`, given the
/// highest numbered message stored for its member and meta (`last`) and, when `sequence` is not
/// above it, the one stored at `sequence` (`same`; `None` there means it was removed, e.g.
/// pruned: the incoming one is then treated as a duplicate).
pub fn check(
    sequence: u32,
    global_time: u64,
    packet: &[u8],
    last: Option<Numbered<'_>>,
    same: Option<Numbered<'_>>,
) -> Verdict {
    let (highest, newest) = last.map_or((0, 0), |l| (l.sequence, l.global_time));
    if sequence <= highest {
        return match same {
            Some(ours) if ours.packet == packet => Verdict::Duplicate,
            Some(ours)
                if ours.global_time < global_time
                    || (ours.global_time == global_time && ours.packet > packet) =>
            {
                Verdict::Keep
            }
            Some(_) => Verdict::Replace,
            None => Verdict::Duplicate,
        };
    }
    if sequence > highest + 1 {
        return Verdict::Gap {
            low: highest + 1,
            high: sequence - 1,
        };
    }
    if last.is_some() && global_time <= newest {
        return Verdict::Stale;
    }
    Verdict::Store
}

/// What a waiting message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Awaited {
    /// Sequence numbers of `member` and `meta` up to and including `through`.
    Sequence {
        /// The author.
        member: MemberId,
        /// The meta.
        meta: u32,
        /// The last number that must be stored.
        through: u32,
    },
    /// The message of `member` at `global_time`.
    Message {
        /// The author.
        member: MemberId,
        /// Its global time.
        global_time: u64,
    },
    /// Any (newer) message of `member` and `meta`.
    Last {
        /// The author.
        member: MemberId,
        /// The meta.
        meta: u32,
    },
    /// The proof that the waiting message, by `member` at `global_time`, was allowed: the
    /// permission timeline must allow it. No stored message ends this wait by itself; the node
    /// judges the message again whenever a permission record is stored
    /// (the node's `node/authority.rs`).
    Proof {
        /// The waiting message's (first) author.
        member: MemberId,
        /// The waiting message's global time.
        global_time: u64,
    },
}

impl Awaited {
    /// Whether storing `key` ends this wait.
    fn satisfied_by(&self, key: &Stored) -> bool {
        match *self {
            Awaited::Sequence {
                member,
                meta,
                through,
            } => key.member == member && key.meta == meta && key.sequence >= Some(through),
            Awaited::Message {
                member,
                global_time,
            } => key.member == member && key.global_time == global_time,
            Awaited::Last { member, meta } => key.member == member && key.meta == meta,
            Awaited::Proof { .. } => false,
        }
    }
}

/// One waiting message.
#[derive(Debug, Clone)]
pub(crate) struct Delayed {
    pub community: CommunityId,
    pub awaited: Awaited,
    pub incoming: Incoming,
    /// Who is asked.
    pub source: SocketAddr,
    pub expires: Instant,
    /// When it was last requested.
    pub requested: Instant,
    /// For sequence waits: the highest number stored since (or known when it started waiting).
    pub seen: u32,
    /// For sequence waits: the highest number requested so far.
    pub asked: u32,
}

/// The waiting messages of a node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Delays {
    pub entries: VecDeque<Delayed>,
}

/// What to do after a change to the waits.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Messages whose wait is over, to hand to the driver again.
    pub resumed: Vec<(CommunityId, Incoming)>,
    /// Requests to send: (community, to, what).
    pub requests: Vec<(CommunityId, SocketAddr, Request)>,
    /// Messages dropped because their wait lasted too long (proof waits included).
    pub expired: u64,
    /// Of those, messages that waited for the proof of their permission.
    pub expired_proofs: u64,
}

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Sequence {
        member: MemberId,
        meta: u32,
        low: u32,
        high: u32,
    },
    Message {
        member: MemberId,
        global_time: u64,
    },
    Last {
        member: MemberId,
        meta: u32,
    },
    Proof {
        member: MemberId,
        global_time: u64,
    },
}

impl Delays {
    /// Adds a waiting message; returns whether it was taken (the table may be full) and the
    /// request to send for it, unless the same thing is already being asked for.
    pub fn add(
        &mut self,
        config: &Config,
        now: Instant,
        delayed: Delayed,
    ) -> (bool, Option<Request>) {
        if self.entries.len() >= config.max_delayed {
            return (false, None);
        }
        let asked_already = self.entries.iter().any(|d| {
            d.community == delayed.community
                && same_subject(&d.awaited, &delayed.awaited)
                && d.requested + config.retry > now
                && covers(d, &delayed)
        });
        let mut delayed = delayed;
        let request = if asked_already {
            // Another wait's request fetches this one's too.
            if let Awaited::Sequence { through, .. } = delayed.awaited {
                delayed.asked = through;
            }
            None
        } else {
            Some(request_for(&mut delayed))
        };
        self.entries.push_back(delayed);
        (true, request)
    }

    /// Messages of `community` were stored: ends the waits they satisfy, and asks for the rest
    /// of a gap whose requested part has arrived.
    pub fn stored(&mut self, community: CommunityId, keys: &[Stored], now: Instant) -> Outcome {
        let mut out = Outcome::default();
        if self.entries.is_empty() {
            return out;
        }
        let mut keep = VecDeque::with_capacity(self.entries.len());
        for mut d in self.entries.drain(..) {
            if d.community != community {
                keep.push_back(d);
                continue;
            }
            let mut done = false;
            for key in keys {
                if d.awaited.satisfied_by(key) {
                    done = true;
                    break;
                }
                if let Awaited::Sequence { member, meta, .. } = d.awaited
                    && key.member == member
                    && key.meta == meta
                {
                    d.seen = d.seen.max(key.sequence.unwrap_or(0));
                }
            }
            if done {
                out.resumed.push((d.community, d.incoming));
                continue;
            }
            if let Awaited::Sequence { through, .. } = d.awaited
                && d.seen >= d.asked
                && d.asked < through
            {
                d.requested = now;
                out.requests
                    .push((d.community, d.source, request_for(&mut d)));
            }
            keep.push_back(d);
        }
        self.entries = keep;
        dedup(&mut out.requests);
        out
    }

    /// Drops what waited too long; asks again for what was not answered within `retry`.
    pub fn timeout(&mut self, config: &Config, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        let before = self.entries.len();
        let mut expired_proofs = 0;
        self.entries.retain(|d| {
            let keep = d.expires > now;
            if !keep && matches!(d.awaited, Awaited::Proof { .. }) {
                expired_proofs += 1;
            }
            keep
        });
        out.expired = (before - self.entries.len()) as u64;
        out.expired_proofs = expired_proofs;
        for d in self.entries.iter_mut() {
            if d.requested + config.retry <= now {
                d.requested = now;
                out.requests.push((d.community, d.source, request_for(d)));
            }
        }
        dedup(&mut out.requests);
        out
    }

    /// Ends the proof waits of `community` whose message `proven` now allows (the permission
    /// timeline changed); returns those messages, in the order they started waiting.
    pub fn take_proven(
        &mut self,
        community: CommunityId,
        mut proven: impl FnMut(&Incoming) -> bool,
    ) -> Vec<Incoming> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.entries.len());
        for d in self.entries.drain(..) {
            if d.community == community
                && matches!(d.awaited, Awaited::Proof { .. })
                && proven(&d.incoming)
            {
                out.push(d.incoming);
            } else {
                keep.push_back(d);
            }
        }
        self.entries = keep;
        out
    }

    /// The next time [`Delays::timeout`] has work.
    pub fn next_deadline(&self, config: &Config) -> Option<Instant> {
        self.entries
            .iter()
            .map(|d| d.expires.min(d.requested + config.retry))
            .min()
    }
}

/// The request that fetches what `d` waits for (for a gap: what is still missing of it).
fn request_for(d: &mut Delayed) -> Request {
    match d.awaited {
        Awaited::Sequence {
            member,
            meta,
            through,
        } => {
            d.asked = through;
            Request::Sequence {
                member,
                meta,
                low: d.seen.saturating_add(1).min(through),
                high: through,
            }
        }
        Awaited::Message {
            member,
            global_time,
        } => Request::Message {
            member,
            global_time,
        },
        Awaited::Last { member, meta } => Request::Last { member, meta },
        Awaited::Proof {
            member,
            global_time,
        } => Request::Proof {
            member,
            global_time,
        },
    }
}

fn same_subject(a: &Awaited, b: &Awaited) -> bool {
    match (a, b) {
        (
            Awaited::Sequence {
                member: m1,
                meta: t1,
                ..
            },
            Awaited::Sequence {
                member: m2,
                meta: t2,
                ..
            },
        ) => m1 == m2 && t1 == t2,
        _ => a == b,
    }
}

/// Whether the request already made for `asked` also fetches what `new` waits for.
fn covers(asked: &Delayed, new: &Delayed) -> bool {
    match (asked.awaited, new.awaited) {
        (Awaited::Sequence { .. }, Awaited::Sequence { through, .. }) => asked.asked >= through,
        _ => true,
    }
}

/// One request per (community, address, subject): sequence ranges of one member and meta merge.
fn dedup(requests: &mut Vec<(CommunityId, SocketAddr, Request)>) {
    let mut out: Vec<(CommunityId, SocketAddr, Request)> = Vec::with_capacity(requests.len());
    for (community, to, request) in requests.drain(..) {
        let merged = out.iter_mut().any(|(c, t, r)| {
            if *c != community || *t != to {
                return false;
            }
            match (r, &request) {
                (
                    Request::Sequence {
                        member,
                        meta,
                        low,
                        high,
                    },
                    Request::Sequence {
                        member: m,
                        meta: t,
                        low: l,
                        high: h,
                    },
                ) if member == m && meta == t => {
                    *low = (*low).min(*l);
                    *high = (*high).max(*h);
                    true
                }
                (r, request) => r == request,
            }
        });
        if !merged {
            out.push((community, to, request));
        }
    }
    *requests = out;
}

/// What a missing-* request asks the store for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The messages of `member` and `meta` numbered `low..=high`, in sequence order.
    Sequences {
        /// The author.
        member: MemberId,
        /// The meta.
        meta: u32,
        /// First number.
        low: u32,
        /// Last number.
        high: u32,
    },
    /// The messages of `member` at these global times.
    GlobalTimes {
        /// The author.
        member: MemberId,
        /// The global times.
        global_times: Vec<u64>,
    },
    /// The newest `count` messages of `member` and `meta`.
    Last {
        /// The author.
        member: MemberId,
        /// The meta.
        meta: u32,
        /// How many.
        count: u16,
    },
}

/// A missing-* request being answered: waiting for the store's packets.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub community: CommunityId,
    pub to: SocketAddr,
    pub deadline: Instant,
    /// A missing-proof: the packets read are judged and their proof is sent, not they.
    pub proof: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(sequence: u32, global_time: u64, packet: &[u8]) -> Numbered<'_> {
        Numbered {
            sequence,
            global_time,
            packet,
        }
    }

    #[test]
    fn the_next_number_is_stored_and_gaps_are_named() {
        assert_eq!(check(1, 5, b"a", None, None), Verdict::Store);
        let last = Some(numbered(3, 10, b"c"));
        assert_eq!(check(4, 11, b"d", last, None), Verdict::Store);
        assert_eq!(
            check(7, 20, b"g", last, None),
            Verdict::Gap { low: 4, high: 6 }
        );
        assert_eq!(
            check(2, 20, b"g", None, None),
            Verdict::Gap { low: 1, high: 1 }
        );
        // A later number must be newer than the last one.
        assert_eq!(check(4, 10, b"d", last, None), Verdict::Stale);
        assert_eq!(check(4, 9, b"d", last, None), Verdict::Stale);
    }

    #[test]
    fn a_number_claimed_twice_goes_to_the_lower_global_time_then_the_higher_packet() {
        let last = Some(numbered(3, 10, b"c"));
        let ours = Some(numbered(2, 8, b"m"));
        assert_eq!(check(2, 8, b"m", last, ours), Verdict::Duplicate);
        // Theirs is newer: ours stays, and is sent back.
        assert_eq!(check(2, 9, b"a", last, ours), Verdict::Keep);
        // Same global time: two versions of one message, the binary-higher packet wins (the
        // store's rule for any message).
        assert_eq!(check(2, 8, b"a", last, ours), Verdict::Keep);
        assert_eq!(check(2, 8, b"z", last, ours), Verdict::Replace);
        // Theirs is older: it replaces ours and everything after.
        assert_eq!(check(2, 7, b"z", last, ours), Verdict::Replace);
        // Removed (pruned) meanwhile: nothing to compare, not stored again.
        assert_eq!(check(2, 7, b"z", last, None), Verdict::Duplicate);
    }
}
