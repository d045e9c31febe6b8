//! A deterministic simulation of many nodes on a virtual network: the same [`Node`] code, a
//! virtual clock in milliseconds, per-link latency and loss. Scenarios run in milliseconds of real
//! time and give the same result on every run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::KeyPair;
use crate::node::{Config, Event, Node};
use crate::rng::Rng;
use crate::time::Instant;

/// One datagram in flight.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The simulated network and its nodes.
pub(crate) struct Sim {
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub events: Vec<Vec<Event>>,
    by_address: HashMap<SocketAddr, usize>,
    flights: BinaryHeap<Reverse<Flight>>,
    seq: u64,
    rng: Rng,
    pub latency: Duration,
    pub loss: f64,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Sim {
            now: Instant::from_millis(1_000),
            nodes: Vec::new(),
            events: Vec::new(),
            by_address: HashMap::new(),
            flights: BinaryHeap::new(),
            seq: 0,
            rng: Rng::new(seed),
            latency: Duration::from_millis(20),
            loss: 0.0,
        }
    }

    pub fn key(n: u64) -> KeyPair {
        let mut secret = [0x11u8; 32];
        secret[24..].copy_from_slice(&n.to_be_bytes());
        KeyPair::from_secret(&secret).expect("valid test key")
    }

    /// Adds a node at 10.0.0.x:7000; returns its index.
    pub fn add_node(&mut self, config: Config) -> usize {
        let index = self.nodes.len();
        let address = Self::address(index);
        let seed = self.rng.next_u64();
        let node = Node::new(config, Self::key(index as u64 + 1), address, seed, self.now);
        self.nodes.push(node);
        self.events.push(Vec::new());
        self.by_address.insert(address, index);
        index
    }

    pub fn address(index: usize) -> SocketAddr {
        let index = u16::try_from(index).expect("small simulation");
        SocketAddr::from(([10, 0, (index >> 8) as u8, (index & 0xff) as u8], 7000))
    }

    /// Moves every node's output onto the network.
    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            let from = Self::address(i);
            while let Some(t) = self.nodes[i].poll_transmit() {
                if self.loss > 0.0 && self.rng.unit() < self.loss {
                    continue;
                }
                self.seq += 1;
                self.flights.push(Reverse(Flight {
                    at: self.now + self.latency,
                    seq: self.seq,
                    from,
                    to: t.destination,
                    bytes: t.bytes,
                }));
            }
            while let Some(event) = self.nodes[i].poll_event() {
                self.events[i].push(event);
            }
        }
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
                if let Some(&to) = self.by_address.get(&flight.to) {
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
mod tests {
    use super::*;
    use crate::community::{Definition, Resume};
    use crate::meta::{Authentication, Destination, Distribution, MetaMessage, Resolution};
    use crate::node::Incoming;
    use crate::wire::Conversion;

    fn definition() -> Definition {
        Definition {
            name: "example".into(),
            version: "0.1.0".into(),
            master: Sim::key(999).public().clone(),
            conversions: vec![Conversion::version(1).expect("valid")],
            metas: vec![MetaMessage {
                id: 1,
                name: "example".into(),
                authentication: Authentication::Member,
                resolution: Resolution::Public,
                distribution: Distribution::Direct,
                destination: Destination::Community { node_count: 10 },
                priority: 128,
                batch_window: Duration::ZERO,
            }],
        }
    }

    fn fast() -> Config {
        Config {
            step_interval: Duration::from_millis(500),
            trackers: vec![Sim::address(0)],
            ..Config::default()
        }
    }

    /// A tracker and `peers` nodes joined to the example community.
    fn network(peers: usize) -> Sim {
        let mut sim = Sim::new(7);
        sim.add_node(Config {
            tracker: true,
            ..Config::default()
        });
        for _ in 0..peers {
            let i = sim.add_node(fast());
            let now = sim.now;
            sim.nodes[i]
                .join(now, definition(), Resume::default())
                .expect("join");
        }
        sim
    }

    #[test]
    fn peers_discover_each_other_through_a_tracker() {
        let mut sim = network(3);
        sim.run_for(Duration::from_secs(10));
        let id = definition().id();
        for i in 1..=3 {
            let c = sim.nodes[i].community(&id).expect("joined");
            let verified: Vec<_> = c.candidates.verified(sim.now).map(|c| c.address).collect();
            for j in 1..=3 {
                if j != i {
                    assert!(
                        verified.contains(&Sim::address(j)),
                        "node {i} does not know node {j}: {verified:?}"
                    );
                }
            }
            assert!(
                !verified.contains(&Sim::address(0)),
                "trackers are not peers"
            );
            assert!(c.stats.walk_successes > 0);
        }
        // The tracker keeps a bare community with every peer in it, and stores nothing.
        let tracker = sim.nodes[0].community(&id).expect("bare community");
        assert!(tracker.definition.is_none());
        assert_eq!(tracker.candidates.verified(sim.now).count(), 3);
        assert!(sim.events[0].is_empty());
    }

    #[test]
    fn created_messages_reach_every_verified_peer_once() {
        let mut sim = network(3);
        sim.run_for(Duration::from_secs(10));
        let id = definition().id();
        let now = sim.now;
        let created = sim.nodes[1]
            .create_message(now, id, "example", b"hello".to_vec(), &[])
            .expect("create");
        assert_eq!(created.sent_to, 2);
        sim.run_for(Duration::from_secs(1));
        for i in [2, 3] {
            let received: Vec<&Incoming> = sim.events[i]
                .iter()
                .flat_map(|Event::Messages { messages, .. }| messages)
                .collect();
            assert_eq!(received.len(), 1, "node {i}");
            assert_eq!(received[0].message.message.payload, b"hello");
            assert_eq!(received[0].source, Some(Sim::address(1)));
            assert!(
                sim.nodes[i].community(&id).expect("joined").global_time >= created.global_time
            );
        }
        // The creator handles its own message too (the original's "update").
        assert!(
            sim.events[1]
                .iter()
                .any(|Event::Messages { messages, .. }| {
                    messages.iter().any(|m| m.source.is_none())
                })
        );
    }

    #[test]
    fn unanswered_walks_time_out_and_are_counted() {
        let mut sim = Sim::new(1);
        let i = sim.add_node(Config {
            trackers: vec![SocketAddr::from(([10, 9, 9, 9], 1))],
            ..fast()
        });
        let now = sim.now;
        sim.nodes[i]
            .join(now, definition(), Resume::default())
            .expect("join");
        sim.run_for(Duration::from_secs(120));
        let c = sim.nodes[i].community(&definition().id()).expect("joined");
        assert!(c.stats.walk_attempts >= 2);
        assert!(c.stats.walk_failures >= 1);
        assert!(c.pending_walks.len() <= 1);
    }
}
