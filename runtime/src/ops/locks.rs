//! Who may work on what: the host's work lock, the pins that keep a copy from being
//! removed while it is read, and the work marker that tells the next process to recover.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{OpsError, Tierkeep, io_err};
use crate::catalog::{Record, State};
use crate::domain::{BackupId, Zone};
use crate::store::StoreError;

/// Opens (creating it and its folder) the lock file `path` and locks it, exclusive or
/// shared; when another process holds it, calls `waiting` and waits on a blocking thread.
pub(super) async fn lock_file(
    path: &Path,
    exclusive: bool,
    waiting: impl FnOnce(),
) -> Result<File, OpsError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let held = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match held {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            waiting();
            tokio::task::spawn_blocking(move || {
                if exclusive {
                    file.lock()
                } else {
                    file.lock_shared()
                }
                .map(|()| file)
            })
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))?
            .map_err(io_err("lock", path))
        }
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock", path)(e)),
    }
}

/// An exclusive lock on a host's backup work, held while it lives.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

/// A hold on one backup's copy in its zone: shared by readers (restore, export, verify)
/// while they read it, exclusive for whoever removes that copy (the end of a move, an
/// eviction, an operator's delete), who therefore waits for the readers to finish. So a
/// restore from the CLI runs safely beside the daemon's aging and eviction.
#[derive(Debug)]
pub struct Pin {
    file: File,
    path: PathBuf,
}

impl Pin {
    /// Releases an exclusive pin after the copy is gone, removing its file.
    fn release_removed(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

impl Tierkeep {
    /// Takes the host's work lock, waiting for another backup of this host to finish.
    pub async fn lock(&self) -> Result<HostLock, OpsError> {
        let path = self
            .settings
            .data_dir
            .join("locks")
            .join(format!("{}.lock", self.settings.host_id));
        let file = lock_file(&path, true, || {
            tracing::warn!(lock = %path.display(), "another tierkeep process is working on this host; waiting for it to finish");
        })
        .await?;
        Ok(HostLock { _file: file })
    }

    /// Takes the pin of backup `id` (see [`Pin`]): shared to read it, exclusive to remove
    /// a copy of it (waiting, with a log line, for the readers).
    pub(crate) async fn pin(&self, id: &BackupId, exclusive: bool) -> Result<Pin, OpsError> {
        let path = self
            .settings
            .data_dir
            .join("locks")
            .join("pins")
            .join(format!("{}-{id}.pin", self.settings.host_id));
        let file = lock_file(&path, exclusive, || {
            if exclusive {
                tracing::warn!(%id, "waiting for a restore, export or verify of this backup to finish reading it");
            }
        })
        .await?;
        Ok(Pin { file, path })
    }

    /// Removes the copy of `rec` in `zone` once no reader is reading it.
    pub(crate) async fn remove_copy(&self, rec: &Record, zone: Zone) -> Result<(), OpsError> {
        let pin = self.pin(&rec.id, true).await?;
        let result = self.store(zone).delete(&self.key(rec)).await;
        pin.release_removed();
        match result {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves `text` and pins the backup for reading; the record returned is read
    /// again under the pin, so it names the zone the backup is in now.
    pub(super) async fn resolve_pinned(&self, text: &str) -> Result<(Record, Pin), OpsError> {
        let rec = {
            let catalog = self.catalog()?;
            self.resolve(&catalog, text)?
        };
        self.repin(rec).await
    }

    pub(super) async fn repin(&self, rec: Record) -> Result<(Record, Pin), OpsError> {
        let pin = self.pin(&rec.id, false).await?;
        let catalog = self.catalog()?;
        match catalog.get(&rec.id)? {
            Some(r) if r.state == State::Present => Ok((r, pin)),
            _ => Err(OpsError::NotFound(rec.id.to_string())),
        }
    }

    /// Whether the next piece of work must run a recovery pass first.
    pub fn needs_recovery(&self) -> bool {
        !self.recovered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records that zones and catalog are consistent (after a recovery) or may not be
    /// (after failed work).
    pub fn set_recovered(&self, yes: bool) {
        self.recovered
            .store(yes, std::sync::atomic::Ordering::SeqCst);
    }

    /// `data_dir/locks/<host>.work`: present while a backup or a lifecycle pass works
    /// under the host lock, removed when it ends cleanly. Whoever finds it left over by a
    /// process that crashed (or was stopped) runs a recovery pass first.
    pub(super) fn work_marker(&self) -> PathBuf {
        self.settings
            .data_dir
            .join("locks")
            .join(format!("{}.work", self.settings.host_id))
    }

    /// Ends a piece of work begun by [`Tierkeep::recover_if_needed`]: a clean end removes
    /// the marker; a failure leaves it (and the next work recovers first).
    pub(crate) fn end_work(&self, ok: bool) {
        if ok {
            let _ = fs::remove_file(self.work_marker());
        } else {
            self.set_recovered(false);
        }
    }
}
