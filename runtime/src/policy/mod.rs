//! The policy host: runs WebAssembly policy components (the contract in `sdk/wit`) with
//! wasmtime, behind the [`Rules`] trait of the decision engine.
//!
//! - **Compile once**: a component is compiled once and its precompiled form cached on
//!   disk, keyed by the module's SHA-256 and the engine's compatibility hash (which
//!   includes the wasmtime version); later loads map the cached file.
//! - **Instantiate per decision** from a pre-instantiated component, in a fresh `Store`
//!   with a fuel budget ([`FUEL`]) and a memory cap ([`MEMORY_CAP`]), in a warm slot of
//!   the pooling allocator ([`engine`]): nothing of one decision survives into the next,
//!   and no memory is mapped or unmapped per decision. The only import a
//!   policy gets is `tierkeep:policy/log`: no WASI, so no clock, files or network.
//! - **Drop-in**: [`PolicyHost`] watches its policy file; a new or changed file is
//!   compiled, its metadata read and its settings validated before it replaces the
//!   running policy. A broken file never replaces a working one; it is reported.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Engine, ResourceLimiter, Store};

use crate::decision::{BuiltinRules, PolicyContext, PolicyFault, Room, Rules};
use crate::domain::{BackupKind, BackupView, Zone};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "policy-module",
    });
}

use bindings::PolicyModulePre;
use bindings::tierkeep::policy::log as wit_log;
use bindings::tierkeep::policy::types as wt;

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

/// Per-store state: the memory limiter and the policy's name for its logs.
struct State {
    limits: Limits,
    policy: String,
}

