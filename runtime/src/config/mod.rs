//! Configuration: TOML layered by figment — built-in defaults < `--config FILE` (or
//! `./tierkeep.toml`) < `TIERKEEP_*` environment variables (`__` for nesting) <
//! command-line flags — then validated into [`Settings`], with errors that say which key
//! is wrong, why, and where its value came from.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::magic::RelativePathBuf;
use serde::{Deserialize, Serialize};

use crate::decision::{MAX_INTERVAL, MIN_INTERVAL};
use crate::domain::{
    Capacity, Schedule, Zone, format_duration, format_size, parse_duration, parse_size,
    validate_host_id,
};
use crate::store::ZoneUrl;

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

/// The configuration file as written (every key optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Host id; default: the machine's hostname.
    pub host_id: Option<String>,
    /// Catalog and staging directory; default `/var/lib/tierkeep`.
    pub data_dir: Option<RelativePathBuf>,
    /// What to back up.
    pub source: SourceConfig,
    /// T1 and T2.
    pub schedule: ScheduleConfig,
    /// Which policy decides.
    pub policy: PolicyConfig,
    /// The three zones.
    pub zones: ZonesConfig,
    /// S3 connection settings for `s3://` zones.
    pub s3: S3Config,
    /// Daemon settings.
    pub daemon: DaemonConfig,
    /// Archive tuning.
    pub backup: BackupConfig,
    /// Source consistency commands run around every backup.
    pub hooks: HooksConfig,
}

/// `[source]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Directories or files to back up (relative ones are relative to the config file).
    pub paths: Vec<RelativePathBuf>,
    /// Glob patterns to leave out, matched against absolute paths and file names.
    pub exclude: Vec<String>,
}

/// `[schedule]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// T1, e.g. `1h`.
    pub interval: Option<String>,
    /// T2, e.g. `4h`.
    pub aging: Option<String>,
}

/// `[policy]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `default` (built in) or the name of a `.wasm` in `dir`.
    pub name: Option<String>,
    /// Folder of policy modules.
    pub dir: Option<RelativePathBuf>,
    /// Settings handed to the policy.
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// `[zones]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZonesConfig {
    /// `[zones.black_box]`
    pub black_box: ZoneConfig,
    /// `[zones.deletion]`
    pub deletion: ZoneConfig,
    /// `[zones.reserved]`
    pub reserved: ZoneConfig,
}

/// One zone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZoneConfig {
    /// `file:///path` or `s3://bucket/prefix`; default: a folder of `data_dir`.
    pub url: Option<String>,
    /// Capacity in backups.
    pub max_backups: Option<u64>,
    /// Capacity in bytes (`500GiB`), optional.
    pub max_bytes: Option<SizeValue>,
    /// Reserved zone on S3 only: S3 Object Lock retention (`90d`) for new manual backups,
    /// where the bucket has Object Lock enabled.
    pub lock_retention: Option<String>,
    /// Black box only: free space its filesystem keeps after a scheduled backup
    /// (default `1GiB`); a backup that would leave less is not taken.
    pub min_free: Option<SizeValue>,
}

/// A size given as a number of bytes or as text (`500GiB`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Bytes.
    Bytes(u64),
    /// Human text.
    Text(String),
}

/// `[s3]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Path-style addressing (MinIO, Garage).
    pub force_path_style: Option<bool>,
    /// Access key id (else the standard AWS chain).
    pub access_key_id: Option<String>,
    /// Secret access key (never printed).
    pub secret_access_key: Option<String>,
}

/// `[daemon]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// `/metrics` and `/healthz` address.
    pub metrics_addr: Option<String>,
    /// Grace period on SIGTERM.
    pub shutdown_grace: Option<String>,
}

/// `[hooks]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Command run (with `sh -c`) before a backup reads its sources; failing aborts it.
    pub pre_backup: Option<String>,
    /// Command run after every backup whose pre-hook was started, whatever happened.
    pub post_backup: Option<String>,
    /// Time limit of each hook (default `5m`); a hook still running is killed.
    pub timeout: Option<String>,
}

