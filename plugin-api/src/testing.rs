//! A host double: unit-test a community's checks, handlers, timers and status without a node,
//! sockets or a `.so`.
//!
//! [`TestHost`] creates an instance of community type `C` from its [`Community::definition`] and
//! drives it through the same ABI calls the real host makes (so payloads go through their binary
//! conversion and panics are caught as in a node). It records what the community sends,
//! schedules and logs. It is deterministic: no clock, no randomness; timers fire when the test
//! says so.
//!
//! It also keeps a store: messages of stored metas (full-sync and last-sync) that
//! [`TestHost::receive`] accepted, and those given to [`TestHost::store`], in that order (without
//! last-sync's pruning). [`Host::read`](crate::sdk::Host::read) reads it, and
//! [`TestHost::restart`] retires the instance and gives a new one the stored history, as a node
//! does after a restart.
//!
//! ```
//! use dispersy_plugin_api::prelude::*;
//! use dispersy_plugin_api::sdk::Compact;
//! use dispersy_plugin_api::testing::{TestHost, member_key};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Line { text: String }
//! impl Compact for Line {}
//!
//! struct Chat { host: Host, lines: u64 }
//!
//! impl Community for Chat {
//!     fn definition() -> Definition<Self> {
//!         Definition::new("chat", "0.1.0", &format!("02{}", "11".repeat(32)))
//!             .conversion(&[1])
//!             .meta(Meta::<Self, Line>::new(1, "line")
//!                 .check(|_, m| if m.payload.text.is_empty() { Verdict::Drop("empty".into()) } else { Verdict::Accept })
//!                 .handle(|chat: &mut Chat, ms| { chat.lines += ms.len() as u64; Ok(()) }))
//!     }
//!     fn create(host: Host) -> Result<Self, Error> { Ok(Chat { host, lines: 0 }) }
//!     fn status(&self) -> dispersy_plugin_api::serde_json::Value { self.lines.into() }
//! }
//!
//! let mut host = TestHost::<Chat>::new().unwrap();
//! let hello = host.message("line", &member_key(1), 5, Line { text: "hello".into() }).unwrap();
//! assert_eq!(host.receive(hello).unwrap(), Verdict::Accept);
//! let empty = host.message("line", &member_key(1), 6, Line { text: String::new() }).unwrap();
//! assert_eq!(host.receive(empty).unwrap(), Verdict::Drop("empty".into()));
//! assert_eq!(host.status().unwrap(), 1);
//! ```

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};

use crate::abi::{
    self, CandidateInfo, CommunityBox, CommunityDef, HostApi, HostApi_TO, PluginError, RawMessage,
    RawVerdict,
};
use crate::sdk::{self, Community, Error, Level, Message, Payload, Verdict, to_hex};

/// The source address the double gives messages built by [`TestHost::message`] (a
/// documentation address: `192.0.2.0/24`).
pub const SOURCE: &str = "192.0.2.1:7000";

/// A distinct, well-formed 33-byte public key for test author `n` (a compressed-key prefix and
/// `n` repeated; not a point anyone holds a secret for). The double's own member is
/// `member_key(0)`.
pub fn member_key(n: u8) -> Vec<u8> {
    let mut key = vec![0x02];
    key.extend(std::iter::repeat_n(n, 32));
    key
}

/// A message the community sent through [`crate::sdk::Host::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The meta-message name.
    pub meta: String,
    /// The conversion the payload is written in (the one the community chose,
    /// [`crate::sdk::Payload::encode_oldest`]).
    pub conversion: Vec<u8>,
    /// The encoded payload (decode it with [`TestHost::sent_payloads`]).
    pub payload: Vec<u8>,
    /// The explicit candidates (`ip:port`).
    pub candidates: Vec<String>,
    /// The global time the double claimed for it (one above the previous global time).
    pub global_time: u64,
}

/// A double-member message the community proposed through [`crate::sdk::Host::propose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The token the double returned (from 1).
    pub token: u64,
    /// The meta-message name.
    pub meta: String,
    /// The conversion the payload is written in.
    pub conversion: Vec<u8>,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// The co-signer's 33-byte public key.
    pub co_signer: Vec<u8>,
    /// The co-signer's address.
    pub address: String,
    /// The explicit candidates (`ip:port`).
    pub candidates: Vec<String>,
    /// The global time the double claimed for it.
    pub global_time: u64,
}

/// What the double records, shared by the host handle the community owns and the test.
#[derive(Debug, Default)]
struct State {
    global_time: u64,
    /// The community's conversions, current first.
    conversions: Vec<Vec<u8>>,
    metas: Vec<String>,
    candidates: Vec<CandidateInfo>,
    sent: Vec<Sent>,
    scheduled: Vec<(Duration, u64)>,
    logs: Vec<(Level, String)>,
    /// The stored messages; row id = index + 1.
    stored: Vec<RawMessage>,
    /// The stored messages hidden by [`TestHost::undone`]: (first author, global time).
    hidden: std::collections::BTreeSet<(Vec<u8>, u64)>,
    /// Most messages per page of a read or a restore.
    read_page: u32,
    /// What the community proposed, oldest first.
    proposals: Vec<Proposal>,
    /// Answers of `may` set by the test: (meta name, member as given, answer); any other
    /// question about a known meta is answered `true`.
    may: Vec<(String, Vec<u8>, bool)>,
}

impl State {
    fn is_hidden(&self, raw: &RawMessage) -> bool {
        let author = raw.authors.first().map(|a| a.to_vec()).unwrap_or_default();
        self.hidden.contains(&(author, raw.global_time))
    }
}

