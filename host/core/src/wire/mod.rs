//! The wire format: datagrams to validated domain types and back.
//!
//! This is the only module besides the `proto` crate that sees prost types. [`decode`] turns any
//! byte string into a [`Packet`] or a [`DecodeError`]: it checks the size, parses the protobuf,
//! checks every field the domain type needs, and verifies every signature. A value of a type in
//! this module has therefore passed all checks that need no node state; what needs state (is this
//! walk identifier ours, does this meta exist) is for the node.
//!
//! Every datagram is one `Message` whose `descriptor` holds the serialized `Descriptor`; the
//! signatures cover SHA-256 of exactly those bytes. Persistent (community) messages travel inside a
//! `Collection`, each as its own signed `Message`, and are stored verbatim as their `packet` bytes.
//!
//! Layout, by concern: `packet` holds the domain types; `decoding` turns datagrams into them (one
//! `from_proto` per packet kind, dispatched by [`decode`]) and `encoding` back ([`Packet::encode`],
//! one `to_proto` per kind, and the signing of community messages); `field` converts the single
//! fields both ways; `batch` checks signatures at once or for a whole batch ([`decode_batch`]);
//! `collection` builds collection datagrams from stored packets; `error` holds [`DecodeError`].
//! Everything public is re-exported here: the paths are `wire::X`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::identity::{KeyError, MemberId, PUBLIC_KEY_LEN, PublicKey};

mod authority;
mod batch;
mod collection;
mod decoding;
mod encoding;
mod error;
mod field;
mod packet;

pub use batch::decode_batch;
pub use collection::{COLLECTION_OVERHEAD, encode_collection, encode_collections, encode_relay};
pub use decoding::{decode, peek};
pub use encoding::SignError;
pub use error::DecodeError;
pub use packet::{
    Collection, CommunityMessage, ConnectionType, Conversion, Identity, IntroductionRequest,
    IntroductionResponse, MAX_MISSING_TIMES, MissingIdentity, MissingLastMessage, MissingMessage,
    MissingProof, MissingSequence, Packet, Puncture, PunctureRequest, SessionRequest,
    SessionResponse, SignatureRequest, SignatureResponse, SignedMessage, Synchronization,
};

/// The session handshake version this node speaks.
pub const SESSION_VERSION: u32 = 1;

/// Where the decoder looks up members that a packet names by their 20-byte id only, and how it
/// turns the 33-byte keys a packet carries into points.
pub trait Keys {
    /// The public key of member `mid`, if known.
    fn key(&self, mid: &MemberId) -> Option<PublicKey>;

    /// The key whose compressed form is `bytes`. Parsing decompresses the point and hashes the
    /// member id; a cache of parsed keys answers without doing either again.
    fn parse(&self, bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<PublicKey, KeyError> {
        PublicKey::from_bytes(bytes)
    }
}

/// No keys: every member named by id only is unknown.
impl Keys for () {
    fn key(&self, _mid: &MemberId) -> Option<PublicKey> {
        None
    }
}

impl Keys for std::collections::HashMap<MemberId, PublicKey> {
    fn key(&self, mid: &MemberId) -> Option<PublicKey> {
        self.get(mid).cloned()
    }
}

/// The default largest datagram the node sends or accepts: the 1500-byte MTU budget.
pub const DEFAULT_MAX_DATAGRAM: usize = 1500;

/// A placeholder address meaning "not known" (0.0.0.0:0).
pub const UNKNOWN_ADDRESS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

#[cfg(test)]
mod tests;

#[cfg(test)]
mod authority_tests;
