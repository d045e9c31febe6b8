//! The plugin API of the Dispersy host: the only crate a community plugin depends on.
//!
//! A community type is a `cdylib` that the host loads at run time. Two layers live here:
//! - [`abi`]: the stable ABI (abi_stable): a root module [`abi::PluginModule`] with three entry
//!   points (ABI version, definition, create), the host handle [`abi::HostApi`] a community calls,
//!   and the community object [`abi::CommunityApi`] the host calls. Only `#[repr(C)]` types cross
//!   the boundary, abi_stable checks their layout when the plugin is loaded, and the host refuses
//!   a plugin built against another ABI with a one-line error.
//! - [`sdk`]: what a plugin author writes against — a [`sdk::Community`] trait, typed
//!   [`sdk::Meta`] definitions with policies, versioned [`sdk::Payload`] conversions that also
//!   convert to JSON through serde (derived from serde alone with [`sdk::Compact`], or written by
//!   hand with [`codec`]), and panic containment at every entry point.
//! - [`testing`]: a host double, to unit-test a community's checks, handlers, timers and status
//!   without a node.
//!
//! A minimal plugin (see `plugins/example` for the complete template):
//!
//! ```ignore
//! use dispersy_plugin_api::prelude::*;
//!
//! struct Chat { host: Host }
//!
//! impl Community for Chat {
//!     fn definition() -> Definition<Self> {
//!         Definition::new("chat", env!("CARGO_PKG_VERSION"), MASTER_KEY_HEX)
//!             .conversion(&[1])
//!             .meta(Meta::<Self, Line>::new(1, "line").handle(Self::on_line))
//!     }
//!     fn create(host: Host) -> Result<Self, Error> { Ok(Chat { host }) }
//! }
//!
//! export_community!(Chat);
//! ```
//!
//! Rules for plugins: handlers are synchronous and must not block (all I/O goes through the host);
//! log with [`sdk::Host::log`] (a plugin's own `tracing` statics are not the host's). The
//! compiler need not be the host's: only `#[repr(C)]` types checked by abi_stable cross the
//! boundary (never a `std` type), so a plugin built by another `rustc` against a compatible
//! version of this crate loads alike (tried: a plugin built by 1.97-nightly in a 1.95 host).

#![allow(non_local_definitions)] // `#[sabi_trait]` expansions trip this lint on current rustc

pub mod abi;
pub mod codec;
pub mod sdk;
pub mod testing;

/// Re-exported so that [`export_community!`] expands in crates that do not depend on it.
pub use abi_stable;
/// Re-exported for plugins' status documents.
pub use serde_json;

/// Everything a plugin author needs.
pub mod prelude {
    pub use crate::codec::{Reader, Writer};
    pub use crate::export_community;
    pub use crate::sdk::{
        Authentication, Community, Compact, Definition, Destination, Distribution, Error, Filter,
        Host, Level, Message, Meta, Order, Page, Payload, Resolution, Retire, StaticResolution,
        UndoReason, Undone, Verdict, parse_hex, to_hex,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Exports community type `$ty` (implementing [`sdk::Community`]) as this library's plugin.
/// Use it exactly once per `cdylib`.
#[macro_export]
macro_rules! export_community {
    ($ty:ty) => {
        /// The library header the host looks up (what `#[export_root_module]` generates, written
        /// out so plugins need no direct abi_stable dependency).
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(
                    $crate::sdk::module::<$ty>,
                )
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginModuleRef>(
                    erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
