//! The node's side of bloom-filter sync (the rules are in [`crate::sync`]): attaching filters to
//! our walks, follow-up rounds, answering others' filters through the driver's store reads
//! ([`Event::SyncQuery`], [`Event::SyncRows`], [`Event::SendPackets`]), and [`Node::handle_stored`],
//! where stored messages feed the filters, the follow-up rounds and the messages waiting for them.

use std::net::SocketAddr;

use super::{Event, Node, RequestId, Stored};
use crate::bloom::BloomFilter;
use crate::identity::CommunityId;
use crate::stats::DropReason;
use crate::sync::{
    self, ChaseStep, Claim, ERROR_RATE, Next, PendingQuery, PendingResponse, Query, Range, Row,
};
use crate::time::Instant;
use crate::wire::{ConnectionType, IntroductionRequest, Packet, Synchronization};

impl Node {
    /// Bytes a filter may take in an introduction-request of `community`: what the datagram
    /// budget leaves after the largest request without filter bytes.
    pub(super) fn filter_bytes(&self, community: CommunityId) -> usize {
        let v6: SocketAddr = "[ffff::ffff]:65535".parse().unwrap_or(self.lan);
        let probe = |bloom: usize| {
            Packet::IntroductionRequest(IntroductionRequest {
                community,
                member: self.key.public().clone(),
                session: u32::MAX,
                walk: u32::MAX,
                random: u32::MAX,
                global_time: u64::MAX,
                destination: v6,
                source_lan: v6,
                source_wan: v6,
                connection_type: ConnectionType::SymmetricNat,
                advice: true,
                sync: Some(Synchronization {
                    low: u64::MAX,
                    high: u64::MAX,
                    modulo: u32::MAX,
                    offset: u64::MAX,
                    functions: 64,
                    prefix: u32::MAX,
                    bloom: vec![0; bloom],
                }),
            })
            .encode(&self.key)
            .len()
        };
        let overhead = probe(1000) - 1000;
        self.config.max_datagram.saturating_sub(overhead + 4).max(8)
    }

    /// Sends our introduction-request, with a sync part when the community syncs: a reused
    /// filter, none (skip), or a new one built from the store's rows (then the request waits
    /// for [`Node::handle_sync_query`]). While follow-up rounds run ([`sync::Chase`]) the
    /// walk carries no filter: they are the community's sync, one request at a time.
    pub(super) fn send_request(
        &mut self,
        now: Instant,
        id: CommunityId,
        target: SocketAddr,
        mut request: IntroductionRequest,
    ) {
        let timeout = self.config.sync.store_timeout;
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        let syncs = c.definition.as_ref().is_some_and(|d| d.syncs());
        if !syncs || c.sync.filter_bytes == 0 {
            self.send(target, Packet::IntroductionRequest(request));
            return;
        }
        let chasing =
            c.sync.chase.is_some() || c.sync.pending.as_ref().is_some_and(|p| p.follow_up);
        if chasing {
            c.stats.sync_skipped += 1;
            self.send(target, Packet::IntroductionRequest(request));
            return;
        }
        // A request still waiting for its rows goes now, without a filter.
        if let Some(stale) = c.sync.pending.take() {
            self.send(stale.target, Packet::IntroductionRequest(stale.request));
            let Some(c) = self.communities.get_mut(&id) else {
                return;
            };
            c.stats.sync_skipped += 1;
        }
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        let capacity = c.sync.capacity();
        let behind = c
            .candidates
            .get(&target)
            .is_some_and(|candidate| candidate.global_time > c.global_time);
        match c.sync.cache.next(&mut self.rng, target, capacity, behind) {
            Next::Reuse(claim) => {
                c.stats.sync_reused += 1;
                request.sync = Some(synchronization(&claim));
                self.send(target, Packet::IntroductionRequest(request));
            }
            Next::Skip => {
                c.stats.sync_skipped += 1;
                self.send(target, Packet::IntroductionRequest(request));
            }
            Next::New => {
                let query = sync::query(
                    &mut self.rng,
                    self.config.sync.strategy,
                    c.global_time,
                    c.sync.stored,
                    capacity,
                );
                c.sync.pending = Some(PendingQuery {
                    target,
                    request,
                    query,
                    deadline: now + timeout,
                    follow_up: false,
                });
                self.push_event(Event::SyncQuery {
                    community: id,
                    query,
                });
            }
        }
    }