/// The host side of the double, handed to the community as its `Host`.
#[derive(Clone)]
struct Recorder(Arc<Mutex<State>>);

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HostApi for Recorder {
    fn member(&self) -> RVec<u8> {
        RVec::from(member_key(0))
    }

    fn community(&self) -> RVec<u8> {
        RVec::from(vec![0xc0; 20])
    }

    fn global_time(&self) -> u64 {
        self.lock().global_time
    }

    fn candidates(&self) -> RVec<CandidateInfo> {
        self.lock().candidates.iter().cloned().collect()
    }

    fn send(
        &self,
        meta: RStr<'_>,
        payload: RVec<u8>,
        candidates: RVec<RString>,
    ) -> RResult<(), PluginError> {
        let first = self.lock().conversions.first().cloned().unwrap_or_default();
        self.send_in(meta, RVec::from(first), payload, candidates)
    }

    fn send_in(
        &self,
        meta: RStr<'_>,
        conversion: RVec<u8>,
        payload: RVec<u8>,
        candidates: RVec<RString>,
    ) -> RResult<(), PluginError> {
        let mut state = self.lock();
        if !state.conversions.iter().any(|c| c[..] == conversion[..]) {
            return RResult::RErr(PluginError::new(
                abi::ERROR_HOST,
                "the conversion is not one of the community's",
            ));
        }
        if !state.metas.iter().any(|m| m.as_str() == meta.as_str()) {
            return RResult::RErr(PluginError::new(
                abi::ERROR_HOST,
                format!("no meta-message named {meta:?}"),
            ));
        }
        state.global_time += 1;
        let global_time = state.global_time;
        state.sent.push(Sent {
            meta: meta.to_string(),
            conversion: conversion.into_vec(),
            payload: payload.into_vec(),
            candidates: candidates.into_iter().map(RString::into_string).collect(),
            global_time,
        });
        RResult::ROk(())
    }

    fn schedule(&self, delay_ms: u64, token: u64) -> RResult<(), PluginError> {
        self.lock()
            .scheduled
            .push((Duration::from_millis(delay_ms), token));
        RResult::ROk(())
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        let level = match level {
            abi::level::ERROR => Level::Error,
            abi::level::WARN => Level::Warn,
            abi::level::INFO => Level::Info,
            abi::level::DEBUG => Level::Debug,
            _ => Level::Trace,
        };
        self.lock().logs.push((level, message.to_string()));
    }

    fn may(
        &self,
        meta: RStr<'_>,
        member: RVec<u8>,
        global_time: u64,
    ) -> RResult<bool, PluginError> {
        let _ = global_time;
        let state = self.lock();
        if !state.metas.iter().any(|m| m.as_str() == meta.as_str()) {
            return RResult::RErr(PluginError::new(
                abi::ERROR_HOST,
                format!("no meta-message named {meta:?}"),
            ));
        }
        if member.len() != 33 && member.len() != 20 {
            return RResult::RErr(PluginError::new(
                abi::ERROR_HOST,
                "a member is a 33-byte key or a 20-byte id",
            ));
        }
        let answer = state
            .may
            .iter()
            .rev()
            .find(|(m, who, _)| m.as_str() == meta.as_str() && who[..] == member[..])
            .is_none_or(|(_, _, may)| *may);
        RResult::ROk(answer)
    }

    fn propose(
        &self,
        meta: RStr<'_>,
        conversion: RVec<u8>,
        payload: RVec<u8>,
        co_signer: RVec<u8>,
        address: RString,
        candidates: RVec<RString>,
    ) -> RResult<u64, PluginError> {
        let mut state = self.lock();
        if !state.metas.iter().any(|m| m.as_str() == meta.as_str()) {
            return RResult::RErr(PluginError::new(
                abi::ERROR_HOST,
                format!("no meta-message named {meta:?}"),
            ));
        }
        if co_signer.len() != 33 {
            return RResult::RErr(PluginError::new(
                abi::ERROR_INVALID,
                "the co-signer is a 33-byte public key",
            ));
        }
        state.global_time += 1;
        let token = state.proposals.len() as u64 + 1;
        let global_time = state.global_time;
        state.proposals.push(Proposal {
            token,
            meta: meta.to_string(),
            conversion: conversion.into_vec(),
            payload: payload.into_vec(),
            co_signer: co_signer.into_vec(),
            address: address.into_string(),
            candidates: candidates.into_iter().map(RString::into_string).collect(),
            global_time,
        });
        RResult::ROk(token)
    }

    fn read(&self, query: &abi::ReadQuery) -> RResult<abi::ReadPage, PluginError> {
        if !query.member.is_empty() && query.member.len() != 33 {
            return RResult::RErr(PluginError::new(
                abi::ERROR_INVALID,
                "the host double names members by their 33-byte key only",
            ));
        }
        let state = self.lock();
        let limit = query.limit.clamp(1, state.read_page.max(1)) as usize;
        let after = usize::try_from(query.after).unwrap_or(usize::MAX);
        let mut messages = RVec::new();
        let mut next = query.after;
        let mut done = true;
        for (index, raw) in state.stored.iter().enumerate().skip(after) {
            let matches = !state.is_hidden(raw)
                && (query.any_meta || raw.meta == query.meta)
                && (query.member.is_empty()
                    || raw
                        .authors
                        .first()
                        .is_some_and(|a| a.as_slice() == query.member.as_slice()))
                && (query.global_time_low..=query.global_time_high).contains(&raw.global_time);
            if !matches {
                continue;
            }
            if messages.len() == limit {
                done = false;
                break;
            }
            messages.push(raw.clone());
            next = index as u64 + 1;
        }
        RResult::ROk(abi::ReadPage {
            messages,
            next,
            done,
        })
    }
}

/// One instance of community type `C` on a host double. See the [module](self) documentation.
pub struct TestHost<C: Community> {
    instance: CommunityBox,
    recorder: Recorder,
    definition: CommunityDef,
    community: PhantomData<fn() -> C>,
}

