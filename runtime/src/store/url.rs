//! Zone URLs, parsed once: `file:///absolute/path` (a local directory) or
//! `s3://bucket/prefix` (a bucket, optionally under a key prefix).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a zone lives, as configured.
///
/// [`FromStr`] accepts `file:///absolute/path` (the path is normalized: `.` and `..` are
/// resolved and trailing slashes dropped) and `s3://bucket` or `s3://bucket/prefix`;
/// [`fmt::Display`] gives back that text (`file://` followed by the normalized path, or
/// the S3 URL exactly as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneUrl {
    /// A local directory: an absolute, normalized path.
    Local(PathBuf),
    /// An S3 bucket.
    S3 {
        /// The bucket's name (never empty when parsed).
        bucket: String,
        /// What follows the bucket name in the URL, as written: empty, or starting with
        /// `/` (`/zone`, `/zone/`). [`ZoneUrl::key_prefix`] turns it into an object-key
        /// prefix.
        path: String,
    },
}

/// Why a zone URL cannot be used. The texts are the ones `tierkeep config check` shows
/// after `zones.<zone>.url `<url>`: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneUrlError {
    /// `file://` with a relative path.
    #[error("a file URL needs an absolute path (file:///var/lib/...)")]
    RelativePath,
    /// `s3://` without a bucket name.
    #[error("no bucket name (expected s3://bucket or s3://bucket/prefix)")]
    NoBucket,
    /// Neither `file://` nor `s3://` (a plain path included).
    #[error("expected file:///path or s3://bucket/prefix")]
    UnknownScheme,
}

impl ZoneUrlError {
    /// Whether the text was meant as an S3 URL (it starts with `s3://`).
    pub fn is_s3(&self) -> bool {
        matches!(self, ZoneUrlError::NoBucket)
    }
}

impl ZoneUrl {
    /// The URL of the local directory `dir` (normalized); `None` when `dir` is relative.
    pub fn local(dir: &Path) -> Option<ZoneUrl> {
        dir.is_absolute()
            .then(|| ZoneUrl::Local(crate::config::normalize(dir)))
    }

    /// The zone's directory when it is a local one.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            ZoneUrl::Local(p) => Some(p),
            ZoneUrl::S3 { .. } => None,
        }
    }

    /// Whether the zone is an S3 bucket.
    pub fn is_s3(&self) -> bool {
        matches!(self, ZoneUrl::S3 { .. })
    }

    /// The bucket of an S3 zone.
    pub fn bucket(&self) -> Option<&str> {
        match self {
            ZoneUrl::S3 { bucket, .. } => Some(bucket),
            ZoneUrl::Local(_) => None,
        }
    }

    /// The object-key prefix of an S3 zone: the URL's path without leading and trailing
    /// slashes, followed by one `/` (`zone/`), or empty for the bucket's root. Empty for
    /// a local zone.
    pub fn key_prefix(&self) -> String {
        match self {
            ZoneUrl::S3 { path, .. } => match path.trim_matches('/') {
                "" => String::new(),
                p => format!("{p}/"),
            },
            ZoneUrl::Local(_) => String::new(),
        }
    }

    /// Whether two URLs name the same place (the same directory, or the same bucket and
    /// key prefix), whatever slashes they were written with.
    pub fn same_place(&self, other: &ZoneUrl) -> bool {
        match (self, other) {
            (ZoneUrl::Local(a), ZoneUrl::Local(b)) => a == b,
            (ZoneUrl::S3 { bucket: a, .. }, ZoneUrl::S3 { bucket: b, .. }) => {
                a == b && self.key_prefix() == other.key_prefix()
            }
            _ => false,
        }
    }
}

impl FromStr for ZoneUrl {
    type Err = ZoneUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("file://") {
            return ZoneUrl::local(Path::new(path)).ok_or(ZoneUrlError::RelativePath);
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            if bucket.is_empty() {
                return Err(ZoneUrlError::NoBucket);
            }
            return Ok(ZoneUrl::S3 {
                bucket: bucket.to_owned(),
                path: path.to_owned(),
            });
        }
        Err(ZoneUrlError::UnknownScheme)
    }
}

