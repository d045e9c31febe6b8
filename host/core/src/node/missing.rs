//! The node's side of messages that wait for others (the rules are in [`crate::missing`]):
//! delaying a message for a sequence gap or a plugin's wait, sending the missing-sequence /
//! -message / -last-message requests and repeating them, resuming what was waiting once its
//! message is stored, expiring waits, and answering others' requests through the driver's store
//! reads ([`Event::ReadPackets`] answered by [`Node::handle_answer_read`]).

use std::net::SocketAddr;

use super::{Event, Incoming, Node, RequestId, Stored};
use crate::authority::MemberRef;
use crate::identity::CommunityId;
use crate::meta::Distribution;
use crate::missing::{Answer, Awaited, Delayed, Lookup, Outcome, Request};
use crate::stats::{DropReason, Traffic};
use crate::time::Instant;
use crate::wire::{MissingLastMessage, MissingMessage, MissingProof, MissingSequence, Packet};

impl Node {
    /// The driver's store found numbers `low..=high` missing before `incoming` (see
    /// [`crate::missing::check`]): it waits for them, and they are requested from its sender unless
    /// they are being requested already.
    pub(super) fn handle_sequence_gap(
        &mut self,
        now: Instant,
        community: CommunityId,
        incoming: Incoming,
        low: u32,
        high: u32,
    ) {
        let Some(member) = incoming
            .message
            .message
            .authors
            .first()
            .map(|a| a.member_id())
        else {
            return;
        };
        let awaited = Awaited::Sequence {
            member,
            meta: incoming.message.message.message_type,
            through: high,
        };
        self.delay(now, community, incoming, awaited, low.saturating_sub(1));
    }

    /// The community's plugin wants `incoming` to wait for `awaited` (a message, or the
    /// newest message of a member and meta): it waits, and the thing is requested from its
    /// sender.
    pub fn handle_wait(
        &mut self,
        now: Instant,
        community: CommunityId,
        incoming: Incoming,
        awaited: Awaited,
    ) {
        self.delay(now, community, incoming, awaited, 0);
    }

    pub(super) fn delay(
        &mut self,
        now: Instant,
        community: CommunityId,
        incoming: Incoming,
        awaited: Awaited,
        seen: u32,
    ) {
        let Some(source) = incoming.source else {
            // Our own messages wait for nothing.
            return;
        };
        let delayed = Delayed {
            community,
            awaited,
            incoming,
            source,
            expires: now + self.config.missing.timeout,
            requested: now,
            seen,
            asked: 0,
        };
        let (taken, request) = self.delays.add(&self.config.missing, now, delayed);
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        if !taken {
            c.stats.dropped.bump(DropReason::DelayQueueFull);
            return;
        }
        c.stats.delayed += 1;
        if let Some(request) = request {
            self.request(community, source, request);
        }
    }

    /// Messages of `community` were stored: messages waiting for them go back to the
    /// driver as [`Event::Messages`]; the rest of a gap is requested.
    pub(super) fn resume_waiting(&mut self, now: Instant, community: CommunityId, keys: &[Stored]) {
        let outcome = self.delays.stored(community, keys, now);
        self.apply(outcome);
    }

    /// Drops waits that lasted too long and repeats unanswered requests, but only to
    /// addresses with an established session: a source that never proved its address got one
    /// request (smaller than the message that caused it) and gets no repeats, so a forged
    /// source address cannot turn one datagram into a stream of requests towards a victim.
    /// The repeats not sent are counted (`Traffic::MissingRetryUnproven`).
    pub(super) fn expire_delays(&mut self, now: Instant) {
        let mut outcome = self.delays.timeout(&self.config.missing, now);
        let asked = outcome.requests.len();
        outcome
            .requests
            .retain(|(_, to, _)| self.sessions.id(to).is_some());
        let unproven = asked - outcome.requests.len();
        if unproven > 0 {
            self.stats
                .packets
                .add(Traffic::MissingRetryUnproven, unproven as u64);
        }
        let others = outcome.expired - outcome.expired_proofs;
        if others > 0 {
            self.stats.dropped.add(DropReason::DelayTimeout, others);
        }
        if outcome.expired_proofs > 0 {
            self.stats
                .dropped
                .add(DropReason::ProofTimeout, outcome.expired_proofs);
        }
        self.apply(outcome);
        self.answers.retain(|_, a| a.deadline > now);
    }

    fn apply(&mut self, outcome: Outcome) {
        for (community, incoming) in outcome.resumed {
            let meta = incoming.message.message.message_type;
            self.push_event(Event::Messages {
                community,
                meta,
                messages: vec![incoming],
            });
        }
        for (community, to, request) in outcome.requests {
            self.request(community, to, request);
        }
    }

