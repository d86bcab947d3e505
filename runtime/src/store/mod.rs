//! Zone stores: one async trait for every place a zone can live, with a local-directory
//! implementation in [`local`], an S3 one in [`s3`], and an in-memory one for tests in
//! [`memory`]. Zone URLs are parsed once into a [`ZoneUrl`] ([`url`]).
//!
//! Layout inside a zone: `<host-id>/<backup-id>/archive.tar.zst` (or
//! `archive.tar.zst.age` when encrypted) and `<host-id>/<backup-id>/manifest.json`. The manifest is written last and is the commit
//! marker; an archive without a manifest is an incomplete upload, never a backup.

pub mod local;
pub mod memory;
pub mod s3;
pub mod url;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::archive::Manifest;
use crate::domain::BackupId;

pub use local::LocalStore;
pub use memory::{MemoryStore, Op};
pub use s3::{S3Settings, S3Store};
pub use url::{ZoneUrl, ZoneUrlError};

/// The archive's object name inside a backup's folder.
pub const ARCHIVE_NAME: &str = crate::archive::manifest::ARCHIVE_FILE;
/// An encrypted archive's object name.
pub const ENCRYPTED_ARCHIVE_NAME: &str = crate::archive::manifest::ENCRYPTED_ARCHIVE_FILE;
/// The manifest's object name inside a backup's folder.
pub const MANIFEST_NAME: &str = "manifest.json";

/// A backup's address inside a zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupKey {
    /// Host id (first path segment).
    pub host: String,
    /// Backup id (second path segment).
    pub id: BackupId,
}

impl fmt::Display for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.id)
    }
}

/// One backup folder found in a zone.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its address.
    pub key: BackupKey,
    /// What the folder holds.
    pub state: ListedState,
}

/// What a backup folder in a zone holds.
#[derive(Debug, Clone)]
pub enum ListedState {
    /// A committed backup: its manifest is present and readable.
    Committed(Box<Manifest>),
    /// No manifest: an upload that never finished.
    Incomplete,
    /// A manifest that cannot be read or does not match its folder; left alone.
    Unreadable(String),
}

/// Parses manifest bytes read from `zone` at `key`, refusing a manifest that describes
/// another backup than the folder it sits in.
pub(crate) fn parse_manifest(
    zone: &str,
    key: &BackupKey,
    bytes: &[u8],
) -> Result<Manifest, StoreError> {
    let bad = |reason| StoreError::BadManifest {
        zone: zone.to_owned(),
        key: key.clone(),
        reason,
    };
    let m = Manifest::from_json(bytes).map_err(bad)?;
    if m.id != key.id || m.host_id != key.host {
        return Err(bad(format!("it describes {}/{}", m.host_id, m.id)));
    }
    Ok(m)
}

/// Whether retrying may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A passing fault (timeout, connection reset): retry with backoff.
    Temporary,
    /// Retrying will not help until something changes.
    Permanent,
}

