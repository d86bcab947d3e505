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

    /// Starts a GET of `len` bytes of `object` from `offset` (`len` > 0); a missing
    /// object is [`StoreError::NotFound`] of `key` when one is given.
    async fn ranged(
        &self,
        object: &str,
        key: Option<&BackupKey>,
        offset: u64,
        len: u64,
    ) -> Result<aws_sdk_s3::primitives::ByteStream, StoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
        {
            Ok(out) => Ok(out.body),
            Err(e) => match key {
                Some(key) if is_404(&e) => Err(self.not_found(key)),
                _ => Err(self.err("get", object, e)),
            },
        }
    }

    /// A download that broke off or came back short: worth retrying.
    fn broken(&self, object: &str, message: String) -> StoreError {
        StoreError::Remote {
            zone: self.url.clone(),
            op: "download",
            object: object.to_owned(),
            message,
            retry: Retry::Temporary,
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
        let body = self.ranged(object, Some(key), offset, len).await?;
        let bytes = body
            .collect()
            .await
            .map_err(|e| self.broken(object, e.to_string()))?
            .into_bytes()
            .to_vec();
        if bytes.len() as u64 != len {
            let got = bytes.len();
            return Err(self.broken(
                object,
                format!("asked for {len} bytes at offset {offset}, got {got}"),
            ));
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
        let mut body = self.ranged(object, None, offset, len).await?;
        let mut at = offset;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| self.broken(object, e.to_string()))?
        {
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
            let got = at - offset;
            return Err(self.broken(object, format!("range ended after {got} of {len} bytes")));
        }
        Ok(())
    }
}
