//! The store task: the one writer of messages. It takes every insert waiting in its queue (up
//! to the batch bound), commits them in one transaction, then acknowledges each insert with its
//! own outcomes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{NewMessage, Outcome, Store};

/// A batch of messages for the store task; `ack` gets what became of each.
#[derive(Debug)]
pub struct Insert {
    /// The messages.
    pub messages: Vec<NewMessage>,
    /// Answered after the transaction committed.
    pub ack: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

/// A sender of inserts to the store task.
pub type InsertSender = mpsc::Sender<Insert>;

/// Whether the store task's inserts fail now (a full disk, say), as the control API shows it.
#[derive(Debug, Default)]
pub struct Health {
    /// The last insert failed (no insert has succeeded since).
    pub failing: AtomicBool,
    /// Inserts (batches) that failed since the node started.
    pub failed_batches: AtomicU64,
}

/// The store task: commits every waiting insert (up to `batch` messages) in one transaction.
/// A failed insert is answered with its error (nothing of it is stored or acknowledged) and
/// counted in `health`; the change of state is logged once each way (failing, storing again),
/// not per insert.
pub async fn run(
    store: Store,
    mut inserts: mpsc::Receiver<Insert>,
    batch: usize,
    shutdown: CancellationToken,
    health: Arc<Health>,
) {
    loop {
        let first = tokio::select! {
            insert = inserts.recv() => match insert {
                Some(insert) => insert,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let mut count = first.messages.len();
        let mut pending = vec![first];
        while count < batch {
            match inserts.try_recv() {
                Ok(insert) => {
                    count += insert.messages.len();
                    pending.push(insert);
                }
                Err(_) => break,
            }
        }
        let mut all: Vec<NewMessage> = Vec::with_capacity(count);
        let mut acks = Vec::with_capacity(pending.len());
        for insert in pending {
            acks.push((insert.messages.len(), insert.ack));
            all.extend(insert.messages);
        }
        let result = store.insert(&all).await.map_err(|e| e.to_string());
        match &result {
            Err(error) => {
                health.failed_batches.fetch_add(1, Ordering::Relaxed);
                if health.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(%error, messages = all.len(), "storing messages failed again");
                } else {
                    tracing::error!(%error, messages = all.len(), "the store fails to write: messages are neither stored nor acknowledged until it stores again");
                }
            }
            Ok(_) => {
                if health.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        failed_batches = health.failed_batches.load(Ordering::Relaxed),
                        "the store writes again"
                    );
                }
            }
        }
        // Each insert gets its own outcomes, in order (moved, not copied: a conflict's carries
        // a packet).
        let (mut outcomes, failure) = match result {
            Ok(outcomes) => (outcomes.into_iter(), None),
            Err(error) => (Vec::new().into_iter(), Some(error)),
        };
        for (n, ack) in acks {
            let answer = match &failure {
                None => Ok(outcomes.by_ref().take(n).collect()),
                Some(error) => Err(error.clone()),
            };
            // The waiting plugin thread may be gone (shutdown); nothing to do then.
            let _ = ack.send(answer);
        }
    }
    store.close().await;
}

#[cfg(test)]
mod tests {
    use super::super::testing::{definition, post};
    use super::super::*;
    use super::*;

    #[tokio::test]
    async fn the_store_task_batches_and_acknowledges() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            rx,
            100,
            shutdown.clone(),
            Arc::default(),
        ));
        let mut acks = Vec::new();
        for gt in 1..=5u64 {
            let (ack, done) = oneshot::channel();
            let messages = vec![post(id, gt, vec![1, 2, 3])];
            tx.send(Insert { messages, ack }).await.unwrap();
            acks.push(done);
        }
        for done in acks {
            assert_eq!(done.await.unwrap().unwrap(), vec![Outcome::Stored]);
        }
        assert_eq!(store.count(id).await.unwrap(), 5);
        shutdown.cancel();
        task.await.unwrap();
    }
}
