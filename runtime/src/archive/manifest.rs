//! The JSON manifest stored beside every archive. It is written last and is the commit
//! marker of a backup: an archive without a manifest is an incomplete upload.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::index::IndexRef;
use crate::domain::{BackupId, BackupKind};

/// The manifest format version this build writes: 2, a framed archive with an entry
/// index. Format 1 (one zstd stream, no index) is read as well, forever.
pub const MANIFEST_FORMAT: u32 = 2;

/// The manifest format of an encrypted copy: a format 2 archive inside an age file
/// (`archive.tar.zst.age`), with [`Manifest::encryption`]. An older tierkeep, which
/// cannot decrypt, refuses it by its format instead of failing to find its archive.
pub const MANIFEST_FORMAT_ENCRYPTED: u32 = 3;

/// The manifest formats this build reads.
pub const READS_FORMATS: [u32; 3] = [1, 2, 3];

/// The archive's file or object name inside a backup's folder.
pub const ARCHIVE_FILE: &str = "archive.tar.zst";

/// The name of an encrypted archive.
pub const ENCRYPTED_ARCHIVE_FILE: &str = "archive.tar.zst.age";

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
    /// Size of the stored archive (`archive.tar.zst`, or `archive.tar.zst.age` when
    /// encrypted).
    pub archive_bytes: u64,
    /// Hex SHA-256 of the stored archive: `verify` checks it with no key.
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
    /// Format 3: how the stored archive is encrypted. Its plaintext is the format 2
    /// archive the other fields describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// How an encrypted copy was made: nothing beyond sizes, hashes and the recipients'
/// fingerprints (which name no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// Always `age` (<https://age-encryption.org/v1>).
    pub scheme: String,
    /// Fingerprints of the recipients it was made for (`passphrase` for a passphrase).
    pub recipients: Vec<String>,
    /// Size of the plaintext archive (`archive.tar.zst`).
    pub plain_bytes: u64,
    /// Hex SHA-256 of the plaintext archive.
    pub plain_sha256: String,
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
                "manifest format {} is not supported by this tierkeep (reads formats 1, 2 and 3)",
                m.format
            ));
        }
        // Format 3 may wrap a format 1 archive (an older backup aged into an encrypted
        // zone), which has no index.
        if m.format == 2 && m.index.is_none() {
            return Err("a format 2 manifest without its index".into());
        }
        match (&m.encryption, m.format == MANIFEST_FORMAT_ENCRYPTED) {
            (None, true) => return Err("a format 3 manifest without its encryption".into()),
            (Some(_), false) => {
                return Err(format!("a format {} manifest with encryption", m.format));
            }
            (Some(e), true) if !is_sha256(&e.plain_sha256) => {
                return Err("manifest encryption.plain_sha256 is not a hex SHA-256".into());
            }
            _ => {}
        }
        if let Some(index) = &m.index
            && !is_sha256(&index.sha256)
        {
            return Err("manifest index.sha256 is not a hex SHA-256".into());
        }
        if !is_sha256(&m.archive_sha256) {
            return Err("manifest archive_sha256 is not a hex SHA-256".into());
        }
        Ok(m)
    }

    /// The archive's name in its folder.
    pub fn archive_name(&self) -> &'static str {
        if self.encryption.is_some() {
            ENCRYPTED_ARCHIVE_FILE
        } else {
            ARCHIVE_FILE
        }
    }

    /// The size and SHA-256 of the plaintext archive (the stored one when it is not
    /// encrypted).
    pub fn plain(&self) -> (u64, String) {
        match &self.encryption {
            Some(e) => (e.plain_bytes, e.plain_sha256.clone()),
            None => (self.archive_bytes, self.archive_sha256.clone()),
        }
    }

    /// The manifest of an encrypted copy of this (plaintext) backup: the stored size and
    /// hash are the ciphertext's, and what names data (the source paths, the warnings,
    /// which name files) stays out, since the manifest is not encrypted.
    pub fn encrypted(
        &self,
        sealed_bytes: u64,
        sealed_sha256: String,
        recipients: Vec<String>,
    ) -> Manifest {
        let (plain_bytes, plain_sha256) = self.plain();
        Manifest {
            format: MANIFEST_FORMAT_ENCRYPTED,
            archive_bytes: sealed_bytes,
            archive_sha256: sealed_sha256,
            source: Vec::new(),
            warnings: Vec::new(),
            encryption: Some(Encryption {
                scheme: "age".into(),
                recipients,
                plain_bytes,
                plain_sha256,
            }),
            ..self.clone()
        }
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}
