//! A moderated forum: the second real community type, built on the permission half of Dispersy.
//!
//! - `thread` (**linear**, full-sync, undoable): opening a thread needs a `permit` from the
//!   permission timeline: the founder grants it (and may let others grant it).
//! - `post` (**dynamic**, public at first, full-sync, undoable): anyone posts; the founder can
//!   switch the community to moderated mode (linear: only members holding `permit` post) and
//!   back with a dynamic-settings message, from a global time on. A post names its thread and,
//!   when it is an edit, the post it replaces: an author edits by undoing their own post
//!   (undo-own) and posting the new text.
//! - Moderators are members the founder granted `undo` on `post` (and `thread`): they undo
//!   anyone's posts (undo-other). Undone messages stay stored but are no longer synchronised;
//!   the host tells the plugin, which drops them from its state (a restart's restore leaves them
//!   out too), and puts them back if they are shown again.
//! - `vote` (public, **last-sync**, history 64): a member's 64 newest votes count; a newer vote
//!   on the same target replaces the older one.
//! - `endorse` (public, **double-member**, full-sync): a post's endorsement signed by two
//!   members; the co-signer may append a note of their own.
//!
//! Messages are named by their first author's public key (hex) and global time ([`Ref`]). The
//! plugin's state is a function of the visible stored messages: it is rebuilt by restore at
//! every start. Every table is bounded.

use std::collections::BTreeMap;

use dispersy_plugin_api::prelude::*;
use dispersy_plugin_api::serde_json::{Value, json};

/// The master public key of the forum type's own community. Forums are usually joined as
/// instances with a master key of their own (`dispersy keygen`, `dispersy join forum KEY`);
/// the holder of that key's secret founds the instance (config `founder_key`).
pub const MASTER_KEY: &str = "03aa77ebb11e006b137cdb86cd2710bf9ea79ff6eb506528ede8c2c3e78dbcab03";

/// Meta-message ids.
pub mod meta {
    /// A thread.
    pub const THREAD: u32 = 1;
    /// A post in a thread.
    pub const POST: u32 = 2;
    /// A vote on a thread or post.
    pub const VOTE: u32 = 3;
    /// A co-signed endorsement of a post.
    pub const ENDORSE: u32 = 4;
}

/// Longest thread title, in UTF-8 bytes.
pub const MAX_TITLE: usize = 200;
/// Longest thread or post body, in UTF-8 bytes.
pub const MAX_BODY: usize = 4_000;
/// Longest endorsement note, in UTF-8 bytes.
pub const MAX_NOTE: usize = 280;

/// Most threads, posts, votes and endorsements kept in memory (each table); beyond, new ones are
/// counted in `status.dropped` and not shown.
const MAX_ENTRIES: usize = 100_000;
/// Threads and posts per thread shown in the status.
const SHOWN: usize = 20;

/// A message of the community: its first author's 33-byte public key in hexadecimal and its
/// global time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ref {
    /// 66 hexadecimal digits.
    pub author: String,
    /// The message's global time.
    pub global_time: u64,
}

impl Ref {
    /// The reference of `message`.
    pub fn of<P>(message: &Message<P>) -> Ref {
        Ref {
            author: message.author_hex(),
            global_time: message.global_time,
        }
    }

    /// The author's key bytes; an error unless 33 bytes in hexadecimal.
    pub fn author_key(&self) -> Result<Vec<u8>, Error> {
        parse_hex(&self.author)
            .filter(|key| key.len() == 33)
            .ok_or_else(|| Error::invalid("a reference's author is not a 66-digit hex key"))
    }
}

/// Checks that `text` is at most `max` bytes.
fn bounded(what: &str, text: &str, max: usize) -> Result<(), Error> {
    if text.len() > max {
        return Err(Error::invalid(format!(
            "{what} is {} bytes, at most {max}",
            text.len()
        )));
    }
    Ok(())
}

/// The payload of `thread`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    /// 1..=[`MAX_TITLE`] bytes.
    pub title: String,
    /// Up to [`MAX_BODY`] bytes.
    pub body: String,
}

impl Compact for Thread {
    const CONVERSIONS: &'static [&'static [u8]] = &[&[1]];

    fn validate(&self) -> Result<(), Error> {
        if self.title.is_empty() {
            return Err(Error::invalid("a thread needs a title"));
        }
        bounded("title", &self.title, MAX_TITLE)?;
        bounded("body", &self.body, MAX_BODY)
    }
}

