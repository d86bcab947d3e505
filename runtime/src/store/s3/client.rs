//! Building the S3 clients (the standard credential chain, the rustls client, connect and
//! read timeouts, the SDK's bounded retries and the probe client without them) and
//! turning SDK errors into [`StoreError`]s that say which bucket and what to do.

use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::{S3Settings, S3Store};
use crate::store::{Retry, StoreError, ZoneUrl};

/// Time to open a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a request may wait for the next bytes of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a probe ([`ZoneStore::check`](crate::store::ZoneStore::check)), connection
/// included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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

    pub(super) fn err<E>(
        &self,
        op: &'static str,
        object: &str,
        e: SdkError<E, HttpResponse>,
    ) -> StoreError
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
}

/// A one-line description of an SDK error: the service's code and message with the HTTP
/// status, or the chain of causes of a connection failure (no debug dumps).
pub(super) fn describe<E>(
    e: &SdkError<E, HttpResponse>,
    status: Option<u16>,
    code: Option<&str>,
) -> String
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
pub(super) fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
        _ => None,
    }
}

/// Whether the server refused the request (HTTP 403 or an AccessDenied code).
pub(super) fn is_denied<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    status_of(e) == Some(403) || e.code() == Some("AccessDenied")
}

/// Whether the server does not implement the request (HTTP 501, `NotImplemented`).
pub(super) fn is_unimplemented<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    status_of(e) == Some(501) || e.code() == Some("NotImplemented")
}

pub(super) fn is_404<E>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(ctx) if ctx.raw().status().as_u16() == 404)
}
