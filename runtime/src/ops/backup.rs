//! The generation module (scheduled backups into the black box) and manual backups
//! into the reserved zone: admission, hooks, the archive, the commit.

use std::fs::{self};
use std::path::Path;

use serde::Serialize;
use time::OffsetDateTime;

use super::error::catch_up;
use super::{OpsError, Tierkeep, io_err};
use crate::archive::write::{PreviousArchive, WriteOptions, estimate, write_archive};
use crate::archive::{MANIFEST_FORMAT, Manifest};
use crate::catalog::Catalog;
use crate::domain::{BackupId, BackupKind, Zone, format_size};
use crate::plan::{Incoming, Verdict, plan_admission};
use crate::progress::Progress;
use crate::store::{BackupKey, StoreError, ZoneStore};

/// What a backup may copy from its predecessor.
struct Reuse {
    previous: Option<PreviousArchive>,
    from: Option<BackupId>,
    /// When the sources were last read in full, as the new manifest records it.
    full_read_at: OffsetDateTime,
}

/// What a backup produced.
#[derive(Debug, Clone, Serialize)]
pub struct BackupOutcome {
    /// The manifest written.
    pub manifest: Manifest,
    /// Zone it went to.
    pub zone: Zone,
    /// Seconds taken.
    pub seconds: f64,
}

/// Reports a scheduled backup taken beyond the black box's capacity: an error in the
/// log, the metric, and a `pressure` event in the audit trail.
pub(super) fn note_pressure(
    catalog: &mut Catalog,
    now: OffsetDateTime,
    why: &str,
) -> Result<(), OpsError> {
    let text = format!("black-box pressure: {why}");
    tracing::error!("{text}");
    crate::metrics::inc(
        "tierkeep_black_box_pressure_events_total",
        &[("outcome", "over_capacity")],
    );
    catalog.note(now, "pressure", Some(Zone::BlackBox), &text)?;
    Ok(())
}

impl Tierkeep {
    /// Takes a backup now: scheduled into the black box, manual into the reserved zone.
    /// A full zone refuses before any data is written.
    /// `clock` is read once the host lock is held, so the backup's time is the time its
    /// data is read, not the time it started waiting. `full_read` reads every file even
    /// where the previous backup's frames could be copied (`backup --full-read`).
    pub async fn backup(
        &self,
        kind: BackupKind,
        label: Option<String>,
        full_read: bool,
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
        progress: &Progress,
    ) -> Result<BackupOutcome, OpsError> {
        let started = std::time::Instant::now();
        let _lock = self.lock().await?;
        let now = clock();
        let mut catalog = self.catalog()?;
        let zone = kind.home_zone();
        let result = self
            .backup_locked(&mut catalog, kind, label, full_read, now, progress)
            .await;
        let took = started.elapsed();
        let outcome = match &result {
            Ok(_) => "created",
            Err(OpsError::ZoneFull { .. } | OpsError::NoRoom { .. }) => "refused",
            Err(_) => "failed",
        };
        let labels = [("zone", zone.as_str()), ("outcome", outcome)];
        crate::metrics::inc("tierkeep_backups_total", &labels);
        crate::metrics::observe("tierkeep_backup_duration_seconds", &labels, took);
        if let Ok(m) = &result {
            crate::metrics::add(
                "tierkeep_backup_bytes_total",
                &[("zone", zone.as_str())],
                m.archive_bytes as f64,
            );
        }
        // A refusal wrote nothing and leaves nothing to recover.
        self.end_work(outcome != "failed");
        result.map(|manifest| BackupOutcome {
            manifest,
            zone,
            seconds: took.as_secs_f64(),
        })
    }

