//! The built-in permission messages of a community: authorize, revoke, undo-own, undo-other,
//! dynamic-settings and destroy-community, as validated domain types.
//!
//! # Representation
//!
//! They are persistent messages of the community like any plugin message: a
//! [`CommunityMessage`] whose `message_type` is one of the reserved ids of [`builtin`] and whose
//! [`CommunityMessage::authority`] holds the decoded [`Body`]. Their `conversion` is
//! [`Conversion::builtin`] (the single byte 0x01, never looked up among the plugin's
//! conversions), their `payload` is empty, and they carry no `resolution_index` and no
//! `relay_hops`. They have exactly one author, who signs. Every one but destroy-community carries
//! a sequence number, numbered per author and per kind (a member's authorize numbers are
//! independent of its revoke numbers): the scope (community, member, meta) of a plugin meta with
//! sequence numbers, the kind's reserved id being the meta. So the node stores, syncs and
//! checks them with the machinery of plugin messages; only the wire form differs (each is its own
//! `Descriptor` field, see the `wire` module and `proto/protos/dispersy.proto`).
//!
//! Authorize, revoke and dynamic-settings feed the permission [`timeline`]: [`record`] turns one
//! into a [`timeline::Record`]. Undo-own and undo-other feed the community's undo state
//! ([`crate::undo::Undos`]): [`undo_record`] turns one into an [`undo::Record`]. An undo is
//! stored and synced whether or not it is valid (an undo-other whose author lacks `undo` is held
//! invalid and may become valid; rule 4 of [`crate::undo`]); only a valid undo hides its
//! target.

use crate::identity::{CommunityId, MemberId, PublicKey};
use crate::meta::{MetaMessage, Resolution, StaticResolution};
use crate::stats::DropReason;
use crate::timeline::{self, Act, Grant, Permission, RecordId, Subject};
use crate::undo;
use crate::wire::{CommunityMessage, Conversion};

pub use crate::meta::builtin;

/// A member named by a permission message: by its 33-byte key or by its 20-byte id. The id is
/// always known; the key when the message gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// The member id.
    pub id: MemberId,
    /// The public key, when the message carried it (the encoder then writes the key, else the id).
    pub key: Option<PublicKey>,
}

impl MemberRef {
    /// A member named by its key (its id derived from it).
    pub fn from_key(key: PublicKey) -> Self {
        MemberRef {
            id: key.member_id(),
            key: Some(key),
        }
    }

    /// A member named by its id only.
    pub fn from_id(id: MemberId) -> Self {
        MemberRef { id, key: None }
    }
}

/// How thoroughly a community is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Degree {
    /// Frozen at the destroy message's global time: nothing newer is accepted, what is held stays.
    Soft,
    /// Everything of the community is removed.
    Hard,
}

/// One member and the permissions an authorize grants it (or a revoke takes from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The member.
    pub member: MemberRef,
    /// The permissions, one or more, each on one subject.
    pub grants: Vec<(Subject, Permission)>,
}

/// What a built-in permission message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Grants every target its permissions, from the message's global time on.
    Authorize(Vec<Target>),
    /// Takes every target's permissions, from the message's global time on.
    Revoke(Vec<Target>),
    /// Undoes the author's own message at `target_global_time`.
    UndoOwn {
        /// Global time of the undone message (1 or more, below the undo's own).
        target_global_time: u64,
    },
    /// Undoes another member's message.
    UndoOther {
        /// The author of the undone message.
        target: MemberRef,
        /// Global time of the undone message (1 or more, below the undo's own).
        target_global_time: u64,
    },
    /// Switches the resolution policy of a plugin meta of dynamic resolution, from the next
    /// global time on.
    DynamicSettings {
        /// The plugin meta's id.
        meta: u32,
        /// Index of the new policy in the meta's list of dynamic policies (checked against the
        /// definition by the node, not by the decoder).
        index: u32,
    },
    /// Destroys the community.
    Destroy(Degree),
}

