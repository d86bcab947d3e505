//! An operator's changes: deleting a backup, rebuilding the catalog, and the reserved
//! zone's Object Lock check.

use time::OffsetDateTime;

use super::{OpsError, Tierkeep};
use crate::catalog::{Record, State};
use crate::domain::Zone;

impl Tierkeep {
    /// Checks that the reserved zone can lock new manual backups as configured
    /// (`zones.reserved.lock_retention` needs a bucket with S3 Object Lock enabled).
    pub async fn check_object_lock(&self) -> Result<(), OpsError> {
        Ok(self.store(Zone::Reserved).check_lock().await?)
    }

    /// An operator's explicit delete, from any zone. A backup under S3 Object Lock is
    /// refused ([`StoreError::Locked`], exit 3) with the bucket and the catalog unchanged.
    pub async fn delete(&self, id: &str, now: OffsetDateTime) -> Result<Record, OpsError> {
        let _lock = self.lock().await?;
        let mut catalog = self.catalog()?;
        let rec = self.resolve(&catalog, id)?;
        self.remove_copy(&rec, rec.zone).await?;
        catalog.mark_removed(
            &rec.id,
            rec.zone,
            State::Deleted,
            now,
            "operator: tierkeep delete",
        )?;
        tracing::info!(id = %rec.id, zone = %rec.zone, "backup deleted by operator");
        Ok(rec)
    }

    /// Rebuilds the catalog from the zones' manifests (recovery: incomplete uploads and
    /// stale staging files are removed and interrupted moves finished, under the host
    /// lock so no backup is under way).
    pub async fn rebuild_catalog(
        &self,
        now: OffsetDateTime,
    ) -> Result<super::RecoveryReport, OpsError> {
        let _lock = self.lock().await?;
        let mut catalog = self.catalog()?;
        self.recover(&mut catalog, now).await
    }
}
