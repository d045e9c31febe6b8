//! A deterministic simulation of many nodes on a virtual network: the same [`Node`] code, a
//! virtual clock in milliseconds, latency, loss, and NAT routers of the usual kinds. Scenarios
//! run in milliseconds of real time and give the same result on every run.
//!
//! Addresses: public hosts are 198.18.x.y; a NAT router `n` has the public IP 198.19.0.n and a LAN
//! 10.n.0.0/24 behind it. A packet between two hosts of one LAN goes directly; any other packet
//! leaving a LAN is translated by its router, and a packet arriving at a router is let in (or
//! not) by the router's filtering rule.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::address::Interface;
use crate::identity::KeyPair;
use crate::node::{Config, Event, Node};
use crate::rng::Rng;
use crate::time::Instant;

/// How a NAT router maps and filters (RFC 4787 terms in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatKind {
    /// Same public port for every destination, anyone may send in (EIM, EIF).
    FullCone,
    /// Same public port, only IPs we sent to may send in (EIM, ADF).
    Restricted,
    /// Same public port, only the exact ip:port we sent to (EIM, APDF): Linux's default.
    PortRestricted,
    /// A new public port for every destination, only that destination may answer (APDM, APDF).
    Symmetric,
}

#[derive(Debug)]
struct Nat {
    kind: NatKind,
    public_ip: Ipv4Addr,
    /// (internal, destination for symmetric) → public port.
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Public port → (internal, last use).
    reverse: HashMap<u16, (SocketAddr, Instant)>,
    /// (public port, remote) → last outbound packet to it.
    permissions: HashMap<(u16, SocketAddr), Instant>,
    next_port: u16,
    timeout: Duration,
}

impl Nat {
    fn outbound(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        destination: SocketAddr,
    ) -> SocketAddr {
        let key = match self.kind {
            NatKind::Symmetric => (internal, Some(destination)),
            _ => (internal, None),
        };
        let expired = self.mappings.get(&key).is_some_and(|port| {
            self.reverse
                .get(port)
                .is_none_or(|(_, used)| now.saturating_since(*used) > self.timeout)
        });
        if expired && let Some(port) = self.mappings.remove(&key) {
            self.reverse.remove(&port);
        }
        let port = match self.mappings.get(&key) {
            Some(port) => *port,
            None => {
                self.next_port = self.next_port.wrapping_add(7).max(1024);
                let port = self.next_port;
                self.mappings.insert(key, port);
                port
            }
        };
        self.reverse.insert(port, (internal, now));
        self.permissions.insert((port, destination), now);
        SocketAddr::new(IpAddr::V4(self.public_ip), port)
    }

    fn inbound(&mut self, now: Instant, port: u16, source: SocketAddr) -> Option<SocketAddr> {
        let (internal, used) = *self.reverse.get(&port)?;
        if now.saturating_since(used) > self.timeout {
            return None;
        }
        let fresh = |at: &Instant| now.saturating_since(*at) <= self.timeout;
        let allowed = match self.kind {
            NatKind::FullCone => true,
            NatKind::Restricted => self
                .permissions
                .iter()
                .any(|((p, remote), at)| *p == port && remote.ip() == source.ip() && fresh(at)),
            NatKind::PortRestricted | NatKind::Symmetric => {
                self.permissions.get(&(port, source)).is_some_and(fresh)
            }
        };
        allowed.then_some(internal)
    }
}

/// One datagram in flight.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    at: Instant,
    seq: u64,
    /// The source as the receiver sees it.
    from: SocketAddr,
    to: SocketAddr,
    /// LAN of the sender (`None`: public host), for direct delivery inside a LAN.
    lan: Option<usize>,
    bytes: Vec<u8>,
}

/// A node's store: the reference store of [`crate::store::memory`], and the rows the
/// driver's re-evaluations denied ([`Event::Reevaluate`]): (community, meta, author, global
/// time), as the SQLite store keeps its denied bit.
#[derive(Debug, Default)]
pub(crate) struct Store(
    pub crate::store::memory::Store,
    pub  std::collections::BTreeSet<(
        crate::identity::CommunityId,
        u32,
        crate::identity::MemberId,
        u64,
    )>,
);

