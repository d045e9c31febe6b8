//! Community messages in and out of the node: [`Node::create_message`], the plugin's check of
//! what we (co-)created ([`Node::handle_created_check`]) and its publishing, and the collections
//! received from peers, checked against the
//! community's definition, grouped by meta, relayed when their distribution says so, and handed
//! to the driver as [`Event::Messages`].

use std::net::SocketAddr;

use super::{CreateError, Created, Event, Incoming, Node, Refusal, RequestId};
use crate::authority::{self, Judgement};
use crate::identity::CommunityId;
use crate::meta::{Authentication, Destination, Distribution};
use crate::relay;
use crate::stats::DropReason;
use crate::time::Instant;
use crate::wire::{self, CommunityMessage, SignedMessage};

/// A message we created and signed, waiting for its plugin's check ([`Event::CheckCreated`]).
#[derive(Debug, Clone)]
pub(super) struct Checking {
    community: CommunityId,
    signed: SignedMessage,
    candidates: Vec<SocketAddr>,
    deadline: Instant,
}

/// A numbered message we created, waiting for the check of the previous number of its meta: it
/// is signed (and claims its number) only then, so a refused number is given to the next one.
#[derive(Debug, Clone)]
pub(super) struct Queued {
    request: RequestId,
    community: CommunityId,
    meta: String,
    meta_id: u32,
    /// The conversion the plugin chose; `None`: the community's first.
    conversion: Option<wire::Conversion>,
    payload: Vec<u8>,
    candidates: Vec<SocketAddr>,
    deadline: Instant,
}

impl Node {
    /// Forgets the messages of `community` we created that wait for their check or for their
    /// number (the community is left); returns their requests.
    pub(super) fn forget_created(&mut self, community: CommunityId) -> Vec<RequestId> {
        let mut forgotten: Vec<RequestId> = self
            .checking
            .iter()
            .filter(|(_, c)| c.community == community)
            .map(|(request, _)| *request)
            .collect();
        self.checking.retain(|_, c| c.community != community);
        forgotten.extend(
            self.queued
                .iter()
                .filter(|q| q.community == community)
                .map(|q| q.request),
        );
        self.queued.retain(|q| q.community != community);
        forgotten
    }

    /// Creates a member-authenticated message of meta `meta` carrying `payload` (already
    /// encoded by the plugin's current conversion): claims its global time, signs it and hands
    /// it to its plugin's check ([`Event::CheckCreated`]); nothing is sent or stored before the
    /// check passes it ([`Node::handle_created_check`]). [`Event::Created`] with the returned id
    /// tells what became of it. Once published, persistent messages and, like the original's
    /// "update", every created message are also emitted as an [`Event::Messages`] with no
    /// source, so the store keeps and the plugin handles its own messages.
    ///
    /// A numbered message takes its sequence number only when it is published; while an earlier
    /// message of the same meta waits for its check, it waits too (and is signed after it), so
    /// a refused message leaves no gap in the numbers.
    pub fn create_message(
        &mut self,
        now: Instant,
        community: CommunityId,
        meta: &str,
        payload: Vec<u8>,
        candidates: &[SocketAddr],
    ) -> Result<RequestId, CreateError> {
        self.create_message_in(now, community, meta, None, payload, candidates)
    }

    /// [`Node::create_message`] with `payload` written in `conversion`, which the plugin chose
    /// (the oldest of the community's conversions that carries it unchanged, so that nodes on
    /// older versions of the plugin read it); `None` is the community's first conversion. A
    /// conversion the community does not list is refused
    /// ([`CreateError::UnknownConversion`]).
    pub fn create_message_in(
        &mut self,
        now: Instant,
        community: CommunityId,
        meta: &str,
        conversion: Option<&[u8]>,
        payload: Vec<u8>,
        candidates: &[SocketAddr],
    ) -> Result<RequestId, CreateError> {
        if self.checking.len() + self.queued.len() >= self.config.max_checking {
            return Err(CreateError::Checking(self.config.max_checking));
        }
        let (meta, first) = self.creatable(community, meta, Authentication::Member)?;
        let chosen = match conversion {
            None => None,
            Some(bytes) => Some(self.conversion_of(community, bytes)?),
        };
        let conversion = chosen.clone().unwrap_or(first);
        if meta.destination == Destination::Candidate && candidates.is_empty() {
            return Err(CreateError::NoDestination(meta.name));
        }
        let request = self.next_request_id();
        if meta.distribution.has_sequence_numbers() && self.numbering(community, meta.id) {
            self.queued.push_back(Queued {
                request,
                community,
                meta: meta.name,
                meta_id: meta.id,
                conversion: chosen,
                payload,
                candidates: candidates.to_vec(),
                deadline: now + self.config.check_timeout,
            });
            return Ok(request);
        }
        let deadline = now + self.config.check_timeout;
        self.sign_created(
            request,
            community,
            &meta,
            conversion,
            payload,
            candidates.to_vec(),
            deadline,
        )?;
        Ok(request)
    }

