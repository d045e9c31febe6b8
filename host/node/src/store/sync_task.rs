//! The sync-read task: it runs the store reads the protocol task asks for (a sync query's rows,
//! the rows of a requested range, packets to send, packets answering missing-* requests, pruning,
//! the targets of undos and marking rows undone by undos)
//! and hands the results back as [`Command`]s. The protocol task never waits for SQLite; when
//! this task is busy the protocol task drops the read instead.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use dispersy_core::identity::CommunityId;

use super::Store;
use crate::command::Command;

/// A read of the store for synchronisation.
pub(crate) enum SyncJob {
    Query {
        community: CommunityId,
        row: i64,
        query: dispersy_core::sync::Query,
    },
    Rows {
        request: dispersy_core::node::RequestId,
        row: i64,
        range: dispersy_core::sync::Range,
        limit: usize,
        metas: Vec<(u32, dispersy_core::meta::SyncOrder, u64)>,
    },
    Prune {
        row: i64,
        meta: u32,
        below: u64,
    },
    Packets {
        request: dispersy_core::node::RequestId,
        ids: Vec<u64>,
    },
    Lookup {
        request: dispersy_core::node::RequestId,
        row: i64,
        lookup: dispersy_core::missing::Lookup,
        max_bytes: usize,
    },
    UndoTargets {
        community: CommunityId,
        row: i64,
        targets: Vec<(dispersy_core::undo::Target, Option<std::net::SocketAddr>)>,
    },
    Undone {
        community: CommunityId,
        row: i64,
        flips: Vec<dispersy_core::node::UndoFlip>,
    },
}

/// The sync task: runs the store reads the protocol task asks for and hands the results back.
pub(crate) async fn run(
    store: Store,
    mut jobs: mpsc::Receiver<SyncJob>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let command = match job {
            SyncJob::Query {
                community,
                row,
                query,
            } => match store.sync_query(row, query).await {
                Ok((right, left)) => Command::SyncQueried {
                    community,
                    right,
                    left,
                },
                Err(error) => {
                    tracing::warn!(%error, "sync query failed");
                    continue;
                }
            },
            SyncJob::Rows {
                request,
                row,
                range,
                limit,
                metas,
            } => match store.sync_rows(row, range, limit, &metas).await {
                Ok(rows) => Command::SyncRowsRead { request, rows },
                Err(error) => {
                    tracing::warn!(%error, "sync rows failed");
                    continue;
                }
            },
            SyncJob::Prune { row, meta, below } => {
                match store.prune(row, meta, below).await {
                    Ok(n) => tracing::debug!(meta, below, removed = n, "pruned"),
                    Err(error) => tracing::warn!(%error, "pruning failed"),
                }
                continue;
            }
            SyncJob::Lookup {
                request,
                row,
                lookup,
                max_bytes,
            } => match store.lookup(row, &lookup, max_bytes).await {
                Ok(packets) => Command::AnswerRead { request, packets },
                Err(error) => {
                    tracing::warn!(%error, "reading missing packets failed");
                    continue;
                }
            },
            SyncJob::UndoTargets {
                community,
                row,
                targets,
            } => {
                let keys: Vec<_> = targets
                    .iter()
                    .map(|(t, _)| (t.member, t.global_time))
                    .collect();
                match store.undo_targets(row, &keys).await {
                    Ok(metas) => Command::UndoTargetsRead {
                        community,
                        found: targets
                            .into_iter()
                            .zip(metas)
                            .map(|((target, source), meta)| (target, source, meta))
                            .collect(),
                    },
                    Err(error) => {
                        tracing::warn!(%error, "reading the targets of undos failed");
                        continue;
                    }
                }
            }
            SyncJob::Undone {
                community,
                row,
                flips,
            } => match store.mark_undone_by_undo(row, &flips).await {
                Ok(marked) if marked.is_empty() => continue,
                Ok(marked) => Command::UndoneMarked { community, marked },
                Err(error) => {
                    tracing::warn!(%error, "marking undone messages failed");
                    continue;
                }
            },
            SyncJob::Packets { request, ids } => match store.packets(&ids).await {
                Ok(packets) => Command::PacketsRead { request, packets },
                Err(error) => {
                    tracing::warn!(%error, "reading packets failed");
                    continue;
                }
            },
        };
        if commands.send(command).await.is_err() {
            break;
        }
    }
}
