//! A test-only plugin built against a *different* plugin ABI: it exports a root module with the
//! host's module name and version but another layout, as a plugin compiled against an
//! incompatible `dispersy-plugin-api` would. The host must refuse it with a one-line error that
//! names the file, and load the other plugins.

#![allow(non_local_definitions)]
#![allow(missing_docs)] // the static that `#[export_root_module]` generates has no doc

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RString;
use abi_stable::{
    StableAbi, declare_root_module_statics, export_root_module, package_version_strings,
};

/// The root module of the "other" ABI: different field types than the host expects.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// A 64-bit ABI version where the host expects 32 bits.
    pub abi_version: extern "C" fn() -> u64,
    /// A definition as a plain string.
    #[sabi(last_prefix_field)]
    pub definition: extern "C" fn() -> RString,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "dispersy_plugin";
    const NAME: &'static str = "dispersy_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

extern "C" fn abi_version() -> u64 {
    1
}

extern "C" fn definition() -> RString {
    RString::from("mismatch")
}

/// The exported root module.
#[export_root_module]
pub fn root() -> PluginModuleRef {
    PluginModule {
        abi_version,
        definition,
    }
    .leak_into_prefix()
}