/// The payload of `post`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The thread it belongs to.
    pub thread: Ref,
    /// 1..=[`MAX_BODY`] bytes.
    pub body: String,
    /// For an edit: the author's earlier post it replaces (which its author undoes).
    #[serde(default)]
    pub replaces: Option<Ref>,
}

impl Compact for Post {
    const CONVERSIONS: &'static [&'static [u8]] = &[&[1]];

    fn validate(&self) -> Result<(), Error> {
        self.thread.author_key()?;
        if let Some(earlier) = &self.replaces {
            earlier.author_key()?;
        }
        if self.body.is_empty() {
            return Err(Error::invalid("a post needs a body"));
        }
        bounded("body", &self.body, MAX_BODY)
    }
}

/// The payload of `vote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The thread or post voted on.
    pub target: Ref,
    /// Up (`true`) or down.
    pub up: bool,
}

impl Compact for Vote {
    const CONVERSIONS: &'static [&'static [u8]] = &[&[1]];

    fn validate(&self) -> Result<(), Error> {
        self.target.author_key().map(|_| ())
    }
}

/// The payload of `endorse`: the post endorsed and the proposer's note, then the co-signer's
/// note, which the co-signer appends when it signs (empty when proposed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorse {
    /// The post endorsed.
    pub target: Ref,
    /// Up to [`MAX_NOTE`] bytes.
    pub note: String,
    /// The co-signer's note, up to [`MAX_NOTE`] bytes (appended by the co-signer).
    #[serde(default)]
    pub seconded: String,
}

impl Payload for Endorse {
    // Conversion 1: the target's 33-byte key, its global time (8 bytes big-endian), the note
    // (two-byte length), then the co-signer's note as UTF-8 up to the end: no length, so that
    // the co-signer's appended bytes extend the payload.
    fn encode(&self, conversion: &[u8]) -> Result<Vec<u8>, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        bounded("note", &self.note, MAX_NOTE)?;
        bounded("seconded", &self.seconded, MAX_NOTE)?;
        Ok(Writer::new()
            .raw(&self.target.author_key()?)
            .u64(self.target.global_time)
            .long_str(&self.note)?
            .raw(self.seconded.as_bytes())
            .finish())
    }

    // Bytes from the network: every failure is an error, never a panic.
    fn decode(conversion: &[u8], bytes: &[u8]) -> Result<Self, Error> {
        if conversion != [1] {
            return Err(Error::invalid("unknown conversion"));
        }
        let author = bytes
            .get(..33)
            .ok_or_else(|| Error::invalid("an endorsement is shorter than its target"))?;
        let mut reader = Reader::new(&bytes[33..]);
        let global_time = reader.u64()?;
        let note = reader.long_str()?.to_owned();
        let seconded = std::str::from_utf8(reader.rest())
            .map_err(|_| Error::invalid("the co-signer's note is not UTF-8"))?
            .to_owned();
        let endorse = Endorse {
            target: Ref {
                author: to_hex(author),
                global_time,
            },
            note,
            seconded,
        };
        bounded("note", &endorse.note, MAX_NOTE)?;
        bounded("seconded", &endorse.seconded, MAX_NOTE)?;
        Ok(endorse)
    }
}

/// A thread as the forum keeps it.
struct ThreadState {
    title: String,
}

/// A post as the forum keeps it.
struct PostState {
    thread: Ref,
    body: String,
    replaces: Option<Ref>,
}

/// An endorsement as the forum keeps it.
struct EndorseState {
    target: Ref,
    endorser: String,
    note: String,
    seconded: String,
}

/// One forum instance.
pub struct Forum {
    host: Host,
    threads: BTreeMap<Ref, ThreadState>,
    posts: BTreeMap<Ref, PostState>,
    /// (voter, target) -> (global time, up) of the voter's newest vote on the target.
    votes: BTreeMap<(String, Ref), (u64, bool)>,
    endorsements: BTreeMap<Ref, EndorseState>,
    /// Messages not kept because a table was full.
    dropped: u64,
    /// Messages hidden (undone or denied) since this instance started, as the host reported.
    undone: u64,
    /// Messages shown again since this instance started.
    redone: u64,
}

/// Inserts into a bounded table; counts what does not fit.
fn insert_bounded<K: Ord, V>(table: &mut BTreeMap<K, V>, key: K, value: V, dropped: &mut u64) {
    if table.len() >= MAX_ENTRIES && !table.contains_key(&key) {
        *dropped += 1;
        return;
    }
    table.insert(key, value);
}

