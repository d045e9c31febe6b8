//! Members a node knows: public keys by member id, and the missing-identity exchange.
//!
//! Walker messages name their signer by its 20-byte member id (seed, "Peer Discovery": the
//! introduction messages do not carry the public key). A node that does not know the key keeps
//! the datagram aside, asks the sender with a missing-identity, and decodes the datagram again
//! when the identity arrives. Everything here is bounded: keys, waiting datagrams, open requests.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::{KeyError, MemberId, PUBLIC_KEY_LEN, PublicKey};
use crate::time::Instant;
use crate::wire::Keys;

/// Bounds of the member cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most public keys kept (the oldest learnt goes first).
    pub max_keys: usize,
    /// Most datagrams waiting for an identity.
    pub max_waiting: usize,
    /// How long a datagram waits for its identity.
    pub identity_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_keys: 10_000,
            max_waiting: 256,
            identity_timeout: Duration::from_millis(10_000),
        }
    }
}

/// A datagram waiting for the key of `member`.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// Its source.
    pub from: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
    /// Whose key it needs.
    pub member: MemberId,
    /// When it is given up.
    pub deadline: Instant,
}

/// An open missing-identity request.
#[derive(Debug, Clone, Copy)]
struct Request {
    address: SocketAddr,
    random: u32,
    deadline: Instant,
}

/// Known keys and the identity requests in flight.
#[derive(Debug, Clone)]
pub struct Members {
    config: Config,
    keys: HashMap<MemberId, PublicKey>,
    order: VecDeque<MemberId>,
    requests: HashMap<MemberId, Request>,
    waiting: VecDeque<Waiting>,
}

impl Keys for Members {
    fn key(&self, mid: &MemberId) -> Option<PublicKey> {
        self.keys.get(mid).cloned()
    }
}

impl Members {
    /// A cache holding only `own`, which is never evicted.
    pub fn new(config: Config, own: PublicKey) -> Self {
        let mut members = Members {
            config,
            keys: HashMap::new(),
            order: VecDeque::new(),
            requests: HashMap::new(),
            waiting: VecDeque::new(),
        };
        members.keys.insert(own.member_id(), own);
        members
    }

    /// Learns `key`.
    pub fn learn(&mut self, key: PublicKey) {
        let mid = key.member_id();
        if self.keys.contains_key(&mid) {
            return;
        }
        if self.order.len() >= self.config.max_keys
            && let Some(oldest) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        self.order.push_back(mid);
        self.keys.insert(mid, key);
    }

    /// Keeps `bytes` until the key of `member` arrives. Returns the random value of a new
    /// missing-identity to send to `from`, or `None` when a request for this member is already
    /// open or nothing more can wait (the datagram is then dropped).
    pub fn wait_for(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        member: MemberId,
        random: u32,
    ) -> Result<Option<u32>, Full> {
        if self.waiting.len() >= self.config.max_waiting {
            return Err(Full);
        }
        let deadline = now + self.config.identity_timeout;
        self.waiting.push_back(Waiting {
            from,
            bytes: bytes.to_vec(),
            member,
            deadline,
        });
        if self.requests.get(&member).is_some_and(|r| r.deadline > now) {
            return Ok(None);
        }
        self.requests.insert(
            member,
            Request {
                address: from,
                random,
                deadline,
            },
        );
        Ok(Some(random))
    }

    /// Accepts `key` from `from` when it answers our open request with `random`; returns the
    /// datagrams that waited for it.
    pub fn identity(
        &mut self,
        from: SocketAddr,
        random: u32,
        key: PublicKey,
    ) -> Option<Vec<Waiting>> {
        let mid = key.member_id();
        match self.requests.get(&mid) {
            Some(r) if r.address == from && r.random == random => {}
            _ => return None,
        }
        self.requests.remove(&mid);
        self.learn(key);
        let (ready, rest): (Vec<Waiting>, Vec<Waiting>) =
            self.waiting.drain(..).partition(|w| w.member == mid);
        self.waiting = rest.into();
        Some(ready)
    }

    /// Drops requests and datagrams past their deadline; returns how many datagrams gave up.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.requests.retain(|_, r| r.deadline > now);
        let before = self.waiting.len();
        self.waiting.retain(|w| w.deadline > now);
        before - self.waiting.len()
    }

    /// The earliest deadline of a waiting datagram.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }

    /// Number of keys known (our own included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never empty: our own key is always known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Too many datagrams wait for identities already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many datagrams wait for identities")]
pub struct Full;

/// Keys parsed from packets, by their 33-byte compressed form, for a decoder that sees the same
/// authors again and again: parsing a key (decompressing the point, hashing the member id) costs
/// about a sixth of a signature check. Bounded: when full, one entry makes room. It knows no
/// member by id (decoding on its own, it leaves those to the node's [`Members`]).
#[derive(Debug)]
pub struct KeyCache {
    capacity: usize,
    keys: RefCell<HashMap<[u8; PUBLIC_KEY_LEN], PublicKey>>,
}

impl KeyCache {
    /// An empty cache keeping at most `capacity` keys (0: parse every time).
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            capacity,
            keys: RefCell::new(HashMap::new()),
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.borrow().len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Keys for KeyCache {
    fn key(&self, _mid: &MemberId) -> Option<PublicKey> {
        None
    }

    fn parse(&self, bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<PublicKey, KeyError> {
        if let Some(key) = self.keys.borrow().get(bytes) {
            return Ok(key.clone());
        }
        let key = PublicKey::from_bytes(bytes)?;
        if self.capacity > 0 {
            let mut keys = self.keys.borrow_mut();
            if keys.len() >= self.capacity {
                let any = keys.keys().next().copied();
                if let Some(any) = any {
                    keys.remove(&any);
                }
            }
            keys.insert(*bytes, key.clone());
        }
        Ok(key)
    }
}