struct Limits {
    cap: usize,
    hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl wit_log::Host for State {
    fn log(&mut self, level: wit_log::Level, message: String) {
        let message: String = message.chars().take(2000).collect();
        match level {
            wit_log::Level::Debug => tracing::debug!(policy = %self.policy, "{message}"),
            wit_log::Level::Info => tracing::info!(policy = %self.policy, "{message}"),
            wit_log::Level::Warn => tracing::warn!(policy = %self.policy, "{message}"),
            wit_log::Level::Error => tracing::error!(policy = %self.policy, "{message}"),
        }
    }
}

impl wt::Host for State {}

/// Decisions that may run at once in one process (each holds one slot of the instance
/// pool while it runs; the daemon and the CLI take one at a time, a `/metrics` scrape one
/// more). A decision beyond that cannot be instantiated and the built-in rules decide it,
/// reported like any other policy fault.
pub const POOL_SLOTS: u32 = 16;

/// Bytes at the start of each pooled linear memory that are reset in place (only the
/// dirty pages, where the kernel can tell) rather than given back to the kernel.
const KEEP_RESIDENT: usize = 4 << 20;

/// The wasmtime engine with the host's settings: fuel on, and the pooling allocator, so
/// that the fresh instance of every decision takes a warm slot — its linear memory
/// already mapped, reset from the module's copy-on-write image, and its first pages
/// kept resident — instead of mapping, protecting and unmapping a new memory each time.
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
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| format!("cannot start the policy engine: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
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

/// Imports and exports of a component, for `policy inspect`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Interface {
    /// Imported instance or function names.
    pub imports: Vec<String>,
    /// Exported names, with the functions of exported interfaces.
    pub exports: Vec<String>,
}

fn describe_items<'a>(
    engine: &Engine,
    items: impl Iterator<Item = (&'a str, ComponentItem)>,
) -> Vec<String> {
    items
        .map(|(name, item)| match item {
            ComponentItem::ComponentInstance(inst) => {
                let funcs: Vec<&str> = inst
                    .exports(engine)
                    .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                    .map(|(n, _)| n)
                    .collect();
                format!("{name} {{{}}}", funcs.join(", "))
            }
            ComponentItem::ComponentFunc(_) => format!("{name}()"),
            _ => name.to_owned(),
        })
        .collect()
}

/// A loaded, validated policy component.
pub struct WasmPolicy {
    /// Its file.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
    /// File size.
    pub size: u64,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its imports and exports.
    pub interface: Interface,
    /// Whether the compiled form came from the cache.
    pub from_cache: bool,
    settings: String,
    engine: Engine,
    pre: PolicyModulePre<State>,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("path", &self.path)
            .field("name", &self.metadata.name)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl WasmPolicy {
    /// Loads `path`: compiles (or maps the cached form), checks its imports and
    /// exports, reads its metadata and validates `settings` (JSON) with it.
    pub fn load(
        engine: &Engine,
        path: &Path,
        settings: &str,
        cache_dir: Option<&Path>,
    ) -> Result<WasmPolicy, PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| PolicyError::Invalid {
            path: path.to_owned(),
            message,
        };
        if bytes.get(..4) != Some(b"\0asm") {
            return Err(invalid("not a WebAssembly file".into()));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(invalid(
                "a core WebAssembly module, not a component: build it with the SDK and wrap it \
                 (`wasm-tools component new`, or `cargo run -p tierkeep-policies` for the \
                 policies in this repository)"
                    .into(),
            ));
        }
        let (component, from_cache) = compile_cached(engine, &bytes, cache_dir)
            .map_err(|e| invalid(format!("does not compile: {e}")))?;
        let ty = component.component_type();
        let imports: Vec<(&str, ComponentItem)> =
            ty.imports(engine).map(|(n, e)| (n, e.ty)).collect();
        let unknown: Vec<&str> = imports
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !ALLOWED_IMPORTS.contains(n))
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(format!(
                "imports {} which tierkeep does not offer: a policy may import only \
                 tierkeep:policy/log (no WASI: no clock, files or network)",
                unknown
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let interface = Interface {
            imports: describe_items(engine, imports.into_iter()),
            exports: describe_items(engine, ty.exports(engine).map(|(n, e)| (n, e.ty))),
        };
        let mut linker = Linker::<State>::new(engine);
        wit_log::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("cannot be linked: {e:#}")))?;
        let pre = PolicyModulePre::new(pre).map_err(|e| {
            invalid(format!(
                "does not export the tierkeep:policy/policy@0.1.0 interface: {e:#}"
            ))
        })?;
        let mut policy = WasmPolicy {
            path: path.to_owned(),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            metadata: Metadata {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                version: String::new(),
                description: String::new(),
                settings: Vec::new(),
            },
            interface,
            from_cache,
            settings: settings.to_owned(),
            engine: engine.clone(),
            pre,
        };
        let m = policy
            .call(|p, s| p.call_describe(s))
            .map_err(|f| invalid(format!("describe: {f}")))?;
        policy.metadata = Metadata {
            name: m.name,
            version: m.version,
            description: m.description,
            settings: m
                .settings
                .into_iter()
                .map(|s| SettingSpec {
                    name: s.name,
                    kind: s.kind,
                    default: s.default,
                    description: s.description,
                })
                .collect(),
        };
        let settings = settings.to_owned();
        policy
            .call(|p, s| p.call_validate_settings(s, &settings))
            .map_err(|f| invalid(format!("validate-settings: {f}")))?
            .map_err(|e| invalid(format!("settings refused: {e}")))?;
        Ok(policy)
    }

