//! The policy components built from `policies/` by this crate's build script: the
//! shipped policies (`default`, `gfs`, `business-hours`) and the broken fixtures the
//! tests use (`fixture-*`). Tests take their paths from here; operators install them
//! with `cargo run -p tierkeep-policies -- install DIR`.

use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/policies.rs"));

/// The path of the built component `name` (`default`, `gfs`, `fixture-spin`, ...).
pub fn path(name: &str) -> Option<&'static Path> {
    BUILT
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| Path::new(*p))
}

/// The shipped policies (not the fixtures), as `(name, path)`.
pub fn shipped() -> impl Iterator<Item = (&'static str, &'static Path)> {
    BUILT
        .iter()
        .filter(|(n, _)| !n.starts_with("fixture-"))
        .map(|(n, p)| (*n, Path::new(*p)))
}

/// Wraps a core module built with the SDK (`cargo build --target
/// wasm32-unknown-unknown`) into a component, like `wasm-tools component new`.
pub fn wrap(core: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("not a policy module built with the SDK: {e:#}"))
}
