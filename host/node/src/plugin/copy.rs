//! Private copies of plugin files: the host never maps the operator's file.
//!
//! A library is mapped into memory while it runs, so a file rewritten in place under a loaded
//! plugin (`cp new.so plugins/libx.so`) changes the code the host is executing and crashes it.
//! Before loading, the host therefore copies the file into its own folder (`DATA_DIR/plugins`),
//! named by the SHA-256 of its content (`<64 hex digits>.so`), written under a temporary name,
//! synced and renamed into place, and loads that copy. A copy is never written again once it has
//! its name (same name, same content), so the operator may overwrite, delete or rewrite their
//! file at any time. Copies the process has not loaded are deleted beyond a configured number
//! (`limits.plugin_copies`), oldest first; the data folder's lock ([`crate::lock`]) makes this
//! process the folder's only user.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The start of the name of a copy being written.
const TEMPORARY_PREFIX: &str = ".copying-";

/// The SHA-256 of a plugin file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A private copy of a plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateCopy {
    /// The content's hash.
    pub hash: ContentHash,
    /// The copy, `dir/<hash>.so`.
    pub path: PathBuf,
}

/// Why a plugin file could not be copied. The message is one line and names the file.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The operator's file cannot be read.
    #[error("plugin {path}: reading it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The copy cannot be written.
    #[error("plugin {path}: copying it into {}: {source}", dir.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The private folder.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The name of the copy of content `hash` in `dir`.
pub fn copy_path(dir: &Path, hash: ContentHash) -> PathBuf {
    dir.join(format!("{hash}{}", std::env::consts::DLL_SUFFIX))
}

/// Reads `reader` to its end, feeding every chunk to `sink`; returns the content's hash.
fn hash_stream(
    reader: &mut impl Read,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<ContentHash, (bool, std::io::Error)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((true, e)),
        };
        let chunk = buffer.get(..n).unwrap_or_default();
        hasher.update(chunk);
        sink(chunk).map_err(|e| (false, e))?;
    }
    Ok(ContentHash(hasher.finalize().into()))
}

/// The hash of the content of file `path`.
pub fn digest(path: &Path) -> Result<ContentHash, CopyError> {
    let read = |source| CopyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read)?;
    hash_stream(&mut file, |_| Ok(())).map_err(|(_, e)| read(e))
}

/// Copies file `path` into folder `dir` (created if needed, mode 0700) under the hash of its
/// content, unless a copy of that content is already there; returns the copy. The content is
/// read once, so the copy and its name always agree even if the file changes meanwhile.
pub fn private_copy(path: &Path, dir: &Path) -> Result<PrivateCopy, CopyError> {
    let write = |source| CopyError::Write {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        source,
    };
    let read = |source| CopyError::Read {
        path: path.to_path_buf(),
        source,
    };
    create_private_dir(dir).map_err(write)?;
    let mut source = File::open(path).map_err(read)?;
    // A temporary name (mode 0600) that no plugin scan and no copy lookup takes for a plugin.
    let mut temporary = tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .tempfile_in(dir)
        .map_err(write)?;
    let hash = hash_stream(&mut source, |chunk| temporary.write_all(chunk))
        .map_err(|(reading, e)| if reading { read(e) } else { write(e) })?;
    let copy = copy_path(dir, hash);
    if digest(&copy).is_ok_and(|existing| existing == hash) {
        // Already there (the temporary file is deleted on drop). Freshen it for the pruning.
        if let Ok(file) = File::options().write(true).open(&copy) {
            let _ = file.set_modified(SystemTime::now());
        }
        return Ok(PrivateCopy { hash, path: copy });
    }
    temporary.as_file().sync_all().map_err(write)?;
    temporary.persist(&copy).map_err(|e| write(e.error))?;
    // The rename is durable once the folder is synced; without it a crash may only cost a copy.
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(PrivateCopy { hash, path: copy })
}

