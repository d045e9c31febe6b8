//! The node's side of the walk (the rules are in [`crate::walker`]): walk steps, the
//! introduction-request / -response, session-request / -response, puncture-request / puncture
//! handlers, walk timeouts and cleanup, and the WAN address votes the responses carry.

use std::net::SocketAddr;

use super::{Config, Node};
use crate::address;
use crate::community::{Community, Resume};
use crate::identity::CommunityId;
use crate::stats::DropReason;
use crate::time::Instant;
use crate::walker::{choose_introduce, resolve};
use crate::wire::{
    IntroductionRequest, IntroductionResponse, Packet, Puncture, PunctureRequest, SESSION_VERSION,
    SessionRequest, SessionResponse,
};

impl Node {
    /// One walk step in community `id`: choose a candidate (or a tracker) and send it an
    /// introduction-request.
    pub(super) fn take_step(&mut self, now: Instant, id: CommunityId) {
        let config = &self.config;
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        let fast =
            now < c.fast_until && c.candidates.verified(now).count() < config.fast_walker_target;
        c.next_step = now
            + if fast {
                config.fast_step_interval
            } else {
                config.step_interval
            };
        // A hard-destroyed community walks no more (crate::destroy, rule 1).
        if c.pending_walks.len() >= config.max_pending_walks || c.is_hard_destroyed() {
            return;
        }
        let tracker_delay = config.candidates.tracker_eligible_delay;
        let peer = c.candidates.choose_walk(now, &mut self.rng);
        // A fast walker with nobody eligible would idle; it asks a tracker again instead of
        // waiting for the tracker's eligible delay.
        let starving = fast && peer.is_none();
        let target = match peer {
            // The seed's 0.5 % bootstrap share: a tracker now and then even when peers are known.
            Some(peer) if config.trackers.is_empty() || self.rng.unit() >= 0.005 => Some(peer),
            peer => {
                // A tracker that answered rests for its eligible delay; one that did not answer
                // may be tried again as soon as the last request timed out.
                let eligible: Vec<SocketAddr> = config
                    .trackers
                    .iter()
                    .copied()
                    .filter(|t| {
                        let rested = starving
                            || c.tracker_walks
                                .get(t)
                                .is_none_or(|at| now.saturating_since(*at) >= tracker_delay);
                        let waiting = c
                            .pending_walks
                            .values()
                            .any(|w| w.destination == *t && !w.answered);
                        rested && !waiting
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
        if !config.trackers.contains(&target)
            && let Ok(candidate) = c.candidates.entry(target, now)
        {
            candidate.last_walk_attempt = Some(now);
        }
        c.stats.walk_attempts += 1;
        if let Some(request) = self.introduction_request(now, id, target, false) {
            self.send_request(now, id, target, request);
        }
        if !self.config.trackers.contains(&target) {
            self.ask_awaited_targets(id, target);
        }
    }

    /// Registers an introduction-request of community `id` to `target` under a fresh walk
    /// identifier and builds it, without its sync part: a walk step, or with `sync_only` a
    /// request that only carries a filter (no introduction asked, not counted as a walk).
    pub(super) fn introduction_request(
        &mut self,
        now: Instant,
        id: CommunityId,
        target: SocketAddr,
        sync_only: bool,
    ) -> Option<IntroductionRequest> {
        let (source_lan, source_wan) = (self.lan, self.wan_address());
        let connection_type = self.connection_type();
        let session = self.sessions.id(&target).unwrap_or(0);
        let member = self.key.public().clone();
        let deadline = now + self.config.request_timeout;
        let c = self.communities.get_mut(&id)?;
        let (walk, random) = c.start_walk(&mut self.rng, target, deadline, sync_only);
        Some(IntroductionRequest {
            community: id,
            member,
            session,
            walk,
            random,
            global_time: c.global_time,
            destination: target,
            source_lan,
            source_wan,
            connection_type,
            advice: !sync_only,
            sync: None,
        })
    }

    /// Forgets walks past their deadline; an unanswered one is a failure.
    pub(super) fn expire_walks(&mut self, now: Instant, id: CommunityId) {
        if let Some(c) = self.communities.get_mut(&id) {
            let mut failures = 0;
            c.pending_walks.retain(|_, walk| {
                let keep = walk.deadline > now;
                if !keep && !walk.answered && !walk.sync_only {
                    failures += 1;
                }
                keep
            });
            c.stats.walk_failures += failures;
        }
    }

    /// Removes obsolete candidates; a tracker forgets communities idle for long.
    pub(super) fn cleanup(&mut self, now: Instant, id: CommunityId) {
        let obsolete_after = self.config.candidate_obsolete_after;
        let idle = self.config.candidates.walk_lifetime * 6;
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        c.candidates.cleanup(now, obsolete_after);
        if c.definition.is_none() && now.saturating_since(c.last_activity) > idle {
            self.communities.remove(&id);
        }
    }

    /// Step 1 at B: answer at once over an established session, else start the handshake.
    pub(super) fn on_introduction_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: IntroductionRequest,
    ) -> Result<(), DropReason> {
        if request.member.member_id() == self.key.member_id() {
            return Err(DropReason::OwnMember);
        }
        community_for(&mut self.communities, &self.config, now, request.community)?;
        if self.sessions.check(now, from, request.session) {
            return self.answer(now, from, request.session, request);
        }
        let random = self.rng.nonzero_u32();
        let session_request = SessionRequest {
            community: request.community,
            version: SESSION_VERSION,
            walk: request.walk,
            random,
            destination: from,
            source_lan: self.lan,
            source_wan: self.wan_address(),
        };
        self.sessions.start(now, from, random, request);
        self.send(from, Packet::SessionRequest(session_request));
        Ok(())
    }

    /// Step 2 at A: B asks us to prove our address for walk W. We answer only for a walk we
    /// started towards B.
    pub(super) fn on_session_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: SessionRequest,
    ) -> Result<(), DropReason> {
        let c = self
            .communities
            .get(&request.community)
            .ok_or(DropReason::UnknownCommunity)?;
        match c.pending_walks.get(&request.walk) {
            Some(walk) if walk.destination == from => {}
            _ => return Err(DropReason::UnexpectedSessionRequest),
        }
        if request.version != SESSION_VERSION {
            return Err(DropReason::UnsupportedSessionVersion);
        }
        let random = loop {
            let random = self.rng.nonzero_u32();
            if random.wrapping_add(request.random) != 0 {
                break random;
            }
        };
        self.sessions
            .establish(now, from, random.wrapping_add(request.random));
        self.vote(now, from, request.destination);
        let response = SessionResponse {
            community: request.community,
            version: SESSION_VERSION,
            walk: request.walk,
            random,
        };
        self.send(from, Packet::SessionResponse(response));
        Ok(())
    }

    /// Step 2 at B: A proved its address; answer the request that waited.
    pub(super) fn on_session_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        response: SessionResponse,
    ) -> Result<(), DropReason> {
        let (session, request) = self
            .sessions
            .complete(now, from, response.walk, response.random)
            .ok_or(DropReason::UnexpectedSessionResponse)?;
        if request.community != response.community {
            return Err(DropReason::UnexpectedSessionResponse);
        }
        if let Some(c) = self.communities.get_mut(&request.community) {
            c.stats.handshakes += 1;
        }
        self.answer(now, from, session, request)
    }

    /// Steps 3 and 4 at B, for a requester whose address is proven by `session`.
    fn answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: u32,
        request: IntroductionRequest,
    ) -> Result<(), DropReason> {
        self.vote(now, from, request.destination);
        if self.answer_destroyed(request.community, from, session) {
            return Ok(());
        }
        let interfaces = self.config.interfaces.clone();
        let lan = self.lan;
        let wan = self.wan_address();
        let connection_type = self.connection_type();
        let member = self.key.public().clone();
        let c = community_for(&mut self.communities, &self.config, now, request.community)?;
        let (requester_lan, requester_wan) = address::estimate(
            &interfaces,
            from,
            resolve(request.source_lan, from),
            request.source_wan,
        );
        let candidate = c
            .candidates
            .entry(from, now)
            .map_err(|_| DropReason::CandidateTableFull)?;
        candidate.last_stumble = Some(now);
        candidate.member = Some(request.member.member_id());
        candidate.lan = requester_lan;
        candidate.wan = requester_wan;
        candidate.connection_type = request.connection_type;
        candidate.global_time = request.global_time;
        c.stats.stumbles += 1;
        let requester = (
            from,
            request.member.member_id(),
            requester_wan,
            request.connection_type,
        );
        let introduced = if request.advice {
            choose_introduce(c, now, &mut self.rng, requester, |a| {
                self.sessions.id(a).is_some()
            })
        } else {
            None
        };
        if introduced.is_none() {
            c.stats.responses_without_introduction += 1;
        }
        let global_time = c.global_time;
        let community = c.id;
        let response = IntroductionResponse {
            community,
            member,
            session,
            walk: request.walk,
            global_time,
            destination: from,
            source_lan: lan,
            source_wan: wan,
            connection_type,
            introduced: introduced.map(|i| (i.lan, i.wan)),
        };
        self.send(from, Packet::IntroductionResponse(response));
        if let Some(introduced) = introduced {
            let puncture_request = PunctureRequest {
                community,
                session: self.sessions.id(&introduced.address).unwrap_or(0),
                walk: request.walk,
                random: request.random,
                global_time,
                initiator_lan: requester_lan,
                initiator_wan: requester_wan,
            };
            self.send(
                introduced.address,
                Packet::PunctureRequest(puncture_request),
            );
        }
        if let Some(sync) = &request.sync {
            self.request_sync_rows(now, community, from, session, sync);
        }
        Ok(())
    }

