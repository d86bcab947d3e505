//! Reading parts of an encrypted archive without the rest: the caller fetches the
//! ciphertext ranges that hold the plaintext it wants ([`Ranged::needed`]), hands them
//! over ([`Ranged::add`]), and reads plaintext ([`Ranged::read`]); age authenticates
//! every chunk it decrypts. The identity is tried once per backup, not once per read
//! (a passphrase costs a second of scrypt).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, PoisonError};

use super::stream::{MAX_HEADER, SEALED_CHUNK, header_len, sealed_range};
use super::{CryptError, Identities};

/// The ciphertext bytes fetched so far, by offset; reading anything else is an error.
#[derive(Debug, Default)]
struct Segments {
    parts: BTreeMap<u64, Vec<u8>>,
}

impl Segments {
    /// The bytes at `pos` up to the end of the segment holding it.
    fn at(&self, pos: u64) -> Option<&[u8]> {
        // Segments may overlap (two reads of one chunk): any that holds `pos` will do.
        self.parts.range(..=pos).rev().find_map(|(&start, bytes)| {
            let skip = usize::try_from(pos - start).ok()?;
            (skip < bytes.len()).then(|| &bytes[skip..])
        })
    }

    /// Whether `offset..offset + len` is held.
    fn holds(&self, offset: u64, len: u64) -> bool {
        let mut pos = offset;
        while pos < offset + len {
            match self.at(pos) {
                Some(b) => pos += b.len() as u64,
                None => return false,
            }
        }
        true
    }
}

/// A `Read + Seek` view of a ciphertext of `size` bytes of which only the fetched
/// segments are present.
#[derive(Debug, Clone)]
struct Sparse {
    segments: Arc<Mutex<Segments>>,
    size: u64,
    pos: u64,
}

impl Read for Sparse {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let segments = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = segments.at(self.pos).ok_or_else(|| {
            io::Error::other(format!(
                "ciphertext byte {} was not fetched (an internal error)",
                self.pos
            ))
        })?;
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Sparse {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// An encrypted archive read by ranges.
pub struct Ranged {
    segments: Arc<Mutex<Segments>>,
    reader: Mutex<age::stream::StreamReader<Sparse>>,
    header: u64,
    size: u64,
}

impl std::fmt::Debug for Ranged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranged")
            .field("header", &self.header)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The first bytes of an encrypted archive that [`Ranged::open`] needs: enough for any
/// header tierkeep writes.
pub fn head_len(size: u64) -> u64 {
    size.min(MAX_HEADER)
}

/// The last bytes [`Ranged::open`] needs (the final chunk, which age authenticates as
/// the last one whenever it works out the plaintext's length).
pub fn tail_len(size: u64) -> u64 {
    size.min(2 * SEALED_CHUNK)
}

impl Ranged {
    /// Opens an encrypted archive of `size` bytes from its first bytes (`head`, at
    /// least [`head_len`]) and its last (`tail`, [`tail_len`]), decrypting its header
    /// with `identities`. `describe` gives the backup's id and recipients for errors.
    pub fn open(
        head: Vec<u8>,
        tail: Vec<u8>,
        size: u64,
        identities: &Identities,
        describe: &dyn Fn(String) -> CryptError,
    ) -> Result<Ranged, CryptError> {
        let header = header_len(&head).ok_or_else(|| {
            describe("the stored archive does not start with an age header".into())
        })?;
        let mut parts = BTreeMap::new();
        let tail_at = size - tail.len() as u64;
        parts.insert(0, head);
        parts.insert(tail_at, tail);
        let segments = Arc::new(Mutex::new(Segments { parts }));
        let sparse = Sparse {
            segments: Arc::clone(&segments),
            size,
            pos: 0,
        };
        let decryptor = age::Decryptor::new(sparse).map_err(|e| describe(e.to_string()))?;
        let reader = decryptor
            .decrypt(identities.iter())
            .map_err(|e| describe(decrypt_reason(&e, identities)))?;
        Ok(Ranged {
            segments,
            reader: Mutex::new(reader),
            header,
            size,
        })
    }

    /// The ciphertext range to fetch for the plaintext `offset..offset + len`, or `None`
    /// when it is already held.
    pub fn needed(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let (at, n) = sealed_range(self.header, self.size, offset, len);
        let held = self
            .segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .holds(at, n);
        (!held && n > 0).then_some((at, n))
    }

    /// Adds fetched ciphertext at `offset`.
    pub fn add(&self, offset: u64, bytes: Vec<u8>) {
        self.segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .parts
            .insert(offset, bytes);
    }

    /// Decrypts the plaintext `offset..offset + len` (its chunks must have been added).
    pub fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        reader.seek(SeekFrom::Start(offset))?;
        let mut out = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        reader.read_exact(&mut out)?;
        Ok(out)
    }
}

/// What to tell the operator when age cannot decrypt with the identities given.
pub fn decrypt_reason(e: &age::DecryptError, identities: &Identities) -> String {
    match e {
        age::DecryptError::NoMatchingKeys => format!(
            "none of the identities in the {} is one of its recipients",
            identities.source
        ),
        age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => format!(
            "the {} does not decrypt it (a wrong passphrase, or a damaged header)",
            identities.source
        ),
        other => other.to_string(),
    }
}
