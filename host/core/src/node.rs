//! The node: the sans-IO state machine of one Dispersy host.
//!
//! Inputs, each with the time it happened: [`Node::handle_datagram`] (bytes from a UDP address),
//! [`Node::handle_timeout`] (the time [`Node::poll_timeout`] asked for has come),
//! [`Node::join`] (a plugin's community), [`Node::create_message`] (a community creates a message).
//! Outputs, drained by the driver after every input: [`Node::poll_transmit`] (datagrams to send),
//! [`Node::poll_event`] (verified community messages for plugins and storage), and
//! [`Node::poll_timeout`].
//!
//! The walk implemented here is a step every `step_interval` per community: choose a candidate
//! (or a tracker when nobody is known), send an introduction-request; the responder answers with
//! an introduction-response naming another peer and sends that peer a puncture-request; the peer
//! sends a puncture, opening its NAT towards the requester. Walk identifiers are checked end to
//! end, unanswered requests time out.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::candidate;
use crate::community::{Community, Definition, DefinitionError, PendingWalk, Resume};
use crate::identity::{CommunityId, KeyPair};
use crate::meta::{Authentication, Destination};
use crate::rng::Rng;
use crate::stats::Stats;
use crate::time::Instant;
use crate::wire::{
    self, CommunityMessage, ConnectionType, IntroductionRequest, IntroductionResponse, Packet,
    Puncture, PunctureRequest, SignedMessage,
};

/// The node's tunables. Defaults are the original's values (DESIGN.md §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest datagram sent or accepted.
    pub max_datagram: usize,
    /// Time between two walk steps of a community.
    pub step_interval: Duration,
    /// How long an introduction-request waits for its response.
    pub request_timeout: Duration,
    /// How often obsolete candidates are removed.
    pub cleanup_interval: Duration,
    /// Candidate lifetimes and bound.
    pub candidates: candidate::Config,
    /// Bootstrap addresses.
    pub trackers: Vec<SocketAddr>,
    /// Tracker role: answer introductions for any community, walk nowhere, handle no messages.
    pub tracker: bool,
    /// Most communities kept (a tracker creates one per community id it is asked about).
    pub max_communities: usize,
    /// Most outstanding introduction-requests per community.
    pub max_pending_walks: usize,
    /// Most datagrams queued for the driver.
    pub max_transmits: usize,
    /// Most events queued for the driver.
    pub max_events: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_datagram: wire::DEFAULT_MAX_DATAGRAM,
            step_interval: Duration::from_secs(5),
            request_timeout: Duration::from_millis(10_500),
            cleanup_interval: Duration::from_secs(300),
            candidates: candidate::Config::default(),
            trackers: Vec::new(),
            tracker: false,
            max_communities: 10_000,
            max_pending_walks: 64,
            max_transmits: 65_536,
            max_events: 65_536,
        }
    }
}

/// A datagram for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// A verified community message, for the community's plugin (and storage when persistent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The message and its packet bytes.
    pub message: SignedMessage,
    /// The address it came from; `None` for a message this node created.
    pub source: Option<SocketAddr>,
    /// Whether its distribution stores it.
    pub persistent: bool,
}

/// What the node tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Messages of one community and meta, in arrival order, for check, storage and handling.
    Messages {
        /// The community.
        community: CommunityId,
        /// The meta-message type.
        meta: u32,
        /// The messages.
        messages: Vec<Incoming>,
    },
}

/// Why a community could not be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The definition is invalid.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// Already joined with a definition.
    #[error("community {0} is already joined")]
    AlreadyJoined(CommunityId),
    /// The community table is full.
    #[error("community limit ({0}) reached")]
    Full(usize),
}

/// Why a message could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// Not joined.
    #[error("unknown community {0}")]
    UnknownCommunity(CommunityId),
    /// No such meta-message.
    #[error("community has no meta-message {0:?}")]
    UnknownMeta(String),
    /// The meta needs a co-signer or no signature; not created through this call.
    #[error("meta-message {0:?} is not member-authenticated")]
    Authentication(String),
    /// Candidate destination without candidates.
    #[error("meta-message {0:?} has a candidate destination: name at least one candidate")]
    NoDestination(String),
    /// The message does not fit a datagram.
    #[error("message of {len} bytes does not fit the {max}-byte datagram budget")]
    TooLarge {
        /// Packet length.
        len: usize,
        /// Budget.
        max: usize,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] wire::SignError),
}

