//! Encryption in the engine: storing an archive in a zone whose archives are encrypted
//! (encrypted as it is read, no temporary copy), the identities that read one, and
//! reading plaintext ranges of a stored archive whether it is encrypted or not (`ls`,
//! `restore --path`).

use std::path::Path;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{OpsError, Tierkeep};
use crate::archive::read::Decrypt;
use crate::archive::{ArchiveError, Manifest};
use crate::catalog::Record;
use crate::crypt::ranged::{Ranged, head_len, tail_len};
use crate::crypt::stream::Encrypting;
use crate::crypt::{CryptError, Identities, IdentitySource};
use crate::domain::Zone;
use crate::progress::Progress;
use crate::store::{ARCHIVE_NAME, BackupKey, ENCRYPTED_ARCHIVE_NAME, ZoneStore};

/// Ranged reads in flight at once.
const PARALLEL_READS: usize = 8;

/// The recipients' fingerprints of an encrypted manifest, for messages.
fn recipients_of(m: &Manifest) -> String {
    m.encryption
        .as_ref()
        .map(|e| e.recipients.join(", "))
        .unwrap_or_default()
}

impl Tierkeep {
    /// Stores the plaintext archive `src`, described by `plain`, in `zone` as `key`:
    /// encrypted as it is read when the zone's archives are encrypted (`[encryption]`),
    /// else as it is. Returns the manifest of what was stored, to commit.
    ///
    /// An encrypted copy whose plaintext does not hash as `plain` says gives
    /// [`ArchiveError::Mismatch`]: the source copy is damaged.
    pub(super) async fn store_archive(
        &self,
        store: &dyn ZoneStore,
        zone: Zone,
        key: &BackupKey,
        src: &Path,
        plain: &Manifest,
        progress: &Progress,
    ) -> Result<Manifest, OpsError> {
        if plain.encryption.is_some() {
            // Already encrypted (from an encrypted black box): stored as it is.
            store
                .put_archive(key, ENCRYPTED_ARCHIVE_NAME, src, progress.callback())
                .await?;
            return Ok(plain.clone());
        }
        let Some(recipients) = self.settings.encryption.for_zone(zone) else {
            store
                .put_archive(key, ARCHIVE_NAME, src, progress.callback())
                .await?;
            return Ok(plain.clone());
        };
        let file = crate::archive::direct::Reader::open(src).map_err(super::io_err("open", src))?;
        let (reader, sealed) = Encrypting::new(file, recipients).map_err(ArchiveError::from)?;
        store
            .put_archive_stream(
                key,
                ENCRYPTED_ARCHIVE_NAME,
                Box::new(reader),
                plain.archive_bytes,
                progress.callback(),
            )
            .await?;
        let sealed = sealed.get().cloned().ok_or_else(|| {
            OpsError::Internal("the encrypted upload ended before its plaintext".into())
        })?;
        let (bytes, sha) = plain.plain();
        if sealed.plain_bytes != bytes || sealed.plain_sha256 != sha {
            return Err(ArchiveError::Mismatch {
                expected_bytes: bytes,
                expected_sha256: sha,
                actual_bytes: sealed.plain_bytes,
                actual_sha256: sealed.plain_sha256,
            }
            .into());
        }
        tracing::debug!(
            %key,
            plain = sealed.plain_bytes,
            sealed = sealed.sealed_bytes,
            "stored encrypted"
        );
        Ok(plain.encrypted(
            sealed.sealed_bytes,
            sealed.sealed_sha256,
            recipients.fingerprints(),
        ))
    }

    /// The identities configured for reading encrypted backups: `--identity` /
    /// `TIERKEEP_IDENTITY` (put into the settings by the CLI) or
    /// `encryption.identity_file`, and a passphrase from `TIERKEEP_PASSPHRASE` or
    /// `encryption.passphrase_file`.
    fn identities(&self) -> Result<Option<Identities>, OpsError> {
        let enc = &self.settings.encryption;
        let source = IdentitySource {
            file: enc.identity_file.clone(),
            passphrase_file: enc.passphrase_file.clone(),
            passphrase: std::env::var("TIERKEEP_PASSPHRASE")
                .ok()
                .filter(|p| !p.is_empty()),
        };
        Ok(Identities::load(&source).map_err(ArchiveError::from)?)
    }

