//! The node's side of the permission timeline (the rules are in [`crate::timeline`] and
//! [`crate::authority`]): received messages the timeline does not allow yet wait for their
//! proof and the sender is asked with missing-proof; stored authorize, revoke and
//! dynamic-settings records go into the community's timeline, after which the waiting messages
//! are judged again; missing-proof requests are answered with the proof records' packets; and
//! the timeline is rebuilt from the stored records when a community is joined.
//!
//! # Retroactive re-evaluation
//!
//! A stored permission record can change what the timeline allowed in the past: a revoke (or
//! a grant, or a dynamic-settings switch) reaches back from its global time over messages
//! already stored. The rule:
//!
//! - **A stored message is shown iff none of its hidden reasons holds.** The store keeps two
//!   independent reasons per message (bits 1 and 2 as the API shows them; the host stores
//!   undone in `sync.undone` and denied in a side table): *denied* (2) follows the timeline
//!   only: set iff the timeline, as it is now, does not let its author create a message of its
//!   meta at its global time; *undone* (1) follows undo only (`crate::undo`). A revoke never
//!   redoes a message its author (or a moderator) undid, and a re-grant never shows one.
//! - After each batch of stored records, every timeline change (rule 9 of
//!   [`crate::timeline`]) on a plugin meta of Linear or Dynamic resolution becomes one
//!   [`Event::Reevaluate`] per meta, computed on the timeline after the whole batch: for a
//!   change of one member, that member's spans of allowed and denied global times from the
//!   change's time on ([`crate::timeline::Timeline::allowed_spans`]); for a settings change
//!   (every member), the spans of each member who ever held `Permit` on the meta and the
//!   policy's spans for all other authors ([`crate::timeline::Timeline::reevaluation`]). The
//!   driver applies each span as one range update of the denied reason (set in denied spans,
//!   cleared in allowed ones): a revoke over a member with a million stored messages costs a
//!   few statements, not a core call per message. The plugin is told of each message whose
//!   visibility flipped.
//! - Grants re-evaluate too (the timeline reports them): a message denied by a revoke that
//!   a later-sorting record made invalid is shown again.
//! - Nothing is re-evaluated at load: the flags are stored, and the timeline rebuilt from the
//!   stored records gives the same answers. A record that arrives while the node is down
//!   arrives later as a normal message and is re-evaluated then. Messages that the current
//!   timeline denies on arrival are not stored (they wait for proof), as before; a permission
//!   record invalid on arrival is held (stored, invalid) when its author is an authority, so
//!   that its later records are not blocked behind a sequence gap (rule 13 of
//!   [`crate::timeline`]).
//! - Double-member messages are judged by both signers (rule 7 of [`crate::timeline`]: every
//!   signer must pass): for a meta of [`Authentication::DoubleMember`] the event carries
//!   [`crate::timeline::Authors::Pair`] groups
//!   ([`crate::timeline::Timeline::cosigned_reevaluation`]), each with the intersection of
//!   its two signers' spans; the driver matches a pair against the message's two signers in
//!   either order (the store's `double_signed_sync`). A revoke of either signer denies the
//!   message, a grant shows it again only where the other signer is allowed too.
//!
//! The original (`_update_timerange`, after a revoke or a settings message only) re-checked
//! the messages of the meta between min(the record's global time, the local one) and the local
//! global time, one by one, and *redid* every allowed message in that range whatever had
//! undone it (an undo-own or undo-other included); it did not re-evaluate after an authorize.
//! Here the range is from the change's time to the end (a message stored with a higher global
//! time than the local clock is covered), a grant re-evaluates as well, and the reasons are
//! independent.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{CreateError, Created, Event, Incoming, Node};
use crate::authority::{self, Body, Judgement, MemberRef, Target};
use crate::community::{Community, Definition};
use crate::identity::{CommunityId, KeyPair, MemberId, PublicKey};
use crate::meta::{Authentication, Resolution, StaticResolution};
use crate::missing::{Awaited, Lookup};
use crate::stats::DropReason;
use crate::time::Instant;
use crate::timeline::{Act, Inserted, MAX_GRANTS, Permission, RecordId, Subject};
use crate::wire::{MAX_MISSING_TIMES, MissingProof, SignedMessage};

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

