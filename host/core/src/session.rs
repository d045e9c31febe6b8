//! Sessions against IP spoofing (seed, wire protocol: session-request / session-response).
//!
//! A node answers an introduction-request with data only when the requester's address has
//! proven that it receives packets there. Otherwise it first sends a small session-request with
//! a random value (random_B) to that address; only the real owner of the address, which is
//! waiting for an answer to its walk, replies with a session-response carrying its own random
//! value (random_A). Both sides then share `session = random_A + random_B mod 2^32`, which every
//! later message between them carries. A spoofed request therefore earns its victim one small
//! session-request and nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::time::Instant;
use crate::wire::IntroductionRequest;

/// Bounds and lifetimes of the session table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A session unused this long is forgotten.
    pub lifetime: Duration,
    /// Most sessions kept.
    pub max_sessions: usize,
    /// Most handshakes waiting for a session-response.
    pub max_pending: usize,
    /// How long a handshake waits for its session-response.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lifetime: Duration::from_secs(120),
            max_sessions: 10_000,
            max_pending: 1_024,
            handshake_timeout: Duration::from_millis(10_500),
        }
    }
}

/// A session, and the one before it: when both sides walk to each other at the same time, two
/// handshakes cross and each side may keep another one as "current"; both stay valid.
#[derive(Debug, Clone, Copy)]
struct Session {
    id: u32,
    previous: u32,
    last_used: Instant,
}

/// A request waiting for the requester to prove its address.
#[derive(Debug, Clone)]
struct Pending {
    random: u32,
    request: IntroductionRequest,
    created: Instant,
}

/// The sessions of a node, by peer address.
#[derive(Debug, Clone)]
pub struct Sessions {
    config: Config,
    established: HashMap<SocketAddr, Session>,
    pending: HashMap<(SocketAddr, u32), Pending>,
}

impl Sessions {
    /// An empty table.
    pub fn new(config: Config) -> Self {
        Sessions {
            config,
            established: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// The session with `address`, if one is established.
    pub fn id(&self, address: &SocketAddr) -> Option<u32> {
        self.established.get(address).map(|s| s.id)
    }

    /// Whether `session` is the one established with `address` (0 never is); refreshes it.
    pub fn check(&mut self, now: Instant, address: SocketAddr, session: u32) -> bool {
        match self.established.get_mut(&address) {
            Some(s) if session != 0 && (s.id == session || s.previous == session) => {
                s.last_used = now;
                true
            }
            _ => false,
        }
    }

    /// Records the session `id` with `address`. When the table is full, the least recently used
    /// session is forgotten.
    pub fn establish(&mut self, now: Instant, address: SocketAddr, id: u32) {
        if !self.established.contains_key(&address)
            && self.established.len() >= self.config.max_sessions
            && let Some(oldest) = self
                .established
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(a, _)| *a)
        {
            self.established.remove(&oldest);
        }
        let previous = self.established.get(&address).map_or(0, |s| s.id);
        self.established.insert(
            address,
            Session {
                id,
                previous,
                last_used: now,
            },
        );
    }

    /// Starts a handshake with `address` for the request `request`, with our random value
    /// `random`. When too many handshakes wait, the oldest is dropped.
    pub fn start(
        &mut self,
        now: Instant,
        address: SocketAddr,
        random: u32,
        request: IntroductionRequest,
    ) {
        if self.pending.len() >= self.config.max_pending
            && let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.created)
                .map(|(k, _)| *k)
        {
            self.pending.remove(&oldest);
        }
        self.pending.insert(
            (address, request.walk),
            Pending {
                random,
                request,
                created: now,
            },
        );
    }

    /// Completes the handshake of walk `walk` with `address` using the requester's random value:
    /// establishes the session and returns it with the request to answer now.
    pub fn complete(
        &mut self,
        now: Instant,
        address: SocketAddr,
        walk: u32,
        random: u32,
    ) -> Option<(u32, IntroductionRequest)> {
        let pending = self.pending.remove(&(address, walk))?;
        if now.saturating_since(pending.created) > self.config.handshake_timeout {
            return None;
        }
        let id = pending.random.wrapping_add(random);
        if id == 0 {
            // 0 means "no session" on the wire; such a handshake must be redone.
            return None;
        }
        self.establish(now, address, id);
        Some((id, pending.request))
    }

    /// Forgets idle sessions and stale handshakes.
    pub fn expire(&mut self, now: Instant) {
        let lifetime = self.config.lifetime;
        let timeout = self.config.handshake_timeout;
        self.established
            .retain(|_, s| now.saturating_since(s.last_used) < lifetime);
        self.pending
            .retain(|_, p| now.saturating_since(p.created) <= timeout);
    }

    /// Number of established sessions.
    pub fn len(&self) -> usize {
        self.established.len()
    }

    /// Whether no session is established.
    pub fn is_empty(&self) -> bool {
        self.established.is_empty()
    }

    /// Number of handshakes waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
