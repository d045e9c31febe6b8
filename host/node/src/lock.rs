//! One process per data folder: an exclusive advisory lock (`flock`) on `DATA_DIR/lock`.
//!
//! Two processes on one folder would share the database and the identity, overwrite each
//! other's `endpoints.json` and lose acknowledged messages, so the second one is refused before
//! it touches anything else. The lock belongs to the open file: it lasts as long as the
//! [`DataLock`] and the kernel releases it on any exit, `kill -9` included, so a stale lock file
//! never blocks a restart. The holder writes its pid into the file, for the refusal's message
//! only; the lock, not the file's content, decides. (Advisory locks may not work on some network
//! file systems; keep data folders on local disks.)

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data folder.
pub const LOCK_FILE: &str = "lock";

/// Why the data folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the folder.
    #[error("data folder {} is in use by another dispersy process{}", dir.display(), holder(*pid))]
    Held {
        /// The data folder.
        dir: PathBuf,
        /// The holder's pid, as it wrote it into the lock file (if readable).
        pid: Option<u32>,
    },
    /// The lock file cannot be opened or locked.
    #[error("data folder {}: lock file {}: {source}", dir.display(), LOCK_FILE)]
    Io {
        /// The data folder.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
}

/// The exclusive lock of a data folder, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DataLock {
    /// The open, locked file: closing it releases the lock.
    _file: File,
}

/// Locks data folder `dir` (which must exist) for this process, or says which process holds it.
/// Never blocks.
pub fn acquire(dir: &Path) -> Result<DataLock, LockError> {
    let io = |source| LockError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid: read_pid(&mut file),
            });
        }
        Err(TryLockError::Error(source)) => return Err(io(source)),
    }
    // Ours now: record our pid for the message a second process shows. A failure here costs
    // only that message.
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    if let Err(error) = written {
        tracing::warn!(dir = %dir.display(), %error, "could not write the pid into the lock file");
    }
    Ok(DataLock { _file: file })
}

/// The pid the holder wrote, if the file holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_is_refused_naming_it_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).unwrap();
        let error = acquire(dir.path()).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, LockError::Held { pid: Some(pid), .. } if pid == std::process::id()),
            "{error:?}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        drop(first);
        let again = acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let error = acquire(&gone).unwrap_err();
        assert!(matches!(error, LockError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("gone"), "{error}");
    }
}
