//! A test-only plugin as it was built against dispersy-plugin-api 0.2.0: it depends on a frozen
//! copy of 0.2.0's raw ABI (`api-0.2.0/`, package `dispersy-plugin-api` version 0.2.0, so the
//! root module's version strings and every boundary type's layout say 0.2.0, as in a real 0.2.0
//! plugin), and it implements that ABI directly, without the SDK. The tests load it into the
//! current host to show what an old plugin gets (plugin-api CHANGELOG, 0.2.1): it loads, its
//! messages are created (through `payload_from_json`, as 0.2.0 has no `payload_from_json_in`),
//! stored, synchronised and handled, and it gets no history after a restart (0.2.0 has no
//! `restore`, `live` or `retire`).
//!
//! How faithful: the binary interface is 0.2.0's exactly (same source of the ABI module, same
//! package name and version, same module path, same abi_stable 0.11.3, and the library header
//! written as 0.2.0's `export_community!` wrote it). What differs from a plugin built with
//! 0.2.0's SDK is only plugin-side code the host never sees: the SDK's typed layer and its
//! panic containment at each entry point (this plugin does not panic: no unwrap, no indexing)
//! are replaced by the hand-written calls below. The compiler is today's, which the ABI does not
//! depend on (only `#[repr(C)]` types checked by abi_stable cross the boundary).
//!
//! The community: one full-sync meta `text` (id 1, public, signed by its author) whose payload,
//! conversion `[1]`, is the UTF-8 text (at most [`MAX_TEXT`] bytes; JSON `{"text": "..."}`).
//! The handler counts the messages it handled and keeps their texts; a text `send REST` that
//! this node created makes the plugin send `REST` itself through `HostApi::send` (the 0.2.0
//! host call). `status()` reports `{"handled", "texts", "sent"}`.

#![allow(non_local_definitions)] // the library header static, as 0.2.0's export macro wrote it
#![allow(missing_docs)] // that static has no doc

use dispersy_plugin_api::abi::{
    self, CommunityApi, CommunityApi_TO, CommunityBox, CommunityDef, HostBox, MetaDef, PluginError,
    PluginModule, PluginModuleRef, RawMessage, RawVerdict,
};
use dispersy_plugin_api::abi_stable::prefix_type::PrefixTypeTrait;
use dispersy_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use dispersy_plugin_api::abi_stable::std_types::{RErr, ROk, RResult, RSlice, RStr, RString, RVec};
use serde_json::{Value, json};

/// The master public key of the legacy community; the community id
/// (`3cf0736cf711d8f1bcf7e4dc38aa2c18408c974d`) is derived from it. Its secret key was thrown
/// away: the community never signs permissions.
pub const MASTER_KEY: &str = "02731ed8892444689856d1c3e0f1c5c74d6392ed93974f165c2011123fc981037c";

/// The community's id, derived from [`MASTER_KEY`].
pub const COMMUNITY_ID: &str = "3cf0736cf711d8f1bcf7e4dc38aa2c18408c974d";

/// The wire type of meta `text`.
pub const TEXT: u32 = 1;

/// The community's only conversion.
pub const CONVERSION: u8 = 1;

/// Largest text, in UTF-8 bytes.
pub const MAX_TEXT: usize = 255;

/// Most texts the status keeps (the newest); the count goes on.
pub const KEPT_TEXTS: usize = 64;

/// What `send REST` starts with.
const SEND_PREFIX: &str = "send ";

/// The ABI version this plugin was built with (0.2.0's `ABI_VERSION`).
extern "C" fn abi_version() -> u32 {
    abi::ABI_VERSION
}

/// The community's definition: one full-sync meta of texts.
extern "C" fn definition() -> RResult<CommunityDef, PluginError> {
    let Some(master_key) = decode_hex(MASTER_KEY) else {
        return RErr(PluginError::new(abi::ERROR_INTERNAL, "bad master key"));
    };
    ROk(CommunityDef {
        name: RString::from("legacy"),
        version: RString::from(env!("CARGO_PKG_VERSION")),
        master_key: RVec::from(master_key),
        conversions: RVec::from(vec![RVec::from(vec![CONVERSION])]),
        metas: RVec::from(vec![MetaDef {
            id: TEXT,
            name: RString::from("text"),
            authentication: abi::authentication::MEMBER,
            resolution: abi::resolution::PUBLIC,
            dynamic_policies: RVec::new(),
            distribution: abi::distribution::FULL_SYNC,
            sequence_numbers: false,
            history: 0,
            order: abi::order::ASCENDING,
            prune_inactive: 0,
            prune_remove: 0,
            destination: abi::destination::COMMUNITY,
            node_count: 10,
            priority: 128,
            batch_window_ms: 0,
        }]),
    })
}

/// A new instance, talking to the host through `host`.
extern "C" fn create(host: HostBox) -> RResult<CommunityBox, PluginError> {
    let instance = Legacy {
        host,
        handled: 0,
        texts: Vec::new(),
        sent: 0,
    };
    ROk(CommunityApi_TO::from_value(instance, TD_Opaque))
}

