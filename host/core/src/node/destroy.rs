//! The node's side of destroy-community (the rules are in [`crate::destroy`]): a stored destroy
//! is forwarded, then puts its community in the destroyed state and tells the driver what to
//! delete ([`Event::Destroyed`]); the state is restored at join from the stored destroy; a
//! hard-destroyed community answers introduction-requests with its destroy message.
//!
//! Contract decisions taken here (found by the convergence property test,
//! `sim/convergence_tests.rs`):
//! - The undo state follows the store like the timeline: a destroy drops the undos the store
//!   deletes (hard: all; soft: those above the freeze), and a target at or below the freeze
//!   that only a dropped undo undid is shown again ([`Event::Undone`] with no undo), as on a
//!   node that received the destroy first and never took the undo.
//! - A message stored after the destroy's deletion that the destroyed state does not admit
//!   (it passed the freeze check before the destroy applied) is not learnt, and the deletion
//!   is announced again ([`Node::admitted`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::{CreateError, Event, Node};
use crate::authority::{Body, Degree};
use crate::destroy::Destroyed;
use crate::identity::{CommunityId, MemberId};
use crate::message::Stored;
use crate::meta::builtin;
use crate::time::Instant;
use crate::timeline::{Record, RecordId, Subject};
use crate::wire::{self, SignedMessage};

/// The candidates a received destroy is forwarded to (the original's node count for it).
const FORWARD_TO: usize = 50;

impl Node {
    /// Emits [`Event::Destroyed`] again for joined `community` if it is destroyed (hard or
    /// soft), so that the driver, once the community's thread runs, retires (hard) or restores
    /// (soft) its plugin instance and finishes a deletion a restart interrupted. Returns
    /// whether it is destroyed.
    pub fn announce_destroyed(&mut self, community: CommunityId) -> bool {
        let Some(destroyed) = self
            .communities
            .get(&community)
            .and_then(|c| c.destroyed.clone())
        else {
            return false;
        };
        let keep = self.kept(community, &destroyed);
        self.push_event(Event::Destroyed {
            community,
            degree: destroyed.degree,
            global_time: destroyed.global_time,
            keep,
        });
        true
    }

    /// What of a store `report` of destroyed `community` its state admits. A message checked
    /// against the freeze before the destroy was applied can still reach the store after the
    /// destroy's deletion (one that waited for a missing sequence number and is resumed when
    /// it comes, or a batch the store runs after the destroy's): the messages the destroyed
    /// state does not admit (all but destroys when hard; those above the freeze when soft) are
    /// left out of the report, not learnt, and the deletion is announced again
    /// ([`Event::Destroyed`], idempotent), which deletes them. Destroy messages stay:
    /// [`Node::learn_destroys`] settles which wins. Found by the convergence property test.
    pub(super) fn admitted(
        &mut self,
        community: CommunityId,
        mut report: crate::store::Report,
    ) -> crate::store::Report {
        let Some(destroyed) = self
            .communities
            .get(&community)
            .and_then(|c| c.destroyed.clone())
        else {
            return report;
        };
        let before = (report.stored.len(), report.authority.len());
        report.stored.retain(|s| {
            s.meta == builtin::DESTROY_COMMUNITY || destroyed.admits(s.global_time, None)
        });
        report.authority.retain(|m| {
            matches!(m.message.authority, Some(Body::Destroy(_)))
                || destroyed.admits(m.message.global_time, None)
        });
        if (report.stored.len(), report.authority.len()) != before {
            self.announce_destroyed(community);
        }
        report
    }

    /// Destroy messages of `community` were stored (among the built-in `messages`; `stored`
    /// tells where each came from): each that wins over the community's state is forwarded
    /// (when it came from a peer) and applied ([`crate::destroy`], rules 1 to 4).
    pub(super) fn learn_destroys(
        &mut self,
        now: Instant,
        community: CommunityId,
        messages: &[SignedMessage],
        stored: &[Stored],
    ) {
        for signed in messages {
            let Some(destroyed) = Destroyed::of(signed) else {
                continue;
            };
            let source = stored
                .iter()
                .find(|s| {
                    s.meta == builtin::DESTROY_COMMUNITY
                        && s.member == destroyed.author
                        && s.global_time == destroyed.global_time
                })
                .and_then(|s| s.source);
            if let Some(from) = source {
                self.forward_destroy(now, community, from, &signed.packet);
            }
            self.apply_destroy(now, community, destroyed, true);
        }
    }

    /// Sets the destroyed state of `community` from the stored `packets` (its permission
    /// packets, read at join): the winning valid destroy among them, applied without an event
    /// (the driver asks with [`Node::announce_destroyed`] once the community runs).
    pub(super) fn restore_destroyed(
        &mut self,
        now: Instant,
        community: CommunityId,
        packets: &[Vec<u8>],
    ) {
        let Some(c) = self.communities.get(&community) else {
            return;
        };
        let winner = packets
            .iter()
            .filter_map(|packet| SignedMessage::decode(packet).ok())
            .filter(|signed| signed.message.community == community)
            .filter_map(|signed| Destroyed::of(&signed))
            .filter(|d| {
                c.timeline
                    .may(d.author, Subject::DestroyCommunity, d.global_time)
                    .is_allowed()
            })
            .reduce(|best, next| if next.supersedes(&best) { next } else { best });
        if let Some(winner) = winner {
            self.apply_destroy(now, community, winner, false);
        }
    }

