//! Uploads: multipart uploads with several parts in flight, read from the archive one
//! after the other (plain archives directly, off the page cache; encrypted ones as they
//! are encrypted), and the upload journal that notes each one in flight so that an
//! upload a crash or an outage left behind is aborted later.

use std::io::Read;
use std::path::PathBuf;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::{StreamExt, TryStreamExt, stream};

use super::client::is_404;
use super::{CONCURRENCY, S3Store};
use crate::store::{BackupKey, ProgressFn, StoreError};

/// Part size (S3 allows up to 10,000 parts; the size grows for archives over ~160 GiB).
const PART_SIZE: u64 = 16 << 20;

/// One multipart upload in flight, as noted in the upload journal.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JournalEntry {
    bucket: String,
    object: String,
    upload_id: String,
}

impl S3Store {
    /// The journal file of an upload.
    fn journal_file(&self, upload_id: &str) -> Option<PathBuf> {
        let dir = self.upload_journal.as_ref()?;
        let name: String = upload_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(120)
            .collect();
        Some(dir.join(format!("{}-{name}.upload", self.bucket)))
    }

    /// Notes an upload in flight (best effort: a failure only costs the later abort).
    fn journal_start(&self, object: &str, upload_id: &str) {
        let Some(path) = self.journal_file(upload_id) else {
            return;
        };
        let entry = JournalEntry {
            bucket: self.bucket.clone(),
            object: object.to_owned(),
            upload_id: upload_id.to_owned(),
        };
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, serde_json::to_vec(&entry).unwrap_or_default()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "cannot note the multipart upload: {e}");
        }
    }

    /// Forgets an upload that completed or was aborted.
    fn journal_end(&self, upload_id: &str) {
        if let Some(path) = self.journal_file(upload_id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Uploads of this bucket noted in the journal, with their files.
    fn journal_entries(&self) -> Vec<(PathBuf, JournalEntry)> {
        let Some(dir) = &self.upload_journal else {
            return Vec::new();
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let path = e.path();
                let entry: JournalEntry =
                    serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
                (entry.bucket == self.bucket).then_some((path, entry))
            })
            .collect()
    }

    pub(super) async fn abort(&self, object: &str, upload_id: &str) -> Result<(), StoreError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => {}
            // Already gone (completed, aborted, or expired by the server).
            Err(e) if e.code() == Some("NoSuchUpload") || is_404(&e) => {}
            Err(e) => return Err(self.err("abort upload", object, e)),
        }
        self.journal_end(upload_id);
        Ok(())
    }

    /// Multipart uploads under `prefix` that were never completed: (key, upload id).
    pub(super) async fn list_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let out = match self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
        {
            Ok(out) => out,
            // Some S3-compatible servers cannot list uploads; tierkeep aborts its own
            // failed uploads as they fail, so there is nothing more to do there.
            Err(SdkError::ServiceError(ctx)) if ctx.raw().status().as_u16() == 501 => {
                tracing::debug!(zone = %self.url, "the server cannot list multipart uploads");
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.err("list uploads", prefix, e)),
        };
        Ok(out
            .uploads()
            .iter()
            .filter_map(|u| Some((u.key()?.to_owned(), u.upload_id()?.to_owned())))
            .collect())
    }

    /// Every upload in flight under `prefix`: those the server lists, and those the
    /// journal noted (servers that cannot list uploads), without repeats.
    pub(super) async fn uploads_under(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut all = self.list_uploads(prefix).await?;
        for (_, e) in self.journal_entries() {
            if e.object.starts_with(prefix) && !all.iter().any(|(_, u)| *u == e.upload_id) {
                all.push((e.object, e.upload_id));
            }
        }
        Ok(all)
    }

    pub(super) async fn abort_uploads(&self, key: &BackupKey) -> Result<(), StoreError> {
        let prefix = self.object(key, "");
        for (object, upload) in self.uploads_under(&prefix).await? {
            self.abort(&object, &upload).await?;
        }
        Ok(())
    }

    /// Starts a multipart upload of `object`, noted in the journal.
    async fn start_upload(&self, object: &str) -> Result<String, StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| self.err("start upload", object, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        self.journal_start(object, &upload_id);
        Ok(upload_id)
    }

    /// Uploads part `n` (from 0) of an upload.
    async fn upload_part(
        &self,
        object: &str,
        upload_id: &str,
        n: u64,
        body: ByteStream,
        len: u64,
        progress: &ProgressFn,
    ) -> Result<CompletedPart, StoreError> {
        let number = i32::try_from(n + 1).unwrap_or(i32::MAX);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .body(body)
            .customize()
            // UNSIGNED-PAYLOAD, as for a part read from a file: the SDK would hash a
            // part held in memory before sending it, and the server hash it again. The
            // whole object's SHA-256 is checked end to end by reading it back.
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.err("upload part", object, e))?;
        progress(len);
        crate::faults::checkpoint("s3.part_uploaded")
            .await
            .map_err(|e| StoreError::Unsupported(e.to_string()))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_owned))
            .build())
    }

    /// Completes an upload with the parts `uploaded`, or aborts it when they failed.
    async fn finish_upload(
        &self,
        object: &str,
        upload_id: &str,
        uploaded: Result<Vec<CompletedPart>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut done = match uploaded {
            Ok(done) => done,
            Err(e) => {
                if let Err(abort) = self.abort(object, upload_id).await {
                    tracing::warn!(
                        zone = %self.url,
                        object,
                        "could not abort the failed multipart upload ({abort}); the next \
                         recovery aborts it"
                    );
                }
                return Err(e);
            }
        };
        done.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("complete upload", object, e))?;
        self.journal_end(upload_id);
        Ok(())
    }

    /// Uploads what `src` yields as `object`: one PUT when it is small, else a multipart
    /// upload whose parts are read from `src` one after the other while up to
    /// CONCURRENCY of them are in flight (no local copy, at most about CONCURRENCY + 2
    /// parts in memory).
    pub(super) async fn put_stream(
        &self,
        object: &str,
        src: Box<dyn Read + Send>,
        size_hint: u64,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        // Room for 10,000 parts of a stream somewhat larger than announced.
        let part_size = PART_SIZE.max((size_hint + size_hint / 4).div_ceil(9_000));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1);
        let producer = tokio::task::spawn_blocking(move || {
            let mut src = src;
            loop {
                let mut part = Vec::with_capacity(usize::try_from(part_size).unwrap_or(0));
                let read = (&mut src).take(part_size).read_to_end(&mut part);
                let last = !matches!(read, Ok(n) if n as u64 == part_size);
                if tx.blocking_send(read.map(|_| part)).is_err() || last {
                    return;
                }
            }
        });
        let read_err = |e: std::io::Error| StoreError::Io {
            zone: self.url.clone(),
            op: "read",
            path: PathBuf::from(object),
            cause: e,
        };
        // A reader that panicked ends the parts early: that is a failed read, never the
        // end of the archive.
        let stopped = |e: tokio::task::JoinError| {
            read_err(std::io::Error::other(format!(
                "the archive reader stopped: {e}"
            )))
        };
        let Some(first) = rx.recv().await else {
            producer.await.map_err(stopped)?;
            return Err(read_err(std::io::Error::other(
                "the archive reader ended without a part",
            )));
        };
        let first = first.map_err(read_err)?;
        if (first.len() as u64) < part_size {
            let len = first.len() as u64;
            producer.await.map_err(stopped)?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(object)
                .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                .body(ByteStream::from(first))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| self.err("put", object, e))?;
            progress(len);
            return Ok(());
        }
        let upload_id = self.start_upload(object).await?;
        let rest = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
        let uploaded: Result<Vec<CompletedPart>, StoreError> = stream::once(async { Ok(first) })
            .chain(rest)
            // A last read that found nothing more is not a part.
            .filter(|p| std::future::ready(!matches!(p, Ok(b) if b.is_empty())))
            .enumerate()
            .map(|(n, part)| {
                let progress = &progress;
                let upload_id = &upload_id;
                async move {
                    let part = part.map_err(read_err)?;
                    let len = part.len() as u64;
                    self.upload_part(
                        object,
                        upload_id,
                        n as u64,
                        ByteStream::from(part),
                        len,
                        progress,
                    )
                    .await
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await;
        // Dropping the receiver stops the producer at its next part.
        let produced = producer.await.map_err(stopped);
        let uploaded = uploaded.and_then(|parts| produced.map(|()| parts));
        self.finish_upload(object, &upload_id, uploaded).await
    }
}
