use std::collections::HashMap;

use dispersy_proto as pb;
use prost::Message as _;

use super::*;
use crate::identity::{CommunityId, KeyPair};
use crate::rng::Rng;

/// The keys of the test members, as a node that met them knows them.
fn known() -> &'static HashMap<MemberId, PublicKey> {
    static KNOWN: std::sync::LazyLock<HashMap<MemberId, PublicKey>> =
        std::sync::LazyLock::new(|| {
            (1..=3)
                .map(|n| (key(n).member_id(), key(n).public().clone()))
                .collect()
        });
    &KNOWN
}

fn key(n: u8) -> KeyPair {
    let mut secret = [7u8; 32];
    secret[31] = n;
    KeyPair::from_secret(&secret).unwrap()
}

fn cid() -> CommunityId {
    CommunityId([0xAB; 20])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn request(k: &KeyPair) -> IntroductionRequest {
    IntroductionRequest {
        community: cid(),
        member: k.public().clone(),
        session: 0,
        walk: 0xBEEF,
        random: 77,
        global_time: 12,
        destination: addr("10.0.0.2:7000"),
        source_lan: addr("192.168.1.5:6000"),
        source_wan: addr("[2001:db8::1]:6001"),
        connection_type: ConnectionType::Public,
        advice: true,
        sync: Some(Synchronization {
            low: 1,
            high: 100,
            modulo: 3,
            offset: 2,
            functions: 6,
            prefix: 9,
            bloom: vec![0x55; 128],
        }),
    }
}

fn community_message(k: &KeyPair, gt: u64) -> SignedMessage {
    SignedMessage::sign(
        CommunityMessage {
            community: cid(),
            message_type: 1,
            conversion: Conversion::version(1).unwrap(),
            authors: vec![k.public().clone()],
            global_time: gt,
            sequence_number: Some(3),
            resolution_index: None,
            relay_hops: None,
            payload: b"payload".to_vec(),
            authority: None,
        },
        &[k],
    )
    .unwrap()
}

fn co_signed(k: &KeyPair) -> (CommunityMessage, Vec<u8>) {
    let other = key(77);
    let message = CommunityMessage {
        community: cid(),
        message_type: 2,
        conversion: Conversion::version(1).unwrap(),
        authors: vec![other.public().clone(), k.public().clone()],
        global_time: 9,
        sequence_number: None,
        resolution_index: None,
        relay_hops: None,
        payload: b"pact".to_vec(),
        authority: None,
    };
    let descriptor = message.descriptor();
    (message, descriptor)
}

fn all_packets(k: &KeyPair) -> Vec<Packet> {
    let (message, descriptor) = co_signed(k);
    let signature = k
        .sign_digest(&crate::identity::digest(&descriptor))
        .to_vec();
    vec![
        Packet::SignatureRequest(SignatureRequest {
            session: 3,
            request: 41,
            message: message.clone(),
            descriptor: descriptor.clone(),
        }),
        Packet::SignatureResponse(SignatureResponse {
            session: 3,
            request: 41,
            message,
            descriptor,
            signer: 1,
            signature,
        }),
        Packet::IntroductionRequest(request(k)),
        Packet::IntroductionRequest(IntroductionRequest {
            sync: None,
            advice: false,
            connection_type: ConnectionType::SymmetricNat,
            ..request(k)
        }),
        Packet::IntroductionResponse(IntroductionResponse {
            community: cid(),
            member: k.public().clone(),
            session: 5,
            walk: 0xBEEF,
            global_time: 44,
            destination: addr("1.2.3.4:5"),
            source_lan: addr("10.0.0.1:1"),
            source_wan: addr("8.8.8.8:2"),
            connection_type: ConnectionType::Unknown,
            introduced: Some((addr("10.1.1.1:3"), addr("9.9.9.9:4"))),
        }),
        Packet::IntroductionResponse(IntroductionResponse {
            community: cid(),
            member: k.public().clone(),
            session: 5,
            walk: 1,
            global_time: 1,
            destination: addr("1.2.3.4:5"),
            source_lan: UNKNOWN_ADDRESS,
            source_wan: UNKNOWN_ADDRESS,
            connection_type: ConnectionType::Unknown,
            introduced: None,
        }),
        Packet::PunctureRequest(PunctureRequest {
            community: cid(),
            session: 1,
            walk: 2,
            random: 3,
            global_time: 4,
            initiator_lan: addr("10.0.0.9:9"),
            initiator_wan: addr("[::1]:9"),
        }),
        Packet::Puncture(Puncture {
            community: cid(),
            member: k.public().clone(),
            session: 1,
            walk: 2,
            random: 3,
            source_lan: addr("10.0.0.9:9"),
            source_wan: addr("7.7.7.7:9"),
        }),
        Packet::Collection(Collection {
            session: 9,
            messages: vec![community_message(k, 5), community_message(k, 6)],
            relay_hops: None,
        }),
        Packet::Collection(Collection {
            session: 9,
            messages: vec![community_message(k, 7)],
            relay_hops: Some(2),
        }),
        Packet::SessionRequest(SessionRequest {
            community: cid(),
            version: SESSION_VERSION,
            walk: 3,
            random: 99,
            destination: addr("1.2.3.4:5"),
            source_lan: addr("10.0.0.1:1"),
            source_wan: addr("[2001:db8::7]:2"),
        }),
        Packet::SessionResponse(SessionResponse {
            community: cid(),
            version: SESSION_VERSION,
            walk: 3,
            random: 11,
        }),
        Packet::MissingIdentity(MissingIdentity {
            community: cid(),
            session: 0,
            random: 5,
            member: k.member_id(),
        }),
        Packet::Identity(Identity {
            community: cid(),
            session: 8,
            random: 5,
            member: k.public().clone(),
        }),
        Packet::MissingSequence(MissingSequence {
            community: cid(),
            session: 4,
            member: k.member_id(),
            meta: 7,
            low: 3,
            high: 9,
        }),
        Packet::MissingMessage(MissingMessage {
            community: cid(),
            session: 4,
            member: k.member_id(),
            global_times: vec![5, 80],
        }),
        Packet::MissingLastMessage(MissingLastMessage {
            community: cid(),
            session: 0,
            member: k.member_id(),
            meta: 2,
        }),
        Packet::MissingSequence(MissingSequence {
            community: cid(),
            session: 4,
            member: k.member_id(),
            meta: crate::meta::builtin::REVOKE,
            low: 1,
            high: 2,
        }),
        Packet::MissingLastMessage(MissingLastMessage {
            community: cid(),
            session: 0,
            member: k.member_id(),
            meta: crate::meta::builtin::DESTROY_COMMUNITY,
        }),
        Packet::MissingProof(MissingProof {
            community: cid(),
            session: 6,
            random: 12,
            member: crate::authority::MemberRef::from_id(k.member_id()),
            global_times: vec![9, 4],
        }),
    ]
}

#[test]
fn every_packet_round_trips() {
    let k = key(1);
    for packet in all_packets(&k) {
        let bytes = packet.encode(&k);
        assert!(bytes.len() <= DEFAULT_MAX_DATAGRAM, "{}", packet.name());
        let decoded = decode(&bytes, DEFAULT_MAX_DATAGRAM, known()).unwrap();
        assert_eq!(decoded, packet);
    }
}

#[test]
fn signed_packets_by_another_key_fail_verification() {
    let k = key(1);
    let forger = key(2);
    // The packet claims `k` as its member but is signed by `forger`.
    let bytes = Packet::IntroductionRequest(request(&k)).encode(&forger);
    assert_eq!(
        decode(&bytes, DEFAULT_MAX_DATAGRAM, known())
            .unwrap_err()
            .kind(),
        "bad-signature"
    );
}

#[test]
fn tampered_descriptor_fails_verification() {
    let k = key(1);
    let mut envelope =
        pb::Message::decode(&Packet::IntroductionRequest(request(&k)).encode(&k)[..]).unwrap();
    let mut descriptor = pb::Descriptor::decode(envelope.descriptor.as_deref().unwrap()).unwrap();
    if let Some(pb::descriptor::Message::IntroductionRequest(r)) = &mut descriptor.message {
        r.walk = Some(1);
    }
    envelope.descriptor = Some(descriptor.encode_to_vec());
    let err = decode(&envelope.encode_to_vec(), DEFAULT_MAX_DATAGRAM, known()).unwrap_err();
    assert_eq!(err.kind(), "bad-signature");
    envelope.signatures.clear();
    let err = decode(&envelope.encode_to_vec(), DEFAULT_MAX_DATAGRAM, known()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::SignatureCount {
            expected: 1,
            got: 0
        }
    );
}

#[test]
fn collection_with_a_forged_inner_message_is_dropped_whole() {
    let k = key(1);
    let good = community_message(&k, 5);
    let mut forged = community_message(&k, 6);
    let last = forged.packet.len() - 1;
    forged.packet[last] ^= 1; // last byte of the signature
    let bytes = encode_collection(0, &[&good.packet, &forged.packet]);
    assert_eq!(
        decode(&bytes, DEFAULT_MAX_DATAGRAM, known())
            .unwrap_err()
            .kind(),
        "bad-signature"
    );
}

#[test]
fn a_batch_decodes_as_one_by_one_with_combs_or_without() {
    // Every packet kind, collections of a frequent signer (checked through its comb once it
    // has one) with good, forged and foreign messages, and garbage, in one batch.
    let (k, forger) = (key(1), key(2));
    let mut datagrams: Vec<Vec<u8>> = all_packets(&k).iter().map(|p| p.encode(&k)).collect();
    datagrams.push(Packet::IntroductionRequest(request(&k)).encode(&forger));
    for gt in 1..=40 {
        let good = community_message(&k, gt);
        let other = community_message(&forger, gt);
        let mut forged = community_message(&k, gt + 100);
        let last = forged.packet.len() - 1;
        forged.packet[last] ^= 1;
        datagrams.push(encode_collection(0, &[&good.packet, &other.packet]));
        datagrams.push(encode_collection(0, &[&good.packet, &forged.packet]));
        datagrams.push(encode_collection(0, &[&forged.packet]));
        datagrams.push(good.packet[..good.packet.len() / 2].to_vec());
    }
    let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
    for tables in [0, 2] {
        let mut verifier = crate::verifier::Verifier::new(crate::verifier::Config {
            hot_after: 5,
            max_tables: tables,
            max_counted: 16,
        });
        // Twice: the second time with combs for both signers.
        for _ in 0..2 {
            let batch = decode_batch(&refs, DEFAULT_MAX_DATAGRAM, known(), &mut verifier);
            assert_eq!(batch.len(), refs.len());
            for (bytes, got) in refs.iter().zip(batch) {
                let expected = decode(bytes, DEFAULT_MAX_DATAGRAM, known());
                assert_eq!(got.is_ok(), expected.is_ok());
                match (got, expected) {
                    (Ok(got), Ok(expected)) => assert_eq!(got, expected),
                    (Err(got), Err(expected)) => assert_eq!(got.kind(), expected.kind()),
                    _ => unreachable!(),
                }
            }
        }
        assert_eq!(verifier.tables(), tables);
    }
}

#[test]
fn a_key_cache_decodes_like_parsing_and_stays_bounded() {
    let cache = crate::member::KeyCache::new(2);
    let packets: Vec<SignedMessage> = (1..=4u8)
        .flat_map(|n| [community_message(&key(n), 5), community_message(&key(n), 6)])
        .collect();
    for message in &packets {
        let bytes = encode_collection(0, &[&message.packet]);
        let parsed = decode(&bytes, DEFAULT_MAX_DATAGRAM, &()).unwrap();
        assert_eq!(
            decode(&bytes, DEFAULT_MAX_DATAGRAM, &cache).unwrap(),
            parsed
        );
        assert!(cache.len() <= 2);
    }
    // A cached author does not make a forged signature pass.
    let mut forged = community_message(&key(4), 7);
    let last = forged.packet.len() - 1;
    forged.packet[last] ^= 1;
    let bytes = encode_collection(0, &[&forged.packet]);
    assert_eq!(
        decode(&bytes, DEFAULT_MAX_DATAGRAM, &cache)
            .unwrap_err()
            .kind(),
        "bad-signature"
    );
    // Bytes that are no point are refused, and not kept.
    assert!(cache.parse(&[7; PUBLIC_KEY_LEN]).is_err());
    assert!(cache.len() <= 2);
    // Capacity 0 parses every time.
    let none = crate::member::KeyCache::new(0);
    assert_eq!(
        none.parse(key(1).public().as_bytes()).unwrap(),
        *key(1).public()
    );
    assert!(none.is_empty());
}

#[test]
fn truncations_never_panic_and_never_verify() {
    let k = key(1);
    for packet in all_packets(&k) {
        let bytes = packet.encode(&k);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], DEFAULT_MAX_DATAGRAM, known()).is_err());
        }
    }
}