    /// Free bytes of the black box's filesystem, if it can be asked.
    pub(super) fn black_box_available(&self) -> Option<u64> {
        let dir = self.store(Zone::BlackBox).staging_dir().or_else(|| {
            self.settings
                .zone(Zone::BlackBox)
                .url
                .local_dir()
                .map(Path::to_path_buf)
        })?;
        let mut probe = dir.as_path();
        // The zone's directory may not exist yet: ask its nearest existing ancestor.
        while !probe.exists() {
            probe = probe.parent()?;
        }
        match rustix::fs::statvfs(probe) {
            Ok(st) => Some(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(e) => {
                tracing::warn!(dir = %probe.display(), "cannot read the free space: {e}");
                None
            }
        }
    }

    /// The generation (or manual) module's work under the host lock: admission, hooks,
    /// archive, commit.
    pub(super) async fn backup_locked(
        &self,
        catalog: &mut Catalog,
        kind: BackupKind,
        label: Option<String>,
        full_read: bool,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<Manifest, OpsError> {
        let zone = kind.home_zone();
        let zs = self.settings.zone(zone);
        self.recover_if_needed(catalog, now).await?;
        let mut pressure = false;
        // Room first (a scheduled backup into a full black box ages the oldest early),
        // then the admission, planned on what that left.
        let aging_error = if kind == BackupKind::Scheduled {
            self.make_room_in_black_box(catalog, 1, 0, now, progress)
                .await
                .err()
        } else {
            None
        };
        let aging_failed = aging_error.as_ref().map(ToString::to_string);
        let catches_up = aging_error.as_ref().map(catch_up).unwrap_or_default();
        let (available, last_size) = if kind == BackupKind::Scheduled {
            // About as large as the newest backup of this host.
            let last_size = catalog
                .list(None)?
                .iter()
                .find(|r| r.kind == BackupKind::Scheduled)
                .map_or(0, |r| r.size_bytes);
            (self.black_box_available(), last_size)
        } else {
            (None, 0)
        };
        let admission = plan_admission(
            &self.plan_state(catalog, now)?,
            &Incoming {
                kind,
                aging_failed: aging_failed.as_deref(),
                available,
                estimate: last_size,
                min_free: zs.min_free,
            },
        );
        tracing::debug!(by = %admission.by, "admission: {}", admission.reason);
        match admission.verdict {
            Verdict::Admit {
                beyond_capacity: None,
                ..
            } => {}
            Verdict::Admit {
                beyond_capacity: Some(_),
                ..
            } => {
                pressure = true;
                note_pressure(catalog, now, &format!("{}; {catches_up}", admission.reason))?;
            }
            Verdict::Refuse { zone, why, advice } => {
                let err = match advice {
                    Some(advice) => OpsError::ZoneFull {
                        zone,
                        fullness: why,
                        advice: advice.to_owned(),
                    },
                    None => OpsError::NoRoom {
                        reason: why,
                        advice: match &aging_failed {
                            Some(e) => format!(
                                "The oldest backups could not age out ({e}); {catches_up}. Or \
                                 free space on the black box's disk"
                            ),
                            None => "Free space on the black box's disk, or lower \
                                     zones.black_box.min_free"
                                .into(),
                        },
                    },
                };
                if aging_failed.is_some() {
                    tracing::error!("black-box pressure: {err}");
                    crate::metrics::inc(
                        "tierkeep_black_box_pressure_events_total",
                        &[("outcome", "refused")],
                    );
                }
                catalog.note(now, "refused", Some(zone), &err.to_string())?;
                return Err(err);
            }
        }
        let store = self.store(zone).clone();
        let checked = match self.zone_available(catalog, zone, now).await {
            Ok(()) => store.check().await.map_err(OpsError::from),
            Err(e) => Err(e),
        };
        self.zone_outcome(catalog, zone, now, checked.as_ref().err());
        checked?;
        // A manual backup that the configuration says is locked is not written into a
        // bucket that cannot lock it.
        if kind == BackupKind::Manual
            && let Err(e) = store.check_lock().await
        {
            let err = OpsError::from(e);
            catalog.note(now, "refused", Some(zone), &err.to_string())?;
            return Err(err);
        }

        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| OpsError::Internal(e.to_string()))?;
        let id = BackupId::new(now, u64::from_le_bytes(random));
        let key = BackupKey {
            host: self.settings.host_id.clone(),
            id: id.clone(),
        };
        // An archive the zone keeps encrypted is written in the host's staging folder
        // and encrypted on its way into the zone, which never holds its plaintext.
        let encrypted = self.settings.encryption.for_zone(zone).is_some();
        let staging_dir = match store.staging_dir().filter(|_| !encrypted) {
            Some(d) => {
                fs::create_dir_all(&d).map_err(io_err("create", &d))?;
                d
            }
            None => self.staging()?,
        };
        let staged = staging_dir.join(format!("{}-{id}.tar.zst.partial", self.settings.host_id));
        let result = self
            .write_and_commit(
                catalog,
                kind,
                label,
                full_read,
                now,
                &key,
                &staged,
                store.as_ref(),
                pressure,
                progress,
            )
            .await;
        progress.finish();
        self.zone_outcome(catalog, zone, now, result.as_ref().err());
        match result {
            Ok(manifest) => {
                catalog.insert_created(&manifest, zone, now, &format!("{kind} backup"))?;
                tracing::info!(id = %manifest.id, zone = %zone, bytes = manifest.archive_bytes, "backup created");
                Ok(manifest)
            }
            Err(e) => {
                let _ = fs::remove_file(&staged);
                if let Err(clean) = store.remove_incomplete(&key).await
                    && !matches!(clean, StoreError::NotFound { .. })
                {
                    tracing::warn!("could not remove the incomplete backup {key}: {clean}");
                }
                catalog.note(now, "failed", Some(zone), &e.to_string())?;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_and_commit(
        &self,
        catalog: &mut Catalog,
        kind: BackupKind,
        label: Option<String>,
        full_read: bool,
        now: OffsetDateTime,
        key: &BackupKey,
        staged: &Path,
        store: &dyn ZoneStore,
        pressure: bool,
        progress: &Progress,
    ) -> Result<Manifest, OpsError> {
        let mut skip = vec![self.settings.data_dir.clone()];
        for z in &self.settings.zones {
            if let Some(p) = z.url.local_dir() {
                skip.push(p.to_path_buf());
            }
        }
        let reuse = self.previous_for_reuse(catalog, kind, full_read, now);
        let opts = WriteOptions {
            sources: self.settings.sources.clone(),
            exclude: self.settings.exclude.clone(),
            skip_paths: skip,
            level: self.settings.compression_level,
            threads: self.settings.threads,
            previous: reuse.previous.clone(),
        };
        let out = staged.to_path_buf();
        let bar = progress.clone();
        let hooks = &self.settings.hooks;
        let hook_env = |result: Option<&str>| {
            let mut env = vec![
                ("TIERKEEP_BACKUP_ID", key.id.to_string()),
                ("TIERKEEP_BACKUP_KIND", kind.to_string()),
                ("TIERKEEP_HOST_ID", key.host.clone()),
            ];
            if let Some(r) = result {
                env.push(("TIERKEEP_BACKUP_RESULT", r.to_owned()));
            }
            env
        };
        if hooks.post_backup.is_some() {
            // From here on the post-hook is owed, even if this backup is dropped.
            *self.open_hook.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(hook_env(Some("aborted")));
        }
        if let Some(cmd) = &hooks.pre_backup
            && let Err(e) =
                crate::hooks::run("pre_backup", cmd, hooks.timeout, &hook_env(None)).await
        {
            crate::metrics::inc("tierkeep_hook_failures_total", &[("hook", "pre_backup")]);
            // The post-hook undoes what a partly run pre-hook may have done (a freeze).
            self.post_hook(hooks, &hook_env(Some("failed"))).await;
            return Err(e.into());
        }

        let summary = tokio::task::spawn_blocking(move || {
            if bar.is_visible() {
                let (bytes, _) = estimate(&opts);
                bar.phase("backup", bytes);
            }
            let mut cb = |n| bar.inc(n);
            write_archive(&opts, &out, &mut cb)
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()));
        // The sources have been read (or reading failed): release them at once, before
        // the archive is stored.
        if hooks.pre_backup.is_some() || hooks.post_backup.is_some() {
            let ok = matches!(summary, Ok(Ok(_)));
            self.post_hook(hooks, &hook_env(Some(if ok { "ok" } else { "failed" })))
                .await;
        }
        let summary = summary??;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: key.id.clone(),
            host_id: key.host.clone(),
            kind,
            label,
            created_at: now,
            source: self
                .settings
                .sources
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            entries: summary.entries,
            logical_bytes: summary.logical_bytes,
            archive_bytes: summary.archive_bytes,
            archive_sha256: summary.archive_sha256,
            compression: "zstd".into(),
            tool_version: format!("tierkeep {}", env!("CARGO_PKG_VERSION")),
            policy: self.policy.status().describe(),
            warnings: summary.warnings,
            index: summary.index,
            reused_bytes: summary.reused_bytes,
            reused_from: (summary.reused_bytes > 0)
                .then(|| reuse.from.clone())
                .flatten(),
            full_read_at: Some(reuse.full_read_at),
            encryption: None,
        };
        if manifest.reused_bytes > 0 {
            tracing::info!(
                id = %manifest.id,
                reused = manifest.reused_bytes,
                from = %manifest.reused_from.as_ref().map(ToString::to_string).unwrap_or_default(),
                "copied unchanged frames from the previous backup"
            );
        }
        // A byte limit can only be checked now that the size is known.
        let zone = kind.home_zone();
        let capacity = self.settings.zone(zone).capacity;
        if capacity.max_bytes.is_some() {
            match kind {
                BackupKind::Manual => {
                    if let Err(fullness) =
                        capacity.admits(catalog.usage(zone)?, manifest.archive_bytes)
                    {
                        return Err(OpsError::ZoneFull {
                            zone,
                            fullness: format!(
                                "{fullness}, and this backup is {}",
                                format_size(manifest.archive_bytes)
                            ),
                            advice: "the archive was discarded; remove a manual backup with \
                                     `tierkeep delete ID --yes` or raise zones.reserved.max_bytes"
                                .into(),
                        });
                    }
                }
                BackupKind::Scheduled if pressure => {}
                BackupKind::Scheduled => {
                    if let Err(e) = self
                        .make_room_in_black_box(catalog, 1, manifest.archive_bytes, now, progress)
                        .await
                    {
                        // The byte limit, with aging impossible: the same pressure rule as
                        // for the count (the disk reserve was checked before writing).
                        let text = format!(
                            "this backup ({}) does not fit zones.black_box.max_bytes and the \
                             oldest backups cannot age out ({e}); no unmoved backup is deleted, \
                             so it is kept beyond the limit; {}",
                            format_size(manifest.archive_bytes),
                            catch_up(&e)
                        );
                        note_pressure(catalog, now, &text)?;
                    }
                }
            }
        }
        progress.phase("store", manifest.archive_bytes);
        let manifest = self
            .store_archive(store, zone, key, staged, &manifest, progress)
            .await?;
        store.put_manifest(&manifest).await?;
        // What was uploaded (or encrypted) from staging is not kept; a local zone has
        // already renamed it into place.
        let _ = fs::remove_file(staged);
        Ok(manifest)
    }

    /// The previous backup a scheduled backup may copy frames from: the newest scheduled
    /// backup of this host in the black box, of the same sources, in format 2, unless
    /// reuse is off (`backup.reuse = false`), `backup --full-read` asked for a full read,
    /// or the last full read is `backup.full_read_every` old. Never another host's (the
    /// catalog holds this host's backups only) nor another source set's.
    fn previous_for_reuse(
        &self,
        catalog: &Catalog,
        kind: BackupKind,
        full_read: bool,
        now: OffsetDateTime,
    ) -> Reuse {
        let full = Reuse {
            previous: None,
            from: None,
            full_read_at: now,
        };
        if kind != BackupKind::Scheduled || !self.settings.reuse {
            return full;
        }
        let sources: Vec<String> = self
            .settings
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let newest = match catalog.list(Some(Zone::BlackBox)) {
            Ok(list) => list
                .into_iter()
                .find(|r| r.kind == BackupKind::Scheduled && r.host_id == self.settings.host_id),
            Err(e) => {
                tracing::warn!("cannot look for a previous backup to reuse: {e}");
                None
            }
        };
        let Some(prev) = newest else {
            return full;
        };
        if catalog.is_damaged(&prev.id).unwrap_or(true) {
            tracing::warn!(id = %prev.id, "the previous backup is marked damaged: every file is read");
            return full;
        }
        let m = &prev.manifest;
        let (Some(index), true) = (m.index.clone(), m.source == sources) else {
            tracing::debug!(id = %prev.id, "the previous backup has no index or other sources: a full read");
            return full;
        };
        let last_full = m.full_read_at.unwrap_or(m.created_at);
        if full_read {
            tracing::info!("a full read, as asked: every file is read and compressed");
            return full;
        }
        if now - last_full >= self.settings.full_read_every {
            tracing::info!(
                last_full = %last_full,
                "a periodic full read (backup.full_read_every): every file is read and compressed"
            );
            return full;
        }
        if m.encryption.is_some() {
            tracing::info!(
                id = %prev.id,
                "the previous backup is encrypted (encryption.black_box): a full read"
            );
            return full;
        }
        let Some(path) = self
            .store(Zone::BlackBox)
            .local_archive(&self.key(&prev), m.archive_name())
        else {
            return full;
        };
        Reuse {
            previous: Some(PreviousArchive { path, index }),
            from: Some(prev.id.clone()),
            full_read_at: last_full,
        }
    }

    /// Runs the post-backup hook, if any; a failure is logged loudly and counted, but
    /// does not undo a backup that was taken.
    pub(super) async fn post_hook(&self, hooks: &crate::config::Hooks, env: &[(&str, String)]) {
        if let Some(cmd) = &hooks.post_backup
            && let Err(e) = crate::hooks::run("post_backup", cmd, hooks.timeout, env).await
        {
            crate::metrics::inc("tierkeep_hook_failures_total", &[("hook", "post_backup")]);
            tracing::error!("{e}: the sources may still be in the state the pre-hook left them");
        }
        // Owed no more only once it has run to its end (a run dropped midway is redone by
        // `release_hooks`).
        self.open_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Runs the post-backup hook of a backup that was dropped between its pre-hook and
    /// its post-hook (a daemon stopped at the end of its grace period), with
    /// `TIERKEEP_BACKUP_RESULT=aborted`, so that nothing stays frozen.
    pub async fn release_hooks(&self) {
        let env = self
            .open_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(env) = env {
            tracing::warn!("running hooks.post_backup for the backup that was stopped");
            self.post_hook(&self.settings.hooks, &env).await;
        }
    }
}