/// `[backup]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// zstd level, 1–19 (default 3).
    pub compression_level: Option<i32>,
    /// Compression threads (default: all cores).
    pub threads: Option<u32>,
}

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

fn default_host_id() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| validate_host_id(s).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
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

fn resolve(p: &RelativePathBuf) -> PathBuf {
    let rel = p.relative();
    let abs = if rel.is_absolute() {
        rel
    } else {
        std::env::current_dir().map(|d| d.join(&rel)).unwrap_or(rel)
    };
    normalize(&abs)
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

fn validate(raw: RawConfig, file: Option<PathBuf>, deep: bool) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let host_id = raw.host_id.clone().unwrap_or_else(default_host_id);
    if let Err(e) = validate_host_id(&host_id) {
        problems.push(format!("host_id `{host_id}` {e}"));
    }
    let data_dir = raw
        .data_dir
        .as_ref()
        .map(resolve)
        .unwrap_or_else(|| PathBuf::from("/var/lib/tierkeep"));

    let policy = raw.policy.name.clone().unwrap_or_else(|| "default".into());
    if policy != "default" && raw.policy.dir.is_none() {
        problems.push(format!(
            "policy.name `{policy}`: set policy.dir to the folder holding {policy}.wasm \
             (the built-in policy is `default`)"
        ));
    }
    if policy.is_empty() || policy.contains(['/', '\\']) || policy.starts_with('.') {
        problems.push(format!(
            "policy.name `{policy}`: a policy name, not a path (the file is <policy.dir>/<name>.wasm)"
        ));
    }
    let builtin = policy == "default";

    let dur = |key: &str, v: &Option<String>, default: &str, problems: &mut Vec<String>| {
        let text = v.clone().unwrap_or_else(|| default.to_owned());
        match parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                problems.push(format!("{key} must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                None
            }
        }
    };
    let interval = dur(
        "schedule.interval",
        &raw.schedule.interval,
        "1h",
        &mut problems,
    );
    let aging = dur("schedule.aging", &raw.schedule.aging, "3h", &mut problems);
    // The host refuses an interval outside these bounds from any policy, the built-in
    // rules included (T1 is their interval): refuse it here rather than at run time.
    if let Some(t1) = interval
        && !(MIN_INTERVAL..=MAX_INTERVAL).contains(&t1)
    {
        problems.push(format!(
            "schedule.interval ({}): the host allows {} to {} between scheduled backups",
            format_duration(t1),
            format_duration(MIN_INTERVAL),
            format_duration(MAX_INTERVAL)
        ));
    }
    if let Some(t2) = aging
        && t2 > MAX_AGING
    {
        problems.push(format!(
            "schedule.aging ({}): at most {} (the host computes from it when each backup \
             is due to age)",
            format_duration(t2),
            format_duration(MAX_AGING)
        ));
    }
    if let (Some(t1), Some(t2)) = (interval, aging)
        && builtin
        && (t2 < t1 || t2 > t1 * 10)
    {
        problems.push(format!(
            "schedule.aging ({}) must lie between schedule.interval ({}) and 10 times it ({}) \
             for the default policy (T1 ≤ T2 ≤ 10·T1)",
            format_duration(t2),
            format_duration(t1),
            format_duration(t1 * 10)
        ));
    }

    let bb_max = raw.zones.black_box.max_backups.unwrap_or(3);
    if builtin && !(1..=10).contains(&bb_max) {
        problems.push(format!(
            "zones.black_box.max_backups = {bb_max}: the black box holds 1 to 10 backups"
        ));
    } else if bb_max == 0 {
        problems.push("zones.black_box.max_backups must be at least 1".into());
    }
    let mut zones = Vec::new();
    let mut url_texts = Vec::new();
    for (zone, zc) in [
        (Zone::BlackBox, &raw.zones.black_box),
        (Zone::Deletion, &raw.zones.deletion),
        (Zone::Reserved, &raw.zones.reserved),
    ] {
        let key = match zone {
            Zone::BlackBox => "zones.black_box",
            Zone::Deletion => "zones.deletion",
            Zone::Reserved => "zones.reserved",
        };
        let max_backups = match zone {
            Zone::BlackBox => bb_max,
            _ => zc.max_backups.unwrap_or(bb_max.saturating_mul(10)),
        };
        if max_backups == 0 {
            problems.push(format!("{key}.max_backups must be at least 1"));
        }
        let max_bytes = match &zc.max_bytes {
            None => None,
            Some(SizeValue::Bytes(0)) => {
                problems.push(format!("{key}.max_bytes must be more than zero"));
                None
            }
            Some(SizeValue::Bytes(b)) => Some(*b),
            Some(SizeValue::Text(t)) => match parse_size(t) {
                Ok(0) => {
                    problems.push(format!("{key}.max_bytes must be more than zero"));
                    None
                }
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(format!("{key}.max_bytes: {e}"));
                    None
                }
            },
        };
        let text = match &zc.url {
            Some(u) => u.clone(),
            None => format!("file://{}", data_dir.join(zone.as_str()).display()),
        };
        let parsed = text.parse::<ZoneUrl>();
        let on_s3 = match &parsed {
            Ok(u) => u.is_s3(),
            Err(e) => e.is_s3(),
        };
        let url = match parsed {
            // Checked first: `s3://` in the black box is refused for what it is.
            _ if on_s3 && zone == Zone::BlackBox => {
                problems.push(format!(
                    "{key}.url `{text}`: the black box is a local directory (on SSD); only the \
                     deletion and reserved zones can be S3 buckets"
                ));
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("{key}.url `{text}`: {e}"));
                None
            }
        };
        // The duplicate check below compares what was written (normalized when valid).
        url_texts.push(url.as_ref().map_or(text, ToString::to_string));
        let lock_retention = match &zc.lock_retention {
            None => None,
            Some(_) if zone != Zone::Reserved || !on_s3 => {
                problems.push(format!(
                    "{key}.lock_retention: S3 Object Lock applies only to a reserved zone on S3"
                ));
                None
            }
            Some(t) => match parse_duration(t) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    problems.push(format!("{key}.lock_retention must be longer than zero"));
                    None
                }
                Err(e) => {
                    problems.push(format!("{key}.lock_retention: {e}"));
                    None
                }
            },
        };
        let min_free = match (&zc.min_free, zone) {
            (None, _) => DEFAULT_MIN_FREE,
            (Some(_), Zone::Deletion | Zone::Reserved) => {
                problems.push(format!(
                    "{key}.min_free applies only to the black box (zones.black_box.min_free)"
                ));
                0
            }
            (Some(SizeValue::Bytes(b)), Zone::BlackBox) => *b,
            (Some(SizeValue::Text(t)), Zone::BlackBox) => parse_size(t).unwrap_or_else(|e| {
                problems.push(format!("{key}.min_free: {e}"));
                DEFAULT_MIN_FREE
            }),
        };
        // Without a usable URL there are problems, and no settings are built.
        if let Some(url) = url {
            zones.push(ZoneSettings {
                zone,
                url,
                capacity: Capacity {
                    max_backups,
                    max_bytes,
                },
                lock_retention,
                min_free: if zone == Zone::BlackBox { min_free } else { 0 },
            });
        }
    }
    {
        let mut urls: Vec<&str> = url_texts.iter().map(|u| u.trim_end_matches('/')).collect();
        urls.sort_unstable();
        if urls.windows(2).any(|w| w[0] == w[1]) {
            problems.push("two zones have the same url: every zone needs its own place".into());
        }
    }
    if let (Some(t1), Some(t2)) = (interval, aging) {
        let needed = (t2.as_secs() / t1.as_secs().max(1)).max(1);
        if needed > bb_max {
            warnings.push(format!(
                "the black box holds {bb_max} backups but T2/T1 = {needed}: backups will \
                 normally age out early, when the black box is full, rather than after T2"
            ));
        }
    }

    let mut sources: Vec<PathBuf> = raw.source.paths.iter().map(resolve).collect();
    // A source inside another is already covered by it.
    sources.sort();
    sources.dedup();
    let all = sources.clone();
    sources.retain(|s| {
        let outer = all.iter().find(|o| *o != s && s.starts_with(o));
        if let Some(o) = outer {
            warnings.push(format!(
                "source.paths: {} lies inside {} and is backed up with it",
                s.display(),
                o.display()
            ));
        }
        outer.is_none()
    });
    if sources.is_empty() {
        problems.push("source.paths is empty: name at least one directory to back up".into());
    }
    if let Err(e) = crate::archive::write::compile_excludes(&raw.source.exclude) {
        problems.push(format!("source.exclude: {e}"));
    }

    let level = raw.backup.compression_level.unwrap_or(3);
    if !(1..=19).contains(&level) {
        problems.push(format!(
            "backup.compression_level = {level}: zstd levels 1 to 19 are supported"
        ));
    }
    let threads = raw.backup.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });

    let shutdown_grace = dur(
        "daemon.shutdown_grace",
        &raw.daemon.shutdown_grace,
        "30s",
        &mut problems,
    )
    .unwrap_or(Duration::from_secs(30));
    let metrics_addr = raw
        .daemon
        .metrics_addr
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9187".into());
    match metrics_addr.parse::<std::net::SocketAddr>() {
        Err(_) if metrics_addr != "off" => problems.push(format!(
            "daemon.metrics_addr `{metrics_addr}` is not an address such as 127.0.0.1:9187 \
             (or `off`)"
        )),
        Ok(a) if !a.ip().is_loopback() => warnings.push(format!(
            "daemon.metrics_addr {a} is not a loopback address: /metrics and /healthz will \
             answer anyone who can reach it (they carry no secrets, but put a firewall or a \
             proxy in front)"
        )),
        _ => {}
    }
    let hook_timeout = dur("hooks.timeout", &raw.hooks.timeout, "5m", &mut problems)
        .unwrap_or(Duration::from_secs(300));
    let hook = |key: &str, cmd: &Option<String>, problems: &mut Vec<String>| match cmd {
        Some(c) if c.trim().is_empty() => {
            problems.push(format!(
                "hooks.{key} is empty: remove the key or give a command"
            ));
            None
        }
        other => other.clone(),
    };
    let hooks = Hooks {
        pre_backup: hook("pre_backup", &raw.hooks.pre_backup, &mut problems),
        post_backup: hook("post_backup", &raw.hooks.post_backup, &mut problems),
        timeout: hook_timeout,
    };

    if deep && problems.is_empty() {
        for src in &sources {
            if fs::symlink_metadata(src).is_ok_and(|m| m.file_type().is_symlink()) {
                problems.push(format!(
                    "source.paths: {} is a symlink{}; only the link itself would be backed \
                     up: name the real path instead",
                    src.display(),
                    fs::canonicalize(src)
                        .map(|r| format!(" to {}", r.display()))
                        .unwrap_or_default()
                ));
                continue;
            }
            match fs::metadata(src) {
                Ok(md) if md.is_dir() => {
                    if let Err(e) = fs::read_dir(src) {
                        problems.push(format!(
                            "source.paths: {} cannot be read: {e}",
                            src.display()
                        ));
                    }
                }
                Ok(_) => {
                    if let Err(e) = fs::File::open(src) {
                        problems.push(format!(
                            "source.paths: {} cannot be read: {e}",
                            src.display()
                        ));
                    }
                }
                Err(e) => problems.push(format!("source.paths: {}: {e}", src.display())),
            }
        }
        let mut dirs = vec![("data_dir".to_owned(), data_dir.clone())];
        for z in &zones {
            if let Some(p) = z.url.local_dir() {
                dirs.push((format!("zone {} ({})", z.zone, z.url), p.to_path_buf()));
            }
        }
        for (what, dir) in dirs {
            if let Err(e) = probe_writable(&dir) {
                problems.push(format!("{what}: {} is not writable: {e}", dir.display()));
            }
        }
        for z in &zones {
            if let Some(zp) = z.url.local_dir() {
                for src in &sources {
                    if zp.starts_with(src) {
                        warnings.push(format!(
                            "zone {} lies inside source {}: it is left out of backups",
                            z.zone,
                            src.display()
                        ));
                    }
                }
            }
        }
    }

    if raw.s3.access_key_id.is_some() != raw.s3.secret_access_key.is_some() {
        problems.push(
            "s3.access_key_id and s3.secret_access_key go together: set both, or neither to \
             use the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, \
             AWS_PROFILE, instance role)"
                .into(),
        );
    }
    if let Some(ep) = &raw.s3.endpoint
        && !(ep.starts_with("http://") || ep.starts_with("https://"))
    {
        problems.push(format!(
            "s3.endpoint `{ep}`: expected a URL such as http://127.0.0.1:9000"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let [bb, del, res]: [ZoneSettings; 3] = match zones.try_into() {
        Ok(z) => z,
        Err(_) => return Err(vec!["internal: zone list".into()]),
    };
    Ok(Settings {
        host_id,
        data_dir,
        sources,
        exclude: raw.source.exclude,
        schedule: Schedule {
            interval: interval.unwrap_or(Duration::from_secs(3600)),
            aging: aging.unwrap_or(Duration::from_secs(3 * 3600)),
        },
        policy,
        policy_dir: raw.policy.dir.as_ref().map(resolve),
        policy_settings: raw.policy.settings,
        zones: [bb, del, res],
        s3: raw.s3,
        metrics_addr,
        shutdown_grace,
        hooks,
        compression_level: level,
        threads,
        warnings,
        file,
    })
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".tierkeep-probe-{}", std::process::id()));
    fs::write(&probe, b"probe")?;
    fs::remove_file(&probe)
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

    /// Every effective value as (dotted key, display text); secrets are redacted.
    pub fn effective(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            ("host_id".into(), self.host_id.clone()),
            ("data_dir".into(), self.data_dir.display().to_string()),
            (
                "source.paths".into(),
                format!(
                    "[{}]",
                    self.sources
                        .iter()
                        .map(|p| format!("{:?}", p.display().to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            ("source.exclude".into(), format!("{:?}", self.exclude)),
            (
                "schedule.interval".into(),
                format_duration(self.schedule.interval),
            ),
            (
                "schedule.aging".into(),
                format_duration(self.schedule.aging),
            ),
            ("policy.name".into(), self.policy.clone()),
            (
                "policy.dir".into(),
                self.policy_dir
                    .as_ref()
                    .map_or_else(|| "(none)".into(), |p| p.display().to_string()),
            ),
            (
                "policy.settings".into(),
                serde_json::to_string(&self.policy_settings).unwrap_or_default(),
            ),
        ];
        for z in &self.zones {
            let key = match z.zone {
                Zone::BlackBox => "zones.black_box",
                Zone::Deletion => "zones.deletion",
                Zone::Reserved => "zones.reserved",
            };
            v.push((format!("{key}.url"), z.url.to_string()));
            v.push((
                format!("{key}.max_backups"),
                z.capacity.max_backups.to_string(),
            ));
            if z.zone == Zone::BlackBox {
                v.push((format!("{key}.min_free"), format_size(z.min_free)));
            }
            if z.zone == Zone::Reserved {
                v.push((
                    format!("{key}.lock_retention"),
                    z.lock_retention
                        .map_or_else(|| "(none)".into(), format_duration),
                ));
            }
            v.push((
                format!("{key}.max_bytes"),
                z.capacity
                    .max_bytes
                    .map_or_else(|| "(no limit)".into(), format_size),
            ));
        }
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "(not set)".into());
        v.push(("s3.endpoint".into(), opt(&self.s3.endpoint)));
        v.push(("s3.region".into(), opt(&self.s3.region)));
        v.push((
            "s3.force_path_style".into(),
            self.s3.force_path_style.unwrap_or(true).to_string(),
        ));
        v.push((
            "s3.access_key_id".into(),
            self.s3.access_key_id.as_ref().map_or_else(
                || "(not set: standard AWS chain)".into(),
                |_| "<redacted>".into(),
            ),
        ));
        v.push((
            "s3.secret_access_key".into(),
            self.s3.secret_access_key.as_ref().map_or_else(
                || "(not set: standard AWS chain)".into(),
                |_| "<redacted>".into(),
            ),
        ));
        v.push(("daemon.metrics_addr".into(), self.metrics_addr.clone()));
        v.push((
            "daemon.shutdown_grace".into(),
            format_duration(self.shutdown_grace),
        ));
        let cmd = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".into());
        v.push(("hooks.pre_backup".into(), cmd(&self.hooks.pre_backup)));
        v.push(("hooks.post_backup".into(), cmd(&self.hooks.post_backup)));
        v.push(("hooks.timeout".into(), format_duration(self.hooks.timeout)));
        v.push((
            "backup.compression_level".into(),
            self.compression_level.to_string(),
        ));
        v.push(("backup.threads".into(), self.threads.to_string()));
        v
    }
}

/// Where the value of dotted `key` came from.
pub fn provenance(fig: &Figment, key: &str) -> String {
    // A derived key (zone URLs from data_dir) has no value of its own.
    match fig.find_metadata(key) {
        None => {
            if key.ends_with(".url") && !key.starts_with("s3") {
                "default (under data_dir)".into()
            } else if key.contains(".max_backups") && !key.contains("black_box") {
                "default (10 × zones.black_box.max_backups)".into()
            } else {
                "default".into()
            }
        }
        Some(md) => {
            if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
                format!("file {}", path.display())
            } else if md.name.contains("environment") {
                format!(
                    "environment TIERKEEP_{}",
                    key.replace('.', "__").to_ascii_uppercase()
                )
            } else {
                "command line".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        fs::write(&f, text).unwrap();
        load(
            &Sources {
                file: Some(f),
                flags: vec![],
                env: false,
            },
            false,
        )
        .map(|l| l.settings)
    }

    #[test]
    fn defaults_follow_the_patent() {
        let s = load_str("source.paths = [\"/srv\"]\ndata_dir = \"/d\"\n").unwrap();
        assert_eq!(s.zone(Zone::BlackBox).capacity.max_backups, 3);
        assert_eq!(s.zone(Zone::Deletion).capacity.max_backups, 30);
        assert_eq!(s.zone(Zone::Reserved).capacity.max_backups, 30);
        assert_eq!(s.zone(Zone::Reserved).url.to_string(), "file:///d/reserved");
    }

    #[test]
    fn zone_urls_are_parsed_once_and_explained() {
        let s = load_str(
            "source.paths = [\"/srv\"]\ndata_dir = \"/d\"\n\
             [zones.black_box]\nurl = \"file:///d/./bb/\"\n\
             [zones.deletion]\nurl = \"s3://bucket/zone/\"\n\
             [zones.reserved]\nurl = \"s3://bucket\"\nlock_retention = \"1d\"\n",
        )
        .unwrap();
        let bb = &s.zone(Zone::BlackBox).url;
        assert_eq!(bb.local_dir(), Some(Path::new("/d/bb")));
        assert_eq!(bb.to_string(), "file:///d/bb");
        let del = &s.zone(Zone::Deletion).url;
        assert_eq!(
            (del.bucket(), del.key_prefix().as_str()),
            (Some("bucket"), "zone/")
        );
        assert_eq!(del.to_string(), "s3://bucket/zone/", "as written");
        assert_eq!(s.zone(Zone::Reserved).url.to_string(), "s3://bucket");

        let e = load_str(
            "source.paths = [\"/srv\"]\n\
             [zones.black_box]\nurl = \"s3://\"\n\
             [zones.deletion]\nurl = \"file://relative\"\n\
             [zones.reserved]\nurl = \"/plain/path\"\nlock_retention = \"1d\"\n",
        )
        .unwrap_err()
        .to_string();
        for problem in [
            "zones.black_box.url `s3://`: the black box is a local directory (on SSD); only \
             the deletion and reserved zones can be S3 buckets",
            "zones.deletion.url `file://relative`: a file URL needs an absolute path \
             (file:///var/lib/...)",
            "zones.reserved.url `/plain/path`: expected file:///path or s3://bucket/prefix",
            "zones.reserved.lock_retention: S3 Object Lock applies only to a reserved zone on S3",
        ] {
            assert!(e.contains(problem), "{problem}\n in: {e}");
        }
        let e = load_str(
            "source.paths = [\"/srv\"]\n[zones.deletion]\nurl = \"s3:///zone\"\n\
             [zones.reserved]\nurl = \"s3://b/x/\"\n[zones.black_box]\nurl = \"file:///bb\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "zones.deletion.url `s3:///zone`: no bucket name (expected s3://bucket or \
                 s3://bucket/prefix)"
            ),
            "{e}"
        );
        let e = load_str(
            "source.paths = [\"/srv\"]\n[zones.deletion]\nurl = \"s3://b/x\"\n\
             [zones.reserved]\nurl = \"s3://b/x/\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("two zones have the same url"), "{e}");
    }

    #[test]
    fn bounds_and_unknown_keys_are_explained() {
        let e = load_str(
            "source.paths = [\"/srv\"]\n[schedule]\ninterval = \"1h\"\naging = \"11h\"\n\
             [zones.black_box]\nmax_backups = 11\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("schedule.aging"), "{e}");
        assert!(e.contains("1 to 10 backups"), "{e}");
        let e = load_str("source.paths = [\"/srv\"]\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = load_str("[zones.black_box]\nmax_bakcups = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_bakcups"), "{e}");
    }

    #[test]
    fn intervals_the_host_would_refuse_are_refused_here() {
        let e = load_str(
            "source.paths = [\"/srv\"]\n[schedule]\ninterval = \"40d\"\naging = \"40d\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("schedule.interval (40d)") && e.contains("1s to 31d"),
            "{e}"
        );
        load_str("source.paths = [\"/srv\"]\n[schedule]\ninterval = \"31d\"\naging = \"31d\"\n")
            .unwrap();
        let e = load_str(
            "source.paths = [\"/srv\"]\n[policy]\nname = \"gfs\"\ndir = \"/p\"\n\
             [schedule]\naging = \"4000d\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("schedule.aging (4000d): at most 3650d"), "{e}");
    }

    #[test]
    fn every_example_config_the_repo_ships_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/examples");
        let mut seen = 0;
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let loaded = load(
                    &Sources {
                        file: Some(p.clone()),
                        flags: vec![],
                        env: false,
                    },
                    false,
                );
                assert!(loaded.is_ok(), "{}: {}", p.display(), loaded.unwrap_err());
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs found in {}", dir.display());
    }

    #[test]
    fn nested_sources_are_merged() {
        let s = load_str("source.paths = [\"/srv/app\", \"/srv\", \"/srv\"]\n").unwrap();
        assert_eq!(s.sources, vec![PathBuf::from("/srv")]);
        assert!(s.warnings.iter().any(|w| w.contains("/srv/app")));
    }

    #[test]
    fn small_reserved_zone_is_allowed() {
        let s = load_str("source.paths = [\"/srv\"]\n[zones.reserved]\nmax_backups = 1\n").unwrap();
        assert_eq!(s.zone(Zone::Reserved).capacity.max_backups, 1);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        fs::write(&f, "source.paths = [\"data\"]\ndata_dir = \"state\"\n").unwrap();
        let s = load(
            &Sources {
                file: Some(f),
                flags: vec![],
                env: false,
            },
            false,
        )
        .unwrap()
        .settings;
        let root = fs::canonicalize(dir.path()).unwrap();
        assert_eq!(s.sources, vec![root.join("data")]);
        assert_eq!(s.data_dir, root.join("state"));
    }
}