    pub(super) fn request(&mut self, community: CommunityId, to: SocketAddr, request: Request) {
        let session = self.sessions.id(&to).unwrap_or(0);
        let (packet, name) = match request {
            Request::Sequence {
                member,
                meta,
                low,
                high,
            } => (
                Packet::MissingSequence(MissingSequence {
                    community,
                    session,
                    member,
                    meta,
                    low,
                    high,
                }),
                Traffic::MissingSequenceSent,
            ),
            Request::Message {
                member,
                global_time,
            } => (
                Packet::MissingMessage(MissingMessage {
                    community,
                    session,
                    member,
                    global_times: vec![global_time],
                }),
                Traffic::MissingMessageSent,
            ),
            Request::Last { member, meta } => (
                Packet::MissingLastMessage(MissingLastMessage {
                    community,
                    session,
                    member,
                    meta,
                }),
                Traffic::MissingLastMessageSent,
            ),
            Request::Proof {
                member,
                global_time,
            } => (
                Packet::MissingProof(MissingProof {
                    community,
                    session,
                    random: 0,
                    member: MemberRef::from_id(member),
                    global_times: vec![global_time],
                }),
                Traffic::MissingProofSent,
            ),
        };
        self.stats.packets.bump(name);
        self.send(to, packet);
    }

    /// The driver's store found that `packet`, ours, wins over a conflicting message that
    /// `to` sent (same member and sequence number): it goes back to `to`.
    pub(super) fn handle_conflict(&mut self, _now: Instant, to: SocketAddr, packet: &[u8]) {
        let session = self.sessions.id(&to).unwrap_or(0);
        self.send_collections(to, session, &[packet]);
    }

    /// Whether `from` proved its address: a session, or a walk of ours to it.
    pub(super) fn proven(&mut self, now: Instant, from: SocketAddr, session: u32) -> bool {
        self.sessions.check(now, from, session)
            || self
                .communities
                .values()
                .any(|c| c.pending_walks.values().any(|w| w.destination == from))
    }

    /// Answers a missing-sequence from a proven address: the store reads the packets.
    pub(super) fn on_missing_sequence(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: MissingSequence,
    ) -> Result<(), DropReason> {
        if !self.proven(now, from, m.session) {
            return Err(DropReason::UnprovenMissingRequest);
        }
        let numbered = self
            .communities
            .get(&m.community)
            .and_then(|c| c.meta(m.meta))
            .is_some_and(|meta| meta.distribution.has_sequence_numbers());
        if !numbered {
            return Err(DropReason::MissingSequenceUnknownMeta);
        }
        let lookup = Lookup::Sequences {
            member: m.member,
            meta: m.meta,
            low: m.low,
            high: m.high,
        };
        self.read_for(now, m.community, from, lookup, false)
    }

    /// Answers a missing-message from a proven address.
    pub(super) fn on_missing_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: MissingMessage,
    ) -> Result<(), DropReason> {
        if !self.proven(now, from, m.session) {
            return Err(DropReason::UnprovenMissingRequest);
        }
        let lookup = Lookup::GlobalTimes {
            member: m.member,
            global_times: m.global_times,
        };
        self.read_for(now, m.community, from, lookup, false)
    }

    /// Answers a missing-last-message from a proven address (last-sync metas: as many as
    /// the meta keeps).
    pub(super) fn on_missing_last_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: MissingLastMessage,
    ) -> Result<(), DropReason> {
        if !self.proven(now, from, m.session) {
            return Err(DropReason::UnprovenMissingRequest);
        }
        let history = self
            .communities
            .get(&m.community)
            .and_then(|c| c.meta(m.meta))
            .and_then(|meta| match meta.distribution {
                Distribution::LastSync { history, .. } => Some(history),
                _ => None,
            })
            .ok_or(DropReason::MissingLastMessageUnknownMeta)?;
        let lookup = Lookup::Last {
            member: m.member,
            meta: m.meta,
            count: history,
        };
        self.read_for(now, m.community, from, lookup, false)
    }

    /// Asks the driver to read what `lookup` names for `to`: sent to it as they are, or, for a
    /// missing-proof (`proof`), judged and answered with their proof ([`Node::answer_proof`]).
    pub(super) fn read_for(
        &mut self,
        now: Instant,
        community: CommunityId,
        to: SocketAddr,
        lookup: Lookup,
        proof: bool,
    ) -> Result<(), DropReason> {
        if self
            .communities
            .get(&community)
            .is_none_or(|c| c.definition.is_none())
        {
            return Err(DropReason::UnknownCommunity);
        }
        if self.answers.len() >= self.config.sync.max_responses {
            return Err(DropReason::MissingBusy);
        }
        let request = self.next_request_id();
        let max_bytes = self.config.missing.answer_bytes;
        self.answers.insert(
            request,
            Answer {
                community,
                to,
                deadline: now + self.config.sync.store_timeout,
                proof,
            },
        );
        self.push_event(Event::ReadPackets {
            request,
            community,
            lookup,
            max_bytes,
        });
        Ok(())
    }

    /// The packets answering [`Event::ReadPackets`]: sent as collections, within the byte
    /// budget of the request.
    pub fn handle_answer_read(&mut self, now: Instant, request: RequestId, packets: Vec<Vec<u8>>) {
        let Some(answer) = self.answers.remove(&request) else {
            return;
        };
        if answer.proof {
            self.answer_proof(now, answer.community, answer.to, &packets);
            return;
        }
        // The driver read within the byte budget (`Event::ReadPackets`).
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let session = self.sessions.id(&answer.to).unwrap_or(0);
        let sent = self.send_collections(answer.to, session, &refs);
        if let Some(c) = self.communities.get_mut(&answer.community) {
            c.stats.missing_packets_sent += sent as u64;
        }
    }
}