    /// Runs one export in a fresh store with the fuel and memory limits.
    fn call<T>(
        &self,
        f: impl FnOnce(
            &bindings::exports::tierkeep::policy::policy::Guest,
            &mut Store<State>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, PolicyFault> {
        let mut store = Store::new(
            &self.engine,
            State {
                limits: Limits {
                    cap: MEMORY_CAP,
                    hit: false,
                },
                policy: self.metadata.name.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(FUEL)
            .map_err(|e| PolicyFault::Unavailable(format!("{e:#}")))?;
        let fault = |store: &Store<State>, e: wasmtime::Error| {
            if store.data().limits.hit {
                return PolicyFault::OutOfMemory;
            }
            match e.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::OutOfFuel) => PolicyFault::OutOfFuel,
                Some(wasmtime::Trap::UnreachableCodeReached) => {
                    PolicyFault::Trap("`unreachable` executed (a panic in the policy)".into())
                }
                Some(trap) => PolicyFault::Trap(trap.to_string()),
                None => PolicyFault::Trap(e.to_string().lines().next().unwrap_or("").to_owned()),
            }
        };
        let instance = match self.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fault(&store, e)),
        };
        match f(instance.tierkeep_policy_policy(), &mut store) {
            Ok(v) => Ok(v),
            Err(e) => Err(fault(&store, e)),
        }
    }

    /// The context for a call: the context's settings, or those the policy was loaded
    /// (and validated) with when the context carries none.
    fn context(&self, ctx: &PolicyContext) -> wt::Context {
        let settings = if ctx.settings.is_empty() {
            &self.settings
        } else {
            &ctx.settings
        };
        to_wit_context(ctx, settings)
    }
}

fn ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn to_wit_context(ctx: &PolicyContext, settings: &str) -> wt::Context {
    wt::Context {
        now: ms(ctx.now),
        schedule: wt::Schedule {
            interval: duration_ms(ctx.schedule.interval),
            aging: duration_ms(ctx.schedule.aging),
        },
        zones: ctx
            .zones
            .iter()
            .map(|z| wt::ZoneState {
                zone: match z.zone {
                    Zone::BlackBox => wt::Zone::BlackBox,
                    Zone::Deletion => wt::Zone::Deletion,
                    Zone::Reserved => wt::Zone::Reserved,
                },
                max_backups: z.capacity.max_backups,
                max_bytes: z.capacity.max_bytes,
                backups: z.usage.backups,
                bytes: z.usage.bytes,
            })
            .collect(),
        recent: ctx
            .recent
            .iter()
            .take(32)
            .map(|a| wt::Attempt {
                at: ms(a.at),
                succeeded: a.succeeded,
            })
            .collect(),
        settings: settings.to_owned(),
    }
}

fn to_wit_backups(list: &[BackupView]) -> Vec<wt::Backup> {
    list.iter()
        .map(|b| wt::Backup {
            id: b.id.to_string(),
            kind: match b.kind {
                BackupKind::Scheduled => wt::BackupKind::Scheduled,
                BackupKind::Manual => wt::BackupKind::Manual,
            },
            created_at: ms(b.created_at),
            size_bytes: b.size_bytes,
        })
        .collect()
}

impl Rules for WasmPolicy {
    fn name(&self) -> &str {
        &self.metadata.name
    }

    fn interval(&self, ctx: &PolicyContext) -> Result<u64, PolicyFault> {
        let c = self.context(ctx);
        self.call(|p, s| p.call_interval(s, &c))
    }

    fn aging(
        &self,
        ctx: &PolicyContext,
        black_box: &[BackupView],
    ) -> Result<Vec<String>, PolicyFault> {
        let c = self.context(ctx);
        let list = to_wit_backups(black_box);
        self.call(|p, s| p.call_aging(s, &c, &list))
    }

    fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: Room,
    ) -> Result<Vec<String>, PolicyFault> {
        let c = self.context(ctx);
        let list = to_wit_backups(deletion);
        let room = wt::Room {
            backups: room.backups,
            bytes: room.bytes,
        };
        self.call(|p, s| p.call_eviction(s, &c, &list, room))
    }
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

/// Which rules decide in this process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deciding {
    /// The configured policy file, loaded and validated.
    File,
    /// The built-in default rules, as configured (`default`, with no `default.wasm`).
    BuiltIn,
    /// The built-in default rules, because the configured file is missing or broken and
    /// this process never loaded a working version of it.
    BuiltInFallback,
    /// The version of the file this process loaded before; the file now there is missing
    /// or broken.
    KeptPrevious,
}

