//! The permission messages on the wire: every rule of the contract (module documentation, rules
//! a–k) has a decode test with its precise error; round trips of fixed and random bodies; a
//! malformed-input sweep.

use std::collections::HashMap;

use dispersy_proto as pb;
use pb::descriptor::Message as D;
use prost::Message as _;

use super::*;
use crate::authority::{self, Body, Degree, MemberRef, Target, builtin};
use crate::identity::{CommunityId, KeyPair};
use crate::rng::Rng;
use crate::timeline::{MAX_GRANTS, Permission, Subject};

/// Room for the largest messages of these tests (a thousand grants).
const BIG: usize = 1 << 16;

fn key(n: u8) -> KeyPair {
    let mut secret = [5u8; 32];
    secret[31] = n;
    KeyPair::from_secret(&secret).unwrap()
}

/// Keys 1..=3 are known to the decoding node; others are not.
fn known() -> &'static HashMap<MemberId, PublicKey> {
    static KNOWN: std::sync::LazyLock<HashMap<MemberId, PublicKey>> =
        std::sync::LazyLock::new(|| {
            (1..=3)
                .map(|n| (key(n).member_id(), key(n).public().clone()))
                .collect()
        });
    &KNOWN
}

fn cid() -> CommunityId {
    CommunityId([0xCD; 20])
}

fn permit(meta: u32) -> pb::Permission {
    pb::Permission {
        target: Some(pb::permission::Target::CommunityMessage(meta)),
        permission: Some(pb::permission::Kind::Permit as i32),
    }
}

fn valid_authorize(k: &KeyPair) -> pb::Authorize {
    pb::Authorize {
        version: Some(1),
        community: Some(cid().0.to_vec()),
        member: Some(k.public().as_bytes().to_vec()),
        global_time: Some(10),
        sequence_number: Some(1),
        targets: vec![pb::Target {
            global_time: Some(10),
            member: Some(key(2).public().as_bytes().to_vec()),
            permissions: vec![permit(3)],
        }],
    }
}

fn valid_undo_own(k: &KeyPair) -> pb::UndoOwn {
    pb::UndoOwn {
        version: Some(1),
        community: Some(cid().0.to_vec()),
        member: Some(k.public().as_bytes().to_vec()),
        global_time: Some(10),
        sequence_number: Some(1),
        target_global_time: Some(4),
    }
}

fn valid_undo_other(k: &KeyPair) -> pb::UndoOther {
    pb::UndoOther {
        version: Some(1),
        community: Some(cid().0.to_vec()),
        member: Some(k.public().as_bytes().to_vec()),
        global_time: Some(10),
        sequence_number: Some(1),
        target_global_time: Some(4),
        target_member: Some(key(9).member_id().0.to_vec()),
    }
}

fn valid_settings(k: &KeyPair) -> pb::DynamicSettings {
    pb::DynamicSettings {
        version: Some(1),
        community: Some(cid().0.to_vec()),
        member: Some(k.public().as_bytes().to_vec()),
        global_time: Some(10),
        sequence_number: Some(1),
        target: Some(pb::dynamic_settings::Target::TargetCommunityMessage(3)),
        target_policy: Some(pb::dynamic_settings::Policy::Resolution as i32),
        target_index: Some(1),
    }
}

fn valid_destroy(k: &KeyPair) -> pb::DestroyCommunity {
    pb::DestroyCommunity {
        version: Some(1),
        community: Some(cid().0.to_vec()),
        member: Some(k.public().as_bytes().to_vec()),
        global_time: Some(10),
        degree: Some(pb::destroy_community::Degree::Soft as i32),
    }
}

/// The signed packet of descriptor field `d`, signed by `signers`.
fn packet(d: D, signers: &[&KeyPair]) -> Vec<u8> {
    let descriptor = pb::Descriptor { message: Some(d) }.encode_to_vec();
    pb::Message {
        signatures: signers
            .iter()
            .map(|k| k.sign(&descriptor).to_vec())
            .collect(),
        descriptor: Some(descriptor),
    }
    .encode_to_vec()
}

/// Decodes a collection holding the one message `d` signed by key 1.
fn decode_one(d: D) -> Result<CommunityMessage, DecodeError> {
    decode_signed(d, &[&key(1)])
}

fn decode_signed(d: D, signers: &[&KeyPair]) -> Result<CommunityMessage, DecodeError> {
    let datagram = encode_collection(0, &[&packet(d, signers)]);
    match decode(&datagram, BIG, known())? {
        Packet::Collection(mut c) => Ok(c.messages.remove(0).message),
        other => panic!("not a collection: {other:?}"),
    }
}

fn invalid(field: &'static str) -> impl Fn(&Result<CommunityMessage, DecodeError>) -> bool {
    move |r| matches!(r, Err(DecodeError::Invalid { field: f, .. }) if *f == field)
}

