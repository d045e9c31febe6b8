//! Google's own protobuf tooling agrees with our wire format: `protoc --decode` parses the
//! datagrams the node really sends with `proto/protos/dispersy.proto` (every field known, every
//! value as sent, and `protoc --encode` of its text gives back the same bytes), and a datagram
//! written by hand in text format and encoded by `protoc` is accepted by prost and by
//! `wire::decode`.
//!
//! Needs the `protoc` binary (Debian: `apt-get install protobuf-compiler`). Without it these
//! tests fail, unless `DISPERSY_SKIP_PROTOC=1` is set.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::{Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};

use dispersy_core::identity::{CommunityId, KeyPair};
use dispersy_core::wire::{
    self, Collection, CommunityMessage, ConnectionType, Conversion, IntroductionRequest, Packet,
    SignedMessage, Synchronization,
};
use dispersy_proto as pb;
use prost::Message as _;

const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/protos");

/// Whether `protoc` can run. Panics when it is missing, unless `DISPERSY_SKIP_PROTOC=1`.
fn protoc_available() -> bool {
    match Command::new("protoc").arg("--version").output() {
        Ok(output) if output.status.success() => true,
        result => {
            if std::env::var("DISPERSY_SKIP_PROTOC").as_deref() == Ok("1") {
                eprintln!("SKIPPED: `protoc` not runnable and DISPERSY_SKIP_PROTOC=1 ({result:?})");
                return false;
            }
            panic!(
                "`protoc` is not runnable ({result:?}). These tests check our packets with \
                 Google's protobuf compiler: install it (Debian/Ubuntu: `apt-get install -y \
                 protobuf-compiler`), or set DISPERSY_SKIP_PROTOC=1 to skip them"
            );
        }
    }
}

/// Runs `protoc <mode> dispersy.proto` with `input` on stdin and returns its stdout.
fn protoc(mode: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("protoc")
        .arg(format!("--proto_path={PROTO_DIR}"))
        .arg(mode)
        .arg("dispersy.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // This test drives a protoc process, not the core: a writer thread feeds its stdin.
    #[allow(clippy::disallowed_methods)]
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "protoc {mode} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `protoc --decode` of `bytes` as `dispersy.<message>`, checked to hold no unknown fields
/// (protoc prints those by number), and to encode back to exactly `bytes`.
fn decode_text(message: &str, bytes: &[u8]) -> String {
    let text = String::from_utf8(protoc(&format!("--decode=dispersy.{message}"), bytes)).unwrap();
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with(|c: char| c.is_ascii_digit()),
            "field unknown to the schema in {message}: {line:?}\n{text}"
        );
    }
    let again = protoc(&format!("--encode=dispersy.{message}"), text.as_bytes());
    assert_eq!(
        again, bytes,
        "protoc re-encodes {message} differently:\n{text}"
    );
    text
}

/// Asserts that every `expected` line occurs in `text` (indentation ignored).
fn assert_lines(text: &str, expected: &[String]) {
    for line in expected {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "line {line:?} not in protoc output:\n{text}"
        );
    }
}

/// The number of lines of `text` equal to `line` (indentation ignored).
fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| l.trim() == line).count()
}

/// Bytes as protoc's text format prints them (C escapes, octal for non-printables).
fn c_escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7E => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
}

fn bytes_line(field: &str, bytes: &[u8]) -> String {
    format!("{field}: \"{}\"", c_escape(bytes))
}

fn key() -> KeyPair {
    KeyPair::from_secret(&[0x11; 32]).unwrap()
}

