//! A zone in an S3 bucket (MinIO, Garage, AWS S3 or any S3-compatible server).
//!
//! Objects: `[<prefix>/]<host>/<backup-id>/archive.tar.zst` and `.../manifest.json`; the
//! manifest is uploaded last and is the commit marker. Archives of 16 MiB and more go up
//! as multipart uploads with several parts in flight, read straight from the file (a
//! backup never sits whole in memory); downloads of large archives use parallel ranged
//! GETs written at their offsets. The SDK retries temporary faults a few times with a
//! short backoff (bounded, so that a server that is down costs seconds, not minutes);
//! [`ZoneStore::check`] is a single quick probe. Errors say which bucket and what to do.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::{StreamExt, TryStreamExt, stream};

use super::{
    ARCHIVE_NAME, BackupKey, Listed, ListedState, MANIFEST_NAME, ProgressFn, Retry, StoreError,
    ZoneStore, ZoneUrl,
};
use crate::archive::Manifest;
use crate::domain::{BackupId, validate_host_id};

/// Archives at least this large are uploaded in parts.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Part size (S3 allows up to 10,000 parts; the size grows for archives over ~160 GiB).
const PART_SIZE: u64 = 16 << 20;
/// Parts or ranges in flight at once.
const CONCURRENCY: usize = 4;
/// Time to open a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a request may wait for the next bytes of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a probe ([`ZoneStore::check`]), connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// One multipart upload in flight, as noted in the upload journal.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JournalEntry {
    bucket: String,
    object: String,
    upload_id: String,
}

/// The standard AWS credential chain, built on first use (building it is async, opening a
/// store is not). The SDK caches the credentials it returns and refreshes them before
/// they expire.
#[derive(Debug)]
struct StandardChain {
    region: Region,
    http: SharedHttpClient,
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
}

impl ProvideCredentials for StandardChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    DefaultCredentialsChain::builder()
                        .region(self.region.clone())
                        .configure(ProviderConfig::default().with_http_client(self.http.clone()))
                        .build()
                        .await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

