//! A zone kept in memory, for tests of the engine: the same commit-marker semantics as
//! the other stores (an archive without a manifest is an incomplete upload), and failures
//! that a test can inject per operation, or all at once by making the zone unreachable.
//!
//! It behaves like a remote zone: it has no staging directory and no archive that can be
//! read in place. Configuration cannot name it; tests build it with [`MemoryStore::new`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    ARCHIVE_NAME, BackupKey, Listed, ListedState, MANIFEST_NAME, ProgressFn, Retry, StoreError,
    ZoneStore,
};
use crate::archive::Manifest;

/// An operation of [`ZoneStore`], to inject a failure into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`ZoneStore::check`]
    Check,
    /// [`ZoneStore::list`]
    List,
    /// [`ZoneStore::read_manifest`]
    ReadManifest,
    /// [`ZoneStore::put_archive`]
    PutArchive,
    /// [`ZoneStore::put_manifest`]
    PutManifest,
    /// [`ZoneStore::fetch_archive`]
    FetchArchive,
    /// [`ZoneStore::read_range`]
    ReadRange,
    /// [`ZoneStore::digest_archive`]
    DigestArchive,
    /// [`ZoneStore::delete`]
    Delete,
    /// [`ZoneStore::check_lock`]
    CheckLock,
    /// [`ZoneStore::remove_incomplete`]
    RemoveIncomplete,
    /// [`ZoneStore::abort_stale_uploads`]
    AbortStaleUploads,
}

impl Op {
    /// The operation's name in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Check => "check",
            Op::List => "list",
            Op::ReadManifest => "read manifest",
            Op::PutArchive => "put archive",
            Op::PutManifest => "put manifest",
            Op::FetchArchive => "fetch archive",
            Op::ReadRange => "read range",
            Op::DigestArchive => "digest archive",
            Op::Delete => "delete",
            Op::CheckLock => "check lock",
            Op::RemoveIncomplete => "remove incomplete",
            Op::AbortStaleUploads => "abort stale uploads",
        }
    }
}

/// One backup folder: what has been stored of it.
#[derive(Debug, Default)]
struct Folder {
    archive: Option<Vec<u8>>,
    /// Raw bytes, so that a test can store an unreadable manifest.
    manifest: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    folders: BTreeMap<BackupKey, Folder>,
    /// Errors the next calls of an operation return, in order.
    faults: HashMap<Op, VecDeque<StoreError>>,
    /// Why every operation fails, while the zone is unreachable.
    unreachable: Option<String>,
    /// How many calls each operation has had (failed ones included).
    calls: HashMap<Op, u64>,
}

/// A zone kept in memory. Clones share the same contents, so a test can keep one to
/// inject failures and inspect the zone while the engine uses another.
#[derive(Clone)]
pub struct MemoryStore {
    url: String,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("MemoryStore")
            .field("url", &self.url)
            .field("folders", &st.folders.len())
            .field("unreachable", &st.unreachable)
            .finish()
    }
}

