//! A test-only community that exercises every kind of meta-message the host implements and
//! counts what reaches it, so that the host's black-box tests (`tests/`) and benchmarks
//! (`host/node/benches/`) can read through the control API what the host delivered. It is not a
//! template: a third party starts from `plugins/example` instead.
//!
//! Every check also runs on the messages the node creates, before they are sent (a refusal is
//! the API's 422). Its metas, policies and payloads are fixed: the benchmarks' numbers are comparable over time
//! only while they stay the same (the `example` and `post` metas are those the example community
//! had when the benchmarks were written).
//!
//! - `example` (1): member-authenticated, public, direct (sent once, not stored) to 10 random
//!   verified candidates. The check drops negative amounts; the handler counts what arrives and
//!   what arrives twice (`received`, `distinct`, `duplicates`, `total_amount`, `last_text`).
//! - `post` (2): the same payload, full-sync: stored by every node and spread by the bloom-filter
//!   synchronisation to nodes that join later (`posts`). A post created here with the text
//!   `send entry N` makes the plugin send an `entry` of amount N itself (`Host::send`).
//!   A post `read posts` makes it read this member's posts back through the host (`Host::read`,
//!   two per page: `read_posts`, `read_pages`). Restored posts (after a restart) are counted in
//!   `posts` and `restored` and are not acted on again.
//! - `profile` (3): last-sync with a history of 1: every node keeps only the newest profile of
//!   each member (`profiles`).
//! - `entry` (4): full-sync with sequence numbers: each member's entries form a log numbered 1,
//!   2, 3, …, which the host hands over in order, fetching any gap with missing-sequence first
//!   (`entries`; `entries_out_of_order` counts a host fault: there should be none). Its check
//!   drops negative amounts, so creating one tests that a refused numbered message leaves no
//!   gap.
//! - `reply` (5): answers a post; its check makes it wait until that post is here (the host
//!   fetches the post from the reply's sender with missing-message), so a reply is never handled
//!   before its post (`replies`; `replies_before_post` counts a host fault).
//! - `shout` (6): relay: not stored, sent to one random peer, which passes it on, so that it
//!   reaches peers the author never sent it to (`shouts`).
//! - `pact` (7): signed by two members (double-member): the second signs only pacts with a
//!   non-negative amount; last-sync with a history of 1 per pair of signers, so every node keeps
//!   the newest pact of each pair (`pacts`).
//! - `linear-post` (8): the same payload, full-sync, Linear: only members holding a permit for
//!   it in the permission timeline create it, and the others' wait for its proof
//!   (`linear_posts`); the stored ones that became hidden (undone, or denied by a revoke
//!   reaching back over them) and visible again (`linear_undone`, `linear_redone`).
//! - `deal` (9): double-member like `pact`, full-sync, with a payload whose end is open (a
//!   [`Deal`]'s `tail`): it exercises co-signing with changes and plugin proposals. As the
//!   co-signer (`Meta::cosign`) the probe refuses a negative amount, appends the bytes
//!   `+cosigned` to a deal whose text starts with `append`, replaces a deal whose text starts
//!   with `modify` by the same deal with the amount doubled and the text `modified`, and signs
//!   the others unchanged. As the proposer (`Meta::on_cosigned`) it publishes every answer
//!   except those whose text holds `decline` (`cosigned`: counts by answer, `declined`,
//!   `last_token`); `deals` counts the deals handled. A post created here with the text
//!   `propose KEYHEX IP:PORT TEXT` makes the plugin propose a deal `TEXT` (amount 1) to that
//!   co-signer (`Host::propose`; `proposed` counts the tokens, `propose_error` the last
//!   error), and a post `may META KEY_OR_ID_HEX GLOBAL_TIME` asks the host whether that member
//!   may create that meta then (`Host::may`; `may` shows the last question and its answer or
//!   error).
//! - `undoable-post` (10): the same payload, full-sync, Public and undoable: its author may undo
//!   it (undo-own) and a member holding `undo` on it anyone's (undo-other); the host tells the
//!   plugin when one is hidden or shown again (`undoable_posts`, `undone`, `redone`, and
//!   `last_undone`: the global time of the last message hidden).
//!
//! The duplicate and fault detectors remember up to [`MAX_TRACKED`] messages or authors, enough
//! for the largest benchmark.

