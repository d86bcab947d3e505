//! A zone in an S3 bucket (MinIO, Garage, AWS S3 or any S3-compatible server).
//!
//! Objects: `[<prefix>/]<host>/<backup-id>/archive.tar.zst` and `.../manifest.json`; the
//! manifest is uploaded last and is the commit marker. Archives of 16 MiB and more go up
//! as multipart uploads with several parts in flight, read straight from the file (a
//! backup never sits whole in memory); downloads of large archives use parallel ranged
//! GETs written at their offsets. The SDK retries temporary faults a few times with a
//! short backoff (bounded, so that a server that is down costs seconds, not minutes);
//! [`ZoneStore::check`] is a single quick probe. Errors say which bucket and what to do.

mod client;
mod download;
mod lock;
#[cfg(test)]
mod tests;
mod upload;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use futures_util::{StreamExt, TryStreamExt, stream};

use self::client::{describe, is_404, is_denied, status_of};
use self::lock::Version;
use super::{
    ARCHIVE_NAME, BackupKey, ENCRYPTED_ARCHIVE_NAME, Listed, ListedState, MANIFEST_NAME,
    ProgressFn, Retry, StoreError, ZoneStore,
};
use crate::archive::Manifest;
use crate::domain::{BackupId, validate_host_id};

/// Parts or ranges in flight at once.
const CONCURRENCY: usize = 4;
/// The ranged GETs of [`ZoneStore::digest_archive`], kept in memory until hashed.
const DIGEST_RANGE: u64 = 8 << 20;

/// SHA-256 of a stream of chunks, hashed on a blocking thread so that an async reader
/// (ranged GETs) keeps its transfers going while the previous chunk is hashed.
struct ChunkHasher {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    done: tokio::task::JoinHandle<(u64, String)>,
}

impl ChunkHasher {
    /// A hasher holding at most `queue` chunks not yet hashed.
    fn new(queue: usize) -> ChunkHasher {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(queue.max(1));
        let done = tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            let mut bytes = 0u64;
            while let Some(chunk) = rx.blocking_recv() {
                hash.update(&chunk);
                bytes += chunk.len() as u64;
            }
            (bytes, hex::encode(hash.finalize()))
        });
        ChunkHasher { tx, done }
    }

    /// Hashes `chunk` after those given before (waits while the queue is full).
    async fn push(&self, chunk: Vec<u8>) -> Result<(), String> {
        self.tx
            .send(chunk)
            .await
            .map_err(|_| "the hashing thread stopped".to_owned())
    }

    /// (bytes, hex SHA-256) of everything pushed.
    async fn finish(self) -> Result<(u64, String), String> {
        drop(self.tx);
        self.done
            .await
            .map_err(|e| format!("the hashing thread failed: {e}"))
    }
}

/// How to reach the S3 server.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL (`http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when not set).
    pub region: Option<String>,
    /// Path-style addressing (MinIO, Garage).
    pub force_path_style: bool,
    /// Static credentials; `None` uses the standard AWS chain (environment, shared
    /// config/credentials files and `AWS_PROFILE`, web identity, ECS, EC2 instance
    /// metadata).
    pub credentials: Option<(String, String)>,
    /// Object Lock retention for new manual backups, where the bucket supports it.
    pub lock_retention: Option<Duration>,
    /// A local directory where each multipart upload in flight is noted (bucket, object,
    /// upload id) until it completes or is aborted, so that an upload a crash or an
    /// outage left behind is aborted later even on servers that cannot list uploads.
    pub upload_journal: Option<PathBuf>,
}

/// A zone in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    url: String,
    bucket: String,
    prefix: String,
    client: Client,
    /// The same client without retries and with a short deadline, for
    /// [`ZoneStore::check`] (the probe of a zone that may be down).
    probe: Client,
    lock_retention: Option<Duration>,
    upload_journal: Option<PathBuf>,
}

impl S3Store {
    fn object(&self, key: &BackupKey, name: &str) -> String {
        format!("{}{}/{}/{name}", self.prefix, key.host, key.id)
    }

    fn digest_failed(&self, message: String) -> StoreError {
        StoreError::Io {
            zone: self.url.clone(),
            op: "hash",
            path: PathBuf::new(),
            cause: std::io::Error::other(message),
        }
    }