/// Why the configured policy file is not what decides.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trouble {
    /// The file is not there (the full message).
    Missing(String),
    /// The file is there but cannot be used: the full message, and the reason alone.
    Broken { message: String, reason: String },
    /// The policy engine itself did not start.
    Engine(String),
}

impl Trouble {
    fn message(&self) -> &str {
        match self {
            Trouble::Missing(m) | Trouble::Broken { message: m, .. } | Trouble::Engine(m) => m,
        }
    }
}

/// What the host runs now, for `status` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyStatus {
    /// Configured name.
    pub name: String,
    /// `built-in` or the file in use.
    pub running: String,
    /// Version of the running policy, where known.
    pub version: Option<String>,
    /// The last load error (the file is missing or broken, and the previous policy, or
    /// the built-in rules, kept running).
    pub error: Option<String>,
    /// Which rules decide in this process.
    pub deciding: Deciding,
    /// The configured policy file (where the host looks for it), if the configuration
    /// names one.
    pub file: Option<PathBuf>,
    /// The name the running policy gives itself (its `describe`), when a file runs.
    pub policy_name: Option<String>,
    /// Why the file is not running (for [`PolicyStatus::describe`]).
    #[serde(skip)]
    trouble: Option<Trouble>,
}

impl PolicyStatus {
    /// Who decides, in words that cannot be misread: `gfs 0.1.0 (/etc/.../gfs.wasm)`,
    /// `built-in default rules`, `built-in default rules, because FILE is broken: ERR`,
    /// or the version kept while the file is broken.
    pub fn describe(&self) -> String {
        let file = self
            .file
            .as_ref()
            .map_or_else(|| self.running.clone(), |f| f.display().to_string());
        let problem = || match &self.trouble {
            Some(Trouble::Broken { reason, .. }) => format!("is broken: {reason}"),
            Some(Trouble::Missing(_)) => "is missing".to_owned(),
            Some(Trouble::Engine(e)) => format!("cannot run: {e}"),
            None => "is not loaded".to_owned(),
        };
        let loaded = || {
            let name = self.policy_name.as_deref().unwrap_or(&self.name);
            match &self.version {
                Some(v) if !v.is_empty() => format!("{name} {v}"),
                _ => name.to_owned(),
            }
        };
        match self.deciding {
            Deciding::File => format!("{} ({})", loaded(), self.running),
            Deciding::BuiltIn => "built-in default rules".to_owned(),
            Deciding::BuiltInFallback => match (&self.file, &self.error) {
                (Some(_), _) => format!("built-in default rules, because {file} {}", problem()),
                (None, Some(e)) => format!("built-in default rules ({e})"),
                (None, None) => "built-in default rules".to_owned(),
            },
            Deciding::KeptPrevious => format!(
                "{} ({}), the version loaded before; the file now there {}",
                loaded(),
                self.running,
                problem()
            ),
        }
    }
}

struct Current {
    policy: Option<Arc<WasmPolicy>>,
    stamp: Option<(SystemTime, u64)>,
    error: Option<Trouble>,
}

/// The running policy of a tierkeep process, reloaded when its file changes.
pub struct PolicyHost {
    name: String,
    dir: Option<PathBuf>,
    settings: String,
    cache_dir: Option<PathBuf>,
    engine: Option<Engine>,
    current: Mutex<Current>,
}

