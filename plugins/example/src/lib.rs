//! The example community of the Dispersy documentation, written as the template a third party
//! copies to start a new community type (the README's "Write your own community" walks through
//! it).
//!
//! Its two meta-messages carry the same payload, [`Example`]: a text of at most 1024 UTF-8
//! bytes and an amount.
//!
//! - `example` is **direct**: signed by its author, sent once to up to 10 random verified
//!   candidates of the community, never stored. Whoever is not reachable at that moment never
//!   sees it.
//! - `post` is **full-sync**: every node stores it, and the bloom-filter synchronisation brings it
//!   to nodes that join later.
//!
//! Both checks drop negative amounts, received or created here (a message created here is checked
//! before it is sent); the handlers count what arrives. The counters are the
//! community's status, which the control API shows (`GET /v1/communities`, `plugin.status`) and
//! `dispersy demo` reads.

use std::collections::HashSet;

use dispersy_plugin_api::prelude::*;
use dispersy_plugin_api::serde_json::{Value, json};

/// The master public key of the example community; the community id
/// (`e5901df2bfc4bc84bdbe490d5690273cf96491f1`) is derived from it. Make your own with
/// `dispersy keygen --out master.key` and keep the secret key safe: it signs the community's
/// permissions.
pub const MASTER_KEY: &str = "03d803ecf0f109b86394dbb34d309e55ebb421084d28352674bdb2b9470ff1ea95";

/// Largest text, in UTF-8 bytes. The first release (conversion 1) carried at most 255; this
/// one writes longer texts in conversion 2.
pub const MAX_TEXT: usize = 1024;

/// Largest text conversion 1 carries (its one-byte length).
pub const MAX_TEXT_V1: usize = 255;

/// How many direct messages the duplicate counter remembers. Everything a plugin keeps about
/// what peers send must be bounded: peers can send without end.
const REMEMBERED: usize = 100_000;

/// The payload of both metas. One serde definition gives both forms: its binary conversion
/// (derived, [`Compact`]) and its JSON form in the control API: `{"text": "hello", "amount": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Up to [`MAX_TEXT`] UTF-8 bytes.
    pub text: String,
    /// Any 64-bit amount (the checks drop negative ones).
    pub amount: i64,
}

/// The binary form, per conversion.
///
/// - Conversion 2 (current): derived from the serde definition (postcard; see [`Compact`]),
///   texts up to [`MAX_TEXT`] bytes.
/// - Conversion 1 (the first release): written by hand, a one-byte length, the UTF-8 text (at
///   most [`MAX_TEXT_V1`] bytes), the amount as 8 bytes big-endian. Still read, so messages of
///   nodes running the first release, and the ones stored before the upgrade, decode; and still
///   **written** for every payload it carries (a text of up to 255 bytes): the SDK writes each
///   new message in the oldest conversion that reads back unchanged, so nodes still running the
///   first release keep reading everything they can. Only longer texts go out in conversion 2,
///   which those nodes drop (and show in their API as `unreadable`).
///
/// To change the payload again, add conversion 3 in front in the definition, list it here,
/// write and read conversion 2 in `encode_other` and `decode_other` through a copy of today's
/// type.
impl Compact for Example {
    const CONVERSIONS: &'static [&'static [u8]] = &[&[2]];

    fn validate(&self) -> Result<(), Error> {
        if self.text.len() > MAX_TEXT {
            return Err(Error::invalid(format!(
                "text is {} bytes, at most {MAX_TEXT}",
                self.text.len()
            )));
        }
        Ok(())
    }

    fn encode_other(&self, conversion: &[u8]) -> Result<Vec<u8>, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        // `short_str` refuses a text longer than 255 bytes: conversion 2 is used instead.
        Ok(Writer::new()
            .short_str(&self.text)?
            .i64(self.amount)
            .finish())
    }

    // Bytes come from the network: every failure is an error, never a panic.
    fn decode_other(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        let mut reader = Reader::new(bytes);
        let text = reader.short_str()?.to_owned();
        let amount = reader.i64()?;
        reader.finish()?;
        Ok(Example { text, amount })
    }
}

/// One instance of the example community in a host: what its status shows.
pub struct ExampleCommunity {
    host: Host,
    /// `example` messages received from other nodes.
    received: u64,
    /// `example` messages received a second time (same author and global time).
    duplicates: u64,
    /// (author, global time) of the `example` messages received, up to [`REMEMBERED`].
    seen: HashSet<(Vec<u8>, u64)>,
    /// The text of the last `example` message received.
    last_text: Option<String>,
    /// Posts handled, ours and others'.
    posts: u64,
}

impl ExampleCommunity {
    /// The check of both metas: every message passes it before it is stored or handled, those
    /// received from the network and those this node creates (through the API or
    /// `Host::send`), which are checked before they are sent: a negative amount created here is
    /// refused (the API answers 422 with this reason) and never leaves the node.
    fn check(&mut self, message: &Message<Example>) -> Verdict {
        if message.payload.amount < 0 {
            return Verdict::Drop("amount must not be negative".into());
        }
        Verdict::Accept
    }

    /// Handles a batch of `example` messages that passed the check.
    fn on_example(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        for message in messages {
            // The host hands this node's own messages over too (`source` is `None`).
            let Some(source) = &message.source else {
                continue;
            };
            let key = (message.authors.concat(), message.global_time);
            if self.seen.contains(&key) {
                self.duplicates += 1;
            } else if self.seen.len() < REMEMBERED {
                self.seen.insert(key);
            }
            self.received += 1;
            self.host.log(
                Level::Debug,
                format!("example from {source}: {:?}", message.payload.text),
            );
            self.last_text = Some(message.payload.text);
        }
        Ok(())
    }