    /// Step 4 at A: B answered our walk.
    pub(super) fn on_introduction_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        response: IntroductionResponse,
    ) -> Result<(), DropReason> {
        if !self.sessions.check(now, from, response.session) {
            return Err(DropReason::BadSession);
        }
        let is_tracker = self.config.trackers.contains(&from);
        let interfaces = self.config.interfaces.clone();
        let c = self
            .communities
            .get_mut(&response.community)
            .ok_or(DropReason::UnknownCommunity)?;
        let sync_only = match c.pending_walks.get_mut(&response.walk) {
            Some(walk) if walk.destination == from && !walk.answered => {
                walk.answered = true;
                walk.sync_only
            }
            Some(walk) if walk.destination == from => return Err(DropReason::DuplicateResponse),
            Some(_) => return Err(DropReason::ResponseFromWrongAddress),
            None => return Err(DropReason::UnexpectedResponse),
        };
        if !sync_only {
            c.stats.walk_successes += 1;
        }
        c.last_activity = now;
        if is_tracker {
            c.tracker_walks.insert(from, now);
        } else {
            let (lan, wan) = address::estimate(
                &interfaces,
                from,
                resolve(response.source_lan, from),
                response.source_wan,
            );
            let candidate = c
                .candidates
                .entry(from, now)
                .map_err(|_| DropReason::CandidateTableFull)?;
            candidate.last_walk = Some(now);
            candidate.member = Some(response.member.member_id());
            candidate.lan = lan;
            candidate.wan = wan;
            candidate.connection_type = response.connection_type;
            candidate.global_time = response.global_time;
        }
        self.vote(now, from, response.destination);
        let my_lan = self.lan;
        let my_wan = self.wan_address();
        let Some((lan, wan)) = response.introduced else {
            return Ok(());
        };
        // A peer behind the same NAT (same WAN IP) is reached on its LAN address.
        let address = if address::is_usable(wan) && wan.ip() != my_wan.ip() {
            wan
        } else {
            lan
        };
        let ourselves = address == my_lan || address == my_wan || lan == my_lan && wan == my_wan;
        if !address::is_usable(address) || ourselves || self.config.trackers.contains(&address) {
            return Err(DropReason::InvalidIntroduction);
        }
        let c = self
            .communities
            .get_mut(&response.community)
            .ok_or(DropReason::UnknownCommunity)?;
        let candidate = c
            .candidates
            .entry(address, now)
            .map_err(|_| DropReason::CandidateTableFull)?;
        candidate.last_intro = Some(now);
        candidate.lan = lan;
        candidate.wan = wan;
        Ok(())
    }

    /// Step 3 at C: B, with whom we share a session, asks us to open our NAT towards A.
    pub(super) fn on_puncture_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: PunctureRequest,
    ) -> Result<(), DropReason> {
        if !self.sessions.check(now, from, request.session) {
            return Err(DropReason::BadSession);
        }
        let c = self
            .communities
            .get(&request.community)
            .filter(|c| c.definition.is_some())
            .ok_or(DropReason::UnknownCommunity)?;
        let my_wan = self.wan_address();
        // A behind our own NAT is reached on its LAN address.
        let target = if request.initiator_wan.ip() == my_wan.ip()
            && address::is_usable(request.initiator_lan)
        {
            request.initiator_lan
        } else {
            request.initiator_wan
        };
        if !address::is_usable(target) || target == from || target == self.lan || target == my_wan {
            return Err(DropReason::InvalidAddress);
        }
        let puncture = Puncture {
            community: c.id,
            member: self.key.public().clone(),
            session: 0,
            walk: request.walk,
            random: request.random,
            source_lan: self.lan,
            source_wan: my_wan,
        };
        self.send(target, Packet::Puncture(puncture));
        Ok(())
    }

    /// Step 5 at A: C punctured its NAT for our walk W.
    pub(super) fn on_puncture(
        &mut self,
        now: Instant,
        from: SocketAddr,
        puncture: Puncture,
    ) -> Result<(), DropReason> {
        let interfaces = self.config.interfaces.clone();
        let c = self
            .communities
            .get_mut(&puncture.community)
            .filter(|c| c.definition.is_some())
            .ok_or(DropReason::UnknownCommunity)?;
        match c.pending_walks.get(&puncture.walk) {
            Some(walk) if walk.random == puncture.random => {}
            _ => return Err(DropReason::UnexpectedPuncture),
        }
        c.stats.punctures += 1;
        let (lan, wan) = address::estimate(
            &interfaces,
            from,
            resolve(puncture.source_lan, from),
            puncture.source_wan,
        );
        let candidate = c
            .candidates
            .entry(from, now)
            .map_err(|_| DropReason::CandidateTableFull)?;
        candidate.last_intro = Some(now);
        candidate.member = Some(puncture.member.member_id());
        candidate.lan = lan;
        candidate.wan = wan;
        Ok(())
    }

    /// `voter` sees us at `address`.
    fn vote(&mut self, now: Instant, voter: SocketAddr, address: SocketAddr) {
        if self
            .votes
            .vote(now, &self.config.interfaces, voter, address)
        {
            self.forget_own_addresses();
        }
    }
}

/// The community of an incoming walker message; a tracker creates bare ones on demand.
fn community_for<'a>(
    communities: &'a mut std::collections::HashMap<CommunityId, Community>,
    config: &Config,
    now: Instant,
    id: CommunityId,
) -> Result<&'a mut Community, DropReason> {
    if !communities.contains_key(&id) {
        if !config.tracker {
            return Err(DropReason::UnknownCommunity);
        }
        if communities.len() >= config.max_communities {
            return Err(DropReason::CommunityLimit);
        }
        let bare = Community::new(
            id,
            None,
            Resume::default(),
            config.candidates.clone(),
            now,
            now,
            crate::sync::State::new(&config.sync, 0, 0),
        );
        communities.insert(id, bare);
    }
    let c = communities
        .get_mut(&id)
        .ok_or(DropReason::UnknownCommunity)?;
    c.last_activity = now;
    Ok(c)
}
