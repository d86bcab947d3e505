//! The `backups` table: reading records (list, get, find, usage) and the writes that
//! change a backup's state or zone, each with its event in the same transaction.

use rusqlite::{Connection, params};
use time::OffsetDateTime;

use super::events::event;
use super::schema::ts;
use super::{Catalog, CatalogError, Record, State};
use crate::archive::Manifest;
use crate::domain::{BackupId, Usage, Zone, rfc3339};

impl Catalog {
    pub(super) fn row_to_record(
        &self,
        row: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<Result<Record, String>> {
        let manifest: String = row.get("manifest")?;
        let zone: String = row.get("zone")?;
        let state: String = row.get("state")?;
        Ok((|| {
            let manifest: Manifest = serde_json::from_str(&manifest).map_err(|e| e.to_string())?;
            Ok(Record {
                id: manifest.id.clone(),
                zone: zone
                    .parse()
                    .map_err(|e: crate::domain::UnknownZone| e.to_string())?,
                kind: manifest.kind,
                label: manifest.label.clone(),
                created_at: manifest.created_at,
                size_bytes: manifest.archive_bytes,
                sha256: manifest.archive_sha256.clone(),
                host_id: manifest.host_id.clone(),
                logical_bytes: manifest.logical_bytes,
                entries: manifest.entries,
                state: State::parse(&state).ok_or_else(|| format!("unknown state {state}"))?,
                manifest,
            })
        })())
    }

    pub(super) fn query_records(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Record>, CatalogError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map(args, |row| self.row_to_record(row))
            .map_err(|e| self.wrap(e))?;
        let mut out = Vec::new();
        for r in rows {
            let r = r.map_err(|e| self.wrap(e))?;
            out.push(r.map_err(|reason| CatalogError::Invalid {
                path: self.path.clone(),
                reason,
            })?);
        }
        Ok(out)
    }

    /// Present backups, newest first, optionally of one zone.
    pub fn list(&self, zone: Option<Zone>) -> Result<Vec<Record>, CatalogError> {
        match zone {
            Some(z) => self.query_records(
                "SELECT * FROM backups WHERE state = 'present' AND zone = ?1 ORDER BY id DESC",
                &[&z.as_str()],
            ),
            None => self.query_records(
                "SELECT * FROM backups WHERE state = 'present' ORDER BY id DESC",
                &[],
            ),
        }
    }

    /// One backup, whatever its state.
    pub fn get(&self, id: &BackupId) -> Result<Option<Record>, CatalogError> {
        Ok(self
            .query_records("SELECT * FROM backups WHERE id = ?1", &[&id.as_str()])?
            .into_iter()
            .next())
    }

    /// Finds a present backup by id or unique id prefix.
    pub fn find(&self, text: &str) -> Result<Vec<Record>, CatalogError> {
        let pattern = format!("{}%", text.replace(['%', '_'], ""));
        self.query_records(
            "SELECT * FROM backups WHERE state = 'present' AND id LIKE ?1 ORDER BY id DESC",
            &[&pattern],
        )
    }

    /// How much of `zone` is used.
    pub fn usage(&self, zone: Zone) -> Result<Usage, CatalogError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM backups \
                 WHERE state = 'present' AND zone = ?1",
                [zone.as_str()],
                |r| {
                    Ok(Usage {
                        backups: r.get::<_, i64>(0)?.max(0) as u64,
                        bytes: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                },
            )
            .map_err(|e| self.wrap(e))
    }

    /// Records a new backup in `zone`.
    pub fn insert_created(
        &mut self,
        m: &Manifest,
        zone: Zone,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<(), CatalogError> {
        self.write(|tx| {
            upsert(tx, m, zone, now)?;
            event(
                tx,
                now,
                Some(m.id.as_str()),
                "created",
                None,
                Some(zone),
                reason,
            )?;
            Ok(())
        })
    }

    /// Adds a committed backup found in `zone` that the catalog does not know (a crash
    /// between the zone's commit and the catalog's). Returns whether it was added.
    pub fn discover(
        &mut self,
        m: &Manifest,
        zone: Zone,
        now: OffsetDateTime,
    ) -> Result<bool, CatalogError> {
        if self.get(&m.id)?.is_some() {
            return Ok(false);
        }
        self.write(|tx| {
            upsert(tx, m, zone, now)?;
            event(
                tx,
                now,
                Some(m.id.as_str()),
                "discovered",
                None,
                Some(zone),
                "committed in the zone but missing from the catalog (an interrupted run)",
            )?;
            Ok(())
        })?;
        Ok(true)
    }

    /// Records that a backup left the catalog's view: `kind` is deleted, evicted or missing.
    pub fn mark_removed(
        &mut self,
        id: &BackupId,
        zone: Zone,
        state: State,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<(), CatalogError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE backups SET state = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.as_str(), state.as_str(), ts(now)],
            )?;
            event(
                tx,
                now,
                Some(id.as_str()),
                state.as_str(),
                Some(zone),
                None,
                reason,
            )?;
            Ok(())
        })
    }

    /// Records a committed move of a backup between zones (aging).
    pub fn mark_moved(
        &mut self,
        id: &BackupId,
        from: Zone,
        to: Zone,
        stored: &Manifest,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<(), CatalogError> {
        let manifest = serde_json::to_string(stored).unwrap_or_default();
        self.write(|tx| {
            // The copy in the new zone may differ (an encrypted one): its manifest.
            tx.execute(
                "UPDATE backups SET zone = ?2, state = 'present', updated_at = ?3, \
                 manifest = ?4, size_bytes = ?5, sha256 = ?6 WHERE id = ?1",
                params![
                    id.as_str(),
                    to.as_str(),
                    ts(now),
                    manifest,
                    stored.archive_bytes as i64,
                    stored.archive_sha256
                ],
            )?;
            event(
                tx,
                now,
                Some(id.as_str()),
                "aged",
                Some(from),
                Some(to),
                reason,
            )?;
            Ok(())
        })
    }

    /// Records a move of a backup to the deletion zone that was tried and failed (the
    /// backup stays in the black box).
    pub fn note_moved_failed(
        &mut self,
        id: &BackupId,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<(), CatalogError> {
        event(
            &self.conn,
            now,
            Some(id.as_str()),
            "failed",
            Some(Zone::BlackBox),
            Some(Zone::Deletion),
            reason,
        )
        .map(|_| ())
        .map_err(|e| self.wrap(e))
    }
}

pub(super) fn upsert(
    conn: &Connection,
    m: &Manifest,
    zone: Zone,
    now: OffsetDateTime,
) -> rusqlite::Result<usize> {
    let manifest = serde_json::to_string(m).unwrap_or_default();
    conn.execute(
        "INSERT INTO backups (id, host_id, zone, kind, label, created_at, size_bytes, \
         logical_bytes, entries, sha256, manifest, state, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'present', ?12) \
         ON CONFLICT(id) DO UPDATE SET zone = excluded.zone, state = 'present', \
         manifest = excluded.manifest, size_bytes = excluded.size_bytes, \
         sha256 = excluded.sha256, updated_at = excluded.updated_at",
        params![
            m.id.as_str(),
            m.host_id,
            zone.as_str(),
            m.kind.as_str(),
            m.label,
            rfc3339(m.created_at),
            m.archive_bytes as i64,
            m.logical_bytes as i64,
            m.entries as i64,
            m.archive_sha256,
            manifest,
            ts(now),
        ],
    )
}