impl fmt::Display for ZoneUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZoneUrl::Local(p) => write!(f, "file://{}", p.display()),
            ZoneUrl::S3 { bucket, path } => write!(f, "s3://{bucket}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ZoneUrl, ZoneUrlError> {
        s.parse()
    }

    #[test]
    fn file_urls_are_absolute_and_normalized() {
        let u = parse("file:///var/lib/tierkeep/bb").unwrap();
        assert_eq!(u, ZoneUrl::Local(PathBuf::from("/var/lib/tierkeep/bb")));
        assert_eq!(u.local_dir(), Some(Path::new("/var/lib/tierkeep/bb")));
        assert!(!u.is_s3());
        assert_eq!(u.bucket(), None);
        assert_eq!(u.key_prefix(), "");
        assert_eq!(u.to_string(), "file:///var/lib/tierkeep/bb");

        let u = parse("file:///var/./lib/../data/zone/").unwrap();
        assert_eq!(u.local_dir(), Some(Path::new("/var/data/zone")));
        assert_eq!(u.to_string(), "file:///var/data/zone");
    }

    #[test]
    fn s3_urls_keep_their_text() {
        for (text, bucket, prefix) in [
            ("s3://backups", "backups", ""),
            ("s3://backups/", "backups", ""),
            ("s3://backups/zone", "backups", "zone/"),
            ("s3://backups/zone/", "backups", "zone/"),
            ("s3://backups//a/b//", "backups", "a/b/"),
        ] {
            let u = parse(text).unwrap();
            assert!(u.is_s3(), "{text}");
            assert_eq!(u.bucket(), Some(bucket), "{text}");
            assert_eq!(u.key_prefix(), prefix, "{text}");
            assert_eq!(u.local_dir(), None, "{text}");
            assert_eq!(u.to_string(), text, "{text}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_expected() {
        for (text, err, message) in [
            (
                "file://relative/dir",
                ZoneUrlError::RelativePath,
                "a file URL needs an absolute path (file:///var/lib/...)",
            ),
            (
                "file://",
                ZoneUrlError::RelativePath,
                "a file URL needs an absolute path (file:///var/lib/...)",
            ),
            (
                "s3://",
                ZoneUrlError::NoBucket,
                "no bucket name (expected s3://bucket or s3://bucket/prefix)",
            ),
            (
                "s3:///prefix",
                ZoneUrlError::NoBucket,
                "no bucket name (expected s3://bucket or s3://bucket/prefix)",
            ),
            (
                "/var/lib/tierkeep",
                ZoneUrlError::UnknownScheme,
                "expected file:///path or s3://bucket/prefix",
            ),
            (
                "gs://bucket",
                ZoneUrlError::UnknownScheme,
                "expected file:///path or s3://bucket/prefix",
            ),
            (
                "S3://bucket",
                ZoneUrlError::UnknownScheme,
                "expected file:///path or s3://bucket/prefix",
            ),
            (
                "",
                ZoneUrlError::UnknownScheme,
                "expected file:///path or s3://bucket/prefix",
            ),
        ] {
            let got = parse(text).unwrap_err();
            assert_eq!(got, err, "{text}");
            assert_eq!(got.to_string(), message, "{text}");
            assert_eq!(got.is_s3(), text.starts_with("s3://"), "{text}");
        }
    }

    #[test]
    fn same_place_ignores_slashes_only() {
        let p = |s: &str| parse(s).unwrap();
        assert!(p("s3://b/zone").same_place(&p("s3://b/zone/")));
        assert!(p("s3://b").same_place(&p("s3://b/")));
        assert!(!p("s3://b/zone").same_place(&p("s3://b")));
        assert!(!p("s3://b/zone").same_place(&p("s3://c/zone")));
        assert!(p("file:///d/x/").same_place(&p("file:///d/y/../x")));
        assert!(!p("file:///d/x").same_place(&p("file:///d/y")));
        assert!(!p("file:///b").same_place(&p("s3://b")));
    }

    #[test]
    fn local_needs_an_absolute_directory() {
        assert_eq!(
            ZoneUrl::local(Path::new("/d/./black_box")),
            Some(ZoneUrl::Local(PathBuf::from("/d/black_box")))
        );
        assert_eq!(ZoneUrl::local(Path::new("d/black_box")), None);
    }
}