impl<C: Community> TestHost<C> {
    /// Builds `C`'s definition, checks what a host would refuse at load (a master key that is
    /// not 33 bytes of hex, no conversion, duplicate meta ids or names), and creates an instance
    /// with `Community::create`. Its member is [`member_key`]`(0)`; global time starts at 0.
    pub fn new() -> Result<Self, Error> {
        let definition = C::definition().to_raw()?;
        if definition.master_key.len() != 33 {
            return Err(Error::invalid(format!(
                "master key is {} bytes, a public key is 33",
                definition.master_key.len()
            )));
        }
        if definition.conversions.is_empty() {
            return Err(Error::invalid("no conversion defined"));
        }
        for (i, meta) in definition.metas.iter().enumerate() {
            if definition.metas[..i]
                .iter()
                .any(|m| m.id == meta.id || m.name == meta.name)
            {
                return Err(Error::invalid(format!(
                    "meta-message {} ({:?}) repeats an id or a name",
                    meta.id, meta.name
                )));
            }
        }
        let recorder = Recorder(Arc::new(Mutex::new(State {
            metas: definition
                .metas
                .iter()
                .map(|m| m.name.to_string())
                .collect(),
            conversions: definition.conversions.iter().map(|c| c.to_vec()).collect(),
            read_page: 256,
            ..State::default()
        })));
        let host = HostApi_TO::from_value(recorder.clone(), TD_Opaque);
        let mut instance = sdk::create::<C>(host).into_result()?;
        // A new community has no history: restore is empty, and it is live at once.
        instance.live().into_result()?;
        Ok(TestHost {
            instance,
            recorder,
            definition,
            community: PhantomData,
        })
    }

    /// The community's current global time.
    pub fn global_time(&self) -> u64 {
        self.recorder.lock().global_time
    }

    /// Sets the community's global time (what `Host::global_time` answers; each send claims the
    /// next one).
    pub fn set_global_time(&mut self, global_time: u64) {
        self.recorder.lock().global_time = global_time;
    }

    /// Adds a verified (walk) candidate at `address` with member id `member` (20 bytes, or
    /// empty when unknown) to what `Host::candidates` answers.
    pub fn add_candidate(&mut self, address: &str, member: &[u8]) {
        self.recorder.lock().candidates.push(CandidateInfo {
            address: RString::from(address),
            member: RVec::from(member.to_vec()),
            category: abi::category::WALK,
        });
    }

    /// The wire type of the meta named `meta`.
    pub fn meta_id(&self, meta: &str) -> Result<u32, Error> {
        self.definition
            .metas
            .iter()
            .find(|m| m.name.as_str() == meta)
            .map(|m| m.id)
            .ok_or_else(|| Error::invalid(format!("no meta-message named {meta:?}")))
    }

    /// A message of meta `meta` from another node: signed by `author`, at `global_time`, from
    /// [`SOURCE`], without a sequence number. Change its public fields for other cases (a
    /// second author, a sequence number, `source: None` for this node's own message).
    pub fn message<P>(
        &self,
        meta: &str,
        author: &[u8],
        global_time: u64,
        payload: P,
    ) -> Result<Message<P>, Error> {
        Ok(Message {
            meta: self.meta_id(meta)?,
            authors: vec![author.to_vec()],
            global_time,
            sequence_number: None,
            source: Some(SOURCE.to_owned()),
            payload,
        })
    }

    fn conversion(&self) -> &[u8] {
        // `new` checked that there is one.
        self.definition
            .conversions
            .first()
            .map(|c| c.as_slice())
            .unwrap_or_default()
    }

    /// `message` as the host hands it over: its payload encoded with the current conversion.
    pub fn raw<P: Payload>(&self, message: &Message<P>) -> Result<RawMessage, Error> {
        Ok(RawMessage {
            meta: message.meta,
            conversion: RVec::from(self.conversion().to_vec()),
            authors: message
                .authors
                .iter()
                .map(|a| RVec::from(a.clone()))
                .collect(),
            global_time: message.global_time,
            sequence_number: message.sequence_number.unwrap_or(0),
            source: RString::from(message.source.clone().unwrap_or_default()),
            payload: RVec::from(message.payload.encode(self.conversion())?),
        })
    }

    /// The community's check of one message (its payload encoded and decoded on the way).
    pub fn check<P: Payload>(&mut self, message: &Message<P>) -> Result<Verdict, Error> {
        let raw = self.raw(message)?;
        self.check_raw(&raw)
    }

    /// The community's check of a message as raw bytes: for payloads that do not decode, other
    /// conversions, or authors and sources a [`Message`] cannot express.
    pub fn check_raw(&mut self, raw: &RawMessage) -> Result<Verdict, Error> {
        let verdicts = self
            .instance
            .check(RSlice::from_slice(std::slice::from_ref(raw)))
            .into_result()?;
        let verdict = verdicts
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the check returned no verdict"))?;
        Ok(verdict_from_raw(verdict))
    }

