//! Every message of `dispersy.proto` survives a prost encode/decode round trip with every field
//! set, alone and (for what a `Descriptor` carries) inside a `Descriptor` and a `Message`
//! envelope. The field numbers each sample puts on the wire are checked against the schema text,
//! so a message or field added to the schema without a sample here fails the tests.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use dispersy_proto as pb;
use pb::descriptor::{Message as D, Type};
use prost::Message as _;

/// Field numbers seen on the wire per schema message name (`Outer.Inner` for nested messages).
#[derive(Default)]
struct Coverage(RefCell<BTreeMap<String, BTreeSet<u32>>>);

impl Coverage {
    /// Round-trips `value` and records which fields it put on the wire.
    fn check<M: prost::Message + Default + PartialEq + std::fmt::Debug>(
        &self,
        name: &str,
        value: M,
    ) -> M {
        let bytes = value.encode_to_vec();
        assert_eq!(bytes.len(), value.encoded_len(), "{name}: encoded_len");
        let decoded = M::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, value, "{name}: round trip");
        assert_eq!(decoded.encode_to_vec(), bytes, "{name}: re-encoding");
        let mut seen = self.0.borrow_mut();
        seen.entry(name.to_owned())
            .or_default()
            .extend(top_level_fields(&bytes));
        value
    }

    /// As [`Coverage::check`], then wraps the value in a `Descriptor` and a signed-looking
    /// `Message` envelope and round-trips those too.
    fn check_sent<M: prost::Message + Default + PartialEq + std::fmt::Debug + Clone>(
        &self,
        name: &str,
        value: M,
        wrap: fn(M) -> D,
    ) -> M {
        let value = self.check(name, value);
        let descriptor = self.check(
            "Descriptor",
            pb::Descriptor {
                message: Some(wrap(value.clone())),
            },
        );
        let envelope = self.check(
            "Message",
            pb::Message {
                descriptor: Some(descriptor.encode_to_vec()),
                signatures: vec![vec![0x5A; 64], vec![0xA5; 64]],
            },
        );
        let received = pb::Message::decode(envelope.encode_to_vec().as_slice()).unwrap();
        let inner = pb::Descriptor::decode(received.descriptor.as_deref().unwrap()).unwrap();
        assert_eq!(inner, descriptor, "{name}: inside an envelope");
        value
    }
}

/// The field numbers at the top level of an encoded message.
fn top_level_fields(mut bytes: &[u8]) -> Vec<u32> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = prost::encoding::decode_varint(&mut bytes).unwrap();
        fields.push(u32::try_from(key >> 3).unwrap());
        let skip = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut bytes).unwrap();
                0
            }
            1 => 8,
            2 => usize::try_from(prost::encoding::decode_varint(&mut bytes).unwrap()).unwrap(),
            5 => 4,
            other => panic!("unexpected wire type {other}"),
        };
        bytes = &bytes[skip..];
    }
    fields
}