/// Why a permission message could not be created ([`Node::create_authority`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// Not joined (or a tracker's bare community).
    #[error("community {0} is not joined")]
    NotJoined(CommunityId),
    /// Undo-own and undo-other are created with [`Node::create_undo`].
    #[error("{0} messages are not supported yet")]
    Unsupported(&'static str),
    /// An authorize or revoke with no grant, or more than one record carries.
    #[error("a record carries {0} grants, 1..={MAX_GRANTS} allowed")]
    Grants(usize),
    /// A grant names a plugin meta the community does not have.
    #[error("the community has no meta-message of type {0}")]
    UnknownSubject(u32),
    /// A dynamic-settings names a meta that is unknown or not of dynamic resolution.
    #[error("meta-message {0:?} is not of dynamic resolution")]
    NotDynamic(String),
    /// A dynamic-settings names a policy index out of the meta's list.
    #[error("meta-message {meta:?} lists no policy at index {index}")]
    PolicyNotListed {
        /// The meta's name.
        meta: String,
        /// The index given.
        index: u32,
    },
    /// The community is destroyed (hard) or frozen (soft): it creates nothing but a hard
    /// destroy of a soft-destroyed community.
    #[error("community {0} is destroyed: it creates no new message")]
    Destroyed(CommunityId),
    /// The timeline would hold the record invalid: this node's member lacks `missing`
    /// (`permission on subject`, comma-separated). Nothing was signed or sent.
    #[error("this member may not create this {kind}: it lacks {missing}")]
    NotPermitted {
        /// The message kind (`authorize`, `revoke`, `dynamic-settings`, `destroy-community`).
        kind: &'static str,
        /// What it lacks, e.g. `authorize on linear-post`.
        missing: String,
    },
    /// Signing or publishing failed.
    #[error(transparent)]
    Publish(#[from] CreateError),
}

impl Node {
    /// Creates a permission message of joined `community` signed by this node's member: an
    /// authorize, a revoke or a dynamic-settings `body`, at the next global time, with the
    /// next sequence number of this member for the body's built-in meta. It is checked before
    /// anything is signed: every grant names a plugin meta of the definition or a built-in
    /// subject, 1..=[`MAX_GRANTS`] grants; a dynamic-settings names a meta of dynamic
    /// resolution and an index of its list; and [`crate::timeline::Timeline::judge`] must
    /// hold the record valid now, else [`AuthorityError::NotPermitted`] names what this member
    /// lacks. It is published like [`Node::found`]'s authorize (sent to the community and
    /// emitted as [`Event::Messages`] with no source: stored, never given to the plugin; its
    /// record enters the timeline when the store reports it).
    ///
    /// A destroy-community `body` ([`crate::destroy`]) carries no sequence number (the
    /// returned `sequence_number` is 0, `record` its packet's hash); this member must hold
    /// `permit` on destroy-community at its global time, else [`AuthorityError::NotPermitted`].
    /// It is sent to 50 candidates and takes effect here when the store reports it. A destroyed
    /// community creates nothing ([`AuthorityError::Destroyed`]) but a hard destroy of a
    /// soft-destroyed one.
    pub fn create_authority(
        &mut self,
        now: Instant,
        community: CommunityId,
        body: Body,
    ) -> Result<AuthorityCreated, AuthorityError> {
        let max_datagram = self.config.max_datagram;
        let key = self.key.clone();
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(AuthorityError::NotJoined(community))?;
        let Some(definition) = c.definition.as_ref() else {
            return Err(AuthorityError::NotJoined(community));
        };
        check_body(definition, &body)?;
        if c.destroyed
            .as_ref()
            .is_some_and(|d| !d.creates(Some(&body)))
        {
            return Err(AuthorityError::Destroyed(community));
        }
        if let Body::Destroy(_) = body {
            return self.create_destroy(now, community, body);
        }
        let kind = body.kind_name();
        let message_type = body.message_type();
        let member = key.member_id();
        let claimed = c.sequences.get(&message_type).copied().unwrap_or(0);
        let held = c
            .timeline
            .records()
            .filter(|r| r.author == member && same_kind(&r.act, &body))
            .count();
        let sequence = claimed
            .max(u32::try_from(held).unwrap_or(u32::MAX))
            .saturating_add(1);
        let global_time = c.global_time.saturating_add(1);
        let message = authority::message(
            community,
            key.public().clone(),
            global_time,
            Some(sequence),
            body,
        );
        let signed = SignedMessage::sign(message, &[&key]).map_err(CreateError::from)?;
        let resolution = |meta| definition.meta_by_id(meta).map(|m| &m.resolution);
        let Some(record) = authority::record(&signed.message, &signed.packet, resolution) else {
            return Err(AuthorityError::Unsupported(kind));
        };
        if !c.timeline.judge(&record) {
            let lacking: Vec<String> = needed(&record.act)
                .into_iter()
                .filter(|(subject, permission)| {
                    !c.timeline
                        .holds(member, *subject, *permission, c.global_time)
                })
                .map(|(subject, permission)| {
                    format!(
                        "{} on {}",
                        permission.name(),
                        definition.subject_name(subject)
                    )
                })
                .collect();
            return Err(AuthorityError::NotPermitted {
                kind,
                missing: if lacking.is_empty() {
                    "a grant that sorts before it".into()
                } else {
                    lacking.join(", ")
                },
            });
        }
        super::collection::fits(&signed, max_datagram)?;
        c.claim_numbered(message_type, sequence);
        let (global_time, sent_to) = self.publish(now, community, signed, &[])?;
        Ok(AuthorityCreated {
            global_time,
            sequence_number: sequence,
            record: record.id,
            sent_to,
        })
    }

    /// Creates destroy-community `body` of joined `community` ([`Node::create_authority`]).
    fn create_destroy(
        &mut self,
        now: Instant,
        community: CommunityId,
        body: Body,
    ) -> Result<AuthorityCreated, AuthorityError> {
        let key = self.key.clone();
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(AuthorityError::NotJoined(community))?;
        let global_time = c.global_time.saturating_add(1);
        let allowed = c
            .timeline
            .may(key.member_id(), Subject::DestroyCommunity, global_time)
            .is_allowed();
        if !allowed {
            return Err(AuthorityError::NotPermitted {
                kind: body.kind_name(),
                missing: "permit on destroy-community".into(),
            });
        }
        let message = authority::message(community, key.public().clone(), global_time, None, body);
        let signed = SignedMessage::sign(message, &[&key]).map_err(CreateError::from)?;
        let record = RecordId::of_packet(&signed.packet);
        c.claim_global_time();
        let (global_time, sent_to) = self.publish(now, community, signed, &[])?;
        Ok(AuthorityCreated {
            global_time,
            sequence_number: 0,
            record,
            sent_to,
        })
    }

    /// The permission timeline of joined `community` as plain data for display: its master,
    /// every record held, what every member holds now and the policy of every dynamic meta,
    /// subjects named by [`crate::community::Definition::subject_name`]. `None` when the
    /// community is not joined (or is a tracker's bare one).
    pub fn timeline_view(&self, community: &CommunityId) -> Option<TimelineView> {
        let c = self.communities.get(community)?;
        let definition = c.definition.as_ref()?;
        let timeline = &c.timeline;
        let grants = |grants: &[crate::timeline::Grant]| -> Vec<GrantView> {
            grants
                .iter()
                .map(|grant| GrantView {
                    member: grant.member,
                    subject: definition.subject_name(grant.subject),
                    permission: grant.permission,
                })
                .collect()
        };
        let records = timeline
            .records_with_validity()
            .map(|(record, valid)| {
                let (kind, listed, setting) = match &record.act {
                    Act::Authorize(g) => ("authorize", grants(g), None),
                    Act::Revoke(g) => ("revoke", grants(g), None),
                    Act::Settings { meta, policy } => (
                        "dynamic-settings",
                        Vec::new(),
                        Some((definition.subject_name(Subject::Community(*meta)), *policy)),
                    ),
                };
                RecordView {
                    id: record.id,
                    author: record.author,
                    global_time: record.global_time,
                    kind,
                    valid,
                    grants: listed,
                    setting,
                }
            })
            .collect();
        let holdings = timeline
            .holdings()
            .into_iter()
            .map(|h| HoldingView {
                member: h.member,
                subject: definition.subject_name(h.subject),
                permission: h.permission,
                since: h.since,
                proof: h.proof,
            })
            .collect();
        let policies = timeline
            .policies()
            .into_iter()
            .map(|p| PolicyView {
                meta: definition.subject_name(Subject::Community(p.meta)),
                policy: p.policy,
                since: p.since,
                proof: p.proof,
            })
            .collect();
        Some(TimelineView {
            master: timeline.master(),
            global_time: c.global_time,
            records,
            holdings,
            policies,
        })
    }

    /// Founds joined `community` with its `master` key: creates the master-signed authorize
    /// granting this node's member `Permit`, `Authorize` and `Revoke` on every Linear and
    /// Dynamic meta of the community and on [`Subject::DynamicSettings`] and
    /// [`Subject::DestroyCommunity`], `Undo` on every undoable meta and `Authorize` and
    /// `Revoke` on the undoable Public ones, at the next global time, numbered after the master's
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
            .ok_or(FoundError::NotJoined(community))?;
        let Some(definition) = c.definition.as_ref() else {
            return Err(FoundError::NotJoined(community));
        };
        if master.public().community_id() != community {
            return Err(FoundError::NotMaster(community));
        }
        let mut subjects: Vec<Subject> = definition
            .metas
            .iter()
            .filter(|meta| meta.resolution != Resolution::Public)
            .map(|meta| Subject::Community(meta.id))
            .collect();
        subjects.extend([Subject::DynamicSettings, Subject::DestroyCommunity]);
        let mut grants: Vec<(Subject, Permission)> = subjects
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
        // Undo on every undoable meta (as the original did for metas with an undo callback);
        // on an undoable Public meta also authorize and revoke, so the founder can hand undo on.
        for meta in definition
            .metas
            .iter()
            .filter(|meta| definition.is_undoable(meta.id))
        {
            let subject = Subject::Community(meta.id);
            if meta.resolution == Resolution::Public {
                grants.push((subject, Permission::Authorize));
                grants.push((subject, Permission::Revoke));
            }
            grants.push((subject, Permission::Undo));
        }
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
        super::collection::fits(&signed, max_datagram)?;
        c.claim_global_time();
        let (global_time, sent_to) = self.publish(now, community, signed, &[])?;
        Ok(Created {
            global_time,
            persistent: true,
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
        let (inserted, changes) = insert_records(c, messages.iter());
        let flips = c.undos.reevaluate(&c.timeline, &changes);
        // Retroactive re-evaluation: computed on the timeline after the whole batch, so one
        // event per meta carries the spans as they are now. Pushed past the event bound: a
        // lost one would leave flags wrong until the next change (their number is bounded by
        // the records the timeline holds).
        let mut seen = BTreeMap::new();
        for change in changes {
            let key = (change.subject, change.member);
            let lowest = seen.entry(key).or_insert(change.from);
            *lowest = (*lowest).min(change.from);
        }
        let mut events: BTreeMap<u32, Vec<crate::timeline::Reevaluation>> = BTreeMap::new();
        for ((subject, member), from) in seen {
            let change = crate::timeline::Change {
                subject,
                member,
                from,
            };
            let cosigned = match change.subject {
                Subject::Community(meta) => c.definition.as_ref().is_some_and(|d| {
                    d.meta_by_id(meta)
                        .is_some_and(|m| m.authentication == Authentication::DoubleMember)
                }),
                _ => false,
            };
            let reevaluation = if cosigned {
                c.timeline.cosigned_reevaluation(&change)
            } else {
                c.timeline.reevaluation(&change)
            };
            if let Some((meta, spans)) = reevaluation {
                events.entry(meta).or_default().extend(spans);
            }
        }
        for (meta, spans) in events {
            self.events.push_back(Event::Reevaluate {
                community,
                meta,
                spans,
            });
        }
        if inserted > 0 {
            self.resume_proven(community);
        }
        self.emit_flips(community, flips);
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

    /// Rebuilds the timeline and the undo state of joined `community` from its stored
    /// permission and undo `packets` (in any order): a packet that does not decode, or is of
    /// another community, is skipped.
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
        // The stored flags already reflect these records: nothing is re-evaluated at load.
        insert_records(c, decoded.iter());
        self.rebuild_undos(community, &decoded);
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
    /// record, those that made its author hold what it needed; for a destroy-community, the
    /// grants of its author's permit; for a plugin message, the grants and settings that allow
    /// it), one level up the chain, are read and sent to `to`.
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
            if let (Some(Body::Destroy(_)), Some(author)) = (&m.authority, m.authors.first()) {
                let verdict =
                    c.timeline
                        .may(author.member_id(), Subject::DestroyCommunity, m.global_time);
                ids.extend_from_slice(verdict.proof());
            } else if m.authority.is_some() {
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

/// A permission message this node's member created ([`Node::create_authority`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityCreated {
    /// Its global time.
    pub global_time: u64,
    /// Its sequence number (this member's, for its kind); 0 for a destroy-community, which
    /// carries none.
    pub sequence_number: u32,
    /// Its timeline record's id (SHA-256 of its packet).
    pub record: RecordId,
    /// How many candidates it was sent to.
    pub sent_to: usize,
}

/// The permission timeline of a community as [`Node::timeline_view`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineView {
    /// The master member (holds every permission, listed in no holding).
    pub master: MemberId,
    /// The community's global time at this node.
    pub global_time: u64,
    /// Every record held, valid or not, in fold order (global time, id).
    pub records: Vec<RecordView>,
    /// What every member but the master holds now, by (member, subject, permission).
    pub holdings: Vec<HoldingView>,
    /// The current policy of every meta of dynamic resolution.
    pub policies: Vec<PolicyView>,
}

/// One record of a [`TimelineView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// The record's id (SHA-256 of its packet).
    pub id: RecordId,
    /// Its author.
    pub author: MemberId,
    /// Its global time.
    pub global_time: u64,
    /// `authorize`, `revoke` or `dynamic-settings`.
    pub kind: &'static str,
    /// Whether the timeline holds it valid now.
    pub valid: bool,
    /// What an authorize grants or a revoke takes (empty for a setting).
    pub grants: Vec<GrantView>,
    /// What a dynamic-settings sets: the meta's name and the policy.
    pub setting: Option<(String, StaticResolution)>,
}

/// One grant (or revocation) of a [`RecordView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantView {
    /// The member.
    pub member: MemberId,
    /// The subject's name.
    pub subject: String,
    /// The permission.
    pub permission: Permission,
}

/// One permission a member holds now ([`crate::timeline::Holding`] with its subject named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldingView {
    /// The member.
    pub member: MemberId,
    /// The subject's name.
    pub subject: String,
    /// The permission.
    pub permission: Permission,
    /// Held since this global time.
    pub since: u64,
    /// The grant records that decide it.
    pub proof: Vec<RecordId>,
}