impl std::fmt::Debug for PolicyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHost")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PolicyHost {
    /// A host for policy `name` in `dir` with `settings` (JSON), caching compiled
    /// components in `cache_dir`. The policy is loaded at its first use; a load error is
    /// logged and kept in [`PolicyHost::status`] (the built-in rules decide meanwhile).
    pub fn new(name: &str, dir: Option<&Path>, settings: &str, cache_dir: Option<&Path>) -> Self {
        let (engine, error) = match engine() {
            Ok(e) => (Some(e), None),
            Err(e) => (None, Some(Trouble::Engine(e))),
        };
        PolicyHost {
            name: name.to_owned(),
            dir: dir.map(Path::to_owned),
            settings: settings.to_owned(),
            cache_dir: cache_dir.map(Path::to_owned),
            engine,
            current: Mutex::new(Current {
                policy: None,
                stamp: None,
                error,
            }),
        }
    }

    /// The host for a configuration's policy (compiled components cached in
    /// `<data_dir>/policy-cache`).
    pub fn configured(settings: &crate::config::Settings) -> Self {
        PolicyHost::new(
            &settings.policy,
            settings.policy_dir.as_deref(),
            &serde_json::to_string(&settings.policy_settings).unwrap_or_default(),
            Some(&cache_dir(settings)),
        )
    }

    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// The policy's settings (JSON), as handed to every decision.
    pub fn settings(&self) -> &str {
        &self.settings
    }

    /// The file the configuration names: `<policy.dir>/<name>.wasm` (for `default`, only
    /// when that file exists: otherwise the built-in rules are what is configured).
    fn configured_file(&self) -> Option<PathBuf> {
        let file = self.dir.as_ref()?.join(format!("{}.wasm", self.name));
        (self.name != "default" || file.is_file()).then_some(file)
    }

    /// Checks the policy file and reloads it if it is new or changed. Returns `true`
    /// when a new policy was put in place.
    pub fn refresh(&self) -> bool {
        let Ok(mut cur) = self.current.lock() else {
            return false;
        };
        let Some(engine) = &self.engine else {
            return false;
        };
        let source = resolve(&self.name, self.dir.as_deref());
        let path = match source {
            Ok(Source::Builtin) => {
                if cur.policy.is_some() {
                    tracing::info!(policy = %self.name, "policy file gone: the built-in default rules decide");
                }
                cur.policy = None;
                cur.stamp = None;
                cur.error = None;
                return false;
            }
            Ok(Source::File(p)) => p,
            Err(e) => {
                if cur.error.as_ref().map(Trouble::message) != Some(e.as_str()) {
                    match &cur.policy {
                        Some(p) => tracing::error!(
                            policy = %self.name,
                            "{e}; keeping {} {}, loaded before",
                            p.metadata.name,
                            p.metadata.version
                        ),
                        None => tracing::error!(
                            policy = %self.name,
                            "{e}; the built-in default rules decide until it appears"
                        ),
                    }
                }
                cur.stamp = None;
                cur.error = Some(Trouble::Missing(e));
                return false;
            }
        };
        let stamp = Self::stamp(&path);
        if stamp.is_some() && stamp == cur.stamp {
            return false;
        }
        cur.stamp = stamp;
        match WasmPolicy::load(engine, &path, &self.settings, self.cache_dir.as_deref()) {
            Ok(p) => {
                tracing::info!(
                    policy = %p.metadata.name,
                    version = %p.metadata.version,
                    file = %path.display(),
                    cached = p.from_cache,
                    "policy loaded"
                );
                cur.policy = Some(Arc::new(p));
                cur.error = None;
                true
            }
            Err(e) => {
                let keeping = match &cur.policy {
                    Some(p) => format!(
                        "keeping {} {}, loaded before",
                        p.metadata.name, p.metadata.version
                    ),
                    None => "the built-in default rules decide".to_owned(),
                };
                tracing::error!(policy = %self.name, "{e}; {keeping}");
                let reason = match &e {
                    PolicyError::Io { source, .. } => source.to_string(),
                    PolicyError::Invalid { message, .. } => message.clone(),
                };
                cur.error = Some(Trouble::Broken {
                    message: e.to_string(),
                    reason,
                });
                false
            }
        }
    }

    /// The policy to ask now (after checking for a changed file).
    pub fn rules(&self) -> Arc<dyn Rules + Send + Sync> {
        self.refresh();
        match self.current.lock().ok().and_then(|c| c.policy.clone()) {
            Some(p) => p,
            None => Arc::new(BuiltinRules),
        }
    }

    /// What runs now (after checking for a changed file).
    pub fn status(&self) -> PolicyStatus {
        self.refresh();
        let cur = self.current.lock().ok();
        let policy = cur.as_ref().and_then(|c| c.policy.clone());
        let error = cur.as_ref().and_then(|c| c.error.clone());
        let deciding = match (&policy, &error) {
            (Some(_), None) => Deciding::File,
            (Some(_), Some(_)) => Deciding::KeptPrevious,
            (None, None) => Deciding::BuiltIn,
            (None, Some(_)) => Deciding::BuiltInFallback,
        };
        PolicyStatus {
            name: self.name.clone(),
            running: policy
                .as_ref()
                .map_or_else(|| "built-in".to_owned(), |p| p.path.display().to_string()),
            version: policy.as_ref().map(|p| p.metadata.version.clone()),
            policy_name: policy.as_ref().map(|p| p.metadata.name.clone()),
            deciding,
            file: self.configured_file(),
            error: error.as_ref().map(|t| t.message().to_owned()),
            trouble: error,
        }
    }
}