    /// Runs the follow-up rounds of community `id` ([`sync::Chase`]): sends the next
    /// sync-only introduction-request to the chased peer when its last round is complete,
    /// or ends the chase.
    pub(super) fn follow_up(&mut self, now: Instant, id: CommunityId) {
        let max_pending = self.config.max_pending_walks;
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        // One store query at a time: a walk's filter being built delays the round. A
        // hard-destroyed community sends no request.
        if c.sync.pending.is_some() || c.is_hard_destroyed() {
            return;
        }
        let Some(chase) = c.sync.chase.as_mut() else {
            return;
        };
        match chase.step(now, &self.config.sync) {
            ChaseStep::Wait(_) => return,
            ChaseStep::Stop => {
                c.sync.chase = None;
                return;
            }
            ChaseStep::Send => {}
        }
        // The previous follow-up is answered or lost: it no longer holds a walk slot.
        if let Some(walk) = chase.walk.take() {
            c.pending_walks.remove(&walk);
        }
        if c.pending_walks.len() >= max_pending {
            c.sync.chase = None;
            return;
        }
        let target = chase.target;
        let Some(request) = self.introduction_request(now, id, target, true) else {
            return;
        };
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        let Some(chase) = c.sync.chase.as_mut() else {
            return;
        };
        chase.sent(now, request.walk);
        // A window of our newest rows: the left side of a pivot above every global time.
        // (Not the productive filter again: it holds up to 1.5 times its capacity, and what
        // its false positives hide in a range the follow-ups then leave would stay missing
        // for long.) A sweep round: a filter's worth of our rows below the last one's.
        let query = match chase.sweep {
            None => Query::Pivot {
                pivot: u64::MAX,
                limit: c.sync.window() + 1,
            },
            Some(sweep) => Query::Below {
                high: sweep.high,
                limit: c.sync.capacity() + 1,
            },
        };
        c.sync.pending = Some(PendingQuery {
            target,
            request,
            query,
            deadline: now + self.config.sync.store_timeout,
            follow_up: true,
        });
        self.push_event(Event::SyncQuery {
            community: id,
            query,
        });
    }

    /// When the follow-up rounds of `c` next need [`Node::handle_timeout`], if they run and
    /// are not waiting for the store.
    pub(super) fn follow_up_due(&self, c: &crate::community::Community) -> Option<Instant> {
        match (&c.sync.chase, &c.sync.pending) {
            (Some(chase), None) => Some(chase.due(&self.config.sync)),
            _ => None,
        }
    }

    /// The store did not answer in time: the walk goes without a filter; a follow-up round
    /// is dropped and ends the chase.
    pub(super) fn expire_sync_query(&mut self, now: Instant, id: CommunityId) {
        let Some(c) = self.communities.get_mut(&id) else {
            return;
        };
        if c.sync.pending.as_ref().is_some_and(|p| p.deadline <= now)
            && let Some(pending) = c.sync.pending.take()
        {
            c.stats.sync_skipped += 1;
            if pending.follow_up {
                c.pending_walks.remove(&pending.request.walk);
                c.sync.chase = None;
            } else {
                self.send(pending.target, Packet::IntroductionRequest(pending.request));
            }
        }
    }

