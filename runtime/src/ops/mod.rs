//! The engine: the operations the CLI and the daemon run, split by job. Each takes `now`
//! from its caller; what the lifecycle does is decided by the planner
//! ([`crate::plan`]), the I/O is done by the archive, store and catalog modules.
//!
//! - [`backup`]: scheduled and manual backups (admission, hooks, archive, commit);
//! - [`read`]: restore, export and verify, through one readable local copy;
//! - [`browse`]: `ls` and `restore --path` through a format 2 archive's entry index;
//! - `encryption`: archives stored encrypted, identities, plaintext ranges of either;
//! - [`lifecycle`]: carries out the planner's steps (moves, evictions) and `tick`;
//! - [`recovery`]: brings zones and catalog back in line after an interrupted run;
//! - [`locks`]: the host lock, the pins of copies being read, the work marker;
//! - [`outage`]: each zone's reachability (the circuit breaker in front of its store);
//! - [`status`]: what `status` shows; [`manage`]: delete, catalog rebuild, Object Lock;
//! - [`error`]: the errors, each mapped to an exit status.
//!
//! The layers call down only: backup and lifecycle use recovery and locks; nothing here
//! calls back into a caller.

pub mod backup;
pub mod browse;
mod encryption;
pub mod error;
pub mod lifecycle;
pub mod locks;
pub mod manage;
pub(crate) mod outage;
pub mod read;
pub mod recovery;
pub mod status;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::verify_file;
use crate::catalog::{Catalog, Record, State};
use crate::config::Settings;
use crate::domain::{BackupId, Zone};
use crate::progress::Progress;
use crate::store::{self, BackupKey, ZoneStore};

pub use backup::BackupOutcome;
pub use error::OpsError;
pub(crate) use error::io_err;
pub use lifecycle::TickReport;
pub use locks::{HostLock, Pin};
pub use read::{RestoreOutcome, VerifyResult};
pub use recovery::RecoveryReport;
pub use status::{DamagedBackup, Status, ZoneStatus, usage_line};

/// The runtime for one host's configuration.
#[derive(Debug)]
pub struct Tierkeep {
    /// Effective settings.
    pub settings: Settings,
    stores: [Arc<dyn ZoneStore>; 3],
    /// The running policy (reloaded when its file changes).
    pub policy: Arc<crate::policy::PolicyHost>,
    /// Whether zones and catalog are known to be consistent, so that work may skip the
    /// recovery pass: false in a new process (every CLI run recovers first), set by a
    /// recovery, cleared by work that failed (the daemon recovers at start, then only
    /// after a failure or once a day).
    recovered: std::sync::atomic::AtomicBool,
    /// The environment of a backup whose pre-hook has run and whose post-hook has not
    /// yet: what [`Tierkeep::release_hooks`] needs if the backup is dropped midway.
    open_hook: std::sync::Mutex<Option<Vec<(&'static str, String)>>>,
    /// Whether each zone answers (the circuit breaker of [`crate::health`]); read from the
    /// audit trail by the first work that needs it.
    pub(crate) health: std::sync::Mutex<Option<[crate::health::ZoneHealth; 3]>>,
}

impl Tierkeep {
    /// Opens the zones of `settings`.
    pub fn new(settings: Settings) -> Result<Self, OpsError> {
        let open = |zone: Zone| store::open(&settings.zone(zone).url, &settings.s3_settings(zone));
        let stores = [
            open(Zone::BlackBox)?,
            open(Zone::Deletion)?,
            open(Zone::Reserved)?,
        ];
        Ok(Self::with_stores(settings, stores))
    }

    /// The runtime of `settings` on the given zone stores (black box, deletion,
    /// reserved) instead of the ones its URLs name: for tests on
    /// [`crate::store::MemoryStore`]. The black box must be a local directory.
    pub fn with_stores(settings: Settings, stores: [Arc<dyn ZoneStore>; 3]) -> Self {
        let policy = Arc::new(crate::policy::PolicyHost::configured(&settings));
        Tierkeep {
            settings,
            stores,
            policy,
            recovered: std::sync::atomic::AtomicBool::new(false),
            open_hook: std::sync::Mutex::new(None),
            health: std::sync::Mutex::new(None),
        }
    }

    /// The store of a zone.
    pub fn store(&self, zone: Zone) -> &Arc<dyn ZoneStore> {
        &self.stores[zone.index()]
    }

    /// Opens the catalog.
    pub fn catalog(&self) -> Result<Catalog, OpsError> {
        Ok(Catalog::open(&self.settings.catalog_path())?)
    }

    /// Hashes a local copy of `rec`'s archive on a blocking thread and compares it with
    /// the catalog's size and SHA-256.
    pub(crate) async fn verify_copy_of(
        &self,
        rec: &Record,
        path: &Path,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        self.verify_file_of((rec.size_bytes, rec.sha256.clone()), path, progress)
            .await
    }

    /// Hashes the file `path` on a blocking thread and compares it with `expected`
    /// (size, hex SHA-256).
    pub(crate) async fn verify_file_of(
        &self,
        expected: (u64, String),
        path: &Path,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let check = path.to_path_buf();
        let bar = progress.clone();
        bar.phase("verify", expected.0);
        tokio::task::spawn_blocking(move || {
            let mut cb = |n| bar.inc(n);
            verify_file(&check, &expected, &mut cb)
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))??;
        Ok(())
    }

    pub(crate) fn staging(&self) -> Result<PathBuf, OpsError> {
        let dir = self.settings.data_dir.join("staging");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(dir)
    }

    /// Resolves an id or unique prefix to a present backup.
    pub fn resolve(&self, catalog: &Catalog, text: &str) -> Result<Record, OpsError> {
        if let Ok(id) = text.parse::<BackupId>() {
            if let Some(r) = catalog.get(&id)?
                && r.state == State::Present
            {
                return Ok(r);
            }
            return Err(OpsError::NotFound(text.to_owned()));
        }
        if text.len() < 4 {
            return Err(OpsError::NotFound(text.to_owned()));
        }
        let mut found = catalog.find(text)?;
        match found.len() {
            0 => Err(OpsError::NotFound(text.to_owned())),
            1 => Ok(found.remove(0)),
            _ => Err(OpsError::Ambiguous(
                text.to_owned(),
                found
                    .iter()
                    .take(5)
                    .map(|r| r.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    pub(super) fn key(&self, rec: &Record) -> BackupKey {
        BackupKey {
            host: rec.host_id.clone(),
            id: rec.id.clone(),
        }
    }
}
