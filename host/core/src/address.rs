//! Addresses: which peers are on our LAN, how peers see us (WAN address voting), and what that
//! says about our NAT (connection type).
//!
//! Seed, "Peer Discovery": a peer that receives a message from inside its own LAN takes the
//! packet's source as the sender's LAN address, and from outside as its WAN address; the other
//! one is taken as the sender reported it. Every introduction-response (and introduction-request)
//! tells us where the other side sees us; those reports are votes for our WAN address.
//! Votes expire, so a roaming host follows its new address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::time::Instant;
use crate::wire::ConnectionType;

/// A local network interface: an address and its netmask. The driver enumerates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// The interface's address.
    pub address: IpAddr,
    /// Its netmask.
    pub netmask: IpAddr,
}

impl Interface {
    /// Whether `ip` is on this interface's network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, self.netmask, ip) {
            (IpAddr::V4(a), IpAddr::V4(m), IpAddr::V4(ip)) => {
                let m = u32::from(m);
                u32::from(a) & m == u32::from(ip) & m
            }
            (IpAddr::V6(a), IpAddr::V6(m), IpAddr::V6(ip)) => {
                let m = u128::from(m);
                u128::from(a) & m == u128::from(ip) & m
            }
            _ => false,
        }
    }
}

/// Whether `ip` is on one of our LANs. Without interface information, private (RFC 1918),
/// loopback and link-local addresses count as LAN (the original's fallback).
pub fn is_lan(interfaces: &[Interface], ip: IpAddr) -> bool {
    if interfaces.is_empty() {
        return match ip {
            IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local(),
        };
    }
    interfaces.iter().any(|i| i.contains(ip))
}

/// Whether a reported address is usable: a unicast IP and a non-zero port.
pub fn is_usable(address: SocketAddr) -> bool {
    let ip_ok = match address.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    };
    ip_ok && address.port() != 0
}

/// The LAN and WAN address of a peer that sent from `source` and reported `lan` and `wan`.
///
/// The seed's rule: from inside our LAN the source is the sender's LAN address, from outside it
/// is its WAN address; the other one is taken as reported. A source on our subnet that is *not*
/// the LAN address the sender reports comes through a NAT (our "LAN" is then a shared public
/// segment, as between routers of one provider): the source is its WAN address.
pub fn estimate(
    interfaces: &[Interface],
    source: SocketAddr,
    lan: SocketAddr,
    wan: SocketAddr,
) -> (SocketAddr, SocketAddr) {
    let same_lan = is_lan(interfaces, source.ip()) && (lan == source || !is_usable(lan));
    if same_lan {
        (source, wan)
    } else {
        (lan, source)
    }
}

/// Our WAN address as peers see it, by vote, and the connection type that follows.
#[derive(Debug, Clone)]
pub struct Votes {
    /// Voter address → (the address it saw, when).
    votes: HashMap<SocketAddr, (SocketAddr, Instant)>,
    max_voters: usize,
    lifetime: Duration,
    current: Option<SocketAddr>,
}

impl Votes {
    /// No votes yet; at most `max_voters` are remembered, each for `lifetime`.
    pub fn new(max_voters: usize, lifetime: Duration) -> Self {
        Votes {
            votes: HashMap::new(),
            max_voters,
            lifetime,
            current: None,
        }
    }

