//! Double-member authentication: a message signed by two members (original-implementation §8.3;
//! seed: "signature-request", "signature-response").
//!
//! The first author builds the message naming both authors, claims its global time and asks the
//! second with a signature-request ([`crate::node::Node::request_signature`] for the control
//! API, [`crate::node::Node::propose`] for a plugin). The second author's node asks its plugin
//! ([`crate::node::Event::SignatureAsked`], answered by
//! [`crate::node::Node::handle_cosign_verdict`] with a [`Cosign`]): refuse (nothing is sent, as
//! in the original), sign the message as proposed, sign it with its payload replaced
//! ([`Cosign::Modify`]) or with bytes appended to its payload ([`Cosign::Append`]): the
//! original's Allow=Modify and Allow=Append. A changed message keeps everything but its
//! payload (meta, conversion, both authors, global time); one that would not fit a datagram
//! with both signatures is refused (counted as a refused signature).
//!
//! The first author checks the response: the same request, from the address asked, signed by
//! the second author, and differing from the proposal in its payload only (anything else is
//! dropped, [`crate::stats::DropReason::SignatureResponseModified`], and the request ends in
//! [`SignError::Modified`]). It classifies the answer ([`Answer::of`]): unchanged is
//! [`Answer::Signed`]; a payload that starts with the proposed one and is longer is
//! [`Answer::Appended`]; any other is [`Answer::Modified`]. Then its plugin decides
//! ([`crate::node::Event::Cosigned`], answered by [`crate::node::Node::handle_cosigned`]):
//! - a message a plugin proposed ([`crate::node::Node::propose`]): its plugin is asked about
//!   every answer, unchanged ones too, and told of the expiry ([`Answer::Timeout`], nothing to
//!   answer);
//! - a message the control API proposed ([`crate::node::Node::request_signature`]): an
//!   unchanged answer is published at once, as before; a changed one only if the plugin accepts
//!   it (the driver asks it with token 0); the expiry is the request's error only.
//!
//! Accepted, the first author adds its signature over the co-signer's descriptor and, like any
//! other message it creates, has its plugin check it before publishing it
//! ([`crate::node::Event::Created`] tells the driver). Declined, nothing is sent or stored,
//! the decline is counted ([`crate::stats::Traffic::SignatureDeclined`]) and the request ends in
//! [`SignError::Declined`]. Requests in flight on both sides are bounded in count and time; the
//! plugin's decision on an answer is bounded by the node's `check_timeout`.
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
    /// The co-signer answered with a message that differs in more than its payload.
    #[error("the co-signer signed another message (more than its payload changed)")]
    Modified,
    /// The co-signer changed the payload and our plugin declined the changed message.
    #[error("the co-signer changed the message and this node's plugin declined it")]
    Declined,
    /// Our plugin did not decide on the co-signer's answer in time.
    #[error("this node's plugin did not decide on the co-signer's answer in time")]
    Undecided,
}

/// A co-signer's plugin's answer to a proposed double-member message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cosign {
    /// Refuse: nothing is sent back.
    Refuse,
    /// Sign the message as proposed.
    Sign,
    /// Sign the message with this payload instead (written in the proposed conversion).
    Modify(Vec<u8>),
    /// Sign the message with these bytes appended to its payload.
    Append(Vec<u8>),
}

impl Cosign {
    /// The payload the co-signer signs for `proposed`; `None` for a refusal.
    pub fn payload(self, proposed: &[u8]) -> Option<Vec<u8>> {
        match self {
            Cosign::Refuse => None,
            Cosign::Sign => Some(proposed.to_vec()),
            Cosign::Modify(payload) => Some(payload),
            Cosign::Append(tail) => {
                let mut payload = proposed.to_vec();
                payload.extend_from_slice(&tail);
                Some(payload)
            }
        }
    }
}

/// What the co-signer did with a message we proposed, as the first author sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Signed unchanged.
    Signed,
    /// Signed with another payload.
    Modified,
    /// Signed with bytes appended to the payload.
    Appended,
    /// No answer in time (refused, or unreachable).
    Timeout,
}

impl Answer {
    /// Classifies the payload the co-signer signed (`answered`) against the one proposed:
    /// equal is [`Answer::Signed`], longer and starting with the proposed one
    /// [`Answer::Appended`], anything else [`Answer::Modified`].
    pub fn of(proposed: &[u8], answered: &[u8]) -> Answer {
        if answered == proposed {
            Answer::Signed
        } else if answered.len() > proposed.len() && answered.starts_with(proposed) {
            Answer::Appended
        } else {
            Answer::Modified
        }
    }
}

/// Whom the first author's plugin is asked about the co-signer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consult {
    /// Every answer, and the expiry (a message a plugin proposed).
    Always,
    /// Only a changed answer (a message the control API proposed).
    Changed,
}

/// A co-signer's answer waiting for our plugin's decision.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    /// The message as the co-signer signed it.
    pub message: CommunityMessage,
    /// Its descriptor, the bytes both sign.
    pub descriptor: Vec<u8>,
    /// The co-signer's signature over it.
    pub signature: Vec<u8>,
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
    /// When our plugin is asked about the answer.
    pub consult: Consult,
    /// The co-signer's answer, once it came and while our plugin decides.
    pub answered: Option<Answered>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_their_payload() {
        assert_eq!(Answer::of(b"ab", b"ab"), Answer::Signed);
        assert_eq!(Answer::of(b"ab", b"abc"), Answer::Appended);
        assert_eq!(Answer::of(b"ab", b"a"), Answer::Modified);
        assert_eq!(Answer::of(b"ab", b"xbc"), Answer::Modified);
        assert_eq!(Answer::of(b"", b"x"), Answer::Appended);
    }

    #[test]
    fn a_verdict_gives_the_payload_the_co_signer_signs() {
        assert_eq!(Cosign::Refuse.payload(b"ab"), None);
        assert_eq!(Cosign::Sign.payload(b"ab"), Some(b"ab".to_vec()));
        assert_eq!(
            Cosign::Modify(b"x".to_vec()).payload(b"ab"),
            Some(b"x".to_vec())
        );
        assert_eq!(
            Cosign::Append(b"c".to_vec()).payload(b"ab"),
            Some(b"abc".to_vec())
        );
    }
}
