//! The test vectors of `proto/PROTOCOL.md`, checked: every `name = value` line inside a
//! ```` ```vectors ```` block of the document is computed here with the node's own code and
//! compared with the document's text. A vector the document holds and this file does not compute
//! fails too, so the document carries no unchecked value.
//!
//! On a mismatch the test prints the computed lines, ready to paste into the document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use dispersy_core::bloom::{BloomFilter, PacketHash};
use dispersy_core::identity::{self, CommunityId, KeyPair, MemberId, PublicKey};
use dispersy_core::sync::Range;
use dispersy_core::wire::{
    self, CommunityMessage, ConnectionType, Conversion, IntroductionRequest, Packet, SignedMessage,
    Synchronization,
};

const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/PROTOCOL.md");

/// The `name = value` lines of the document's ```` ```vectors ```` blocks. A line without ` = `
/// continues the value of the line before it (long hex strings are wrapped).
fn documented() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(DOCUMENT).expect("proto/PROTOCOL.md");
    let mut vectors: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if !inside {
            inside = trimmed == "```vectors";
            continue;
        }
        if trimmed.starts_with("```") {
            inside = false;
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.split_once(" = ") {
            Some((name, value)) => vectors.push((name.trim().to_owned(), value.trim().to_owned())),
            None => {
                let last = vectors
                    .last_mut()
                    .expect("a continuation line follows a vector");
                last.1.push_str(trimmed);
            }
        }
    }
    vectors
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn u64_hex(value: u64) -> String {
    format!("0x{value:016x}")
}

/// Bit positions of `hash` in a filter of `bytes` bytes, `functions` functions and `salt`,
/// found by inserting it alone into an empty filter (the node's own code).
fn positions(hash: &PacketHash, bytes: usize, functions: u32, salt: u32) -> Vec<usize> {
    let mut filter = BloomFilter::new(bytes, functions, salt).unwrap();
    filter.insert(hash);
    (0..bytes * 8)
        .filter(|bit| filter.as_bytes()[bit / 8] & (1 << (bit % 8)) != 0)
        .collect()
}

