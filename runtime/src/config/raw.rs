//! The configuration file's shape as written, every key optional: what figment extracts
//! from the layered sources before validation.

use std::collections::BTreeMap;

use figment::value::magic::RelativePathBuf;
use serde::{Deserialize, Serialize};

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
    /// Encryption at rest of the deletion and reserved zones.
    pub encryption: EncryptionConfig,
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
    /// Copy the frames of unchanged files from the previous backup (default true).
    pub reuse: Option<bool>,
    /// Read every file in full at least this often, even when reuse is on (default
    /// `7d`), so that a change hidden behind an unchanged mtime and ctime cannot last.
    pub full_read_every: Option<String>,
}

/// `[encryption]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Public keys archives are encrypted to: `age1…`, `ssh-ed25519 …`, `ssh-rsa …`.
    pub recipients: Vec<String>,
    /// A file of recipients, one per line (`#` comments), as `age -R` reads.
    pub recipients_file: Option<RelativePathBuf>,
    /// A file whose first line is a passphrase: the only recipient (age's scrypt).
    pub passphrase_file: Option<RelativePathBuf>,
    /// The identity that decrypts, for restore, `ls`, export and `verify --deep` (keep it
    /// off the host; `--identity` and `TIERKEEP_IDENTITY` name one for a single command).
    pub identity_file: Option<RelativePathBuf>,
    /// Encrypt the black box too (default false: the black box stays plaintext beside
    /// the data it copies, so reuse and restores need no key).
    pub black_box: Option<bool>,
}