    /// Hands a batch of messages of one meta to the community's handler (as the host does once
    /// they passed the check and, if stored, were stored).
    pub fn handle<P: Payload>(&mut self, messages: &[Message<P>]) -> Result<(), Error> {
        let raw = messages
            .iter()
            .map(|m| self.raw(m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self
            .instance
            .handle(RSlice::from_slice(&raw))
            .into_result()?)
    }

    /// Checks `message` and, when the verdict is [`Verdict::Accept`], handles it: what a node
    /// does with a message it receives. Returns the verdict.
    pub fn receive<P: Payload>(&mut self, message: Message<P>) -> Result<Verdict, Error> {
        let verdict = self.check(&message)?;
        if verdict == Verdict::Accept {
            if self.stored_meta(message.meta) {
                self.store(&message)?;
            }
            self.handle(std::slice::from_ref(&message))?;
        }
        Ok(verdict)
    }

    fn stored_meta(&self, meta: u32) -> bool {
        self.definition.metas.iter().any(|m| {
            m.id == meta
                && matches!(
                    m.distribution,
                    abi::distribution::FULL_SYNC | abi::distribution::LAST_SYNC
                )
        })
    }

    /// Adds `message` to the double's store (after the messages stored before), without
    /// calling the community: history that [`TestHost::restart`] restores and reads find.
    pub fn store<P: Payload>(&mut self, message: &Message<P>) -> Result<(), Error> {
        let mut raw = self.raw(message)?;
        raw.source = RString::new();
        self.recorder.lock().stored.push(raw);
        Ok(())
    }

    /// A [`Host`](crate::sdk::Host) on this double, like the one the community got: to test
    /// code that takes one (reads of the store, sends).
    pub fn host(&self) -> sdk::Host {
        sdk::Host::from_raw(
            HostApi_TO::from_value(self.recorder.clone(), TD_Opaque),
            self.recorder.lock().conversions.clone(),
        )
    }

    /// How many messages the double's store holds.
    pub fn stored(&self) -> usize {
        self.recorder.lock().stored.len()
    }

    /// Bounds the pages of reads and restores to `messages` (256 by default).
    pub fn set_read_page(&mut self, messages: u32) {
        self.recorder.lock().read_page = messages;
    }

    /// What a node does on a restart: retires the instance (`Community::on_retire` with
    /// `Retire::Restart`), creates a new one, gives it the stored history oldest first in pages
    /// (each meta's restore function), then tells it it is live (`Community::on_live`).
    /// Scheduled timers are forgotten, as a node forgets them.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.instance.retire(abi::retire::RESTART).into_result()?;
        self.recorder.lock().scheduled.clear();
        let host = HostApi_TO::from_value(self.recorder.clone(), TD_Opaque);
        self.instance = sdk::create::<C>(host).into_result()?;
        let (history, page) = {
            let state = self.recorder.lock();
            let history: Vec<RawMessage> = state
                .stored
                .iter()
                .filter(|raw| !state.is_hidden(raw))
                .cloned()
                .collect();
            (history, state.read_page.max(1) as usize)
        };
        for batch in history.chunks(page) {
            self.instance
                .restore(RSlice::from_slice(batch))
                .into_result()?;
        }
        Ok(self.instance.live().into_result()?)
    }

    /// What a node does when a stored message becomes hidden (`undone`: undo-own, undo-other,
    /// or denied by a revoke or dynamic-settings change) or visible again: tells the community
    /// (its meta's `Meta::on_undone`), and the double's store hides it from reads and restarts
    /// (or shows it again).
    pub fn undone<P: Payload>(
        &mut self,
        message: &Message<P>,
        undone: bool,
        reason: sdk::UndoReason,
    ) -> Result<(), Error> {
        let mut raw = self.raw(message)?;
        raw.source = RString::new();
        {
            let mut state = self.recorder.lock();
            let key = (
                message.authors.first().cloned().unwrap_or_default(),
                message.global_time,
            );
            if undone {
                state.hidden.insert(key);
            } else {
                state.hidden.remove(&key);
            }
        }
        let (code, by_member, by_global_time) = match reason {
            sdk::UndoReason::ByAuthor { global_time } => (
                abi::undone::BY_AUTHOR,
                message.authors.first().cloned().unwrap_or_default(),
                global_time,
            ),
            sdk::UndoReason::ByOther { by, global_time } => {
                (abi::undone::BY_OTHER, by, global_time)
            }
            sdk::UndoReason::Denied => (abi::undone::DENIED, Vec::new(), 0),
        };
        let notice = abi::RawUndone {
            message: raw,
            undone,
            reason: code,
            by_member: RVec::from(by_member),
            by_global_time,
        };
        Ok(self
            .instance
            .undone(RSlice::from_slice(std::slice::from_ref(&notice)))
            .into_result()?)
    }

    /// Whether this member would co-sign `message` (a double-member meta's
    /// `Meta::allow_signature`).
    pub fn allow_signature<P: Payload>(&mut self, message: &Message<P>) -> Result<bool, Error> {
        let raw = self.raw(message)?;
        Ok(self.instance.allow_signature(&raw).into_result()?)
    }

    /// This member's co-signing answer to `message`, proposed by another member with this
    /// member as second author (a double-member meta's `Meta::cosign`, or its
    /// `Meta::allow_signature`): a modified payload comes back decoded.
    pub fn cosign<P: Payload>(&mut self, message: &Message<P>) -> Result<sdk::Cosign<P>, Error> {
        let raw = self.raw(message)?;
        let answer = self.instance.cosign(&raw).into_result()?;
        Ok(match answer.kind {
            abi::cosign::SIGN => sdk::Cosign::Sign,
            abi::cosign::MODIFY => {
                sdk::Cosign::Modify(P::decode(self.conversion(), &answer.payload)?)
            }
            abi::cosign::APPEND => sdk::Cosign::Append(answer.payload.into_vec()),
            _ => sdk::Cosign::Refuse,
        })
    }

    /// The double-member messages the community proposed ([`crate::sdk::Host::propose`]).
    pub fn proposals(&self) -> Vec<Proposal> {
        self.recorder.lock().proposals.clone()
    }

