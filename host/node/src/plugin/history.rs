//! A community's stored history as its plugin sees it: the pages of a restore and of
//! [`HostApi::read`](dispersy_plugin_api::abi::HostApi::read). Reads run on the community's own
//! thread and wait for SQLite through the runtime, bounded by a timeout; they are refused on a
//! tokio thread, so a plugin cannot block an async task with them.

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RResult, RVec};
use dispersy_core::identity::{MemberId, PublicKey};
use dispersy_core::wire::SignedMessage;
use dispersy_plugin_api::abi::{self, PluginError, RawMessage, ReadPage, ReadQuery};

use crate::store::{HistoryQuery, Span, Store, StoredMessage};

/// Reads of a community's stored messages, in row-id order, and the one deletion its own
/// thread orders (a destroy-community's).
pub trait History: Send + Sync {
    /// The rows of `community` matching `query`, or why they could not be read (one line).
    fn page(&self, community: i64, query: &HistoryQuery) -> Result<Vec<StoredMessage>, String>;

    /// The stored rows among `ids` (hidden or not), in their order; ids no longer stored are
    /// left out. Without an implementation: an error (nothing is told).
    fn rows(&self, ids: &[i64]) -> Result<Vec<StoredMessage>, String> {
        let _ = ids;
        Err("this history reads no rows by id".into())
    }

    /// Deletes what a destroy-community does not keep of `community` ([`Store::destroy`]:
    /// with `keep`, all but those (first author, global time); without, all above `above`);
    /// returns how many, or why not (one line). Without a store: refused.
    fn destroy(
        &self,
        community: i64,
        keep: Option<&[(MemberId, u64)]>,
        above: u64,
    ) -> Result<u64, String> {
        let _ = (community, keep, above);
        Err("this community has no store".into())
    }

    /// Sets (`denied`) or clears the denied bit of the rows of `span` (`Store::deny_range`,
    /// durable first), then hands the ids of the rows whose visibility flipped to `on_page`, one
    /// page of at most `page` at a time, each read between two calls (`on_page` may use this
    /// history). Not bounded by the read timeout: the flags must be written. Without an
    /// implementation: an error.
    fn deny(
        &self,
        span: &Span,
        denied: bool,
        page: usize,
        on_page: &mut dyn FnMut(Vec<i64>),
    ) -> Result<(), String> {
        let _ = (span, denied, page, on_page);
        Err("this history writes no flags".into())
    }
}

/// [`History`] over the SQLite store, driven from a plain thread through `runtime`.
pub struct StoreHistory {
    /// The store.
    pub store: Store,
    /// The runtime the store's pool lives on.
    pub runtime: tokio::runtime::Handle,
    /// Longest one page may take.
    pub timeout: Duration,
}

impl StoreHistory {
    /// Runs the store read `read` from this plain thread, under the timeout.
    fn wait<T>(
        &self,
        read: impl Future<Output = Result<T, crate::store::StoreError>>,
    ) -> Result<T, String> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err("store reads are refused on the host's async tasks".into());
        }
        self.runtime.block_on(async {
            match tokio::time::timeout(self.timeout, read).await {
                Ok(Ok(rows)) => Ok(rows),
                Ok(Err(error)) => Err(format!("reading the store failed: {error}")),
                Err(_) => Err(format!(
                    "reading the store took longer than {} ms",
                    self.timeout.as_millis()
                )),
            }
        })
    }
}

impl History for StoreHistory {
    fn page(&self, community: i64, query: &HistoryQuery) -> Result<Vec<StoredMessage>, String> {
        self.wait(self.store.history(community, query))
    }

    fn rows(&self, ids: &[i64]) -> Result<Vec<StoredMessage>, String> {
        self.wait(self.store.rows(ids))
    }

    fn destroy(
        &self,
        community: i64,
        keep: Option<&[(MemberId, u64)]>,
        above: u64,
    ) -> Result<u64, String> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err("store writes are refused on the host's async tasks".into());
        }
        // No timeout: the community's thread waits for its deletion like for its inserts.
        self.runtime
            .block_on(self.store.destroy(community, keep, above))
            .map_err(|error| format!("deleting a destroyed community's messages failed: {error}"))
    }

    fn deny(
        &self,
        span: &Span,
        denied: bool,
        page: usize,
        on_page: &mut dyn FnMut(Vec<i64>),
    ) -> Result<(), String> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err("store writes are refused on the host's async tasks".into());
        }
        let failed =
            |error: crate::store::StoreError| format!("marking denied messages failed: {error}");
        let flips = self
            .runtime
            .block_on(self.store.deny_range(span, denied))
            .map_err(failed)?;
        // Page by page: only one page of ids is held, and `on_page` runs outside block_on.
        let mut after = (flips.marked.flipped > 0).then_some(i64::MIN);
        while let Some(cursor) = after {
            let ids = self
                .runtime
                .block_on(self.store.flipped_page(&flips, cursor, page))
                .map_err(failed)?;
            after = ids.last().copied().filter(|_| ids.len() >= page.max(1));
            if !ids.is_empty() {
                on_page(ids);
            }
        }
        self.runtime
            .block_on(self.store.forget(&flips))
            .map_err(failed)
    }
}

/// A stored row as the ABI hands it to a plugin (no source), or why it does not decode.
pub fn decode(row: &StoredMessage) -> Result<RawMessage, String> {
    SignedMessage::decode(&row.packet)
        .map(|signed| super::worker::raw_message(&signed.message, None))
        .map_err(|e| format!("stored message {} does not decode: {e}", row.id))
}

/// Answers [`HostApi::read`](dispersy_plugin_api::abi::HostApi::read) for the community at
/// store row `community`: at most `bound` messages (and at most `query.limit`). A row that
/// does not decode is left out (logged); the cursor still moves past it.
pub fn read(
    history: Option<&Arc<dyn History>>,
    community: i64,
    query: &ReadQuery,
    bound: u32,
) -> RResult<ReadPage, PluginError> {
    let refuse = |message: String| RResult::RErr(PluginError::new(abi::ERROR_HOST, message));
    let Some(history) = history else {
        return refuse("this community has no store".into());
    };
    let member = match query.member.len() {
        0 => None,
        20 => MemberId::from_slice(&query.member).ok(),
        _ => match PublicKey::from_bytes(&query.member) {
            Ok(key) => Some(key.member_id()),
            Err(_) => {
                return RResult::RErr(PluginError::new(
                    abi::ERROR_INVALID,
                    "read: member is neither a 33-byte public key nor a 20-byte member id",
                ));
            }
        },
    };
    let limit = query.limit.clamp(1, bound.max(1));
    let rows = match history.page(
        community,
        &HistoryQuery {
            meta: (!query.any_meta).then_some(query.meta),
            member,
            global_time_low: query.global_time_low,
            global_time_high: query.global_time_high,
            after: i64::try_from(query.after).unwrap_or(i64::MAX),
            limit,
        },
    ) {
        Ok(rows) => rows,
        Err(error) => return refuse(error),
    };
    let done = rows.len() < limit as usize;
    let next = rows
        .last()
        .map_or(query.after, |row| u64::try_from(row.id).unwrap_or(0));
    let mut messages = RVec::with_capacity(rows.len());
    for row in &rows {
        match decode(row) {
            Ok(raw) => messages.push(raw),
            Err(error) => tracing::warn!(%error, "left out of a plugin's read"),
        }
    }
    RResult::ROk(ReadPage {
        messages,
        next,
        done,
    })
}
