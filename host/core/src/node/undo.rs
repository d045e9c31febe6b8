//! The node's side of undo-own and undo-other (the rules are in [`crate::undo`]): stored undo
//! messages go into the community's [`Undos`]; an undo whose target the node has not been told
//! about has it looked up in the store ([`Event::UndoTargets`], answered by
//! [`Node::handle_undo_targets`]) and, when it is not stored, asked of the undo's sender with
//! missing-message; a target stored later is told to the undo state; a superseded undo-own
//! (rule 6) has the winning undo sent back to its sender; the timeline's changes re-judge the
//! undo-others they reach; every flip goes to the driver as [`Event::Undone`] (the driver
//! marks the rows and tells the plugin); and [`Node::create_undo`] creates one.
//!
//! Contract decisions taken here:
//! - An undo is stored and synced whether it is valid or not (like the original, it is a
//!   full-sync message with sequence numbers, priority 128); only a valid one hides its target.
//! - The driver marks a target row `undone` with reason bit 1 and `undone_by` the row of the
//!   undo named in the flip; a flip with no undo clears bit 1 and `undone_by`. It tells the
//!   plugin only of rows whose state changed, so replaying flips (after a restart) is harmless.
//! - At join the undo state is rebuilt from the stored undo packets ([`Resume::authority`]):
//!   every target is looked up again ([`Event::UndoTargets`]); the flags persist in the store.
//! - An undo whose target is not stored asks the undo's sender with missing-message, and
//!   then, as long as it waits, each walk step asks the walked peer for up to
//!   [`REASK_PER_STEP`] awaited targets: a target undone everywhere else is not offered by
//!   sync, so a node that lost it (and whose undo's sender lacked it) would otherwise never
//!   get it, and its undo state would differ from the others' (found by the convergence
//!   property test, `sim/convergence_tests.rs`).
//! - Creating an undo of a target this member undid already returns the existing undo (as the
//!   original did) and signs nothing.
//!
//! [`Resume::authority`]: crate::community::Resume::authority

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{CreateError, Event, Node};
use crate::authority::{self, Body, MemberRef};
use crate::identity::{CommunityId, MemberId};
use crate::message::Stored;
use crate::missing::Request;
use crate::stats::DropReason;
use crate::time::Instant;
use crate::undo::{self, Flip, Inserted, Kind, Target, Undos};
use crate::wire::SignedMessage;

/// How many awaited undo targets one walk step asks its peer for again
/// ([`Node::ask_awaited_targets`]).
pub const REASK_PER_STEP: usize = 2;

/// A stored message whose undo state changed ([`Event::Undone`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndoFlip {
    /// The message (its author and global time).
    pub target: Target,
    /// `Some`: now undone by the undo message of that author and global time; `None`: no
    /// longer undone by any undo (redone).
    pub undone_by: Option<Target>,
}

/// An undo this node's member created, or had created already ([`Node::create_undo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoCreated {
    /// The undo's global time.
    pub global_time: u64,
    /// `undo-own` or `undo-other`.
    pub kind: &'static str,
    /// Whether this member had undone the target already: the existing undo is returned and
    /// nothing was signed or sent.
    pub existing: bool,
    /// How many candidates it was sent to (0 for an existing one).
    pub sent_to: usize,
}

/// Why an undo could not be created ([`Node::create_undo`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UndoError {
    /// Not joined (or a tracker's bare community).
    #[error("community {0} is not joined")]
    NotJoined(CommunityId),
    /// The store holds no message of this author at this global time.
    #[error("no message of member {member} at global time {global_time} is stored")]
    NotStored {
        /// The target's author.
        member: MemberId,
        /// The target's global time.
        global_time: u64,
    },
    /// The target's meta is not undoable (a built-in meta, or one its plugin does not declare
    /// undoable).
    #[error("messages of meta-message {0:?} cannot be undone")]
    NotUndoable(String),
    /// An undo-other, and this node's member does not hold `undo` on the target's meta.
    #[error("this member may not undo others' messages of {0:?}: it lacks undo on it")]
    NotPermitted(String),
    /// Signing or publishing failed.
    #[error(transparent)]
    Publish(#[from] CreateError),
}

