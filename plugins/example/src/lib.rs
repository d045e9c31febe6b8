//! The example community of the Dispersy documentation, written as the template a third party
//! copies to start a new community type (the README's "Write your own community" walks through
//! it).
//!
//! Its two meta-messages carry the same payload, [`Example`]: a text of at most 255 UTF-8 bytes
//! and an amount.
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

/// Largest text, in UTF-8 bytes (the documentation's limit).
pub const MAX_TEXT: usize = 255;

/// How many direct messages the duplicate counter remembers. Everything a plugin keeps about
/// what peers send must be bounded: peers can send without end.
const REMEMBERED: usize = 100_000;

/// The payload of both metas. Serde gives its JSON form in the control API:
/// `{"text": "hello", "amount": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Up to [`MAX_TEXT`] UTF-8 bytes.
    pub text: String,
    /// Any 64-bit amount (the checks drop negative ones).
    pub amount: i64,
}

/// The binary form, per conversion. Conversion 1: a one-byte length, the UTF-8 text, the amount
/// as 8 bytes big-endian. To change the layout later, add conversion 2 in front
/// (`.conversion(&[2]).conversion(&[1])`): new messages are written with 2, messages written with
/// 1 still decode.
impl Payload for Example {
    fn encode(&self, conversion: &[u8]) -> Result<Vec<u8>, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        if self.text.len() > MAX_TEXT {
            return Err(Error::invalid(format!(
                "text is {} bytes, at most {MAX_TEXT}",
                self.text.len()
            )));
        }
        Ok(Writer::new()
            .short_bytes(self.text.as_bytes())?
            .i64(self.amount)
            .finish())
    }

    // Bytes come from the network: every failure is an error, never a panic.
    fn decode(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        let mut reader = Reader::new(bytes);
        let text = std::str::from_utf8(reader.short_bytes()?)
            .map_err(|_| Error::invalid("text is not UTF-8"))?
            .to_owned();
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

    /// Handles a batch of stored posts (the store already dropped copies it holds).
    fn on_post(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.posts += messages.len() as u64;
        Ok(())
    }
}

impl Community for ExampleCommunity {
    fn definition() -> Definition<Self> {
        Definition::new("example", env!("CARGO_PKG_VERSION"), MASTER_KEY)
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
        })
    }
}

export_community!(ExampleCommunity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips_and_rejects_bad_input() {
        let example = Example {
            text: "héllo".into(),
            amount: -42,
        };
        let bytes = example.encode(&[1]).unwrap();
        assert_eq!(Example::decode(&[1], &bytes).unwrap(), example);
        assert!(Example::decode(&[2], &bytes).is_err());
        for len in 0..bytes.len() {
            assert!(Example::decode(&[1], &bytes[..len]).is_err());
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Example::decode(&[1], &trailing).is_err());
        let long = Example {
            text: "x".repeat(MAX_TEXT + 1),
            amount: 1,
        };
        assert!(long.encode(&[1]).is_err());
        let bad_utf8 = Writer::new().short_bytes(&[0xff]).unwrap().i64(1).finish();
        assert!(Example::decode(&[1], &bad_utf8).is_err());
    }
}