/// Errors of zone stores. A message includes its cause and no variant returns it from
/// `source()`, so `{:#}` prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on the zone failed.
    #[error("zone {zone}: {op} {path}: {cause}")]
    Io {
        /// The zone's URL.
        zone: String,
        /// What was being done.
        op: &'static str,
        /// The path or object.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The backup is not in this zone.
    #[error("zone {zone}: backup {key} not found")]
    NotFound {
        /// The zone's URL.
        zone: String,
        /// The backup.
        key: BackupKey,
    },
    /// A manifest could not be read.
    #[error("zone {zone}: manifest of {key} is unreadable: {reason}")]
    BadManifest {
        /// The zone's URL.
        zone: String,
        /// The backup.
        key: BackupKey,
        /// Why.
        reason: String,
    },
    /// A request to a remote zone failed.
    #[error("zone {zone}: {op} {object}: {message}")]
    Remote {
        /// The zone's URL.
        zone: String,
        /// What was being done.
        op: &'static str,
        /// The object or bucket.
        object: String,
        /// What the server or client said, with advice.
        message: String,
        /// Whether retrying may help.
        retry: Retry,
    },
    /// The backup is protected by S3 Object Lock (a retention that has not ended, or a
    /// legal hold): it cannot be deleted, and nothing was deleted.
    #[error(
        "refused: backup {key} in zone {zone} is under S3 Object Lock {until}; {detail}. \
         Nobody can delete it before then, this host included"
    )]
    Locked {
        /// The zone's URL.
        zone: String,
        /// The backup.
        key: BackupKey,
        /// When the protection ends, in words (`until 2026-12-02T22:20:16Z`).
        until: String,
        /// What is locked, what the server said, and what was changed (nothing, unless
        /// the server refused midway).
        detail: String,
    },
    /// `lock_retention` is configured but the bucket cannot lock objects.
    #[error(
        "zone {zone}: zones.reserved.lock_retention is set, but bucket `{bucket}` has no \
         S3 Object Lock enabled ({reason}); manual backups would not be protected. Use a \
         bucket created with Object Lock (`mc mb --with-lock`, `aws s3api create-bucket \
         --object-lock-enabled-for-bucket`), or remove zones.reserved.lock_retention"
    )]
    NoObjectLock {
        /// The zone's URL.
        zone: String,
        /// The bucket.
        bucket: String,
        /// What the server answered.
        reason: String,
    },
    /// The zone URL or its settings cannot be used.
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    /// Whether retrying may help.
    pub fn retry(&self) -> Retry {
        match self {
            StoreError::Io { cause, .. } => match cause.kind() {
                std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::WouldBlock => Retry::Temporary,
                _ => Retry::Permanent,
            },
            StoreError::Remote { retry, .. } => *retry,
            _ => Retry::Permanent,
        }
    }
}

/// A progress callback: called with the number of bytes just moved.
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Where a zone keeps its backups.
#[async_trait]
pub trait ZoneStore: Send + Sync + fmt::Debug {
    /// The zone's URL, for messages.
    fn url(&self) -> &str;

    /// A local directory on the same filesystem as the zone, where a new archive can be
    /// written so that [`ZoneStore::put_archive`] only renames it; `None` when the zone
    /// is remote.
    fn staging_dir(&self) -> Option<PathBuf>;

    /// Checks the zone is reachable and writable, creating its root if needed.
    async fn check(&self) -> Result<(), StoreError>;

    /// Every backup folder of every host in the zone.
    async fn list(&self) -> Result<Vec<Listed>, StoreError>;

    /// Reads a committed backup's manifest.
    async fn read_manifest(&self, key: &BackupKey) -> Result<Manifest, StoreError>;