use std::collections::{HashMap, HashSet};

use dispersy_plugin_api::prelude::*;
use dispersy_plugin_api::serde_json::{Value, json};

/// The master public key of the probe community; the community id
/// (`a2954e175d875cfdadc3a03557c72372038ec2b1`) is derived from it. Its secret key was thrown
/// away: the probe never signs permissions.
pub const MASTER_KEY: &str = "038ca28f49513f4a2d8d3f8ed95ba1bf1423e845070838e623e30e85bc0fb9313b";

/// Largest text, in UTF-8 bytes.
pub const MAX_TEXT: usize = 255;

/// How many messages (or authors) each detector remembers.
pub const MAX_TRACKED: usize = 1_000_000;

/// The payload of an `example` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Up to 255 UTF-8 bytes.
    pub text: String,
    /// Any 64-bit amount (the check drops negative ones).
    pub amount: i64,
}

impl Payload for Example {
    // Conversion 1: a one-byte length, the UTF-8 text, the amount as 8 bytes big-endian.
    fn encode(&self, _conversion: &[u8]) -> Result<Vec<u8>, Error> {
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

/// The payload of a `reply`: the post it answers (its author's public key in hexadecimal and its
/// global time) and a text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The post's author, 66 hexadecimal digits (a 33-byte public key).
    pub to: String,
    /// The post's global time.
    pub at: u64,
    /// Up to 255 UTF-8 bytes.
    pub text: String,
}

impl Payload for Reply {
    // Conversion 1: the post author's key (one-byte length), the post's global time (8 bytes
    // big-endian), the text (one-byte length).
    fn encode(&self, _conversion: &[u8]) -> Result<Vec<u8>, Error> {
        let to = parse_hex(&self.to)
            .filter(|key| key.len() == 33)
            .ok_or_else(|| Error::invalid("`to` must be a 33-byte public key in hexadecimal"))?;
        if self.text.len() > MAX_TEXT {
            return Err(Error::invalid(format!("text is {} bytes", self.text.len())));
        }
        Ok(Writer::new()
            .short_bytes(&to)?
            .u64(self.at)
            .short_bytes(self.text.as_bytes())?
            .finish())
    }

    fn decode(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        let mut reader = Reader::new(bytes);
        let to = reader.short_bytes()?;
        if to.len() != 33 {
            return Err(Error::invalid("`to` is not a 33-byte public key"));
        }
        let to = to_hex(to);
        let at = reader.u64()?;
        let text = std::str::from_utf8(reader.short_bytes()?)
            .map_err(|_| Error::invalid("text is not UTF-8"))?
            .to_owned();
        reader.finish()?;
        Ok(Reply { to, at, text })
    }
}

/// The payload of a `deal`: a text, an amount and an open end (bytes a co-signer appended,
/// shown in hexadecimal; empty when proposed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deal {
    /// Up to 255 UTF-8 bytes.
    pub text: String,
    /// Any 64-bit amount (the co-signer refuses negative ones).
    pub amount: i64,
    /// The appended bytes in hexadecimal (empty: none).
    #[serde(default)]
    pub tail: String,
}

impl Payload for Deal {
    // Conversion 1: a one-byte length, the UTF-8 text, the amount as 8 bytes big-endian, then
    // the tail's bytes up to the end (no length: appending to the encoded payload extends it).
    fn encode(&self, _conversion: &[u8]) -> Result<Vec<u8>, Error> {
        let tail =
            parse_hex(&self.tail).ok_or_else(|| Error::invalid("`tail` is not hexadecimal"))?;
        Ok(Writer::new()
            .short_str(&self.text)?
            .i64(self.amount)
            .raw(&tail)
            .finish())
    }

