//! The store task: the one writer of messages. It takes every insert waiting in its queue (up
//! to the batch bound), commits them in one transaction, then acknowledges each insert with its
//! own outcomes.

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

/// The store task: commits every waiting insert (up to `batch` messages) in one transaction.
pub async fn run(
    store: Store,
    mut inserts: mpsc::Receiver<Insert>,
    batch: usize,
    shutdown: CancellationToken,
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
        if let Err(error) = &result {
            tracing::error!(%error, messages = all.len(), "storing messages failed");
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
        let task = tokio::spawn(run(store.clone(), rx, 100, shutdown.clone()));
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