impl Body {
    /// The grants of an authorize or a revoke, one per (target, permission), in message order;
    /// empty for the other kinds.
    pub fn grants(&self) -> Vec<Grant> {
        match self {
            Body::Authorize(targets) | Body::Revoke(targets) => targets
                .iter()
                .flat_map(|target| {
                    target.grants.iter().map(|&(subject, permission)| Grant {
                        member: target.member.id,
                        subject,
                        permission,
                    })
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The kind's name for logs and counters: `authorize`, `revoke`, `undo-own`, `undo-other`,
    /// `dynamic-settings` or `destroy-community`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Body::Authorize(_) => "authorize",
            Body::Revoke(_) => "revoke",
            Body::UndoOwn { .. } => "undo-own",
            Body::UndoOther { .. } => "undo-other",
            Body::DynamicSettings { .. } => "dynamic-settings",
            Body::Destroy(_) => "destroy-community",
        }
    }

    /// The reserved message type of the kind (see [`builtin`]).
    pub fn message_type(&self) -> u32 {
        match self {
            Body::Authorize(_) => builtin::AUTHORIZE,
            Body::Revoke(_) => builtin::REVOKE,
            Body::UndoOwn { .. } => builtin::UNDO_OWN,
            Body::UndoOther { .. } => builtin::UNDO_OTHER,
            Body::DynamicSettings { .. } => builtin::DYNAMIC_SETTINGS,
            Body::Destroy(_) => builtin::DESTROY_COMMUNITY,
        }
    }

    /// Whether messages of this kind carry a sequence number (all but destroy-community).
    pub fn has_sequence_number(&self) -> bool {
        !matches!(self, Body::Destroy(_))
    }
}

/// A built-in message of `community` by `author` at `global_time`, ready to sign with
/// [`crate::wire::SignedMessage::sign`] by the author's key. `sequence_number` must be `Some`
/// (1 or more) for every kind but destroy-community, and `None` for it, or the receivers refuse
/// the message; the message type, conversion and empty payload follow from `body`.
pub fn message(
    community: CommunityId,
    author: PublicKey,
    global_time: u64,
    sequence_number: Option<u32>,
    body: Body,
) -> CommunityMessage {
    CommunityMessage {
        community,
        message_type: body.message_type(),
        conversion: Conversion::builtin(),
        authors: vec![author],
        global_time,
        sequence_number,
        resolution_index: None,
        relay_hops: None,
        payload: Vec::new(),
        authority: Some(body),
    }
}

/// The timeline record of an authorize, revoke or dynamic-settings `message` whose signed packet
/// is `packet`: id SHA-256 of the packet, author its first author, act from its body. For a
/// dynamic-settings, `resolution` gives the resolution of a plugin meta by id, and the index is
/// mapped to the policy at that place of the meta's dynamic list. `None` for the other kinds, for
/// a plugin message, for a message without an author, and for a dynamic-settings whose meta is
/// unknown, not of dynamic resolution, or whose index is out of its list's range.
pub fn record<'a>(
    message: &CommunityMessage,
    packet: &[u8],
    resolution: impl FnOnce(u32) -> Option<&'a Resolution>,
) -> Option<timeline::Record> {
    let body = message.authority.as_ref()?;
    let act = match body {
        Body::Authorize(_) => Act::Authorize(body.grants()),
        Body::Revoke(_) => Act::Revoke(body.grants()),
        Body::DynamicSettings { meta, index } => {
            let policy = dynamic_policy(resolution(*meta)?, *index)?;
            Act::Settings {
                meta: *meta,
                policy,
            }
        }
        Body::UndoOwn { .. } | Body::UndoOther { .. } | Body::Destroy(_) => return None,
    };
    Some(timeline::Record {
        id: RecordId::of_packet(packet),
        author: message.authors.first()?.member_id(),
        global_time: message.global_time,
        act,
    })
}

/// The undo record of an undo-own or undo-other `message` whose signed packet is `packet`: id
/// SHA-256 of the packet, `packet_order` the packet, author its first author, target the
/// author (undo-own) or the named member (undo-other) at the named global time. `None` for the
/// other kinds, for a plugin message and for a message without an author.
pub fn undo_record(message: &CommunityMessage, packet: &[u8]) -> Option<undo::Record> {
    let author = message.authors.first()?.member_id();
    let (kind, member, global_time) = match message.authority.as_ref()? {
        Body::UndoOwn { target_global_time } => (undo::Kind::Own, author, *target_global_time),
        Body::UndoOther {
            target,
            target_global_time,
        } => (undo::Kind::Other, target.id, *target_global_time),
        _ => return None,
    };
    Some(undo::Record {
        id: RecordId::of_packet(packet),
        packet_order: packet.to_vec(),
        author,
        global_time: message.global_time,
        target: undo::Target {
            member,
            global_time,
        },
        kind,
    })
}

/// What the permission rules say of a received message before it goes to the store and the
/// plugin ([`judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Allowed now (or needs no permission): stored and handled.
    Allowed,
    /// Wrong against the community's definition: dropped for this reason.
    Drop(DropReason),
    /// Not allowed by the timeline held now: it waits for the proof. `push` names the
    /// dynamic-settings records that set the policy denying it, which the sender lacks when
    /// its policy disagrees (sent to it, as the original did).
    Wait {
        /// Settings records to send to the sender.
        push: Vec<RecordId>,
    },
}

