//! The audit trail (`events`): noting outcomes and intents, reading the trail, and the
//! queries over it (last backup, last attempt, zone reachability, damaged copies).

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::schema::{parse_ts, ts};
use super::{Catalog, CatalogError, Event, Record};
use crate::domain::{BackupId, Zone};

impl Catalog {
    /// Records an event about a backup without changing its state (an intent such as
    /// `evicting`, written before the step it announces).
    pub fn note_backup(
        &mut self,
        id: &BackupId,
        now: OffsetDateTime,
        kind: &str,
        zone: Option<Zone>,
        reason: &str,
    ) -> Result<(), CatalogError> {
        event(&self.conn, now, Some(id.as_str()), kind, zone, None, reason)
            .map(|_| ())
            .map_err(|e| self.wrap(e))
    }

    /// Records an outcome that concerns no stored backup (a failed or refused backup).
    pub fn note(
        &mut self,
        now: OffsetDateTime,
        kind: &str,
        zone: Option<Zone>,
        reason: &str,
    ) -> Result<(), CatalogError> {
        event(&self.conn, now, None, kind, None, zone, reason)
            .map(|_| ())
            .map_err(|e| self.wrap(e))
    }

    /// The audit trail, newest first, of one backup or of everything.
    pub fn events(&self, id: Option<&str>, limit: u32) -> Result<Vec<Event>, CatalogError> {
        let sql = if id.is_some() {
            "SELECT seq, at, backup_id, kind, zone_from, zone_to, reason FROM events \
             WHERE backup_id = ?1 ORDER BY seq DESC LIMIT ?2"
        } else {
            "SELECT seq, at, backup_id, kind, zone_from, zone_to, reason FROM events \
             WHERE ?1 IS NULL ORDER BY seq DESC LIMIT ?2"
        };
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map(params![id, limit], row_to_event)
            .map_err(|e| self.wrap(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.wrap(e))
    }

    /// When the last backup was created into `zone`.
    pub fn last_created_in(&self, zone: Zone) -> Result<Option<OffsetDateTime>, CatalogError> {
        self.conn
            .query_row(
                "SELECT seq, at, backup_id, kind, zone_from, zone_to, reason FROM events \
                 WHERE kind = 'created' AND zone_to = ?1 ORDER BY seq DESC LIMIT 1",
                params![zone.as_str()],
                row_to_event,
            )
            .optional()
            .map(|e| e.map(|e| e.at))
            .map_err(|e| self.wrap(e))
    }

    /// The newest event of one of `kinds`.
    pub fn last_event(&self, kinds: &[&str]) -> Result<Option<Event>, CatalogError> {
        let list = kinds
            .iter()
            .map(|k| format!("'{}'", k.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT seq, at, backup_id, kind, zone_from, zone_to, reason FROM events \
             WHERE kind IN ({list}) ORDER BY seq DESC LIMIT 1"
        );
        self.conn
            .query_row(&sql, [], row_to_event)
            .optional()
            .map_err(|e| self.wrap(e))
    }

    /// The newest backup attempt (a backup created, or a backup that failed or was
    /// refused), leaving out the other `failed` events (moves, evictions).
    pub fn last_attempt(&self) -> Result<Option<Event>, CatalogError> {
        self.conn
            .query_row(
                "SELECT seq, at, backup_id, kind, zone_from, zone_to, reason FROM events \
                 WHERE kind = 'created' OR (kind IN ('failed', 'refused') AND backup_id IS NULL) \
                 ORDER BY seq DESC LIMIT 1",
                [],
                row_to_event,
            )
            .optional()
            .map_err(|e| self.wrap(e))
    }

    /// The newest `unreachable` or `reachable` event of `zone`: whether the last work
    /// that needed it found it answering.
    pub fn last_zone_event(&self, zone: Zone) -> Result<Option<Event>, CatalogError> {
        self.conn
            .query_row(
                "SELECT seq, at, backup_id, kind, zone_from, zone_to, reason FROM events \
                 WHERE kind IN ('unreachable', 'reachable') AND zone_to = ?1 \
                 ORDER BY seq DESC LIMIT 1",
                params![zone.as_str()],
                row_to_event,
            )
            .optional()
            .map_err(|e| self.wrap(e))
    }

    /// Whether `id`'s copy is marked damaged (its last `damaged` or `verified` event is a
    /// `damaged` one).
    pub fn is_damaged(&self, id: &BackupId) -> Result<bool, CatalogError> {
        self.conn
            .query_row(
                "SELECT kind FROM events WHERE backup_id = ?1 AND kind IN ('damaged', 'verified') \
                 ORDER BY seq DESC LIMIT 1",
                params![id.as_str()],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|k| k.as_deref() == Some("damaged"))
            .map_err(|e| self.wrap(e))
    }

    /// Present backups whose copy was found damaged (a `damaged` event not followed by a
    /// `verified` one), oldest first, each with the event that marked it.
    pub fn damaged(&self) -> Result<Vec<(Record, Event)>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT e.seq, e.at, e.backup_id, e.kind, e.zone_from, e.zone_to, e.reason \
                 FROM events e JOIN backups b ON b.id = e.backup_id \
                 WHERE b.state = 'present' AND e.kind = 'damaged' AND e.seq = \
                   (SELECT MAX(seq) FROM events x WHERE x.backup_id = e.backup_id \
                    AND x.kind IN ('damaged', 'verified')) \
                 ORDER BY e.backup_id",
            )
            .map_err(|e| self.wrap(e))?;
        let events = stmt
            .query_map([], row_to_event)
            .map_err(|e| self.wrap(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.wrap(e))?;
        let mut out = Vec::new();
        for e in events {
            let Some(id) = e
                .backup_id
                .as_deref()
                .and_then(|i| i.parse::<BackupId>().ok())
            else {
                continue;
            };
            if let Some(rec) = self.get(&id)? {
                out.push((rec, e));
            }
        }
        Ok(out)
    }
}

/// An `events` row selected as (seq, at, backup_id, kind, zone_from, zone_to, reason).
fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let at: String = r.get(1)?;
    let zf: Option<String> = r.get(4)?;
    let zt: Option<String> = r.get(5)?;
    Ok(Event {
        seq: r.get(0)?,
        at: parse_ts(&at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        backup_id: r.get(2)?,
        kind: r.get(3)?,
        zone_from: zf.and_then(|z| z.parse().ok()),
        zone_to: zt.and_then(|z| z.parse().ok()),
        reason: r.get(6)?,
    })
}

pub(super) fn event(
    conn: &Connection,
    now: OffsetDateTime,
    backup_id: Option<&str>,
    kind: &str,
    from: Option<Zone>,
    to: Option<Zone>,
    reason: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO events (at, backup_id, kind, zone_from, zone_to, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            ts(now),
            backup_id,
            kind,
            from.map(Zone::as_str),
            to.map(Zone::as_str),
            reason
        ],
    )
}
