//! The built-in permission messages (authorize, revoke, undo-own, undo-other, dynamic-settings,
//! destroy-community) between their `Descriptor` fields and a [`CommunityMessage`] whose
//! `authority` holds the [`Body`]. The rules checked here are the wire contract written in the
//! [module documentation](super) and in `dispersy.proto`.

use dispersy_proto as pb;
use pb::descriptor::Message as D;

use super::field::{community_id, member_key, member_ref, required, to_member_ref};
use super::{CommunityMessage, DecodeError, Keys};
use crate::authority::{self, Body, Degree, Target, builtin};
use crate::identity::{CommunityId, PublicKey};
use crate::timeline::{MAX_GRANTS, Permission, Subject};

/// The only `version` of the permission messages.
const VERSION: u32 = 1;

/// The names of one kind's header fields, for its errors.
struct Names {
    version: &'static str,
    member: &'static str,
    global_time: &'static str,
    sequence_number: &'static str,
}

macro_rules! names {
    ($kind:literal) => {
        Names {
            version: concat!($kind, ".version"),
            member: concat!($kind, ".member"),
            global_time: concat!($kind, ".global_time"),
            sequence_number: concat!($kind, ".sequence_number"),
        }
    };
}

const AUTHORIZE: Names = names!("Authorize");
const REVOKE: Names = names!("Revoke");
const UNDO_OWN: Names = names!("UndoOwn");
const UNDO_OTHER: Names = names!("UndoOther");
const DYNAMIC_SETTINGS: Names = names!("DynamicSettings");
const DESTROY_COMMUNITY: Names = names!("DestroyCommunity");

/// The header fields every permission message has, as on the wire.
struct Header<'a> {
    names: &'static Names,
    version: Option<u32>,
    community: Option<&'a [u8]>,
    member: Option<&'a [u8]>,
    global_time: Option<u64>,
    /// `None` for destroy-community, which has no such field.
    sequence_number: Option<Option<u32>>,
}

/// A header once checked.
struct Head {
    community: CommunityId,
    author: PublicKey,
    global_time: u64,
    sequence_number: Option<u32>,
}

impl Header<'_> {
    /// Checks the header: version 1, a 20-byte community, the author (key, or id known to
    /// `keys`), a global time of 1 or more, and a sequence number of 1 or more where the kind has
    /// one.
    fn check(self, keys: &dyn Keys) -> Result<Head, DecodeError> {
        let names = self.names;
        if required(self.version, names.version)? != VERSION {
            return Err(DecodeError::Invalid {
                field: names.version,
                reason: "must be 1",
            });
        }
        let community = community_id(self.community)?;
        let author = member_key(self.member, names.member, keys)?;
        let global_time = required(self.global_time, names.global_time)?;
        if global_time == 0 {
            return Err(DecodeError::Invalid {
                field: names.global_time,
                reason: "must be 1 or higher",
            });
        }
        let sequence_number = match self.sequence_number {
            None => None,
            Some(sequence_number) => match required(sequence_number, names.sequence_number)? {
                0 => {
                    return Err(DecodeError::Invalid {
                        field: names.sequence_number,
                        reason: "sequence numbers start at 1",
                    });
                }
                n => Some(n),
            },
        };
        Ok(Head {
            community,
            author,
            global_time,
            sequence_number,
        })
    }
}

macro_rules! header {
    ($names:expr, $m:expr, $sequence:expr) => {
        Header {
            names: &$names,
            version: $m.version,
            community: $m.community.as_deref(),
            member: $m.member.as_deref(),
            global_time: $m.global_time,
            sequence_number: $sequence,
        }
    };
}

