//! What `status` shows: each zone's usage and health, damaged backups, the next backup.

use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use super::{OpsError, Tierkeep};
use crate::domain::{Capacity, Usage, Zone, format_size};

/// A zone's state for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneStatus {
    /// Zone.
    pub zone: Zone,
    /// URL.
    pub url: String,
    /// Backups present.
    pub backups: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Capacity in backups.
    pub max_backups: u64,
    /// Capacity in bytes.
    pub max_bytes: Option<u64>,
    /// Newest backup in the zone.
    pub newest: Option<String>,
    /// Whether the zone answered the last work that needed it (false while it is
    /// unreachable: work that needs it is skipped until a probe finds it answering).
    pub reachable: bool,
    /// Since when it has not answered, while it is unreachable.
    #[serde(with = "time::serde::rfc3339::option")]
    pub unreachable_since: Option<OffsetDateTime>,
    /// The error it gave when it stopped answering.
    pub last_error: Option<String>,
}

/// A backup whose copy was found damaged, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedBackup {
    /// The backup.
    pub id: String,
    /// The zone holding the damaged copy.
    pub zone: Zone,
    /// When it was found damaged.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// What the check found.
    pub reason: String,
}

/// The answer of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Host id.
    pub host_id: String,
    /// Zones.
    pub zones: Vec<ZoneStatus>,
    /// When the next scheduled backup is due.
    #[serde(with = "time::serde::rfc3339")]
    pub next_backup: OffsetDateTime,
    /// The last backup attempt's outcome.
    pub last_result: Option<crate::catalog::Event>,
    /// The policy in force, in words: `gfs 0.1.0 (FILE)`, `built-in default rules`,
    /// `built-in default rules, because FILE is broken: ...`.
    pub policy: String,
    /// Why the configured policy file is not running, if it is not.
    pub policy_error: Option<String>,
    /// What decides in the process that answered: `file`, `built-in`,
    /// `built-in-fallback` (the file is missing or broken) or `kept-previous` (a version
    /// loaded before; only a long-running process such as the daemon can keep one).
    pub policy_state: crate::policy::Deciding,
    /// The configured policy file, if the configuration names one.
    pub policy_file: Option<PathBuf>,
    /// The running policy file's version, when a file decides.
    pub policy_version: Option<String>,
    /// Black-box pressure: why the black box is over its capacity or its last scheduled
    /// backup was refused (the deletion zone unreachable, the disk reserve reached).
    pub black_box_pressure: Option<String>,
    /// The pid of the daemon (`tierkeep run`) running for this host, if one is.
    pub daemon_pid: Option<u32>,
    /// Backups whose copy does not match its manifest (never moved; restore another).
    pub damaged: Vec<DamagedBackup>,
    /// The catalog file.
    pub catalog: PathBuf,
}

impl Tierkeep {
    /// Zones, next backup, last result.
    pub fn status(&self, now: OffsetDateTime) -> Result<Status, OpsError> {
        let catalog = self.catalog()?;
        let mut zones = Vec::new();
        for zone in Zone::ALL {
            let zs = self.settings.zone(zone);
            let Usage { backups, bytes } = catalog.usage(zone)?;
            let Capacity {
                max_backups,
                max_bytes,
            } = zs.capacity;
            let (reachable, unreachable_since, last_error) =
                match super::outage::recorded_health(&catalog, zone) {
                    crate::health::ZoneHealth::Reachable => (true, None, None),
                    crate::health::ZoneHealth::Unreachable {
                        since, last_error, ..
                    } => (false, Some(since), Some(last_error)),
                };
            zones.push(ZoneStatus {
                zone,
                url: zs.url.to_string(),
                backups,
                bytes,
                max_backups,
                max_bytes,
                newest: catalog.list(Some(zone))?.first().map(|r| r.id.to_string()),
                reachable,
                unreachable_since,
                last_error,
            });
        }
        let damaged: Vec<DamagedBackup> = catalog
            .damaged()?
            .into_iter()
            .map(|(r, e)| DamagedBackup {
                id: r.id.to_string(),
                zone: r.zone,
                since: e.at,
                reason: e.reason,
            })
            .collect();
        let black_box_pressure = {
            let bb = &zones[0];
            let last_attempt = super::lifecycle::scheduled_attempts(&catalog)?
                .into_iter()
                .next();
            if bb.backups > bb.max_backups {
                let stuck: Vec<&str> = damaged
                    .iter()
                    .filter(|d| d.zone == Zone::BlackBox)
                    .map(|d| d.id.as_str())
                    .collect();
                let why = if !zones[1].reachable {
                    format!(
                        "the deletion zone is unreachable since {}",
                        zones[1]
                            .unreachable_since
                            .map(crate::domain::rfc3339)
                            .unwrap_or_default()
                    )
                } else if !stuck.is_empty() {
                    format!(
                        "damaged backups never move ({}), and the others could not make room",
                        stuck.join(", ")
                    )
                } else {
                    "aging failed (see `tierkeep catalog history`)".to_owned()
                };
                Some(format!(
                    "the black box holds {} backups, over its capacity of {}: {why}",
                    bb.backups, bb.max_backups
                ))
            } else {
                last_attempt
                    .filter(|e| e.kind == "refused")
                    .map(|e| format!("the last scheduled backup was not taken: {}", e.reason))
            }
        };
        let policy = self.policy.status();
        Ok(Status {
            black_box_pressure,
            daemon_pid: crate::daemon::running(&self.settings),
            host_id: self.settings.host_id.clone(),
            zones,
            next_backup: self.next_backup_due(&catalog, now)?,
            last_result: catalog.last_attempt()?,
            damaged,
            policy: policy.describe(),
            policy_error: policy.error,
            policy_state: policy.deciding,
            policy_file: policy.file,
            policy_version: policy.version,
            catalog: catalog.path().to_path_buf(),
        })
    }
}

/// Formats a zone's usage line: `2/3 backups, 1.2 GiB`.
pub fn usage_line(z: &ZoneStatus) -> String {
    let bytes = match z.max_bytes {
        Some(m) => format!("{} of {}", format_size(z.bytes), format_size(m)),
        None => format_size(z.bytes),
    };
    format!("{}/{} backups, {bytes}", z.backups, z.max_backups)
}