    /// How to decrypt `rec`'s stored archive: `None` when it is not encrypted, an error
    /// naming its recipients when no identity is given.
    pub(super) fn decrypt_for(&self, rec: &Record) -> Result<Option<Decrypt>, OpsError> {
        if rec.manifest.encryption.is_none() {
            return Ok(None);
        }
        let recipients = recipients_of(&rec.manifest);
        let identities = self.identities()?.ok_or_else(|| {
            ArchiveError::from(CryptError::NoIdentity {
                id: rec.id.to_string(),
                recipients: recipients.clone(),
            })
        })?;
        Ok(Some(Decrypt {
            identities: Arc::new(identities),
            id: rec.id.to_string(),
            recipients,
        }))
    }

    /// Plaintext ranges of `rec`'s stored archive, read from its zone with ranged reads
    /// (decrypting only the chunks they need when it is encrypted). Returns each range's
    /// bytes in order, and the stored bytes read.
    pub(super) async fn read_plain_ranges(
        &self,
        rec: &Record,
        ranges: &[(u64, u64)],
        progress: Option<&Progress>,
    ) -> Result<(Vec<Vec<u8>>, u64), OpsError> {
        let store = self.store(rec.zone).clone();
        let key = self.key(rec);
        let name = rec.manifest.archive_name();
        let fetch = |list: Vec<(u64, u64)>| {
            let store = store.clone();
            let key = key.clone();
            stream::iter(list)
                .map(move |(offset, len)| {
                    let store = store.clone();
                    let key = key.clone();
                    async move {
                        let bytes = store.read_range(&key, name, offset, len).await?;
                        if let Some(bar) = progress {
                            bar.inc(len);
                        }
                        Ok::<_, OpsError>(bytes)
                    }
                })
                .buffered(PARALLEL_READS)
                .try_collect::<Vec<_>>()
        };
        let Some(decrypt) = self.decrypt_for(rec)? else {
            let read = ranges.iter().map(|r| r.1).sum();
            return Ok((fetch(ranges.to_vec()).await?, read));
        };
        let size = rec.size_bytes;
        let ends = fetch(vec![
            (0, head_len(size)),
            (size - tail_len(size), tail_len(size)),
        ])
        .await?;
        let mut read: u64 = ends.iter().map(|b| b.len() as u64).sum();
        let [head, tail]: [Vec<u8>; 2] = ends
            .try_into()
            .map_err(|_| OpsError::Internal("two ranges asked, other than two read".into()))?;
        let (id, recipients) = (decrypt.id.clone(), decrypt.recipients.clone());
        let fail = move |reason: String| CryptError::Decrypt {
            id: id.clone(),
            recipients: recipients.clone(),
            reason,
        };
        let identities = Arc::clone(&decrypt.identities);
        let ranged =
            tokio::task::spawn_blocking(move || Ranged::open(head, tail, size, &identities, &fail))
                .await
                .map_err(|e| OpsError::Internal(e.to_string()))?
                .map_err(ArchiveError::from)?;
        let needed: Vec<(u64, u64)> = ranges
            .iter()
            .filter_map(|&(offset, len)| ranged.needed(offset, len))
            .collect();
        let fetched = fetch(needed.clone()).await?;
        for ((offset, _), bytes) in needed.into_iter().zip(fetched) {
            read += bytes.len() as u64;
            ranged.add(offset, bytes);
        }
        let ranges = ranges.to_vec();
        let id = decrypt.id.clone();
        let recipients = decrypt.recipients.clone();
        let out = tokio::task::spawn_blocking(move || {
            ranges
                .iter()
                .map(|&(offset, len)| ranged.read(offset, len))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))?
        .map_err(|e| {
            ArchiveError::from(CryptError::Decrypt {
                id,
                recipients,
                reason: format!("the ciphertext is damaged or truncated ({e})"),
            })
        })?;
        Ok((out, read))
    }
}
