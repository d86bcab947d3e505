//! The catalog: a durable record of every backup, the zone it is in and its history (an
//! audit trail of created, aged, evicted, deleted, discovered, missing — when and why).
//!
//! SQLite in WAL mode with a busy timeout, so the daemon and any number of CLI processes
//! can open it at once; every write is one `IMMEDIATE` transaction. The zones' manifests
//! are the source of truth: [`Catalog::reconcile`] rebuilds the catalog from them.

mod events;
mod reconcile;
mod records;
mod schema;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};
use serde::Serialize;
use time::OffsetDateTime;

use crate::archive::Manifest;
use crate::domain::{BackupId, BackupKind, Zone};

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

impl Catalog {
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

    /// The catalog file.
    pub fn path(&self) -> &Path {
        &self.path
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