    /// Whether a numbered message of `meta` we created waits for its check (or to be signed).
    fn numbering(&self, community: CommunityId, meta: u32) -> bool {
        self.checking.values().any(|c| {
            c.community == community
                && c.signed.message.message_type == meta
                && c.signed.message.sequence_number.is_some()
        }) || self
            .queued
            .iter()
            .any(|q| q.community == community && q.meta_id == meta)
    }

    /// Signs a new message with the next global time (claimed) and the next sequence number (not
    /// yet claimed) and asks its plugin to check it by `deadline`.
    #[allow(clippy::too_many_arguments)]
    fn sign_created(
        &mut self,
        request: RequestId,
        community: CommunityId,
        meta: &crate::meta::MetaMessage,
        conversion: wire::Conversion,
        payload: Vec<u8>,
        candidates: Vec<SocketAddr>,
        deadline: Instant,
    ) -> Result<(), CreateError> {
        let key = self.key.clone();
        let max_datagram = self.config.max_datagram;
        let relay_budget = self.config.relay.hops;
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(CreateError::UnknownCommunity(community))?;
        let global_time = c.global_time.saturating_add(1);
        if !c.permits(meta, &[key.member_id()]) {
            return Err(CreateError::NotPermitted(meta.name.clone()));
        }
        let sequence_number = meta.distribution.has_sequence_numbers().then(|| {
            c.sequences
                .get(&meta.id)
                .copied()
                .unwrap_or(0)
                .saturating_add(1)
        });
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
            authority: None,
        };
        let signed = SignedMessage::sign(message, &[&key])?;
        fits(&signed, max_datagram)?;
        // Only now, with nothing left to fail, claim the global time (the sequence number is
        // claimed when the message is published).
        c.claim_global_time();
        self.check_created(request, community, signed, candidates, deadline);
        Ok(())
    }

    /// Hands a signed message of ours to its plugin's check, and remembers it until the answer
    /// or `deadline`.
    pub(super) fn check_created(
        &mut self,
        request: RequestId,
        community: CommunityId,
        signed: SignedMessage,
        candidates: Vec<SocketAddr>,
        deadline: Instant,
    ) {
        let persistent = self
            .communities
            .get(&community)
            .and_then(|c| c.meta(signed.message.message_type))
            .is_some_and(|meta| meta.distribution.is_persistent());
        self.push_event(Event::CheckCreated {
            community,
            request,
            message: Incoming {
                message: signed.clone(),
                source: None,
                persistent,
            },
        });
        self.checking.insert(
            request,
            Checking {
                community,
                signed,
                candidates,
                deadline,
            },
        );
    }

    /// The plugin's check of the message we created as `request` ([`Event::CheckCreated`]):
    /// passed (`Ok`), it is published (and takes its sequence number); refused, nothing is sent
    /// or stored and the refusal is counted. Either way [`Event::Created`] reports it, and the
    /// next numbered message of its meta, if one waits, is signed and checked. An answer for an
    /// unknown or expired request is ignored.
    pub fn handle_created_check(
        &mut self,
        now: Instant,
        request: RequestId,
        verdict: Result<(), Refusal>,
    ) {
        let Some(checking) = self.checking.remove(&request) else {
            return;
        };
        let community = checking.community;
        let meta = checking.signed.message.message_type;
        let numbered = checking.signed.message.sequence_number.is_some();
        let result = match verdict {
            Ok(()) => self.publish_created(now, checking),
            Err(refusal) => {
                if let Some(c) = self.communities.get_mut(&community) {
                    c.stats.messages_refused += 1;
                }
                Err(CreateError::Refused(refusal))
            }
        };
        self.push_event(Event::Created {
            community,
            request,
            result,
        });
        if numbered {
            self.sign_queued(community, meta);
        }
    }

    /// Publishes a message its plugin passed, claiming its sequence number.
    fn publish_created(
        &mut self,
        now: Instant,
        checking: Checking,
    ) -> Result<Created, CreateError> {
        let Checking {
            community,
            signed,
            candidates,
            ..
        } = checking;
        let sequence_number = signed.message.sequence_number;
        let persistent = self
            .communities
            .get(&community)
            .and_then(|c| c.meta(signed.message.message_type))
            .is_some_and(|meta| meta.distribution.is_persistent());
        if let (Some(number), Some(c)) = (sequence_number, self.communities.get_mut(&community)) {
            let claimed = c.sequences.entry(signed.message.message_type).or_insert(0);
            *claimed = (*claimed).max(number);
        }
        let (global_time, sent_to) = self.publish(now, community, signed, &candidates)?;
        Ok(Created {
            global_time,
            persistent,
            sequence_number,
            sent_to,
        })
    }

    /// Signs the oldest numbered message of `meta` that waits for the previous number's check
    /// (one that cannot be signed any more is reported, and the next one tried).
    fn sign_queued(&mut self, community: CommunityId, meta: u32) {
        while let Some(position) = self
            .queued
            .iter()
            .position(|q| q.community == community && q.meta_id == meta)
        {
            let Some(queued) = self.queued.remove(position) else {
                return;
            };
            let signed = self
                .creatable(community, &queued.meta, Authentication::Member)
                .and_then(|(meta, first)| {
                    // The whole wait, queued and checked, is bounded by the one timeout.
                    self.sign_created(
                        queued.request,
                        community,
                        &meta,
                        queued.conversion.unwrap_or(first),
                        queued.payload,
                        queued.candidates,
                        queued.deadline,
                    )
                });
            match signed {
                Ok(()) => return,
                Err(error) => self.push_event(Event::Created {
                    community,
                    request: queued.request,
                    result: Err(error),
                }),
            }
        }
    }

    /// Gives up on created messages their plugin did not check in time (nothing is sent or
    /// stored), and on numbered ones that waited that long to be signed.
    pub(super) fn expire_checks(&mut self, now: Instant) {
        let timeout = u64::try_from(self.config.check_timeout.as_millis()).unwrap_or(u64::MAX);
        // Those waiting to be signed first, so that none of them is signed only to expire.
        while let Some(position) = self.queued.iter().position(|q| q.deadline <= now) {
            if let Some(queued) = self.queued.remove(position) {
                self.push_event(Event::Created {
                    community: queued.community,
                    request: queued.request,
                    result: Err(CreateError::CheckTimeout(timeout)),
                });
            }
        }
        let mut expired: Vec<RequestId> = self
            .checking
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for request in expired {
            let Some(checking) = self.checking.remove(&request) else {
                continue;
            };
            let community = checking.community;
            self.push_event(Event::Created {
                community,
                request,
                result: Err(CreateError::CheckTimeout(timeout)),
            });
            if checking.signed.message.sequence_number.is_some() {
                self.sign_queued(community, checking.signed.message.message_type);
            }
        }
    }

    /// The earliest deadline of a created message waiting for its check.
    pub(super) fn next_check_deadline(&self) -> Option<Instant> {
        let checking = self.checking.values().map(|c| c.deadline);
        let queued = self.queued.iter().map(|q| q.deadline);
        checking.chain(queued).min()
    }

    /// The meta named `meta` of a joined community, if messages of `authentication` are
    /// created with it, and the conversion new messages use. A destroyed community creates
    /// none ([`CreateError::Destroyed`]).
    pub(super) fn creatable(
        &self,
        community: CommunityId,
        meta: &str,
        authentication: Authentication,
    ) -> Result<(crate::meta::MetaMessage, wire::Conversion), CreateError> {
        let c = self
            .communities
            .get(&community)
            .ok_or(CreateError::UnknownCommunity(community))?;
        if c.destroyed.is_some() {
            return Err(CreateError::Destroyed(community));
        }
        let definition = c
            .definition
            .as_ref()
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

    /// `bytes` as one of the conversions of joined `community`.
    pub(super) fn conversion_of(
        &self,
        community: CommunityId,
        bytes: &[u8],
    ) -> Result<wire::Conversion, CreateError> {
        self.communities
            .get(&community)
            .and_then(|c| c.definition.as_ref())
            .ok_or(CreateError::UnknownCommunity(community))?
            .conversions
            .iter()
            .find(|c| c.as_bytes() == bytes)
            .cloned()
            .ok_or_else(|| {
                CreateError::UnknownConversion(bytes.iter().map(|b| format!("{b:02x}")).collect())
            })
    }

    /// Sends a message this node (co-)created to its destination, and emits it as an
    /// [`Event::Messages`] with no source (the plugin handles and the store keeps our own
    /// messages). Returns its global time and how many candidates it went to. A destroyed
    /// community publishes nothing but a hard destroy of a soft-destroyed one
    /// ([`CreateError::Destroyed`]).
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
        if c.destroyed
            .as_ref()
            .is_some_and(|d| !d.creates(signed.message.authority.as_ref()))
        {
            return Err(CreateError::Destroyed(community));
        }
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
        let mut unreadable: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut waiting: Vec<(Incoming, Vec<crate::timeline::RecordId>)> = Vec::new();
        for signed in messages {
            let m = &signed.message;
            let built_in = m.authority.is_some();
            // Hops a relayed message may still travel: forwarded only once it is allowed.
            let mut relay_on = None;
            // Authorize, revoke, dynamic-settings, undo-own, undo-other and destroy-community
            // are metas of every community: judged by the node, never given to the plugin.
            let destroy = match &m.authority {
                Some(authority::Body::Destroy(degree)) => Some(*degree),
                _ => None,
            };
            let verdict = match definition.meta_by_id(m.message_type) {
                // A destroyed community accepts nothing new, a frozen one nothing above its
                // freeze (crate::destroy, rules 1 and 2).
                _ if c.is_hard_destroyed() => Err(DropReason::Destroyed),
                _ if c
                    .destroyed
                    .as_ref()
                    .is_some_and(|d| !d.admits(m.global_time, destroy)) =>
                {
                    Err(DropReason::Frozen)
                }
                _ if built_in && !crate::meta::builtin::is_handled(m.message_type) => {
                    Err(DropReason::Unsupported)
                }
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
                Some(_) if !built_in && !definition.conversions.contains(&m.conversion) => {
                    Err(DropReason::UnknownConversion)
                }
                Some(meta) if meta.distribution == Distribution::Relay => {
                    if self.relayed.insert(
                        crate::bloom::PacketHash::of(&signed.packet),
                        self.config.relay.max_seen,
                    ) {
                        relay_on = relay::remaining(relay_hops, m.relay_hops);
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
            // The permission rules: the definition, then the timeline held now.
            let verdict = verdict.and_then(|persistent| {
                match authority::judge(&definition.metas, &c.timeline, m, &signed.packet) {
                    Judgement::Allowed => Ok(Some(persistent)),
                    Judgement::Drop(reason) => Err(reason),
                    Judgement::Wait { push } => {
                        let incoming = Incoming {
                            message: signed.clone(),
                            source: Some(from),
                            persistent,
                        };
                        waiting.push((incoming, push));
                        Ok(None)
                    }
                }
            });
            if let (Ok(Some(_)), Some(hops)) = (&verdict, relay_on) {
                forward.push((signed.packet.clone(), hops));
            }
            match verdict {
                Err(DropReason::UnknownConversion) => {
                    c.stats.dropped.bump(DropReason::UnknownConversion);
                    let conversion = m.conversion.as_bytes();
                    if c.stats.unreadable.record(
                        m.message_type,
                        conversion,
                        now,
                        self.config.max_unreadable,
                    ) {
                        unreadable.push((m.message_type, conversion.to_vec()));
                    }
                }
                Err(reason) => c.stats.dropped.bump(reason),
                Ok(None) => {}
                Ok(Some(persistent)) => {
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
        c.stats.messages_received += batches.iter().map(|(_, m)| m.len() as u64).sum::<u64>();
        for (meta, conversion) in unreadable {
            self.push_event(Event::Unreadable {
                community: id,
                meta,
                conversion,
            });
        }
        for (meta, below) in prune {
            self.push_event(Event::Prune {
                community: id,
                meta,
                below,
            });
        }
        for (meta, messages) in batches {
            self.push_event(Event::Messages {
                community: id,
                meta,
                messages,
            });
        }
        for (incoming, push) in waiting {
            self.wait_for_proof(now, id, incoming, &push);
        }
        Ok(())
    }
}

/// Refuses a message of ours whose one-message collection would not fit in a datagram of
/// `max_datagram` bytes (8 spare), before anything is claimed or sent.
pub(super) fn fits(signed: &SignedMessage, max_datagram: usize) -> Result<(), CreateError> {
    let len = wire::encode_collection(0, &[&signed.packet]).len();
    if len + 8 > max_datagram {
        return Err(CreateError::TooLarge {
            len,
            max: max_datagram,
        });
    }
    Ok(())
}