    /// The rows answering the [`Event::SyncQuery`] of `community` (`right` ascending, `left`
    /// descending): builds the filter and sends the waiting introduction-request.
    pub fn handle_sync_query(
        &mut self,
        now: Instant,
        community: CommunityId,
        right: Vec<Row>,
        left: Vec<Row>,
    ) {
        let margin = self.config.global_time_margin;
        let salt = self.rng.next_u32();
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        let Some(pending) = c.sync.pending.take() else {
            return;
        };
        let acceptable = c.acceptable_global_time(now, margin);
        let Ok(filter) = BloomFilter::sized(c.sync.filter_bytes, ERROR_RATE, salt) else {
            if !pending.follow_up {
                self.send(pending.target, Packet::IntroductionRequest(pending.request));
            }
            return;
        };
        let mut request = pending.request;
        let sync = match (pending.follow_up, pending.query) {
            (true, Query::Below { high, .. }) => {
                let claim = sync::claim(
                    pending.query,
                    right,
                    left,
                    acceptable,
                    filter,
                    c.sync.capacity(),
                );
                // What lies below this sweep round's range; none when it reached the
                // oldest row (or could not move down).
                let below = claim.range.low.saturating_sub(1);
                if let Some(sweep) = c.sync.chase.as_mut().and_then(|chase| chase.sweep.as_mut()) {
                    sweep.below = if below < high { below } else { 0 };
                }
                c.stats.sync_sweeps += 1;
                synchronization(&claim)
            }
            (true, _) => {
                c.stats.sync_follow_ups += 1;
                synchronization(&sync::window(left, acceptable, filter, c.sync.window()))
            }
            (false, _) => {
                let capacity = c.sync.capacity();
                let claim = sync::claim(pending.query, right, left, acceptable, filter, capacity);
                let sync = synchronization(&claim);
                c.sync.cache.sent(claim, pending.target);
                c.stats.sync_new += 1;
                sync
            }
        };
        request.sync = Some(sync);
        self.send(pending.target, Packet::IntroductionRequest(request));
    }

    /// A request from `from` (over session `session`) carried a filter: ask the store for
    /// the rows of its range.
    pub(super) fn request_sync_rows(
        &mut self,
        now: Instant,
        community: CommunityId,
        from: SocketAddr,
        session: u32,
        sync: &Synchronization,
    ) {
        let timeout = self.config.sync.store_timeout;
        let max = self.config.sync.max_responses;
        let margin = self.config.global_time_margin;
        let Some(c) = self.communities.get_mut(&community) else {
            return;
        };
        if !c.definition.as_ref().is_some_and(|d| d.syncs()) {
            return;
        }
        let Ok(filter) = BloomFilter::from_bytes(sync.bloom.clone(), sync.functions, sync.prefix)
        else {
            self.stats.dropped.bump(DropReason::BadFilter);
            return;
        };
        let acceptable = c.acceptable_global_time(now, margin);
        let high = if sync.high == 0 {
            c.global_time
        } else {
            sync.high
        };
        let range = Range {
            low: sync.low,
            high: high.min(acceptable),
            modulo: sync.modulo,
            offset: sync.offset,
        };
        let budget = c.sync.budgets.budget(from, &range, &filter);
        let limit = sync::rows_to_read(budget, filter.estimated_count(), c.sync.packet_size);
        if self.responses.len() >= max {
            self.stats.dropped.bump(DropReason::SyncBusy);
            return;
        }
        let metas = synced_metas(c);
        let request = self.next_request_id();
        self.responses.insert(
            request,
            PendingResponse {
                community,
                to: from,
                session,
                range,
                filter,
                budget,
                deadline: now + timeout,
            },
        );
        self.push_event(Event::SyncRows {
            community,
            request,
            range,
            limit,
            metas,
        });
    }