    fn decode(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        let mut reader = Reader::new(bytes);
        let text = reader.short_str()?.to_owned();
        let amount = reader.i64()?;
        let tail = to_hex(reader.rest());
        Ok(Deal { text, amount, tail })
    }
}

/// What the probe's proposals of deals came to (`Meta::on_cosigned`).
#[derive(Debug, Default)]
struct CosignedCounts {
    signed: u64,
    modified: u64,
    appended: u64,
    timeout: u64,
    declined: u64,
    last_token: Option<u64>,
}

/// One instance of the probe community in a host.
pub struct ProbeCommunity {
    host: Host,
    /// Messages from other members.
    received: u64,
    /// Messages this node created (handled locally too, as in the original).
    created: u64,
    /// Messages seen twice (same author and global time).
    duplicates: u64,
    /// Sum of the amounts received from others.
    total_amount: i128,
    /// (author, global time) of every message seen, up to `MAX_TRACKED`.
    seen: HashSet<(Vec<u8>, u64)>,
    last_text: Option<String>,
    /// Posts handled (created here or received).
    posts: u64,
    /// Profiles handled (created here or received).
    profiles: u64,
    /// Entries handled (created here or received).
    entries: u64,
    /// Entries whose number was not the next of their author's log (a host fault).
    entries_out_of_order: u64,
    /// The last entry number handled per author, up to `MAX_TRACKED` authors.
    logs: HashMap<Vec<u8>, u32>,
    /// (author, global time) of the posts handled, up to `MAX_TRACKED`.
    known_posts: HashSet<(Vec<u8>, u64)>,
    /// Replies handled.
    replies: u64,
    /// Replies handled before their post (a host fault; there should be none).
    replies_before_post: u64,
    /// Shouts handled (created here or received).
    shouts: u64,
    /// Pacts handled (co-signed here or received).
    pacts: u64,
    /// Linear posts handled (created here or received).
    linear_posts: u64,
    /// `undoable-post` messages handled.
    undoable_posts: u64,
    /// Stored messages the host reported hidden by an undo (or denied).
    undone: u64,
    /// Stored messages the host reported visible again.
    redone: u64,
    /// The global time of the last message reported hidden.
    last_undone: Option<u64>,
    /// Linear posts the host said became hidden (undone or denied), and visible again.
    linear_undone: u64,
    linear_redone: u64,
    /// Posts given back by the host's restore.
    restored: u64,
    /// Whether the host told this instance it is live (restore done).
    live: bool,
    /// What the last `read posts` found: this member's posts read back through the host.
    read_posts: Option<u64>,
    /// Pages that read took.
    read_pages: u64,
    /// Deals handled (co-signed here or received).
    deals: u64,
    /// Deals proposed through `Host::propose` (tokens received).
    proposed: u64,
    /// The last error of `Host::propose`.
    propose_error: Option<String>,
    /// What the proposals came to.
    cosigned: CosignedCounts,
    /// The last timeline question (`Host::may`) and its answer.
    may: Option<Value>,
}

impl ProbeCommunity {
    fn check_example(&mut self, message: &Message<Example>) -> Verdict {
        if message.payload.amount < 0 {
            return Verdict::Drop("amount must not be negative".into());
        }
        Verdict::Accept
    }

    fn on_example(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        for message in messages {
            let key = (
                message.authors.first().cloned().unwrap_or_default(),
                message.global_time,
            );
            if self.seen.contains(&key) {
                self.duplicates += 1;
            } else if self.seen.len() < MAX_TRACKED {
                self.seen.insert(key);
            }
            if message.source.is_none() {
                self.created += 1;
                continue;
            }
            self.received += 1;
            self.total_amount += i128::from(message.payload.amount);
            self.host.log(
                Level::Debug,
                format!(
                    "example from {}: {:?} ({})",
                    message.source.as_deref().unwrap_or("?"),
                    message.payload.text,
                    message.payload.amount
                ),
            );
            self.last_text = Some(message.payload.text);
        }
        Ok(())
    }
}