/// The credential provider's error behind an SDK error, if that is what failed.
fn credentials_error<E: std::error::Error + 'static>(e: &E) -> Option<&CredentialsError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(cred) = c.downcast_ref::<CredentialsError>() {
            return Some(cred);
        }
        cause = c.source();
    }
    None
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
    /// Opens the S3 zone `url` with `settings`.
    pub fn new(url: &ZoneUrl, settings: &S3Settings) -> Result<S3Store, StoreError> {
        let Some(bucket) = url.bucket().filter(|b| !b.is_empty()) else {
            return Err(StoreError::Unsupported(format!(
                "zone URL {url}: not an S3 bucket (expected s3://bucket/prefix)"
            )));
        };
        let bucket = bucket.to_owned();
        let prefix = url.key_prefix();
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        // rustls with ring: http:// and https:// endpoints without building aws-lc.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let region = Region::new(region);
        let credentials = match &settings.credentials {
            Some((key_id, secret)) => SharedCredentialsProvider::new(Credentials::new(
                key_id.clone(),
                secret.clone(),
                None,
                None,
                "tierkeep-config",
            )),
            None => SharedCredentialsProvider::new(StandardChain {
                region: region.clone(),
                http: http.clone(),
                chain: tokio::sync::OnceCell::new(),
            }),
        };
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(region)
            .force_path_style(settings.force_path_style)
            .credentials_provider(credentials)
            // MinIO and Garage do not all accept the SDK's default CRC checksums; the
            // archive's SHA-256 is checked end to end by tierkeep itself.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            // Bounded: a server that is down costs about a second of retries, and one
            // that stalls a transfer is given up after READ_TIMEOUT without a byte.
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            );
        if let Some(ep) = &settings.endpoint {
            conf = conf.endpoint_url(ep);
        }
        let conf = conf.build();
        // The probe of a zone that did not answer: one attempt, a few seconds at most.
        let probe = conf
            .to_builder()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_timeout(PROBE_TIMEOUT)
                    .build(),
            )
            .build();
        Ok(S3Store {
            url: url.to_string(),
            bucket,
            prefix,
            client: Client::from_conf(conf),
            probe: Client::from_conf(probe),
            lock_retention: settings.lock_retention,
            upload_journal: settings.upload_journal.clone(),
        })
    }

    fn object(&self, key: &BackupKey, name: &str) -> String {
        format!("{}{}/{}/{name}", self.prefix, key.host, key.id)
    }

    fn err<E>(&self, op: &'static str, object: &str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = match &e {
            SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
            _ => None,
        };
        let code = e.code().map(str::to_owned).or_else(|| match status {
            Some(403) => Some("AccessDenied".to_owned()),
            _ => None,
        });
        let (retry, advice) = match (&e, code.as_deref()) {
            _ if let Some(cred) = credentials_error(&e) => (
                match cred {
                    CredentialsError::CredentialsNotLoaded(_)
                    | CredentialsError::InvalidConfiguration(_) => Retry::Permanent,
                    _ => Retry::Temporary,
                },
                "no usable S3 credentials: set s3.access_key_id and s3.secret_access_key, \
                 or provide them through the standard AWS chain (AWS_ACCESS_KEY_ID / \
                 AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/credentials, web identity, \
                 ECS or EC2 instance role)"
                    .to_owned(),
            ),
            (_, Some("NoSuchBucket")) => (
                Retry::Permanent,
                format!(
                    "bucket `{}` does not exist: create it (e.g. `mc mb`, `garage bucket create`) \
                     or fix the zone URL",
                    self.bucket
                ),
            ),
            (_, c)
                if status == Some(403)
                    || matches!(
                        c,
                        Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
                    ) =>
            {
                (
                    Retry::Permanent,
                    format!(
                        "access to bucket `{}` denied: check s3.access_key_id / \
                     s3.secret_access_key (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and \
                     the key's permissions on the bucket",
                        self.bucket
                    ),
                )
            }
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => (
                Retry::Temporary,
                "the S3 server did not answer: check s3.endpoint and that the server is up"
                    .to_owned(),
            ),
            (SdkError::ResponseError(_), _) => (Retry::Temporary, String::new()),
            (SdkError::ServiceError(ctx), _) if ctx.raw().status().is_server_error() => {
                (Retry::Temporary, String::new())
            }
            _ => (Retry::Permanent, String::new()),
        };
        crate::metrics::inc(
            "tierkeep_s3_errors_total",
            &[
                ("operation", op),
                (
                    "class",
                    match retry {
                        Retry::Temporary => "temporary",
                        Retry::Permanent => "permanent",
                    },
                ),
            ],
        );
        StoreError::Remote {
            zone: self.url.clone(),
            op,
            object: object.to_owned(),
            message: format!(
                "{}{}",
                describe(&e, status, code.as_deref()),
                if advice.is_empty() {
                    String::new()
                } else {
                    format!(" — {advice}")
                }
            ),
            retry,
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

    async fn abort(&self, object: &str, upload_id: &str) -> Result<(), StoreError> {
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
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
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

    /// Every upload in flight under `prefix`: those the server lists, and those the
    /// journal noted (servers that cannot list uploads), without repeats.
    async fn uploads_under(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut all = self.list_uploads(prefix).await?;
        for (_, e) in self.journal_entries() {
            if e.object.starts_with(prefix) && !all.iter().any(|(_, u)| *u == e.upload_id) {
                all.push((e.object, e.upload_id));
            }
        }
        Ok(all)
    }

    async fn abort_uploads(&self, key: &BackupKey) -> Result<(), StoreError> {
        let prefix = self.object(key, "");
        for (object, upload) in self.uploads_under(&prefix).await? {
            self.abort(&object, &upload).await?;
        }
        Ok(())
    }

    async fn put_multipart(
        &self,
        object: &str,
        src: &Path,
        size: u64,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
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
        let part_size = PART_SIZE.max(size.div_ceil(9_000));
        let parts = size.div_ceil(part_size);
        // At most CONCURRENCY parts in flight; the first failure drops (cancels) the
        // others and aborts the upload.
        let uploaded: Result<Vec<CompletedPart>, StoreError> = stream::iter(0..parts)
            .map(|n| {
                let progress = &progress;
                let upload_id = &upload_id;
                async move {
                    let offset = n * part_size;
                    let len = part_size.min(size - offset);
                    let body = ByteStream::read_from()
                        .path(src)
                        .offset(offset)
                        .length(Length::Exact(len))
                        .build()
                        .await
                        .map_err(|e| StoreError::Io {
                            zone: self.url.clone(),
                            op: "read",
                            path: src.to_path_buf(),
                            cause: std::io::Error::other(e.to_string()),
                        })?;
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(object)
                        .upload_id(upload_id)
                        .part_number(i32::try_from(n + 1).unwrap_or(i32::MAX))
                        .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| self.err("upload part", object, e))?;
                    progress(len);
                    crate::faults::checkpoint("s3.part_uploaded")
                        .await
                        .map_err(|e| StoreError::Unsupported(e.to_string()))?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder()
                            .part_number(i32::try_from(n + 1).unwrap_or(i32::MAX))
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .build(),
                    )
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await;
        let mut done = match uploaded {
            Ok(done) => done,
            Err(e) => {
                if let Err(abort) = self.abort(object, &upload_id).await {
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
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("complete upload", object, e))?;
        self.journal_end(&upload_id);
        Ok(())
    }

    async fn head_size(&self, object: &str, key: &BackupKey) -> Result<u64, StoreError> {
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

    async fn get_range_into(
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

/// One stored version of an object (the current object on a bucket without versions).
#[derive(Debug)]
struct Version {
    object: String,
    /// `None` for the only version of an object on an unversioned bucket.
    version_id: Option<String>,
    delete_marker: bool,
}

/// What protects one object version from deletion.
#[derive(Debug)]
struct Lock {
    /// The retention's mode (`COMPLIANCE`, `GOVERNANCE`) and end, when it has not ended.
    retention: Option<(String, aws_sdk_s3::primitives::DateTime)>,
    legal_hold: bool,
}

impl S3Store {
    /// Every version of every object under `prefix` (delete markers included), or `None`
    /// when the server has no versioning API (then each key has one version).
    async fn list_versions(&self, prefix: &str) -> Result<Option<Vec<Version>>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = match self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
            {
                Ok(p) => p,
                Err(e) if is_unimplemented(&e) => return Ok(None),
                Err(e) => return Err(self.err("list versions", prefix, e)),
            };
            // "null" is the version of an object written while versioning was off.
            let id = |v: Option<&str>| v.filter(|v| *v != "null").map(str::to_owned);
            for v in page.versions() {
                if let Some(k) = v.key() {
                    out.push(Version {
                        object: k.to_owned(),
                        version_id: id(v.version_id()),
                        delete_marker: false,
                    });
                }
            }
            for m in page.delete_markers() {
                if let Some(k) = m.key() {
                    out.push(Version {
                        object: k.to_owned(),
                        version_id: id(m.version_id()),
                        delete_marker: true,
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(Some(out));
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() && version_marker.is_none() {
                return Ok(Some(out));
            }
        }
    }

    /// What protects `object` (that version of it) from deletion now, if anything: an
    /// Object Lock retention that has not ended, or a legal hold.
    async fn lock_of(
        &self,
        object: &str,
        version: Option<&str>,
    ) -> Result<Option<Lock>, StoreError> {
        let head = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(object)
            .set_version_id(version.map(str::to_owned))
            .send()
            .await
        {
            Ok(h) => h,
            Err(e) if is_404(&e) => return Ok(None),
            Err(e) => return Err(self.err("head", object, e)),
        };
        let now = aws_sdk_s3::primitives::DateTime::from(std::time::SystemTime::now());
        let retention = head
            .object_lock_retain_until_date()
            .filter(|until| **until > now)
            .map(|until| {
                let mode = head
                    .object_lock_mode()
                    .map_or_else(|| "retention".to_owned(), |m| m.as_str().to_owned());
                (mode, *until)
            });
        let legal_hold = head.object_lock_legal_hold_status()
            == Some(&aws_sdk_s3::types::ObjectLockLegalHoldStatus::On);
        Ok((retention.is_some() || legal_hold).then_some(Lock {
            retention,
            legal_hold,
        }))
    }

    /// The refusal to delete `key` while `locks` protect its objects.
    fn locked(&self, key: &BackupKey, locks: &[(String, Lock)]) -> StoreError {
        let last = locks
            .iter()
            .filter_map(|(_, l)| l.retention.as_ref().map(|r| r.1))
            .max();
        let held = locks.iter().any(|(_, l)| l.legal_hold);
        let until = match (last, held) {
            (Some(t), false) => format!("until {}", until_text(&t)),
            (Some(t), true) => format!(
                "until {} (retention), and by a legal hold until it is lifted",
                until_text(&t)
            ),
            (None, _) => "(a legal hold, until it is lifted)".to_owned(),
        };
        let mut what: Vec<String> = Vec::new();
        for (object, lock) in locks {
            let name = object.rsplit('/').next().unwrap_or(object);
            let how = match (&lock.retention, lock.legal_hold) {
                (Some((mode, t)), false) => format!("{mode} retention until {}", until_text(t)),
                (Some((mode, t)), true) => {
                    format!("{mode} retention until {} and a legal hold", until_text(t))
                }
                (None, _) => "a legal hold".to_owned(),
            };
            let line = format!("{name}: {how}");
            if !what.contains(&line) {
                what.push(line);
            }
        }
        StoreError::Locked {
            zone: self.url.clone(),
            key: key.clone(),
            until,
            detail: format!(
                "{} ({} object versions); nothing was changed",
                what.join(", "),
                locks.len()
            ),
        }
    }

    /// Puts an S3 Object Lock retention (compliance mode) on `object`: until it ends,
    /// nobody, this host included, can delete or overwrite that version.
    async fn retain(&self, object: &str, retention: Duration) -> Result<(), StoreError> {
        let until = std::time::SystemTime::now() + retention;
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(object)
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Compliance)
                    .retain_until_date(aws_sdk_s3::primitives::DateTime::from(until))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                let mut err = self.err("lock", object, e);
                if let StoreError::Remote { message, .. } = &mut err {
                    message.push_str(&format!(
                        " — is Object Lock enabled on bucket `{}`? (`mc mb --with-lock`); \
                         otherwise remove zones.reserved.lock_retention",
                        self.bucket
                    ));
                }
                err
            })?;
        Ok(())
    }
}

/// A one-line description of an SDK error: the service's code and message with the HTTP
/// status, or the chain of causes of a connection failure (no debug dumps).
fn describe<E>(e: &SdkError<E, HttpResponse>, status: Option<u16>, code: Option<&str>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ServiceError(ctx) = e {
        let msg = ctx.err().message().unwrap_or("");
        return format!(
            "{}{}{} (HTTP {})",
            code.unwrap_or("error"),
            if msg.is_empty() { "" } else { ": " },
            msg,
            status.unwrap_or(0)
        );
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The HTTP status of a service error.
fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
        _ => None,
    }
}

/// Whether the server refused the request (HTTP 403 or an AccessDenied code).
fn is_denied<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    status_of(e) == Some(403) || e.code() == Some("AccessDenied")
}

/// Whether the server does not implement the request (HTTP 501, `NotImplemented`).
fn is_unimplemented<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    status_of(e) == Some(501) || e.code() == Some("NotImplemented")
}

/// A time as RFC 3339 in whole seconds, rounded up (a retention never looks shorter).
fn until_text(t: &aws_sdk_s3::primitives::DateTime) -> String {
    let secs = t.secs() + i64::from(t.subsec_nanos() > 0);
    aws_sdk_s3::primitives::DateTime::from_secs(secs)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{secs} s after the epoch"))
}

fn is_404<E>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(ctx) if ctx.raw().status().as_u16() == 404)
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
        src: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let object = self.object(key, ARCHIVE_NAME);
        let size = std::fs::metadata(src)
            .map_err(|e| StoreError::Io {
                zone: self.url.clone(),
                op: "stat",
                path: src.to_path_buf(),
                cause: e,
            })?
            .len();
        if size >= MULTIPART_THRESHOLD {
            self.put_multipart(&object, src, size, progress).await
        } else {
            let body = ByteStream::from_path(src)
                .await
                .map_err(|e| StoreError::Io {
                    zone: self.url.clone(),
                    op: "read",
                    path: src.to_path_buf(),
                    cause: std::io::Error::other(e.to_string()),
                })?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .content_length(i64::try_from(size).unwrap_or(i64::MAX))
                .body(body)
                .send()
                .await
                .map_err(|e| self.err("put", &object, e))?;
            progress(size);
            Ok(())
        }
    }

    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = BackupKey {
            host: manifest.host_id.clone(),
            id: manifest.id.clone(),
        };
        let archive = self.object(&key, ARCHIVE_NAME);
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

    fn local_archive(&self, _key: &BackupKey) -> Option<PathBuf> {
        None
    }

    async fn fetch_archive(
        &self,
        key: &BackupKey,
        dest: &Path,
        progress: ProgressFn,
    ) -> Result<(), StoreError> {
        let object = self.object(key, ARCHIVE_NAME);
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
            None => [MANIFEST_NAME, ARCHIVE_NAME]
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
        self.delete_object(&self.object(key, ARCHIVE_NAME)).await?;
        self.abort_uploads(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::delete_object::DeleteObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    fn service_error(status: u16, code: &str) -> SdkError<DeleteObjectError, HttpResponse> {
        let raw = HttpResponse::new(status.try_into().expect("status code"), SdkBody::empty());
        SdkError::service_error(
            DeleteObjectError::generic(ErrorMetadata::builder().code(code).build()),
            raw,
        )
    }

    #[test]
    fn a_refused_version_delete_is_recognised_as_a_refusal() {
        // What an enforcing server answers for a locked version (moto, AWS, MinIO).
        assert!(is_denied(&service_error(403, "AccessDenied")));
        // A 403 without a code (a HEAD-style answer) too.
        assert!(is_denied(&service_error(403, "")));
        assert!(!is_denied(&service_error(404, "NoSuchVersion")));
        assert!(!is_denied(&service_error(500, "InternalError")));
        assert!(is_unimplemented(&service_error(501, "NotImplemented")));
        assert!(!is_unimplemented(&service_error(400, "InvalidArgument")));
    }

    #[test]
    fn retention_ends_are_named_to_the_second_rounded_up() {
        let t = aws_sdk_s3::primitives::DateTime::from_secs_and_nanos(1_796_249_029, 1);
        assert_eq!(until_text(&t), "2026-12-02T22:03:50Z");
        let t = aws_sdk_s3::primitives::DateTime::from_secs(1_796_249_029);
        assert_eq!(until_text(&t), "2026-12-02T22:03:49Z");
    }
}