/// The current policy of a dynamic meta ([`crate::timeline::PolicyNow`] with its meta named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    /// The meta's name.
    pub meta: String,
    /// Its policy.
    pub policy: StaticResolution,
    /// From which global time (`None`: the default, first listed policy).
    pub since: Option<u64>,
    /// The settings records that set it.
    pub proof: Vec<RecordId>,
}

/// Checks `body` against the community's `definition` before signing
/// ([`Node::create_authority`]).
fn check_body(definition: &Definition, body: &Body) -> Result<(), AuthorityError> {
    match body {
        Body::Authorize(_) | Body::Revoke(_) => {
            let grants = body.grants();
            if !(1..=MAX_GRANTS).contains(&grants.len()) {
                return Err(AuthorityError::Grants(grants.len()));
            }
            for grant in grants {
                if let Subject::Community(meta) = grant.subject
                    && !definition.metas.iter().any(|m| m.id == meta)
                {
                    return Err(AuthorityError::UnknownSubject(meta));
                }
            }
            Ok(())
        }
        Body::DynamicSettings { meta, index } => {
            let found = definition.metas.iter().find(|m| m.id == *meta);
            let (name, listed) = match found {
                Some(m) => match &m.resolution {
                    Resolution::Dynamic(listed) => (m.name.clone(), listed.len()),
                    _ => return Err(AuthorityError::NotDynamic(m.name.clone())),
                },
                None => return Err(AuthorityError::NotDynamic(meta.to_string())),
            };
            if usize::try_from(*index).map_or(true, |i| i >= listed) {
                return Err(AuthorityError::PolicyNotListed {
                    meta: name,
                    index: *index,
                });
            }
            Ok(())
        }
        Body::Destroy(_) => Ok(()),
        // Undos are created with `Node::create_undo`, which checks the target.
        Body::UndoOwn { .. } | Body::UndoOther { .. } => {
            Err(AuthorityError::Unsupported(body.kind_name()))
        }
    }
}

