//! The JSON manifest stored beside every archive. It is written last and is the commit
//! marker of a backup: an archive without a manifest is an incomplete upload.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::index::IndexRef;
use crate::domain::{BackupId, BackupKind};

/// The manifest format version this build writes: 2, a framed archive with an entry
/// index. Format 1 (one zstd stream, no index) is read as well, forever.
pub const MANIFEST_FORMAT: u32 = 2;

/// The manifest formats this build reads.
pub const READS_FORMATS: [u32; 2] = [1, 2];

/// Everything needed to identify, verify and restore a backup with standard tools.
/// Unknown fields are ignored (a newer tierkeep may add some); `format` says whether
/// this build can read the manifest at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Backup id.
    pub id: BackupId,
    /// Host the backup belongs to.
    pub host_id: String,
    /// Scheduled or manual.
    pub kind: BackupKind,
    /// Operator's label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When the backup started (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The absolute source paths that were backed up.
    pub source: Vec<String>,
    /// Number of entries in the tar stream.
    pub entries: u64,
    /// Sum of the regular files' sizes.
    pub logical_bytes: u64,
    /// Size of `archive.tar.zst`.
    pub archive_bytes: u64,
    /// Hex SHA-256 of `archive.tar.zst`.
    pub archive_sha256: String,
    /// Compression of the archive (always `zstd`).
    pub compression: String,
    /// The tierkeep version that wrote it.
    pub tool_version: String,
    /// The policy in force when it was created.
    pub policy: String,
    /// Files that changed, shrank or vanished while being read, and entries skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Format 2: where the entry index sits in the archive, and its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexRef>,
    /// Format 2: compressed bytes copied from the previous backup instead of being read
    /// and compressed again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reused_bytes: u64,
    /// Format 2: the backup those bytes were copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<BackupId>,
    /// Format 2: when the sources were last read in full (this backup, or an earlier one
    /// its reused frames go back to).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub full_read_at: Option<OffsetDateTime>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Manifest {
    /// Serialises to pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses and checks the format version.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a tierkeep manifest: {e}"))?;
        if !READS_FORMATS.contains(&m.format) {
            return Err(format!(
                "manifest format {} is not supported by this tierkeep (reads formats 1 and 2)",
                m.format
            ));
        }
        if m.format == 2 && m.index.is_none() {
            return Err("a format 2 manifest without its index".into());
        }
        if let Some(index) = &m.index
            && (index.sha256.len() != 64 || !index.sha256.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err("manifest index.sha256 is not a hex SHA-256".into());
        }
        if m.archive_sha256.len() != 64 || !m.archive_sha256.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err("manifest archive_sha256 is not a hex SHA-256".into());
        }
        Ok(m)
    }
}
