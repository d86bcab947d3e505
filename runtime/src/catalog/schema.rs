//! The catalog's schema and its migration, opening the database (WAL, busy timeout,
//! full sync), and the text form of the times it stores.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use time::OffsetDateTime;

use super::{Catalog, CatalogError};

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

pub(super) fn ts(t: OffsetDateTime) -> String {
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

pub(super) fn parse_ts(s: &str) -> Option<OffsetDateTime> {
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
}