    /// Records that `voter` sees us at `address`. Voters on our LAN do not vote (they see our LAN
    /// address). Returns true when our WAN address changed.
    pub fn vote(
        &mut self,
        now: Instant,
        interfaces: &[Interface],
        voter: SocketAddr,
        address: SocketAddr,
    ) -> bool {
        if !is_usable(address) || is_lan(interfaces, voter.ip()) {
            return false;
        }
        if !self.votes.contains_key(&voter) && self.votes.len() >= self.max_voters {
            // Make room by forgetting the oldest vote.
            if let Some(oldest) = self
                .votes
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(v, _)| *v)
            {
                self.votes.remove(&oldest);
            }
        }
        self.votes.insert(voter, (address, now));
        self.elect()
    }

    /// Forgets votes older than the lifetime. Returns true when our WAN address changed.
    pub fn expire(&mut self, now: Instant) -> bool {
        let lifetime = self.lifetime;
        self.votes
            .retain(|_, (_, at)| now.saturating_since(*at) < lifetime);
        self.elect()
    }

    fn tally(&self) -> HashMap<SocketAddr, usize> {
        let mut tally = HashMap::new();
        for (address, _) in self.votes.values() {
            *tally.entry(*address).or_insert(0) += 1;
        }
        tally
    }

    /// An address becomes our WAN address when it has strictly more votes than the current one
    /// (the original's rule, which avoids flapping between equal counts).
    fn elect(&mut self) -> bool {
        let tally = self.tally();
        let current_votes = self
            .current
            .and_then(|c| tally.get(&c).copied())
            .unwrap_or(0);
        let best = tally
            .iter()
            .max_by_key(|(address, n)| (**n, std::cmp::Reverse(**address)))
            .map(|(address, n)| (*address, *n));
        match best {
            Some((address, n)) if n > current_votes && Some(address) != self.current => {
                self.current = Some(address);
                true
            }
            None if self.current.is_some() => {
                self.current = None;
                true
            }
            _ => false,
        }
    }

    /// Our WAN address, when any peer outside our LAN reported one.
    pub fn wan(&self) -> Option<SocketAddr> {
        self.current
    }

    /// The connection type (original rules): one voted address equal to our LAN address: public;
    /// several voted addresses: symmetric NAT when each was reported by voters from one IP only
    /// (every destination sees another mapping), otherwise unknown; no votes: unknown.
    pub fn connection_type(&self, lan: SocketAddr) -> ConnectionType {
        let tally = self.tally();
        match tally.len() {
            0 => ConnectionType::Unknown,
            1 => {
                if tally.contains_key(&lan) {
                    ConnectionType::Public
                } else {
                    ConnectionType::Unknown
                }
            }
            _ => {
                let mut voter_ips: HashMap<SocketAddr, Vec<IpAddr>> = HashMap::new();
                for (voter, (address, _)) in &self.votes {
                    let ips = voter_ips.entry(*address).or_default();
                    if !ips.contains(&voter.ip()) {
                        ips.push(voter.ip());
                    }
                }
                if voter_ips.values().any(|ips| ips.len() > 1) {
                    ConnectionType::Unknown
                } else {
                    ConnectionType::SymmetricNat
                }
            }
        }
    }

    /// Number of votes held.
    pub fn len(&self) -> usize {
        self.votes.len()
    }

    /// Whether no vote is held.
    pub fn is_empty(&self) -> bool {
        self.votes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn lan() -> Vec<Interface> {
        vec![Interface {
            address: "10.0.1.10".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
        }]
    }

    #[test]
    fn lan_membership_and_estimation() {
        let interfaces = lan();
        assert!(is_lan(&interfaces, "10.0.1.99".parse().unwrap()));
        assert!(!is_lan(&interfaces, "10.0.2.1".parse().unwrap()));
        assert!(is_lan(&[], "192.168.0.1".parse().unwrap()));
        assert!(!is_lan(&[], "198.18.0.10".parse().unwrap()));
        // From the LAN: the source is the LAN address, the reported WAN is kept.
        assert_eq!(
            estimate(
                &interfaces,
                a("10.0.1.11:7"),
                a("10.0.1.11:7"),
                a("198.18.1.1:9")
            ),
            (a("10.0.1.11:7"), a("198.18.1.1:9"))
        );
        // A source on our subnet that is not the sender's own LAN address: a NAT in between.
        assert_eq!(
            estimate(
                &interfaces,
                a("10.0.1.1:5000"),
                a("10.0.9.9:7"),
                a("10.0.9.9:7")
            ),
            (a("10.0.9.9:7"), a("10.0.1.1:5000"))
        );
        // From outside: the source is the WAN address, the reported LAN is kept.
        assert_eq!(
            estimate(
                &interfaces,
                a("198.18.2.1:5000"),
                a("10.0.2.10:7"),
                a("0.0.0.0:0")
            ),
            (a("10.0.2.10:7"), a("198.18.2.1:5000"))
        );
    }

    #[test]
    fn votes_elect_a_strict_majority_and_expire() {
        let t0 = Instant::from_millis(1_000);
        let mut votes = Votes::new(10, Duration::from_secs(180));
        let interfaces = lan();
        assert!(votes.vote(t0, &interfaces, a("198.18.0.10:1"), a("198.18.1.1:7000")));
        assert_eq!(votes.wan(), Some(a("198.18.1.1:7000")));
        // A LAN voter does not count.
        assert!(!votes.vote(t0, &interfaces, a("10.0.1.11:1"), a("10.0.1.10:7000")));
        // A tie does not switch.
        assert!(!votes.vote(t0, &interfaces, a("198.18.0.11:1"), a("198.18.1.1:8000")));
        assert_eq!(votes.wan(), Some(a("198.18.1.1:7000")));
        assert!(votes.vote(t0, &interfaces, a("198.18.0.12:1"), a("198.18.1.1:8000")));
        assert_eq!(votes.wan(), Some(a("198.18.1.1:8000")));
        // Three distinct voter IPs each saw another port: symmetric NAT... not yet, 7000 and 8000
        // were each seen from one IP for 7000 and two IPs for 8000.
        assert_eq!(
            votes.connection_type(a("10.0.1.10:7000")),
            ConnectionType::Unknown
        );
        assert!(votes.expire(t0 + Duration::from_secs(181)));
        assert_eq!(votes.wan(), None);
        assert!(votes.is_empty());
    }

    #[test]
    fn connection_types() {
        let t0 = Instant::from_millis(1_000);
        let none: Vec<Interface> = vec![Interface {
            address: "198.18.0.50".parse().unwrap(),
            netmask: "255.255.255.255".parse().unwrap(),
        }];
        let mut public = Votes::new(10, Duration::from_secs(180));
        public.vote(t0, &none, a("198.18.0.10:1"), a("198.18.0.50:7"));
        public.vote(t0, &none, a("198.18.0.11:1"), a("198.18.0.50:7"));
        assert_eq!(
            public.connection_type(a("198.18.0.50:7")),
            ConnectionType::Public
        );
        let mut cone = Votes::new(10, Duration::from_secs(180));
        cone.vote(t0, &lan(), a("198.18.0.10:1"), a("198.18.1.1:7"));
        assert_eq!(
            cone.connection_type(a("10.0.1.10:7")),
            ConnectionType::Unknown
        );
        let mut symmetric = Votes::new(10, Duration::from_secs(180));
        symmetric.vote(t0, &lan(), a("198.18.0.10:1"), a("198.18.1.1:30001"));
        symmetric.vote(t0, &lan(), a("198.18.0.11:1"), a("198.18.1.1:30002"));
        symmetric.vote(t0, &lan(), a("198.18.0.12:1"), a("198.18.1.1:30003"));
        assert_eq!(
            symmetric.connection_type(a("10.0.1.10:7")),
            ConnectionType::SymmetricNat
        );
        // Bounded: the oldest vote goes.
        let mut bounded = Votes::new(2, Duration::from_secs(180));
        for i in 0..5u16 {
            bounded.vote(
                t0 + Duration::from_millis(u64::from(i)),
                &lan(),
                a(&format!("198.18.0.{}:1", i + 10)),
                a("198.18.1.1:7"),
            );
        }
        assert_eq!(bounded.len(), 2);
    }
}
