//! Recovery after an interrupted run: moves committed in the deletion zone have their
//! black-box copy removed, uploads that were not committed are dropped (the black-box
//! copy stays), interrupted evictions are completed in the catalog, and the catalog is
//! brought in line with what the zones hold.

use std::fs::{self};
use std::path::Path;

use serde::Serialize;
use time::OffsetDateTime;

use std::collections::HashMap;

use super::{OpsError, Tierkeep, io_err};
use crate::catalog::Catalog;
use crate::catalog::ReconcileReport;
use crate::domain::Zone;
use crate::store::ListedState;
use crate::store::{BackupKey, StoreError};

/// What recovery found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// Moves committed in the deletion zone whose black-box copy was then removed.
    pub finished_moves: Vec<String>,
    /// Incomplete uploads and stale staging files removed.
    pub removed_incomplete: Vec<String>,
    /// Manifests that could not be read (left alone).
    pub unreadable: Vec<String>,
    /// Zones that could not be listed (left as the catalog has them).
    pub unreachable: Vec<String>,
    /// Committed backups found in the zones.
    pub backups: usize,
    /// How the catalog was brought in line.
    #[serde(flatten)]
    pub catalog: ReconcileReport,
}

impl Tierkeep {
    /// Brings zones and catalog back to a consistent state after an interrupted run.
    /// Call under the host lock.
    pub async fn recover(
        &self,
        catalog: &mut Catalog,
        now: OffsetDateTime,
    ) -> Result<RecoveryReport, OpsError> {
        let mut report = RecoveryReport::default();
        let mut committed: HashMap<Zone, Vec<crate::archive::Manifest>> = HashMap::new();
        let mut listed_zones = Vec::new();
        for zone in Zone::ALL {
            let store = self.store(zone);
            // An unreachable zone is left as the catalog has it: nothing in it is marked
            // missing, and no move into it is finished now. One that is known to be down
            // is not even asked until its next probe.
            // A remote zone gets a quick probe first: a server that is down or hangs costs
            // its few seconds, not a listing's retries.
            let remote = store.staging_dir().is_none();
            let listing = match self.zone_available(catalog, zone, now).await {
                Ok(()) if remote => match store.check().await {
                    Ok(()) => store.list().await.map_err(OpsError::from),
                    Err(e) => Err(OpsError::from(e)),
                },
                Ok(()) => store.list().await.map_err(OpsError::from),
                Err(e) => Err(e),
            };
            let listing = match listing {
                Ok(l) => {
                    self.zone_outcome(catalog, zone, now, None);
                    l
                }
                Err(e) => {
                    self.zone_outcome(catalog, zone, now, Some(&e));
                    tracing::warn!(zone = %zone, "zone unreachable, recovery skips it: {e}");
                    report.unreachable.push(format!("{zone}: {e}"));
                    continue;
                }
            };
            listed_zones.push(zone);
            // Multipart uploads an interrupted or failed transfer left on the server (their
            // abort could not reach it then): nothing of this host uploads now.
            match store.abort_stale_uploads(&self.settings.host_id).await {
                Ok(aborted) => report
                    .removed_incomplete
                    .extend(aborted.into_iter().map(|o| format!("{zone}: upload {o}"))),
                Err(e) => {
                    tracing::warn!(%zone, "cannot abort stale multipart uploads (retried by the next recovery): {e}")
                }
            }
            if let Some(staging) = store.staging_dir() {
                remove_partials(
                    &staging,
                    &self.settings.host_id,
                    &mut report.removed_incomplete,
                );
            }
            for listed in listing {
                if listed.key.host != self.settings.host_id {
                    continue;
                }
                match listed.state {
                    ListedState::Committed(m) => committed.entry(zone).or_default().push(*m),
                    ListedState::Incomplete => {
                        store.remove_incomplete(&listed.key).await?;
                        report
                            .removed_incomplete
                            .push(format!("{zone}: {}", listed.key));
                    }
                    ListedState::Unreadable(reason) => {
                        tracing::warn!(key = %listed.key, zone = %zone, "unreadable manifest left alone: {reason}");
                        report
                            .unreadable
                            .push(format!("{zone}: {}: {reason}", listed.key));
                    }
                }
            }
        }
        remove_partials(
            &self.settings.data_dir.join("staging"),
            &self.settings.host_id,
            &mut report.removed_incomplete,
        );
        // A backup committed in both the black box and the deletion zone is a move
        // interrupted after its commit: the deletion copy was verified before it was
        // committed, so the black-box copy goes now.
        let in_deletion: std::collections::HashSet<_> = committed
            .get(&Zone::Deletion)
            .map(|v| v.iter().map(|m| m.id.clone()).collect())
            .unwrap_or_default();
        if let Some(bb) = committed.get_mut(&Zone::BlackBox) {
            let mut kept = Vec::new();
            for m in bb.drain(..) {
                if in_deletion.contains(&m.id) {
                    let key = BackupKey {
                        host: m.host_id.clone(),
                        id: m.id.clone(),
                    };
                    match self.store(Zone::BlackBox).delete(&key).await {
                        Ok(()) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    tracing::info!(id = %m.id, "finished an interrupted move: removed the black-box copy");
                    report.finished_moves.push(m.id.to_string());
                } else {
                    kept.push(m);
                }
            }
            *bb = kept;
        }
        let found: Vec<(Zone, crate::archive::Manifest)> = committed
            .into_iter()
            .flat_map(|(z, ms)| ms.into_iter().map(move |m| (z, m)))
            .collect();
        report.backups = found.len();
        report.catalog = catalog.reconcile(&self.settings.host_id, &found, &listed_zones, now)?;
        for id in &report.catalog.missing {
            tracing::error!(id = %id, "a backup recorded in the catalog is in no zone");
        }
        for id in &report.catalog.discovered {
            tracing::warn!(id = %id, "found a committed backup missing from the catalog; added it");
        }
        for r in &report.removed_incomplete {
            tracing::info!("removed what an interrupted run left: {r}");
        }
        Ok(report)
    }

    /// Runs a recovery pass if one is needed (see [`Tierkeep::needs_recovery`]).
    pub(crate) async fn recover_if_needed(
        &self,
        catalog: &mut Catalog,
        now: OffsetDateTime,
    ) -> Result<Option<RecoveryReport>, OpsError> {
        // Work by another process (a CLI run) that did not end cleanly left its marker.
        let marker = self.work_marker();
        if marker.exists() {
            self.set_recovered(false);
        }
        let report = if self.needs_recovery() {
            let report = self.recover(catalog, now).await?;
            // A zone that could not be listed is looked at again by the next piece of work.
            self.set_recovered(report.unreachable.is_empty());
            Some(report)
        } else {
            None
        };
        fs::write(&marker, std::process::id().to_string()).map_err(io_err("write", &marker))?;
        Ok(report)
    }
}

/// Removes what interrupted runs of this host left in a staging directory: its own
/// `*.partial` files (written only under the host lock, which the caller holds), and
/// exports of restores or verifications older than a day (those run without the lock, so
/// younger ones may belong to a restore under way).
pub(crate) fn remove_partials(dir: &Path, host: &str, removed: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let day = std::time::Duration::from_secs(86_400);
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let own_partial = name.starts_with(&format!("{host}-")) && name.ends_with(".partial");
        let old_export = (name.contains(".export-") || name.contains(".verify-"))
            && e.metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
        if (own_partial || old_export) && fs::remove_file(&p).is_ok() {
            removed.push(format!("staging: {}", p.display()));
        }
    }
}