    /// Stores the archive file `src` as `name` (`archive.tar.zst`, or an already
    /// encrypted `archive.tar.zst.age`), consuming it when it is in the staging directory.
    /// Not yet a backup: the manifest commits it.
    async fn put_archive(
        &self,
        key: &BackupKey,
        name: &str,
        src: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError>;

    /// Stores an archive named `name` (`archive.tar.zst.age`) read from `src` as a
    /// stream, with no local copy: an archive encrypted as it is read. `size_hint` is
    /// about its size (the parts of a multipart upload are sized by it). Not yet a
    /// backup: the manifest commits it.
    async fn put_archive_stream(
        &self,
        key: &BackupKey,
        name: &str,
        src: Box<dyn std::io::Read + Send>,
        size_hint: u64,
        progress: ProgressFn,
    ) -> Result<(), StoreError>;

    /// Writes the manifest, committing the backup.
    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError>;

    /// The path of the archive named `name` when it can be read in place (local zones).
    fn local_archive(&self, key: &BackupKey, name: &str) -> Option<PathBuf>;

    /// Copies the archive named `name` to `dest` (a new file), calling `progress` as
    /// bytes arrive.
    async fn fetch_archive(
        &self,
        key: &BackupKey,
        name: &str,
        dest: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError>;

    /// Reads the archive named `name` through and gives its size and hex SHA-256,
    /// calling `progress` as bytes are hashed: what verifying a stored copy needs, with
    /// nothing written locally (an S3 zone reads it with ranged GETs, in order, a few in
    /// flight).
    async fn digest_archive(
        &self,
        key: &BackupKey,
        name: &str,
        progress: ProgressFn,
    ) -> Result<(u64, String), StoreError>;

    /// Reads `len` bytes of the archive from `offset` (an index, the frames of one
    /// file): a positioned read locally, one ranged GET on S3. Fewer bytes than asked is
    /// an error.
    async fn read_range(
        &self,
        key: &BackupKey,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError>;

    /// Deletes a backup: the manifest first (so a crash leaves an incomplete upload, never
    /// a half-deleted backup that looks whole), then the archive. A backup that the zone
    /// protects (S3 Object Lock) is refused with [`StoreError::Locked`] before anything is
    /// deleted; on a versioned bucket every version goes, so a deleted backup is gone.
    async fn delete(&self, key: &BackupKey) -> Result<(), StoreError>;

    /// Checks that the zone can protect new manual backups as configured (S3 Object Lock
    /// when `lock_retention` is set): [`StoreError::NoObjectLock`] when it cannot.
    async fn check_lock(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes an incomplete backup folder (an archive without a manifest, temp files).
    async fn remove_incomplete(&self, key: &BackupKey) -> Result<(), StoreError>;

    /// Aborts every unfinished multipart upload of `host` (call only while nothing of
    /// that host uploads: under its lock, in recovery). Returns the objects concerned.
    /// Zones without multipart uploads have nothing to do.
    async fn abort_stale_uploads(&self, _host: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

/// A local, readable file holding a backup's archive: the zone's own file when the zone
/// is local, or a copy fetched from it, which is removed when this is dropped.
#[derive(Debug)]
pub struct ReadableCopy {
    path: PathBuf,
    fetched: bool,
}

impl ReadableCopy {
    /// The file to read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is a fetched copy (removed on drop) rather than the zone's own.
    pub fn is_fetched(&self) -> bool {
        self.fetched
    }

    /// Keeps the file: returns its path and whether it was fetched (then the caller
    /// removes it).
    pub fn keep(mut self) -> (PathBuf, bool) {
        let fetched = std::mem::replace(&mut self.fetched, false);
        (std::mem::take(&mut self.path), fetched)
    }
}

impl Drop for ReadableCopy {
    fn drop(&mut self) {
        if !self.fetched {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                "cannot remove a fetched copy of an archive: {e}"
            ),
        }
    }
}

/// Gives a readable local file of the archive of `key` in `store`: the zone's own file
/// when it can be read in place ([`ZoneStore::local_archive`]), else a copy fetched to
/// `fetch_to` (a new file, which the caller names so that its clean-up rules find
/// leftovers of a crash), calling `progress` as bytes arrive. A fetch that fails
/// removes what it wrote.
///
/// A local zone whose archive file is missing gives [`StoreError::NotFound`], as a
/// remote one does.
pub async fn readable_copy(
    store: &dyn ZoneStore,
    key: &BackupKey,
    name: &str,
    fetch_to: &Path,
    progress: ProgressFn,
) -> Result<ReadableCopy, StoreError> {
    if let Some(path) = store.local_archive(key, name) {
        if !path.is_file() {
            return Err(StoreError::NotFound {
                zone: store.url().to_owned(),
                key: key.clone(),
            });
        }
        return Ok(ReadableCopy {
            path,
            fetched: false,
        });
    }
    // Armed before the fetch, so that a failed or cancelled fetch leaves nothing.
    let copy = ReadableCopy {
        path: fetch_to.to_path_buf(),
        fetched: true,
    };
    store.fetch_archive(key, name, fetch_to, progress).await?;
    Ok(copy)
}

/// Opens the store for a zone URL (with `s3` settings for an S3 zone).
pub fn open(url: &ZoneUrl, s3: &S3Settings) -> Result<Arc<dyn ZoneStore>, StoreError> {
    Ok(match url {
        ZoneUrl::Local(dir) => Arc::new(LocalStore::new(url.to_string(), dir.clone())),
        ZoneUrl::S3 { .. } => Arc::new(S3Store::new(url, s3)?),
    })
}
