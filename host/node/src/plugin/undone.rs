//! Telling a plugin that stored messages became hidden (undone, denied) or visible again:
//! the [`Notice`]s its community thread turns into `CommunityApi::undone` calls.
//!
//! Whoever flips the rows in the store (`Store::mark`, `Store::mark_range`) queues a
//! [`Job::Undone`](super::Job::Undone) with the ids of the rows that flipped. The community's
//! thread reads their packets in pages of `limits.read_page` and calls `undone` once per page,
//! with each message decoded as restore hands it (no source). Notices run in queue order after
//! the jobs queued before them; the flip happened in the store when the notice was queued, so
//! an instance restored meanwhile may be told of a message its restore already left out (or
//! already had): a plugin's `undone` is idempotent per message. A plugin older than 0.2.2 has
//! the default `undone`, which does nothing. A panic in it takes the instance down like one
//! in `handle` (a restart, whose restore skips the hidden messages); an error is logged and
//! counted. A community without an instance (disabled, restarting) is told nothing: its next
//! restore reads the store as it is.

use abi_stable::std_types::RVec;
use dispersy_plugin_api::abi::{self, RawUndone};

/// Rows whose visibility flipped one way for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Their `sync.id`s.
    pub ids: Vec<i64>,
    /// `true`: they are hidden now; `false`: visible again.
    pub undone: bool,
    /// Why ([`Why`]): the reason that was set, or (visible again) the one that ended.
    pub why: Why,
}

/// The reason of a [`Notice`], as the ABI's [`abi::undone`] codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Undo-own by its author.
    ByAuthor {
        /// The undo's author (33-byte public key).
        by: Vec<u8>,
        /// The undo's global time.
        global_time: u64,
    },
    /// Undo-other by a member holding `undo` on its meta.
    ByOther {
        /// The undo's author (33-byte public key).
        by: Vec<u8>,
        /// The undo's global time.
        global_time: u64,
    },
    /// The permission timeline denies (or allows again) its author at its global time.
    Denied,
}

impl Why {
    /// `message` as the ABI's record of this change.
    pub fn raw(&self, message: abi::RawMessage, undone: bool) -> RawUndone {
        let (reason, by_member, by_global_time) = match self {
            Why::ByAuthor { by, global_time } => (abi::undone::BY_AUTHOR, by.clone(), *global_time),
            Why::ByOther { by, global_time } => (abi::undone::BY_OTHER, by.clone(), *global_time),
            Why::Denied => (abi::undone::DENIED, Vec::new(), 0),
        };
        RawUndone {
            message,
            undone,
            reason,
            by_member: RVec::from(by_member),
            by_global_time,
        }
    }
}
