//! The policy host: runs WebAssembly policy components (the contract in `sdk/wit`) with
//! wasmtime, behind the [`Rules`](crate::decision::Rules) trait of the decision engine.
//!
//! - **Compile once**: a component is compiled once and its precompiled form cached on
//!   disk, keyed by the module's SHA-256 and the engine's compatibility hash (which
//!   includes the wasmtime version); later loads map the cached file.
//! - **Instantiate per decision** from a pre-instantiated component, in a fresh `Store`
//!   with a fuel budget ([`FUEL`]) and a memory cap ([`MEMORY_CAP`]), in a warm slot of
//!   the pooling allocator ([`engine`]): nothing of one decision survives into the next,
//!   and no memory is mapped, unmapped or protected per decision. The only import a
//!   policy gets is `tierkeep:policy/log`: no WASI, so no clock, files or network.
//! - **Packed lists**: where a module exports `tierkeep:policy/policy-packed` (modules
//!   built with the SDK do), `aging` and `eviction` go through it, with the backup list
//!   in columns; otherwise through `tierkeep:policy/policy`.
//! - **Drop-in**: [`PolicyHost`] watches its policy file; a new or changed file is
//!   compiled, its metadata read and its settings validated before it replaces the
//!   running policy. A broken file never replaces a working one; it is reported.

mod compile;
mod faults;
mod host;
mod wasm;

use std::path::{Path, PathBuf};

mod bindings {
    // The world with both exports: the host requires `policy` and uses `policy-packed`
    // where a module has it (each export is looked up on its own).
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "policy-module-packed",
    });
}

use bindings::tierkeep::policy::log as wit_log;
use bindings::tierkeep::policy::types as wt;

pub use self::compile::{POOL_SLOTS, compile_cached, engine};
pub use self::faults::{Measured, report_fault};
pub use self::host::{Deciding, PolicyHost, PolicyStatus};
pub use self::wasm::{Interface, WasmPolicy};

/// Fuel for one decision (about a second of a tight loop; an eviction over 100,000
/// backups needs some 60 million).
pub const FUEL: u64 = 500_000_000;
/// Linear memory one decision may use.
pub const MEMORY_CAP: usize = 64 << 20;
/// The only interface a policy may import.
pub const ALLOWED_IMPORTS: &[&str] = &["tierkeep:policy/log@0.1.0", "tierkeep:policy/types@0.1.0"];

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading the file failed.
    #[error("policy {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a usable policy component.
    #[error("policy {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// What a policy says about itself (its `describe` export).
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Metadata {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Description.
    pub description: String,
    /// Settings it accepts.
    pub settings: Vec<SettingSpec>,
}

/// One accepted setting.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct SettingSpec {
    /// Name.
    pub name: String,
    /// Type hint.
    pub kind: String,
    /// Default (JSON).
    pub default: String,
    /// What it does.
    pub description: String,
}

/// Where a configuration's compiled policies are cached: `<data_dir>/policy-cache`.
pub fn cache_dir(settings: &crate::config::Settings) -> PathBuf {
    settings.data_dir.join("policy-cache")
}

/// Which policy the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default rules.
    Builtin,
    /// A component file.
    File(PathBuf),
}

/// Resolves `policy.name` in `policy.dir`: `<dir>/<name>.wasm` when it exists; the
/// built-in rules for `default` otherwise.
pub fn resolve(name: &str, dir: Option<&Path>) -> Result<Source, String> {
    if let Some(dir) = dir {
        let file = dir.join(format!("{name}.wasm"));
        if file.is_file() {
            return Ok(Source::File(file));
        }
    }
    if name == "default" {
        return Ok(Source::Builtin);
    }
    Err(match dir {
        Some(dir) => format!(
            "policy `{name}`: no {name}.wasm in {} (built-in: `default`)",
            dir.display()
        ),
        None => format!("policy `{name}`: set policy.dir to the folder holding {name}.wasm"),
    })
}
