//! The job queue of a community thread: bounded in count (`limits.plugin_queue`), its memory
//! taken as jobs arrive and given back as they are done.
//!
//! std's `sync_channel(bound)` allocates every slot up front: at the default bound of 1,024
//! jobs of 48 bytes, 48 KiB for each community, even an idle one (measured by the `hosted`
//! bench: almost half of what an idle community cost). This queue is std's unbounded channel,
//! which allocates in small blocks as it fills, behind a count that refuses a job once `bound`
//! are queued: the same [`TrySendError`] as a full `sync_channel`, never a wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvError, RecvTimeoutError, TryRecvError, TrySendError};
use std::time::Duration;

/// A queue holding at most `bound` values: its two ends.
pub fn bounded<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let (sender, receiver) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            inner: sender,
            queued: queued.clone(),
            bound,
        },
        Receiver {
            inner: receiver,
            queued,
        },
    )
}

/// The sending end (cloned for each producer).
pub struct Sender<T> {
    inner: mpsc::Sender<T>,
    queued: Arc<AtomicUsize>,
    bound: usize,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            inner: self.inner.clone(),
            queued: self.queued.clone(),
            bound: self.bound,
        }
    }
}

impl<T> Sender<T> {
    /// Queues `value` unless `bound` values are queued already ([`TrySendError::Full`]) or the
    /// receiver is gone ([`TrySendError::Disconnected`]). Never waits.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.bound).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(TrySendError::Full(value));
        }
        self.inner.send(value).map_err(|error| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(error.0)
        })
    }
}

/// The receiving end.
pub struct Receiver<T> {
    inner: mpsc::Receiver<T>,
    queued: Arc<AtomicUsize>,
}

impl<T> Receiver<T> {
    /// The next value, waiting for one; an error once every sender is gone and the queue is
    /// empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.inner.recv().inspect(|_| self.taken())
    }

    /// The next value, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.inner.recv_timeout(timeout).inspect(|_| self.taken())
    }

    /// The next value if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.inner.try_recv().inspect(|_| self.taken())
    }

    fn taken(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_refuses_beyond_its_bound_and_takes_again_once_values_are_taken() {
        let (sender, receiver) = bounded(2);
        let other = sender.clone();
        sender.try_send(1).unwrap();
        other.try_send(2).unwrap();
        assert!(matches!(sender.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(receiver.try_recv(), Ok(1));
        other.try_send(4).unwrap();
        assert!(matches!(other.try_send(5), Err(TrySendError::Full(5))));
        assert_eq!(receiver.recv(), Ok(2));
        assert_eq!(
            receiver.recv_timeout(Duration::from_millis(1)),
            Ok(4),
            "in order"
        );
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
        drop(receiver);
        assert!(matches!(
            sender.try_send(6),
            Err(TrySendError::Disconnected(6))
        ));
        // A refused send gave its slot back: with a receiver, the bound is whole again.
        let (sender, receiver) = bounded(1);
        sender.try_send(7).unwrap();
        assert_eq!(receiver.try_recv(), Ok(7));
        sender.try_send(8).unwrap();
        assert!(matches!(sender.try_send(9), Err(TrySendError::Full(9))));
    }

    #[test]
    fn a_bound_of_zero_refuses_everything() {
        let (sender, _receiver) = bounded(0);
        assert!(matches!(sender.try_send(1), Err(TrySendError::Full(1))));
    }
}
