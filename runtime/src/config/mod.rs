//! Configuration: TOML layered by figment — built-in defaults < `--config FILE` (or
//! `./tierkeep.toml`) < `TIERKEEP_*` environment variables (`__` for nesting) <
//! command-line flags — then validated into [`Settings`], with errors that say which key
//! is wrong, why, and where its value came from.

mod raw;
mod show;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

use self::validate::validate;
use crate::domain::{Capacity, Schedule, Zone};
use crate::store::ZoneUrl;

pub use self::raw::{
    BackupConfig, DaemonConfig, EncryptionConfig, HooksConfig, PolicyConfig, RawConfig, S3Config,
    ScheduleConfig, SizeValue, SourceConfig, ZoneConfig, ZonesConfig,
};
pub use self::show::provenance;

/// Top-level keys that `TIERKEEP_*` variables may set; other `TIERKEEP_*` variables (test
/// fixtures, `TIERKEEP_CONFIG`, `TIERKEEP_LOG`) are not configuration.
const ENV_KEYS: &[&str] = &[
    "host_id", "data_dir", "source", "schedule", "policy", "zones", "s3", "daemon", "backup",
    "hooks",
];

/// The longest `schedule.aging` (T2) accepted: ten years.
pub const MAX_AGING: Duration = Duration::from_secs(3650 * 86_400);