impl Node {
    /// Creates an undo of the stored message of `target` in joined `community`, signed by this
    /// node's member: an undo-own when the member is its author, else an undo-other, at the next
    /// global time with this member's next sequence number of that kind. `meta` is the stored
    /// target's meta as the driver read it from its store (`None`: not stored). When this
    /// member undid the target already, that undo is returned (`existing`) and nothing is
    /// signed. Else refused when the target is not stored, its meta not undoable
    /// ([`crate::community::Definition::is_undoable`]) or, for an undo-other, this member lacks
    /// `undo` on it at the next global time. Published like [`Node::create_authority`]: stored, never given to the plugin;
    /// the undo state takes it when the store reports it.
    pub fn create_undo(
        &mut self,
        now: Instant,
        community: CommunityId,
        target: Target,
        meta: Option<u32>,
    ) -> Result<UndoCreated, UndoError> {
        let max_datagram = self.config.max_datagram;
        let key = self.key.clone();
        let me = key.member_id();
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(UndoError::NotJoined(community))?;
        let Some(definition) = c.definition.as_ref() else {
            return Err(UndoError::NotJoined(community));
        };
        let global_time = c.global_time.saturating_add(1);
        let kind = if target.member == me {
            Kind::Own
        } else {
            Kind::Other
        };
        let kind_name = match kind {
            Kind::Own => "undo-own",
            Kind::Other => "undo-other",
        };
        // Undone by this member already: that undo (the binary-lowest of its own), whatever
        // the store says of the target now.
        if let Some((existing, _)) = c
            .undos
            .records_of(&target)
            .into_iter()
            .filter(|(record, _)| record.author == me)
            .min_by(|a, b| a.0.packet_order.cmp(&b.0.packet_order))
        {
            return Ok(UndoCreated {
                global_time: existing.global_time,
                kind: kind_name,
                existing: true,
                sent_to: 0,
            });
        }
        let not_stored = UndoError::NotStored {
            member: target.member,
            global_time: target.global_time,
        };
        let Some(meta) = meta.filter(|_| target.global_time < global_time) else {
            return Err(not_stored);
        };
        let name = definition.subject_name(crate::timeline::Subject::Community(meta));
        if !definition.is_undoable(meta) {
            return Err(UndoError::NotUndoable(name));
        }
        if kind == Kind::Other
            && !c
                .timeline
                .may_undo_other(me, meta, global_time)
                .is_allowed()
        {
            return Err(UndoError::NotPermitted(name));
        }
        let body = match kind {
            Kind::Own => Body::UndoOwn {
                target_global_time: target.global_time,
            },
            Kind::Other => Body::UndoOther {
                target: MemberRef::from_id(target.member),
                target_global_time: target.global_time,
            },
        };
        let message_type = body.message_type();
        let sequence = c
            .sequences
            .get(&message_type)
            .copied()
            .unwrap_or(0)
            .saturating_add(1);
        let message = authority::message(
            community,
            key.public().clone(),
            global_time,
            Some(sequence),
            body,
        );
        let signed = SignedMessage::sign(message, &[&key]).map_err(CreateError::from)?;
        super::collection::fits(&signed, max_datagram)?;
        c.claim_numbered(message_type, sequence);
        let (global_time, sent_to) = self.publish(now, community, signed, &[])?;
        Ok(UndoCreated {
            global_time,
            kind: kind_name,
            existing: false,
            sent_to,
        })
    }