    /// Delivers the co-signer's answer to the proposal with `token` (the meta's
    /// `Meta::on_cosigned`): the message as the co-signer signed it, authors this member
    /// ([`member_key`]`(0)`) and the co-signer, with `payload` (the proposal's own for
    /// [`sdk::Answer::Signed`] and [`sdk::Answer::Timeout`] when `None`). Returns whether the
    /// community publishes it.
    pub fn cosigned(
        &mut self,
        token: u64,
        answer: sdk::Answer,
        payload: Option<Vec<u8>>,
    ) -> Result<bool, Error> {
        let proposal = self
            .proposals()
            .into_iter()
            .find(|p| p.token == token)
            .ok_or_else(|| Error::invalid(format!("no proposal with token {token}")))?;
        let meta = self
            .definition
            .metas
            .iter()
            .find(|m| m.name.as_str() == proposal.meta)
            .map(|m| m.id)
            .ok_or_else(|| Error::invalid(format!("no meta-message {:?}", proposal.meta)))?;
        let raw = abi::RawCosigned {
            kind: match answer {
                sdk::Answer::Signed => abi::cosigned::SIGNED,
                sdk::Answer::Modified => abi::cosigned::MODIFIED,
                sdk::Answer::Appended => abi::cosigned::APPENDED,
                sdk::Answer::Timeout => abi::cosigned::TIMEOUT,
            },
            message: RawMessage {
                meta,
                conversion: RVec::from(proposal.conversion),
                authors: RVec::from(vec![
                    RVec::from(member_key(0)),
                    RVec::from(proposal.co_signer),
                ]),
                global_time: proposal.global_time,
                sequence_number: 0,
                source: RString::new(),
                payload: RVec::from(payload.unwrap_or(proposal.payload)),
            },
        };
        Ok(self.instance.cosigned(token, &raw).into_result()?)
    }

    /// Sets what `may(meta, member, _)` answers (at any global time); by default the double
    /// answers `true` for every known meta.
    pub fn set_may(&mut self, meta: &str, member: &[u8], may: bool) {
        self.recorder
            .lock()
            .may
            .push((meta.to_owned(), member.to_vec(), may));
    }

    /// Calls `Community::on_timer(token)` and forgets the first scheduled timer with that token
    /// (the timer fires whether or not it was scheduled; check [`TestHost::scheduled`] first).
    pub fn fire_timer(&mut self, token: u64) -> Result<(), Error> {
        {
            let mut state = self.recorder.lock();
            if let Some(i) = state.scheduled.iter().position(|(_, t)| *t == token) {
                state.scheduled.remove(i);
            }
        }
        Ok(self.instance.timer(token).into_result()?)
    }

    /// Timers scheduled and not fired yet: (delay, token), in the order scheduled.
    pub fn scheduled(&self) -> Vec<(Duration, u64)> {
        self.recorder.lock().scheduled.clone()
    }

    /// Everything the community sent, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.recorder.lock().sent.clone()
    }

    /// The payloads of the messages of meta `meta` the community sent, decoded.
    pub fn sent_payloads<P: Payload>(&self, meta: &str) -> Result<Vec<P>, Error> {
        self.sent()
            .iter()
            .filter(|s| s.meta == meta)
            .map(|s| P::decode(&s.conversion, &s.payload))
            .collect()
    }

    /// Everything the community logged, in order.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.recorder.lock().logs.clone()
    }

    /// The community's status document (what the control API shows).
    pub fn status(&self) -> Result<serde_json::Value, Error> {
        let text = self.instance.status().into_result()?;
        serde_json::from_str(text.as_str())
            .map_err(|e| Error::internal(format!("status is not JSON: {e}")))
    }

    /// The JSON form of `payload` as the control API shows a message of meta `meta` (encoded,
    /// then converted by the community).
    pub fn to_json<P: Payload>(&self, meta: &str, payload: &P) -> Result<serde_json::Value, Error> {
        let bytes = payload.encode(self.conversion())?;
        let text = self
            .instance
            .payload_to_json(
                self.meta_id(meta)?,
                RSlice::from_slice(self.conversion()),
                RSlice::from_slice(&bytes),
            )
            .into_result()?;
        serde_json::from_str(text.as_str())
            .map_err(|e| Error::internal(format!("payload JSON does not parse: {e}")))
    }

    /// The payload a control API request with `json` would create for meta `meta` (converted by
    /// the community, then decoded).
    pub fn from_json<P: Payload>(&self, meta: &str, json: &serde_json::Value) -> Result<P, Error> {
        let (conversion, bytes) = self.from_json_raw(meta, json)?;
        P::decode(&conversion, &bytes)
    }

    /// What a control API request with `json` would put on the wire for meta `meta`: the
    /// conversion the community chose and the payload's bytes.
    pub fn from_json_raw(
        &self,
        meta: &str,
        json: &serde_json::Value,
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let encoded = self
            .instance
            .payload_from_json_in(self.meta_id(meta)?, RStr::from(json.to_string().as_str()))
            .into_result()?;
        Ok((encoded.conversion.into_vec(), encoded.payload.into_vec()))
    }
}

fn verdict_from_raw(raw: RawVerdict) -> Verdict {
    let reason = raw.reason.into_string();
    match raw.kind {
        abi::verdict::ACCEPT => Verdict::Accept,
        abi::verdict::DELAY => Verdict::Delay {
            reason,
            after: Duration::from_millis(u64::from(raw.delay_ms)),
        },
        abi::verdict::WAIT_MESSAGE => Verdict::WaitForMessage {
            member: raw.member.into_vec(),
            global_time: raw.global_time,
        },
        abi::verdict::WAIT_LAST => Verdict::WaitForLast {
            member: raw.member.into_vec(),
            meta: raw.meta,
        },
        abi::verdict::DROP => Verdict::Drop(reason),
        other => Verdict::Drop(format!("unknown verdict code {other}: {reason}")),
    }
}

