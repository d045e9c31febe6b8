//! `dispersy new-plugin NAME`: writes a standalone community plugin crate from a template.
//!
//! The crate builds outside any workspace with `cargo build --release` and tests with
//! `cargo test`: a `Cargo.toml` with an empty `[workspace]` table and `dispersy-plugin-api` as a
//! path dependency on the checkout this binary was built from, the checkout's
//! `rust-toolchain.toml`, a `src/lib.rs` with one full-sync meta and unit tests on the SDK's host
//! double, and a fresh master key (secret in `master.key`, mode 0600; public key in the code).

use std::fs;
use std::path::{Path, PathBuf};

use crate::keys::{self, SecretError};

const CARGO_TOML: &str = include_str!("../templates/plugin/Cargo.toml.in");
const LIB_RS: &str = include_str!("../templates/plugin/lib.rs.in");
const GITIGNORE: &str = include_str!("../templates/plugin/gitignore.in");
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// Where the plugin API crate of this binary's checkout was at build time.
pub const DEFAULT_PLUGIN_API: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugin-api");

/// Names a crate may not have: Rust keywords and the standard crates (the library name must be
/// usable as a crate name in `use`).
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
];

/// Why `new-plugin` wrote nothing (or stopped part-way: then the folder is left to inspect).
#[derive(Debug, thiserror::Error)]
pub enum NewPluginError {
    /// The name is not a usable crate name.
    #[error("plugin name {name:?}: {reason}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The crate folder exists already (never overwritten).
    #[error("{0} exists already; choose another name or --dir")]
    Exists(PathBuf),
    /// The plugin API source is not where the binary expects it.
    #[error(
        "the dispersy-plugin-api crate is not at {0} (the checkout this binary was built from); pass --plugin-api PATH"
    )]
    PluginApi(PathBuf),
    /// The random generator failed.
    #[error("random generator: {0}")]
    Random(getrandom::Error),
    /// The master key file could not be written.
    #[error(transparent)]
    Key(#[from] SecretError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What `new-plugin` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The crate folder.
    pub dir: PathBuf,
    /// The file a release build produces, relative to `dir`.
    pub library: String,
    /// The master public key, hexadecimal.
    pub master_key: String,
    /// The community id, hexadecimal.
    pub community_id: String,
}

/// Checks that `name` is a crate name usable as a plugin: a lower-case ASCII letter, then up to
/// 63 lower-case letters, digits, `-` or `_`, not ending in either, and not a reserved word.
pub fn check_name(name: &str) -> Result<(), NewPluginError> {
    let fail = |reason| {
        Err(NewPluginError::Name {
            name: name.to_owned(),
            reason,
        })
    };
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return fail("must start with a lower-case letter a-z");
    }
    if name.len() > 64 {
        return fail("must be at most 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return fail("may hold only a-z, 0-9, '-' and '_'");
    }
    if name.ends_with(['-', '_']) {
        return fail("must not end with '-' or '_'");
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        return fail("is a Rust keyword or a standard crate name");
    }
    Ok(())
}

/// `chat-room` → `ChatRoomCommunity`.
fn type_name(name: &str) -> String {
    let mut out = String::new();
    for part in name.split(['-', '_']).filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    out.push_str("Community");
    out
}

fn write(path: &Path, text: &str) -> Result<(), NewPluginError> {
    fs::write(path, text).map_err(|source| NewPluginError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the crate `name` into `parent/name` with a fresh master key; `plugin_api` is the
/// plugin API crate to depend on (default [`DEFAULT_PLUGIN_API`]). Refuses an existing folder.
pub fn create(
    name: &str,
    parent: &Path,
    plugin_api: Option<&Path>,
) -> Result<Created, NewPluginError> {
    check_name(name)?;
    let api = plugin_api.unwrap_or(Path::new(DEFAULT_PLUGIN_API));
    let api = fs::canonicalize(api)
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| NewPluginError::PluginApi(api.to_path_buf()))?;
    let api_text = api
        .to_str()
        .filter(|p| !p.contains(['"', '\\']))
        .ok_or_else(|| NewPluginError::PluginApi(api.clone()))?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(NewPluginError::Exists(dir));
    }
    let key = keys::generate().map_err(NewPluginError::Random)?;
    let master_key = key.public().to_hex();
    let community_id = key.public().community_id().to_hex();
    let lib = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{lib}}", &lib)
            .replace("{{Type}}", &type_name(name))
            .replace("{{master_key}}", &master_key)
            .replace("{{community_id}}", &community_id)
            .replace("{{api_path}}", api_text)
    };
    let src = dir.join("src");
    fs::create_dir_all(&src).map_err(|source| NewPluginError::Io {
        path: src.clone(),
        source,
    })?;
    keys::save(&dir.join("master.key"), &key)?;
    write(&dir.join("Cargo.toml"), &fill(CARGO_TOML))?;
    write(&dir.join(".gitignore"), GITIGNORE)?;
    write(&dir.join("rust-toolchain.toml"), TOOLCHAIN)?;
    write(&src.join("lib.rs"), &fill(LIB_RS))?;
    Ok(Created {
        dir,
        library: format!("target/release/lib{lib}.so"),
        master_key,
        community_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_typed() {
        for good in ["chat", "chat-room", "x9_y"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Chat", "9lives", "chat-", "a b", "fn", "test", "self"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
        assert_eq!(type_name("chat-room_x"), "ChatRoomXCommunity");
    }
}
