//! S3 Object Lock: the versions of a backup's objects, what protects each from deletion
//! (a retention that has not ended, a legal hold), the refusal that names them, and
//! putting a compliance-mode retention on a new manual backup.

use std::time::Duration;

use super::S3Store;
use super::client::{is_404, is_unimplemented};
use crate::store::{BackupKey, StoreError};

/// One stored version of an object (the current object on a bucket without versions).
#[derive(Debug)]
pub(super) struct Version {
    pub(super) object: String,
    /// `None` for the only version of an object on an unversioned bucket.
    pub(super) version_id: Option<String>,
    pub(super) delete_marker: bool,
}

/// What protects one object version from deletion.
#[derive(Debug)]
pub(super) struct Lock {
    /// The retention's mode (`COMPLIANCE`, `GOVERNANCE`) and end, when it has not ended.
    retention: Option<(String, aws_sdk_s3::primitives::DateTime)>,
    legal_hold: bool,
}

impl S3Store {
    /// Every version of every object under `prefix` (delete markers included), or `None`
    /// when the server has no versioning API (then each key has one version).
    pub(super) async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Option<Vec<Version>>, StoreError> {
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
    pub(super) async fn lock_of(
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
    pub(super) fn locked(&self, key: &BackupKey, locks: &[(String, Lock)]) -> StoreError {
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
    pub(super) async fn retain(&self, object: &str, retention: Duration) -> Result<(), StoreError> {
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

/// A time as RFC 3339 in whole seconds, rounded up (a retention never looks shorter).
pub(super) fn until_text(t: &aws_sdk_s3::primitives::DateTime) -> String {
    let secs = t.secs() + i64::from(t.subsec_nanos() > 0);
    aws_sdk_s3::primitives::DateTime::from_secs(secs)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{secs} s after the epoch"))
}