/// A message this node created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its global time.
    pub global_time: u64,
    /// Its sequence number, if its meta numbers messages.
    pub sequence_number: Option<u32>,
    /// How many candidates it was sent to.
    pub sent_to: usize,
}

/// The state machine of one host. See the module documentation.
#[derive(Debug)]
pub struct Node {
    config: Config,
    key: KeyPair,
    rng: Rng,
    /// Our LAN address (the bound socket address as the driver knows it).
    lan: SocketAddr,
    /// Our WAN address as peers report it.
    wan: SocketAddr,
    connection_type: ConnectionType,
    communities: HashMap<CommunityId, Community>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    next_cleanup: Instant,
}

impl Node {
    /// A node with identity `key`, bound at `local`, whose random choices all derive from `seed`.
    pub fn new(config: Config, key: KeyPair, local: SocketAddr, seed: u64, now: Instant) -> Self {
        Node {
            next_cleanup: now + config.cleanup_interval,
            config,
            key,
            rng: Rng::new(seed),
            lan: local,
            wan: local,
            connection_type: ConnectionType::Unknown,
            communities: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's member key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// Our LAN address.
    pub fn lan_address(&self) -> SocketAddr {
        self.lan
    }

    /// Our WAN address as the last peer that answered us saw it.
    pub fn wan_address(&self) -> SocketAddr {
        self.wan
    }

    /// Our connection type.
    pub fn connection_type(&self) -> ConnectionType {
        self.connection_type
    }

    /// Node-wide counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The community `id`, if known.
    pub fn community(&self, id: &CommunityId) -> Option<&Community> {
        self.communities.get(id)
    }

    /// All known communities.
    pub fn communities(&self) -> impl Iterator<Item = &Community> {
        self.communities.values()
    }

    /// Joins the community a plugin defines; walking starts at the next timeout.
    pub fn join(
        &mut self,
        now: Instant,
        definition: Definition,
        resume: Resume,
    ) -> Result<CommunityId, JoinError> {
        definition.validate()?;
        let id = definition.id();
        if let Some(existing) = self.communities.get_mut(&id) {
            if existing.definition.is_some() {
                return Err(JoinError::AlreadyJoined(id));
            }
            existing.definition = Some(definition);
            existing.observe_global_time(resume.global_time);
            return Ok(id);
        }
        if self.communities.len() >= self.config.max_communities {
            return Err(JoinError::Full(self.config.max_communities));
        }
        let community = Community::new(
            id,
            Some(definition),
            resume,
            self.config.candidates.clone(),
            now,
        );
        self.communities.insert(id, community);
        Ok(id)
    }

    /// Handles one received datagram: decode, verify, then act. Anything wrong is dropped and
    /// counted in [`Node::stats`].
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let decoded = wire::decode(bytes, self.config.max_datagram);
        self.handle_decoded(now, from, bytes.len(), decoded);
    }

    /// Handles the result of [`wire::decode`] run elsewhere (decoding and signature checks may
    /// run on other threads; the [`Packet`] type guarantees they happened). `len` is the
    /// datagram's size, for the counters.
    pub fn handle_decoded(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        decoded: Result<Packet, wire::DecodeError>,
    ) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += len as u64;
        if !is_valid_source(from) || from == self.lan {
            self.stats.dropped.bump("invalid-source");
            return;
        }
        match decoded {
            Ok(packet) => self.handle_packet(now, from, packet),
            Err(error) => self.stats.dropped.bump(error.kind()),
        }
    }

    /// Adds `address` as an introduced candidate of `community` (a peer given in configuration):
    /// the walker visits it like any introduced peer, and forgets it if it never answers.
    pub fn add_candidate(
        &mut self,
        now: Instant,
        community: CommunityId,
        address: SocketAddr,
    ) -> Result<(), candidate::AddError> {
        if !is_valid_source(address) || address == self.lan {
            return Ok(());
        }
        if let Some(c) = self.communities.get_mut(&community) {
            c.candidates.entry(address, now)?.last_intro = Some(now);
        }
        Ok(())
    }

    fn handle_packet(&mut self, now: Instant, from: SocketAddr, packet: Packet) {
        let name = packet.name();
        let accepted = match packet {
            Packet::IntroductionRequest(m) => self.on_introduction_request(now, from, m),
            Packet::IntroductionResponse(m) => self.on_introduction_response(now, from, m),
            Packet::PunctureRequest(m) => self.on_puncture_request(now, from, m),
            Packet::Puncture(m) => self.on_puncture(now, from, m),
            Packet::Collection(c) => self.on_collection(now, from, c.messages),
        };
        match accepted {
            Ok(()) => self.stats.packets.bump(name),
            Err(reason) => self.stats.dropped.bump(reason),
        }
    }

