//! Reconciling the catalog with what the zones hold, their manifests being the source of
//! truth.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::events::event;
use super::records::upsert;
use super::schema::ts;
use super::{Catalog, CatalogError, ReconcileReport, State};
use crate::archive::Manifest;
use crate::domain::{BackupId, Zone};

impl Catalog {
    /// Brings the catalog in line with what the zones hold. `found` lists every committed
    /// backup of this host found in the zones. Backups found but unknown are added
    /// (`discovered`), ones recorded in the wrong zone are corrected, present ones that no
    /// zone holds are marked `missing` — only for the `listed` zones, those that could be
    /// read. Nothing is ever deleted from the catalog.
    pub fn reconcile(
        &mut self,
        host_id: &str,
        found: &[(Zone, Manifest)],
        listed: &[Zone],
        now: OffsetDateTime,
    ) -> Result<ReconcileReport, CatalogError> {
        let mut report = ReconcileReport::default();
        let mut by_id: std::collections::BTreeMap<&BackupId, (Zone, &Manifest)> =
            std::collections::BTreeMap::new();
        for (zone, m) in found {
            if m.host_id != host_id {
                continue;
            }
            match by_id.get(&m.id) {
                Some((z, _)) => {
                    report.duplicates.push(m.id.to_string());
                    // The zone later in the lifecycle wins (an interrupted move).
                    if *zone > *z {
                        by_id.insert(&m.id, (*zone, m));
                    }
                }
                None => {
                    by_id.insert(&m.id, (*zone, m));
                }
            }
        }
        let present = self.query_records(
            "SELECT * FROM backups WHERE host_id = ?1 AND state = 'present'",
            &[&host_id],
        )?;
        let path = self.path.clone();
        let wrap = |cause| CatalogError::Sqlite {
            path: path.clone(),
            cause,
        };
        let existing: std::collections::HashMap<String, (Zone, State)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, zone, state FROM backups WHERE host_id = ?1")
                .map_err(wrap)?;
            let rows = stmt
                .query_map([host_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(wrap)?;
            let mut map = std::collections::HashMap::new();
            for row in rows {
                let (id, zone, state) = row.map_err(wrap)?;
                if let (Ok(z), Some(s)) = (zone.parse::<Zone>(), State::parse(&state)) {
                    map.insert(id, (z, s));
                }
            }
            map
        };
        let txn = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(wrap)?;
        let tx = &txn;
        for (id, (zone, m)) in &by_id {
            match existing.get(id.as_str()) {
                Some((z, State::Present)) if z == zone => {}
                Some((z, state)) => {
                    upsert(tx, m, *zone, now).map_err(wrap)?;
                    let reason = if *state == State::Present {
                        format!("catalog said {z}; the backup is in {zone}")
                    } else {
                        format!("catalog said {}; found in {zone}", state.as_str())
                    };
                    event(
                        tx,
                        now,
                        Some(id.as_str()),
                        "discovered",
                        Some(*z),
                        Some(*zone),
                        &reason,
                    )
                    .map_err(wrap)?;
                    report.moved.push(id.to_string());
                }
                None => {
                    upsert(tx, m, *zone, now).map_err(wrap)?;
                    event(
                        tx,
                        now,
                        Some(id.as_str()),
                        "discovered",
                        None,
                        Some(*zone),
                        "found in the zone's manifests (catalog rebuild)",
                    )
                    .map_err(wrap)?;
                    report.discovered.push(id.to_string());
                }
            }
        }
        for rec in present {
            if !by_id.contains_key(&rec.id) && listed.contains(&rec.zone) {
                let last: Option<String> = tx
                    .query_row(
                        "SELECT kind FROM events WHERE backup_id = ?1 ORDER BY seq DESC LIMIT 1",
                        [rec.id.as_str()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(wrap)?;
                if last.as_deref() == Some("evicting") {
                    tx.execute(
                        "UPDATE backups SET state = 'evicted', updated_at = ?2 WHERE id = ?1",
                        params![rec.id.as_str(), ts(now)],
                    )
                    .map_err(wrap)?;
                    event(
                        tx,
                        now,
                        Some(rec.id.as_str()),
                        "evicted",
                        Some(rec.zone),
                        None,
                        "finished an eviction that was interrupted after its delete",
                    )
                    .map_err(wrap)?;
                    report.evicted.push(rec.id.to_string());
                    continue;
                }
                tx.execute(
                    "UPDATE backups SET state = 'missing', updated_at = ?2 WHERE id = ?1",
                    params![rec.id.as_str(), ts(now)],
                )
                .map_err(wrap)?;
                event(
                    tx,
                    now,
                    Some(rec.id.as_str()),
                    "missing",
                    Some(rec.zone),
                    None,
                    "recorded in the catalog but no zone holds its manifest",
                )
                .map_err(wrap)?;
                report.missing.push(rec.id.to_string());
            }
        }
        txn.commit().map_err(wrap)?;
        Ok(report)
    }
}