/// Logs a decision's fault (with the policy's name) if it had one, and how long the
/// whole decision (policy call and checks) took.
pub fn report_fault<T>(
    policy: &str,
    what: &'static str,
    started: std::time::Instant,
    d: &crate::decision::Decision<T>,
) {
    crate::metrics::observe(
        "tierkeep_policy_decision_seconds",
        &[("decision", what)],
        started.elapsed(),
    );
    if let Some(f) = &d.fault {
        fault_seen(policy, what, f);
    }
}

/// Logs and counts the fault of a decision the planner asked for, if it had one (its
/// time was measured by [`Measured`]).
pub fn report_planned_fault(policy: &str, asked: &crate::plan::Asked) {
    if let Some(f) = &asked.fault {
        fault_seen(policy, asked.decision, f);
    }
}

fn fault_seen(policy: &str, what: &'static str, f: &PolicyFault) {
    let fault = match f {
        PolicyFault::Trap(_) => "trap",
        PolicyFault::OutOfFuel => "out_of_fuel",
        PolicyFault::OutOfMemory => "out_of_memory",
        PolicyFault::BadAnswer(_) => "bad_answer",
        PolicyFault::Unavailable(_) => "unavailable",
    };
    crate::metrics::inc(
        "tierkeep_policy_faults_total",
        &[("decision", what), ("fault", fault)],
    );
    tracing::warn!(
        policy,
        decision = what,
        "policy {policy}: {f}; the built-in rules decided instead"
    );
}

/// A policy whose every answer is timed into `tierkeep_policy_decision_seconds`: what
/// the engine hands the planner.
#[derive(Clone, Copy)]
pub struct Measured<'a>(pub &'a dyn Rules);

impl std::fmt::Debug for Measured<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Measured").field(&self.0.name()).finish()
    }
}

impl Measured<'_> {
    fn timed<T>(&self, what: &'static str, ask: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let answer = ask();
        crate::metrics::observe(
            "tierkeep_policy_decision_seconds",
            &[("decision", what)],
            started.elapsed(),
        );
        answer
    }
}

impl Rules for Measured<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn interval(&self, ctx: &PolicyContext) -> Result<u64, PolicyFault> {
        self.timed("interval", || self.0.interval(ctx))
    }

    fn aging(
        &self,
        ctx: &PolicyContext,
        black_box: &[BackupView],
    ) -> Result<Vec<String>, PolicyFault> {
        self.timed("aging", || self.0.aging(ctx, black_box))
    }

    fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: Room,
    ) -> Result<Vec<String>, PolicyFault> {
        self.timed("eviction", || self.0.eviction(ctx, deletion, room))
    }
}
