//! Downloads: the size of an object and the ranged GETs of a large archive, each written
//! at its offset in the destination file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::S3Store;
use super::client::is_404;
use crate::store::{BackupKey, ProgressFn, Retry, StoreError};

impl S3Store {
    pub(super) async fn head_size(&self, object: &str, key: &BackupKey) -> Result<u64, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
        {
            Ok(h) => Ok(h.content_length().unwrap_or(0).max(0) as u64),
            Err(e) if is_404(&e) => Err(self.not_found(key)),
            Err(e) => Err(self.err("head", object, e)),
        }
    }

    /// One ranged GET into memory.
    pub(super) async fn get_range(
        &self,
        object: &str,
        key: &BackupKey,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_404(&e) => return Err(self.not_found(key)),
            Err(e) => return Err(self.err("get", object, e)),
        };
        let body = out.body.collect().await.map_err(|e| StoreError::Remote {
            zone: self.url.clone(),
            op: "download",
            object: object.to_owned(),
            message: e.to_string(),
            retry: Retry::Temporary,
        })?;
        let bytes = body.into_bytes().to_vec();
        if bytes.len() as u64 != len {
            return Err(StoreError::Remote {
                zone: self.url.clone(),
                op: "download",
                object: object.to_owned(),
                message: format!(
                    "asked for {len} bytes at offset {offset}, got {}",
                    bytes.len()
                ),
                retry: Retry::Permanent,
            });
        }
        Ok(bytes)
    }

    pub(super) async fn get_range_into(
        &self,
        object: &str,
        file: Arc<File>,
        dest: &Path,
        offset: u64,
        len: u64,
        progress: &ProgressFn,
    ) -> Result<(), StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
            .map_err(|e| self.err("get", object, e))?;
        let mut body = out.body;
        let mut at = offset;
        while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::Remote {
            zone: self.url.clone(),
            op: "download",
            object: object.to_owned(),
            message: e.to_string(),
            retry: Retry::Temporary,
        })? {
            let f = file.clone();
            let pos = at;
            let n = chunk.len() as u64;
            tokio::task::spawn_blocking(move || f.write_all_at(&chunk, pos))
                .await
                .map_err(|e| StoreError::Unsupported(e.to_string()))?
                .map_err(|e| StoreError::Io {
                    zone: self.url.clone(),
                    op: "write",
                    path: dest.to_path_buf(),
                    cause: e,
                })?;
            at += n;
            progress(n);
        }
        crate::faults::checkpoint("s3.range_downloaded")
            .await
            .map_err(|e| StoreError::Unsupported(e.to_string()))?;
        if at != offset + len {
            return Err(StoreError::Remote {
                zone: self.url.clone(),
                op: "download",
                object: object.to_owned(),
                message: format!("range ended after {} of {len} bytes", at - offset),
                retry: Retry::Temporary,
            });
        }
        Ok(())
    }
}