#[track_caller]
fn assert_invalid(result: Result<CommunityMessage, DecodeError>, field: &'static str) {
    assert!(invalid(field)(&result), "{field}: {result:?}");
}

#[test]
fn a_valid_message_of_each_kind_decodes_to_its_body() {
    let k = key(1);
    let m = decode_one(D::Authorize(valid_authorize(&k))).unwrap();
    assert_eq!(m.message_type, builtin::AUTHORIZE);
    assert_eq!(m.conversion, Conversion::builtin());
    assert_eq!(m.authors, vec![k.public().clone()]);
    assert_eq!((m.global_time, m.sequence_number), (10, Some(1)));
    assert!(m.payload.is_empty() && m.resolution_index.is_none() && m.relay_hops.is_none());
    assert_eq!(
        m.authority,
        Some(Body::Authorize(vec![Target {
            member: MemberRef::from_key(key(2).public().clone()),
            grants: vec![(Subject::Community(3), Permission::Permit)],
        }]))
    );
    let revoke = valid_authorize(&k);
    let m = decode_one(D::Revoke(pb::Revoke {
        version: revoke.version,
        community: revoke.community,
        member: revoke.member,
        global_time: revoke.global_time,
        sequence_number: revoke.sequence_number,
        targets: revoke.targets,
    }))
    .unwrap();
    assert_eq!(m.message_type, builtin::REVOKE);
    assert!(matches!(m.authority, Some(Body::Revoke(_))));
    let m = decode_one(D::UndoOwn(valid_undo_own(&k))).unwrap();
    assert_eq!(
        m.authority,
        Some(Body::UndoOwn {
            target_global_time: 4
        })
    );
    let m = decode_one(D::UndoOther(valid_undo_other(&k))).unwrap();
    assert_eq!(
        m.authority,
        Some(Body::UndoOther {
            target: MemberRef::from_id(key(9).member_id()),
            target_global_time: 4
        })
    );
    let m = decode_one(D::DynamicSettings(valid_settings(&k))).unwrap();
    assert_eq!(
        m.authority,
        Some(Body::DynamicSettings { meta: 3, index: 1 })
    );
    let m = decode_one(D::DestroyCommunity(valid_destroy(&k))).unwrap();
    assert_eq!(m.authority, Some(Body::Destroy(Degree::Soft)));
    assert_eq!(m.sequence_number, None);
    assert_eq!(m.message_type, builtin::DESTROY_COMMUNITY);
}