    /// The rows answering [`Event::SyncRows`]: chooses what the requester lacks, within its
    /// budget, and asks for their packets.
    pub fn handle_sync_rows(&mut self, _now: Instant, request: RequestId, rows: Vec<Row>) {
        let Some(pending) = self.responses.get(&request) else {
            return;
        };
        let chosen = sync::missing(&pending.filter, &pending.range, &rows, pending.budget);
        let (to, community) = (pending.to, pending.community);
        if !rows.is_empty()
            && let Some(c) = self.communities.get_mut(&community)
        {
            let mean = rows.iter().map(|r| r.size as usize).sum::<usize>() / rows.len();
            c.sync.packet_size = (c.sync.packet_size * 7 + mean) / 8;
        }
        if chosen.is_empty() {
            self.responses.remove(&request);
            return;
        }
        if let Some(c) = self.communities.get_mut(&community) {
            c.sync.budgets.sent(to, &chosen);
        }
        self.push_event(Event::SendPackets {
            request,
            rows: chosen.iter().map(|r| r.id).collect(),
        });
    }

    /// The packets answering [`Event::SendPackets`]: sent as collections.
    pub fn handle_packets_read(
        &mut self,
        _now: Instant,
        request: RequestId,
        packets: Vec<Vec<u8>>,
    ) {
        let Some(pending) = self.responses.remove(&request) else {
            return;
        };
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let sent = self.send_collections(pending.to, pending.session, &refs);
        if let Some(c) = self.communities.get_mut(&pending.community) {
            c.stats.sync_packets_sent += sent as u64;
        }
    }

    /// The driver stored these messages of `community` at `now`: counts them, a cached
    /// filter covering them learns them, messages from the peer of our last filter start
    /// follow-up rounds with it ([`sync::Chase`]) or keep them going, and messages waiting
    /// for them resume ([`crate::missing`]).
    pub(super) fn handle_stored(
        &mut self,
        now: Instant,
        community: CommunityId,
        stored: &[Stored],
    ) {
        let follow_ups = self.config.sync.max_follow_ups > 0;
        if let Some(c) = self.communities.get_mut(&community) {
            c.sync.stored += stored.len() as u64;
            for s in stored {
                let response = c.sync.cache.stored(&s.hash, s.global_time, s.source);
                let Some(source) = s.source else {
                    continue;
                };
                match &mut c.sync.chase {
                    Some(chase) if chase.target == source => chase.arrived(now),
                    Some(_) => {}
                    None if response && follow_ups => {
                        c.sync.chase = Some(sync::Chase::begin(source, now));
                    }
                    None => {}
                }
            }
        }
        self.resume_waiting(now, community, stored);
    }
}

/// The synchronised metas of a community, highest priority first, with their order and the
/// lowest global time still active (inactive messages of pruning metas are never offered).
fn synced_metas(c: &crate::community::Community) -> Vec<(u32, crate::meta::SyncOrder, u64)> {
    use crate::meta::Distribution;
    let Some(definition) = &c.definition else {
        return Vec::new();
    };
    let mut metas: Vec<(u8, u32, crate::meta::SyncOrder, u64)> = definition
        .all_metas()
        .filter(|m| m.is_synced())
        .filter_map(|m| match &m.distribution {
            Distribution::FullSync { order, .. } | Distribution::LastSync { order, .. } => {
                let active_from = m
                    .distribution
                    .pruning()
                    .map_or(0, |p| (c.global_time + 1).saturating_sub(p.inactive_after));
                Some((m.priority, m.id, *order, active_from))
            }
            _ => None,
        })
        .collect();
    metas.sort_by_key(|(priority, id, _, _)| (std::cmp::Reverse(*priority), *id));
    metas
        .into_iter()
        .map(|(_, id, order, active_from)| (id, order, active_from))
        .collect()
}

fn synchronization(claim: &Claim) -> Synchronization {
    Synchronization {
        low: claim.range.low,
        high: claim.range.high,
        modulo: claim.range.modulo,
        offset: claim.range.offset,
        functions: claim.filter.functions(),
        prefix: claim.filter.salt(),
        bloom: claim.filter.as_bytes().to_vec(),
    }
}
