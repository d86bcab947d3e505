//! Reading backups: restore, export and verify, all through one readable local copy.

use std::fs::{self};
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use super::{OpsError, Tierkeep, io_err};
use crate::archive::read::{
    ArchiveSource, ExtractOptions, ExtractSummary, check_archive, extract, running_as_root,
};
use crate::archive::{ArchiveError, check_digest, verify_file};
use crate::catalog::{Record, State};
use crate::domain::Zone;
use crate::progress::Progress;
use crate::store::{self, StoreError};

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    /// The backup.
    pub id: String,
    /// The zone it came from.
    pub zone: Zone,
    /// Whether it was exported to staging first.
    pub exported_first: bool,
    /// Entries restored.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Skipped entries, and files whose setuid or setgid bits were dropped.
    pub warnings: Vec<String>,
    /// Target.
    pub target: PathBuf,
    /// Archive bytes read: the whole archive, or for `--path` of a format 2 backup only
    /// its index and the frames holding the path.
    pub archive_bytes_read: u64,
}

/// The verification of one backup.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    /// The backup.
    pub id: String,
    /// Its zone.
    pub zone: Zone,
    /// Whether it matches.
    pub ok: bool,
    /// Details when not.
    pub error: Option<String>,
}

impl Tierkeep {
    /// Brings the archive of `rec` to a local file: in place for the black box, else
    /// exported into staging and verified. Returns (path, exported?).
    pub(super) async fn local_copy(
        &self,
        rec: &Record,
        progress: &Progress,
    ) -> Result<(PathBuf, bool), OpsError> {
        let store = self.store(rec.zone);
        let key = self.key(rec);
        let name = rec.manifest.archive_name();
        let (path, exported) = if rec.zone.restores_in_place()
            && let Some(p) = store.local_archive(&key, name)
        {
            if !p.is_file() {
                return Err(OpsError::Store(StoreError::NotFound {
                    zone: store.url().to_owned(),
                    key,
                }));
            }
            (p, false)
        } else {
            let dest =
                self.staging()?
                    .join(format!("{}.export-{}.tar.zst", rec.id, std::process::id()));
            let _ = fs::remove_file(&dest);
            progress.phase("export", rec.size_bytes);
            store
                .fetch_archive(&key, name, &dest, progress.callback())
                .await?;
            (dest, true)
        };
        // Verify before anything is extracted, so a damaged copy never overwrites data.
        if let Err(e) = self.verify_copy_of(rec, &path, progress).await {
            if exported {
                let _ = fs::remove_file(&path);
            }
            return Err(e);
        }
        Ok((path, exported))
    }

    /// Restores backup `id` into `target` (or only `only`, an original absolute path).
    /// Files keep setuid and setgid bits only when `target` is `/` or with `keep_setuid`.
    pub async fn restore(
        &self,
        id: &str,
        target: &Path,
        force: bool,
        only: Option<&Path>,
        keep_setuid: bool,
        progress: &Progress,
    ) -> Result<RestoreOutcome, OpsError> {
        let (rec, _pin) = self.resolve_pinned(id).await?;
        let only = only
            .map(|p| super::browse::stored_path("--path", p))
            .transpose()?;
        if let Some(only) = &only
            && let Some((summary, read)) = self
                .restore_frames(&rec, only, target, force, keep_setuid, progress)
                .await?
        {
            tracing::info!(
                id = %rec.id,
                target = %target.display(),
                entries = summary.entries,
                archive_bytes_read = read,
                "restored from the frames that hold the path"
            );
            return Ok(RestoreOutcome {
                id: rec.id.to_string(),
                zone: rec.zone,
                exported_first: false,
                entries: summary.entries,
                bytes: summary.bytes,
                warnings: summary.warnings,
                target: target.to_path_buf(),
                archive_bytes_read: read,
            });
        }
        // No identity, no download: an encrypted backup needs one before anything.
        let decrypt = self.decrypt_for(&rec)?;
        let (archive, exported) = self.local_copy(&rec, progress).await?;
        let source = ArchiveSource {
            path: archive.clone(),
            decrypt,
        };
        let opts = ExtractOptions {
            target: target.to_path_buf(),
            force,
            only: only.clone(),
            // The plaintext's: an encrypted copy's ciphertext was verified above.
            expected: Some(rec.manifest.plain()),
            owners: running_as_root(),
            keep_setuid,
        };
        let bar = progress.clone();
        bar.phase("restore", rec.size_bytes);
        let result: Result<ExtractSummary, ArchiveError> = tokio::task::spawn_blocking(move || {
            let mut cb = |n| bar.inc(n);
            extract(&source, &opts, &mut cb)
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))?;
        progress.finish();
        if exported {
            let _ = fs::remove_file(&archive);
        }
        let summary = result?;
        tracing::info!(id = %rec.id, target = %target.display(), entries = summary.entries, "restored");
        Ok(RestoreOutcome {
            id: rec.id.to_string(),
            zone: rec.zone,
            exported_first: exported,
            entries: summary.entries,
            bytes: summary.bytes,
            warnings: summary.warnings,
            target: target.to_path_buf(),
            archive_bytes_read: rec.size_bytes,
        })
    }

