//! The candidate walker (seed: "Peer Selection", "Peer Discovery"; original-implementation §4).
//!
//! One step, A walking to B who introduces C:
//! 1. A → B introduction-request (walk identifier W, A's LAN and WAN, a random value R);
//! 2. B, without a session with A's address: B → A session-request (random_B), A → B
//!    session-response (random_A); both now share `random_A + random_B`;
//! 3. B → C puncture-request (A's addresses, W, R), only over an established session with C;
//! 4. B → A introduction-response (how B sees A, B's addresses, C's LAN and WAN, W);
//! 5. C → A puncture (C's addresses, W, R): C's NAT now lets A's packets in.
//!
//! A checks W end to end: a response or a puncture for a walk it did not start is dropped.
//! Unanswered requests time out after `request_timeout`. A node walks fast (every
//! `fast_step_interval`) after joining until it knows `fast_walker_target` verified candidates.
//!
//! This module holds the walk's pure rules: which candidate to introduce, and how a reported
//! address is completed. The node's steps and its handling of the walk's packets are in
//! `node/walk.rs`.

use std::net::SocketAddr;

use crate::address;
use crate::candidate::{Candidate, Category};
use crate::community::Community;
use crate::identity::MemberId;
use crate::rng::Rng;
use crate::time::Instant;
use crate::wire::ConnectionType;

/// A candidate chosen for an introduction: where we reach it, its LAN and WAN.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Introduced {
    /// Where we reach it.
    pub address: SocketAddr,
    /// Its LAN address.
    pub lan: SocketAddr,
    /// Its WAN address.
    pub wan: SocketAddr,
}

/// Semi round robin over walk and stumble candidates (seed: `dispersy_get_introduce_candidate`):
/// pick the walk or the stumble list with probability ½ each (the other when it yields nothing),
/// continue after the candidate introduced last time from that list. Never the requester
/// itself, never a candidate whose LAN and WAN we do not both know, never a candidate we share no
/// session with (we could not send it the puncture-request), and never two peers that are both
/// behind symmetric NATs on different WAN IPs (neither can reach the other).
pub(crate) fn choose_introduce(
    c: &mut Community,
    now: Instant,
    rng: &mut Rng,
    (requester, requester_member, requester_wan, requester_type): (
        SocketAddr,
        MemberId,
        SocketAddr,
        ConnectionType,
    ),
    has_session: impl Fn(&SocketAddr) -> bool,
) -> Option<Introduced> {
    let config = c.candidates.config().clone();
    let mut refused_symmetric = false;
    let mut lists: [Vec<&Candidate>; 2] = [Vec::new(), Vec::new()];
    for candidate in c.candidates.iter() {
        let slot = match candidate.category(now, &config) {
            Category::Walk => 0,
            Category::Stumble => 1,
            _ => continue,
        };
        if candidate.address == requester
            || candidate.member == Some(requester_member)
            || !address::is_usable(candidate.lan)
            || !address::is_usable(candidate.wan)
            || !has_session(&candidate.address)
        {
            continue;
        }
        let both_symmetric = requester_type == ConnectionType::SymmetricNat
            && candidate.connection_type == ConnectionType::SymmetricNat
            && candidate.wan.ip() != requester_wan.ip();
        if both_symmetric {
            refused_symmetric = true;
            continue;
        }
        lists[slot].push(candidate);
    }
    for list in &mut lists {
        list.sort_by_key(|candidate| candidate.address);
    }
    let first = if rng.unit() < 0.5 { 0 } else { 1 };
    for slot in [first, 1 - first] {
        let list = &lists[slot];
        if list.is_empty() {
            continue;
        }
        let start = match c.introduce_cursors[slot] {
            Some(last) => list.partition_point(|candidate| candidate.address <= last),
            None => 0,
        };
        let chosen = list[start % list.len()];
        let introduced = Introduced {
            address: chosen.address,
            lan: chosen.lan,
            wan: chosen.wan,
        };
        c.introduce_cursors[slot] = Some(chosen.address);
        return Some(introduced);
    }
    if refused_symmetric {
        c.stats.introductions_refused += 1;
    }
    None
}

/// A reported address whose IP is unspecified (a node bound to 0.0.0.0 that does not know its
/// own IP) is completed with the IP the packet came from.
pub(crate) fn resolve(reported: SocketAddr, seen_from: SocketAddr) -> SocketAddr {
    if reported.ip().is_unspecified() {
        let port = if reported.port() == 0 {
            seen_from.port()
        } else {
            reported.port()
        };
        SocketAddr::new(seen_from.ip(), port)
    } else {
        reported
    }
}