impl Forum {
    /// A post waits for its thread (and an edit for the post it replaces) to be stored; an edit
    /// must replace a post of the same author.
    fn check_post(&mut self, message: &Message<Post>) -> Verdict {
        let post = &message.payload;
        if let Some(earlier) = &post.replaces {
            if earlier.author != message.author_hex() {
                return Verdict::Drop("an edit replaces a post of its own author".into());
            }
            if earlier.global_time >= message.global_time {
                return Verdict::Drop("an edit replaces an older post".into());
            }
        }
        self.wait_for(&post.thread, &self.threads)
    }

    /// An endorsement waits for the post it endorses.
    fn check_endorse(&mut self, message: &Message<Endorse>) -> Verdict {
        self.wait_for(&message.payload.target, &self.posts)
    }

    /// Accept if `target` is known (stored and visible), else wait for it to be stored.
    fn wait_for<V>(&self, target: &Ref, table: &BTreeMap<Ref, V>) -> Verdict {
        if table.contains_key(target) {
            return Verdict::Accept;
        }
        match target.author_key() {
            Ok(member) => Verdict::WaitForMessage {
                member,
                global_time: target.global_time,
            },
            Err(e) => Verdict::Drop(e.message().to_owned()),
        }
    }

    fn on_thread(&mut self, messages: Vec<Message<Thread>>) -> Result<(), Error> {
        for m in messages {
            let state = ThreadState {
                title: m.payload.title.clone(),
            };
            insert_bounded(&mut self.threads, Ref::of(&m), state, &mut self.dropped);
        }
        Ok(())
    }

    fn on_post(&mut self, messages: Vec<Message<Post>>) -> Result<(), Error> {
        for m in messages {
            let r = Ref::of(&m);
            let state = PostState {
                thread: m.payload.thread,
                body: m.payload.body,
                replaces: m.payload.replaces,
            };
            insert_bounded(&mut self.posts, r, state, &mut self.dropped);
        }
        Ok(())
    }

    fn on_vote(&mut self, messages: Vec<Message<Vote>>) -> Result<(), Error> {
        for m in messages {
            let key = (m.author_hex(), m.payload.target);
            let newer = self.votes.get(&key).is_none_or(|(t, _)| *t < m.global_time);
            if newer {
                let value = (m.global_time, m.payload.up);
                insert_bounded(&mut self.votes, key, value, &mut self.dropped);
            }
        }
        Ok(())
    }

    fn on_endorse(&mut self, messages: Vec<Message<Endorse>>) -> Result<(), Error> {
        for m in messages {
            let state = EndorseState {
                endorser: m.authors.get(1).map(|k| to_hex(k)).unwrap_or_default(),
                target: m.payload.target.clone(),
                note: m.payload.note.clone(),
                seconded: m.payload.seconded.clone(),
            };
            insert_bounded(
                &mut self.endorsements,
                Ref::of(&m),
                state,
                &mut self.dropped,
            );
        }
        Ok(())
    }

    /// As co-signer of an endorsement: sign it if the endorsed post is known and visible here,
    /// appending this member's own note (its key's first 8 digits: "seconded by …").
    fn second(&mut self, message: &Message<Endorse>) -> Cosign<Endorse> {
        let visible = self.posts.contains_key(&message.payload.target);
        if !visible || !message.payload.seconded.is_empty() {
            return Cosign::Refuse;
        }
        let me = to_hex(&self.host.member());
        Cosign::Append(format!("seconded by {}", &me[..me.len().min(8)]).into_bytes())
    }

    /// As proposer: publish the co-signer's answer if it signed as proposed or only appended
    /// its note.
    fn seconded(&mut self, _token: u64, answer: Cosigned<Endorse>) -> bool {
        matches!(answer.answer, Answer::Signed | Answer::Appended) && answer.payload.is_some()
    }

    /// A thread became hidden (undone, or denied by the timeline): it goes, as if it had
    /// never been stored (a restart's restore leaves it out too); visible again: it comes back.
    fn on_thread_undone(&mut self, notice: Undone<Thread>) -> Result<(), Error> {
        self.count(notice.undone);
        if notice.undone {
            self.threads.remove(&Ref::of(&notice.message));
            Ok(())
        } else {
            self.on_thread(vec![notice.message])
        }
    }

    /// A post became hidden or visible again (see [`Forum::on_thread_undone`]).
    fn on_post_undone(&mut self, notice: Undone<Post>) -> Result<(), Error> {
        self.count(notice.undone);
        if notice.undone {
            self.posts.remove(&Ref::of(&notice.message));
            Ok(())
        } else {
            self.on_post(vec![notice.message])
        }
    }

