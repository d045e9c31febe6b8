//! Meta-messages: the policies that say how the host treats every message of one type.
//!
//! A community type (plugin) defines its meta-messages; each has a name, a numeric type used on
//! the wire, and the four policies of the seed's Usage chapter (authentication, resolution,
//! distribution, destination) plus a priority. [`MetaMessage::validate`] enforces the policy
//! combinations the original allowed, so a plugin that asks for a contradiction is refused at load
//! time with a message naming the meta.

use std::time::Duration;

/// The wire types (`CommunityMessage.message_type`) reserved for the host's built-in persistent
/// messages, the permission messages of [`crate::authority`]. A plugin meta may not use an id at
/// or above [`builtin::RESERVED_FROM`] ([`MetaMessage::validate`] refuses it), and the decoder
/// refuses a plugin message whose type is in that range. The low byte of each id is the
/// message's `Descriptor.Type` on the wire.
pub mod builtin {
    /// The lowest reserved id; plugin meta ids are below it.
    pub const RESERVED_FROM: u32 = 0xFFFF_FF00;
    /// dispersy-authorize (`Descriptor.Type` AUTHORIZE = 64).
    pub const AUTHORIZE: u32 = 0xFFFF_FF40;
    /// dispersy-revoke (REVOKE = 65).
    pub const REVOKE: u32 = 0xFFFF_FF41;
    /// dispersy-undo-own (UNDOOWN = 66).
    pub const UNDO_OWN: u32 = 0xFFFF_FF42;
    /// dispersy-undo-other (UNDOOTHER = 67).
    pub const UNDO_OTHER: u32 = 0xFFFF_FF43;
    /// dispersy-dynamic-settings (DYNAMICSETTINGS = 68).
    pub const DYNAMIC_SETTINGS: u32 = 0xFFFF_FF44;
    /// dispersy-destroy-community (DESTROYCOMMUNITY = 69).
    pub const DESTROY_COMMUNITY: u32 = 0xFFFF_FF45;

    /// Whether `id` is in the reserved range (whether or not a built-in message uses it).
    pub fn is_reserved(id: u32) -> bool {
        id >= RESERVED_FROM
    }

    /// Whether `id` is a built-in message the node handles: authorize, revoke and
    /// dynamic-settings (the messages of the permission timeline), undo-own and undo-other (the
    /// community's undo state, [`crate::undo`]) and destroy-community ([`crate::destroy`]).
    pub fn is_handled(id: u32) -> bool {
        meta(id).is_some()
    }

    /// The definitions of the handled built-in messages, part of every community without its
    /// plugin declaring them: member-authenticated, full-sync in ascending order, never pruned,
    /// like the original's. Authorize, revoke, dynamic-settings, undo-own and undo-other carry
    /// sequence numbers, have priority 128 (so synchronised) and go to 10 candidates;
    /// destroy-community carries none, has priority 192 and goes to 50 candidates. Their
    /// resolution field is not consulted: the permission timeline judges authorize, revoke,
    /// dynamic-settings and destroy-community, and the undo state ([`crate::undo::Undos`])
    /// judges the undos (an undo-own needs no permission, an undo-other `undo` on its
    /// target's meta).
    pub fn metas() -> &'static [super::MetaMessage] {
        static METAS: std::sync::LazyLock<Vec<super::MetaMessage>> =
            std::sync::LazyLock::new(|| {
                [
                    (AUTHORIZE, "dispersy-authorize", true, 128, 10),
                    (REVOKE, "dispersy-revoke", true, 128, 10),
                    (DYNAMIC_SETTINGS, "dispersy-dynamic-settings", true, 128, 10),
                    (UNDO_OWN, "dispersy-undo-own", true, 128, 10),
                    (UNDO_OTHER, "dispersy-undo-other", true, 128, 10),
                    (
                        DESTROY_COMMUNITY,
                        "dispersy-destroy-community",
                        false,
                        192,
                        50,
                    ),
                ]
                .into_iter()
                .map(
                    |(id, name, sequence_numbers, priority, node_count)| super::MetaMessage {
                        id,
                        name: name.into(),
                        authentication: super::Authentication::Member,
                        resolution: super::Resolution::Linear,
                        distribution: super::Distribution::FullSync {
                            sequence_numbers,
                            order: super::SyncOrder::Ascending,
                            pruning: None,
                        },
                        destination: super::Destination::Community { node_count },
                        priority,
                        batch_window: std::time::Duration::ZERO,
                    },
                )
                .collect()
            });
        &METAS
    }

    /// The handled built-in meta of type `id` ([`metas`]).
    pub fn meta(id: u32) -> Option<&'static super::MetaMessage> {
        metas().iter().find(|meta| meta.id == id)
    }
}