/// The root module, as 0.2.0's `sdk::module` built it.
fn module() -> PluginModuleRef {
    PluginModule {
        abi_version,
        definition,
        create,
    }
    .leak_into_prefix()
}

/// The library header the host looks up: what 0.2.0's `export_community!` expanded to, with
/// `module()` in place of its `sdk::module::<C>`.
#[unsafe(no_mangle)]
pub static _1as_0lib_1header_0root_bmodule_bloader:
    dispersy_plugin_api::abi_stable::library::LibHeader = {
    extern "C" fn erased_module() -> dispersy_plugin_api::abi_stable::library::RootModuleResult {
        dispersy_plugin_api::abi_stable::library::__call_root_module_loader(module)
    }
    unsafe {
        dispersy_plugin_api::abi_stable::library::LibHeader::from_constructor::<PluginModuleRef>(
            erased_module,
            dispersy_plugin_api::abi_stable::library::CheckTypeLayout::Yes,
        )
    }
};

/// One instance of the community.
struct Legacy {
    host: HostBox,
    /// Messages handled by this instance.
    handled: u64,
    /// Their texts, the newest [`KEPT_TEXTS`].
    texts: Vec<String>,
    /// Messages this instance sent through `HostApi::send`.
    sent: u64,
}

impl CommunityApi for Legacy {
    fn check(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<RVec<RawVerdict>, PluginError> {
        ROk(batch.iter().map(verdict).collect())
    }

    fn handle(&mut self, batch: RSlice<'_, RawMessage>) -> RResult<(), PluginError> {
        for message in batch.iter() {
            let Ok(text) = decode(message.meta, &message.payload) else {
                continue;
            };
            self.handled += 1;
            if message.source.is_empty()
                && let Some(rest) = text.strip_prefix(SEND_PREFIX)
            {
                let sent =
                    self.host
                        .send(RStr::from("text"), RVec::from(rest.as_bytes()), RVec::new());
                if let RErr(error) = sent {
                    return RErr(error);
                }
                self.sent += 1;
            }
            if self.texts.len() == KEPT_TEXTS {
                self.texts.remove(0);
            }
            self.texts.push(text.to_owned());
        }
        ROk(())
    }

    fn timer(&mut self, _token: u64) -> RResult<(), PluginError> {
        ROk(())
    }

    fn payload_to_json(
        &self,
        meta: u32,
        conversion: RSlice<'_, u8>,
        payload: RSlice<'_, u8>,
    ) -> RResult<RString, PluginError> {
        if conversion.as_slice() != [CONVERSION] {
            return RErr(invalid("unknown conversion"));
        }
        match decode(meta, &payload) {
            Ok(text) => ROk(RString::from(json!({ "text": text }).to_string())),
            Err(error) => RErr(error),
        }
    }

    fn payload_from_json(&self, meta: u32, json: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        if meta != TEXT {
            return RErr(invalid("unknown meta"));
        }
        let Ok(value) = serde_json::from_str::<Value>(json.as_str()) else {
            return RErr(invalid("not JSON"));
        };
        let Some(text) = value.get("text").and_then(Value::as_str) else {
            return RErr(invalid("expected {\"text\": string}"));
        };
        if text.len() > MAX_TEXT {
            return RErr(invalid("text too long"));
        }
        ROk(RVec::from(text.as_bytes()))
    }

    fn status(&self) -> RResult<RString, PluginError> {
        let status = json!({
            "handled": self.handled,
            "texts": self.texts,
            "sent": self.sent,
        });
        ROk(RString::from(status.to_string()))
    }
}

/// The verdict on one message: accepted when it decodes.
fn verdict(message: &RawMessage) -> RawVerdict {
    let (kind, reason) = match decode(message.meta, &message.payload) {
        Ok(_) => (abi::verdict::ACCEPT, RString::new()),
        Err(error) => (abi::verdict::DROP, error.message),
    };
    RawVerdict {
        kind,
        reason,
        delay_ms: 0,
        member: RVec::new(),
        global_time: 0,
        meta: 0,
    }
}

/// The text of a payload of meta `meta` (conversion 1: the UTF-8 bytes).
fn decode(meta: u32, payload: &[u8]) -> Result<&str, PluginError> {
    if meta != TEXT {
        return Err(invalid("unknown meta"));
    }
    if payload.len() > MAX_TEXT {
        return Err(invalid("text too long"));
    }
    std::str::from_utf8(payload).map_err(|_| invalid("text is not UTF-8"))
}

fn invalid(message: &str) -> PluginError {
    PluginError::new(abi::ERROR_INVALID, message)
}

/// The bytes of an even-length lowercase or uppercase hex string.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let high = char::from(*pair.first()?).to_digit(16)?;
            let low = char::from(*pair.get(1)?).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}
