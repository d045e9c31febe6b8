//! Destroy-community: the rules of a destroyed community (the node's reactions are in
//! `node/destroy.rs`).
//!
//! A destroy-community message (`authority::Body::Destroy`) is a built-in meta of every
//! community: member-authenticated, full-sync without sequence numbers, priority 192, sent to
//! 50 candidates, never pruned, and not undoable. Its author needs `permit` on
//! [`Subject::DestroyCommunity`](crate::timeline::Subject::DestroyCommunity) at the message's
//! global time (the founder holds it from founding; the master always does). The rules:
//!
//! 1. **Hard.** The community keeps only the winning destroy message and its proof chain (the
//!    grant records that make its author hold the permit, and theirs, up to the master):
//!    every other stored message of the community is deleted, and the permission timeline keeps
//!    only the records of that chain (what a restart rebuilds). It accepts nothing new (every
//!    community message it receives is dropped as `destroyed`, another destroy included), creates
//!    nothing, walks no more, and answers every introduction-request from a proven address with
//!    the destroy message alone, in a collection (no introduction-response, no introduction,
//!    no sync answer), and co-signs nothing. A receiver that lacks the proof asks for it with
//!    missing-proof, which a destroyed community still answers from what it kept. The plugin
//!    instance is retired (`retire` code `DESTROYED`) and no new one is made.
//! 2. **Soft** (the seed's freeze; the original never built it). The community freezes at the
//!    destroy's global time `T`: it keeps and serves (sync, missing-*) what it holds at or below
//!    `T`; what it held above `T` is deleted (permission records too, from the timeline); it
//!    refuses every received message above `T` (persistent or not, dropped as `frozen`: the
//!    plugin gets no live message above `T`) but for a hard destroy; its clock is set back to
//!    `T` and claims no new global time, so it creates nothing (a hard destroy excepted) and
//!    co-signs nothing. It still walks and synchronises. The plugin
//!    instance stays loaded; when messages above `T` were deleted it is restarted, so that its
//!    state is restored from the frozen history (a community's state is a function of its
//!    stored history).
//! 3. **Two destroys.** A hard one wins over a soft one; of two of one degree the lower global
//!    time wins, then the binary-lower packet ([`Destroyed::supersedes`]). So every node that
//!    holds the same destroys is in the same state: a soft destroy above the freeze is
//!    refused (it would lose), a lower soft destroy refreezes lower, a hard destroy always
//!    passes. Which hard destroy a hard-destroyed node keeps is the first it stored (or the
//!    winner of those stored together); its state is the same either way.
//! 4. **Spreading.** A node that stores a destroy it did not create forwards it at once to up
//!    to 50 verified candidates (not back to its sender), before it deletes anything (the
//!    original re-forwarded before processing): destroys spread epidemically, each node
//!    forwarding each destroy once (a duplicate is not stored, so not forwarded again).
//! 5. **Persistence.** The state is derived from the stored destroy message when the community
//!    is joined (it is stored with the permission records the timeline is rebuilt from), so no
//!    column records it: after a restart the community comes back destroyed, and the node tells
//!    its driver again, which finishes an interrupted deletion (deleting is idempotent).

use crate::authority::{Body, Degree};
use crate::identity::MemberId;
use crate::wire::SignedMessage;

/// A community's destroyed state: the destroy message that decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destroyed {
    /// Hard or soft.
    pub degree: Degree,
    /// The destroy message's global time (for soft, the freeze).
    pub global_time: u64,
    /// Its author.
    pub author: MemberId,
    /// Its signed packet (what a hard-destroyed community answers introduction-requests with).
    pub packet: Vec<u8>,
}

impl Destroyed {
    /// The state `signed` puts a community in, if it is a destroy-community message with an
    /// author.
    pub fn of(signed: &SignedMessage) -> Option<Destroyed> {
        let m = &signed.message;
        let Some(Body::Destroy(degree)) = m.authority else {
            return None;
        };
        Some(Destroyed {
            degree,
            global_time: m.global_time,
            author: m.authors.first()?.member_id(),
            packet: signed.packet.clone(),
        })
    }

    /// Whether this state wins over `other` (rule 3): hard over soft, then the lower global
    /// time, then the binary-lower packet. Never true of a state and itself.
    pub fn supersedes(&self, other: &Destroyed) -> bool {
        let rank = |d: &Destroyed| {
            (
                u8::from(d.degree != Degree::Hard),
                d.global_time,
                d.packet.clone(),
            )
        };
        rank(self) < rank(other)
    }

    /// Whether a community in this state accepts a received message at `global_time` that is a
    /// destroy of degree `destroy` (`None`: any other message): hard accepts nothing; soft
    /// accepts what is at or below its global time, and a hard destroy (rules 1 and 2).
    pub fn admits(&self, global_time: u64, destroy: Option<Degree>) -> bool {
        match self.degree {
            Degree::Hard => false,
            Degree::Soft => destroy == Some(Degree::Hard) || global_time <= self.global_time,
        }
    }

    /// Whether a community in this state may create a message whose built-in body is `body`
    /// (`None`: a plugin message): only a hard destroy of a soft-destroyed one (a new message
    /// claims a global time above the freeze).
    pub fn creates(&self, body: Option<&Body>) -> bool {
        self.degree == Degree::Soft && matches!(body, Some(Body::Destroy(Degree::Hard)))
    }

    /// The name of the degree: `hard` or `soft`.
    pub fn degree_name(&self) -> &'static str {
        degree_name(self.degree)
    }
}

/// The name of `degree`: `hard` or `soft`.
pub fn degree_name(degree: Degree) -> &'static str {
    match degree {
        Degree::Hard => "hard",
        Degree::Soft => "soft",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn state(degree: Degree, global_time: u64, packet: u8) -> Destroyed {
        Destroyed {
            degree,
            global_time,
            author: MemberId([1; 20]),
            packet: vec![packet],
        }
    }

    #[test]
    fn hard_wins_then_the_lower_global_time_then_the_lower_packet() {
        let soft_low = state(Degree::Soft, 5, 9);
        let soft_high = state(Degree::Soft, 8, 1);
        let hard = state(Degree::Hard, 20, 9);
        assert!(hard.supersedes(&soft_low));
        assert!(!soft_low.supersedes(&hard));
        assert!(soft_low.supersedes(&soft_high));
        assert!(!soft_high.supersedes(&soft_low));
        let tie = state(Degree::Soft, 5, 3);
        assert!(tie.supersedes(&soft_low));
        assert!(!soft_low.supersedes(&soft_low));
    }

    #[test]
    fn hard_admits_nothing_soft_admits_up_to_its_time_and_a_hard_destroy() {
        let hard = state(Degree::Hard, 5, 1);
        assert!(!hard.admits(1, None));
        assert!(!hard.admits(1, Some(Degree::Hard)));
        let soft = state(Degree::Soft, 5, 1);
        assert!(soft.admits(5, None));
        assert!(!soft.admits(6, None));
        assert!(!soft.admits(6, Some(Degree::Soft)));
        assert!(soft.admits(4, Some(Degree::Soft)));
        assert!(soft.admits(60, Some(Degree::Hard)));
        assert!(soft.creates(Some(&Body::Destroy(Degree::Hard))));
        assert!(!soft.creates(None));
        assert!(!hard.creates(Some(&Body::Destroy(Degree::Hard))));
    }
}
