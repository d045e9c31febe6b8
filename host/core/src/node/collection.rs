//! Community messages in and out of the node: [`Node::create_message`] and the publishing of
//! what we (co-)created, and the collections received from peers, checked against the
//! community's definition, grouped by meta, relayed when their distribution says so, and handed
//! to the driver as [`Event::Messages`].

use std::net::SocketAddr;

use super::{CreateError, Created, Event, Incoming, Node};
use crate::identity::CommunityId;
use crate::meta::{Authentication, Destination, Distribution};
use crate::relay;
use crate::stats::DropReason;
use crate::time::Instant;
use crate::wire::{self, CommunityMessage, SignedMessage};

impl Node {
    /// Creates, signs and sends a member-authenticated message of meta `meta` carrying `payload`
    /// (already encoded by the plugin's current conversion). Persistent messages and, like the
    /// original's "update", every created message are also emitted as an [`Event::Messages`] with
    /// no source, so the plugin handles and the store keeps its own messages.
    pub fn create_message(
        &mut self,
        now: Instant,
        community: CommunityId,
        meta: &str,
        payload: Vec<u8>,
        candidates: &[SocketAddr],
    ) -> Result<Created, CreateError> {
        let key = self.key.clone();
        let max_datagram = self.config.max_datagram;
        let relay_budget = self.config.relay.hops;
        let (meta, conversion) = self.creatable(community, meta, Authentication::Member)?;
        if meta.destination == Destination::Candidate && candidates.is_empty() {
            return Err(CreateError::NoDestination(meta.name));
        }
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(CreateError::UnknownCommunity(community))?;
        let global_time = c.global_time + 1;
        let sequence_number = meta
            .distribution
            .has_sequence_numbers()
            .then(|| c.sequences.get(&meta.id).copied().unwrap_or(0) + 1);
        let message = CommunityMessage {
            community,
            message_type: meta.id,
            conversion,
            authors: vec![key.public().clone()],
            global_time,
            sequence_number,
            resolution_index: None,
            relay_hops: (meta.distribution == Distribution::Relay).then_some(relay_budget),
            payload,
        };
        let signed = SignedMessage::sign(message, &[&key])?;
        let datagram = wire::encode_collection(0, &[&signed.packet]);
        if datagram.len() + 8 > max_datagram {
            return Err(CreateError::TooLarge {
                len: datagram.len(),
                max: max_datagram,
            });
        }
        // Only now, with nothing left to fail, claim the global time and sequence number.
        c.claim_global_time();
        if sequence_number.is_some() {
            c.claim_sequence_number(meta.id);
        }
        let (global_time, sent_to) = self.publish(now, community, signed, candidates)?;
        Ok(Created {
            global_time,
            sequence_number,
            sent_to,
        })
    }

    /// The meta named `meta` of a joined community, if messages of `authentication` are
    /// created with it, and the conversion new messages use.
    pub(super) fn creatable(
        &self,
        community: CommunityId,
        meta: &str,
        authentication: Authentication,
    ) -> Result<(crate::meta::MetaMessage, wire::Conversion), CreateError> {
        let definition = self
            .communities
            .get(&community)
            .and_then(|c| c.definition.as_ref())
            .ok_or(CreateError::UnknownCommunity(community))?;
        let meta = definition
            .meta_by_name(meta)
            .ok_or_else(|| CreateError::UnknownMeta(meta.to_owned()))?
            .clone();
        if meta.authentication != authentication {
            return Err(CreateError::Authentication(meta.name));
        }
        Ok((meta, definition.conversions[0].clone()))
    }

    /// Sends a message this node (co-)created to its destination, and emits it as an
    /// [`Event::Messages`] with no source (the plugin handles and the store keeps our own
    /// messages). Returns its global time and how many candidates it went to.
    pub(super) fn publish(
        &mut self,
        now: Instant,
        community: CommunityId,
        signed: SignedMessage,
        candidates: &[SocketAddr],
    ) -> Result<(u64, usize), CreateError> {
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(CreateError::UnknownCommunity(community))?;
        let meta = c
            .meta(signed.message.message_type)
            .ok_or(CreateError::UnknownCommunity(community))?
            .clone();
        let mut destinations: Vec<SocketAddr> = candidates.to_vec();
        if let Destination::Community { node_count } = meta.destination {
            let extra = c.candidates.random_verified(
                now,
                &mut self.rng,
                usize::from(node_count) + destinations.len(),
                None,
            );
            for address in extra {
                if destinations.len() >= usize::from(node_count) + candidates.len() {
                    break;
                }
                if !destinations.contains(&address) {
                    destinations.push(address);
                }
            }
        }
        c.stats.messages_created += 1;
        c.last_activity = now;
        for (meta, below) in c.prune_thresholds() {
            self.events.push_back(Event::Prune {
                community,
                meta,
                below,
            });
        }
        let global_time = signed.message.global_time;
        let sent_to = destinations.len();
        let relay_hops = signed.message.relay_hops;
        if relay_hops.is_some() {
            // Our own relayed message coming back is neither handled nor forwarded.
            let max_seen = self.config.relay.max_seen;
            self.relayed
                .insert(crate::bloom::PacketHash::of(&signed.packet), max_seen);
        }
        for destination in destinations {
            // The collection carries the session with its destination (0 when there is none,
            // as for an explicit candidate we never walked with).
            let session = self.sessions.id(&destination).unwrap_or(0);
            let datagram = match relay_hops {
                Some(hops) => wire::encode_relay(session, &signed.packet, hops),
                None => wire::encode_collection(session, &[&signed.packet]),
            };
            self.send_bytes(destination, datagram);
        }
        self.push_event(Event::Messages {
            community,
            meta: meta.id,
            messages: vec![Incoming {
                message: signed,
                source: None,
                persistent: meta.distribution.is_persistent(),
            }],
        });
        Ok((global_time, sent_to))
    }

