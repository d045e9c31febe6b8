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
//! # The permission messages: the wire contract
//!
//! Authorize, revoke, undo-own, undo-other, dynamic-settings and destroy-community are persistent
//! messages of the community: each is its own `Descriptor` field, and decodes to a
//! [`CommunityMessage`] with the kind's reserved type ([`crate::meta::builtin`]) and its body in
//! `authority` (see [`crate::authority`]). The decoder enforces, with a typed [`DecodeError`]:
//!
//! - a. `member` (the author), `Target.member` and `UndoOther.target_member` are a 33-byte
//!   compressed key or a 20-byte member id, as `CommunityMessage.members`. The author is resolved
//!   through [`Keys`] like a community author (an unknown id is [`DecodeError::UnknownMember`]:
//!   the node asks missing-identity); a target named by id stays an id (nothing is looked up).
//!   Exactly one signature, by the author, over the descriptor.
//! - b. `version` is required and 1.
//! - c. `community` is 20 bytes; `global_time` is required and 1 or higher.
//! - d. `sequence_number` is required (1 or higher) for all but destroy-community, which has no
//!   such field. Its scope is the author and the kind (a member's authorize numbers are
//!   independent of its revoke numbers): (community, member, meta) as for a plugin meta with
//!   sequence numbers, the reserved type being the meta.
//! - e. Authorize and revoke name one or more targets, each with one or more permissions, at most
//!   [`crate::timeline::MAX_GRANTS`] permissions in all. `Permission.target` is a
//!   `community_message` below the reserved range (a plugin meta), or `message` DYNAMICSETTINGS
//!   or DESTROYCOMMUNITY; no other built-in type takes permissions. `Permission.permission` is
//!   required (PERMIT, AUTHORIZE, REVOKE, UNDO). `Target.global_time` is optional and, when
//!   present, equals the message's global time: a grant takes effect at its message's time.
//! - f. Undo-own's and undo-other's `target_global_time` is 1 or higher and below the message's
//!   global time; undo-other's `target_member` is required. `(target_member or the author,
//!   target_global_time)` names the undone message (one message per member and global time).
//!   An undo-other needs `undo` on the target's meta at the undo's global time; an undo-own
//!   needs no permission; the target's meta must be undoable. Both are full-sync with sequence
//!   numbers, priority 128, sent to 10 candidates, like the original's, and are stored and
//!   synced whether or not they are valid (a receiver judges them against its own timeline and
//!   store: [`crate::undo`]). A node creating an undo-other names the target by its 20-byte id.
//!   A node whose undo-own of a target loses to a binary-lower one of the same member sends the
//!   winner back to the sender.
//! - g. Dynamic-settings names a plugin meta (`target_community_message`; a `target_message` is
//!   invalid: no built-in message has dynamic resolution), `target_policy` RESOLUTION (the only
//!   policy switched), and `target_index`, the index in the meta's list of dynamic policies,
//!   which the node checks against the definition ([`crate::authority::record`] maps it).
//! - h. Destroy-community's `degree` is required, SOFT or HARD. A soft destroy freezes the
//!   community at the destroy message's own global time (rule m). Its author needs `permit` on
//!   DESTROYCOMMUNITY at that global time; it is never undone.
//! - i. They travel inside collections (`Collection.messages`), mixed freely with plugin messages
//!   of the same community; a bare permission message datagram is invalid. When one entry of a
//!   collection fails to decode or verify, the whole datagram is dropped (the sender's fault is
//!   in the datagram, and nothing of it is trusted); the checks after decoding (permission,
//!   plugin check, sequence numbers) judge each entry alone. A plugin message whose
//!   `message_type` is in the reserved range is invalid, and so is a temporary message in a
//!   collection.
//! - j. Missing-proof ([`MissingProof`]) names a member (key or id) and 1 to
//!   [`MAX_MISSING_TIMES`] global times of its messages, unsigned. The answer is a collection
//!   holding the proof records (authorize, revoke, dynamic-settings) of the named messages, one
//!   level up the chain of authority per request: a requester that lacks the proof of a proof
//!   record asks again for it. A destroy-community's proof is the grants of its author's
//!   `permit` on destroy-community at its global time.
//! - k. `CommunityMessage.resolution_index` on a message of a meta with dynamic resolution is
//!   optional and only informative: a receiver judges the message by the policy its own timeline
//!   gives at the message's global time, not by the index (as the original did), and pushes its
//!   dynamic-settings records back to a sender whose index disagrees.
//! - l. What a destroyed community answers ([`crate::destroy`]): a hard-destroyed community
//!   answers an introduction-request from a proven address (one with an established session)
//!   with a collection holding its destroy-community message alone, naming that session, and
//!   sends no introduction-response, no puncture-request and no sync answer; every community
//!   message sent to it is dropped (`destroyed`); it still answers missing-proof (the proof of
//!   the destroy is the grants of its author's `permit` on destroy-community, which it keeps).
//!   A node that stores a destroy it did not create forwards it at once, in a collection, to up
//!   to 50 verified candidates. A soft-destroyed community answers as before, from what it
//!   keeps.
//! - m. The global time a soft destroy freezes at is its own `global_time` `T`: messages at or
//!   below `T` are kept, served and still accepted; every message above `T` (persistent or
//!   not; a hard destroy excepted) is refused (`frozen`) and deleted where held; the frozen
//!   node's clock stays at `T` (its introduction-requests and -responses carry at most `T`).
//!   Of two soft destroys the lower `T` wins (then the binary-lower packet); a hard destroy
//!   wins over any soft one.
//!
//! # Co-signing: the signature-response
//!
//! A [`SignatureResponse`] carries the message the co-signer signed (its own descriptor and its
//! one signature, by the second author). It may differ from the [`SignatureRequest`]'s in its
//! payload only (the original's Allow=Modify and Allow=Append); community, meta, conversion,
//! both members, global time and the absent sequence number, resolution index and relay hops
//! are the request's, or the first author drops it. The first author signs the descriptor of
//! the response, not of its request. See [`crate::signature`].
//!
//! Layout, by concern: `packet` holds the domain types; `decoding` turns datagrams into them (one
//! `from_proto` per packet kind, dispatched by [`decode`]) and `encoding` back ([`Packet::encode`],
//! one `to_proto` per kind, and the signing of community messages); `authority` reads and writes
//! the permission messages; `field` converts the single
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
