//! [`PolicyHost`], the running policy of a process: the configured file reloaded when it
//! changes (drop-in), a broken file never replacing a working one, and what decides now
//! ([`PolicyStatus`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use wasmtime::Engine;

use super::{PolicyError, Source, WasmPolicy, cache_dir, engine, resolve};
use crate::decision::{BuiltinRules, Rules};

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