#[test]
fn rule_a_the_author_by_key_or_known_id_and_exactly_its_signature() {
    let k = key(1);
    // By its 20-byte id, known.
    let by_id = pb::Authorize {
        member: Some(k.member_id().0.to_vec()),
        ..valid_authorize(&k)
    };
    assert_eq!(
        decode_one(D::Authorize(by_id)).unwrap().authors,
        vec![k.public().clone()]
    );
    // By an id not known: the node asks missing-identity.
    let stranger = key(40);
    let unknown = pb::Authorize {
        member: Some(stranger.member_id().0.to_vec()),
        ..valid_authorize(&stranger)
    };
    assert_eq!(
        decode_signed(D::Authorize(unknown), &[&stranger]),
        Err(DecodeError::UnknownMember(stranger.member_id()))
    );
    // Missing, or neither 20 nor 33 bytes, or 33 bytes that are no key.
    let missing = pb::Authorize {
        member: None,
        ..valid_authorize(&k)
    };
    assert_eq!(
        decode_one(D::Authorize(missing)),
        Err(DecodeError::Missing("Authorize.member"))
    );
    let short = pb::UndoOwn {
        member: Some(vec![2; 30]),
        ..valid_undo_own(&k)
    };
    assert_eq!(
        decode_one(D::UndoOwn(short)),
        Err(DecodeError::Key(crate::identity::KeyError::Length(30)))
    );
    let garbage = pb::DestroyCommunity {
        member: Some(vec![7; 33]),
        ..valid_destroy(&k)
    };
    assert!(matches!(
        decode_one(D::DestroyCommunity(garbage)),
        Err(DecodeError::Key(_))
    ));
    // Exactly one signature, the author's.
    assert_eq!(
        decode_signed(D::Authorize(valid_authorize(&k)), &[]),
        Err(DecodeError::SignatureCount {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(
        decode_signed(D::Authorize(valid_authorize(&k)), &[&k, &k]),
        Err(DecodeError::SignatureCount {
            expected: 1,
            got: 2
        })
    );
    let forged = decode_signed(D::Authorize(valid_authorize(&k)), &[&key(2)]);
    assert_eq!(forged.unwrap_err().kind(), "bad-signature");
    // A target and an undone author by id stay ids: nothing is looked up for them.
    let target_by_id = pb::Authorize {
        targets: vec![pb::Target {
            member: Some(key(41).member_id().0.to_vec()),
            ..valid_authorize(&k).targets[0].clone()
        }],
        ..valid_authorize(&k)
    };
    match decode_one(D::Authorize(target_by_id)).unwrap().authority {
        Some(Body::Authorize(targets)) => {
            assert_eq!(targets[0].member, MemberRef::from_id(key(41).member_id()))
        }
        other => panic!("{other:?}"),
    }
    let bad_target = pb::Authorize {
        targets: vec![pb::Target {
            member: Some(vec![1; 21]),
            ..valid_authorize(&k).targets[0].clone()
        }],
        ..valid_authorize(&k)
    };
    assert_eq!(
        decode_one(D::Authorize(bad_target)),
        Err(DecodeError::Key(crate::identity::KeyError::Length(21)))
    );
    let no_target = pb::Authorize {
        targets: vec![pb::Target {
            member: None,
            ..valid_authorize(&k).targets[0].clone()
        }],
        ..valid_authorize(&k)
    };
    assert_eq!(
        decode_one(D::Authorize(no_target)),
        Err(DecodeError::Missing("Target.member"))
    );
}

#[test]
fn rule_b_version_is_required_and_1() {
    let k = key(1);
    for (version, expected) in [
        (None, Some(DecodeError::Missing("UndoOther.version"))),
        (Some(0), None),
        (Some(2), None),
    ] {
        let m = pb::UndoOther {
            version,
            ..valid_undo_other(&k)
        };
        let result = decode_one(D::UndoOther(m));
        match expected {
            Some(error) => assert_eq!(result, Err(error)),
            None => assert_invalid(result, "UndoOther.version"),
        }
    }
}

#[test]
fn rule_c_community_of_20_bytes_and_global_time_from_1() {
    let k = key(1);
    let short = pb::DynamicSettings {
        community: Some(vec![1; 19]),
        ..valid_settings(&k)
    };
    assert_invalid(decode_one(D::DynamicSettings(short)), "community");
    let none = pb::DynamicSettings {
        community: None,
        ..valid_settings(&k)
    };
    assert_eq!(
        decode_one(D::DynamicSettings(none)),
        Err(DecodeError::Missing("community"))
    );
    let zero = pb::DestroyCommunity {
        global_time: Some(0),
        ..valid_destroy(&k)
    };
    assert_invalid(
        decode_one(D::DestroyCommunity(zero)),
        "DestroyCommunity.global_time",
    );
    let absent = pb::Authorize {
        global_time: None,
        ..valid_authorize(&k)
    };
    assert_eq!(
        decode_one(D::Authorize(absent)),
        Err(DecodeError::Missing("Authorize.global_time"))
    );
}

#[test]
fn rule_d_sequence_numbers_from_1_on_all_but_destroy() {
    let k = key(1);
    let a = valid_authorize(&k);
    let revoke = |sequence_number| {
        D::Revoke(pb::Revoke {
            version: a.version,
            community: a.community.clone(),
            member: a.member.clone(),
            global_time: a.global_time,
            sequence_number,
            targets: a.targets.clone(),
        })
    };
    type Make<'a> = Box<dyn Fn(Option<u32>) -> D + 'a>;
    let kinds: Vec<(Make<'_>, &str)> = vec![
        (
            Box::new(|s| {
                D::Authorize(pb::Authorize {
                    sequence_number: s,
                    ..valid_authorize(&k)
                })
            }),
            "Authorize.sequence_number",
        ),
        (Box::new(revoke), "Revoke.sequence_number"),
        (
            Box::new(|s| {
                D::UndoOwn(pb::UndoOwn {
                    sequence_number: s,
                    ..valid_undo_own(&k)
                })
            }),
            "UndoOwn.sequence_number",
        ),
        (
            Box::new(|s| {
                D::UndoOther(pb::UndoOther {
                    sequence_number: s,
                    ..valid_undo_other(&k)
                })
            }),
            "UndoOther.sequence_number",
        ),
        (
            Box::new(|s| {
                D::DynamicSettings(pb::DynamicSettings {
                    sequence_number: s,
                    ..valid_settings(&k)
                })
            }),
            "DynamicSettings.sequence_number",
        ),
    ];
    for (make, field) in kinds {
        assert_eq!(decode_one(make(Some(7))).unwrap().sequence_number, Some(7));
        assert_eq!(decode_one(make(None)), Err(DecodeError::Missing(field)));
        let zero = decode_one(make(Some(0)));
        assert!(invalid(field)(&zero), "{field}: {zero:?}");
    }
    // Destroy has no sequence number field: its message has none.
    let destroy = decode_one(D::DestroyCommunity(valid_destroy(&k))).unwrap();
    assert_eq!(destroy.sequence_number, None);
}

#[test]
fn rule_e_targets_permissions_and_their_bounds() {
    let k = key(1);
    let with_targets = |targets| {
        D::Authorize(pb::Authorize {
            targets,
            ..valid_authorize(&k)
        })
    };
    let make_target = |permissions: Vec<pb::Permission>, global_time| pb::Target {
        global_time,
        member: Some(key(2).member_id().0.to_vec()),
        permissions,
    };
    assert_invalid(decode_one(with_targets(vec![])), "Authorize.targets");
    assert_invalid(
        decode_one(with_targets(vec![make_target(vec![], Some(10))])),
        "Target.permissions",
    );
    // Target.global_time: absent, or the message's.
    assert!(decode_one(with_targets(vec![make_target(vec![permit(3)], None)])).is_ok());
    assert_invalid(
        decode_one(with_targets(vec![make_target(vec![permit(3)], Some(9))])),
        "Target.global_time",
    );
    // MAX_GRANTS permissions in all, over several targets.
    let half = MAX_GRANTS / 2;
    let full = vec![
        make_target(vec![permit(3); half], None),
        make_target(vec![permit(4); MAX_GRANTS - half], None),
    ];
    let m = decode_one(with_targets(full.clone())).unwrap();
    assert_eq!(m.authority.unwrap().grants().len(), MAX_GRANTS);
    let mut over = full;
    over[1].permissions.push(permit(5));
    assert_invalid(decode_one(with_targets(over)), "Authorize.targets");
    // Subjects: a plugin type below the reserved range, or the two built-ins that take
    // permissions.
    let on = |target: Option<pb::permission::Target>, permission: Option<i32>| {
        decode_one(with_targets(vec![make_target(
            vec![pb::Permission { target, permission }],
            None,
        )]))
    };
    use pb::descriptor::Type;
    use pb::permission::{Kind, Target as T};
    let grant =
        |r: Result<CommunityMessage, DecodeError>| r.unwrap().authority.unwrap().grants()[0];
    let undo = Some(Kind::Undo as i32);
    assert_eq!(
        grant(on(Some(T::Message(Type::Dynamicsettings as i32)), undo)).subject,
        Subject::DynamicSettings
    );
    let g = grant(on(Some(T::Message(Type::Destroycommunity as i32)), undo));
    assert_eq!(
        (g.subject, g.permission),
        (Subject::DestroyCommunity, Permission::Undo)
    );
    for t in [Type::Authorize, Type::Community, Type::Collection] {
        assert_invalid(on(Some(T::Message(t as i32)), undo), "Permission.message");
    }
    assert_invalid(on(Some(T::Message(999)), undo), "Permission.message");
    assert_invalid(
        on(Some(T::CommunityMessage(builtin::RESERVED_FROM)), undo),
        "Permission.community_message",
    );
    assert_eq!(
        grant(on(
            Some(T::CommunityMessage(builtin::RESERVED_FROM - 1)),
            undo
        ))
        .subject,
        Subject::Community(builtin::RESERVED_FROM - 1)
    );
    assert_eq!(
        on(None, undo),
        Err(DecodeError::Missing("Permission.target"))
    );
    // The permission kind: required, one of the four.
    assert_eq!(
        on(Some(T::CommunityMessage(3)), None),
        Err(DecodeError::Missing("Permission.permission"))
    );
    assert_invalid(
        on(Some(T::CommunityMessage(3)), Some(0)),
        "Permission.permission",
    );
    for (kind, permission) in [
        (Kind::Permit, Permission::Permit),
        (Kind::Authorize, Permission::Authorize),
        (Kind::Revoke, Permission::Revoke),
        (Kind::Undo, Permission::Undo),
    ] {
        assert_eq!(
            grant(on(Some(T::CommunityMessage(3)), Some(kind as i32))).permission,
            permission
        );
    }
}

#[test]
fn rule_f_undo_targets_an_earlier_global_time() {
    let k = key(1);
    for (target, ok) in [
        (Some(1), true),
        (Some(9), true),
        (Some(0), false),
        (Some(10), false),
        (Some(11), false),
    ] {
        let own = decode_one(D::UndoOwn(pb::UndoOwn {
            target_global_time: target,
            ..valid_undo_own(&k)
        }));
        let other = decode_one(D::UndoOther(pb::UndoOther {
            target_global_time: target,
            ..valid_undo_other(&k)
        }));
        if ok {
            assert!(own.is_ok() && other.is_ok(), "{target:?}");
        } else {
            assert_invalid(own, "UndoOwn.target_global_time");
            assert_invalid(other, "UndoOther.target_global_time");
        }
    }
    assert_eq!(
        decode_one(D::UndoOwn(pb::UndoOwn {
            target_global_time: None,
            ..valid_undo_own(&k)
        })),
        Err(DecodeError::Missing("UndoOwn.target_global_time"))
    );
    assert_eq!(
        decode_one(D::UndoOther(pb::UndoOther {
            target_member: None,
            ..valid_undo_other(&k)
        })),
        Err(DecodeError::Missing("UndoOther.target_member"))
    );
    // By key, the target member carries its key.
    let by_key = decode_one(D::UndoOther(pb::UndoOther {
        target_member: Some(key(9).public().as_bytes().to_vec()),
        ..valid_undo_other(&k)
    }))
    .unwrap();
    assert_eq!(
        by_key.authority,
        Some(Body::UndoOther {
            target: MemberRef::from_key(key(9).public().clone()),
            target_global_time: 4
        })
    );
}

#[test]
fn rule_g_dynamic_settings_switch_the_resolution_of_a_plugin_meta() {
    let k = key(1);
    use pb::dynamic_settings::{Policy, Target as T};
    let settings = |target, policy, index| {
        decode_one(D::DynamicSettings(pb::DynamicSettings {
            target,
            target_policy: policy,
            target_index: index,
            ..valid_settings(&k)
        }))
    };
    let resolution = Some(Policy::Resolution as i32);
    assert_eq!(
        settings(Some(T::TargetCommunityMessage(8)), resolution, Some(0))
            .unwrap()
            .authority,
        Some(Body::DynamicSettings { meta: 8, index: 0 })
    );
    assert_eq!(
        settings(None, resolution, Some(0)),
        Err(DecodeError::Missing(
            "DynamicSettings.target_community_message"
        ))
    );
    assert_invalid(
        settings(
            Some(T::TargetMessage(pb::descriptor::Type::Authorize as i32)),
            resolution,
            Some(0),
        ),
        "DynamicSettings.target_message",
    );
    assert_invalid(
        settings(
            Some(T::TargetCommunityMessage(u32::MAX)),
            resolution,
            Some(0),
        ),
        "DynamicSettings.target_community_message",
    );
    assert_eq!(
        settings(Some(T::TargetCommunityMessage(8)), None, Some(0)),
        Err(DecodeError::Missing("DynamicSettings.target_policy"))
    );
    for policy in [
        Policy::Authentication,
        Policy::Distribution,
        Policy::Payload,
    ] {
        assert_invalid(
            settings(
                Some(T::TargetCommunityMessage(8)),
                Some(policy as i32),
                Some(0),
            ),
            "DynamicSettings.target_policy",
        );
    }
    assert_eq!(
        settings(Some(T::TargetCommunityMessage(8)), resolution, None),
        Err(DecodeError::Missing("DynamicSettings.target_index"))
    );
}

#[test]
fn rule_h_destroy_needs_a_degree() {
    let k = key(1);
    let destroy = |degree| {
        decode_one(D::DestroyCommunity(pb::DestroyCommunity {
            degree,
            ..valid_destroy(&k)
        }))
    };
    assert_eq!(
        destroy(Some(pb::destroy_community::Degree::Hard as i32))
            .unwrap()
            .authority,
        Some(Body::Destroy(Degree::Hard))
    );
    assert_eq!(
        destroy(None),
        Err(DecodeError::Missing("DestroyCommunity.degree"))
    );
    assert_invalid(destroy(Some(3)), "DestroyCommunity.degree");
}

/// A plugin message of community `cid()` by key 1.
fn plugin_message(gt: u64) -> SignedMessage {
    let k = key(1);
    SignedMessage::sign(
        CommunityMessage {
            community: cid(),
            message_type: 1,
            conversion: Conversion::version(2).unwrap(),
            authors: vec![k.public().clone()],
            global_time: gt,
            sequence_number: None,
            resolution_index: None,
            relay_hops: None,
            payload: b"text".to_vec(),
            authority: None,
        },
        &[&k],
    )
    .unwrap()
}

#[test]
fn rule_i_in_collections_only_mixed_with_plugin_messages_one_bad_entry_drops_all() {
    let k = key(1);
    let authorize = packet(D::Authorize(valid_authorize(&k)), &[&k]);
    let destroy = packet(D::DestroyCommunity(valid_destroy(&k)), &[&k]);
    let plugin = plugin_message(3);
    let datagram = encode_collection(5, &[&plugin.packet, &authorize, &destroy]);
    match decode(&datagram, 1500, known()).unwrap() {
        Packet::Collection(c) => {
            assert_eq!(c.messages.len(), 3);
            assert_eq!(c.messages[0], plugin);
            assert_eq!(c.messages[1].packet, authorize);
            assert!(c.messages[1].message.authority.is_some());
            assert_eq!(c.messages[2].packet, destroy);
            // Stored packets decode alone to the same message.
            assert_eq!(SignedMessage::decode(&authorize).unwrap(), c.messages[1]);
        }
        other => panic!("{other:?}"),
    }
    // One bad entry (here a forged signature) drops the whole datagram.
    let forged = packet(D::Authorize(valid_authorize(&k)), &[&key(2)]);
    let datagram = encode_collection(5, &[&plugin.packet, &forged]);
    assert_eq!(
        decode(&datagram, 1500, known()).unwrap_err().kind(),
        "bad-signature"
    );
    // Another community in the same collection.
    let elsewhere = packet(
        D::Authorize(pb::Authorize {
            community: Some(vec![1; 20]),
            ..valid_authorize(&k)
        }),
        &[&k],
    );
    let datagram = encode_collection(5, &[&plugin.packet, &elsewhere]);
    assert!(matches!(
        decode(&datagram, 1500, known()),
        Err(DecodeError::Invalid {
            field: "Collection.messages",
            ..
        })
    ));
    // A bare permission message is refused, as a bare community message is.
    for (d, field) in [
        (D::Authorize(valid_authorize(&k)), "Descriptor.authorize"),
        (D::UndoOwn(valid_undo_own(&k)), "Descriptor.undo_own"),
        (D::UndoOther(valid_undo_other(&k)), "Descriptor.undo_other"),
        (
            D::DynamicSettings(valid_settings(&k)),
            "Descriptor.dynamic_settings",
        ),
        (
            D::DestroyCommunity(valid_destroy(&k)),
            "Descriptor.destroy_community",
        ),
    ] {
        let bare = packet(d, &[&k]);
        assert!(
            matches!(decode(&bare, 1500, known()), Err(DecodeError::Invalid { field: f, .. }) if f == field),
            "{field}"
        );
    }
    // A temporary message is no signed message of a collection.
    let temporary = packet(
        D::MissingIdentity(pb::MissingIdentity {
            member: Some(vec![1; 20]),
            community: Some(cid().0.to_vec()),
            random: Some(1),
            session: None,
        }),
        &[],
    );
    let datagram = encode_collection(0, &[&temporary]);
    assert!(matches!(
        decode(&datagram, 1500, known()),
        Err(DecodeError::Invalid {
            field: "Descriptor.message",
            ..
        })
    ));
    // A plugin message may not take a reserved type.
    for reserved in [builtin::RESERVED_FROM, builtin::AUTHORIZE, u32::MAX] {
        let mut m = plugin_message(3).message;
        m.message_type = reserved;
        let signed = SignedMessage::sign(m, &[&k]).unwrap();
        let datagram = encode_collection(0, &[&signed.packet]);
        assert!(
            matches!(
                decode(&datagram, 1500, known()),
                Err(DecodeError::Invalid {
                    field: "CommunityMessage.message_type",
                    ..
                })
            ),
            "{reserved:#x}"
        );
    }
}

#[test]
fn rule_j_missing_proof_decodes_and_round_trips() {
    let k = key(1);
    for member in [
        MemberRef::from_key(key(9).public().clone()),
        MemberRef::from_id(key(10).member_id()),
    ] {
        let packet = Packet::MissingProof(MissingProof {
            community: cid(),
            session: 4,
            random: 99,
            member,
            global_times: vec![3, 7],
        });
        let bytes = packet.encode(&k);
        assert_eq!(decode(&bytes, 1500, known()).unwrap(), packet);
        assert_eq!(peek(&bytes), Some(("missing-proof", Some(cid()))));
        assert_eq!(packet.traffic().as_str(), packet.name());
    }
    let proof = |m: pb::MissingProof, signers: &[&KeyPair]| {
        decode(&packet(D::MissingProof(m), signers), 1500, known())
    };
    let valid = pb::MissingProof {
        session: None,
        random: None,
        member: Some(key(9).member_id().0.to_vec()),
        global_times: vec![5],
        community: Some(cid().0.to_vec()),
    };
    match proof(valid.clone(), &[]).unwrap() {
        Packet::MissingProof(p) => assert_eq!((p.session, p.random), (0, 0)),
        other => panic!("{other:?}"),
    }
    for times in [vec![], vec![0], vec![1; MAX_MISSING_TIMES + 1]] {
        assert!(matches!(
            proof(
                pb::MissingProof {
                    global_times: times,
                    ..valid.clone()
                },
                &[]
            ),
            Err(DecodeError::Invalid {
                field: "MissingProof.global_times",
                ..
            })
        ));
    }
    assert!(
        proof(
            pb::MissingProof {
                global_times: vec![1; MAX_MISSING_TIMES],
                ..valid.clone()
            },
            &[]
        )
        .is_ok()
    );
    assert_eq!(
        proof(
            pb::MissingProof {
                member: None,
                ..valid.clone()
            },
            &[]
        ),
        Err(DecodeError::Missing("MissingProof.member"))
    );
    assert_eq!(
        proof(
            pb::MissingProof {
                member: Some(vec![1; 5]),
                ..valid.clone()
            },
            &[]
        ),
        Err(DecodeError::Key(crate::identity::KeyError::Length(5)))
    );
    assert_eq!(
        proof(valid, &[&k]),
        Err(DecodeError::SignatureCount {
            expected: 0,
            got: 1
        })
    );
}

#[test]
fn peek_labels_the_permission_messages_with_their_community() {
    let k = key(1);
    for (d, kind) in [
        (D::Authorize(valid_authorize(&k)), "authorize"),
        (D::UndoOwn(valid_undo_own(&k)), "undo-own"),
        (D::UndoOther(valid_undo_other(&k)), "undo-other"),
        (D::DynamicSettings(valid_settings(&k)), "dynamic-settings"),
        (D::DestroyCommunity(valid_destroy(&k)), "destroy-community"),
    ] {
        assert_eq!(peek(&packet(d, &[&k])), Some((kind, Some(cid()))));
    }
}

/// A random member reference: a known or unknown key, or an id.
fn random_member(rng: &mut Rng) -> MemberRef {
    match rng.index(3) {
        0 => MemberRef::from_key(key(1 + rng.index(6) as u8).public().clone()),
        _ => {
            let mut id = [0u8; 20];
            id.iter_mut().for_each(|b| *b = rng.next_u32() as u8);
            MemberRef::from_id(MemberId(id))
        }
    }
}

fn random_targets(rng: &mut Rng) -> Vec<Target> {
    (0..1 + rng.index(4))
        .map(|_| Target {
            member: random_member(rng),
            grants: (0..1 + rng.index(5))
                .map(|_| {
                    let subject = match rng.index(4) {
                        0 => Subject::DynamicSettings,
                        1 => Subject::DestroyCommunity,
                        _ => Subject::Community(rng.next_u32() % builtin::RESERVED_FROM),
                    };
                    let permission = [
                        Permission::Permit,
                        Permission::Authorize,
                        Permission::Revoke,
                        Permission::Undo,
                    ][rng.index(4)];
                    (subject, permission)
                })
                .collect(),
        })
        .collect()
}

/// A random valid built-in message by `author` and its sequence number.
fn random_message(rng: &mut Rng, author: &KeyPair) -> CommunityMessage {
    let global_time = 2 + rng.next_u64() % (u64::MAX - 2);
    let before = 1 + rng.next_u64() % (global_time - 1);
    let body = match rng.index(6) {
        0 => Body::Authorize(random_targets(rng)),
        1 => Body::Revoke(random_targets(rng)),
        2 => Body::UndoOwn {
            target_global_time: before,
        },
        3 => Body::UndoOther {
            target: random_member(rng),
            target_global_time: before,
        },
        4 => Body::DynamicSettings {
            meta: rng.next_u32() % builtin::RESERVED_FROM,
            index: rng.next_u32(),
        },
        _ => Body::Destroy(if rng.index(2) == 0 {
            Degree::Soft
        } else {
            Degree::Hard
        }),
    };
    let sequence_number = body.has_sequence_number().then(|| rng.nonzero_u32());
    let community = CommunityId([rng.next_u32() as u8; 20]);
    authority::message(
        community,
        author.public().clone(),
        global_time,
        sequence_number,
        body,
    )
}

#[test]
fn random_bodies_round_trip() {
    let mut rng = Rng::new(11);
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..600 {
        let author = key(1 + rng.index(3) as u8);
        let message = random_message(&mut rng, &author);
        kinds.insert(message.authority.as_ref().unwrap().kind_name());
        let signed = SignedMessage::sign(message.clone(), &[&author]).unwrap();
        // Through a collection, alone as a stored packet, and as a bare descriptor.
        let datagram = encode_collection(0, &[&signed.packet]);
        match decode(&datagram, BIG, known()).unwrap() {
            Packet::Collection(c) => assert_eq!(c.messages, vec![signed.clone()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(SignedMessage::decode(&signed.packet).unwrap(), signed);
        assert_eq!(
            CommunityMessage::from_descriptor(&message.descriptor()).unwrap(),
            message
        );
    }
    assert_eq!(kinds.len(), 6);
}

/// Random changes to the fields of a valid permission message, re-signed so that the field
/// checks are what judges it.
fn mutate(rng: &mut Rng, d: &mut D) {
    let small = |rng: &mut Rng| match rng.index(4) {
        0 => None,
        1 => Some(0),
        2 => Some(rng.next_u32()),
        _ => Some(1),
    };
    let bytes = |rng: &mut Rng| match rng.index(4) {
        0 => None,
        1 => Some(vec![rng.next_u32() as u8; rng.index(40)]),
        2 => Some(key(1 + rng.index(6) as u8).public().as_bytes().to_vec()),
        _ => Some(key(1 + rng.index(6) as u8).member_id().0.to_vec()),
    };
    match d {
        D::Authorize(m) => match rng.index(6) {
            0 => m.version = small(rng),
            1 => m.global_time = small(rng).map(u64::from),
            2 => m.sequence_number = small(rng),
            3 => m.targets.truncate(rng.index(2)),
            4 => {
                if let Some(t) = m.targets.first_mut() {
                    t.member = bytes(rng);
                    t.global_time = small(rng).map(u64::from);
                }
            }
            _ => {
                if let Some(p) = m
                    .targets
                    .first_mut()
                    .and_then(|t| t.permissions.first_mut())
                {
                    p.permission = small(rng).map(|v| v as i32);
                    p.target = match rng.index(3) {
                        0 => None,
                        1 => Some(pb::permission::Target::Message(rng.next_u32() as i32 % 100)),
                        _ => small(rng).map(pb::permission::Target::CommunityMessage),
                    };
                }
            }
        },
        D::UndoOther(m) => match rng.index(4) {
            0 => m.target_member = bytes(rng),
            1 => m.target_global_time = small(rng).map(u64::from),
            2 => m.member = bytes(rng),
            _ => m.community = bytes(rng),
        },
        D::DynamicSettings(m) => match rng.index(3) {
            0 => m.target_policy = small(rng).map(|v| v as i32),
            1 => m.target_index = small(rng),
            _ => {
                m.target = match rng.index(3) {
                    0 => None,
                    1 => small(rng).map(|v| pb::dynamic_settings::Target::TargetMessage(v as i32)),
                    _ => small(rng).map(pb::dynamic_settings::Target::TargetCommunityMessage),
                }
            }
        },
        D::DestroyCommunity(m) => match rng.index(2) {
            0 => m.degree = small(rng).map(|v| v as i32),
            _ => m.version = small(rng),
        },
        _ => {}
    }
}

#[test]
fn malformed_permission_messages_never_panic() {
    let k = key(1);
    let mut rng = Rng::new(12);
    let valid = [
        D::Authorize(valid_authorize(&k)),
        D::UndoOther(valid_undo_other(&k)),
        D::DynamicSettings(valid_settings(&k)),
        D::DestroyCommunity(valid_destroy(&k)),
    ];
    // Random field changes, re-signed.
    for _ in 0..3000 {
        let mut d = valid[rng.index(valid.len())].clone();
        for _ in 0..1 + rng.index(3) {
            mutate(&mut rng, &mut d);
        }
        let _ = decode_signed(d, &[&k]);
    }
    // Truncations and bit flips of valid collections.
    let mut message_rng = Rng::new(13);
    for _ in 0..40 {
        let signed = SignedMessage::sign(random_message(&mut message_rng, &k), &[&k]).unwrap();
        let datagram = encode_collection(0, &[&signed.packet]);
        for len in 0..datagram.len() {
            assert!(decode(&datagram[..len], BIG, known()).is_err());
        }
        for _ in 0..100 {
            let mut copy = datagram.clone();
            let i = rng.index(copy.len());
            copy[i] ^= 1 << rng.index(8);
            let _ = decode(&copy, BIG, known());
        }
    }
}

#[test]
fn a_batch_decodes_permission_messages_as_one_by_one() {
    let k = key(1);
    let mut rng = Rng::new(14);
    let mut datagrams = Vec::new();
    for _ in 0..30 {
        let mut message = random_message(&mut rng, &k);
        message.community = cid();
        let good = SignedMessage::sign(message, &[&k]).unwrap();
        let mut forged = good.clone();
        let last = forged.packet.len() - 1;
        forged.packet[last] ^= 1;
        datagrams.push(encode_collection(0, &[&good.packet]));
        datagrams.push(encode_collection(
            0,
            &[&plugin_message(3).packet, &good.packet],
        ));
        datagrams.push(encode_collection(0, &[&good.packet, &forged.packet]));
    }
    let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
    let mut verifier = crate::verifier::Verifier::new(crate::verifier::Config {
        hot_after: 5,
        max_tables: 1,
        max_counted: 16,
    });
    let batch = decode_batch(&refs, BIG, known(), &mut verifier);
    assert_eq!(batch.len(), refs.len());
    for (i, (bytes, got)) in refs.iter().zip(batch).enumerate() {
        let expected = decode(bytes, BIG, known());
        // Every third datagram holds a forged entry.
        assert_eq!(expected.is_ok(), i % 3 != 2);
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected),
            (Err(got), Err(expected)) => assert_eq!(got.kind(), expected.kind()),
            (got, expected) => panic!("{got:?} != {expected:?}"),
        }
    }
}