    /// Writes the archive of `id` to `to`, verified, for standard tools: as it is stored,
    /// so an encrypted backup is exported encrypted (`age -d` reads it; no key needed).
    pub async fn export(
        &self,
        id: &str,
        to: &Path,
        force: bool,
        progress: &Progress,
    ) -> Result<Record, OpsError> {
        let (rec, _pin) = self.resolve_pinned(id).await?;
        if to.exists() && !force {
            return Err(OpsError::Usage(format!(
                "{} exists: choose another file or pass --force to replace it",
                to.display()
            )));
        }
        let partial = PathBuf::from(format!("{}.partial", to.display()));
        let store = self.store(rec.zone).clone();
        let key = self.key(&rec);
        progress.phase("export", rec.size_bytes);
        store
            .fetch_archive(
                &key,
                rec.manifest.archive_name(),
                &partial,
                progress.callback(),
            )
            .await?;
        let verified = self.verify_copy_of(&rec, &partial, progress).await;
        progress.finish();
        if let Err(e) = verified {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        fs::rename(&partial, to).map_err(io_err("rename to", to))?;
        Ok(rec)
    }

    /// Re-hashes backups and compares them with their manifests (and, with `deep`,
    /// decompresses every entry and applies every check of a restore, writing nothing).
    pub async fn verify(
        &self,
        id: Option<&str>,
        deep: bool,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<Vec<VerifyResult>, OpsError> {
        let records = {
            let catalog = self.catalog()?;
            match id {
                Some(id) => vec![self.resolve(&catalog, id)?],
                None => catalog.list(None)?,
            }
        };
        let mut out = Vec::new();
        for rec in records {
            let id = rec.id.clone();
            let outcome = match self.repin(rec.clone()).await {
                Ok((rec, _pin)) => self.verify_one(&rec, deep, progress).await,
                // Aged or evicted while the others were verified: nothing to check.
                Err(OpsError::NotFound(_)) if !matches!(rec.state, State::Missing) => {
                    tracing::info!(%id, "no longer present (aged or evicted meanwhile)");
                    continue;
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &outcome {
                tracing::error!(id = %rec.id, zone = %rec.zone, "verification failed: {e}");
            }
            if let Err(e) = self.note_verified(&rec, now, outcome.as_ref().err()) {
                tracing::warn!(id = %rec.id, "cannot record the verification: {e}");
            }
            out.push(VerifyResult {
                id: rec.id.to_string(),
                zone: rec.zone,
                ok: outcome.is_ok(),
                error: outcome.err().map(|e| e.to_string()),
            });
        }
        progress.finish();
        Ok(out)
    }

    /// Records what a verification of `rec` found: a copy that does not match its
    /// manifest (or does not restore) is marked `damaged`; a damaged one that verifies
    /// again is `verified`. Errors of reaching the copy say nothing about it.
    pub(super) fn note_verified(
        &self,
        rec: &Record,
        now: OffsetDateTime,
        error: Option<&OpsError>,
    ) -> Result<(), OpsError> {
        let mut catalog = self.catalog()?;
        let was_damaged = catalog.is_damaged(&rec.id)?;
        match error {
            Some(OpsError::Archive(
                e @ (ArchiveError::Mismatch { .. }
                | ArchiveError::Stream { .. }
                | ArchiveError::Hostile { .. }),
            )) if !was_damaged => {
                catalog.note_backup(&rec.id, now, "damaged", Some(rec.zone), &e.to_string())?;
                crate::metrics::inc(
                    "tierkeep_damaged_found_total",
                    &[("zone", rec.zone.as_str())],
                );
            }
            None if was_damaged => {
                catalog.note_backup(
                    &rec.id,
                    now,
                    "verified",
                    Some(rec.zone),
                    "verified again: the copy matches its manifest",
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) async fn verify_one(
        &self,
        rec: &Record,
        deep: bool,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let store = self.store(rec.zone);
        let key = self.key(rec);
        let stored = store.read_manifest(&key).await?;
        if stored != rec.manifest {
            return Err(OpsError::Usage(format!(
                "the manifest in zone {} differs from the catalog's copy; run `tierkeep catalog rebuild`",
                rec.zone
            )));
        }
        let expected = (rec.size_bytes, rec.sha256.clone());
        if !deep {
            // The stored bytes against the manifest, hashed as they are read: nothing is
            // written locally.
            progress.phase("verify", rec.size_bytes);
            let actual = store
                .digest_archive(&key, rec.manifest.archive_name(), progress.callback())
                .await?;
            return Ok(check_digest(&expected, actual)?);
        }
        // A deep check of an encrypted backup needs its identity before anything.
        let decrypt = self.decrypt_for(rec)?;
        let dest =
            self.staging()?
                .join(format!("{}.verify-{}.tar.zst", rec.id, std::process::id()));
        let copy = store::readable_copy(
            store.as_ref(),
            &key,
            rec.manifest.archive_name(),
            &dest,
            progress.callback(),
        )
        .await?;
        let plain = rec.manifest.plain();
        let bar = progress.clone();
        bar.phase("verify", rec.size_bytes);
        let source = ArchiveSource {
            path: copy.path().to_path_buf(),
            decrypt,
        };
        let result = tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
            let mut cb = |n| bar.inc(n);
            if source.decrypt.is_some() {
                // The stored bytes first (no key needed), then the plaintext through
                // every check of a restore.
                verify_file(&source.path, &expected, &mut |_| {})?;
                check_archive(&source, Some(&plain), &mut cb).map(|_| ())
            } else {
                check_archive(&source, Some(&expected), &mut cb).map(|_| ())
            }
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))?;
        Ok(result?)
    }
}