impl ProbeCommunity {
    fn on_linear_post(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.linear_posts += messages.len() as u64;
        Ok(())
    }

    fn on_undoable_post(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.undoable_posts += messages.len() as u64;
        Ok(())
    }

    fn on_undone(
        &mut self,
        undone: dispersy_plugin_api::sdk::Undone<Example>,
    ) -> Result<(), Error> {
        if undone.undone {
            self.undone += 1;
            self.last_undone = Some(undone.message.global_time);
        } else {
            self.redone += 1;
        }
        Ok(())
    }

    fn on_linear_undone(&mut self, notice: Undone<Example>) -> Result<(), Error> {
        if notice.undone {
            self.linear_undone += 1;
        } else {
            self.linear_redone += 1;
        }
        Ok(())
    }

    fn on_profile(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.profiles += messages.len() as u64;
        Ok(())
    }

    fn on_post(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.posts += messages.len() as u64;
        for message in messages {
            // "send entry N" posted here: the plugin itself sends an entry of amount N (a
            // negative one is refused by its own check, before anything is sent).
            if message.source.is_none()
                && let Some(amount) = message.payload.text.strip_prefix("send entry ")
                && let Ok(amount) = amount.parse::<i64>()
            {
                let entry = Example {
                    text: format!("sent entry {amount}"),
                    amount,
                };
                self.host.send("entry", &entry, &[])?;
            }
            // "read posts" posted here: read this member's posts up to this one back through
            // the host, two per page.
            if message.source.is_none() && message.payload.text == "read posts" {
                self.read_my_posts(message.global_time)?;
            }
            if message.source.is_none()
                && let Some(words) = message.payload.text.strip_prefix("propose ")
            {
                self.propose_deal(words);
            }
            if message.source.is_none()
                && let Some(words) = message.payload.text.strip_prefix("may ")
            {
                self.ask_may(words);
            }
            if self.known_posts.len() < MAX_TRACKED {
                let author = message.authors.first().cloned().unwrap_or_default();
                self.known_posts.insert((author, message.global_time));
            }
        }
        Ok(())
    }

    /// Restoring posts: counted and remembered like handled ones, without acting on their
    /// text (a restored `send entry N` was sent when it was first handled).
    fn restore_posts(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.posts += messages.len() as u64;
        self.restored += messages.len() as u64;
        for message in messages {
            if self.known_posts.len() < MAX_TRACKED {
                let author = message.authors.first().cloned().unwrap_or_default();
                self.known_posts.insert((author, message.global_time));
            }
        }
        Ok(())
    }

    /// Counts this member's posts up to `until` (global time) through [`Host::read`].
    fn read_my_posts(&mut self, until: u64) -> Result<(), Error> {
        let filter = Filter {
            member: Some(self.host.member()),
            global_time: 0..=until,
            limit: 2,
        };
        let (mut count, mut pages, mut after) = (0, 0, 0);
        loop {
            let page = self.host.read::<Example>(2, &filter, after)?;
            count += page.messages.len() as u64;
            pages += 1;
            after = page.next;
            if page.done {
                break;
            }
        }
        self.read_posts = Some(count);
        self.read_pages = pages;
        Ok(())
    }

    /// A reply waits for its post (the host fetches it).
    fn check_reply(&mut self, message: &Message<Reply>) -> Verdict {
        let Some(to) = parse_hex(&message.payload.to) else {
            return Verdict::Drop("bad post author".into());
        };
        if self.known_posts.contains(&(to.clone(), message.payload.at)) {
            Verdict::Accept
        } else {
            Verdict::WaitForMessage {
                member: to,
                global_time: message.payload.at,
            }
        }
    }