/// Reads a signed message of a collection that is not a community message: one of the six
/// permission messages, as a [`CommunityMessage`] with its body. Any other kind is invalid there.
pub(super) fn from_proto(message: D, keys: &dyn Keys) -> Result<CommunityMessage, DecodeError> {
    let (head, body) = match message {
        D::Authorize(m) => {
            let head = header!(AUTHORIZE, m, Some(m.sequence_number)).check(keys)?;
            let targets = targets(&m.targets, head.global_time, "Authorize.targets", keys)?;
            (head, Body::Authorize(targets))
        }
        D::Revoke(m) => {
            let head = header!(REVOKE, m, Some(m.sequence_number)).check(keys)?;
            let targets = targets(&m.targets, head.global_time, "Revoke.targets", keys)?;
            (head, Body::Revoke(targets))
        }
        D::UndoOwn(m) => {
            let head = header!(UNDO_OWN, m, Some(m.sequence_number)).check(keys)?;
            let target_global_time = undone_time(
                m.target_global_time,
                head.global_time,
                "UndoOwn.target_global_time",
            )?;
            (head, Body::UndoOwn { target_global_time })
        }
        D::UndoOther(m) => {
            let head = header!(UNDO_OTHER, m, Some(m.sequence_number)).check(keys)?;
            let target_global_time = undone_time(
                m.target_global_time,
                head.global_time,
                "UndoOther.target_global_time",
            )?;
            let target = member_ref(m.target_member.as_deref(), "UndoOther.target_member", keys)?;
            (
                head,
                Body::UndoOther {
                    target,
                    target_global_time,
                },
            )
        }
        D::DynamicSettings(m) => {
            let head = header!(DYNAMIC_SETTINGS, m, Some(m.sequence_number)).check(keys)?;
            (head, dynamic_settings(&m)?)
        }
        D::DestroyCommunity(m) => {
            let head = header!(DESTROY_COMMUNITY, m, None).check(keys)?;
            let degree = match m.degree.map(pb::destroy_community::Degree::try_from) {
                None => return Err(DecodeError::Missing("DestroyCommunity.degree")),
                Some(Ok(pb::destroy_community::Degree::Soft)) => Degree::Soft,
                Some(Ok(pb::destroy_community::Degree::Hard)) => Degree::Hard,
                Some(Err(_)) => {
                    return Err(DecodeError::Invalid {
                        field: "DestroyCommunity.degree",
                        reason: "must be SOFT or HARD",
                    });
                }
            };
            (head, Body::Destroy(degree))
        }
        _ => {
            return Err(DecodeError::Invalid {
                field: "Descriptor.message",
                reason: "a signed message of a collection is a community or a permission message",
            });
        }
    };
    Ok(authority::message(
        head.community,
        head.author,
        head.global_time,
        head.sequence_number,
        body,
    ))
}

/// The targets of an authorize or revoke at `global_time`: one or more, each with one or more
/// permissions, at most [`MAX_GRANTS`] permissions in all.
fn targets(
    targets: &[pb::Target],
    global_time: u64,
    field: &'static str,
    keys: &dyn Keys,
) -> Result<Vec<Target>, DecodeError> {
    if targets.is_empty() {
        return Err(DecodeError::Invalid {
            field,
            reason: "names one or more targets",
        });
    }
    let total: usize = targets.iter().map(|t| t.permissions.len()).sum();
    if total > MAX_GRANTS {
        return Err(DecodeError::Invalid {
            field,
            reason: "more than 1024 permissions in one message",
        });
    }
    targets
        .iter()
        .map(|t| {
            let member = member_ref(t.member.as_deref(), "Target.member", keys)?;
            if t.permissions.is_empty() {
                return Err(DecodeError::Invalid {
                    field: "Target.permissions",
                    reason: "a target has one or more permissions",
                });
            }
            if t.global_time.is_some_and(|t| t != global_time) {
                return Err(DecodeError::Invalid {
                    field: "Target.global_time",
                    reason: "when present, must equal the message's global time",
                });
            }
            let grants = t
                .permissions
                .iter()
                .map(permission)
                .collect::<Result<_, _>>()?;
            Ok(Target { member, grants })
        })
        .collect()
}

/// One permission on one subject.
fn permission(p: &pb::Permission) -> Result<(Subject, Permission), DecodeError> {
    use pb::permission::Target as T;
    let subject = match p.target {
        None => return Err(DecodeError::Missing("Permission.target")),
        Some(T::Message(t)) => match pb::descriptor::Type::try_from(t) {
            Ok(pb::descriptor::Type::Dynamicsettings) => Subject::DynamicSettings,
            Ok(pb::descriptor::Type::Destroycommunity) => Subject::DestroyCommunity,
            _ => {
                return Err(DecodeError::Invalid {
                    field: "Permission.message",
                    reason: "of the built-in types only DYNAMICSETTINGS and DESTROYCOMMUNITY take permissions",
                });
            }
        },
        Some(T::CommunityMessage(id)) => {
            Subject::Community(plugin_type(id, "Permission.community_message")?)
        }
    };
    let permission = match p.permission.map(pb::permission::Kind::try_from) {
        None => return Err(DecodeError::Missing("Permission.permission")),
        Some(Ok(pb::permission::Kind::Permit)) => Permission::Permit,
        Some(Ok(pb::permission::Kind::Authorize)) => Permission::Authorize,
        Some(Ok(pb::permission::Kind::Revoke)) => Permission::Revoke,
        Some(Ok(pb::permission::Kind::Undo)) => Permission::Undo,
        Some(Err(_)) => {
            return Err(DecodeError::Invalid {
                field: "Permission.permission",
                reason: "must be PERMIT, AUTHORIZE, REVOKE or UNDO",
            });
        }
    };
    Ok((subject, permission))
}

/// A plugin message type: below the reserved range.
pub(super) fn plugin_type(id: u32, field: &'static str) -> Result<u32, DecodeError> {
    if builtin::is_reserved(id) {
        Err(DecodeError::Invalid {
            field,
            reason: "types from 0xFFFFFF00 are reserved for built-in messages",
        })
    } else {
        Ok(id)
    }
}

