//! The wasmtime engine with the pooling allocator, and compiling components once with
//! their precompiled form cached on disk.

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::MEMORY_CAP;

/// Decisions that may run at once in one process (each holds one slot of the instance
/// pool while it runs; the daemon and the CLI take one at a time, a `/metrics` scrape one
/// more). A decision beyond that cannot be instantiated and the built-in rules decide it,
/// reported like any other policy fault.
pub const POOL_SLOTS: u32 = 16;

/// Bytes of each pooled linear memory that are reset in place (only the dirty pages,
/// where the kernel can tell) rather than given back to the kernel. Pages kept resident
/// are zeroed again after every decision, so this bounds the reset cost of a slot that
/// once ran a large decision (256 KiB: about 10 µs); a decision over 1,000 backups fits.
const KEEP_RESIDENT: usize = 256 << 10;

/// The wasmtime engine with the host's settings: fuel on, and the pooling allocator, so
/// that the fresh instance of every decision takes a warm slot — its linear memory
/// already mapped, reset from the module's copy-on-write image, and its first pages
/// kept resident — instead of mapping, protecting and unmapping a new memory each time;
/// bounds checked in code, so that the slot's memory is never protected either.
pub fn engine() -> Result<Engine, String> {
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_SLOTS)
        .total_core_instances(POOL_SLOTS * 4)
        .total_memories(POOL_SLOTS * 2)
        .total_tables(POOL_SLOTS * 4)
        .max_memories_per_module(2)
        .max_tables_per_module(4)
        // One page over the cap: the memory limiter refuses growth past MEMORY_CAP first,
        // so a hog is reported as out of memory.
        .max_memory_size(MEMORY_CAP + (64 << 10))
        // Reset a slot by rewriting only the pages the last decision dirtied (found with
        // Linux's PAGEMAP_SCAN where the kernel has it, 6.7+), keeping them resident:
        // no unmapping, no TLB shootdown, no page faults on the next decision.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10);
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.max_wasm_stack(1 << 20);
    // Bounds checks in the compiled code instead of guard pages: a slot's memory is then
    // never protected and unprotected (two `mprotect` calls per decision, as its memory
    // grows and when the slot is reused), which was half the cost of a bare decision.
    config.signals_based_traps(false);
    config.memory_guard_size(0);
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| format!("cannot start the policy engine: {e}"))
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn engine_key(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Maps a precompiled component written by [`compile_cached`].
#[allow(unsafe_code)]
fn deserialize_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file is one this host wrote (compile_cached) into its own cache folder
    // under data_dir, named by the module's hash and this engine's compatibility hash;
    // wasmtime also checks that it was made by a compatible engine. The cache folder is
    // as trusted as the tierkeep binary and its catalog.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Compiles `bytes`, or maps the cached precompiled form. Returns the component and
/// whether it came from the cache.
pub fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<(Component, bool), String> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, bytes)
            .map(|c| (c, false))
            .map_err(|e| format!("{e:#}"));
    };
    let file = dir.join(format!(
        "{}-{}.cwasm",
        &sha256_hex(bytes)[..32],
        engine_key(engine)
    ));
    if file.is_file() {
        match deserialize_cached(engine, &file) {
            Ok(c) => return Ok((c, true)),
            Err(e) => {
                tracing::warn!(file = %file.display(), "dropping an unusable cached policy: {e}");
                let _ = std::fs::remove_file(&file);
            }
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
    match component.serialize() {
        Ok(compiled) => {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&tmp, &compiled))
                .and_then(|()| std::fs::rename(&tmp, &file));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(dir = %dir.display(), "cannot cache the compiled policy: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot serialize the compiled policy: {e}"),
    }
    Ok((component, false))
}
