//! The node's side of the permission timeline (the rules are in [`crate::timeline`] and
//! [`crate::authority`]): received messages the timeline does not allow yet wait for their
//! proof and the sender is asked with missing-proof; stored authorize, revoke and
//! dynamic-settings records go into the community's timeline, after which the waiting messages
//! are judged again; missing-proof requests are answered with the proof records' packets; and
//! the timeline is rebuilt from the stored records when a community is joined.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{Event, Incoming, Node};
use crate::authority::{self, Judgement};
use crate::community::Community;
use crate::identity::{CommunityId, MemberId, PublicKey};
use crate::missing::{Awaited, Lookup};
use crate::stats::DropReason;
use crate::time::Instant;
use crate::timeline::{Inserted, RecordId, Subject};
use crate::wire::{MAX_MISSING_TIMES, MissingProof, SignedMessage};

/// The most authors whose records one answer of proof reads (one store read each).
const MAX_PROOF_AUTHORS: usize = 16;

impl Node {
    /// `incoming` is not allowed by the timeline held now: it waits for its proof (bounded in
    /// count and time like every wait), its sender is asked with missing-proof, and is sent
    /// the records `push` (the settings that deny it, which the sender may lack).
    pub(super) fn wait_for_proof(
        &mut self,
        now: Instant,
        community: CommunityId,
        incoming: Incoming,
        push: &[RecordId],
    ) {
        let Some(source) = incoming.source else {
            return;
        };
        if !push.is_empty() {
            self.send_records(now, community, source, push);
        }
        let Some(member) = incoming
            .message
            .message
            .authors
            .first()
            .map(PublicKey::member_id)
        else {
            return;
        };
        let awaited = Awaited::Proof {
            member,
            global_time: incoming.message.message.global_time,
        };
        self.delay(now, community, incoming, awaited, 0);
    }

    /// Sends `to` the stored packets of the records `ids` of `community` (those its timeline
    /// holds), read by author and global time like a missing-message's answer.
    fn send_records(
        &mut self,
        now: Instant,
        community: CommunityId,
        to: SocketAddr,
        ids: &[RecordId],
    ) {
        let Some(c) = self.communities.get(&community) else {
            return;
        };
        let mut by_author: BTreeMap<MemberId, Vec<u64>> = BTreeMap::new();
        for id in ids {
            if let Some(record) = c.timeline.record(id) {
                by_author
                    .entry(record.author)
                    .or_default()
                    .push(record.global_time);
            }
        }
        for (member, mut global_times) in by_author.into_iter().take(MAX_PROOF_AUTHORS) {
            global_times.sort_unstable();
            global_times.dedup();
            global_times.truncate(MAX_MISSING_TIMES);
            let lookup = Lookup::GlobalTimes {
                member,
                global_times,
            };
            // A busy node sends nothing: the requester asks again.
            let _ = self.read_for(now, community, to, lookup, false);
        }
    }

    /// Built-in messages of `community` were stored: the records of the authorize, revoke and
    /// dynamic-settings among them go into its timeline, and the messages waiting for proof
    /// that it now allows go back to the driver.
    pub(super) fn learn_records(&mut self, community: CommunityId, messages: &[SignedMessage]) {
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        let inserted = insert_records(c, messages.iter());
        if inserted > 0 {
            self.resume_proven(community);
        }
    }

    /// The messages of `community` waiting for proof that the timeline now allows go back to
    /// the driver as [`Event::Messages`], and the stored ones move the clock.
    fn resume_proven(&mut self, community: CommunityId) {
        let Some(c) = self.communities.get(&community) else {
            return;
        };
        let Some(definition) = c.definition.as_ref() else {
            return;
        };
        let timeline = &c.timeline;
        let resumed = self.delays.take_proven(community, |incoming| {
            let m = &incoming.message;
            authority::judge(&definition.metas, timeline, &m.message, &m.packet)
                == Judgement::Allowed
        });
        // A message that waited moves the clock only now (an unproven one must not).
        let highest = resumed
            .iter()
            .filter(|incoming| incoming.persistent)
            .map(|incoming| incoming.message.message.global_time)
            .max();
        if let (Some(highest), Some(c)) = (highest, self.communities.get_mut(&community)) {
            c.observe_global_time(highest);
        }
        for incoming in resumed {
            self.push_event(Event::Messages {
                community,
                meta: incoming.message.message.message_type,
                messages: vec![incoming],
            });
        }
    }

