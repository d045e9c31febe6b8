//! The node's side of the permission timeline (the rules are in [`crate::timeline`] and
//! [`crate::authority`]): received messages the timeline does not allow yet wait for their
//! proof and the sender is asked with missing-proof; stored authorize, revoke and
//! dynamic-settings records go into the community's timeline, after which the waiting messages
//! are judged again; missing-proof requests are answered with the proof records' packets; and
//! the timeline is rebuilt from the stored records when a community is joined.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{CreateError, Created, Event, Incoming, Node};
use crate::authority::{self, Body, Judgement, MemberRef, Target};
use crate::community::Community;
use crate::identity::{CommunityId, KeyPair, MemberId, PublicKey};
use crate::meta::Resolution;
use crate::missing::{Awaited, Lookup};
use crate::stats::DropReason;
use crate::time::Instant;
use crate::timeline::{Act, Inserted, MAX_GRANTS, Permission, RecordId, Subject};
use crate::wire::{self, MAX_MISSING_TIMES, MissingProof, SignedMessage};

/// The most authors whose records one answer of proof reads (one store read each).
const MAX_PROOF_AUTHORS: usize = 16;

/// Why a community could not be founded ([`Node::found`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoundError {
    /// Not joined (or a tracker's bare community).
    #[error("community {0} is not joined")]
    NotJoined(CommunityId),
    /// The key given is not the community's master key.
    #[error("the key given is not the master key of community {0}")]
    NotMaster(CommunityId),
    /// This node's member holds every founding permission already (it was founded here).
    #[error("this member already holds every founding permission of community {0}")]
    AlreadyFounded(CommunityId),
    /// The community has so many Linear and Dynamic metas that one authorize cannot grant
    /// them all.
    #[error("founding would grant {0} permissions, one authorize carries at most {MAX_GRANTS}")]
    TooManyGrants(usize),
    /// Signing or publishing the authorize failed.
    #[error(transparent)]
    Publish(#[from] CreateError),
}

impl Node {
    /// Founds joined `community` with its `master` key: creates the master-signed authorize
    /// granting this node's member `Permit`, `Authorize` and `Revoke` on every Linear and
    /// Dynamic meta of the community and on [`Subject::DynamicSettings`] and
    /// [`Subject::DestroyCommunity`], at the next global time, numbered after the master's
    /// authorize records the timeline holds, and publishes it like a created message (sent to
    /// the community and emitted as [`Event::Messages`] with no source: stored, never given to
    /// the plugin; its record enters the timeline when the store reports it). Refused when the
    /// member holds all those permissions already, so calling it at every start is harmless
    /// once the first authorize is stored. The master key is used to sign only, never kept.
    pub fn found(
        &mut self,
        now: Instant,
        community: CommunityId,
        master: &KeyPair,
    ) -> Result<Created, FoundError> {
        let max_datagram = self.config.max_datagram;
        let me = self.key.public().clone();
        let c = self
            .communities
            .get_mut(&community)
            .filter(|c| c.definition.is_some())
            .ok_or(FoundError::NotJoined(community))?;
        if master.public().community_id() != community {
            return Err(FoundError::NotMaster(community));
        }
        let Some(definition) = c.definition.as_ref() else {
            return Err(FoundError::NotJoined(community));
        };
        let mut subjects: Vec<Subject> = definition
            .metas
            .iter()
            .filter(|meta| meta.resolution != Resolution::Public)
            .map(|meta| Subject::Community(meta.id))
            .collect();
        subjects.extend([Subject::DynamicSettings, Subject::DestroyCommunity]);
        let grants: Vec<(Subject, Permission)> = subjects
            .iter()
            .flat_map(|subject| {
                [
                    Permission::Permit,
                    Permission::Authorize,
                    Permission::Revoke,
                ]
                .map(|permission| (*subject, permission))
            })
            .collect();
        if grants.len() > MAX_GRANTS {
            return Err(FoundError::TooManyGrants(grants.len()));
        }
        let global_time = c.global_time.saturating_add(1);
        let member = me.member_id();
        let held = grants.iter().all(|(subject, permission)| {
            c.timeline.holds(member, *subject, *permission, global_time)
        });
        if held {
            return Err(FoundError::AlreadyFounded(community));
        }
        let master_id = master.member_id();
        let authorized = c
            .timeline
            .records()
            .filter(|r| r.author == master_id && matches!(r.act, Act::Authorize(_)))
            .count();
        let sequence = u32::try_from(authorized)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let body = Body::Authorize(vec![Target {
            member: MemberRef::from_key(me),
            grants,
        }]);
        let message = authority::message(
            community,
            master.public().clone(),
            global_time,
            Some(sequence),
            body,
        );
        let signed = SignedMessage::sign(message, &[master]).map_err(CreateError::from)?;
        let datagram = wire::encode_collection(0, &[&signed.packet]);
        if datagram.len() + 8 > max_datagram {
            return Err(CreateError::TooLarge {
                len: datagram.len(),
                max: max_datagram,
            }
            .into());
        }
        c.claim_global_time();
        let (global_time, sent_to) = self.publish(now, community, signed, &[])?;
        Ok(Created {
            global_time,
            sequence_number: Some(sequence),
            sent_to,
        })
    }

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