/// The test member's key, as a node that met it knows it (walker messages name members by id).
fn known_keys()
-> std::collections::HashMap<dispersy_core::identity::MemberId, dispersy_core::identity::PublicKey>
{
    std::collections::HashMap::from([(key().member_id(), key().public().clone())])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ipv6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

#[test]
fn sent_introduction_request_parses_with_protoc() {
    if !protoc_available() {
        return;
    }
    let key = key();
    let community = CommunityId([0xAB; 20]);
    let packet = Packet::IntroductionRequest(IntroductionRequest {
        community,
        member: key.public().clone(),
        session: 5,
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
            bloom: vec![0x55; 64],
        }),
    });
    let datagram = packet.encode(&key);
    assert_eq!(
        wire::decode(&datagram, wire::DEFAULT_MAX_DATAGRAM, &known_keys()).unwrap(),
        packet
    );

    let envelope = pb::Message::decode(datagram.as_slice()).unwrap();
    let descriptor = envelope.descriptor.unwrap();
    let text = decode_text("Message", &datagram);
    assert!(text.contains("descriptor: "), "{text}");
    assert_eq!(envelope.signatures.len(), 1);
    assert_lines(
        &text,
        &[
            bytes_line("descriptor", &descriptor),
            bytes_line("signatures", &envelope.signatures[0]),
        ],
    );

    let text = decode_text("Descriptor", &descriptor);
    assert_lines(
        &text,
        &[
            "introduction_request {".into(),
            "session: 5".into(),
            "walk: 48879".into(),
            bytes_line("community", &community.0),
            "global_time: 12".into(),
            "destination {".into(),
            format!("ipv4_host: {}", 0x0A00_0002_u32),
            "ipv4_port: 7000".into(),
            "sources {".into(),
            format!("ipv4_host: {}", 0xC0A8_0105_u32),
            "ipv4_port: 6000".into(),
            bytes_line("ipv6_host", &ipv6("2001:db8::1")),
            "ipv4_port: 6001".into(),
            "random: 77".into(),
            bytes_line("member", &key.member_id().0),
            "synchronization {".into(),
            "low: 1".into(),
            "high: 100".into(),
            "modulo: 3".into(),
            "offset: 1".into(), // the residue 2 of 3 as the original's offset: (t + 1) % 3 == 0
            bytes_line("bloomfilter", &[0x55; 64]),
            "functions: 6".into(),
            "prefix: 9".into(),
            "connection_type: public".into(),
            "advice: true".into(),
        ],
    );
    assert_eq!(count_lines(&text, "sources {"), 2, "{text}");
}

fn community_message(key: &KeyPair, global_time: u64, relay_hops: Option<u32>) -> SignedMessage {
    SignedMessage::sign(
        CommunityMessage {
            community: CommunityId([0x5C; 20]),
            message_type: 7,
            conversion: Conversion::version(1).unwrap(),
            authors: vec![key.public().clone()],
            global_time,
            sequence_number: Some(3),
            resolution_index: None,
            relay_hops,
            payload: b"hello, protoc".to_vec(),
            authority: None,
        },
        &[key],
    )
    .unwrap()
}

#[test]
fn sent_collection_parses_with_protoc() {
    if !protoc_available() {
        return;
    }
    let key = key();
    let messages = vec![
        community_message(&key, 5, None),
        community_message(&key, 6, Some(2)),
    ];
    let packet = Packet::Collection(Collection {
        session: 9,
        messages: messages.clone(),
        relay_hops: None,
    });
    let datagram = packet.encode(&key);
    assert_eq!(
        wire::decode(&datagram, wire::DEFAULT_MAX_DATAGRAM, &known_keys()).unwrap(),
        packet
    );

    let text = decode_text("Message", &datagram);
    assert!(text.contains("descriptor: "), "{text}");
    assert!(
        !text.contains("signatures: "),
        "a collection is not signed:\n{text}"
    );

    let descriptor = pb::Message::decode(datagram.as_slice())
        .unwrap()
        .descriptor
        .unwrap();
    let text = decode_text("Descriptor", &descriptor);
    assert_lines(&text, &["collection {".into(), "session: 9".into()]);
    assert_eq!(count_lines(&text, "messages {"), 2, "{text}");
    for message in &messages {
        // Each stored packet appears verbatim: its descriptor and its signature.
        let inner = pb::Message::decode(message.packet.as_slice()).unwrap();
        let inner_descriptor = inner.descriptor.unwrap();
        assert_lines(
            &text,
            &[
                bytes_line("descriptor", &inner_descriptor),
                bytes_line("signatures", &inner.signatures[0]),
            ],
        );
        decode_text("Message", &message.packet);

        let text = decode_text("Descriptor", &inner_descriptor);
        let mut expected = vec![
            "community {".to_string(),
            bytes_line("community", &[0x5C; 20]),
            "message_type: 7".into(),
            bytes_line("conversion", &[1]),
            bytes_line("members", key.public().as_bytes()),
            format!("global_time: {}", message.message.global_time),
            "sequence_number: 3".into(),
            "payload: \"hello, protoc\"".into(),
        ];
        if let Some(hops) = message.message.relay_hops {
            expected.push(format!("relay_hops: {hops}"));
        }
        assert_lines(&text, &expected);
        assert!(!text.contains("resolution_index"), "{text}");
    }
}