/// Who signs a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    /// Not signed, no author.
    None,
    /// Signed by its one author.
    Member,
    /// Signed by two members (obtained with signature-request / signature-response).
    DoubleMember,
}

impl Authentication {
    /// How many authors (and signatures) a message of this policy carries.
    pub fn signers(self) -> usize {
        match self {
            Authentication::None => 0,
            Authentication::Member => 1,
            Authentication::DoubleMember => 2,
        }
    }
}

/// Who may create a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Anyone.
    Public,
    /// Only members holding a permit in the timeline.
    Linear,
    /// Switchable between the listed policies by dynamic-settings, starting with the first.
    Dynamic(Vec<StaticResolution>),
}

/// The policies a dynamic resolution switches between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticResolution {
    /// Anyone.
    Public,
    /// Permit required.
    Linear,
}

/// In which order the sync responder offers the messages of one meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOrder {
    /// Oldest global time first.
    Ascending,
    /// Newest global time first.
    Descending,
    /// Random order.
    Random,
}

/// Removal of old messages by global time (the original's GlobalTimePruning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruning {
    /// Messages older than this many global-time units become inactive (not synced).
    pub inactive_after: u64,
    /// Messages older than this many global-time units are removed.
    pub prune_after: u64,
}

/// How a message spreads and whether it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    /// Sent once to its destination, handled, not stored.
    Direct,
    /// Sent to its destination like direct, then passed on by every receiver to a few random
    /// verified candidates while its signed hop budget lasts; handled once per node, not stored
    /// (see [`crate::relay`]).
    Relay,
    /// Stored and synchronised to every member.
    FullSync {
        /// Whether each author numbers its messages 1, 2, 3… without gaps.
        sequence_numbers: bool,
        /// Responder order.
        order: SyncOrder,
        /// Optional pruning.
        pruning: Option<Pruning>,
    },
    /// Stored and synchronised, keeping only the newest `history` messages per author.
    LastSync {
        /// How many messages per author are kept (at least 1).
        history: u16,
        /// Responder order.
        order: SyncOrder,
        /// Optional pruning.
        pruning: Option<Pruning>,
    },
}

impl Distribution {
    /// Whether messages of this distribution are stored and synchronised.
    pub fn is_persistent(&self) -> bool {
        matches!(
            self,
            Distribution::FullSync { .. } | Distribution::LastSync { .. }
        )
    }

    /// The pruning of a stored distribution, if any.
    pub fn pruning(&self) -> Option<Pruning> {
        match self {
            Distribution::FullSync { pruning, .. } | Distribution::LastSync { pruning, .. } => {
                *pruning
            }
            _ => None,
        }
    }

    /// Whether messages carry a sequence number.
    pub fn has_sequence_numbers(&self) -> bool {
        matches!(
            self,
            Distribution::FullSync {
                sequence_numbers: true,
                ..
            }
        )
    }
}

/// To whom a new message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The candidates the creator names.
    Candidate,
    /// `node_count` random verified candidates of the community.
    Community {
        /// How many candidates receive a new message (0: only sync spreads it).
        node_count: u16,
    },
}

/// The lowest priority that the bloom-filter sync still offers is `SYNC_PRIORITY_THRESHOLD + 1`.
pub const SYNC_PRIORITY_THRESHOLD: u8 = 32;

/// The definition of one message type of a community.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaMessage {
    /// Wire type (`CommunityMessage.message_type`), unique within the community.
    pub id: u32,
    /// Name used by the API and in logs, unique within the community.
    pub name: String,
    /// Signing policy.
    pub authentication: Authentication,
    /// Permission policy.
    pub resolution: Resolution,
    /// Spreading and storage policy.
    pub distribution: Distribution,
    /// Who receives a new message.
    pub destination: Destination,
    /// 0..=255; only above [`SYNC_PRIORITY_THRESHOLD`] is synchronised.
    pub priority: u8,
    /// How long incoming messages of this meta may wait to be handled together (0: at once).
    pub batch_window: Duration,
}

/// Why a meta-message definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Empty or over-long name, or not printable.
    #[error("meta-message name {0:?} must be 1..=64 printable characters")]
    Name(String),
    /// A combination of policies that the protocol does not allow.
    #[error("meta-message {name:?}: {reason}")]
    Combination {
        /// The meta's name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A wire type in the range reserved for built-in messages ([`builtin::RESERVED_FROM`]).
    #[error(
        "meta-message {name:?}: type {id:#x} is reserved for built-in messages (plugin types are below {:#x})",
        builtin::RESERVED_FROM
    )]
    ReservedId {
        /// The meta's name.
        name: String,
        /// The id it asked for.
        id: u32,
    },
    /// Two metas share a name or a wire type.
    #[error("meta-message {0:?} is defined twice (same name or same type)")]
    Duplicate(String),
}