impl MemoryStore {
    /// An empty zone described by `url` in messages (`mem://deletion`, say).
    pub fn new(url: impl Into<String>) -> Self {
        MemoryStore {
            url: url.into(),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent data behind:
        // every change below is made in one step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next call of `op` fail with a temporary [`StoreError::Remote`] (as a
    /// timeout would). Calls add up: two calls fail the next two.
    pub fn fail_next(&self, op: Op) {
        let err = StoreError::Remote {
            zone: self.url.clone(),
            op: op.as_str(),
            object: String::new(),
            message: "injected failure".into(),
            retry: Retry::Temporary,
        };
        self.fail_next_with(op, err);
    }

    /// Makes the next call of `op` (after those already queued) fail with `err`.
    pub fn fail_next_with(&self, op: Op, err: StoreError) {
        self.lock().faults.entry(op).or_default().push_back(err);
    }

    /// While `Some(reason)`, every operation fails with a temporary
    /// [`StoreError::Remote`] saying `reason`, and nothing is changed; `None` makes the
    /// zone answer again.
    pub fn set_unreachable(&self, reason: Option<&str>) {
        self.lock().unreachable = reason.map(str::to_owned);
    }

    /// How many times `op` has been called, failed calls included.
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Every backup folder in the zone, committed or not.
    pub fn keys(&self) -> Vec<BackupKey> {
        self.lock().folders.keys().cloned().collect()
    }

    /// The stored archive of `key`, if any.
    pub fn archive(&self, key: &BackupKey) -> Option<Vec<u8>> {
        self.lock().folders.get(key)?.archive.clone()
    }

    /// Stores `bytes` as the manifest of `key` as they are, without any check (an
    /// archive is not needed): to test what readers make of an unreadable or foreign
    /// manifest.
    pub fn put_raw_manifest(&self, key: &BackupKey, bytes: Vec<u8>) {
        self.lock().folders.entry(key.clone()).or_default().manifest = Some(bytes);
    }

    /// Stores `bytes` as the archive of `key` without a manifest: an interrupted upload.
    pub fn put_raw_archive(&self, key: &BackupKey, bytes: Vec<u8>) {
        self.lock().folders.entry(key.clone()).or_default().archive = Some(bytes);
    }

    /// Counts a call of `op` and returns the failure it must report, if any.
    fn enter(&self, st: &mut State, op: Op) -> Result<(), StoreError> {
        *st.calls.entry(op).or_default() += 1;
        if let Some(reason) = &st.unreachable {
            return Err(StoreError::Remote {
                zone: self.url.clone(),
                op: op.as_str(),
                object: String::new(),
                message: reason.clone(),
                retry: Retry::Temporary,
            });
        }
        match st.faults.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Enters `op` and runs `f` on the contents, under the lock.
    fn with<T>(
        &self,
        op: Op,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut st = self.lock();
        self.enter(&mut st, op)?;
        f(&mut st)
    }

    fn not_found(&self, key: &BackupKey) -> StoreError {
        StoreError::NotFound {
            zone: self.url.clone(),
            key: key.clone(),
        }
    }

    fn io(&self, op: &'static str, path: PathBuf, cause: std::io::Error) -> StoreError {
        StoreError::Io {
            zone: self.url.clone(),
            op,
            path,
            cause,
        }
    }

    fn object(key: &BackupKey, name: &str) -> PathBuf {
        PathBuf::from(format!("{key}/{name}"))
    }
}

#[async_trait]
impl ZoneStore for MemoryStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn staging_dir(&self) -> Option<PathBuf> {
        None
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.with(Op::Check, |_| Ok(()))
    }

    async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        self.with(Op::List, |st| {
            let mut out: Vec<Listed> = st
                .folders
                .iter()
                .map(|(key, folder)| Listed {
                    key: key.clone(),
                    state: match &folder.manifest {
                        None => ListedState::Incomplete,
                        Some(bytes) => match super::parse_manifest(&self.url, key, bytes) {
                            Ok(m) => ListedState::Committed(Box::new(m)),
                            Err(e) => ListedState::Unreadable(e.to_string()),
                        },
                    },
                })
                .collect();
            out.sort_by(|a, b| a.key.id.cmp(&b.key.id));
            Ok(out)
        })
    }

    async fn read_manifest(&self, key: &BackupKey) -> Result<Manifest, StoreError> {
        self.with(Op::ReadManifest, |st| {
            let bytes = st
                .folders
                .get(key)
                .and_then(|f| f.manifest.as_deref())
                .ok_or_else(|| self.not_found(key))?;
            super::parse_manifest(&self.url, key, bytes)
        })
    }

    async fn put_archive(
        &self,
        key: &BackupKey,
        _name: &str,
        src: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        self.with(Op::PutArchive, |_| Ok(()))?;
        let bytes = tokio::fs::read(src)
            .await
            .map_err(|e| self.io("read", src.to_path_buf(), e))?;
        let n = bytes.len() as u64;
        self.put_raw_archive(key, bytes);
        progress(n);
        Ok(())
    }

    async fn put_archive_stream(
        &self,
        key: &BackupKey,
        _name: &str,
        mut src: Box<dyn std::io::Read + Send>,
        _size_hint: u64,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        self.with(Op::PutArchive, |_| Ok(()))?;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            src.read_to_end(&mut bytes).map(|_| bytes)
        })
        .await
        .map_err(|e| {
            self.io(
                "read",
                PathBuf::from(key.to_string()),
                std::io::Error::other(e),
            )
        })?
        .map_err(|e| self.io("read", PathBuf::from(key.to_string()), e))?;
        let n = bytes.len() as u64;
        self.put_raw_archive(key, bytes);
        progress(n);
        Ok(())
    }

    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = BackupKey {
            host: manifest.host_id.clone(),
            id: manifest.id.clone(),
        };
        self.with(Op::PutManifest, |st| match st.folders.get_mut(&key) {
            Some(folder) if folder.archive.is_some() => {
                folder.manifest = Some(manifest.to_json());
                Ok(())
            }
            _ => Err(self.io(
                "commit",
                Self::object(&key, ARCHIVE_NAME),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "archive missing: refusing to commit",
                ),
            )),
        })
    }

    fn local_archive(&self, _key: &BackupKey, _name: &str) -> Option<PathBuf> {
        None
    }

    async fn fetch_archive(
        &self,
        key: &BackupKey,
        _name: &str,
        dest: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let bytes = self.with(Op::FetchArchive, |st| {
            st.folders
                .get(key)
                .and_then(|f| f.archive.clone())
                .ok_or_else(|| self.not_found(key))
        })?;
        let dest_path = dest.to_path_buf();
        let n = bytes.len() as u64;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&dest_path)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .await
        .map_err(|e| self.io("write", dest.to_path_buf(), std::io::Error::other(e)))?
        .map_err(|e| self.io("write", dest.to_path_buf(), e))?;
        progress(n);
        Ok(())
    }

    async fn digest_archive(
        &self,
        key: &BackupKey,
        _name: &str,
        progress: ProgressFn,
    ) -> Result<(u64, String), StoreError> {
        use sha2::Digest;
        let bytes = self.with(Op::DigestArchive, |st| {
            st.folders
                .get(key)
                .and_then(|f| f.archive.clone())
                .ok_or_else(|| self.not_found(key))
        })?;
        progress(bytes.len() as u64);
        Ok((
            bytes.len() as u64,
            hex::encode(sha2::Sha256::digest(&bytes[..])),
        ))
    }

    async fn read_range(
        &self,
        key: &BackupKey,
        _name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        self.with(Op::ReadRange, |st| {
            let archive = st
                .folders
                .get(key)
                .and_then(|f| f.archive.as_ref())
                .ok_or_else(|| self.not_found(key))?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            archive.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
                self.io(
                    "read",
                    PathBuf::from(key.to_string()),
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                )
            })
        })
    }

    async fn delete(&self, key: &BackupKey) -> Result<(), StoreError> {
        self.with(Op::Delete, |st| {
            if st.folders.get(key).is_none_or(|f| f.manifest.is_none()) {
                return Err(self.not_found(key));
            }
            st.folders.remove(key);
            Ok(())
        })
    }

    async fn check_lock(&self) -> Result<(), StoreError> {
        self.with(Op::CheckLock, |_| Ok(()))
    }

    async fn remove_incomplete(&self, key: &BackupKey) -> Result<(), StoreError> {
        self.with(Op::RemoveIncomplete, |st| match st.folders.get(key) {
            None => Err(self.not_found(key)),
            Some(f) if f.manifest.is_some() => Err(self.io(
                "remove incomplete",
                Self::object(key, MANIFEST_NAME),
                std::io::Error::other("it has a manifest: it is a committed backup"),
            )),
            Some(_) => {
                st.folders.remove(key);
                Ok(())
            }
        })
    }

    async fn abort_stale_uploads(&self, _host: &str) -> Result<Vec<String>, StoreError> {
        self.with(Op::AbortStaleUploads, |_| Ok(Vec::new()))
    }
}
