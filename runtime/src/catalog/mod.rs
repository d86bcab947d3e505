//! The catalog: a durable record of every backup, the zone it is in and its history (an
//! audit trail of created, aged, evicted, deleted, discovered, missing — when and why).
//!
//! SQLite in WAL mode with a busy timeout, so the daemon and any number of CLI processes
//! can open it at once; every write is one `IMMEDIATE` transaction. The zones' manifests
//! are the source of truth: [`Catalog::reconcile`] rebuilds the catalog from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use time::OffsetDateTime;

use crate::archive::Manifest;
use crate::domain::{BackupId, BackupKind, Usage, Zone, rfc3339};

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite failed.
    #[error(
        "catalog {path}: {cause} (only if SQLite reports the file damaged or not a \
         database: move it aside and run `tierkeep catalog rebuild` to recreate it from the \
         zones; the audit trail of removed backups is then lost)"
    )]
    Sqlite {
        /// The catalog file.
        path: PathBuf,
        /// The cause (in the message; not returned from `source()`, so that `{:#}`
        /// prints it once).
        cause: rusqlite::Error,
    },
    /// The catalog holds data this build cannot read.
    #[error("catalog {path}: {reason}")]
    Invalid {
        /// The catalog file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where a backup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Stored in its zone.
    Present,
    /// Removed by an operator.
    Deleted,
    /// Removed by eviction.
    Evicted,
    /// Recorded here but no longer found in any zone.
    Missing,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Present => "present",
            State::Deleted => "deleted",
            State::Evicted => "evicted",
            State::Missing => "missing",
        }
    }
    fn parse(s: &str) -> Option<State> {
        Some(match s {
            "present" => State::Present,
            "deleted" => State::Deleted,
            "evicted" => State::Evicted,
            "missing" => State::Missing,
            _ => return None,
        })
    }
}

/// A backup as the catalog knows it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Backup id.
    pub id: BackupId,
    /// Zone it is in (the last zone it was in, when not present).
    pub zone: Zone,
    /// Scheduled or manual.
    pub kind: BackupKind,
    /// Operator's label.
    pub label: Option<String>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Archive size.
    pub size_bytes: u64,
    /// Hex SHA-256 of the archive.
    pub sha256: String,
    /// Host id.
    pub host_id: String,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Entries in the archive.
    pub entries: u64,
    /// Where it stands.
    pub state: State,
    /// The manifest as stored.
    #[serde(skip)]
    pub manifest: Manifest,
}

/// One line of the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Sequence number.
    pub seq: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The backup concerned, if any.
    pub backup_id: Option<String>,
    /// created, aged, evicted, deleted, discovered, missing, failed, refused.
    pub kind: String,
    /// Zone before.
    pub zone_from: Option<Zone>,
    /// Zone after.
    pub zone_to: Option<Zone>,
    /// Why.
    pub reason: String,
}

/// What a reconcile changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Backups found in a zone and added to the catalog.
    pub discovered: Vec<String>,
    /// Backups whose recorded zone was corrected.
    pub moved: Vec<String>,
    /// Backups in the catalog that no zone holds any more.
    pub missing: Vec<String>,
    /// Backups found in more than one zone (the later zone is recorded).
    pub duplicates: Vec<String>,
    /// Interrupted evictions completed in the catalog.
    pub evicted: Vec<String>,
}

/// The catalog database.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS backups (
    id            TEXT PRIMARY KEY,
    host_id       TEXT NOT NULL,
    zone          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    label         TEXT,
    created_at    TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    logical_bytes INTEGER NOT NULL,
    entries       INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    manifest      TEXT NOT NULL,
    state         TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS backups_zone ON backups(state, zone, id);
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    backup_id  TEXT,
    kind       TEXT NOT NULL,
    zone_from  TEXT,
    zone_to    TEXT,
    reason     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_backup ON events(backup_id, seq);
";

fn ts(t: OffsetDateTime) -> String {
    // Fixed width (nanoseconds) so text order is time order.
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

fn parse_ts(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CatalogError::Invalid {
                path: path.to_path_buf(),
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let wrap = |cause| CatalogError::Sqlite {
            path: path.to_path_buf(),
            cause,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(wrap)?;
        let mut cat = Catalog {
            conn,
            path: path.to_path_buf(),
        };
        cat.migrate()?;
        Ok(cat)
    }

    /// Runs `f` in one `IMMEDIATE` transaction and commits it.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| CatalogError::Sqlite {
                path: self.path.clone(),
                cause: e,
            })?;
        let result = f(&tx).and_then(|v| tx.commit().map(|()| v));
        result.map_err(|cause| CatalogError::Sqlite {
            path: self.path.clone(),
            cause,
        })
    }

    fn wrap(&self, cause: rusqlite::Error) -> CatalogError {
        CatalogError::Sqlite {
            path: self.path.clone(),
            cause,
        }
    }

    fn migrate(&mut self) -> Result<(), CatalogError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.wrap(e))?;
        if version > SCHEMA_VERSION {
            return Err(CatalogError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "schema version {version} is newer than this tierkeep understands \
                     ({SCHEMA_VERSION}); upgrade tierkeep"
                ),
            });
        }
        if version < SCHEMA_VERSION {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| CatalogError::Sqlite {
                    path: self.path.clone(),
                    cause: e,
                })?;
            tx.execute_batch(SCHEMA)
                .and_then(|()| tx.pragma_update(None, "user_version", SCHEMA_VERSION))
                .and_then(|()| tx.commit())
                .map_err(|e| CatalogError::Sqlite {
                    path: self.path.clone(),
                    cause: e,
                })?;
        }
        Ok(())
    }

    /// The catalog file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn row_to_record(&self, row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record, String>> {
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

    fn query_records(
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
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<(), CatalogError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE backups SET zone = ?2, state = 'present', updated_at = ?3 WHERE id = ?1",
                params![id.as_str(), to.as_str(), ts(now)],
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

    /// Runs SQLite's integrity check; `Ok(())` when it says "ok".
    pub fn integrity_check(&self) -> Result<(), CatalogError> {
        let result: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.wrap(e))?;
        if result == "ok" {
            Ok(())
        } else {
            Err(CatalogError::Invalid {
                path: self.path.clone(),
                reason: format!("integrity check failed: {result}"),
            })
        }
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

fn upsert(
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
         manifest = excluded.manifest, updated_at = excluded.updated_at",
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

fn event(
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