impl MetaMessage {
    /// Whether the bloom-filter sync offers messages of this meta: stored, and a priority above
    /// [`SYNC_PRIORITY_THRESHOLD`].
    pub fn is_synced(&self) -> bool {
        self.distribution.is_persistent() && self.priority > SYNC_PRIORITY_THRESHOLD
    }

    /// Checks the name, that the id is below the reserved range ([`builtin::RESERVED_FROM`]),
    /// and the policy combinations of the original implementation (message.py).
    pub fn validate(&self) -> Result<(), MetaError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_graphic());
        if !name_ok {
            return Err(MetaError::Name(self.name.clone()));
        }
        if builtin::is_reserved(self.id) {
            return Err(MetaError::ReservedId {
                name: self.name.clone(),
                id: self.id,
            });
        }
        let fail = |reason| {
            Err(MetaError::Combination {
                name: self.name.clone(),
                reason,
            })
        };
        let persistent = self.distribution.is_persistent();
        if self.authentication == Authentication::None {
            if self.resolution != Resolution::Public {
                return fail("no-authentication requires public resolution");
            }
            if persistent {
                return fail("no-authentication messages cannot be synchronised");
            }
        }
        if persistent && self.destination == Destination::Candidate {
            return fail("synchronised messages need a community destination");
        }
        if self.distribution.has_sequence_numbers()
            && self.authentication == Authentication::DoubleMember
        {
            return fail("sequence numbers cannot be used with double-member authentication");
        }
        if let Distribution::LastSync { history: 0, .. } = self.distribution {
            return fail("last-sync needs a history of at least 1");
        }
        if let Resolution::Dynamic(policies) = &self.resolution
            && policies.is_empty()
        {
            return fail("dynamic resolution needs at least one policy");
        }
        if let Some(pruning) = self.distribution.pruning()
            && !(0 < pruning.inactive_after && pruning.inactive_after < pruning.prune_after)
        {
            return fail("pruning needs 0 < inactive threshold < prune threshold");
        }
        Ok(())
    }
}

/// Validates a whole set of metas: each one, and that names and types are unique.
pub fn validate_all(metas: &[MetaMessage]) -> Result<(), MetaError> {
    for (i, meta) in metas.iter().enumerate() {
        meta.validate()?;
        if metas[..i]
            .iter()
            .any(|other| other.name == meta.name || other.id == meta.id)
        {
            return Err(MetaError::Duplicate(meta.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MetaMessage {
        MetaMessage {
            id: 1,
            name: "example".into(),
            authentication: Authentication::Member,
            resolution: Resolution::Public,
            distribution: Distribution::Direct,
            destination: Destination::Community { node_count: 10 },
            priority: 128,
            batch_window: Duration::ZERO,
        }
    }

    #[test]
    fn combinations_of_the_original_are_enforced() {
        meta().validate().unwrap();
        let mut m = meta();
        m.authentication = Authentication::None;
        m.resolution = Resolution::Linear;
        assert!(m.validate().is_err());
        let mut m = meta();
        m.authentication = Authentication::None;
        m.distribution = Distribution::FullSync {
            sequence_numbers: false,
            order: SyncOrder::Ascending,
            pruning: None,
        };
        assert!(m.validate().is_err());
        let mut m = meta();
        m.distribution = Distribution::FullSync {
            sequence_numbers: true,
            order: SyncOrder::Ascending,
            pruning: None,
        };
        m.authentication = Authentication::DoubleMember;
        assert!(m.validate().is_err());
        // Relay goes first to given candidates or to random ones (the original allowed only the
        // former, and never carried relay).
        let mut m = meta();
        m.distribution = Distribution::Relay;
        m.validate().unwrap();
        m.destination = Destination::Candidate;
        m.validate().unwrap();
        let mut m = meta();
        m.name = "has space".into();
        assert!(matches!(m.validate(), Err(MetaError::Name(_))));
    }

    #[test]
    fn reserved_ids_are_refused() {
        let mut m = meta();
        m.id = builtin::RESERVED_FROM - 1;
        m.validate().unwrap();
        for id in [builtin::RESERVED_FROM, builtin::AUTHORIZE, u32::MAX] {
            m.id = id;
            let error = m.validate().unwrap_err();
            assert_eq!(
                error,
                MetaError::ReservedId {
                    name: "example".into(),
                    id
                }
            );
            assert!(error.to_string().contains("reserved"), "{error}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let mut other = meta();
        other.name = "other".into();
        assert!(validate_all(&[meta(), other.clone()]).is_err());
        other.id = 2;
        validate_all(&[meta(), other]).unwrap();
    }
}