    /// Handles a batch of stored posts (the store already dropped copies it holds). It is also
    /// the meta's restore function (the default): after a restart the host gives it the stored
    /// posts again, oldest first, so `posts` survives restarts.
    fn on_post(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.posts += messages.len() as u64;
        Ok(())
    }
}

impl Community for ExampleCommunity {
    fn definition() -> Definition<Self> {
        Definition::new("example", env!("CARGO_PKG_VERSION"), MASTER_KEY)
            // New messages are written with conversion 2; conversion 1 is still read.
            .conversion(&[2])
            .conversion(&[1])
            .meta(
                Meta::<Self, Example>::new(1, "example")
                    .authentication(Authentication::Member)
                    .resolution(Resolution::Public)
                    .distribution(Distribution::Direct)
                    .destination(Destination::Community { node_count: 10 })
                    .priority(128)
                    .check(Self::check)
                    .handle(Self::on_example),
            )
            .meta(
                // Member-authenticated and public, like every meta unless told otherwise.
                Meta::<Self, Example>::new(2, "post")
                    .distribution(Distribution::FullSync {
                        sequence_numbers: false,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .check(Self::check)
                    .handle(Self::on_post),
            )
    }

    fn create(host: Host) -> Result<Self, Error> {
        host.log(Level::Info, "example community started");
        Ok(ExampleCommunity {
            host,
            received: 0,
            duplicates: 0,
            seen: HashSet::new(),
            last_text: None,
            posts: 0,
        })
    }

    fn status(&self) -> Value {
        json!({
            "received": self.received,
            "duplicates": self.duplicates,
            "last_text": self.last_text,
            "posts": self.posts,
            // The plugin build's version: after a live upgrade, the new code answers.
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

export_community!(ExampleCommunity);

#[cfg(test)]
mod tests {
    use super::*;
    use dispersy_plugin_api::testing::{TestHost, member_key};

    fn example(text: &str, amount: i64) -> Example {
        Example {
            text: text.into(),
            amount,
        }
    }

    #[test]
    fn conversions_round_trip_and_reject_bad_input() {
        let value = example("héllo", -42);
        let bytes = value.encode(&[2]).unwrap();
        assert_eq!(Example::decode(&[2], &bytes).unwrap(), value);
        assert!(Example::decode(&[3], &bytes).is_err());
        for len in 0..bytes.len() {
            assert!(Example::decode(&[2], &bytes[..len]).is_err());
        }
        // Conversion 1, as the first release wrote it, still decodes.
        let old = Writer::new().short_str("héllo").unwrap().i64(-42).finish();
        assert_eq!(Example::decode(&[1], &old).unwrap(), value);
        for len in 0..old.len() {
            assert!(Example::decode(&[1], &old[..len]).is_err());
        }
        let mut trailing = old.clone();
        trailing.push(0);
        assert!(Example::decode(&[1], &trailing).is_err());
        let bad_utf8 = Writer::new().short_bytes(&[0xff]).unwrap().i64(1).finish();
        assert!(Example::decode(&[1], &bad_utf8).is_err());
        // New messages: conversion 1 while it carries the text, conversion 2 beyond.
        let conversions = [vec![2], vec![1]];
        assert_eq!(value.encode_oldest(&conversions).unwrap(), (vec![1], old));
        let long = example(&"é".repeat(MAX_TEXT_V1 / 2 + 1), 1);
        let (conversion, bytes) = long.encode_oldest(&conversions).unwrap();
        assert_eq!(conversion, [2]);
        assert_eq!(Example::decode(&[2], &bytes).unwrap(), long);
        // The text limit holds on both sides.
        let long = example(&"x".repeat(MAX_TEXT + 1), 1);
        assert!(long.encode(&[2]).is_err());
        let long_bytes = dispersy_plugin_api::sdk::to_compact(&long).unwrap();
        assert!(Example::decode(&[2], &long_bytes).is_err());
    }

    #[test]
    fn checks_handlers_and_status_on_a_host_double() {
        let mut host = TestHost::<ExampleCommunity>::new().unwrap();
        let peer = member_key(1);
        for (global_time, text) in [(1, "one"), (2, "two")] {
            let message = host
                .message("example", &peer, global_time, example(text, 1))
                .unwrap();
            assert_eq!(host.receive(message).unwrap(), Verdict::Accept);
        }
        // The same message again is counted as a duplicate.
        let again = host
            .message("example", &peer, 2, example("two", 1))
            .unwrap();
        host.receive(again).unwrap();
        let negative = host.message("post", &peer, 3, example("no", -1)).unwrap();
        assert!(matches!(host.receive(negative).unwrap(), Verdict::Drop(_)));
        let post = host.message("post", &peer, 4, example("yes", 5)).unwrap();
        assert_eq!(host.receive(post).unwrap(), Verdict::Accept);
        assert_eq!(
            host.status().unwrap(),
            json!({"received": 3, "duplicates": 1, "last_text": "two", "posts": 1,
                   "version": env!("CARGO_PKG_VERSION")})
        );
        assert_eq!(host.logs().len(), 4); // started, and one line per example received
        assert_eq!(
            host.to_json("post", &example("hi", 3)).unwrap(),
            json!({"text": "hi", "amount": 3})
        );
    }
}