    /// Built-in messages of `community` were stored (`stored` says where each came from): the
    /// undo-own and undo-other among `messages` go into its undo state; a superseded undo-own
    /// has the winner sent back to its sender (rule 6); targets not known yet are looked up
    /// ([`Event::UndoTargets`]); flips go to the driver ([`Event::Undone`]).
    pub(super) fn learn_undos(
        &mut self,
        community: CommunityId,
        messages: &[SignedMessage],
        stored: &[Stored],
    ) {
        let records: Vec<undo::Record> = messages
            .iter()
            .filter_map(|signed| authority::undo_record(&signed.message, &signed.packet))
            .collect();
        if records.is_empty() {
            return;
        }
        let sources: HashMap<(MemberId, u64), SocketAddr> = stored
            .iter()
            .filter_map(|s| Some(((s.member, s.global_time), s.source?)))
            .collect();
        let undos = records
            .into_iter()
            .map(|record| {
                let source = sources.get(&(record.author, record.global_time)).copied();
                (record, source)
            })
            .collect();
        self.insert_undos(community, undos);
    }

    /// Inserts `undos` (each with the address it came from) into the undo state of
    /// `community` and acts on the answers (see [`Node::learn_undos`]).
    fn insert_undos(
        &mut self,
        community: CommunityId,
        undos: Vec<(undo::Record, Option<SocketAddr>)>,
    ) {
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        let mut flips = Vec::new();
        let mut lookups = Vec::new();
        let mut winners: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for (record, source) in undos {
            let target = record.target;
            match c.undos.insert(record, &c.timeline) {
                Ok(Inserted::Waiting) => lookups.push((target, source)),
                Ok(Inserted::Held {
                    superseded_by,
                    flips: flipped,
                    ..
                }) => {
                    flips.extend(flipped);
                    let winner = superseded_by.and_then(|id| c.undos.record(&id));
                    if let (Some(winner), Some(to)) = (winner, source) {
                        winners.push((to, winner.packet_order.clone()));
                    }
                }
                Ok(Inserted::Duplicate) => {}
                Err(_) => c.stats.dropped.bump(DropReason::UndoRefused),
            }
        }
        for (to, packet) in winners {
            let session = self.sessions.id(&to).unwrap_or(0);
            self.send_collections(to, session, &[&packet]);
        }
        if !lookups.is_empty() {
            self.push_event(Event::UndoTargets {
                community,
                targets: lookups,
            });
        }
        self.emit_flips(community, flips);
    }

    /// The driver's store answered an [`Event::UndoTargets`] of `community`: for each target,
    /// the address its undo came from and the stored target's meta (`None`: not stored). A
    /// stored target is told to the undo state; one that is not is asked of the undo's sender
    /// with missing-message (when a sender is known).
    pub fn handle_undo_targets(
        &mut self,
        _now: Instant,
        community: CommunityId,
        found: Vec<(Target, Option<SocketAddr>, Option<u32>)>,
    ) {
        let (max_records, max_waiting) = (self.config.max_undos, self.config.max_undos_waiting);
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        let Some(definition) = c.definition.as_ref() else {
            return;
        };
        // A rebuild holds every stored undo waiting for a moment: the bound is the
        // configured one again from here on.
        c.undos = std::mem::take(&mut c.undos).with_limit(max_records, max_waiting);
        let mut flips = Vec::new();
        let mut ask = Vec::new();
        for (target, source, meta) in found {
            match meta {
                Some(meta) => {
                    let stored = undo::Stored {
                        target,
                        meta,
                        undoable: definition.is_undoable(meta),
                    };
                    flips.extend(c.undos.stored(stored, &c.timeline));
                }
                None => {
                    if let Some(to) = source.filter(|_| c.undos.awaits(&target)) {
                        ask.push((to, target));
                    }
                }
            }
        }
        ask.sort_unstable();
        ask.dedup();
        for (to, target) in ask {
            let request = Request::Message {
                member: target.member,
                global_time: target.global_time,
            };
            self.request(community, to, request);
        }
        self.emit_flips(community, flips);
    }

