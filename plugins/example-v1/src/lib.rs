//! Test-only: the example community (`plugins/example`) as its first release wrote it. Same name,
//! master key and metas, but its payload is written and read **only in conversion 1** (the
//! hand-written codec: a one-byte length, the UTF-8 text, the amount as 8 bytes big-endian). A
//! node running it stands for a node not yet upgraded in a mixed network: it must keep reading
//! what upgraded nodes send in conversion 1, and drops (and shows as `unreadable`) what they can
//! only send in conversion 2.

use dispersy_plugin_api::prelude::*;
use dispersy_plugin_api::serde_json::{Value, json};

/// The example community's master key (`plugins/example`).
pub const MASTER_KEY: &str = "03d803ecf0f109b86394dbb34d309e55ebb421084d28352674bdb2b9470ff1ea95";

/// The payload of both metas, as the first release had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Up to 255 UTF-8 bytes.
    pub text: String,
    /// Any 64-bit amount.
    pub amount: i64,
}

impl Payload for Example {
    fn encode(&self, conversion: &[u8]) -> Result<Vec<u8>, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        Ok(Writer::new()
            .short_str(&self.text)?
            .i64(self.amount)
            .finish())
    }

    fn decode(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
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

/// One instance: counts what it handles.
pub struct ExampleV1 {
    /// `example` messages received from other nodes.
    received: u64,
    /// The text of the last `example` message received.
    last_text: Option<String>,
    /// Posts handled, ours and others'.
    posts: u64,
}

impl ExampleV1 {
    fn on_example(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        for message in messages.into_iter().filter(|m| m.source.is_some()) {
            self.received += 1;
            self.last_text = Some(message.payload.text);
        }
        Ok(())
    }

    fn on_post(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.posts += messages.len() as u64;
        Ok(())
    }
}

impl Community for ExampleV1 {
    fn definition() -> Definition<Self> {
        Definition::new("example", "0.0.1", MASTER_KEY)
            .conversion(&[1])
            .meta(
                Meta::<Self, Example>::new(1, "example")
                    .distribution(Distribution::Direct)
                    .destination(Destination::Community { node_count: 10 })
                    .priority(128)
                    .handle(Self::on_example),
            )
            .meta(
                Meta::<Self, Example>::new(2, "post")
                    .distribution(Distribution::FullSync {
                        sequence_numbers: false,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .handle(Self::on_post),
            )
    }

    fn create(_host: Host) -> Result<Self, Error> {
        Ok(ExampleV1 {
            received: 0,
            last_text: None,
            posts: 0,
        })
    }

    fn status(&self) -> Value {
        json!({"received": self.received, "last_text": self.last_text, "posts": self.posts})
    }
}

export_community!(ExampleV1);