impl std::ops::Deref for Store {
    type Target = crate::store::memory::Store;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Store {
    /// Applies a re-evaluation as the driver does: every stored row of `meta` by the authors
    /// of each span gets the span's verdict.
    fn reevaluate(
        &mut self,
        community: crate::identity::CommunityId,
        meta: u32,
        spans: &[crate::timeline::Reevaluation],
    ) {
        for reevaluation in spans {
            for span in &reevaluation.spans {
                for kept in self.0.messages(community) {
                    let t = kept.row.global_time;
                    let signers = kept.signers.as_ref().map(|(a, b)| (a, b));
                    let whose = reevaluation.authors.matches(&kept.member, signers);
                    if kept.meta != meta || !whose || t < span.low || t > span.high {
                        continue;
                    }
                    let key = (community, meta, kept.member, t);
                    if span.allowed {
                        self.1.remove(&key);
                    } else {
                        self.1.insert(key);
                    }
                }
            }
        }
    }

    /// Stores the persistent ones of `messages` (of metas of `definition`) and files what
    /// became of them, as the runtime's community worker does.
    fn store(
        &mut self,
        definition: &crate::community::Definition,
        messages: &[crate::node::Incoming],
    ) -> crate::store::Report {
        use crate::store::{Entry, Report};
        let persistent: Vec<(&crate::node::Incoming, Entry)> = messages
            .iter()
            .filter(|m| m.persistent)
            .filter_map(|m| {
                let meta = definition.meta_by_id(m.message.message.message_type)?;
                Some((m, Entry::of(&m.message, meta)?))
            })
            .collect();
        let (messages, entries): (Vec<_>, Vec<Entry>) = persistent.into_iter().unzip();
        let outcomes = self.0.insert(definition.id(), &entries);
        let mut report = Report::default();
        for ((m, entry), outcome) in messages.into_iter().zip(&entries).zip(outcomes) {
            report.file(m.clone(), entry.hash, outcome);
        }
        report
    }
}

/// A host: a node and where it sits.
struct Host {
    address: SocketAddr,
    nat: Option<usize>,
    online: bool,
    /// A kind of datagram this host ignores (a misbehaving peer).
    ignores: Option<&'static str>,
}

/// The simulated network and its nodes.
pub(crate) struct Sim {
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub events: Vec<Vec<Event>>,
    pub stores: Vec<Store>,
    hosts: Vec<Host>,
    nats: Vec<Nat>,
    flights: BinaryHeap<Reverse<Flight>>,
    seq: u64,
    rng: Rng,
    pub latency: Duration,
    pub loss: f64,
    /// Bytes and datagrams each address sent to each other address: (from, to) → (bytes, count).
    pub traffic: HashMap<(SocketAddr, SocketAddr), (u64, u64)>,
    /// Datagrams by kind each address sent to each other address.
    pub kinds: HashMap<(SocketAddr, SocketAddr, &'static str), u64>,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Sim {
            now: Instant::from_millis(1_000),
            nodes: Vec::new(),
            events: Vec::new(),
            stores: Vec::new(),
            hosts: Vec::new(),
            nats: Vec::new(),
            flights: BinaryHeap::new(),
            seq: 0,
            rng: Rng::new(seed),
            latency: Duration::from_millis(20),
            loss: 0.0,
            traffic: HashMap::new(),
            kinds: HashMap::new(),
        }
    }

    pub fn key(n: u64) -> KeyPair {
        let mut secret = [0x11u8; 32];
        secret[24..].copy_from_slice(&n.to_be_bytes());
        KeyPair::from_secret(&secret).expect("valid test key")
    }

    /// Adds a NAT router of `kind`; returns its index.
    pub fn add_nat(&mut self, kind: NatKind) -> usize {
        let index = self.nats.len();
        let n = u8::try_from(index + 1).expect("at most 255 NATs");
        self.nats.push(Nat {
            kind,
            public_ip: Ipv4Addr::new(198, 19, 0, n),
            mappings: HashMap::new(),
            reverse: HashMap::new(),
            permissions: HashMap::new(),
            next_port: 20_000,
            timeout: Duration::from_secs(60),
        });
        index
    }

    /// Adds a public host (`nat: None`) or a host behind NAT `nat`; returns its index.
    pub fn add_node(&mut self, nat: Option<usize>, mut config: Config) -> usize {
        let index = self.nodes.len();
        let i = u16::try_from(index).expect("small simulation");
        let (ip, netmask) = match nat {
            None => (
                Ipv4Addr::new(198, 18, (i >> 8) as u8, (i & 0xff) as u8),
                Ipv4Addr::new(255, 255, 255, 255),
            ),
            Some(n) => (
                Ipv4Addr::new(10, (n + 1) as u8, (i >> 8) as u8, (i & 0xff) as u8),
                Ipv4Addr::new(255, 255, 0, 0),
            ),
        };
        let address = SocketAddr::new(IpAddr::V4(ip), 7000);
        config.interfaces = vec![Interface {
            address: IpAddr::V4(ip),
            netmask: IpAddr::V4(netmask),
        }];
        let seed = self.rng.next_u64();
        let node = Node::new(config, Self::key(index as u64 + 1), address, seed, self.now);
        self.nodes.push(node);
        self.events.push(Vec::new());
        self.stores.push(Store::default());
        self.hosts.push(Host {
            address,
            nat,
            online: true,
            ignores: None,
        });
        index
    }