    pub(super) fn on_collection(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: u32,
        messages: Vec<SignedMessage>,
        relay_hops: Option<u32>,
    ) -> Result<(), DropReason> {
        // A collection names the session with its source, or none (0) when the sender has none
        // with us; a wrong one is a forgery or a stale peer.
        if session != 0 && !self.sessions.check(now, from, session) {
            return Err(DropReason::BadSession);
        }
        let Some(first) = messages.first() else {
            return Err(DropReason::EmptyCollection);
        };
        let id = first.message.community;
        let c = self
            .communities
            .get_mut(&id)
            .filter(|c| c.definition.is_some())
            .ok_or(DropReason::UnknownCommunity)?;
        c.last_activity = now;
        let Some(definition) = c.definition.as_ref() else {
            return Err(DropReason::UnknownCommunity);
        };
        let acceptable = c.acceptable_global_time(now, self.config.global_time_margin);
        // Group by meta, keeping arrival order within each meta.
        let mut batches: Vec<(u32, Vec<Incoming>)> = Vec::new();
        let mut forward: Vec<(Vec<u8>, u32)> = Vec::new();
        let mut highest = 0;
        for signed in messages {
            let m = &signed.message;
            let verdict = match definition.meta_by_id(m.message_type) {
                None => Err(DropReason::UnknownMeta),
                Some(meta) if meta.authentication.signers() != m.authors.len() => {
                    Err(DropReason::WrongAuthentication)
                }
                Some(meta)
                    if meta.distribution.has_sequence_numbers() != m.sequence_number.is_some() =>
                {
                    Err(DropReason::WrongSequenceHeader)
                }
                Some(meta)
                    if (meta.distribution == Distribution::Relay) != m.relay_hops.is_some() =>
                {
                    Err(DropReason::WrongRelayHeader)
                }
                Some(_) if !definition.conversions.contains(&m.conversion) => {
                    Err(DropReason::UnknownConversion)
                }
                Some(meta) if meta.distribution == Distribution::Relay => {
                    if self.relayed.insert(
                        crate::bloom::PacketHash::of(&signed.packet),
                        self.config.relay.max_seen,
                    ) {
                        if let Some(hops) = relay::remaining(relay_hops, m.relay_hops) {
                            forward.push((signed.packet.clone(), hops));
                        }
                        Ok(false)
                    } else {
                        Err(DropReason::RelayDuplicate)
                    }
                }
                Some(meta) if meta.distribution.is_persistent() && m.global_time > acceptable => {
                    Err(DropReason::GlobalTimeBeyondLimit)
                }
                Some(meta) if !c.is_active(meta, m.global_time) => Err(DropReason::Pruned),
                Some(meta) => Ok(meta.distribution.is_persistent()),
            };
            match verdict {
                Err(reason) => c.stats.dropped.bump(reason),
                Ok(persistent) => {
                    // Only stored messages move the clock (direct ones are not checked).
                    if persistent {
                        highest = highest.max(m.global_time);
                    }
                    let meta = m.message_type;
                    let incoming = Incoming {
                        message: signed,
                        source: Some(from),
                        persistent,
                    };
                    match batches.iter_mut().find(|(id, _)| *id == meta) {
                        Some((_, batch)) => batch.push(incoming),
                        None => batches.push((meta, vec![incoming])),
                    }
                }
            }
        }
        c.observe_global_time(highest);
        if !forward.is_empty() {
            let targets = c.candidates.random_verified(
                now,
                &mut self.rng,
                self.config.relay.fanout + 1,
                None,
            );
            let targets: Vec<SocketAddr> = targets
                .into_iter()
                .filter(|t| *t != from)
                .take(self.config.relay.fanout)
                .collect();
            c.stats.relayed += (forward.len() * targets.len()) as u64;
            for (packet, hops) in &forward {
                for to in &targets {
                    let session = self.sessions.id(to).unwrap_or(0);
                    let datagram = wire::encode_relay(session, packet, *hops);
                    self.send_bytes(*to, datagram);
                }
            }
        }
        let Some(c) = self.communities.get_mut(&id) else {
            return Err(DropReason::UnknownCommunity);
        };
        let prune = c.prune_thresholds();
        for (meta, below) in prune {
            self.push_event(Event::Prune {
                community: id,
                meta,
                below,
            });
        }
        for (meta, messages) in batches {
            if let Some(c) = self.communities.get_mut(&id) {
                c.stats.messages_received += messages.len() as u64;
            }
            self.push_event(Event::Messages {
                community: id,
                meta,
                messages,
            });
        }
        Ok(())
    }
}