    /// Rebuilds the timeline of joined `community` from its stored permission `packets` (in
    /// any order): a packet that does not decode, or is of another community, is skipped.
    pub(super) fn rebuild_timeline(&mut self, community: CommunityId, packets: &[Vec<u8>]) {
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        c.timeline = crate::community::timeline_of(community, c.definition.as_ref());
        let decoded: Vec<SignedMessage> = packets
            .iter()
            .filter_map(|packet| SignedMessage::decode(packet).ok())
            .filter(|signed| signed.message.community == community)
            .collect();
        insert_records(c, decoded.iter());
    }

    /// Answers a missing-proof from a proven address: the store reads the messages it names,
    /// then [`Node::answer_proof`] sends the proof of each.
    pub(super) fn on_missing_proof(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: MissingProof,
    ) -> Result<(), DropReason> {
        if !self.proven(now, from, m.session) {
            return Err(DropReason::UnprovenMissingRequest);
        }
        let lookup = Lookup::GlobalTimes {
            member: m.member.id,
            global_times: m.global_times,
        };
        self.read_for(now, m.community, from, lookup, true)
    }

    /// The stored messages a missing-proof named: the records that prove each (for a permission
    /// record, those that made its author hold what it needed; for a plugin message, the
    /// grants and settings that allow it), one level up the chain, are read and sent to `to`.
    pub(super) fn answer_proof(
        &mut self,
        now: Instant,
        community: CommunityId,
        to: SocketAddr,
        packets: &[Vec<u8>],
    ) {
        let Some(c) = self.communities.get(&community) else {
            return;
        };
        let Some(definition) = c.definition.as_ref() else {
            return;
        };
        let mut ids: Vec<RecordId> = Vec::new();
        for packet in packets {
            let Ok(signed) = SignedMessage::decode(packet) else {
                continue;
            };
            let m = &signed.message;
            if m.community != community {
                continue;
            }
            if m.authority.is_some() {
                let resolution = |meta| definition.meta_by_id(meta).map(|m| &m.resolution);
                if let Some(record) = authority::record(m, packet, resolution) {
                    ids.extend(c.timeline.proof_chain(&record.id));
                }
            } else {
                let authors: Vec<MemberId> = m.authors.iter().map(PublicKey::member_id).collect();
                let verdict =
                    c.timeline
                        .may_all(&authors, Subject::Community(m.message_type), m.global_time);
                ids.extend_from_slice(verdict.proof());
            }
        }
        ids.sort_unstable();
        ids.dedup();
        self.send_records(now, community, to, &ids);
    }

    /// The digest of the permission timeline of `community` ([`crate::timeline::Timeline::digest`]),
    /// if known: two nodes holding the same records have the same.
    pub fn timeline_digest(&self, community: &CommunityId) -> Option<[u8; 32]> {
        self.communities.get(community).map(|c| c.timeline.digest())
    }
}

/// Inserts the records of the permission `messages` into `c`'s timeline; returns how many
/// were new.
fn insert_records<'a>(
    c: &mut Community,
    messages: impl Iterator<Item = &'a SignedMessage>,
) -> usize {
    let Some(definition) = c.definition.as_ref() else {
        return 0;
    };
    let mut inserted = 0;
    for signed in messages {
        let resolution = |meta| definition.meta_by_id(meta).map(|m| &m.resolution);
        let Some(record) = authority::record(&signed.message, &signed.packet, resolution) else {
            continue;
        };
        match c.timeline.insert(record) {
            // Next: the `changes` name the stored messages whose verdict may have flipped
            // (retroactive re-evaluation, a later brick); they are not kept yet.
            Ok(Inserted::Held { .. }) => inserted += 1,
            // A full timeline (or a forged id clash) keeps what it has: the record stays stored.
            Ok(Inserted::Duplicate) | Err(_) => {}
        }
    }
    inserted
}