    /// Puts `community` in the state `destroyed` if it wins over the present one (rule 3):
    /// a hard destroy drops the community's waiting messages, walks and messages being
    /// created; a soft one drops those above its global time and sets the clock back to it.
    /// Either way the timeline and the undo state keep only the records the store keeps (hard:
    /// the destroy's proof chain, no undo; soft: those at or below the freeze, and a target
    /// undone only by an undo above the freeze is redone, [`Event::Undone`]), so that they are
    /// what a restart rebuilds and what a node that received the destroy first holds.
    /// With `announce`, the driver is told ([`Event::Destroyed`]).
    fn apply_destroy(
        &mut self,
        now: Instant,
        community: CommunityId,
        destroyed: Destroyed,
        announce: bool,
    ) {
        let loses = |c: &crate::community::Community| {
            c.destroyed
                .as_ref()
                .is_some_and(|d| !destroyed.supersedes(d))
        };
        if self.communities.get(&community).is_none_or(loses) {
            return;
        }
        let keep = self.kept(community, &destroyed);
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        let freeze = destroyed.global_time;
        let degree = destroyed.degree;
        c.destroyed = Some(destroyed);
        let kept: Vec<Record> = c
            .timeline
            .records()
            .filter(|r| match degree {
                Degree::Hard => keep.contains(&(r.author, r.global_time)),
                Degree::Soft => r.global_time <= freeze,
            })
            .cloned()
            .collect();
        c.timeline = crate::community::timeline_of(community, c.definition.as_ref());
        for record in kept {
            // Records the timeline held before: they fit again.
            let _ = c.timeline.insert(record);
        }
        // The undo state keeps the undos the store keeps too (hard: none; soft: those at or
        // below the freeze), as a node that received the destroy first holds them: a target
        // at or below the freeze undone only by an undo above it is redone.
        let undo_flips = c.undos.retain(|undo| match degree {
            Degree::Hard => false,
            Degree::Soft => undo.global_time <= freeze,
        });
        c.last_activity = now;
        let ended = match degree {
            Degree::Hard => {
                c.pending_walks.clear();
                c.sync.chase = None;
                self.delays.entries.retain(|d| d.community != community);
                self.forget_created(community)
            }
            Degree::Soft => {
                c.global_time = c.global_time.min(freeze);
                self.delays.entries.retain(|d| {
                    d.community != community || d.incoming.message.message.global_time <= freeze
                });
                self.forget_created(community)
            }
        };
        for request in ended {
            self.push_event(Event::Created {
                community,
                request,
                result: Err(CreateError::Destroyed(community)),
            });
        }
        if announce {
            self.announce_destroyed(community);
        }
        if degree == Degree::Soft {
            self.emit_flips(community, undo_flips);
        }
    }

    /// Forwards a destroy received from `from` to up to [`FORWARD_TO`] verified candidates of
    /// `community` but `from` (rule 4).
    fn forward_destroy(
        &mut self,
        now: Instant,
        community: CommunityId,
        from: SocketAddr,
        packet: &[u8],
    ) {
        let Some(c) = self.communities.get(&community) else {
            return;
        };
        let targets = c
            .candidates
            .random_verified(now, &mut self.rng, FORWARD_TO, Some(from));
        for to in targets {
            let session = self.sessions.id(&to).unwrap_or(0);
            let datagram = wire::encode_collection(session, &[packet]);
            self.send_bytes(to, datagram);
        }
    }

    /// A proven requester sent an introduction-request to hard-destroyed `community`: it gets
    /// the destroy message, in a collection naming `session`, and nothing else (rule 1).
    /// Returns whether the community is hard-destroyed (and the request so answered).
    pub(super) fn answer_destroyed(
        &mut self,
        community: CommunityId,
        to: SocketAddr,
        session: u32,
    ) -> bool {
        let Some(packet) = self
            .communities
            .get(&community)
            .filter(|c| c.is_hard_destroyed())
            .and_then(|c| c.destroyed.as_ref())
            .map(|d| d.packet.clone())
        else {
            return false;
        };
        self.send_collections(to, session, &[&packet]);
        if let Some(c) = self.communities.get_mut(&community) {
            c.stats.destroy_answers += 1;
        }
        true
    }

    /// The stored messages a hard destroy keeps, by (first author, global time): the destroy
    /// and its proof chain, up to the master (rule 1); empty for a soft destroy (it deletes by
    /// global time).
    fn kept(&self, community: CommunityId, destroyed: &Destroyed) -> Vec<(MemberId, u64)> {
        if destroyed.degree != Degree::Hard {
            return Vec::new();
        }
        let Some(c) = self.communities.get(&community) else {
            return Vec::new();
        };
        let timeline = &c.timeline;
        let verdict = timeline.may(
            destroyed.author,
            Subject::DestroyCommunity,
            destroyed.global_time,
        );
        let mut seen: BTreeSet<RecordId> = BTreeSet::new();
        let mut queue: Vec<RecordId> = verdict.proof().to_vec();
        while let Some(id) = queue.pop() {
            if seen.insert(id) {
                queue.extend(timeline.proof_chain(&id));
            }
        }
        let mut keep: Vec<(MemberId, u64)> = seen
            .iter()
            .filter_map(|id| timeline.record(id))
            .map(|record| (record.author, record.global_time))
            .collect();
        keep.push((destroyed.author, destroyed.global_time));
        keep.sort_unstable();
        keep.dedup();
        keep
    }
}