impl<C: Community> std::fmt::Debug for TestHost<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("community", &self.definition.name)
            .field("master_key", &to_hex(&self.definition.master_key))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdk::{Compact, Definition, Host, Meta, from_compact, to_compact};
    use serde::{Deserialize, Serialize};

    /// A derived payload with every shape the format must carry.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
        urgent: bool,
        score: Option<i64>,
        tags: Vec<String>,
    }
    impl Compact for Note {}

    struct Board {
        host: Host,
        notes: Vec<String>,
    }

    impl Board {
        fn check(&mut self, message: &Message<Note>) -> Verdict {
            match message.payload.text.as_str() {
                "" => Verdict::Drop("empty".into()),
                "later" => Verdict::Delay {
                    reason: "later".into(),
                    after: Duration::from_secs(2),
                },
                "boom" => panic!("boom"),
                _ => Verdict::Accept,
            }
        }

        fn on_note(&mut self, messages: Vec<Message<Note>>) -> Result<(), Error> {
            for message in messages {
                self.host
                    .log(Level::Info, format!("note {}", message.payload.text));
                self.notes.push(message.payload.text);
            }
            Ok(())
        }
    }

    impl Community for Board {
        fn definition() -> Definition<Self> {
            Definition::new("board", "0.1.0", &to_hex(&member_key(9)))
                .conversion(&[1])
                .meta(
                    Meta::<Self, Note>::new(1, "note")
                        .check(Self::check)
                        .handle(Self::on_note),
                )
        }

        fn create(host: Host) -> Result<Self, Error> {
            host.schedule(Duration::from_secs(5), 7)?;
            Ok(Board {
                host,
                notes: Vec::new(),
            })
        }

        fn on_timer(&mut self, token: u64) -> Result<(), Error> {
            let note = Note {
                text: format!("timer {token}"),
                urgent: false,
                score: None,
                tags: Vec::new(),
            };
            self.host.send("note", &note, &["192.0.2.2:7000"])?;
            self.host.send("nothing", &note, &[])
        }

        fn status(&self) -> serde_json::Value {
            serde_json::json!({ "notes": self.notes })
        }
    }

    fn note(text: &str) -> Note {
        Note {
            text: text.into(),
            urgent: true,
            score: Some(-3),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn compact_payloads_round_trip_and_refuse_malformed_bytes() {
        let value = note("héllo");
        let bytes = value.encode(&[1]).unwrap();
        assert_eq!(bytes, to_compact(&value).unwrap());
        assert_eq!(Note::decode(&[1], &bytes).unwrap(), value);
        // The format is pinned: these bytes are what conversion 1 means, in every version.
        assert_eq!(
            to_compact(&note("hi")).unwrap(),
            [2, b'h', b'i', 1, 1, 5, 2, 1, b'a', 1, b'b']
        );
        for len in 0..bytes.len() {
            assert!(
                Note::decode(&[1], &bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Note::decode(&[1], &trailing).is_err());
        assert!(from_compact::<Note>(&[0xff; 12]).is_err());
        // Other conversions are refused both ways.
        assert!(value.encode(&[2]).is_err());
        assert!(Note::decode(&[2], &bytes).is_err());
    }

    #[test]
    fn the_double_drives_checks_handlers_timers_and_status() {
        let mut host = TestHost::<Board>::new().unwrap();
        assert_eq!(host.scheduled(), [(Duration::from_secs(5), 7)]);
        let author = member_key(1);

        let hello = host.message("note", &author, 3, note("hello")).unwrap();
        assert_eq!(host.receive(hello).unwrap(), Verdict::Accept);
        let empty = host.message("note", &author, 4, note("")).unwrap();
        assert_eq!(host.receive(empty).unwrap(), Verdict::Drop("empty".into()));
        let later = host.message("note", &author, 5, note("later")).unwrap();
        assert!(matches!(host.check(&later).unwrap(), Verdict::Delay { .. }));
        assert_eq!(
            host.status().unwrap(),
            serde_json::json!({"notes": ["hello"]})
        );
        assert_eq!(host.logs(), [(Level::Info, "note hello".to_owned())]);

        // Bytes that do not decode are dropped by the SDK before the check sees them.
        let mut raw = host
            .raw(&host.message("note", &author, 6, note("x")).unwrap())
            .unwrap();
        raw.payload = RVec::from(vec![0xff]);
        assert!(matches!(host.check_raw(&raw).unwrap(), Verdict::Drop(r) if r.contains("decode")));

        // A timer sends (an unknown meta is refused by the host, which the community returns).
        host.set_global_time(10);
        assert!(host.fire_timer(7).is_err());
        assert!(host.scheduled().is_empty());
        let sent = host.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].global_time, 11);
        assert_eq!(sent[0].candidates, ["192.0.2.2:7000"]);
        let payloads: Vec<Note> = host.sent_payloads("note").unwrap();
        assert_eq!(payloads[0].text, "timer 7");

        // One serde definition gives the JSON form, both ways.
        let json = host.to_json("note", &note("hi")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"text": "hi", "urgent": true, "score": -3, "tags": ["a", "b"]})
        );
        assert_eq!(host.from_json::<Note>("note", &json).unwrap(), note("hi"));
        assert!(
            host.from_json::<Note>("note", &serde_json::json!({"text": 1}))
                .is_err()
        );
        assert!(host.meta_id("nothing").is_err());

        // A panic is caught and poisons the instance, as in a node.
        let boom = host.message("note", &author, 7, note("boom")).unwrap();
        let error = host.check(&boom).unwrap_err();
        assert!(error.message().contains("boom"), "{error}");
        assert!(host.status().is_err());
    }

    struct BadKey;
    impl Community for BadKey {
        fn definition() -> Definition<Self> {
            Definition::new("bad", "0.1.0", "0211").conversion(&[1])
        }
        fn create(_: Host) -> Result<Self, Error> {
            Ok(BadKey)
        }
    }

    #[test]
    fn the_double_refuses_definitions_a_host_refuses() {
        let error = TestHost::<BadKey>::new().unwrap_err();
        assert!(error.message().contains("33"), "{error}");
    }

    /// A full-sync log whose handler sends an echo for `echo` texts; its restore function only
    /// counts. A direct meta is not stored.
    struct Log {
        host: Host,
        texts: Vec<String>,
        restored: u64,
        live: u64,
        retired: Vec<crate::sdk::Retire>,
        undone: Vec<(String, bool, crate::sdk::UndoReason)>,
    }

    impl Log {
        fn on_line(&mut self, messages: Vec<Message<Note>>) -> Result<(), Error> {
            for m in messages {
                if m.payload.text == "echo" {
                    self.host.send("line", &m.payload, &[])?;
                }
                self.texts.push(m.payload.text);
            }
            Ok(())
        }
        fn restore_line(&mut self, messages: Vec<Message<Note>>) -> Result<(), Error> {
            self.restored += messages.len() as u64;
            self.texts
                .extend(messages.into_iter().map(|m| m.payload.text));
            Ok(())
        }
    }

    impl Community for Log {
        fn definition() -> Definition<Self> {
            Definition::new("log", "0.1.0", &format!("02{}", "22".repeat(32)))
                .conversion(&[1])
                .meta(
                    Meta::<Self, Note>::new(1, "line")
                        .distribution(crate::sdk::Distribution::FullSync {
                            sequence_numbers: false,
                            order: crate::sdk::Order::Ascending,
                        })
                        .handle(Self::on_line)
                        .restore(Self::restore_line)
                        .on_undone(|log: &mut Log, notice| {
                            log.undone.push((
                                notice.message.payload.text,
                                notice.undone,
                                notice.reason,
                            ));
                            Ok(())
                        }),
                )
                .meta(
                    Meta::<Self, Note>::new(2, "chat").handle(|log: &mut Log, ms| {
                        log.texts.extend(ms.into_iter().map(|m| m.payload.text));
                        Ok(())
                    }),
                )
                .meta(
                    // No restore function: its handler restores it.
                    Meta::<Self, Note>::new(3, "tally")
                        .distribution(crate::sdk::Distribution::FullSync {
                            sequence_numbers: false,
                            order: crate::sdk::Order::Ascending,
                        })
                        .handle(|log: &mut Log, ms| {
                            log.texts.extend(
                                ms.into_iter().map(|m| format!("tally {}", m.payload.text)),
                            );
                            Ok(())
                        }),
                )
        }
        fn create(host: Host) -> Result<Self, Error> {
            Ok(Log {
                host,
                texts: Vec::new(),
                restored: 0,
                live: 0,
                retired: Vec::new(),
                undone: Vec::new(),
            })
        }
        fn on_live(&mut self) -> Result<(), Error> {
            self.live += 1;
            Ok(())
        }
        fn on_retire(&mut self, reason: crate::sdk::Retire) -> Result<(), Error> {
            self.retired.push(reason);
            Ok(())
        }
        fn status(&self) -> serde_json::Value {
            serde_json::json!({
                "texts": self.texts,
                "restored": self.restored,
                "live": self.live,
                "retired": self.retired.len(),
                "undone": self
                    .undone
                    .iter()
                    .map(|(text, undone, reason)| format!("{text} {undone} {reason:?}"))
                    .collect::<Vec<_>>(),
            })
        }
    }

    fn plain(text: &str) -> Note {
        Note {
            text: text.into(),
            urgent: false,
            score: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn undone_notices_reach_the_metas_on_undone_and_hidden_messages_are_not_restored() {
        use crate::sdk::UndoReason;
        let mut host = TestHost::<Log>::new().unwrap();
        let lines: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let m = host
                    .message("line", &member_key(1), i as u64 + 1, plain(text))
                    .unwrap();
                host.receive(m.clone()).unwrap();
                m
            })
            .collect();
        host.undone(&lines[1], true, UndoReason::Denied).unwrap();
        let by = member_key(2);
        let other = UndoReason::ByOther {
            by: by.clone(),
            global_time: 9,
        };
        host.undone(&lines[2], true, other.clone()).unwrap();
        host.undone(&lines[1], false, UndoReason::Denied).unwrap();
        // A meta without on_undone: nothing happens, and no error.
        let chat = host.message("chat", &member_key(1), 4, plain("x")).unwrap();
        host.undone(&chat, true, UndoReason::Denied).unwrap();
        let told = format!("c true ByOther {{ by: {by:?}, global_time: 9 }}");
        assert_eq!(
            host.status().unwrap()["undone"],
            serde_json::json!(["b true Denied", told, "b false Denied"])
        );
        host.restart().unwrap();
        let status = host.status().unwrap();
        assert_eq!(
            status["texts"],
            serde_json::json!(["a", "b"]),
            "c is hidden"
        );
        // The new instance was restored, not told; the old one was told in order.
        assert_eq!(status["restored"], 2);
        let own = host.message("line", &member_key(1), 5, plain("d")).unwrap();
        host.receive(own.clone()).unwrap();
        host.undone(&own, true, UndoReason::ByAuthor { global_time: 6 })
            .unwrap();
        let status = host.status().unwrap();
        assert_eq!(
            status["undone"],
            serde_json::json!(["d true ByAuthor { global_time: 6 }"])
        );
    }

    #[test]
    fn a_restart_restores_the_stored_history_in_order_through_each_metas_restore() {
        let mut host = TestHost::<Log>::new().unwrap();
        host.set_read_page(2);
        let texts = ["a", "echo", "b"];
        for (i, text) in texts.iter().enumerate() {
            let m = host
                .message("line", &member_key(1), i as u64 + 1, plain(text))
                .unwrap();
            assert_eq!(host.receive(m).unwrap(), Verdict::Accept);
        }
        let t = host
            .message("tally", &member_key(2), 9, plain("t"))
            .unwrap();
        host.receive(t).unwrap();
        // Direct: not stored, not restored.
        let c = host
            .message("chat", &member_key(2), 10, plain("c"))
            .unwrap();
        host.receive(c).unwrap();
        assert_eq!(host.stored(), 4);
        assert_eq!(host.sent().len(), 1);
        let before = host.status().unwrap();
        assert_eq!(before["live"], 1);

        host.restart().unwrap();
        let after = host.status().unwrap();
        assert_eq!(
            after["texts"],
            serde_json::json!(["a", "echo", "b", "tally t"])
        );
        assert_eq!(after["restored"], 3);
        assert_eq!(after["live"], 1);
        // The restore function does not echo again.
        assert_eq!(host.sent().len(), 1);
    }

    #[test]
    fn reads_page_through_the_store_by_meta_member_and_global_time() {
        let mut host = TestHost::<Log>::new().unwrap();
        host.set_read_page(2);
        for gt in 1..=6u64 {
            let author = member_key(1 + (gt % 2) as u8);
            let m = host
                .message("line", &author, gt, plain(&gt.to_string()))
                .unwrap();
            host.store(&m).unwrap();
        }
        let t = host
            .message("tally", &member_key(1), 7, plain("t"))
            .unwrap();
        host.store(&t).unwrap();
        // Member 2 wrote the odd global times 1, 3, 5 (and the tally at 7 is another meta); ask
        // for 1..=7 in pages of up to 5 (the host bounds them to 2).
        let filter = crate::sdk::Filter {
            member: Some(member_key(2)),
            global_time: 1..=7,
            limit: 5,
        };
        let mut seen = Vec::new();
        let mut after = 0;
        let mut pages = 0;
        loop {
            let page = host.host().read::<Note>(1, &filter, after).unwrap();
            pages += 1;
            seen.extend(page.messages.iter().map(|m| m.global_time));
            after = page.next;
            if page.done {
                break;
            }
        }
        assert_eq!(seen, vec![1, 3, 5]);
        assert_eq!(pages, 2);
        let all = host
            .host()
            .read::<Note>(1, &crate::sdk::Filter::default(), 0)
            .unwrap();
        assert_eq!(all.messages.len(), 2);
        assert!(!all.done);
    }

    /// Conversion 1 (the first release) carries a memo's text; conversion 2 adds `pinned`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct MemoV1 {
        text: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Memo {
        text: String,
        pinned: bool,
    }

    impl Compact for Memo {
        const CONVERSIONS: &'static [&'static [u8]] = &[&[2]];
        fn encode_other(&self, conversion: &[u8]) -> Result<Vec<u8>, Error> {
            match conversion {
                // Drops `pinned`: the round trip notices when that changes the value.
                [1] => to_compact(&MemoV1 {
                    text: self.text.clone(),
                }),
                _ => Err(Error::invalid("unknown conversion")),
            }
        }
        fn decode_other(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
            match conversion {
                [1] => from_compact::<MemoV1>(bytes).map(|old| Memo {
                    text: old.text,
                    pinned: false,
                }),
                _ => Err(Error::invalid("unknown conversion")),
            }
        }
    }

    /// A hand-written payload: written in the first conversion, whatever it holds.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Raw(u8);

    impl Payload for Raw {
        fn encode(&self, _conversion: &[u8]) -> Result<Vec<u8>, Error> {
            Ok(vec![self.0])
        }
        fn decode(_conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
            match bytes {
                [b] => Ok(Raw(*b)),
                _ => Err(Error::invalid("one byte")),
            }
        }
    }

    struct Memos {
        host: Host,
    }

    impl Community for Memos {
        fn definition() -> Definition<Self> {
            Definition::new("memos", "0.2.0", &to_hex(&member_key(8)))
                .conversion(&[2])
                .conversion(&[1])
                .meta(Meta::<Self, Memo>::new(1, "memo"))
                .meta(Meta::<Self, Raw>::new(2, "raw"))
        }

        fn create(host: Host) -> Result<Self, Error> {
            Ok(Memos { host })
        }

        fn on_timer(&mut self, token: u64) -> Result<(), Error> {
            let memo = Memo {
                text: "t".into(),
                pinned: token == 1,
            };
            self.host.send("memo", &memo, &[])?;
            self.host.send("raw", &Raw(7), &[])
        }
    }

    #[test]
    fn new_messages_use_the_oldest_conversion_that_carries_them_unchanged() {
        let conversions = [vec![2], vec![1]];
        let plain = Memo {
            text: "hi".into(),
            pinned: false,
        };
        let (conversion, bytes) = plain.encode_oldest(&conversions).unwrap();
        assert_eq!(conversion, [1]);
        assert_eq!(bytes, to_compact(&MemoV1 { text: "hi".into() }).unwrap());
        // Conversion 1 would lose `pinned`: written in conversion 2.
        let pinned = Memo {
            text: "hi".into(),
            pinned: true,
        };
        let (conversion, bytes) = pinned.encode_oldest(&conversions).unwrap();
        assert_eq!(conversion, [2]);
        assert_eq!(Memo::decode(&[2], &bytes).unwrap(), pinned);
        // A community that lists only conversion 2 writes it.
        assert_eq!(plain.encode_oldest(&[vec![2]]).unwrap().0, [2]);
        // Hand-written payloads keep the first conversion.
        assert_eq!(Raw(7).encode_oldest(&conversions).unwrap().0, [2]);

        // Through the ABI: the API's JSON path and `Host::send` name the chosen conversion.
        let mut host = TestHost::<Memos>::new().unwrap();
        let (conversion, _) = host
            .from_json_raw("memo", &serde_json::json!({"text": "a", "pinned": false}))
            .unwrap();
        assert_eq!(conversion, [1]);
        let (conversion, _) = host
            .from_json_raw("memo", &serde_json::json!({"text": "a", "pinned": true}))
            .unwrap();
        assert_eq!(conversion, [2]);
        host.fire_timer(0).unwrap();
        host.fire_timer(1).unwrap();
        let sent: Vec<(String, Vec<u8>)> = host
            .sent()
            .into_iter()
            .map(|s| (s.meta, s.conversion))
            .collect();
        assert_eq!(
            sent,
            [
                ("memo".to_owned(), vec![1]),
                ("raw".to_owned(), vec![2]),
                ("memo".to_owned(), vec![2]),
                ("raw".to_owned(), vec![2]),
            ]
        );
        let memos: Vec<Memo> = host.sent_payloads("memo").unwrap();
        assert!(!memos[0].pinned && memos[1].pinned);
    }
}