/// Judges a received community message of a community whose plugin metas are `metas` against
/// its `timeline`:
///
/// - an authorize or revoke must name, in each grant, a plugin meta of `metas` or a
///   built-in subject (else [`DropReason::UnknownPermissionSubject`]); a dynamic-settings must
///   name a plugin meta of dynamic resolution and an index in its list of policies (else
///   [`DropReason::InvalidDynamicSettings`]); then its record must be valid if inserted now
///   ([`timeline::Timeline::judge`]) or its author an authority
///   ([`timeline::Timeline::is_authority`]: the record is held invalid, rule 13 of the
///   timeline), else it waits;
/// - undo-own and undo-other are allowed (stored and synced): the undo state judges them once
///   stored ([`crate::undo`]; the decoder checked that the target is older than the undo);
/// - a destroy-community's author must hold `permit` on [`Subject::DestroyCommunity`] at its
///   global time ([`timeline::Timeline::may`]), else it waits;
/// - a plugin message of a Linear meta, or of a Dynamic meta whose policy at its global time is
///   Linear, must be allowed for all its authors ([`timeline::Timeline::may_all`]), else it
///   waits (pushing the deciding settings for a Dynamic meta); any other message is allowed.
///
/// `packet` is the message's signed packet (a record's id is its hash).
pub fn judge(
    metas: &[MetaMessage],
    timeline: &timeline::Timeline,
    message: &CommunityMessage,
    packet: &[u8],
) -> Judgement {
    let Some(body) = &message.authority else {
        let Some(meta) = metas.iter().find(|m| m.id == message.message_type) else {
            return Judgement::Allowed;
        };
        if meta.resolution == Resolution::Public {
            return Judgement::Allowed;
        }
        let authors: Vec<_> = message.authors.iter().map(PublicKey::member_id).collect();
        let verdict = timeline.may_all(&authors, Subject::Community(meta.id), message.global_time);
        return match verdict {
            timeline::Verdict::Allowed { .. } => Judgement::Allowed,
            timeline::Verdict::Denied { proof } => Judgement::Wait {
                push: match meta.resolution {
                    Resolution::Dynamic(_) => proof,
                    _ => Vec::new(),
                },
            },
        };
    };
    match body {
        Body::Authorize(_) | Body::Revoke(_) => {
            let known = body.grants().iter().all(|grant| match grant.subject {
                Subject::Community(meta) => metas.iter().any(|m| m.id == meta),
                Subject::DynamicSettings | Subject::DestroyCommunity => true,
            });
            if !known {
                return Judgement::Drop(DropReason::UnknownPermissionSubject);
            }
        }
        Body::DynamicSettings { .. } => {}
        Body::UndoOwn { .. } | Body::UndoOther { .. } => return Judgement::Allowed,
        Body::Destroy(_) => {
            let Some(author) = message.authors.first() else {
                return Judgement::Drop(DropReason::WrongAuthentication);
            };
            let verdict = timeline.may(
                author.member_id(),
                Subject::DestroyCommunity,
                message.global_time,
            );
            return match verdict {
                timeline::Verdict::Allowed { .. } => Judgement::Allowed,
                timeline::Verdict::Denied { .. } => Judgement::Wait { push: Vec::new() },
            };
        }
    }
    let resolution = |meta: u32| metas.iter().find(|m| m.id == meta).map(|m| &m.resolution);
    match record(message, packet, resolution) {
        Some(record) if timeline.judge(&record) => Judgement::Allowed,
        // Held invalid (rule 13 of the timeline): its author's later records follow it.
        Some(record) if timeline.is_authority(record.author) => Judgement::Allowed,
        Some(_) => Judgement::Wait { push: Vec::new() },
        None => Judgement::Drop(DropReason::InvalidDynamicSettings),
    }
}