    /// Counts what the host reported.
    fn count(&mut self, undone: bool) {
        if undone {
            self.undone += 1;
        } else {
            self.redone += 1;
        }
    }

    /// The score of `target`: up votes minus down votes.
    fn score(&self, target: &Ref) -> i64 {
        self.votes
            .iter()
            .filter(|((_, t), _)| t == target)
            .map(|(_, (_, up))| if *up { 1 } else { -1 })
            .sum()
    }

    /// A thread's visible posts, oldest first, at most [`SHOWN`].
    fn thread_posts(&self, thread: &Ref) -> Vec<Value> {
        self.posts
            .iter()
            .filter(|(_, p)| &p.thread == thread)
            .take(SHOWN)
            .map(|(r, p)| {
                let endorsed: Vec<Value> = self
                    .endorsements
                    .values()
                    .filter(|e| &e.target == r)
                    .map(|e| json!({"by": e.endorser, "note": e.note, "seconded": e.seconded}))
                    .collect();
                json!({
                    "ref": r,
                    "body": p.body,
                    "edited": p.replaces.is_some(),
                    "score": self.score(r),
                    "endorsed": endorsed,
                })
            })
            .collect()
    }
}

impl Community for Forum {
    fn definition() -> Definition<Self> {
        let full_sync = Distribution::FullSync {
            sequence_numbers: false,
            order: Order::Ascending,
        };
        Definition::new("forum", env!("CARGO_PKG_VERSION"), MASTER_KEY)
            .conversion(&[1])
            .meta(
                Meta::<Self, Thread>::new(meta::THREAD, "thread")
                    .resolution(Resolution::Linear)
                    .distribution(full_sync)
                    .undoable()
                    .handle(Self::on_thread)
                    .on_undone(Self::on_thread_undone),
            )
            .meta(
                Meta::<Self, Post>::new(meta::POST, "post")
                    .resolution(Resolution::Dynamic(vec![
                        StaticResolution::Public,
                        StaticResolution::Linear,
                    ]))
                    .distribution(full_sync)
                    .undoable()
                    .check(Self::check_post)
                    .handle(Self::on_post)
                    .on_undone(Self::on_post_undone),
            )
            .meta(
                Meta::<Self, Vote>::new(meta::VOTE, "vote")
                    .distribution(Distribution::LastSync {
                        history: 64,
                        order: Order::Descending,
                    })
                    .priority(64)
                    .handle(Self::on_vote),
            )
            .meta(
                Meta::<Self, Endorse>::new(meta::ENDORSE, "endorse")
                    .authentication(Authentication::DoubleMember)
                    .distribution(full_sync)
                    .check(Self::check_endorse)
                    .handle(Self::on_endorse)
                    .cosign(Self::second)
                    .on_cosigned(Self::seconded),
            )
    }

    fn create(host: Host) -> Result<Self, Error> {
        Ok(Forum {
            host,
            threads: BTreeMap::new(),
            posts: BTreeMap::new(),
            votes: BTreeMap::new(),
            endorsements: BTreeMap::new(),
            dropped: 0,
            undone: 0,
            redone: 0,
        })
    }

    fn status(&self) -> Value {
        let threads: Vec<Value> = self
            .threads
            .iter()
            .take(SHOWN)
            .map(|(r, t)| {
                json!({
                    "ref": r,
                    "title": t.title,
                    "score": self.score(r),
                    "posts": self.thread_posts(r),
                })
            })
            .collect();
        json!({
            "member": to_hex(&self.host.member()),
            "threads": threads,
            "counts": {
                "threads": self.threads.len(),
                "posts": self.posts.len(),
                "votes": self.votes.len(),
                "endorsements": self.endorsements.len(),
                "undone": self.undone,
                "redone": self.redone,
                "dropped": self.dropped,
            },
        })
    }
}

export_community!(Forum);

#[cfg(test)]
mod tests {
    use super::*;
    use dispersy_plugin_api::testing::{TestHost, member_key};

    fn thread(title: &str) -> Thread {
        Thread {
            title: title.into(),
            body: String::new(),
        }
    }

    fn post(thread: &Ref, body: &str, replaces: Option<Ref>) -> Post {
        Post {
            thread: thread.clone(),
            body: body.into(),
            replaces,
        }
    }