    /// A walk step of `community` goes to `peer`: up to [`REASK_PER_STEP`] targets that held
    /// undos still await (picked at random) are asked of it with missing-message. The undo's
    /// sender, asked first, may not have had the target; and every node that has it undone
    /// keeps it out of sync, so without asking again a node that lost the target would wait
    /// for it forever while the others hold it undone.
    pub(super) fn ask_awaited_targets(&mut self, community: CommunityId, peer: SocketAddr) {
        let Some(c) = self.communities.get(&community) else {
            return;
        };
        let mut awaited: Vec<Target> = c.undos.awaited().collect();
        if awaited.is_empty() {
            return;
        }
        let mut chosen = Vec::new();
        while chosen.len() < REASK_PER_STEP && !awaited.is_empty() {
            let k = self.rng.index(awaited.len());
            chosen.push(awaited.swap_remove(k));
        }
        for target in chosen {
            let request = Request::Message {
                member: target.member,
                global_time: target.global_time,
            };
            self.request(community, peer, request);
        }
    }

    /// Messages of `community` were stored: those that held undos await are told to the undo
    /// state (rule 2), and the flips go to the driver.
    pub(super) fn undo_targets_stored(&mut self, community: CommunityId, stored: &[Stored]) {
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        let Some(definition) = c.definition.as_ref() else {
            return;
        };
        let mut flips = Vec::new();
        for s in stored {
            let target = Target {
                member: s.member,
                global_time: s.global_time,
            };
            if c.undos.awaits(&target) {
                let stored = undo::Stored {
                    target,
                    meta: s.meta,
                    undoable: definition.is_undoable(s.meta),
                };
                flips.extend(c.undos.stored(stored, &c.timeline));
            }
        }
        self.emit_flips(community, flips);
    }

    /// Rebuilds the undo state of joined `community` from its stored undo `messages` (any
    /// order, any kinds: the others are skipped): every record waits until the driver tells
    /// where its target is ([`Event::UndoTargets`], with no sender).
    pub(super) fn rebuild_undos(&mut self, community: CommunityId, messages: &[SignedMessage]) {
        let (max_records, max_waiting) = (self.config.max_undos, self.config.max_undos_waiting);
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        let records: Vec<(undo::Record, Option<SocketAddr>)> = messages
            .iter()
            .filter_map(|signed| authority::undo_record(&signed.message, &signed.packet))
            .map(|record| (record, None))
            .collect();
        // Every record waits until the driver answers: the waiting bound is lifted until then.
        c.undos = Undos::new().with_limit(max_records, max_waiting.max(records.len()));
        self.insert_undos(community, records);
    }

    /// The undo state of `community` flipped `flips`: each goes to the driver as an
    /// [`Event::Undone`], the undo named by its author and global time.
    pub(super) fn emit_flips(&mut self, community: CommunityId, flips: Vec<Flip>) {
        if flips.is_empty() {
            return;
        }
        let Some(c) = self.communities.get(&community) else {
            return;
        };
        let flips: Vec<UndoFlip> = flips
            .into_iter()
            .map(|flip| UndoFlip {
                target: flip.target,
                undone_by: flip
                    .undone_by
                    .and_then(|id| c.undos.record(&id))
                    .map(|undo| Target {
                        member: undo.author,
                        global_time: undo.global_time,
                    }),
            })
            .collect();
        self.push_event(Event::Undone { community, flips });
    }

    /// The undo state of joined `community`: which stored messages are undone and by which
    /// undo (author and global time), in target order; `None` when not joined.
    pub fn undone(&self, community: &CommunityId) -> Option<Vec<UndoFlip>> {
        let c = self.communities.get(community)?;
        Some(
            c.undos
                .undone()
                .map(|(target, id)| UndoFlip {
                    target,
                    undone_by: c.undos.record(&id).map(|undo| Target {
                        member: undo.author,
                        global_time: undo.global_time,
                    }),
                })
                .collect(),
        )
    }

    /// The digest of the undo state of `community` ([`Undos::digest`]), if known: two nodes
    /// holding the same undos, targets and timeline have the same.
    pub fn undo_digest(&self, community: &CommunityId) -> Option<[u8; 32]> {
        self.communities.get(community).map(|c| c.undos.digest())
    }
}
