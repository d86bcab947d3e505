//! A zone in a local directory. Every write lands under a temporary name, is fsynced and
//! renamed, and the directory is fsynced, so a crash leaves either the old state or the
//! new one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{BackupKey, Listed, ListedState, MANIFEST_NAME, ProgressFn, StoreError, ZoneStore};
use crate::archive::{ArchiveError, Manifest};
use crate::domain::{BackupId, validate_host_id};

/// Name of the staging directory inside a local zone's root.
pub const STAGING_DIR: &str = ".staging";

/// A zone kept in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    url: String,
    root: PathBuf,
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl LocalStore {
    /// A store rooted at `root`, described by `url` in messages.
    pub fn new(url: String, root: PathBuf) -> Self {
        LocalStore { url, root }
    }

    /// The zone's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, key: &BackupKey) -> PathBuf {
        self.root.join(&key.host).join(key.id.as_str())
    }

    /// The path of an archive that is there, or `NotFound`.
    fn archive_file(&self, key: &BackupKey, name: &str) -> Result<PathBuf, StoreError> {
        let path = self.dir(key).join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(StoreError::NotFound {
                zone: self.url.clone(),
                key: key.clone(),
            })
        }
    }

    fn err(&self, op: &'static str, path: &Path, cause: io::Error) -> StoreError {
        StoreError::Io {
            zone: self.url.clone(),
            op,
            path: path.to_path_buf(),
            cause,
        }
    }

    fn list_sync(&self) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let hosts = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.err("list", &self.root, e)),
        };
        for host in hosts {
            let host = host.map_err(|e| self.err("list", &self.root, e))?;
            let Some(host_name) = host.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_host_id(&host_name).is_err() || !host.path().is_dir() {
                continue;
            }
            let backups =
                fs::read_dir(host.path()).map_err(|e| self.err("list", &host.path(), e))?;
            for b in backups {
                let b = b.map_err(|e| self.err("list", &host.path(), e))?;
                let Some(id) = b
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<BackupId>().ok())
                else {
                    continue;
                };
                let key = BackupKey {
                    host: host_name.clone(),
                    id,
                };
                let state = match self.read_manifest_sync(&key) {
                    Ok(m) => ListedState::Committed(Box::new(m)),
                    Err(StoreError::NotFound { .. }) => ListedState::Incomplete,
                    Err(e) => ListedState::Unreadable(e.to_string()),
                };
                out.push(Listed { key, state });
            }
        }
        out.sort_by(|a, b| a.key.id.cmp(&b.key.id));
        Ok(out)
    }

    fn read_manifest_sync(&self, key: &BackupKey) -> Result<Manifest, StoreError> {
        let path = self.dir(key).join(MANIFEST_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    zone: self.url.clone(),
                    key: key.clone(),
                });
            }
            Err(e) => return Err(self.err("read", &path, e)),
        };
        super::parse_manifest(&self.url, key, &bytes)
    }

    fn put_archive_sync(
        &self,
        key: &BackupKey,
        name: &str,
        src: &Path,
        progress: &ProgressFn,
    ) -> Result<(), StoreError> {
        let dir = self.dir(key);
        fs::create_dir_all(&dir).map_err(|e| self.err("create", &dir, e))?;
        let dest = dir.join(name);
        let staged = self.staging_dir_path();
        if src.parent() == Some(staged.as_path()) {
            // Written (and fsynced) in our own staging area: a rename moves it in.
            fs::rename(src, &dest).map_err(|e| self.err("rename", &dest, e))?;
        } else {
            let partial = dir.join(format!("{name}.partial"));
            if let Err(e) = copy_synced(src, &partial, progress) {
                // A full disk stays full with a partial copy on it.
                let _ = fs::remove_file(&partial);
                return Err(self.err("write", &partial, e));
            }
            fs::rename(&partial, &dest).map_err(|e| self.err("rename", &dest, e))?;
        }
        self.sync_folders(&dir)
    }

    /// Makes a new archive's name durable: its backup folder, host folder and the zone
    /// root (which may have just gained the host folder) are fsynced.
    fn sync_folders(&self, dir: &Path) -> Result<(), StoreError> {
        sync_dir(dir).map_err(|e| self.err("fsync", dir, e))?;
        if let Some(host_dir) = dir.parent() {
            sync_dir(host_dir).map_err(|e| self.err("fsync", host_dir, e))?;
        }
        sync_dir(&self.root).map_err(|e| self.err("fsync", &self.root, e))
    }

    fn put_manifest_sync(&self, m: &Manifest) -> Result<(), StoreError> {
        let key = BackupKey {
            host: m.host_id.clone(),
            id: m.id.clone(),
        };
        let dir = self.dir(&key);
        let archive = dir.join(m.archive_name());
        if !archive.is_file() {
            return Err(self.err(
                "commit",
                &archive,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "archive missing: refusing to commit",
                ),
            ));
        }
        let partial = dir.join(format!("{MANIFEST_NAME}.partial"));
        let dest = dir.join(MANIFEST_NAME);
        {
            let mut f = File::create(&partial).map_err(|e| self.err("create", &partial, e))?;
            f.write_all(&m.to_json())
                .map_err(|e| self.err("write", &partial, e))?;
            f.sync_all().map_err(|e| self.err("fsync", &partial, e))?;
        }
        fs::rename(&partial, &dest).map_err(|e| self.err("rename", &dest, e))?;
        sync_dir(&dir).map_err(|e| self.err("fsync", &dir, e))?;
        Ok(())
    }

    fn delete_sync(&self, key: &BackupKey, require_manifest: bool) -> Result<(), StoreError> {
        let dir = self.dir(key);
        if !dir.exists() {
            return Err(StoreError::NotFound {
                zone: self.url.clone(),
                key: key.clone(),
            });
        }
        let manifest = dir.join(MANIFEST_NAME);
        if require_manifest && !manifest.exists() {
            return Err(StoreError::NotFound {
                zone: self.url.clone(),
                key: key.clone(),
            });
        }
        if manifest.exists() {
            fs::remove_file(&manifest).map_err(|e| self.err("remove", &manifest, e))?;
            sync_dir(&dir).map_err(|e| self.err("fsync", &dir, e))?;
        }
        fs::remove_dir_all(&dir).map_err(|e| self.err("remove", &dir, e))?;
        if let Some(host_dir) = dir.parent() {
            sync_dir(host_dir).map_err(|e| self.err("fsync", host_dir, e))?;
        }
        Ok(())
    }

    fn put_stream_sync(
        &self,
        key: &BackupKey,
        name: &str,
        mut src: Box<dyn Read + Send>,
        progress: &ProgressFn,
    ) -> Result<(), StoreError> {
        let dir = self.dir(key);
        fs::create_dir_all(&dir).map_err(|e| self.err("create", &dir, e))?;
        let dest = dir.join(name);
        let partial = dir.join(format!("{name}.partial"));
        let written = (|| {
            // Directly, off the page cache, like a plain archive's copy.
            let mut out = crate::archive::direct::Writer::create(&partial)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                out.write_all(&buf[..n])?;
                progress(n as u64);
            }
            out.finish()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&partial);
            return Err(self.err("write", &partial, e));
        }
        fs::rename(&partial, &dest).map_err(|e| self.err("rename", &dest, e))?;
        self.sync_folders(&dir)
    }

    fn staging_dir_path(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }
}

