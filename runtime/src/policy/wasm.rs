//! A loaded policy component, [`WasmPolicy`]: loading and checking it (imports, exports,
//! metadata, settings), and running each decision in a fresh store with its fuel budget
//! and memory cap, the host's only import (`log`) and the conversions to the contract's
//! types.

use std::path::{Path, PathBuf};

use wasmtime::component::{Instance, InstancePre, Linker, types::ComponentItem};
use wasmtime::{Engine, ResourceLimiter, Store};

use super::bindings::exports::tierkeep::policy::{policy, policy_packed};
use super::compile::{compile_cached, sha256_hex};
use super::{ALLOWED_IMPORTS, FUEL, MEMORY_CAP, Metadata, PolicyError, SettingSpec, wit_log, wt};
use crate::decision::{PolicyContext, PolicyFault, Room, Rules};
use crate::domain::{BackupKind, BackupView, Zone, unix_ms as ms};

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
    pre: InstancePre<State>,
    /// The `policy` export.
    exports: policy::GuestIndices,
    /// The `policy-packed` export, where the module has it (modules built with the SDK
    /// do): the list decisions go through it.
    packed: Option<policy_packed::GuestIndices>,
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
        let exports = policy::GuestIndices::new(&pre).map_err(|e| {
            invalid(format!(
                "does not export the tierkeep:policy/policy@0.1.0 interface: {e:#}"
            ))
        })?;
        let packed = policy_packed::GuestIndices::new(&pre).ok();
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
            exports,
            packed,
        };
        let m = policy
            .call(|s, i| policy.exports.load(&mut *s, i)?.call_describe(s))
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
            .call(|s, i| {
                policy
                    .exports
                    .load(&mut *s, i)?
                    .call_validate_settings(s, &settings)
            })
            .map_err(|f| invalid(format!("validate-settings: {f}")))?
            .map_err(|e| invalid(format!("settings refused: {e}")))?;
        // A `policy-packed` export of the wrong shape is not used; `policy` decides.
        if let Some(packed) = &policy.packed
            && let Err(e) = policy.call(|s, i| packed.load(s, i).map(drop))
        {
            tracing::warn!(
                policy = %policy.metadata.name,
                "its tierkeep:policy/policy-packed export does not match the contract ({e}); \
                 using tierkeep:policy/policy alone"
            );
            policy.packed = None;
        }
        Ok(policy)
    }

    /// Whether the list decisions go through the module's `policy-packed` export.
    pub fn packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Runs one export in a fresh instance, in a fresh store with the fuel and memory
    /// limits.
    fn call<T>(
        &self,
        f: impl FnOnce(&mut Store<State>, &Instance) -> wasmtime::Result<T>,
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
        match f(&mut store, &instance) {
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

/// A backup list packed for `policy-packed`, column by column.
fn to_packed_backups(list: &[BackupView]) -> policy_packed::PackedBackups {
    let mut p = policy_packed::PackedBackups {
        ids: String::with_capacity(list.iter().map(|b| b.id.as_str().len()).sum()),
        id_lens: Vec::with_capacity(list.len()),
        kinds: Vec::with_capacity(list.len()),
        created_at: Vec::with_capacity(list.len()),
        size_bytes: Vec::with_capacity(list.len()),
    };
    for b in list {
        let id = b.id.as_str();
        p.ids.push_str(id);
        p.id_lens.push(u32::try_from(id.len()).unwrap_or(u32::MAX));
        p.kinds.push(match b.kind {
            BackupKind::Scheduled => 0,
            BackupKind::Manual => 1,
        });
        p.created_at.push(ms(b.created_at));
        p.size_bytes.push(b.size_bytes);
    }
    p
}

impl Rules for WasmPolicy {
    fn name(&self) -> &str {
        &self.metadata.name
    }

    fn interval(&self, ctx: &PolicyContext) -> Result<u64, PolicyFault> {
        let c = self.context(ctx);
        self.call(|s, i| self.exports.load(&mut *s, i)?.call_interval(s, &c))
    }

    fn aging(
        &self,
        ctx: &PolicyContext,
        black_box: &[BackupView],
    ) -> Result<Vec<String>, PolicyFault> {
        let c = self.context(ctx);
        if let Some(packed) = &self.packed {
            let list = to_packed_backups(black_box);
            return self.call(|s, i| packed.load(&mut *s, i)?.call_aging(s, &c, &list));
        }
        let list = to_wit_backups(black_box);
        self.call(|s, i| self.exports.load(&mut *s, i)?.call_aging(s, &c, &list))
    }

    fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: Room,
    ) -> Result<Vec<String>, PolicyFault> {
        let c = self.context(ctx);
        let room = wt::Room {
            backups: room.backups,
            bytes: room.bytes,
        };
        if let Some(packed) = &self.packed {
            let list = to_packed_backups(deletion);
            return self.call(|s, i| packed.load(&mut *s, i)?.call_eviction(s, &c, &list, room));
        }
        let list = to_wit_backups(deletion);
        self.call(|s, i| {
            self.exports
                .load(&mut *s, i)?
                .call_eviction(s, &c, &list, room)
        })
    }
}