/// The policy at `index` of a dynamic resolution's list; `None` for a static resolution or an
/// index out of range.
fn dynamic_policy(resolution: &Resolution, index: u32) -> Option<StaticResolution> {
    match resolution {
        Resolution::Dynamic(policies) => policies.get(usize::try_from(index).ok()?).copied(),
        Resolution::Public | Resolution::Linear => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::identity::KeyPair;
    use crate::wire::SignedMessage;

    fn key(n: u8) -> KeyPair {
        let mut secret = [9u8; 32];
        secret[31] = n;
        KeyPair::from_secret(&secret).unwrap()
    }

    #[test]
    fn grants_flatten_targets_in_order() {
        let (a, b) = (key(1), key(2));
        let body = Body::Authorize(vec![
            Target {
                member: MemberRef::from_key(a.public().clone()),
                grants: vec![
                    (Subject::Community(3), Permission::Permit),
                    (Subject::DynamicSettings, Permission::Authorize),
                ],
            },
            Target {
                member: MemberRef::from_id(b.member_id()),
                grants: vec![(Subject::DestroyCommunity, Permission::Permit)],
            },
        ]);
        let grants = body.grants();
        assert_eq!(grants.len(), 3);
        assert_eq!(grants[0].member, a.member_id());
        assert_eq!(grants[1].subject, Subject::DynamicSettings);
        assert_eq!(grants[2].member, b.member_id());
        assert_eq!(grants[2].permission, Permission::Permit);
        assert!(Body::Destroy(Degree::Soft).grants().is_empty());
        assert_eq!(body.kind_name(), "authorize");
        assert_eq!(body.message_type(), builtin::AUTHORIZE);
    }

    #[test]
    fn records_of_authorize_revoke_and_settings() {
        let author = key(1);
        let community = CommunityId([4; 20]);
        let target = Target {
            member: MemberRef::from_id(key(2).member_id()),
            grants: vec![(Subject::Community(7), Permission::Permit)],
        };
        let dynamic = Resolution::Dynamic(vec![StaticResolution::Public, StaticResolution::Linear]);
        let lookup = |meta: u32| (meta == 7).then_some(&dynamic);
        for (body, seq) in [
            (Body::Authorize(vec![target.clone()]), Some(1)),
            (Body::Revoke(vec![target.clone()]), Some(1)),
        ] {
            let m = message(community, author.public().clone(), 5, seq, body.clone());
            let signed = SignedMessage::sign(m, &[&author]).unwrap();
            let record = record(&signed.message, &signed.packet, lookup).unwrap();
            assert_eq!(record.id, RecordId::of_packet(&signed.packet));
            assert_eq!(record.author, author.member_id());
            assert_eq!(record.global_time, 5);
            match (body, record.act) {
                (Body::Authorize(_), Act::Authorize(g)) | (Body::Revoke(_), Act::Revoke(g)) => {
                    assert_eq!(
                        g,
                        vec![Grant {
                            member: key(2).member_id(),
                            subject: Subject::Community(7),
                            permission: Permission::Permit,
                        }]
                    );
                }
                other => panic!("wrong act {other:?}"),
            }
        }
        let settings = |meta, index| {
            message(
                community,
                author.public().clone(),
                6,
                Some(1),
                Body::DynamicSettings { meta, index },
            )
        };
        let r = record(&settings(7, 1), b"packet", lookup).unwrap();
        assert_eq!(
            r.act,
            Act::Settings {
                meta: 7,
                policy: StaticResolution::Linear
            }
        );
        assert_eq!(record(&settings(7, 2), b"packet", lookup), None);
        assert_eq!(record(&settings(8, 0), b"packet", lookup), None);
        let linear = Resolution::Linear;
        assert_eq!(record(&settings(7, 0), b"p", |_| Some(&linear)), None);
        let undo = message(
            community,
            author.public().clone(),
            6,
            Some(1),
            Body::UndoOwn {
                target_global_time: 2,
            },
        );
        assert_eq!(record(&undo, b"p", lookup), None);
    }
}
