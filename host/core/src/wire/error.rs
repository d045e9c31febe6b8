//! Why a datagram is not accepted: [`DecodeError`], the one error of every decoding operation.

use crate::identity::{KeyError, MemberId, SignatureError};
use crate::stats::DropReason;

/// Why a datagram was not accepted. Every variant is counted under [`DecodeError::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty datagram.
    #[error("empty datagram")]
    Empty,
    /// Larger than the datagram budget.
    #[error("datagram of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Received length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Not protobuf of the expected schema.
    #[error("malformed protobuf: {0}")]
    Protobuf(String),
    /// A descriptor with no message set.
    #[error("descriptor carries no message")]
    NoMessage,
    /// A message type this node does not handle (yet).
    #[error("unsupported message type {0}")]
    Unsupported(&'static str),
    /// A field the message needs is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field has a value outside its domain.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A member key that is not a valid key.
    #[error("invalid member key: {0}")]
    Key(#[from] KeyError),
    /// A member given only by its 20-byte id whose key is not known (yet): ask with
    /// missing-identity, then decode again.
    #[error("member {0} is not known; its public key is needed")]
    UnknownMember(MemberId),
    /// The number of signatures does not match the number of signing members.
    #[error("expected {expected} signatures, got {got}")]
    SignatureCount {
        /// Signing members.
        expected: usize,
        /// Signatures present.
        got: usize,
    },
    /// A signature does not verify.
    #[error("bad signature: {0}")]
    Signature(#[from] SignatureError),
}

impl DecodeError {
    /// The drop reason this error is counted under.
    pub fn reason(&self) -> DropReason {
        match self {
            DecodeError::Empty => DropReason::Empty,
            DecodeError::Oversized { .. } => DropReason::Oversized,
            DecodeError::Protobuf(_) => DropReason::Malformed,
            DecodeError::NoMessage => DropReason::NoMessage,
            DecodeError::Unsupported(_) => DropReason::Unsupported,
            DecodeError::Missing(_) => DropReason::MissingField,
            DecodeError::Invalid { .. } => DropReason::InvalidField,
            DecodeError::Key(_) => DropReason::InvalidKey,
            DecodeError::UnknownMember(_) => DropReason::UnknownMember,
            DecodeError::SignatureCount { .. } => DropReason::SignatureCount,
            DecodeError::Signature(_) => DropReason::BadSignature,
        }
    }

    /// A stable, low-cardinality name for counters and tests: the name of
    /// [`DecodeError::reason`].
    pub fn kind(&self) -> &'static str {
        self.reason().as_str()
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(error: prost::DecodeError) -> Self {
        DecodeError::Protobuf(error.to_string())
    }
}