    /// The address node `index` binds (its LAN address).
    pub fn address(&self, index: usize) -> SocketAddr {
        self.hosts[index].address
    }

    /// Makes node `index` ignore every datagram of `kind` (e.g. never answer walks).
    pub fn ignore(&mut self, index: usize, kind: &'static str) {
        self.hosts[index].ignores = Some(kind);
    }

    /// Takes node `index` off the network (it neither sends nor receives).
    pub fn disconnect(&mut self, index: usize) {
        self.hosts[index].online = false;
    }

    /// Puts node `index` back on the network.
    pub fn reconnect(&mut self, index: usize) {
        self.hosts[index].online = true;
    }

    /// Node `i` creates a message (checked by the simulated plugin at once) and publishes it:
    /// what [`Event::Created`] reports, or the error of [`Node::create_message`].
    pub fn create(
        &mut self,
        i: usize,
        community: crate::identity::CommunityId,
        meta: &str,
        payload: Vec<u8>,
        candidates: &[SocketAddr],
    ) -> Result<crate::node::Created, crate::node::CreateError> {
        let request =
            self.nodes[i].create_message(self.now, community, meta, payload, candidates)?;
        // The check, then the publishing (whose datagrams leave at the next flush).
        self.flush();
        self.events[i]
            .iter()
            .rev()
            .find_map(|event| match event {
                Event::Created {
                    request: r, result, ..
                } if *r == request => Some(result.clone()),
                _ => None,
            })
            .unwrap_or(Err(crate::node::CreateError::CheckTimeout(0)))
    }