/// Free space the black box's filesystem keeps after a scheduled backup, by default.
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`; `None` means `./tierkeep.toml` if it exists.
    pub file: Option<PathBuf>,
    /// Command-line overrides, as (dotted key, value).
    pub flags: Vec<(String, serde_json::Value)>,
    /// Whether to read `TIERKEEP_*` variables.
    pub env: bool,
}

/// A configuration that failed to load or validate: every problem, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration{}:\n{}", .origin, .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// " (file ...)", or empty.
    pub origin: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(origin: String, p: String) -> Self {
        ConfigError {
            origin,
            problems: vec![p],
        }
    }
}

/// One zone, resolved.
#[derive(Debug, Clone)]
pub struct ZoneSettings {
    /// Which zone.
    pub zone: Zone,
    /// Its URL, parsed.
    pub url: ZoneUrl,
    /// Its capacity.
    pub capacity: Capacity,
    /// Object Lock retention for new backups (reserved zone on S3).
    pub lock_retention: Option<Duration>,
    /// Black box: free space its filesystem keeps after a scheduled backup.
    pub min_free: u64,
}

/// The validated `[hooks]`.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Run before a backup; a failure aborts the backup.
    pub pre_backup: Option<String>,
    /// Run after a backup whose pre-hook started, whatever the outcome.
    pub post_backup: Option<String>,
    /// Limit per hook.
    pub timeout: Duration,
}

/// `[encryption]`, validated.
#[derive(Debug, Clone, Default)]
pub struct EncryptionSettings {
    /// Who new encrypted archives are made for; `None`: encryption is off.
    pub recipients: Option<std::sync::Arc<crate::crypt::Recipients>>,
    /// `encryption.identity_file`.
    pub identity_file: Option<PathBuf>,
    /// `encryption.passphrase_file`.
    pub passphrase_file: Option<PathBuf>,
    /// Whether the black box is encrypted too.
    pub black_box: bool,
}

impl EncryptionSettings {
    /// The recipients when archives stored in `zone` are encrypted.
    pub fn for_zone(
        &self,
        zone: crate::domain::Zone,
    ) -> Option<&std::sync::Arc<crate::crypt::Recipients>> {
        self.recipients
            .as_ref()
            .filter(|_| zone != crate::domain::Zone::BlackBox || self.black_box)
    }
}

/// The validated, effective configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host id.
    pub host_id: String,
    /// Catalog and staging directory.
    pub data_dir: PathBuf,
    /// Absolute source paths.
    pub sources: Vec<PathBuf>,
    /// Exclude globs.
    pub exclude: Vec<String>,
    /// T1, T2.
    pub schedule: Schedule,
    /// Policy name.
    pub policy: String,
    /// Policy folder.
    pub policy_dir: Option<PathBuf>,
    /// Policy settings.
    pub policy_settings: BTreeMap<String, serde_json::Value>,
    /// Black box, deletion, reserved.
    pub zones: [ZoneSettings; 3],
    /// S3 settings.
    pub s3: S3Config,
    /// Metrics address.
    pub metrics_addr: String,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Source consistency hooks.
    pub hooks: Hooks,
    /// zstd level.
    pub compression_level: i32,
    /// Compression threads.
    pub threads: u32,
    /// Whether scheduled backups copy unchanged frames from the previous one.
    pub reuse: bool,
    /// How often every file is read in full despite reuse.
    pub full_read_every: Duration,
    /// Encryption at rest.
    pub encryption: EncryptionSettings,
    /// Non-fatal remarks (`config check` prints them).
    pub warnings: Vec<String>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
}

/// A loaded configuration: the figment (for provenance) and the validated settings.
#[derive(Debug)]
pub struct Loaded {
    /// The layered sources.
    pub figment: Figment,
    /// The result.
    pub settings: Settings,
}

/// Builds the layered figment.
pub fn figment(sources: &Sources) -> Result<(Figment, Option<PathBuf>), ConfigError> {
    let mut fig = Figment::new();
    let file = match &sources.file {
        Some(f) => {
            if !f.is_file() {
                return Err(ConfigError::one(
                    String::new(),
                    format!(
                        "--config {}: no such file (or not a regular file)",
                        f.display()
                    ),
                ));
            }
            Some(f.clone())
        }
        None => {
            let local = PathBuf::from("tierkeep.toml");
            local.is_file().then_some(local)
        }
    };
    if let Some(f) = &file {
        let text = fs::read_to_string(f).map_err(|e| {
            ConfigError::one(String::new(), format!("cannot read {}: {e}", f.display()))
        })?;
        if let Err(e) = toml::from_str::<toml::Value>(&text) {
            return Err(ConfigError::one(
                format!(" ({})", f.display()),
                format!("not valid TOML: {e}"),
            ));
        }
        let abs = fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        fig = fig.merge(Toml::file_exact(abs));
    }
    if sources.env {
        fig = fig.merge(Env::prefixed("TIERKEEP_").split("__").filter(|k| {
            let first = k.as_str().split('.').next().unwrap_or("");
            ENV_KEYS.iter().any(|e| first.eq_ignore_ascii_case(e))
        }));
    }
    for (key, value) in &sources.flags {
        fig = fig.merge(Serialized::global(key, value.clone()));
    }
    Ok((fig, file))
}

/// Loads and validates. `deep` also checks the filesystem: sources readable, local zone
/// and data directories writable.
pub fn load(sources: &Sources, deep: bool) -> Result<Loaded, ConfigError> {
    let (fig, file) = figment(sources)?;
    let origin = file
        .as_ref()
        .map(|f| format!(" ({})", f.display()))
        .unwrap_or_default();
    let raw: RawConfig = fig.extract().map_err(|e| ConfigError {
        origin: origin.clone(),
        problems: e.into_iter().map(|e| describe_figment_error(&e)).collect(),
    })?;
    let settings = validate(raw, file, deep).map_err(|problems| ConfigError {
        origin: origin.clone(),
        problems,
    })?;
    Ok(Loaded {
        figment: fig,
        settings,
    })
}

fn describe_figment_error(e: &figment::Error) -> String {
    let key = if e.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", e.path.join("."))
    };
    let from = e
        .metadata
        .as_ref()
        .map(|m| {
            let src = m
                .source
                .as_ref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            format!(" (from {}{src})", m.name)
        })
        .unwrap_or_default();
    format!("{key}{}{from}", e.kind)
}

/// Removes `.` and resolves `..` lexically (without following symlinks), so archive entry
/// names never contain them.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Settings {
    /// The settings of one zone.
    pub fn zone(&self, zone: Zone) -> &ZoneSettings {
        &self.zones[match zone {
            Zone::BlackBox => 0,
            Zone::Deletion => 1,
            Zone::Reserved => 2,
        }]
    }

    /// How to reach the S3 server for `zone`.
    pub fn s3_settings(&self, zone: Zone) -> crate::store::S3Settings {
        crate::store::S3Settings {
            endpoint: self.s3.endpoint.clone(),
            region: self.s3.region.clone(),
            force_path_style: self.s3.force_path_style.unwrap_or(true),
            credentials: self
                .s3
                .access_key_id
                .clone()
                .zip(self.s3.secret_access_key.clone()),
            lock_retention: self.zone(zone).lock_retention,
            upload_journal: Some(self.data_dir.join("staging").join("uploads")),
        }
    }

    /// The catalog file.
    pub fn catalog_path(&self) -> PathBuf {
        self.data_dir.join("catalog.sqlite")
    }
}