/// The field numbers every message of the schema declares (oneof members included), parsed
/// from the `.proto` text.
fn schema_fields() -> BTreeMap<String, BTreeSet<u32>> {
    let text: String = pb::SCHEMA
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut spaced = String::new();
    for c in text.chars() {
        if "{}[];=".contains(c) {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    // Open blocks: (keyword, name).
    let mut scopes: Vec<(&str, &str)> = Vec::new();
    let mut messages: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        if ["message", "enum", "oneof"].contains(&token) && tokens.get(i + 2) == Some(&"{") {
            scopes.push((token, tokens[i + 1]));
            if token == "message" {
                messages.entry(message_path(&scopes)).or_default();
            }
            i += 3;
        } else if token == "}" {
            scopes.pop();
            i += 1;
        } else {
            // One statement, up to its `;`; its first `=` is followed by the field number.
            let end = i + tokens[i..].iter().position(|t| *t == ";").unwrap();
            let in_message = matches!(scopes.last(), Some(("message" | "oneof", _)));
            if let (true, Some(eq)) = (in_message, tokens[i..end].iter().position(|t| *t == "=")) {
                let number = tokens[i + eq + 1].parse().unwrap();
                let fields = messages.get_mut(&message_path(&scopes)).unwrap();
                assert!(fields.insert(number), "duplicate field number {number}");
            }
            i = end + 1;
        }
    }
    assert!(scopes.is_empty(), "unbalanced braces in the schema");
    messages
}

fn message_path(scopes: &[(&str, &str)]) -> String {
    scopes
        .iter()
        .filter(|(keyword, _)| *keyword == "message")
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(".")
}

fn bytes(first: u8, len: u8) -> Vec<u8> {
    (0..len).map(|i| first.wrapping_add(i)).collect()
}

fn community() -> Vec<u8> {
    bytes(0xC0, 20)
}

fn member() -> Vec<u8> {
    let mut key = bytes(0x10, 33);
    key[0] = 0x02;
    key
}

fn address(c: &Coverage, port: u32) -> pb::Address {
    c.check(
        "Address",
        pb::Address {
            ipv4_host: Some(0x0A00_0001 + port),
            ipv4_port: Some(port),
            r#type: Some(pb::ConnectionType::SymmetricNat.into()),
            ipv6_host: Some(bytes(0x20, 16)),
        },
    )
}

fn message(c: &Coverage) -> pb::Message {
    let descriptor = pb::Descriptor {
        message: Some(D::Community(pb::CommunityMessage {
            community: Some(community()),
            payload: Some(b"inner".to_vec()),
            ..Default::default()
        })),
    };
    c.check(
        "Message",
        pb::Message {
            descriptor: Some(descriptor.encode_to_vec()),
            signatures: vec![vec![1; 64], vec![2; 64]],
        },
    )
}

fn target(c: &Coverage, global_time: u64) -> pb::Target {
    let permissions = vec![
        c.check(
            "Permission",
            pb::Permission {
                target: Some(pb::permission::Target::Message(
                    Type::Dynamicsettings.into(),
                )),
                permission: Some(pb::permission::Kind::Undo.into()),
            },
        ),
        c.check(
            "Permission",
            pb::Permission {
                target: Some(pb::permission::Target::CommunityMessage(7)),
                permission: Some(pb::permission::Kind::Authorize.into()),
            },
        ),
    ];
    c.check(
        "Target",
        pb::Target {
            global_time: Some(global_time),
            member: Some(member()),
            permissions,
        },
    )
}

/// One or more samples of every message, each with every field set to a non-default value.
fn samples(c: &Coverage) {
    let sync = c.check(
        "IntroductionRequest.Synchronization",
        pb::introduction_request::Synchronization {
            low: Some(10),
            high: Some(900),
            modulo: Some(3),
            offset: Some(2),
            bloomfilter: Some(bytes(0x55, 128)),
            functions: Some(6),
            prefix: Some(0xDEAD),
        },
    );
    c.check_sent(
        "IntroductionRequest",
        pb::IntroductionRequest {
            session: Some(11),
            walk: Some(0xBEEF),
            community: Some(community()),
            global_time: Some(u64::MAX),
            destination: Some(address(c, 7000)),
            sources: vec![address(c, 7001), address(c, 7002)],
            random: Some(u32::MAX),
            member: Some(member()),
            synchronization: Some(sync),
            connection_type: Some(pb::ConnectionType::Public.into()),
            advice: Some(false),
        },
        D::IntroductionRequest,
    );
    c.check_sent(
        "IntroductionResponse",
        pb::IntroductionResponse {
            session: Some(12),
            walk: Some(0xBEEF),
            community: Some(community()),
            global_time: Some(44),
            invitee: vec![address(c, 1), address(c, 2)],
            destination: Some(address(c, 3)),
            sources: vec![address(c, 4), address(c, 5)],
            member: Some(member()),
            connection_type: Some(pb::ConnectionType::SymmetricNat.into()),
        },
        D::IntroductionResponse,
    );
    c.check_sent(
        "SessionRequest",
        pb::SessionRequest {
            version: Some(2),
            version_blacklist: vec![1, 3, 4],
            walk: Some(13),
            random_b: Some(0x1234_5678),
            destination: Some(address(c, 6)),
            source: vec![address(c, 7), address(c, 8)],
            community: Some(community()),
        },
        D::SessionRequest,
    );
    c.check_sent(
        "SessionResponse",
        pb::SessionResponse {
            version: Some(2),
            walk: Some(13),
            random_a: Some(0x8765_4321),
            community: Some(community()),
        },
        D::SessionResponse,
    );
    c.check_sent(
        "PunctureRequest",
        pb::PunctureRequest {
            session: Some(14),
            walk: Some(15),
            global_time: Some(16),
            initiator: vec![address(c, 9), address(c, 10)],
            community: Some(community()),
            random: Some(17),
        },
        D::PunctureRequest,
    );
    c.check_sent(
        "Puncture",
        pb::Puncture {
            session: Some(18),
            walk: Some(19),
            source: vec![address(c, 11), address(c, 12)],
            community: Some(community()),
            random: Some(20),
            member: Some(member()),
        },
        D::Puncture,
    );
    let messages = vec![message(c), message(c)];
    c.check_sent(
        "Collection",
        pb::Collection {
            session: Some(21),
            messages,
            relay_hops: Some(2),
        },
        D::Collection,
    );
    c.check_sent(
        "Identity",
        pb::Identity {
            session: Some(22),
            member: Some(member()),
            community: Some(community()),
            random: Some(23),
        },
        D::Identity,
    );
    c.check_sent(
        "MissingIdentity",
        pb::MissingIdentity {
            session: Some(24),
            random: Some(25),
            member: Some(bytes(0x30, 20)),
            community: Some(community()),
        },
        D::MissingIdentity,
    );
    c.check_sent(
        "MissingSequence",
        pb::MissingSequence {
            session: Some(26),
            random: Some(27),
            member: Some(bytes(0x30, 20)),
            descriptor: Some(Type::Community.into()),
            sequence_low: Some(3),
            sequence_high: Some(9),
            community: Some(community()),
            community_message: Some(5),
        },
        D::MissingSequence,
    );
    c.check_sent(
        "MissingMessage",
        pb::MissingMessage {
            session: Some(28),
            random: Some(29),
            member: Some(bytes(0x30, 20)),
            global_times: vec![1, 1 << 40, u64::MAX],
            community: Some(community()),
        },
        D::MissingMessage,
    );
    c.check_sent(
        "MissingLastMessage",
        pb::MissingLastMessage {
            session: Some(30),
            random: Some(31),
            member: Some(bytes(0x30, 20)),
            descriptor: Some(Type::Authorize.into()),
            community: Some(community()),
            community_message: Some(6),
        },
        D::MissingLastMessage,
    );
    c.check_sent(
        "MissingProof",
        pb::MissingProof {
            session: Some(32),
            random: Some(33),
            member: Some(bytes(0x30, 20)),
            global_times: vec![7, 8],
            community: Some(community()),
        },
        D::MissingProof,
    );
    let signed = message(c);
    c.check_sent(
        "SignatureRequest",
        pb::SignatureRequest {
            session: Some(34),
            request: Some(35),
            message: Some(pb::Message {
                signatures: vec![],
                ..signed.clone()
            }),
        },
        D::SignatureRequest,
    );
    c.check_sent(
        "SignatureResponse",
        pb::SignatureResponse {
            session: Some(36),
            request: Some(37),
            message: Some(pb::Message {
                signatures: vec![vec![3; 64]],
                ..signed
            }),
        },
        D::SignatureResponse,
    );
    let targets = vec![target(c, 40), target(c, 41)];
    c.check_sent(
        "Authorize",
        pb::Authorize {
            version: Some(1),
            community: Some(community()),
            member: Some(member()),
            global_time: Some(42),
            sequence_number: Some(43),
            targets: targets.clone(),
        },
        D::Authorize,
    );
    c.check_sent(
        "Revoke",
        pb::Revoke {
            version: Some(1),
            community: Some(community()),
            member: Some(member()),
            global_time: Some(44),
            sequence_number: Some(45),
            targets,
        },
        D::Revoke,
    );
    c.check_sent(
        "UndoOwn",
        pb::UndoOwn {
            version: Some(1),
            community: Some(community()),
            member: Some(member()),
            global_time: Some(46),
            sequence_number: Some(47),
            target_global_time: Some(45),
        },
        D::UndoOwn,
    );
    c.check_sent(
        "UndoOther",
        pb::UndoOther {
            version: Some(1),
            community: Some(community()),
            member: Some(member()),
            global_time: Some(48),
            sequence_number: Some(49),
            target_global_time: Some(44),
            target_member: Some(bytes(0x40, 33)),
        },
        D::UndoOther,
    );
    for (target, policy, index) in [
        (
            pb::dynamic_settings::Target::TargetMessage(Type::Undoother.into()),
            pb::dynamic_settings::Policy::Payload,
            1,
        ),
        (
            pb::dynamic_settings::Target::TargetCommunityMessage(9),
            pb::dynamic_settings::Policy::Resolution,
            2,
        ),
    ] {
        c.check_sent(
            "DynamicSettings",
            pb::DynamicSettings {
                version: Some(1),
                community: Some(community()),
                member: Some(member()),
                global_time: Some(50),
                sequence_number: Some(51),
                target: Some(target),
                target_policy: Some(policy.into()),
                target_index: Some(index),
            },
            D::DynamicSettings,
        );
    }
    c.check_sent(
        "DestroyCommunity",
        pb::DestroyCommunity {
            version: Some(1),
            community: Some(community()),
            member: Some(member()),
            global_time: Some(52),
            degree: Some(pb::destroy_community::Degree::Hard.into()),
        },
        D::DestroyCommunity,
    );
    c.check_sent(
        "CommunityMessage",
        pb::CommunityMessage {
            community: Some(community()),
            message_type: Some(200),
            conversion: Some(vec![0xFF, 1, 2]),
            members: vec![member(), bytes(0x50, 33)],
            global_time: Some(53),
            sequence_number: Some(54),
            resolution_index: Some(55),
            relay_hops: Some(56),
            payload: Some(b"plugin payload".to_vec()),
        },
        D::Community,
    );
}

#[test]
fn every_message_round_trips_alone_and_in_an_envelope() {
    samples(&Coverage::default());
}

#[test]
fn samples_set_every_field_of_every_schema_message() {
    let coverage = Coverage::default();
    samples(&coverage);
    let coverage = coverage.0.into_inner();
    let schema = schema_fields();
    assert!(schema.len() >= 28, "schema parser found only {schema:?}");
    assert_eq!(
        schema["IntroductionRequest.Synchronization"],
        BTreeSet::from([1, 2, 3, 4, 5, 6, 7])
    );
    assert_eq!(schema["Permission"], BTreeSet::from([1, 2, 3]));
    for (name, fields) in &schema {
        let seen = coverage.get(name).cloned().unwrap_or_default();
        assert_eq!(
            &seen, fields,
            "fields of {name} set by the samples vs the schema"
        );
    }
    let extra: Vec<_> = coverage
        .keys()
        .filter(|k| !schema.contains_key(*k))
        .collect();
    assert!(
        extra.is_empty(),
        "samples of messages not in the schema: {extra:?}"
    );
}

/// The `Descriptor` variant of every message type, with a default (empty) sub-message.
fn variant(t: Type) -> D {
    match t {
        Type::Introductionrequest => D::IntroductionRequest(Default::default()),
        Type::Introductionresponse => D::IntroductionResponse(Default::default()),
        Type::Sessionrequest => D::SessionRequest(Default::default()),
        Type::Sessionresponse => D::SessionResponse(Default::default()),
        Type::Puncturerequest => D::PunctureRequest(Default::default()),
        Type::Puncture => D::Puncture(Default::default()),
        Type::Collection => D::Collection(Default::default()),
        Type::Identity => D::Identity(Default::default()),
        Type::Missingidentity => D::MissingIdentity(Default::default()),
        Type::Missingsequence => D::MissingSequence(Default::default()),
        Type::Missingmessage => D::MissingMessage(Default::default()),
        Type::Missinglastmessage => D::MissingLastMessage(Default::default()),
        Type::Missingproof => D::MissingProof(Default::default()),
        Type::Signaturerequest => D::SignatureRequest(Default::default()),
        Type::Signatureresponse => D::SignatureResponse(Default::default()),
        Type::Authorize => D::Authorize(Default::default()),
        Type::Revoke => D::Revoke(Default::default()),
        Type::Undoown => D::UndoOwn(Default::default()),
        Type::Undoother => D::UndoOther(Default::default()),
        Type::Dynamicsettings => D::DynamicSettings(Default::default()),
        Type::Destroycommunity => D::DestroyCommunity(Default::default()),
        Type::Community => D::Community(Default::default()),
    }
}

/// The inverse of [`variant`]; exhaustive, so a new oneof member needs a `Type` value here.
fn type_of(message: &D) -> Type {
    match message {
        D::IntroductionRequest(_) => Type::Introductionrequest,
        D::IntroductionResponse(_) => Type::Introductionresponse,
        D::SessionRequest(_) => Type::Sessionrequest,
        D::SessionResponse(_) => Type::Sessionresponse,
        D::PunctureRequest(_) => Type::Puncturerequest,
        D::Puncture(_) => Type::Puncture,
        D::Collection(_) => Type::Collection,
        D::Identity(_) => Type::Identity,
        D::MissingIdentity(_) => Type::Missingidentity,
        D::MissingSequence(_) => Type::Missingsequence,
        D::MissingMessage(_) => Type::Missingmessage,
        D::MissingLastMessage(_) => Type::Missinglastmessage,
        D::MissingProof(_) => Type::Missingproof,
        D::SignatureRequest(_) => Type::Signaturerequest,
        D::SignatureResponse(_) => Type::Signatureresponse,
        D::Authorize(_) => Type::Authorize,
        D::Revoke(_) => Type::Revoke,
        D::UndoOwn(_) => Type::Undoown,
        D::UndoOther(_) => Type::Undoother,
        D::DynamicSettings(_) => Type::Dynamicsettings,
        D::DestroyCommunity(_) => Type::Destroycommunity,
        D::Community(_) => Type::Community,
    }
}

#[test]
fn descriptor_type_values_equal_oneof_field_numbers() {
    let types: Vec<Type> = (0..=0xFFFF)
        .filter_map(|v| Type::try_from(v).ok())
        .collect();
    let values: BTreeSet<u32> = types.iter().map(|t| *t as u32).collect();
    assert_eq!(
        values,
        schema_fields()["Descriptor"],
        "Type values vs oneof fields"
    );
    for t in types {
        let descriptor = pb::Descriptor {
            message: Some(variant(t)),
        };
        let bytes = descriptor.encode_to_vec();
        let key = prost::encoding::decode_varint(&mut bytes.as_slice()).unwrap();
        assert_eq!(key >> 3, t as u64, "field number of {}", t.as_str_name());
        assert_eq!(key & 7, 2, "{} is length-delimited", t.as_str_name());
        let decoded = pb::Descriptor::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, descriptor);
        assert_eq!(type_of(&decoded.message.unwrap()), t);
    }
}

#[test]
fn proto2_defaults_are_generated() {
    let sync = pb::introduction_request::Synchronization::default();
    assert_eq!((sync.low(), sync.high(), sync.modulo()), (1, 1, 1));
    assert_eq!(sync.offset(), 0);
    assert!(pb::IntroductionRequest::default().advice());
    // A proto2 enum defaults to its first declared value.
    assert_eq!(
        pb::Address::default().r#type(),
        pb::ConnectionType::UnknownNat
    );
    assert_eq!(
        pb::Permission::default().permission(),
        pb::permission::Kind::Permit
    );
    assert_eq!(
        pb::MissingSequence::default().descriptor(),
        Type::Introductionrequest
    );
    // Unset optional fields are absent on the wire.
    assert!(
        pb::IntroductionRequest::default()
            .encode_to_vec()
            .is_empty()
    );
}