    fn not_found(&self, key: &BackupKey) -> StoreError {
        StoreError::NotFound {
            zone: self.url.clone(),
            key: key.clone(),
        }
    }

    async fn get_manifest(&self, key: &BackupKey) -> Result<Option<Manifest>, StoreError> {
        let object = self.object(key, MANIFEST_NAME);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.code() == Some("NoSuchKey") || is_404(&e) => return Ok(None),
            Err(e) => return Err(self.err("get", &object, e)),
        };
        let bytes = out.body.collect().await.map_err(|e| StoreError::Remote {
            zone: self.url.clone(),
            op: "read",
            object: object.clone(),
            message: e.to_string(),
            retry: Retry::Temporary,
        })?;
        super::parse_manifest(&self.url, key, &bytes.into_bytes()).map(Some)
    }

    /// Every object key under the zone's prefix.
    async fn list_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", &self.prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    keys.push(k.to_owned());
                }
            }
        }
        Ok(keys)
    }

    fn parse_folder(&self, object: &str) -> Option<(BackupKey, String)> {
        let rest = object.strip_prefix(&self.prefix)?;
        let mut parts = rest.splitn(3, '/');
        let host = parts.next()?;
        let id = parts.next()?.parse::<BackupId>().ok()?;
        let name = parts.next()?.to_owned();
        validate_host_id(host).ok()?;
        Some((
            BackupKey {
                host: host.to_owned(),
                id,
            },
            name,
        ))
    }

    async fn delete_object(&self, object: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchKey") || is_404(&e) => Ok(()),
            Err(e) => Err(self.err("delete", object, e)),
        }
    }
}

#[async_trait]
impl ZoneStore for S3Store {
    fn url(&self) -> &str {
        &self.url
    }

