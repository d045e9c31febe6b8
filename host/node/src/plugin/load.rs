//! Finding and loading plugin files, and converting what they define into the core's types.
//!
//! Loading uses `lib_header_from_path` + `init_root_module` (never `RootModule::load_from_*`,
//! which caches one module per interface type per process). abi_stable checks the plugin-api
//! version and the layout of every type crossing the boundary; a mismatch is reported in one line
//! naming the file, with abi_stable's full report at debug level. A plugin built against an
//! older patch release of plugin-api fails abi_stable's check only because the traits it knows
//! have fewer methods; it is loaded once its layout passes the check the other way round
//! (`older_patch`). Libraries are never unloaded.
//! The registry loads a private copy of each file ([`load_from`], [`super::copy`]), never the
//! operator's file itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use abi_stable::StableAbi;
use abi_stable::abi_stability::abi_checking::{
    CheckingGlobals, check_layout_compatibility_with_globals,
};
use abi_stable::library::{LibHeader, LibraryError, RootModule, lib_header_from_path};
use abi_stable::sabi_types::VersionNumber;
use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, PublicKey};
use dispersy_core::meta::{
    Authentication, Destination, Distribution, MetaMessage, Pruning, Resolution, StaticResolution,
    SyncOrder,
};
use dispersy_core::wire::Conversion;
use dispersy_plugin_api::abi::{self, MetaDef, PluginModuleRef};

/// A loaded plugin file and the community type it defines.
#[derive(Clone)]
pub struct Plugin {
    /// The file.
    pub path: PathBuf,
    /// Its root module.
    pub module: PluginModuleRef,
    /// Its definition, validated.
    pub definition: Definition,
}

impl Plugin {
    /// The same plugin running the community of master key `master`: an instance of its
    /// community type, with the type's metas and conversions and a community id of its own.
    pub fn instance(&self, master: dispersy_core::identity::PublicKey) -> Plugin {
        let mut plugin = self.clone();
        plugin.definition.master = master;
        plugin
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("name", &self.definition.name)
            .finish()
    }
}

/// Why a plugin file was refused. The message is one line and names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened as a library or is not a plugin; nothing stays mapped.
    #[error("plugin {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Summary.
        reason: String,
    },
    /// The library was opened (and stays mapped) but its root module could not be used.
    #[error("plugin {path}: {reason}")]
    Library {
        /// The file.
        path: PathBuf,
        /// Summary.
        reason: String,
    },
    /// Built against an incompatible plugin API.
    #[error(
        "plugin {path}: built against an incompatible plugin ABI ({reason}); rebuild it against dispersy-plugin-api {host}"
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Summary.
        reason: String,
        /// The host's plugin-api version.
        host: &'static str,
    },
    /// The plugin's entry points failed or its definition is invalid.
    #[error("plugin {path}: {reason}")]
    Definition {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another plugin already defines this community.
    #[error("plugin {path}: community {community} is already provided by {other}")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The community id.
        community: CommunityId,
        /// The first file.
        other: PathBuf,
    },
}

/// The plugin-api version this host was built with (the version abi_stable compares with a
/// plugin's; not this crate's own).
pub fn host_api_version() -> &'static str {
    PluginModuleRef::VERSION_STRINGS.version.as_str()
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// The plugin files (`lib*.so`) in `dirs`, in directory order then by name, without repeats.
pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("lib") && n.ends_with(std::env::consts::DLL_SUFFIX)
                    })
            })
            .collect();
        found.sort();
        for path in found {
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if !seen.contains(&canonical) {
                seen.push(canonical);
                files.push(path);
            }
        }
    }
    files
}

impl LoadError {
    /// Whether the library stayed mapped into the process (libraries are never unloaded).
    pub fn mapped(&self) -> bool {
        !matches!(self, LoadError::Open { .. })
    }
}

/// Loads and validates one plugin file, mapping that very file.
pub fn load(path: &Path) -> Result<Plugin, LoadError> {
    load_from(path, path)
}