    /// `propose KEYHEX IP:PORT TEXT`: proposes a deal `TEXT` of amount 1 to that co-signer.
    fn propose_deal(&mut self, words: &str) {
        let mut parts = words.splitn(3, ' ');
        let (Some(key), Some(address), Some(text)) = (parts.next(), parts.next(), parts.next())
        else {
            self.propose_error = Some("usage: propose KEYHEX IP:PORT TEXT".into());
            return;
        };
        let Some(key) = parse_hex(key) else {
            self.propose_error = Some("the co-signer's key is not hexadecimal".into());
            return;
        };
        let deal = Deal {
            text: text.to_owned(),
            amount: 1,
            tail: String::new(),
        };
        match self.host.propose("deal", &deal, &key, address, &[]) {
            Ok(token) => {
                self.proposed += 1;
                self.cosigned.last_token = Some(token);
            }
            Err(error) => self.propose_error = Some(error.to_string()),
        }
    }

    /// `may META KEY_OR_ID_HEX GLOBAL_TIME`: asks the host's timeline, keeps the answer.
    fn ask_may(&mut self, words: &str) {
        let parts: Vec<&str> = words.split(' ').collect();
        let answer = match parts.as_slice() {
            [meta, member, global_time] => match (parse_hex(member), global_time.parse::<u64>()) {
                (Some(member), Ok(global_time)) => {
                    match self.host.may(meta, &member, global_time) {
                        Ok(may) => json!({ "meta": meta, "answer": may }),
                        Err(error) => json!({ "meta": meta, "error": error.to_string() }),
                    }
                }
                _ => json!({ "error": "bad member or global time" }),
            },
            _ => json!({ "error": "usage: may META KEY_OR_ID_HEX GLOBAL_TIME" }),
        };
        self.may = Some(answer);
    }

    /// The co-signer's answer to a deal another member proposes.
    fn cosign_deal(&mut self, message: &Message<Deal>) -> Cosign<Deal> {
        let deal = &message.payload;
        if deal.amount < 0 {
            Cosign::Refuse
        } else if deal.text.starts_with("append") {
            Cosign::Append(b"+cosigned".to_vec())
        } else if deal.text.starts_with("modify") {
            Cosign::Modify(Deal {
                text: "modified".into(),
                amount: deal.amount.saturating_mul(2),
                tail: String::new(),
            })
        } else {
            Cosign::Sign
        }
    }

    /// The proposer's decision on the co-signer's answer: publish unless the text declines.
    fn on_cosigned_deal(&mut self, token: u64, answer: Cosigned<Deal>) -> bool {
        self.cosigned.last_token = Some(token);
        match answer.answer {
            Answer::Signed => self.cosigned.signed += 1,
            Answer::Modified => self.cosigned.modified += 1,
            Answer::Appended => self.cosigned.appended += 1,
            Answer::Timeout => self.cosigned.timeout += 1,
        }
        let declines = answer
            .payload
            .as_ref()
            .is_none_or(|deal| deal.text.contains("decline"));
        if declines && answer.answer != Answer::Timeout {
            self.cosigned.declined += 1;
        }
        !declines
    }

    fn on_deal(&mut self, messages: Vec<Message<Deal>>) -> Result<(), Error> {
        self.deals += messages.len() as u64;
        Ok(())
    }

    fn allow_pact(&mut self, message: &Message<Example>) -> bool {
        message.payload.amount >= 0
    }

    fn on_pact(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.pacts += messages.len() as u64;
        Ok(())
    }

    fn on_shout(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        self.shouts += messages.len() as u64;
        Ok(())
    }

    fn on_reply(&mut self, messages: Vec<Message<Reply>>) -> Result<(), Error> {
        for message in messages {
            self.replies += 1;
            let post = (
                parse_hex(&message.payload.to).unwrap_or_default(),
                message.payload.at,
            );
            if !self.known_posts.contains(&post) {
                self.replies_before_post += 1;
            }
        }
        Ok(())
    }