    /// Runs what is due at `now`: walk steps, request timeouts, candidate cleanup.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cleanup = now >= self.next_cleanup;
        if cleanup {
            self.next_cleanup = now + self.config.cleanup_interval;
        }
        let mut ids: Vec<CommunityId> = self.communities.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.expire_walks(now, id);
            if cleanup {
                self.cleanup(now, id);
            }
            let due = self
                .communities
                .get(&id)
                .is_some_and(|c| c.definition.is_some() && c.next_step <= now);
            if due && !self.config.tracker {
                self.take_step(now, id);
            }
        }
    }

    /// The next time [`Node::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = Some(self.next_cleanup);
        for community in self.communities.values() {
            if community.definition.is_some() && !self.config.tracker {
                next = next.min(Some(community.next_step));
            }
            for walk in community.pending_walks.values() {
                next = next.min(Some(walk.deadline));
            }
        }
        next
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

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
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(CreateError::UnknownCommunity(community))?;
        let definition = c
            .definition
            .as_ref()
            .ok_or(CreateError::UnknownCommunity(community))?;
        let meta = definition
            .meta_by_name(meta)
            .ok_or_else(|| CreateError::UnknownMeta(meta.to_owned()))?
            .clone();
        if meta.authentication != Authentication::Member {
            return Err(CreateError::Authentication(meta.name));
        }
        let conversion = definition.conversions[0].clone();
        let mut destinations: Vec<SocketAddr> = candidates.to_vec();
        match meta.destination {
            Destination::Candidate if destinations.is_empty() => {
                return Err(CreateError::NoDestination(meta.name));
            }
            Destination::Candidate => {}
            Destination::Community { node_count } => {
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
        }
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
            relay_hops: None,
            payload,
        };
        let signed = SignedMessage::sign(message, &[&key])?;
        let datagram = wire::encode_collection(0, &[&signed.packet]);
        if datagram.len() > max_datagram {
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
        c.stats.messages_created += 1;
        c.last_activity = now;
        let sent_to = destinations.len();
        for destination in destinations {
            self.send_bytes(destination, datagram.clone());
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
        Ok(Created {
            global_time,
            sequence_number,
            sent_to,
        })
    }

    fn take_step(&mut self, now: Instant, id: CommunityId) {
        let step_interval = self.config.step_interval;
        let max_pending = self.config.max_pending_walks;
        let tracker_delay = self.config.candidates.tracker_eligible_delay;
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        c.next_step = now + step_interval;
        if c.pending_walks.len() >= max_pending {
            return;
        }
        let target = match c.candidates.choose_walk(now, &mut self.rng) {
            // 0.5 % of the steps go to a tracker even when peers are known (seed: bootstrap).
            Some(peer) if self.config.trackers.is_empty() || self.rng.unit() >= 0.005 => Some(peer),
            peer => {
                let eligible: Vec<SocketAddr> = self
                    .config
                    .trackers
                    .iter()
                    .copied()
                    .filter(|t| {
                        c.tracker_walks
                            .get(t)
                            .is_none_or(|at| now.saturating_since(*at) >= tracker_delay)
                    })
                    .collect();
                if eligible.is_empty() {
                    peer
                } else {
                    Some(eligible[self.rng.index(eligible.len())])
                }
            }
        };
        let Some(target) = target else {
            return;
        };
        if self.config.trackers.contains(&target) {
            c.tracker_walks.insert(target, now);
        } else if let Ok(candidate) = c.candidates.entry(target, now) {
            candidate.last_walk_attempt = Some(now);
        }
        let walk = loop {
            let walk = self.rng.nonzero_u32();
            if !c.pending_walks.contains_key(&walk) {
                break walk;
            }
        };
        c.pending_walks.insert(
            walk,
            PendingWalk {
                destination: target,
                deadline: now + self.config.request_timeout,
            },
        );
        c.stats.walk_attempts += 1;
        let request = IntroductionRequest {
            community: id,
            member: self.key.public().clone(),
            session: 0,
            walk,
            random: self.rng.nonzero_u32(),
            global_time: c.global_time,
            destination: target,
            source_lan: self.lan,
            source_wan: self.wan,
            connection_type: self.connection_type,
            advice: true,
            sync: None,
        };
        self.send(target, Packet::IntroductionRequest(request));
    }

    fn expire_walks(&mut self, now: Instant, id: CommunityId) {
        if let Some(c) = self.communities.get_mut(&id) {
            let before = c.pending_walks.len();
            c.pending_walks.retain(|_, walk| walk.deadline > now);
            c.stats.walk_failures += (before - c.pending_walks.len()) as u64;
        }
    }

    fn cleanup(&mut self, now: Instant, id: CommunityId) {
        let idle = self.config.candidates.walk_lifetime * 6;
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        c.candidates.cleanup(now);
        if c.definition.is_none() && now.saturating_since(c.last_activity) > idle {
            self.communities.remove(&id);
        }
    }

    fn on_introduction_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: IntroductionRequest,
    ) -> Result<(), &'static str> {
        let my_lan = self.lan;
        let my_wan = self.wan;
        let connection_type = self.connection_type;
        let member = self.key.public().clone();
        let c = community_for(&mut self.communities, &self.config, now, request.community)?;
        let requester_lan = resolve(request.source_lan, from);
        let candidate = c
            .candidates
            .entry(from, now)
            .map_err(|_| "candidate-table-full")?;
        candidate.last_stumble = Some(now);
        candidate.member = Some(request.member.member_id());
        candidate.lan = requester_lan;
        candidate.wan = from;
        candidate.connection_type = request.connection_type;
        candidate.global_time = request.global_time;
        c.stats.stumbles += 1;
        let introduced = if request.advice {
            c.candidates
                .random_verified(now, &mut self.rng, 1, Some(from))
                .first()
                .and_then(|a| c.candidates.get(a))
                .map(|chosen| (chosen.address, chosen.lan, chosen.wan))
        } else {
            None
        };
        let global_time = c.global_time;
        let community = c.id;
        let response = IntroductionResponse {
            community,
            member,
            session: request.session,
            walk: request.walk,
            global_time,
            destination: from,
            source_lan: my_lan,
            source_wan: my_wan,
            connection_type,
            introduced: introduced.map(|(_, lan, wan)| (lan, wan)),
        };
        self.send(from, Packet::IntroductionResponse(response));
        if let Some((address, _, _)) = introduced {
            let puncture_request = PunctureRequest {
                community,
                session: 0,
                walk: request.walk,
                random: request.random,
                global_time,
                initiator_lan: requester_lan,
                initiator_wan: from,
            };
            self.send(address, Packet::PunctureRequest(puncture_request));
        }
        Ok(())
    }

    fn on_introduction_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        response: IntroductionResponse,
    ) -> Result<(), &'static str> {
        let is_tracker = self.config.trackers.contains(&from);
        let my_lan = self.lan;
        let c = self
            .communities
            .get_mut(&response.community)
            .ok_or("unknown-community")?;
        match c.pending_walks.get(&response.walk) {
            Some(walk) if walk.destination == from => {}
            Some(_) => return Err("response-from-wrong-address"),
            None => return Err("unexpected-response"),
        }
        c.pending_walks.remove(&response.walk);
        c.stats.walk_successes += 1;
        c.last_activity = now;
        if !is_tracker {
            let candidate = c
                .candidates
                .entry(from, now)
                .map_err(|_| "candidate-table-full")?;
            candidate.last_walk = Some(now);
            candidate.member = Some(response.member.member_id());
            candidate.lan = resolve(response.source_lan, from);
            candidate.wan = from;
            candidate.connection_type = response.connection_type;
            candidate.global_time = response.global_time;
        }
        if let Some((lan, wan)) = response.introduced {
            let wan_known = is_valid_source(wan);
            // A peer behind the same NAT as we are is reached on its LAN address.
            let address = if wan_known && wan.ip() != self.wan.ip() {
                wan
            } else {
                lan
            };
            let known_address = address == my_lan || address == self.wan;
            let is_tracker = self.config.trackers.contains(&address);
            if is_valid_source(address) && !known_address && !is_tracker {
                let candidate = c
                    .candidates
                    .entry(address, now)
                    .map_err(|_| "candidate-table-full")?;
                candidate.last_intro = Some(now);
                candidate.lan = lan;
                candidate.wan = wan;
            }
        }
        if is_valid_source(response.destination) {
            self.wan = response.destination;
        }
        Ok(())
    }

    fn on_puncture_request(
        &mut self,
        _now: Instant,
        _from: SocketAddr,
        request: PunctureRequest,
    ) -> Result<(), &'static str> {
        let c = self
            .communities
            .get(&request.community)
            .filter(|c| c.definition.is_some())
            .ok_or("unknown-community")?;
        let target = if request.initiator_wan.ip() == self.wan.ip()
            && is_valid_source(request.initiator_lan)
        {
            request.initiator_lan
        } else {
            request.initiator_wan
        };
        if !is_valid_source(target) {
            return Err("invalid-address");
        }
        let puncture = Puncture {
            community: c.id,
            member: self.key.public().clone(),
            session: 0,
            walk: request.walk,
            random: request.random,
            source_lan: self.lan,
            source_wan: self.wan,
        };
        self.send(target, Packet::Puncture(puncture));
        Ok(())
    }

    fn on_puncture(
        &mut self,
        now: Instant,
        from: SocketAddr,
        puncture: Puncture,
    ) -> Result<(), &'static str> {
        let c = self
            .communities
            .get_mut(&puncture.community)
            .filter(|c| c.definition.is_some())
            .ok_or("unknown-community")?;
        let candidate = c
            .candidates
            .entry(from, now)
            .map_err(|_| "candidate-table-full")?;
        candidate.last_intro = Some(now);
        candidate.member = Some(puncture.member.member_id());
        candidate.lan = resolve(puncture.source_lan, from);
        candidate.wan = from;
        Ok(())
    }

    fn on_collection(
        &mut self,
        now: Instant,
        from: SocketAddr,
        messages: Vec<SignedMessage>,
    ) -> Result<(), &'static str> {
        let Some(first) = messages.first() else {
            return Err("empty-collection");
        };
        let id = first.message.community;
        let c = self
            .communities
            .get_mut(&id)
            .filter(|c| c.definition.is_some())
            .ok_or("unknown-community")?;
        c.last_activity = now;
        let Some(definition) = c.definition.as_ref() else {
            return Err("unknown-community");
        };
        // Group by meta, keeping arrival order within each meta.
        let mut batches: Vec<(u32, Vec<Incoming>)> = Vec::new();
        let mut highest = 0;
        for signed in messages {
            let m = &signed.message;
            let verdict = match definition.meta_by_id(m.message_type) {
                None => Err("unknown-meta"),
                Some(meta) if meta.authentication.signers() != m.authors.len() => {
                    Err("wrong-authentication")
                }
                Some(meta)
                    if meta.distribution.has_sequence_numbers() != m.sequence_number.is_some() =>
                {
                    Err("wrong-sequence-header")
                }
                Some(_) if !definition.conversions.contains(&m.conversion) => {
                    Err("unknown-conversion")
                }
                Some(meta) => Ok(meta.distribution.is_persistent()),
            };
            match verdict {
                Err(reason) => c.stats.dropped.bump(reason),
                Ok(persistent) => {
                    highest = highest.max(m.global_time);
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

    fn send(&mut self, destination: SocketAddr, packet: Packet) {
        let bytes = packet.encode(&self.key);
        self.send_bytes(destination, bytes);
    }

    fn send_bytes(&mut self, destination: SocketAddr, bytes: Vec<u8>) {
        if self.transmits.len() >= self.config.max_transmits {
            self.stats.dropped.bump("transmit-queue-full");
            return;
        }
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.transmits.push_back(Transmit { destination, bytes });
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.max_events {
            self.stats.dropped.bump("event-queue-full");
            return;
        }
        self.events.push_back(event);
    }
}

/// The community of an incoming walker message; a tracker creates bare ones on demand.
fn community_for<'a>(
    communities: &'a mut HashMap<CommunityId, Community>,
    config: &Config,
    now: Instant,
    id: CommunityId,
) -> Result<&'a mut Community, &'static str> {
    if !communities.contains_key(&id) {
        if !config.tracker {
            return Err("unknown-community");
        }
        if communities.len() >= config.max_communities {
            return Err("community-limit");
        }
        let bare = Community::new(id, None, Resume::default(), config.candidates.clone(), now);
        communities.insert(id, bare);
    }
    let c = communities.get_mut(&id).ok_or("unknown-community")?;
    c.last_activity = now;
    Ok(c)
}

/// Whether `address` can be a peer's address: a unicast IP and a non-zero port.
pub fn is_valid_source(address: SocketAddr) -> bool {
    let ip_ok = match address.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    };
    ip_ok && address.port() != 0
}

/// A reported address whose IP is unspecified (a node bound to 0.0.0.0 does not know its own IP)
/// is completed with the IP the packet came from.
fn resolve(reported: SocketAddr, seen_from: SocketAddr) -> SocketAddr {
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