/// Loads and validates plugin file `path` by mapping `library`, a private copy of it
/// ([`super::copy`]); errors and the returned plugin name `path`.
pub fn load_from(path: &Path, library: &Path) -> Result<Plugin, LoadError> {
    let library_error = |reason: String| LoadError::Library {
        path: path.to_path_buf(),
        reason,
    };
    let open_error = |reason: String| LoadError::Open {
        path: path.to_path_buf(),
        reason,
    };
    let header = lib_header_from_path(library).map_err(|e| match e {
        LibraryError::OpenError { .. } => open_error(first_line(&e.to_string())),
        LibraryError::GetSymbolError { .. } => {
            open_error("not a Dispersy plugin (no abi_stable root module)".into())
        }
        other => open_error(first_line(&other.to_string())),
    })?;
    let module = match header.init_root_module::<PluginModuleRef>() {
        Err(LibraryError::AbiInstability(report)) => older_patch(path, header)
            .unwrap_or(Err(LibraryError::AbiInstability(report))),
        checked => checked,
    }
    .map_err(|e| {
        tracing::debug!(path = %path.display(), library = %library.display(), report = %e, "plugin ABI report");
        match e {
            LibraryError::AbiInstability(_) => LoadError::Incompatible {
                path: path.to_path_buf(),
                reason: "type layouts differ".into(),
                host: host_api_version(),
            },
            LibraryError::IncompatibleVersionNumber { .. } => LoadError::Incompatible {
                path: path.to_path_buf(),
                reason: first_line(&e.to_string()),
                host: host_api_version(),
            },
            other => library_error(first_line(&other.to_string())),
        }
    })?;
    let definition_error = |reason: String| LoadError::Definition {
        path: path.to_path_buf(),
        reason,
    };
    let version = (module.abi_version())();
    if version != abi::ABI_VERSION {
        return Err(LoadError::Incompatible {
            path: path.to_path_buf(),
            reason: format!(
                "ABI version {version}, the host speaks {}",
                abi::ABI_VERSION
            ),
            host: host_api_version(),
        });
    }
    let raw = (module.definition())()
        .into_result()
        .map_err(|e| definition_error(format!("definition failed: {e}")))?;
    let mut definition = definition_from_raw(&raw).map_err(definition_error)?;
    // Appended in plugin-api 0.2.2: an older plugin has no undoable metas.
    definition.undoable = module
        .undoable()
        .map(|undoable| undoable().into_vec())
        .unwrap_or_default();
    Ok(Plugin {
        path: path.to_path_buf(),
        module,
        definition,
    })
}

/// The root module of a plugin built against an older patch release of the host's plugin-api
/// (0.2.0 in a 0.2.1 host), or `None` when it is not one. abi_stable's layout check lets a
/// library's prefix types (the root module and the vtables of `HostApi` and `CommunityApi`) have
/// more fields than the loader's, never fewer; so the methods a patch release appends to those
/// traits make every plugin built before it fail the check ("too many fields"), although the
/// append-only rule (plugin-api CHANGELOG) is meant to keep such plugins loading. Such a plugin
/// is taken when its plugin-api has the host's major and minor version and a lower patch, and
/// its layout passes the check the other way round (the plugin's layout as the interface, the
/// host's as the implementation): then every type crossing the boundary is the host's, except
/// that each prefix type of the plugin is a prefix of the host's. That is sound: the plugin calls
/// only the host methods it knows, and the host's call of a method that the plugin's vtable lacks
/// runs the method's default body (abi_stable reads what a vtable holds from the vtable itself).
fn older_patch(
    path: &Path,
    header: &'static LibHeader,
) -> Option<Result<PluginModuleRef, LibraryError>> {
    let host = VersionNumber::new(PluginModuleRef::VERSION_STRINGS).ok()?;
    let plugin = VersionNumber::new(header.version_strings()).ok()?;
    if plugin.major != host.major || plugin.minor != host.minor || plugin.patch >= host.patch {
        return None;
    }
    // With globals of its own: abi_stable's process-wide ones remember every prefix type checked
    // (to merge what later libraries bring), and a check in this direction would mislead them
    // into refusing the next plugin built against the host's own version.
    check_layout_compatibility_with_globals(
        header.layout()?,
        <PluginModuleRef as StableAbi>::LAYOUT,
        &CheckingGlobals::new(),
    )
    .ok()?;
    tracing::info!(path = %path.display(), plugin_api = %plugin, host_api = %host, "plugin built against an older plugin-api: the calls appended since are absent for it");
    // SAFETY: the layout was checked just above, in the direction that fits an older plugin.
    Some(unsafe { header.init_root_module_with_unchecked_layout::<PluginModuleRef>() })
}