#[test]
fn protoc_encoded_introduction_request_decodes_with_prost_and_wire() {
    if !protoc_available() {
        return;
    }
    let key = key();
    let member = c_escape(&key.member_id().0);
    let text = format!(
        r#"introduction_request {{
  session: 3
  walk: 4242
  community: "\000\001\002\003\004\005\006\007\010\011\012\013\014\015\016\017\020\021\022\023"
  global_time: 99
  destination {{ ipv4_host: 167772162 ipv4_port: 7000 }}
  sources {{ ipv4_host: 3232235781 ipv4_port: 6000 }}
  sources {{ ipv6_host: " \001\r\270\000\000\000\000\000\000\000\000\000\000\000\001" ipv4_port: 6001 }}
  random: 77
  member: "{member}"
  synchronization {{
    low: 5
    high: 10
    modulo: 2
    offset: 1
    bloomfilter: "UUUU"
    functions: 3
    prefix: 4
  }}
  connection_type: symmetric_NAT
  advice: false
}}
"#
    );
    let descriptor = protoc("--encode=dispersy.Descriptor", text.as_bytes());
    let community: Vec<u8> = (0..20).collect();
    let v4 = |host: u32, port: u32| pb::Address {
        ipv4_host: Some(host),
        ipv4_port: Some(port),
        ..Default::default()
    };
    let expected = pb::Descriptor {
        message: Some(pb::descriptor::Message::IntroductionRequest(
            pb::IntroductionRequest {
                session: Some(3),
                walk: Some(4242),
                community: Some(community.clone()),
                global_time: Some(99),
                destination: Some(v4(0x0A00_0002, 7000)),
                sources: vec![
                    v4(0xC0A8_0105, 6000),
                    pb::Address {
                        ipv4_port: Some(6001),
                        ipv6_host: Some(ipv6("2001:db8::1").to_vec()),
                        ..Default::default()
                    },
                ],
                random: Some(77),
                member: Some(key.member_id().0.to_vec()),
                synchronization: Some(pb::introduction_request::Synchronization {
                    low: Some(5),
                    high: Some(10),
                    modulo: Some(2),
                    offset: Some(1),
                    bloomfilter: Some(b"UUUU".to_vec()),
                    functions: Some(3),
                    prefix: Some(4),
                }),
                connection_type: Some(pb::ConnectionType::SymmetricNat.into()),
                advice: Some(false),
            },
        )),
    };
    assert_eq!(
        pb::Descriptor::decode(descriptor.as_slice()).unwrap(),
        expected
    );

    // Sign protoc's descriptor bytes and let protoc build the whole datagram too.
    let signature = key.sign(&descriptor);
    let envelope = format!(
        "{}\n{}\n",
        bytes_line("descriptor", &descriptor),
        bytes_line("signatures", &signature)
    );
    let datagram = protoc("--encode=dispersy.Message", envelope.as_bytes());
    let packet = Packet::IntroductionRequest(IntroductionRequest {
        community: CommunityId::from_slice(&community).unwrap(),
        member: key.public().clone(),
        session: 3,
        walk: 4242,
        random: 77,
        global_time: 99,
        destination: addr("10.0.0.2:7000"),
        source_lan: addr("192.168.1.5:6000"),
        source_wan: addr("[2001:db8::1]:6001"),
        connection_type: ConnectionType::SymmetricNat,
        advice: false,
        sync: Some(Synchronization {
            low: 5,
            high: 10,
            modulo: 2,
            offset: 1,
            functions: 3,
            prefix: 4,
            bloom: b"UUUU".to_vec(),
        }),
    });
    assert_eq!(
        wire::decode(&datagram, wire::DEFAULT_MAX_DATAGRAM, &known_keys()).unwrap(),
        packet
    );
    // Our encoder writes the same fields in the same order: the bytes are identical.
    assert_eq!(packet.encode(&key), datagram);
}