    fn on_entry(&mut self, messages: Vec<Message<Example>>) -> Result<(), Error> {
        for message in messages {
            self.entries += 1;
            let author = message.authors.first().cloned().unwrap_or_default();
            let number = message.sequence_number.unwrap_or(0);
            let last = self.logs.get(&author).copied().unwrap_or(0);
            if number != last + 1 {
                self.entries_out_of_order += 1;
            }
            if self.logs.len() < MAX_TRACKED || self.logs.contains_key(&author) {
                self.logs.insert(author, number.max(last));
            }
        }
        Ok(())
    }
}

impl Community for ProbeCommunity {
    fn definition() -> Definition<Self> {
        Definition::new("probe", env!("CARGO_PKG_VERSION"), MASTER_KEY)
            .conversion(&[1])
            .meta(
                Meta::<Self, Example>::new(1, "example")
                    .authentication(Authentication::Member)
                    .resolution(Resolution::Public)
                    .distribution(Distribution::Direct)
                    .destination(Destination::Community { node_count: 10 })
                    .priority(128)
                    .check(Self::check_example)
                    .handle(Self::on_example),
            )
            .meta(
                Meta::<Self, Example>::new(3, "profile")
                    .distribution(Distribution::LastSync {
                        history: 1,
                        order: Order::Descending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .check(Self::check_example)
                    .handle(Self::on_profile),
            )
            .meta(
                Meta::<Self, Example>::new(2, "post")
                    .distribution(Distribution::FullSync {
                        sequence_numbers: false,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .check(Self::check_example)
                    .handle(Self::on_post)
                    .restore(Self::restore_posts),
            )
            .meta(
                Meta::<Self, Example>::new(4, "entry")
                    .distribution(Distribution::FullSync {
                        sequence_numbers: true,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .check(Self::check_example)
                    .handle(Self::on_entry),
            )
            .meta(
                Meta::<Self, Reply>::new(5, "reply")
                    .distribution(Distribution::FullSync {
                        sequence_numbers: false,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .check(Self::check_reply)
                    .handle(Self::on_reply),
            )
            .meta(
                Meta::<Self, Example>::new(6, "shout")
                    .distribution(Distribution::Relay)
                    .destination(Destination::Community { node_count: 1 })
                    .check(Self::check_example)
                    .handle(Self::on_shout),
            )
            .meta(
                Meta::<Self, Example>::new(7, "pact")
                    .authentication(Authentication::DoubleMember)
                    .distribution(Distribution::LastSync {
                        history: 1,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .check(Self::check_example)
                    .allow_signature(Self::allow_pact)
                    .handle(Self::on_pact),
            )
            .meta(
                Meta::<Self, Example>::new(8, "linear-post")
                    .resolution(Resolution::Linear)
                    .distribution(Distribution::FullSync {
                        sequence_numbers: false,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .check(Self::check_example)
                    .handle(Self::on_linear_post)
                    .on_undone(Self::on_linear_undone),
            )
            .meta(
                Meta::<Self, Deal>::new(9, "deal")
                    .authentication(Authentication::DoubleMember)
                    .distribution(Distribution::FullSync {
                        sequence_numbers: false,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .cosign(Self::cosign_deal)
                    .on_cosigned(Self::on_cosigned_deal)
                    .handle(Self::on_deal),
            )
            .meta(
                Meta::<Self, Example>::new(10, "undoable-post")
                    .distribution(Distribution::FullSync {
                        sequence_numbers: false,
                        order: Order::Ascending,
                    })
                    .destination(Destination::Community { node_count: 10 })
                    .undoable()
                    .check(Self::check_example)
                    .handle(Self::on_undoable_post)
                    .on_undone(Self::on_undone),
            )
    }

    fn create(host: Host) -> Result<Self, Error> {
        host.log(Level::Info, "probe community started");
        Ok(ProbeCommunity {
            host,
            received: 0,
            created: 0,
            duplicates: 0,
            total_amount: 0,
            seen: HashSet::new(),
            last_text: None,
            posts: 0,
            profiles: 0,
            entries: 0,
            entries_out_of_order: 0,
            logs: HashMap::new(),
            known_posts: HashSet::new(),
            replies: 0,
            replies_before_post: 0,
            shouts: 0,
            pacts: 0,
            linear_posts: 0,
            undoable_posts: 0,
            undone: 0,
            redone: 0,
            last_undone: None,
            linear_undone: 0,
            linear_redone: 0,
            restored: 0,
            live: false,
            read_posts: None,
            read_pages: 0,
            deals: 0,
            proposed: 0,
            propose_error: None,
            cosigned: CosignedCounts::default(),
            may: None,
        })
    }

    fn status(&self) -> Value {
        json!({
            "received": self.received,
            "created": self.created,
            "distinct": self.seen.len(),
            "duplicates": self.duplicates,
            "total_amount": self.total_amount.to_string(),
            "last_text": self.last_text,
            "posts": self.posts,
            "profiles": self.profiles,
            "entries": self.entries,
            "entries_out_of_order": self.entries_out_of_order,
            "replies": self.replies,
            "replies_before_post": self.replies_before_post,
            "shouts": self.shouts,
            "pacts": self.pacts,
            "linear_posts": self.linear_posts,
            "undoable_posts": self.undoable_posts,
            "undone": self.undone,
            "redone": self.redone,
            "last_undone": self.last_undone,
            "linear_undone": self.linear_undone,
            "linear_redone": self.linear_redone,
            "restored": self.restored,
            "live": self.live,
            "read_posts": self.read_posts,
            "read_pages": self.read_pages,
            "deals": self.deals,
            "proposed": self.proposed,
            "propose_error": self.propose_error,
            "cosigned": {
                "signed": self.cosigned.signed,
                "modified": self.cosigned.modified,
                "appended": self.cosigned.appended,
                "timeout": self.cosigned.timeout,
                "declined": self.cosigned.declined,
                "last_token": self.cosigned.last_token,
            },
            "may": self.may,
        })
    }

    fn on_live(&mut self) -> Result<(), Error> {
        self.live = true;
        Ok(())
    }
}

export_community!(ProbeCommunity);

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
            text: "x".repeat(256),
            amount: 1,
        };
        assert!(long.encode(&[1]).is_err());
        let bad_utf8 = Writer::new().short_bytes(&[0xff]).unwrap().i64(1).finish();
        assert!(Example::decode(&[1], &bad_utf8).is_err());
    }

    fn deal(text: &str, amount: i64) -> Deal {
        Deal {
            text: text.into(),
            amount,
            tail: String::new(),
        }
    }

    #[test]
    fn a_deal_keeps_what_a_co_signer_appends() {
        let bytes = deal("append", 3).encode(&[1]).unwrap();
        let mut appended = bytes.clone();
        appended.extend_from_slice(b"+cosigned");
        let read = Deal::decode(&[1], &appended).unwrap();
        assert_eq!(read.tail, to_hex(b"+cosigned"));
        assert_eq!(read.encode(&[1]).unwrap(), appended);
        assert_eq!(Deal::decode(&[1], &bytes).unwrap(), deal("append", 3));
    }

    #[test]
    fn the_co_signer_refuses_signs_modifies_or_appends() {
        use dispersy_plugin_api::testing::{TestHost, member_key};
        let mut host = TestHost::<ProbeCommunity>::new().unwrap();
        let proposal = |host: &TestHost<ProbeCommunity>, d: Deal| {
            let mut m = host.message("deal", &member_key(1), 5, d).unwrap();
            m.authors.push(member_key(0));
            m
        };
        let answer = |host: &mut TestHost<ProbeCommunity>, d: Deal| {
            let m = proposal(host, d);
            host.cosign(&m).unwrap()
        };
        assert_eq!(answer(&mut host, deal("no", -1)), Cosign::Refuse);
        assert_eq!(answer(&mut host, deal("plain", 1)), Cosign::Sign);
        assert_eq!(
            answer(&mut host, deal("append me", 1)),
            Cosign::Append(b"+cosigned".to_vec())
        );
        assert_eq!(
            answer(&mut host, deal("modify me", 2)),
            Cosign::Modify(deal("modified", 4))
        );
        // A pact still answers through allow_signature (no cosign function).
        let mut pact = host
            .message(
                "pact",
                &member_key(1),
                6,
                Example {
                    text: "p".into(),
                    amount: -1,
                },
            )
            .unwrap();
        pact.authors.push(member_key(0));
        assert_eq!(host.cosign(&pact).unwrap(), Cosign::Refuse);
        assert!(!host.allow_signature(&pact).unwrap());
    }

    #[test]
    fn a_post_proposes_a_deal_and_the_answer_is_published_unless_declined() {
        use dispersy_plugin_api::testing::{TestHost, member_key};
        let mut host = TestHost::<ProbeCommunity>::new().unwrap();
        let text = format!(
            "propose {} 192.0.2.9:7000 append this",
            to_hex(&member_key(2))
        );
        let mut post = host
            .message("post", &member_key(0), 1, Example { text, amount: 0 })
            .unwrap();
        post.source = None;
        host.handle(&[post]).unwrap();
        let proposals = host.proposals();
        assert_eq!(proposals.len(), 1, "{:?}", host.status());
        assert_eq!(proposals[0].meta, "deal");
        assert_eq!(proposals[0].co_signer, member_key(2));
        assert_eq!(proposals[0].address, "192.0.2.9:7000");
        let token = proposals[0].token;
        let mut appended = proposals[0].payload.clone();
        appended.extend_from_slice(b"+cosigned");
        assert!(
            host.cosigned(token, Answer::Appended, Some(appended))
                .unwrap()
        );
        let declined = deal("decline", 1).encode(&[1]).unwrap();
        assert!(
            !host
                .cosigned(token, Answer::Modified, Some(declined))
                .unwrap()
        );
        // A timeout is told (its answer is ignored by the host).
        host.cosigned(token, Answer::Timeout, None).unwrap();
        let status = host.status().unwrap();
        assert_eq!(status["proposed"], 1);
        assert_eq!(status["cosigned"]["appended"], 1);
        assert_eq!(status["cosigned"]["modified"], 1);
        assert_eq!(status["cosigned"]["declined"], 1);
        assert_eq!(status["cosigned"]["timeout"], 1);
        assert_eq!(status["cosigned"]["last_token"], token);
    }

    #[test]
    fn a_post_asks_the_timeline_question() {
        use dispersy_plugin_api::testing::{TestHost, member_key};
        let mut host = TestHost::<ProbeCommunity>::new().unwrap();
        host.set_may("linear-post", &member_key(3), false);
        let ask = |host: &mut TestHost<ProbeCommunity>, text: String| {
            let mut post = host
                .message("post", &member_key(0), 1, Example { text, amount: 0 })
                .unwrap();
            post.source = None;
            host.handle(&[post]).unwrap();
            host.status().unwrap()["may"].clone()
        };
        let denied = ask(
            &mut host,
            format!("may linear-post {} 7", to_hex(&member_key(3))),
        );
        assert_eq!(denied["answer"], false);
        let allowed = ask(
            &mut host,
            format!("may linear-post {} 7", to_hex(&member_key(4))),
        );
        assert_eq!(allowed["answer"], true);
        let unknown = ask(
            &mut host,
            format!("may nothing {} 7", to_hex(&member_key(4))),
        );
        assert!(
            unknown["error"].as_str().unwrap().contains("nothing"),
            "{unknown}"
        );
    }
}