/// Converts and validates a plugin's raw definition.
pub fn definition_from_raw(raw: &abi::CommunityDef) -> Result<Definition, String> {
    let master = PublicKey::from_bytes(&raw.master_key).map_err(|e| format!("master key: {e}"))?;
    let conversions = raw
        .conversions
        .iter()
        .map(|c| Conversion::new(c).map_err(|e| format!("conversion {c:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let metas = raw
        .metas
        .iter()
        .map(meta_from_raw)
        .collect::<Result<Vec<_>, _>>()?;
    let definition = Definition {
        name: raw.name.to_string(),
        version: raw.version.to_string(),
        master,
        conversions,
        metas,
        undoable: Vec::new(),
    };
    definition.validate().map_err(|e| e.to_string())?;
    Ok(definition)
}

fn meta_from_raw(raw: &MetaDef) -> Result<MetaMessage, String> {
    let unknown = |policy: &str, code: u8| {
        format!(
            "meta-message {:?}: unknown {policy} code {code} (plugin newer than the host?)",
            raw.name.as_str()
        )
    };
    let authentication = match raw.authentication {
        abi::authentication::NONE => Authentication::None,
        abi::authentication::MEMBER => Authentication::Member,
        abi::authentication::DOUBLE_MEMBER => Authentication::DoubleMember,
        code => return Err(unknown("authentication", code)),
    };
    let static_resolution = |code: u8| match code {
        abi::resolution::PUBLIC => Ok(StaticResolution::Public),
        abi::resolution::LINEAR => Ok(StaticResolution::Linear),
        code => Err(unknown("resolution", code)),
    };
    let resolution = match raw.resolution {
        abi::resolution::PUBLIC => Resolution::Public,
        abi::resolution::LINEAR => Resolution::Linear,
        abi::resolution::DYNAMIC => Resolution::Dynamic(
            raw.dynamic_policies
                .iter()
                .map(|c| static_resolution(*c))
                .collect::<Result<_, _>>()?,
        ),
        code => return Err(unknown("resolution", code)),
    };
    let order = match raw.order {
        abi::order::ASCENDING => SyncOrder::Ascending,
        abi::order::DESCENDING => SyncOrder::Descending,
        abi::order::RANDOM => SyncOrder::Random,
        code => return Err(unknown("order", code)),
    };
    let pruning = (raw.prune_inactive != 0 || raw.prune_remove != 0).then_some(Pruning {
        inactive_after: raw.prune_inactive,
        prune_after: raw.prune_remove,
    });
    let distribution = match raw.distribution {
        abi::distribution::DIRECT => Distribution::Direct,
        abi::distribution::RELAY => Distribution::Relay,
        abi::distribution::FULL_SYNC => Distribution::FullSync {
            sequence_numbers: raw.sequence_numbers,
            order,
            pruning,
        },
        abi::distribution::LAST_SYNC => Distribution::LastSync {
            history: raw.history,
            order,
            pruning,
        },
        code => return Err(unknown("distribution", code)),
    };
    let destination = match raw.destination {
        abi::destination::CANDIDATE => Destination::Candidate,
        abi::destination::COMMUNITY => Destination::Community {
            node_count: raw.node_count,
        },
        code => return Err(unknown("destination", code)),
    };
    Ok(MetaMessage {
        id: raw.id,
        name: raw.name.to_string(),
        authentication,
        resolution,
        distribution,
        destination,
        priority: raw.priority,
        batch_window: Duration::from_millis(u64::from(raw.batch_window_ms)),
    })
}