/// Whether the record act `act` is of the kind of `body` (numbered together).
fn same_kind(act: &Act, body: &Body) -> bool {
    matches!(
        (act, body),
        (Act::Authorize(_), Body::Authorize(_))
            | (Act::Revoke(_), Body::Revoke(_))
            | (Act::Settings { .. }, Body::DynamicSettings { .. })
    )
}

/// The permissions the author of a record with `act` needs (rules 3, 4 and 6 of the
/// timeline), deduplicated, in order.
fn needed(act: &Act) -> Vec<(Subject, Permission)> {
    let mut needs: Vec<(Subject, Permission)> = match act {
        Act::Authorize(grants) => grants
            .iter()
            .flat_map(|g| {
                [
                    (g.subject, Permission::Authorize),
                    (g.subject, g.permission),
                ]
            })
            .collect(),
        Act::Revoke(grants) => grants
            .iter()
            .map(|g| (g.subject, Permission::Revoke))
            .collect(),
        Act::Settings { .. } => vec![(Subject::DynamicSettings, Permission::Permit)],
    };
    let mut seen = std::collections::BTreeSet::new();
    needs.retain(|need| seen.insert(*need));
    needs
}

/// Inserts the records of the permission `messages` into `c`'s timeline; returns how many
/// were new, and the timeline's changes (rule 9 of `timeline`) of them all.
fn insert_records<'a>(
    c: &mut Community,
    messages: impl Iterator<Item = &'a SignedMessage>,
) -> (usize, Vec<crate::timeline::Change>) {
    let mut changes = Vec::new();
    let Some(definition) = c.definition.as_ref() else {
        return (0, changes);
    };
    let mut inserted = 0;
    for signed in messages {
        let resolution = |meta| definition.meta_by_id(meta).map(|m| &m.resolution);
        let Some(record) = authority::record(&signed.message, &signed.packet, resolution) else {
            continue;
        };
        match c.timeline.insert(record) {
            Ok(Inserted::Held { changes: more, .. }) => {
                inserted += 1;
                changes.extend(more);
            }
            // A full timeline (or a forged id clash) keeps what it has: the record stays stored.
            Ok(Inserted::Duplicate) | Err(_) => {}
        }
    }
    (inserted, changes)
}

