//! Showing the configuration (`config show`): every effective value with its key, secrets
//! redacted, and where each value came from.

use std::path::PathBuf;

use figment::Figment;

use super::Settings;
use crate::domain::{Zone, format_duration, format_size};

impl Settings {
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
        v.push(("backup.reuse".into(), self.reuse.to_string()));
        v.push((
            "backup.full_read_every".into(),
            format_duration(self.full_read_every),
        ));
        let enc = &self.encryption;
        match &enc.recipients {
            None => v.push((
                "encryption.recipients".into(),
                "(none: not encrypted)".into(),
            )),
            Some(r) => {
                for (i, (fingerprint, key)) in r.shown().into_iter().enumerate() {
                    v.push((
                        format!("encryption.recipients[{i}]"),
                        format!("{key} ({fingerprint})"),
                    ));
                }
            }
        }
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(|| "(none)".into(), |p| p.display().to_string())
        };
        v.push(("encryption.identity_file".into(), path(&enc.identity_file)));
        v.push(("encryption.black_box".into(), enc.black_box.to_string()));
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
