//! The other direction of plugin-api 0.2.1's compatibility claim: a plugin built against 0.2.1
//! (`plugins/probe`) driven through 0.2.0's raw ABI (the frozen `plugins/legacy/api-0.2.0`, the
//! one this crate is built against), as a 0.2.0 host would: abi_stable's check at load, the
//! definition, an instance on a 0.2.0 `HostApi`, JSON conversions, a handler that sends (0.2.0's
//! `send`) and one that reads the store (`read`, absent from a 0.2.0 host: an error); `live` is
//! never called (a 0.2.0 host has no lifecycle). This is the 0.2.0 ABI's loader and host trait,
//! not a 0.2.0 host build (no node, no network).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dispersy_plugin_api::abi::{
    self, CandidateInfo, CommunityBox, HostApi, HostApi_TO, PluginError, PluginModuleRef,
    RawMessage,
};
use dispersy_plugin_api::abi_stable::library::lib_header_from_path;
use dispersy_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use dispersy_plugin_api::abi_stable::std_types::{ROk, RResult, RSlice, RStr, RString, RVec};
use serde_json::{Value, json};

/// The probe's meta `post`.
const POST: u32 = 2;
/// The probe's meta `entry`.
const ENTRY: u32 = 4;

/// Path of the built `libprobe_community.so` (built by `cargo test` through this crate's
/// dev-dependency).
fn probe_file() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!(
        "{}probe_community{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
        .expect("the probe plugin is built by `cargo test`")
}

/// What the plugin sent: meta name and payload.
type Sent = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// What a 0.2.0 host offers: its seven calls; it records what the plugin sends.
struct OldHost {
    sent: Sent,
}

impl HostApi for OldHost {
    fn member(&self) -> RVec<u8> {
        RVec::from(member_key())
    }

    fn community(&self) -> RVec<u8> {
        RVec::from(vec![0xa2; 20])
    }

    fn global_time(&self) -> u64 {
        10
    }

    fn candidates(&self) -> RVec<CandidateInfo> {
        RVec::new()
    }

    fn send(
        &self,
        meta: RStr<'_>,
        payload: RVec<u8>,
        _candidates: RVec<RString>,
    ) -> RResult<(), PluginError> {
        self.sent
            .lock()
            .unwrap()
            .push((meta.to_string(), payload.into_vec()));
        ROk(())
    }

    fn schedule(&self, _delay_ms: u64, _token: u64) -> RResult<(), PluginError> {
        ROk(())
    }

    fn log(&self, _level: u8, _message: RStr<'_>) {}
}

/// A compressed public key (the generator point of secp256k1): the probe keeps authors' keys as
/// bytes and never checks them.
fn member_key() -> Vec<u8> {
    let mut key = vec![0x02];
    key.extend((0..32).map(|i| {
        u8::from_str_radix(
            &"79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"[i * 2..i * 2 + 2],
            16,
        )
        .unwrap()
    }));
    key
}

/// A post created here (no source) by this member, with `json` as payload.
fn own_post(
    instance: &CommunityBox,
    conversion: &[u8],
    global_time: u64,
    json: Value,
) -> RawMessage {
    let payload = instance
        .payload_from_json(POST, RStr::from(json.to_string().as_str()))
        .into_result()
        .expect("the probe encodes a post");
    RawMessage {
        meta: POST,
        conversion: RVec::from(conversion),
        authors: RVec::from(vec![RVec::from(member_key())]),
        global_time,
        sequence_number: 0,
        source: RString::new(),
        payload,
    }
}

#[test]
fn a_plugin_built_against_0_2_1_runs_on_the_0_2_0_abi() {
    // abi_stable's check and version check, as a 0.2.0 host does them.
    let header = lib_header_from_path(&probe_file()).unwrap();
    let module = header
        .init_root_module::<PluginModuleRef>()
        .unwrap_or_else(|e| panic!("a 0.2.0 host refuses a 0.2.1 plugin: {e}"));
    assert_eq!((module.abi_version())(), abi::ABI_VERSION);
    let definition = (module.definition())().into_result().unwrap();
    assert_eq!(definition.name.as_str(), "probe");
    let conversion = definition.conversions.first().unwrap().to_vec();

    let sent = Sent::default();
    let host = HostApi_TO::from_value(
        OldHost {
            sent: Arc::clone(&sent),
        },
        TD_Opaque,
    );
    let mut instance = (module.create())(host).into_result().unwrap();

    // JSON both ways.
    let post = own_post(
        &instance,
        &conversion,
        1,
        json!({"text": "hello", "amount": 3}),
    );
    let back = instance
        .payload_to_json(
            POST,
            RSlice::from(&conversion[..]),
            RSlice::from(&post.payload[..]),
        )
        .into_result()
        .unwrap();
    let back: Value = serde_json::from_str(back.as_str()).unwrap();
    assert_eq!(back["text"], "hello", "{back}");

    // "send entry 2": the SDK's `Host::send` reaches 0.2.0's `send`, in the first conversion.
    let post = own_post(
        &instance,
        &conversion,
        2,
        json!({"text": "send entry 2", "amount": 1}),
    );
    instance
        .handle(RSlice::from(&[post][..]))
        .into_result()
        .unwrap();
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "entry");
    let entry = instance
        .payload_to_json(
            ENTRY,
            RSlice::from(&conversion[..]),
            RSlice::from(&sent[0].1[..]),
        )
        .into_result()
        .unwrap();
    let entry: Value = serde_json::from_str(entry.as_str()).unwrap();
    assert_eq!(entry["amount"], 2, "{entry}");

    // "read posts": 0.2.0's host has no `read`; the default body answers ERROR_HOST, which
    // reaches the plugin's handler as an error.
    let post = own_post(
        &instance,
        &conversion,
        3,
        json!({"text": "read posts", "amount": 1}),
    );
    let error = instance
        .handle(RSlice::from(&[post][..]))
        .into_result()
        .unwrap_err();
    assert!(
        error.message.as_str().contains("cannot read its store"),
        "{error}"
    );
    let status: Value =
        serde_json::from_str(instance.status().into_result().unwrap().as_str()).unwrap();
    assert_eq!(status["posts"], 2, "{status}");
    assert_eq!(status["read_posts"], Value::Null, "{status}");
    // A 0.2.0 host never calls the lifecycle's `restore` or `live`: the instance is not told.
    assert_eq!(status["live"], false, "{status}");
}
