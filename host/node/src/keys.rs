//! Secrets on disk: member key files and the API token, created with mode 0600 and refused when
//! others can read them.
//!
//! A key file holds the 32-byte secret scalar as 64 hexadecimal digits and a newline.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dispersy_core::identity::{KeyPair, SECRET_KEY_LEN};

/// Why a secret file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Group or others may read it.
    #[error("{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a key file.
    #[error("{path} does not hold a secp256k1 secret key (64 hexadecimal digits)")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fresh random key pair (the secret comes from the operating system).
pub fn generate() -> Result<KeyPair, getrandom::Error> {
    loop {
        let mut secret = [0u8; SECRET_KEY_LEN];
        getrandom::fill(&mut secret)?;
        if let Ok(key) = KeyPair::from_secret(&secret) {
            return Ok(key);
        }
    }
}

/// Random bytes from the operating system, in hexadecimal.
pub fn random_hex(len: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A random 64-bit seed from the operating system.
pub fn random_seed() -> Result<u64, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads a secret file after checking that only its owner can read it.
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    Ok(text.trim().to_owned())
}

/// Writes a new secret file with mode 0600; fails if it exists.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), SecretError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

/// Reads the key in `path`.
pub fn load(path: &Path) -> Result<KeyPair, SecretError> {
    let text = read_secret(path)?;
    let malformed = || SecretError::Malformed {
        path: path.to_path_buf(),
    };
    let bytes = hex::decode(&text).map_err(|_| malformed())?;
    let secret: [u8; SECRET_KEY_LEN] = bytes.try_into().map_err(|_| malformed())?;
    KeyPair::from_secret(&secret).map_err(|_| malformed())
}

/// Writes `key` to a new file `path` with mode 0600.
pub fn save(path: &Path, key: &KeyPair) -> Result<(), SecretError> {
    write_secret(path, &hex::encode(key.secret_bytes()))
}

/// The key in `path`, created when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<KeyPair, SecretError> {
    if path.exists() {
        return load(path);
    }
    let key = generate().map_err(|e| SecretError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    save(path, &key)?;
    Ok(key)
}

/// The API token in `path`, created when the file does not exist.
pub fn load_or_create_token(path: &Path) -> Result<String, SecretError> {
    if path.exists() {
        return read_secret(path);
    }
    let token = random_hex(32).map_err(|e| SecretError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_secret(path, &token)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_refused_when_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("member.key");
        let key = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().public(), key.public());
        assert!(save(&path, &key).is_err(), "never overwrites a key");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load(&path).unwrap_err();
        assert!(matches!(
            error,
            SecretError::Permissions { mode: 0o644, .. }
        ));
        assert!(error.to_string().contains("chmod 600"));

        let bad = dir.path().join("bad.key");
        write_secret(&bad, "not hex").unwrap();
        assert!(matches!(load(&bad), Err(SecretError::Malformed { .. })));

        let token_path = dir.path().join("api-token");
        let token = load_or_create_token(&token_path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(&token_path).unwrap(), token);
    }
}