/// Copies `src` to a new file `dest`, fsyncing it; both directly, off the page cache,
/// where the file system allows (an archive copied into a zone is not read again soon).
fn copy_synced(src: &Path, dest: &Path, progress: &ProgressFn) -> io::Result<()> {
    crate::archive::direct::copy_file(src, dest, &**progress)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            zone: String::new(),
            op: "run a store task",
            path: PathBuf::new(),
            cause: io::Error::other(e.to_string()),
        })
    })
}

#[async_trait]
impl ZoneStore for LocalStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn staging_dir(&self) -> Option<PathBuf> {
        Some(self.staging_dir_path())
    }

    async fn check(&self) -> Result<(), StoreError> {
        let this = self.clone();
        blocking(move || {
            let staging = this.staging_dir_path();
            fs::create_dir_all(&staging).map_err(|e| this.err("create", &staging, e))?;
            let probe = staging.join(format!(".probe-{}", std::process::id()));
            File::create(&probe)
                .and_then(|mut f| f.write_all(b"ok"))
                .map_err(|e| this.err("write to", &this.root, e))?;
            fs::remove_file(&probe).map_err(|e| this.err("remove", &probe, e))?;
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let this = self.clone();
        blocking(move || this.list_sync()).await
    }

    async fn read_manifest(&self, key: &BackupKey) -> Result<Manifest, StoreError> {
        let this = self.clone();
        let key = key.clone();
        blocking(move || this.read_manifest_sync(&key)).await
    }

    async fn put_archive(
        &self,
        key: &BackupKey,
        name: &str,
        src: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.clone();
        let name = name.to_owned();
        let src = src.to_path_buf();
        blocking(move || this.put_archive_sync(&key, &name, &src, &progress)).await
    }

    async fn put_archive_stream(
        &self,
        key: &BackupKey,
        name: &str,
        src: Box<dyn Read + Send>,
        _size_hint: u64,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.clone();
        let name = name.to_owned();
        blocking(move || this.put_stream_sync(&key, &name, src, &progress)).await
    }

    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let this = self.clone();
        let m = manifest.clone();
        blocking(move || this.put_manifest_sync(&m)).await
    }

    fn local_archive(&self, key: &BackupKey, name: &str) -> Option<PathBuf> {
        Some(self.dir(key).join(name))
    }

    async fn fetch_archive(
        &self,
        key: &BackupKey,
        name: &str,
        dest: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let (this, key, name) = (self.clone(), key.clone(), name.to_owned());
        let dest = dest.to_path_buf();
        blocking(move || {
            let src = this.archive_file(&key, &name)?;
            copy_synced(&src, &dest, &progress).map_err(|e| this.err("copy", &src, e))
        })
        .await
    }

    async fn digest_archive(
        &self,
        key: &BackupKey,
        name: &str,
        progress: ProgressFn,
    ) -> Result<(u64, String), StoreError> {
        let (this, key, name) = (self.clone(), key.clone(), name.to_owned());
        blocking(move || {
            let src = this.archive_file(&key, &name)?;
            crate::archive::hash_file(&src, &mut |n| progress(n)).map_err(|e| match e {
                ArchiveError::Io { action, cause, .. } => this.err(action, &src, cause),
                other => this.err("read", &src, io::Error::other(other.to_string())),
            })
        })
        .await
    }

    async fn read_range(
        &self,
        key: &BackupKey,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let this = self.clone();
        let src = self.dir(key).join(name);
        let key = key.clone();
        blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = match std::fs::File::open(&src) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound {
                        zone: this.url.clone(),
                        key,
                    });
                }
                Err(e) => return Err(this.err("open", &src, e)),
            };
            let len = usize::try_from(len).map_err(|e| StoreError::Unsupported(e.to_string()))?;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| this.err("read", &src, e))?;
            Ok(buf)
        })
        .await
    }

    async fn delete(&self, key: &BackupKey) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.clone();
        blocking(move || this.delete_sync(&key, true)).await
    }

    async fn remove_incomplete(&self, key: &BackupKey) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.clone();
        blocking(move || {
            if this.dir(&key).join(MANIFEST_NAME).exists() {
                return Err(this.err(
                    "remove incomplete",
                    &this.dir(&key),
                    io::Error::other("it has a manifest: it is a committed backup"),
                ));
            }
            this.delete_sync(&key, false)
        })
        .await
    }
}
