//! Mutex locking that survives a panicked holder: the host's shared data behind mutexes are
//! counters, snapshots and queues that stay consistent between statements.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering the data if a thread panicked while holding it (the data here are
/// counters and snapshots, always consistent between statements).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