    /// Moves every node's output onto the network.
    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            let local = self.hosts[i].address;
            let nat = self.hosts[i].nat;
            while let Some(t) = self.nodes[i].poll_transmit() {
                if !self.hosts[i].online || (self.loss > 0.0 && self.rng.unit() < self.loss) {
                    continue;
                }
                let same_lan = nat.is_some()
                    && self
                        .hosts
                        .iter()
                        .any(|h| h.nat == nat && h.address == t.destination);
                let from = match nat {
                    Some(n) if !same_lan => self.nats[n].outbound(self.now, local, t.destination),
                    _ => local,
                };
                self.count(from, t.destination, &t.bytes);
                self.seq += 1;
                self.flights.push(Reverse(Flight {
                    at: self.now + self.latency,
                    seq: self.seq,
                    from,
                    to: t.destination,
                    lan: nat,
                    bytes: t.bytes,
                }));
            }
            self.drive_store(i);
        }
    }

    /// Plays the driver's store for node `i`: stores messages, answers sync queries.
    fn drive_store(&mut self, i: usize) {
        let now = self.now;
        while let Some(event) = self.nodes[i].poll_event() {
            match &event {
                Event::Messages {
                    community,
                    messages,
                    ..
                } => {
                    let Some(definition) = self.nodes[i]
                        .community(community)
                        .and_then(|c| c.definition.clone())
                    else {
                        continue;
                    };
                    let report = self.stores[i].store(&definition, messages);
                    self.nodes[i].handle_store_report(now, *community, report);
                }
                Event::SyncQuery { community, query } => {
                    let (right, left) = self.stores[i].sync_query(*community, *query);
                    self.nodes[i].handle_sync_query(now, *community, right, left);
                }
                Event::SyncRows {
                    community,
                    request,
                    range,
                    limit,
                    metas,
                } => {
                    let rows = self.stores[i].sync_rows(*community, *range, *limit, metas);
                    self.nodes[i].handle_sync_rows(now, *request, rows);
                }
                Event::Prune {
                    community,
                    meta,
                    below,
                } => {
                    self.stores[i].0.prune(*community, *meta, *below);
                }
                Event::Reevaluate {
                    community,
                    meta,
                    spans,
                } => self.stores[i].reevaluate(*community, *meta, spans),
                Event::ReadPackets {
                    request,
                    community,
                    lookup,
                    max_bytes,
                } => {
                    let packets = self.stores[i].lookup(*community, lookup, *max_bytes);
                    self.nodes[i].handle_answer_read(now, *request, packets);
                }
                // The simulated plugins sign whatever does not ask to be refused, replace a
                // payload `modify:X` by `X`, append `+` to a payload `append:...` and 2,000
                // bytes (too many for a datagram) to a payload `grow...`.
                Event::SignatureAsked { ask, message, .. } => {
                    let payload = &message.payload;
                    let verdict = if payload.starts_with(b"refuse") {
                        crate::signature::Cosign::Refuse
                    } else if let Some(new) = payload.strip_prefix(b"modify:") {
                        crate::signature::Cosign::Modify(new.to_vec())
                    } else if payload.starts_with(b"append:") {
                        crate::signature::Cosign::Append(b"+".to_vec())
                    } else if payload.starts_with(b"grow") {
                        crate::signature::Cosign::Append(vec![b'x'; 2_000])
                    } else {
                        crate::signature::Cosign::Sign
                    };
                    self.nodes[i].handle_cosign_verdict(now, *ask, verdict);
                }
                // The first author's simulated plugin takes every answer whose payload does
                // not say `decline`.
                Event::Cosigned {
                    request,
                    answer,
                    message,
                    ..
                } => {
                    if *answer != crate::signature::Answer::Timeout {
                        let accept = !message.payload.windows(7).any(|w| w == b"decline");
                        self.nodes[i].handle_cosigned(now, *request, accept);
                    }
                }
                // The simulated plugins pass whatever of ours does not ask to be dropped.
                Event::CheckCreated {
                    request, message, ..
                } => {
                    let verdict = if message.message.message.payload.starts_with(b"drop") {
                        Err(crate::node::Refusal::Dropped("asked to be dropped".into()))
                    } else {
                        Ok(())
                    };
                    self.nodes[i].handle_created_check(now, *request, verdict);
                }
                Event::Created { .. } | Event::Unreadable { .. } => {}
                Event::UndoTargets { community, targets } => {
                    let found = targets
                        .iter()
                        .map(|(target, source)| {
                            let meta = self.stores[i].meta_of(
                                *community,
                                target.member,
                                target.global_time,
                            );
                            (*target, *source, meta)
                        })
                        .collect();
                    self.nodes[i].handle_undo_targets(now, *community, found);
                }
                Event::Undone { community, flips } => {
                    for flip in flips {
                        let by = flip.undone_by.map(|u| (u.member, u.global_time));
                        self.stores[i].0.mark_undone(
                            *community,
                            flip.target.member,
                            flip.target.global_time,
                            by,
                        );
                    }
                }
                Event::Destroyed {
                    community,
                    degree,
                    global_time,
                    keep,
                } => {
                    let keep = (*degree == crate::authority::Degree::Hard).then_some(&keep[..]);
                    self.stores[i].0.destroy(*community, keep, *global_time);
                }
                Event::SendPackets { request, rows } => {
                    let packets = self.stores[i].packets(rows);
                    self.nodes[i].handle_packets_read(now, *request, packets);
                }
            }
            self.events[i].push(event);
        }
    }

    fn count(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let entry = self.traffic.entry((from, to)).or_insert((0, 0));
        entry.0 += bytes.len() as u64;
        entry.1 += 1;
        let kind = crate::wire::peek(bytes).map_or("undecodable", |(kind, _)| kind);
        *self.kinds.entry((from, to, kind)).or_insert(0) += 1;
    }

    /// Injects a datagram from any (possibly forged) source address.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.count(from, to, &bytes);
        self.seq += 1;
        self.flights.push(Reverse(Flight {
            at: self.now + self.latency,
            seq: self.seq,
            from,
            to,
            lan: None,
            bytes,
        }));
    }

    /// The host a datagram for `to` reaches, if any, after NAT filtering.
    fn route(&mut self, flight: &Flight) -> Option<usize> {
        if let Some(i) = self
            .hosts
            .iter()
            .position(|h| h.address == flight.to && (h.nat.is_none() || h.nat == flight.lan))
        {
            return Some(i);
        }
        let n = self
            .nats
            .iter()
            .position(|n| IpAddr::V4(n.public_ip) == flight.to.ip())?;
        let internal = self.nats[n].inbound(self.now, flight.to.port(), flight.from)?;
        self.hosts.iter().position(|h| h.address == internal)
    }

    /// Runs the network until `duration` of virtual time has passed.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            self.flush();
            let next_flight = self.flights.peek().map(|f| f.0.at);
            let next_timer = self.nodes.iter().filter_map(Node::poll_timeout).min();
            let next = match (next_flight, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            while self.flights.peek().is_some_and(|f| f.0.at <= self.now) {
                let Some(Reverse(flight)) = self.flights.pop() else {
                    break;
                };
                let ignored = |host: &Host| {
                    host.ignores.is_some_and(|kind| {
                        crate::wire::peek(&flight.bytes).is_some_and(|(k, _)| k == kind)
                    })
                };
                if let Some(to) = self.route(&flight)
                    && self.hosts[to].online
                    && !ignored(&self.hosts[to])
                {
                    self.nodes[to].handle_datagram(self.now, flight.from, &flight.bytes);
                }
            }
            for node in &mut self.nodes {
                if node.poll_timeout().is_some_and(|t| t <= self.now) {
                    node.handle_timeout(self.now);
                }
            }
        }
        self.now = end;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod permission_tests;

#[cfg(test)]
mod convergence_tests;
#[cfg(test)]
mod destroy_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod reevaluation_tests;
#[cfg(test)]
mod undo_tests;