    #[test]
    fn threads_posts_edits_votes_and_restart() {
        let mut host = TestHost::<Forum>::new().unwrap();
        let (alice, bob) = (member_key(1), member_key(2));
        let t = host.message("thread", &alice, 5, thread("rules")).unwrap();
        let t_ref = Ref::of(&t);
        // A post of a thread not stored yet waits for it.
        let early = host
            .message("post", &bob, 6, post(&t_ref, "first!", None))
            .unwrap();
        assert_eq!(
            host.receive(early.clone()).unwrap(),
            Verdict::WaitForMessage {
                member: alice.clone(),
                global_time: 5
            }
        );
        assert_eq!(host.receive(t).unwrap(), Verdict::Accept);
        assert_eq!(host.receive(early.clone()).unwrap(), Verdict::Accept);
        // Bob edits: a new post replacing his own; Alice may not replace Bob's.
        let edit = host
            .message(
                "post",
                &bob,
                8,
                post(&t_ref, "second", Some(Ref::of(&early))),
            )
            .unwrap();
        assert_eq!(host.receive(edit).unwrap(), Verdict::Accept);
        let forged = host
            .message("post", &alice, 9, post(&t_ref, "x", Some(Ref::of(&early))))
            .unwrap();
        assert!(matches!(host.receive(forged).unwrap(), Verdict::Drop(_)));
        // Votes: the newer vote of a member on a target replaces the older.
        for (gt, up) in [(10, true), (11, false)] {
            let vote = Vote {
                target: t_ref.clone(),
                up,
            };
            host.receive(host.message("vote", &bob, gt, vote).unwrap())
                .unwrap();
        }
        let status = host.status().unwrap();
        assert_eq!(status["counts"]["posts"], 2);
        assert_eq!(status["threads"][0]["score"], -1);
        // The author's undo of the first post: the host hides it and tells the plugin.
        host.undone(&early, true, UndoReason::ByAuthor { global_time: 12 })
            .unwrap();
        let status = host.status().unwrap();
        assert_eq!(status["counts"]["posts"], 1);
        assert_eq!(status["counts"]["undone"], 1);
        // A restart rebuilds the same state from the store.
        host.restart().unwrap();
        let again = host.status().unwrap();
        assert_eq!(again["counts"]["posts"], 1);
        assert_eq!(again["threads"], status["threads"]);
        assert_eq!(again["threads"][0]["posts"][0]["edited"], true);
        // Shown again (its undo found invalid, say): it comes back.
        host.undone(&early, false, UndoReason::ByAuthor { global_time: 12 })
            .unwrap();
        assert_eq!(host.status().unwrap()["counts"]["posts"], 2);
    }

    #[test]
    fn an_endorsement_is_seconded_by_an_appended_note() {
        let mut host = TestHost::<Forum>::new().unwrap();
        let alice = member_key(1);
        let t = host.message("thread", &alice, 5, thread("t")).unwrap();
        let t_ref = Ref::of(&t);
        host.receive(t).unwrap();
        let p = host
            .message("post", &alice, 6, post(&t_ref, "good", None))
            .unwrap();
        let p_ref = Ref::of(&p);
        let endorse = Endorse {
            target: p_ref.clone(),
            note: "well said".into(),
            seconded: String::new(),
        };
        // Unknown post: refused.
        let early = host.message("endorse", &alice, 7, endorse.clone()).unwrap();
        assert_eq!(host.cosign(&early).unwrap(), Cosign::Refuse);
        host.receive(p).unwrap();
        let Cosign::Append(tail) = host.cosign(&early).unwrap() else {
            panic!("not appended");
        };
        // The appended bytes decode as the co-signer's note.
        let mut bytes = endorse.encode(&[1]).unwrap();
        bytes.extend_from_slice(&tail);
        let seconded = Endorse::decode(&[1], &bytes).unwrap();
        assert!(seconded.seconded.starts_with("seconded by "));
        assert_eq!(seconded.note, "well said");
        // Every truncation is an error or a shorter note, never a panic.
        for len in 0..bytes.len() {
            let _ = Endorse::decode(&[1], &bytes[..len]);
        }
    }

    #[test]
    fn payload_bounds_are_refused() {
        let r = Ref {
            author: "00".repeat(33),
            global_time: 1,
        };
        assert!(thread("").encode(&[1]).is_err());
        assert!(thread(&"x".repeat(MAX_TITLE + 1)).encode(&[1]).is_err());
        assert!(post(&r, "", None).encode(&[1]).is_err());
        let bad = Ref {
            author: "zz".into(),
            global_time: 1,
        };
        assert!(post(&bad, "x", None).encode(&[1]).is_err());
        let bytes = post(&r, "ok", None).encode(&[1]).unwrap();
        for len in 0..bytes.len() {
            assert!(Post::decode(&[1], &bytes[..len]).is_err());
        }
    }
}
