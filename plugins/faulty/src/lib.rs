//! A test-only community that panics on demand, to prove that the host contains plugin panics:
//! the community reports the error and stops, the host and the other communities go on.
//!
//! Meta `boom` carries `{"stage": "check" | "handle" | "none"}`; receiving one panics in that
//! stage. `stage` = `encode` panics while the host converts the JSON payload.
//!
//! Hangs, to prove the host's deadlines: `stage` = `loop:FILE` makes the receiver's handler loop
//! (sleeping, so that it costs no CPU) until FILE exists (`loop:` alone: forever). While the file
//! named by the environment variable [`HANG_CREATE_ENV`] exists, `create()` loops the same way.

use dispersy_plugin_api::prelude::*;
use dispersy_plugin_api::serde_json::{Value, json};

/// The faulty community's master public key.
pub const MASTER_KEY: &str = "0238b3e66b0d61f04fe33400bc2bdb0a2ec5d376b5baee39f8875591fbe46ac1d8";

/// The environment variable naming a file: while it exists, `create()` hangs.
pub const HANG_CREATE_ENV: &str = "DISPERSY_FAULTY_HANG_CREATE";

/// Loops, sleeping, while `hang()` says so.
fn hang_while(hang: impl Fn() -> bool) {
    while hang() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Where to panic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boom {
    /// `check`, `handle`, `encode` or anything else (no panic).
    pub stage: String,
}

impl Payload for Boom {
    fn encode(&self, _conversion: &[u8]) -> Result<Vec<u8>, Error> {
        assert!(self.stage != "encode", "faulty plugin: panic in encode");
        Ok(Writer::new().short_bytes(self.stage.as_bytes())?.finish())
    }

    fn decode(_conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(bytes);
        let stage = String::from_utf8(reader.short_bytes()?.to_vec())
            .map_err(|_| Error::invalid("stage is not UTF-8"))?;
        reader.finish()?;
        Ok(Boom { stage })
    }
}

/// The faulty community.
pub struct FaultyCommunity {
    handled: u64,
}

impl FaultyCommunity {
    fn check_boom(&mut self, message: &Message<Boom>) -> Verdict {
        assert!(
            !(message.source.is_some() && message.payload.stage == "check"),
            "faulty plugin: panic in check"
        );
        Verdict::Accept
    }

    fn on_boom(&mut self, messages: Vec<Message<Boom>>) -> Result<(), Error> {
        for message in messages {
            assert!(
                !(message.source.is_some() && message.payload.stage == "handle"),
                "faulty plugin: panic in handle"
            );
            if message.source.is_some()
                && let Some(release) = message.payload.stage.strip_prefix("loop:")
            {
                let release = std::path::PathBuf::from(release);
                hang_while(|| release.as_os_str().is_empty() || !release.exists());
            }
            self.handled += 1;
        }
        Ok(())
    }
}

impl Community for FaultyCommunity {
    fn definition() -> Definition<Self> {
        Definition::new("faulty", env!("CARGO_PKG_VERSION"), MASTER_KEY)
            .conversion(&[1])
            .meta(
                Meta::<Self, Boom>::new(1, "boom")
                    .check(Self::check_boom)
                    .handle(Self::on_boom),
            )
    }

    fn create(_host: Host) -> Result<Self, Error> {
        if let Some(flag) = std::env::var_os(HANG_CREATE_ENV) {
            let flag = std::path::PathBuf::from(flag);
            hang_while(|| flag.exists());
        }
        Ok(FaultyCommunity { handled: 0 })
    }

    fn status(&self) -> Value {
        json!({ "handled": self.handled })
    }
}

export_community!(FaultyCommunity);