/// Why [`Node::may`] has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MayError {
    /// Not joined (or joined without a definition).
    #[error("unknown community {0}")]
    UnknownCommunity(CommunityId),
    /// The community's plugin declares no meta-message of this name.
    #[error("community has no meta-message {0:?}")]
    UnknownMeta(String),
}

impl Node {
    /// The plugins' timeline question: whether `member` may create a message of the plugin
    /// meta `meta` at `global_time`, by the community's timeline as it stands now. Public
    /// resolution: always; Linear: iff it holds `permit` on the meta then; Dynamic: by the
    /// policy in force then (Public, or Linear and the permit). Built-in metas are not asked
    /// about (their rules are the timeline's own).
    pub fn may(
        &self,
        community: &CommunityId,
        meta: &str,
        member: MemberId,
        global_time: u64,
    ) -> Result<bool, MayError> {
        let c = self
            .communities
            .get(community)
            .ok_or(MayError::UnknownCommunity(*community))?;
        let meta = c
            .definition
            .as_ref()
            .ok_or(MayError::UnknownCommunity(*community))?
            .meta_by_name(meta)
            .ok_or_else(|| MayError::UnknownMeta(meta.to_owned()))?;
        Ok(meta.resolution == Resolution::Public
            || c.timeline
                .may(member, Subject::Community(meta.id), global_time)
                .is_allowed())
    }
}