    fn staging_dir(&self) -> Option<PathBuf> {
        None
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.probe
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                if is_404(&e) {
                    StoreError::Remote {
                        zone: self.url.clone(),
                        op: "open bucket",
                        object: self.bucket.clone(),
                        message: format!(
                            "bucket `{}` does not exist: create it (e.g. `mc mb`, `garage bucket \
                             create`) or fix the zone URL",
                            self.bucket
                        ),
                        retry: Retry::Permanent,
                    }
                } else {
                    self.err("open bucket", &self.bucket, e)
                }
            })
    }

    async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let mut folders: BTreeMap<BackupKey, Vec<String>> = BTreeMap::new();
        for object in self.list_keys().await? {
            if let Some((key, name)) = self.parse_folder(&object) {
                folders.entry(key).or_default().push(name);
            }
        }
        for (object, _) in self.list_uploads(&self.prefix).await? {
            if let Some((key, name)) = self.parse_folder(&object) {
                folders
                    .entry(key)
                    .or_default()
                    .push(format!("{name}.upload"));
            }
        }
        let mut out = Vec::new();
        for (key, names) in folders {
            let state = if names.iter().any(|n| n == MANIFEST_NAME) {
                match self.get_manifest(&key).await {
                    Ok(Some(m)) => ListedState::Committed(Box::new(m)),
                    Ok(None) => ListedState::Incomplete,
                    Err(e) => ListedState::Unreadable(e.to_string()),
                }
            } else {
                ListedState::Incomplete
            };
            out.push(Listed { key, state });
        }
        Ok(out)
    }

    async fn read_manifest(&self, key: &BackupKey) -> Result<Manifest, StoreError> {
        self.get_manifest(key)
            .await?
            .ok_or_else(|| self.not_found(key))
    }

    async fn put_archive(
        &self,
        key: &BackupKey,
        name: &str,
        src: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let object = self.object(key, name);
        let io_err = |op, cause| StoreError::Io {
            zone: self.url.clone(),
            op,
            path: src.to_path_buf(),
            cause,
        };
        let size = std::fs::metadata(src).map_err(|e| io_err("stat", e))?.len();
        // Read directly, off the page cache (an archive on its way to a bucket is not
        // read again soon), and uploaded in parts while the next ones are read.
        let reader = crate::archive::direct::Reader::open(src).map_err(|e| io_err("open", e))?;
        self.put_stream(&object, Box::new(reader), size, progress)
            .await
    }

    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = BackupKey {
            host: manifest.host_id.clone(),
            id: manifest.id.clone(),
        };
        let archive = self.object(&key, manifest.archive_name());
        let size = self.head_size(&archive, &key).await?;
        if size != manifest.archive_bytes {
            return Err(StoreError::Remote {
                zone: self.url.clone(),
                op: "commit",
                object: archive,
                message: format!(
                    "the stored archive has {size} bytes, the manifest says {}: refusing to commit",
                    manifest.archive_bytes
                ),
                retry: Retry::Permanent,
            });
        }
        let object = self.object(&key, MANIFEST_NAME);
        let lock = self
            .lock_retention
            .filter(|_| manifest.kind == crate::domain::BackupKind::Manual);
        if let Some(ret) = lock {
            self.retain(&archive, ret).await?;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .content_type("application/json")
            .body(ByteStream::from(manifest.to_json()))
            .send()
            .await
            .map_err(|e| self.err("put", &object, e))?;
        if let Some(ret) = lock {
            self.retain(&object, ret).await?;
        }
        Ok(())
    }

    fn local_archive(&self, _key: &BackupKey, _name: &str) -> Option<PathBuf> {
        None
    }

    async fn put_archive_stream(
        &self,
        key: &BackupKey,
        name: &str,
        src: Box<dyn std::io::Read + Send>,
        size_hint: u64,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let object = self.object(key, name);
        self.put_stream(&object, src, size_hint, progress).await
    }

    async fn read_range(
        &self,
        key: &BackupKey,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let object = self.object(key, name);
        self.get_range(&object, key, offset, len).await
    }

    async fn digest_archive(
        &self,
        key: &BackupKey,
        name: &str,
        progress: ProgressFn,
    ) -> Result<(u64, String), StoreError> {
        let object = self.object(key, name);
        let size = self.head_size(&object, key).await?;
        let ranges: Vec<(u64, u64)> = (0..size.div_ceil(DIGEST_RANGE))
            .map(|i| (i * DIGEST_RANGE, DIGEST_RANGE.min(size - i * DIGEST_RANGE)))
            .collect();
        let hasher = ChunkHasher::new(2);
        // At most CONCURRENCY ranges in flight, handed to the hasher in order (so at
        // most about (CONCURRENCY + 3) × DIGEST_RANGE in memory); the first failure
        // drops (cancels) the others.
        let mut chunks = stream::iter(ranges)
            .map(|(offset, len)| self.get_range(&object, key, offset, len))
            .buffered(CONCURRENCY);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let n = chunk.len() as u64;
            hasher
                .push(chunk)
                .await
                .map_err(|e| self.digest_failed(e))?;
            progress(n);
        }
        hasher.finish().await.map_err(|e| self.digest_failed(e))
    }

    async fn fetch_archive(
        &self,
        key: &BackupKey,
        name: &str,
        dest: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let object = self.object(key, name);
        let size = self.head_size(&object, key).await?;
        let io = |op, e| StoreError::Io {
            zone: self.url.clone(),
            op,
            path: dest.to_path_buf(),
            cause: e,
        };
        let file = File::create(dest).map_err(|e| io("create", e))?;
        file.set_len(size).map_err(|e| io("allocate", e))?;
        let file = Arc::new(file);
        if size > 0 {
            let range = (size.div_ceil(CONCURRENCY as u64)).clamp(8 << 20, 64 << 20);
            let ranges: Vec<(u64, u64)> = (0..size.div_ceil(range))
                .map(|i| (i * range, range.min(size - i * range)))
                .collect();
            // At most CONCURRENCY ranges in flight; the first failure drops (cancels)
            // the others.
            stream::iter(ranges)
                .map(|(offset, len)| {
                    self.get_range_into(&object, file.clone(), dest, offset, len, &progress)
                })
                .buffer_unordered(CONCURRENCY)
                .try_for_each(|()| std::future::ready(Ok(())))
                .await?;
        }
        file.sync_all().map_err(|e| io("fsync", e))?;
        Ok(())
    }

    async fn delete(&self, key: &BackupKey) -> Result<(), StoreError> {
        if self.get_manifest(key).await?.is_none() {
            return Err(self.not_found(key));
        }
        let folder = self.object(key, "");
        // Every version on a versioned bucket (deleting only the current ones would add
        // delete markers and leave the data behind); the two current objects elsewhere.
        let mut versions = match self.list_versions(&folder).await? {
            Some(v) => v,
            None => [MANIFEST_NAME, ARCHIVE_NAME, ENCRYPTED_ARCHIVE_NAME]
                .into_iter()
                .map(|name| Version {
                    object: self.object(key, name),
                    version_id: None,
                    delete_marker: false,
                })
                .collect(),
        };
        // Nothing is deleted while any version is still protected.
        let mut locks = Vec::new();
        for v in versions.iter().filter(|v| !v.delete_marker) {
            if let Some(lock) = self.lock_of(&v.object, v.version_id.as_deref()).await? {
                locks.push((v.object.clone(), lock));
            }
        }
        if !locks.is_empty() {
            return Err(self.locked(key, &locks));
        }
        // The manifest's versions first: a crash midway leaves an incomplete upload.
        versions.sort_by_key(|v| !v.object.ends_with(MANIFEST_NAME));
        let mut removed = 0usize;
        for v in &versions {
            match self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&v.object)
                .set_version_id(v.version_id.clone())
                .send()
                .await
            {
                Ok(_) => removed += 1,
                Err(e) if e.code() == Some("NoSuchKey") || is_404(&e) => {}
                // A version the server will not delete is protected by Object Lock (the
                // check above saw no lock: a server that does not report it, or a lock
                // set since): the same refusal, never "deleted".
                Err(e) if v.version_id.is_some() && is_denied(&e) => {
                    let said = describe(&e, status_of(&e), e.code());
                    return Err(StoreError::Locked {
                        zone: self.url.clone(),
                        key: key.clone(),
                        until: "(the server refused to delete a version)".into(),
                        detail: format!(
                            "the server would not delete version {} of {} ({said}): a \
                             retention or legal hold protects it, or the key may not delete \
                             object versions (s3:DeleteObjectVersion); {}",
                            v.version_id.as_deref().unwrap_or("?"),
                            v.object,
                            if removed == 0 {
                                "nothing was changed".to_owned()
                            } else {
                                format!(
                                    "{removed} other object versions (the manifest's first) \
                                     had been removed before; the catalog still lists the backup"
                                )
                            }
                        ),
                    });
                }
                Err(e) => return Err(self.err("delete", &v.object, e)),
            }
        }
        self.abort_uploads(key).await
    }

    async fn check_lock(&self) -> Result<(), StoreError> {
        if self.lock_retention.is_none() {
            return Ok(());
        }
        let no_lock = |reason: String| StoreError::NoObjectLock {
            zone: self.url.clone(),
            bucket: self.bucket.clone(),
            reason,
        };
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled());
                if enabled == Some(&aws_sdk_s3::types::ObjectLockEnabled::Enabled) {
                    Ok(())
                } else {
                    Err(no_lock(
                        "GetObjectLockConfiguration: Object Lock is not enabled".into(),
                    ))
                }
            }
            // The server answered, and not with a missing bucket, refused credentials or
            // a passing fault: it has no Object Lock for this bucket (the configuration
            // does not exist, or the server does not implement it).
            Err(e)
                if matches!(e, SdkError::ServiceError(_))
                    && e.code() != Some("NoSuchBucket")
                    && !is_denied(&e)
                    && (status_of(&e) == Some(501) || status_of(&e).is_none_or(|s| s < 500)) =>
            {
                Err(no_lock(format!(
                    "GetObjectLockConfiguration: {}",
                    describe(&e, status_of(&e), e.code())
                )))
            }
            Err(e) => Err(self.err("check object lock", &self.bucket, e)),
        }
    }

    async fn abort_stale_uploads(&self, host: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{}{host}/", self.prefix);
        let mut aborted = Vec::new();
        for (object, upload) in self.uploads_under(&prefix).await? {
            self.abort(&object, &upload).await?;
            tracing::info!(zone = %self.url, %object, "aborted a stale multipart upload");
            aborted.push(object);
        }
        Ok(aborted)
    }

    async fn remove_incomplete(&self, key: &BackupKey) -> Result<(), StoreError> {
        if self.get_manifest(key).await?.is_some() {
            return Err(StoreError::Unsupported(format!(
                "zone {}: {key} has a manifest: it is a committed backup, not an incomplete one",
                self.url
            )));
        }
        for name in [ARCHIVE_NAME, ENCRYPTED_ARCHIVE_NAME] {
            self.delete_object(&self.object(key, name)).await?;
        }
        self.abort_uploads(key).await
    }
}