/// The global time of an undone message: 1 or more, below the undo's own `global_time`.
fn undone_time(
    value: Option<u64>,
    global_time: u64,
    field: &'static str,
) -> Result<u64, DecodeError> {
    let target = required(value, field)?;
    if target == 0 || target >= global_time {
        return Err(DecodeError::Invalid {
            field,
            reason: "must be 1 or higher and below the message's global time",
        });
    }
    Ok(target)
}

/// The body of a dynamic-settings: a plugin meta, the resolution policy, an index.
fn dynamic_settings(m: &pb::DynamicSettings) -> Result<Body, DecodeError> {
    use pb::dynamic_settings::Target as T;
    let meta = match m.target {
        None => {
            return Err(DecodeError::Missing(
                "DynamicSettings.target_community_message",
            ));
        }
        Some(T::TargetMessage(_)) => {
            return Err(DecodeError::Invalid {
                field: "DynamicSettings.target_message",
                reason: "no built-in message has dynamic resolution",
            });
        }
        Some(T::TargetCommunityMessage(id)) => {
            plugin_type(id, "DynamicSettings.target_community_message")?
        }
    };
    let policy = required(m.target_policy, "DynamicSettings.target_policy")?;
    if policy != pb::dynamic_settings::Policy::Resolution as i32 {
        return Err(DecodeError::Invalid {
            field: "DynamicSettings.target_policy",
            reason: "only the RESOLUTION policy is switched",
        });
    }
    let index = required(m.target_index, "DynamicSettings.target_index")?;
    Ok(Body::DynamicSettings { meta, index })
}

/// The descriptor field of a built-in `message` with body `body`: version 1, the first author by
/// its key, every target with the message's global time. The message's type, conversion,
/// payload, resolution index and relay hops are not written (they follow from the body), nor a
/// sequence number of a destroy-community (it has none).
pub(super) fn to_proto(message: &CommunityMessage, body: &Body) -> D {
    let version = Some(VERSION);
    let community = Some(message.community.0.to_vec());
    let member = message.authors.first().map(|k| k.as_bytes().to_vec());
    let global_time = Some(message.global_time);
    let sequence_number = message.sequence_number;
    let targets = |targets: &[Target]| {
        targets
            .iter()
            .map(|t| pb::Target {
                global_time,
                member: Some(to_member_ref(&t.member)),
                permissions: t.grants.iter().map(to_permission).collect(),
            })
            .collect()
    };
    match body {
        Body::Authorize(t) => D::Authorize(pb::Authorize {
            version,
            community,
            member,
            global_time,
            sequence_number,
            targets: targets(t),
        }),
        Body::Revoke(t) => D::Revoke(pb::Revoke {
            version,
            community,
            member,
            global_time,
            sequence_number,
            targets: targets(t),
        }),
        Body::UndoOwn { target_global_time } => D::UndoOwn(pb::UndoOwn {
            version,
            community,
            member,
            global_time,
            sequence_number,
            target_global_time: Some(*target_global_time),
        }),
        Body::UndoOther {
            target,
            target_global_time,
        } => D::UndoOther(pb::UndoOther {
            version,
            community,
            member,
            global_time,
            sequence_number,
            target_global_time: Some(*target_global_time),
            target_member: Some(to_member_ref(target)),
        }),
        Body::DynamicSettings { meta, index } => D::DynamicSettings(pb::DynamicSettings {
            version,
            community,
            member,
            global_time,
            sequence_number,
            target: Some(pb::dynamic_settings::Target::TargetCommunityMessage(*meta)),
            target_policy: Some(pb::dynamic_settings::Policy::Resolution as i32),
            target_index: Some(*index),
        }),
        Body::Destroy(degree) => D::DestroyCommunity(pb::DestroyCommunity {
            version,
            community,
            member,
            global_time,
            degree: Some(match degree {
                Degree::Soft => pb::destroy_community::Degree::Soft as i32,
                Degree::Hard => pb::destroy_community::Degree::Hard as i32,
            }),
        }),
    }
}

/// The wire form of one permission.
fn to_permission(&(subject, permission): &(Subject, Permission)) -> pb::Permission {
    use pb::permission::Target as T;
    let target = match subject {
        Subject::Community(id) => T::CommunityMessage(id),
        Subject::DynamicSettings => T::Message(pb::descriptor::Type::Dynamicsettings as i32),
        Subject::DestroyCommunity => T::Message(pb::descriptor::Type::Destroycommunity as i32),
    };
    let kind = match permission {
        Permission::Permit => pb::permission::Kind::Permit,
        Permission::Authorize => pb::permission::Kind::Authorize,
        Permission::Revoke => pb::permission::Kind::Revoke,
        Permission::Undo => pb::permission::Kind::Undo,
    };
    pb::Permission {
        target: Some(target),
        permission: Some(kind as i32),
    }
}