#[test]
fn random_bytes_and_bit_flips_never_panic() {
    let mut rng = Rng::new(1);
    for _ in 0..20_000 {
        let len = rng.index(300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
        assert!(decode(&bytes, DEFAULT_MAX_DATAGRAM, known()).is_err());
    }
    let k = key(1);
    for packet in all_packets(&k) {
        let bytes = packet.encode(&k);
        for _ in 0..300 {
            let mut copy = bytes.clone();
            let i = rng.index(copy.len());
            copy[i] ^= 1 << rng.index(8);
            // Either a typed error or, when the flip hit an unsigned field, a valid packet.
            let _ = decode(&copy, DEFAULT_MAX_DATAGRAM, known());
        }
    }
}

#[test]
fn size_limits_and_huge_length_prefixes() {
    assert_eq!(decode(&[], 1500, known()), Err(DecodeError::Empty));
    let big = vec![0u8; 1501];
    assert_eq!(
        decode(&big, 1500, known()),
        Err(DecodeError::Oversized {
            len: 1501,
            max: 1500
        })
    );
    // Field 1 (descriptor), length-delimited, with a length of 2^63.
    let mut huge = vec![0x0A];
    prost::encoding::encode_varint(1 << 63, &mut huge);
    huge.extend_from_slice(b"abc");
    assert_eq!(
        decode(&huge, 1500, known()).unwrap_err().kind(),
        "malformed"
    );
}

#[test]
fn walker_messages_name_their_member_by_id_and_need_its_key() {
    let k = key(1);
    let bytes = Packet::IntroductionRequest(request(&k)).encode(&k);
    // The id, not the key, is on the wire.
    assert!(bytes.windows(20).any(|w| w == k.member_id().0));
    assert!(!bytes.windows(33).any(|w| w == k.public().as_bytes()));
    assert_eq!(
        decode(&bytes, 1500, &()),
        Err(DecodeError::UnknownMember(k.member_id()))
    );
    assert!(decode(&bytes, 1500, known()).is_ok());
    // A full key is accepted as well (a peer may send it).
    let mut envelope = pb::Message::decode(&bytes[..]).unwrap();
    let mut descriptor = pb::Descriptor::decode(envelope.descriptor.as_deref().unwrap()).unwrap();
    if let Some(pb::descriptor::Message::IntroductionRequest(r)) = &mut descriptor.message {
        r.member = Some(k.public().as_bytes().to_vec());
    }
    let descriptor = descriptor.encode_to_vec();
    envelope.signatures = vec![k.sign(&descriptor).to_vec()];
    envelope.descriptor = Some(descriptor);
    assert!(decode(&envelope.encode_to_vec(), 1500, &()).is_ok());
}

#[test]
fn unsupported_and_invalid_fields_are_typed_errors() {
    let descriptor = pb::Descriptor {
        message: Some(pb::descriptor::Message::MissingProof(
            pb::MissingProof::default(),
        )),
    };
    let bytes = pb::Message {
        descriptor: Some(descriptor.encode_to_vec()),
        signatures: vec![],
    }
    .encode_to_vec();
    assert!(matches!(
        decode(&bytes, 1500, known()),
        Err(DecodeError::Invalid {
            field: "MissingProof.global_times",
            ..
        })
    ));
    let empty = pb::Message {
        descriptor: Some(vec![]),
        signatures: vec![],
    }
    .encode_to_vec();
    assert_eq!(decode(&empty, 1500, known()), Err(DecodeError::NoMessage));
    let missing = |m: pb::MissingSequence| {
        let descriptor = pb::Descriptor {
            message: Some(pb::descriptor::Message::MissingSequence(m)),
        };
        let bytes = pb::Message {
            descriptor: Some(descriptor.encode_to_vec()),
            signatures: vec![],
        }
        .encode_to_vec();
        decode(&bytes, 1500, known())
    };
    let valid = pb::MissingSequence {
        member: Some(vec![1; 20]),
        descriptor: Some(pb::descriptor::Type::Community as i32),
        sequence_low: Some(2),
        sequence_high: Some(4),
        community: Some(vec![2; 20]),
        community_message: Some(3),
        ..Default::default()
    };
    assert!(missing(valid.clone()).is_ok());
    for (invalid, field) in [
        (
            pb::MissingSequence {
                sequence_low: Some(0),
                ..valid.clone()
            },
            "MissingSequence.sequence_low",
        ),
        (
            pb::MissingSequence {
                sequence_high: Some(1),
                ..valid.clone()
            },
            "MissingSequence.sequence_low",
        ),
        (
            pb::MissingSequence {
                descriptor: Some(pb::descriptor::Type::Collection as i32),
                ..valid.clone()
            },
            "MissingSequence.community_message",
        ),
        (
            pb::MissingSequence {
                community_message: Some(crate::meta::builtin::RESERVED_FROM),
                ..valid.clone()
            },
            "MissingSequence.community_message",
        ),
        (
            pb::MissingSequence {
                member: Some(vec![1; 19]),
                ..valid.clone()
            },
            "MissingSequence.member",
        ),
    ] {
        assert!(
            matches!(missing(invalid), Err(DecodeError::Invalid { field: f, .. }) if f == field),
            "{field}"
        );
    }
    assert!(Conversion::new(&[0]).is_err());
    assert!(Conversion::new(&[0xFF]).is_err());
    assert!(Conversion::new(&[0xFF, 1]).is_ok());
    assert!(Conversion::new(&[1, 2]).is_err());
}

#[test]
fn co_signing_messages_are_checked() {
    let k = key(3);
    let (message, descriptor) = co_signed(&k);
    // A response whose signature is by neither author is refused.
    let stranger = key(78)
        .sign_digest(&crate::identity::digest(&descriptor))
        .to_vec();
    let forged = Packet::SignatureResponse(SignatureResponse {
        session: 1,
        request: 1,
        message: message.clone(),
        descriptor: descriptor.clone(),
        signer: 1,
        signature: stranger,
    })
    .encode(&k);
    assert!(matches!(
        decode(&forged, 1500, known()),
        Err(DecodeError::Invalid { .. }) | Err(DecodeError::Signature(_))
    ));
    // A request for a message of one author is refused.
    let mut single = message.clone();
    single.authors.truncate(1);
    let request = Packet::SignatureRequest(SignatureRequest {
        session: 1,
        request: 1,
        descriptor: single.descriptor(),
        message: single,
    })
    .encode(&k);
    assert!(matches!(
        decode(&request, 1500, known()),
        Err(DecodeError::Invalid {
            field: "CommunityMessage.members",
            ..
        })
    ));
    // Both signatures in author order make the message; in the wrong order they do not.
    let first = key(77)
        .sign_digest(&crate::identity::digest(&descriptor))
        .to_vec();
    let second = k
        .sign_digest(&crate::identity::digest(&descriptor))
        .to_vec();
    let signed = SignedMessage::assemble(
        message.clone(),
        descriptor.clone(),
        vec![first.clone(), second.clone()],
    )
    .unwrap();
    assert_eq!(SignedMessage::decode(&signed.packet).unwrap(), signed);
    assert!(SignedMessage::assemble(message, descriptor, vec![second, first]).is_err());
}

#[test]
fn collections_split_over_datagrams_within_budget() {
    let k = key(3);
    let messages: Vec<SignedMessage> = (1..=40).map(|gt| community_message(&k, gt)).collect();
    let packets: Vec<&[u8]> = messages.iter().map(|m| m.packet.as_slice()).collect();
    let datagrams = encode_collections(4, &packets, 1500).unwrap();
    assert!(datagrams.len() > 1);
    let mut seen = Vec::new();
    for datagram in &datagrams {
        assert!(datagram.len() <= 1500, "{}", datagram.len());
        match decode(datagram, 1500, known()).unwrap() {
            Packet::Collection(c) => {
                assert_eq!(c.session, 4);
                seen.extend(c.messages);
            }
            other => panic!("not a collection: {other:?}"),
        }
    }
    assert_eq!(seen, messages);
    let huge = vec![0u8; 1600];
    assert_eq!(encode_collections(0, &[&huge], 1500), Err(0));
}

#[test]
fn a_packet_is_counted_under_its_own_name() {
    let packet = Packet::MissingIdentity(MissingIdentity {
        community: CommunityId([1; 20]),
        session: 1,
        random: 3,
        member: crate::identity::MemberId([2; 20]),
    });
    assert_eq!(packet.traffic().as_str(), packet.name());
}

/// Re-signs the introduction-request `k` sent after `edit` changed its synchronization.
fn with_sync(
    k: &KeyPair,
    edit: impl FnOnce(&mut pb::introduction_request::Synchronization),
) -> Vec<u8> {
    let mut envelope =
        pb::Message::decode(&Packet::IntroductionRequest(request(k)).encode(k)[..]).unwrap();
    let mut descriptor = pb::Descriptor::decode(envelope.descriptor.as_deref().unwrap()).unwrap();
    if let Some(pb::descriptor::Message::IntroductionRequest(r)) = &mut descriptor.message {
        edit(r.synchronization.as_mut().unwrap());
    }
    let descriptor = descriptor.encode_to_vec();
    envelope.signatures = vec![k.sign(&descriptor).to_vec()];
    envelope.descriptor = Some(descriptor);
    envelope.encode_to_vec()
}

/// Issue 12, point 8: the sync offset is the original's (`(t + offset) % modulo == 0`
/// covers `t`), not a residue; and a request without a bloom filter is "no sync", still an
/// introduction-request to answer.
#[test]
fn the_sync_offset_is_the_originals_and_no_bloom_filter_means_no_sync() {
    let k = key(1);
    // On the wire: modulo 4, offset 1 covers 3, 7, 11, ... (the residue 3).
    let bytes = with_sync(&k, |s| {
        s.modulo = Some(4);
        s.offset = Some(1);
    });
    let Ok(Packet::IntroductionRequest(r)) = decode(&bytes, DEFAULT_MAX_DATAGRAM, known()) else {
        panic!("not decoded");
    };
    let sync = r.sync.clone().unwrap();
    assert_eq!((sync.modulo, sync.offset), (4, 3));
    for t in [3u64, 7, 11] {
        assert_eq!((t + 1) % 4, 0);
        assert_eq!(t % u64::from(sync.modulo), sync.offset);
    }
    // And back: what the node sends is the original's offset again.
    let sent = Packet::IntroductionRequest(r).encode(&k);
    let envelope = pb::Message::decode(&sent[..]).unwrap();
    let descriptor = pb::Descriptor::decode(envelope.descriptor.as_deref().unwrap()).unwrap();
    let Some(pb::descriptor::Message::IntroductionRequest(r)) = descriptor.message else {
        panic!("not a request");
    };
    assert_eq!(r.synchronization.unwrap().offset, Some(1));
    // Offset 0 covers the multiples of modulo: the residue 0.
    let bytes = with_sync(&k, |s| {
        s.modulo = Some(4);
        s.offset = Some(0);
    });
    let Ok(Packet::IntroductionRequest(r)) = decode(&bytes, DEFAULT_MAX_DATAGRAM, known()) else {
        panic!("not decoded");
    };
    assert_eq!(r.sync.unwrap().offset, 0);
    // No bloom filter: decoded, without synchronization.
    for bloom in [None, Some(Vec::new())] {
        let bytes = with_sync(&k, |s| s.bloomfilter = bloom);
        let Ok(Packet::IntroductionRequest(r)) = decode(&bytes, DEFAULT_MAX_DATAGRAM, known())
        else {
            panic!("a request without a bloom filter is dropped");
        };
        assert_eq!(r.sync, None);
    }
}
