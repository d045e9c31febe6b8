//! Double-member authentication: a message signed by two members (original-implementation §8.3;
//! seed: "signature-request", "signature-response").
//!
//! The first author builds the message naming both authors, claims its global time and asks the
//! second with a signature-request ([`crate::node::Node::request_signature`]). The second author's
//! node asks its plugin ([`crate::node::Event::SignatureAsked`], answered by
//! [`crate::node::Node::handle_signature_verdict`]) and, if allowed, answers with its signature
//! over the very same descriptor. The first author checks it, adds its own and, like any other
//! message it creates, has its plugin check it before publishing it
//! ([`crate::node::Event::Created`] tells the driver). A
//! response for another descriptor (a modified message) is refused: both sign exactly what the
//! first proposed. Requests in flight on both sides are bounded in count and time.
//!
//! This module holds the bounds, the error and the records of requests in flight; the node's
//! side of the exchange is in `node/signature.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::CommunityId;
use crate::time::Instant;
use crate::wire::CommunityMessage;

/// Bounds of co-signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long the first author waits for the signature (the original's 10 s), and how long
    /// the second author's plugin may take to decide.
    pub timeout: Duration,
    /// Requests in flight at once, on each side.
    pub max_pending: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(10),
            max_pending: 64,
        }
    }
}

/// Why a double-member message was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The co-signer did not answer in time (or refused: a refusal is silent, as in the
    /// original).
    #[error("the co-signer did not sign within the timeout")]
    Timeout,
    /// The co-signer answered with another message.
    #[error("the co-signer signed another message")]
    Modified,
}

/// Our signature-request waiting for its response.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub community: CommunityId,
    pub message: CommunityMessage,
    pub descriptor: Vec<u8>,
    /// The co-signer's address.
    pub to: SocketAddr,
    /// Explicit destinations given at creation.
    pub candidates: Vec<SocketAddr>,
    pub deadline: Instant,
}

/// A signature-request to us, waiting for our plugin's verdict.
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub from: SocketAddr,
    /// The requester's identifier.
    pub request: u32,
    pub message: CommunityMessage,
    pub descriptor: Vec<u8>,
    pub deadline: Instant,
}