/// The bit positions as the document computes them step by step (SplitMix64 finaliser, double
/// hashing), written out here independently of `bloom.rs`.
fn positions_by_hand(hash: &PacketHash, bytes: usize, functions: u32, salt: u32) -> Vec<u64> {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let s = u64::from(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let a = mix(hash.0 ^ s);
    let b = mix(hash.1 ^ s.rotate_left(32)) | 1;
    let m = (bytes * 8) as u64;
    (0..u64::from(functions))
        .map(|i| a.wrapping_add(i.wrapping_mul(b)) % m)
        .collect()
}

fn list<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

const BLOOM_BYTES: usize = 16;
const BLOOM_FUNCTIONS: u32 = 3;
const BLOOM_SALT: u32 = 0x1234_5678;

fn test_key() -> KeyPair {
    KeyPair::from_secret(&[0x01; 32]).unwrap()
}

fn test_community() -> CommunityId {
    CommunityId([0x11; 20])
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The introduction-request of the vectors, as the node holds it (offset as residue).
fn introduction_request(bloom: Vec<u8>) -> IntroductionRequest {
    IntroductionRequest {
        community: test_community(),
        member: test_key().public().clone(),
        session: 0,
        walk: 0x0102_0304,
        random: 7,
        global_time: 42,
        destination: addr("127.0.0.1:7001"),
        source_lan: addr("10.0.0.2:7002"),
        source_wan: addr("198.51.100.3:7003"),
        connection_type: ConnectionType::Public,
        advice: true,
        sync: Some(Synchronization {
            low: 1,
            high: 0,
            modulo: 3,
            // The residue 2 travels as the original's offset 1.
            offset: 2,
            functions: BLOOM_FUNCTIONS,
            prefix: BLOOM_SALT,
            bloom,
        }),
    }
}

/// Every vector of the document, computed.
fn computed() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |name: &str, value: String| out.push((name.to_owned(), value));

    // Packet hash.
    let packet = b"dispersy";
    let digest = identity::digest(packet);
    let hash = PacketHash::of(packet);
    put("hash.packet", hex(packet));
    put("hash.sha256", hex(&digest));
    put("hash.h0", u64_hex(hash.0));
    put("hash.h1", u64_hex(hash.1));

    // Bloom filter.
    put("bloom.bytes", BLOOM_BYTES.to_string());
    put("bloom.functions", BLOOM_FUNCTIONS.to_string());
    put("bloom.prefix", format!("0x{BLOOM_SALT:08x}"));
    let s = u64::from(BLOOM_SALT).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    put("bloom.s", u64_hex(s));
    let second = PacketHash::of(b"permission");
    put("bloom.second.packet", hex(b"permission"));
    put("bloom.second.h0", u64_hex(second.0));
    put("bloom.second.h1", u64_hex(second.1));
    let mut sorted_first = positions_by_hand(&hash, BLOOM_BYTES, BLOOM_FUNCTIONS, BLOOM_SALT);
    let mut sorted_second = positions_by_hand(&second, BLOOM_BYTES, BLOOM_FUNCTIONS, BLOOM_SALT);
    put("bloom.first.positions", list(&sorted_first));
    put("bloom.second.positions", list(&sorted_second));
    sorted_first.sort_unstable();
    sorted_first.dedup();
    sorted_second.sort_unstable();
    sorted_second.dedup();
    // The node's filter sets exactly the bits the document's steps give.
    let as_usize = |v: &[u64]| v.iter().map(|&p| p as usize).collect::<Vec<_>>();
    assert_eq!(
        positions(&hash, BLOOM_BYTES, BLOOM_FUNCTIONS, BLOOM_SALT),
        as_usize(&sorted_first)
    );
    assert_eq!(
        positions(&second, BLOOM_BYTES, BLOOM_FUNCTIONS, BLOOM_SALT),
        as_usize(&sorted_second)
    );
    let mut filter = BloomFilter::new(BLOOM_BYTES, BLOOM_FUNCTIONS, BLOOM_SALT).unwrap();
    filter.insert(&hash);
    filter.insert(&second);
    assert!(filter.contains(&hash) && filter.contains(&second));
    put("bloom.filter", hex(filter.as_bytes()));

    // Introduction-request: descriptor, signature, datagram.
    let key = test_key();
    put("intro.secret", hex(&key.secret_bytes()));
    put("intro.key", hex(key.public().as_bytes()));
    put("intro.member", hex(&key.member_id().0));
    put("intro.community", hex(&test_community().0));
    let request = introduction_request(filter.as_bytes().to_vec());
    let datagram = Packet::IntroductionRequest(request.clone()).encode(&key);
    let outer = <dispersy_proto::Message as prost::Message>::decode(datagram.as_slice()).unwrap();
    let descriptor = outer.descriptor.clone().unwrap();
    put("intro.descriptor", hex(&descriptor));
    put("intro.digest", hex(&identity::digest(&descriptor)));
    put("intro.signature", hex(&outer.signatures[0]));
    put("intro.datagram", hex(&datagram));
    // It decodes back to the same request, its signature verified.
    let mut keys = std::collections::HashMap::<MemberId, PublicKey>::new();
    keys.insert(key.member_id(), key.public().clone());
    let decoded = wire::decode(&datagram, wire::DEFAULT_MAX_DATAGRAM, &keys).unwrap();
    assert_eq!(decoded, Packet::IntroductionRequest(request));

    // Modulo and offset: the wire carries the original's offset.
    let decoded_proto =
        <dispersy_proto::Descriptor as prost::Message>::decode(descriptor.as_slice()).unwrap();
    let Some(dispersy_proto::descriptor::Message::IntroductionRequest(wire_request)) =
        decoded_proto.message
    else {
        panic!("an introduction-request");
    };
    let wire_sync = wire_request.synchronization.unwrap();
    let (modulo, wire_offset) = (wire_sync.modulo.unwrap(), wire_sync.offset.unwrap());
    put("intro.sync.modulo", modulo.to_string());
    put("intro.sync.offset", wire_offset.to_string());
    let by_original: Vec<u64> = (1..=10)
        .filter(|t| (t + wire_offset) % u64::from(modulo) == 0)
        .collect();
    let Packet::IntroductionRequest(IntroductionRequest {
        sync: Some(sync), ..
    }) = decoded
    else {
        panic!("an introduction-request with sync");
    };
    let range = Range {
        low: 1,
        high: 10,
        modulo: sync.modulo,
        offset: sync.offset,
    };
    let by_node: Vec<u64> = (1..=10).filter(|&t| range.contains(t)).collect();
    assert_eq!(
        by_original, by_node,
        "the node covers what the original did"
    );
    put("intro.sync.covered_1_to_10", list(&by_original));

    // A signed community message, its packet hash, and a collection holding it.
    let message = CommunityMessage {
        community: test_community(),
        message_type: 1,
        conversion: Conversion::version(1).unwrap(),
        authors: vec![key.public().clone()],
        global_time: 5,
        sequence_number: None,
        resolution_index: None,
        relay_hops: None,
        payload: b"hi".to_vec(),
        authority: None,
    };
    let signed = SignedMessage::sign(message, &[&key]).unwrap();
    let descriptor = signed.message.descriptor();
    put("message.descriptor", hex(&descriptor));
    put("message.packet", hex(&signed.packet));
    let hash = PacketHash::of(&signed.packet);
    put("message.h0", u64_hex(hash.0));
    put("message.h1", u64_hex(hash.1));
    let collection = wire::encode_collection(7, &[&signed.packet]);
    put("collection.datagram", hex(&collection));
    let decoded = wire::decode(&collection, wire::DEFAULT_MAX_DATAGRAM, &()).unwrap();
    let Packet::Collection(c) = decoded else {
        panic!("a collection");
    };
    assert_eq!(c.session, 7);
    assert_eq!(c.messages, vec![signed]);
    out
}

#[test]
fn every_vector_in_the_document_is_what_the_node_computes() {
    let computed = computed();
    let documented = documented();
    let known: BTreeMap<&str, &str> = computed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in &documented {
        seen.insert(name.as_str());
        match known.get(name.as_str()) {
            None => problems.push(format!("{name}: in the document, not computed by the test")),
            Some(expected) if expected != value => problems.push(format!(
                "{name}: the document says {value}, the node computes {expected}"
            )),
            Some(_) => {}
        }
    }
    for (name, _) in &computed {
        if !seen.contains(name.as_str()) {
            problems.push(format!("{name}: computed, missing from the document"));
        }
    }
    if !problems.is_empty() {
        let lines: Vec<String> = computed.iter().map(|(n, v)| format!("{n} = {v}")).collect();
        panic!("{}\n\ncomputed:\n{}", problems.join("\n"), lines.join("\n"));
    }
}

#[test]
fn the_original_offset_converts_to_the_residue_and_back() {
    // Covered iff (t + offset) % modulo == 0, for every modulo and offset of a small range: the
    // node's decoded range covers exactly those global times.
    for modulo in 1u32..=7 {
        for wire_offset in 0..u64::from(modulo) {
            let mut sync = introduction_request(vec![0xff; 4]).sync.unwrap();
            sync.modulo = modulo;
            // Residue for this wire offset; the encoder turns it back into `wire_offset`.
            sync.offset = (u64::from(modulo) - wire_offset) % u64::from(modulo);
            let request = IntroductionRequest {
                sync: Some(sync),
                ..introduction_request(vec![])
            };
            let key = test_key();
            let datagram = Packet::IntroductionRequest(request.clone()).encode(&key);
            let outer =
                <dispersy_proto::Message as prost::Message>::decode(datagram.as_slice()).unwrap();
            let descriptor = <dispersy_proto::Descriptor as prost::Message>::decode(
                outer.descriptor.unwrap().as_slice(),
            )
            .unwrap();
            let Some(dispersy_proto::descriptor::Message::IntroductionRequest(m)) =
                descriptor.message
            else {
                panic!("an introduction-request");
            };
            assert_eq!(m.synchronization.unwrap().offset, Some(wire_offset));
            let range = Range {
                low: 1,
                high: 50,
                modulo,
                offset: request.sync.unwrap().offset,
            };
            for t in 1..=50u64 {
                assert_eq!(
                    range.contains(t),
                    (t + wire_offset) % u64::from(modulo) == 0,
                    "t {t} modulo {modulo} offset {wire_offset}"
                );
            }
        }
    }
}

#[test]
fn a_request_whose_synchronization_has_no_bloom_filter_is_answered_without_sync() {
    use prost::Message as _;
    let key = test_key();
    let mut keys = std::collections::HashMap::<MemberId, PublicKey>::new();
    keys.insert(key.member_id(), key.public().clone());
    let request = IntroductionRequest {
        sync: None,
        ..introduction_request(vec![])
    };
    // Our own encoding of "no sync" omits the synchronization; another peer may send one with
    // no (or an empty) bloom filter, as the original did: both mean no sync.
    let datagram = Packet::IntroductionRequest(request.clone()).encode(&key);
    let outer = dispersy_proto::Message::decode(datagram.as_slice()).unwrap();
    let descriptor =
        dispersy_proto::Descriptor::decode(outer.descriptor.unwrap().as_slice()).unwrap();
    let Some(dispersy_proto::descriptor::Message::IntroductionRequest(plain)) = descriptor.message
    else {
        panic!("an introduction-request");
    };
    assert!(plain.synchronization.is_none());
    for bloom in [None, Some(Vec::new())] {
        let mut m = plain.clone();
        m.synchronization = Some(dispersy_proto::introduction_request::Synchronization {
            low: Some(1),
            high: Some(0),
            bloomfilter: bloom,
            ..Default::default()
        });
        let descriptor = dispersy_proto::Descriptor {
            message: Some(dispersy_proto::descriptor::Message::IntroductionRequest(m)),
        };
        let bytes = descriptor.encode_to_vec();
        let datagram = dispersy_proto::Message {
            signatures: vec![key.sign(&bytes).to_vec()],
            descriptor: Some(bytes),
        }
        .encode_to_vec();
        assert_eq!(
            wire::decode(&datagram, wire::DEFAULT_MAX_DATAGRAM, &keys).unwrap(),
            Packet::IntroductionRequest(request.clone())
        );
    }
}