/// Deletes from `dir` the copies not in `keep` beyond the `spare` most recently used, and
/// temporary files left by an interrupted copy; returns how many files it deleted. Call it only
/// while no copy is being written (the registry loads one file at a time).
pub fn prune(dir: &Path, keep: &HashSet<PathBuf>, spare: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut deleted = 0;
    let mut copies = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with(TEMPORARY_PREFIX) {
            if std::fs::remove_file(&path).is_ok() {
                deleted += 1;
            }
        } else if is_copy_name(name) && !keep.contains(&path) {
            let used = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            copies.push((used, path));
        }
    }
    copies.sort_by(|a, b| b.cmp(a));
    for (_, path) in copies.into_iter().skip(spare) {
        match std::fs::remove_file(&path) {
            Ok(()) => deleted += 1,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not delete an old plugin copy");
            }
        }
    }
    deleted
}

/// Whether `name` is a copy's name: 64 lowercase hex digits and the library suffix.
fn is_copy_name(name: &str) -> bool {
    name.strip_suffix(std::env::consts::DLL_SUFFIX)
        .is_some_and(|hash| {
            hash.len() == 64
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_copy_is_named_by_its_content_and_survives_changes_to_the_original() {
        let operator = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let private = data.path().join("plugins");
        let file = operator.path().join("libx.so");
        std::fs::write(&file, b"version one").unwrap();
        let first = private_copy(&file, &private).unwrap();
        assert_eq!(
            first.hash,
            ContentHash(Sha256::digest(b"version one").into())
        );
        assert_eq!(first.path, copy_path(&private, first.hash));
        assert_eq!(std::fs::read(&first.path).unwrap(), b"version one");
        assert_eq!(digest(&file).unwrap(), first.hash);

        // The same content again: the same copy, nothing new in the folder.
        assert_eq!(private_copy(&file, &private).unwrap(), first);
        // Overwritten in place and then deleted: the copy is untouched.
        std::fs::write(&file, b"version two").unwrap();
        let second = private_copy(&file, &private).unwrap();
        assert_ne!(second.hash, first.hash);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(std::fs::read(&first.path).unwrap(), b"version one");
        assert_eq!(std::fs::read(&second.path).unwrap(), b"version two");
        let names = std::fs::read_dir(&private).unwrap().count();
        assert_eq!(names, 2, "no temporary file left");

        // A damaged copy under the right name is replaced, not reused.
        std::fs::write(&first.path, b"damaged").unwrap();
        std::fs::write(&file, b"version one").unwrap();
        assert_eq!(private_copy(&file, &private).unwrap(), first);
        assert_eq!(std::fs::read(&first.path).unwrap(), b"version one");

        let error = private_copy(&operator.path().join("libgone.so"), &private).unwrap_err();
        assert!(error.to_string().contains("libgone.so"), "{error}");
    }

    #[test]
    fn pruning_keeps_the_loaded_copies_and_the_newest_spares() {
        let operator = tempfile::tempdir().unwrap();
        let private = tempfile::tempdir().unwrap();
        let file = operator.path().join("libx.so");
        let mut copies = Vec::new();
        for n in 0..5u64 {
            std::fs::write(&file, format!("version {n}")).unwrap();
            let copy = private_copy(&file, private.path()).unwrap();
            // Distinct ages, oldest first.
            File::options()
                .write(true)
                .open(&copy.path)
                .unwrap()
                .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + n))
                .unwrap();
            copies.push(copy.path);
        }
        std::fs::write(private.path().join(".copying-x1"), b"half").unwrap();
        std::fs::write(private.path().join(".tmpother"), b"not ours").unwrap();
        std::fs::write(private.path().join("notes.txt"), b"not a copy").unwrap();
        let loaded: HashSet<PathBuf> = [copies[0].clone()].into();
        assert_eq!(
            prune(private.path(), &loaded, 2),
            3,
            "two old copies and the leftover"
        );
        for (n, path) in copies.iter().enumerate() {
            assert_eq!(path.exists(), matches!(n, 0 | 3 | 4), "copy {n}");
        }
        assert!(private.path().join("notes.txt").exists());
        assert!(private.path().join(".tmpother").exists());
        assert_eq!(prune(private.path(), &loaded, 2), 0);
        assert_eq!(prune(&private.path().join("none"), &loaded, 2), 0);
    }
}
