//! Encrypting an archive as it is read, and the layout of an age file's ciphertext.
//!
//! An age file is a text header (ending with a `--- MAC` line), a 16-byte nonce, then the
//! payload: the plaintext in chunks of 64 KiB, each followed by its 16-byte
//! ChaCha20-Poly1305 tag (the last chunk may be shorter; an empty plaintext is one empty
//! chunk). So the plaintext byte `p` sits in chunk `p / 64 KiB`, whose ciphertext starts
//! at `payload + chunk × (64 KiB + 16)`.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::{CryptError, Recipients};

/// Plaintext bytes per payload chunk.
pub const CHUNK: u64 = 64 << 10;
/// Ciphertext bytes per full payload chunk (the chunk and its tag).
pub const SEALED_CHUNK: u64 = CHUNK + 16;
/// The nonce between the header and the payload.
const NONCE: u64 = 16;
/// The longest header tierkeep reads (a few hundred bytes per recipient; an ssh-rsa
/// stanza is the largest, about 700).
pub const MAX_HEADER: u64 = 64 << 10;

/// Where the header ends in the first bytes of an age file: the offset just past the
/// `--- MAC` line. `None` when `head` does not hold a whole header (or no age header).
pub fn header_len(head: &[u8]) -> Option<u64> {
    if !head.starts_with(b"age-encryption.org/v1\n") {
        return None;
    }
    // Stanza bodies are base64 (no `-`), and stanza lines start with `-> `, so the first
    // line starting with `---` is the MAC line.
    let mut at = 0usize;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let end = at + line.len();
        if line.starts_with(b"--- ") || line == b"---\n" {
            return line.ends_with(b"\n").then_some(end as u64);
        }
        at = end;
    }
    None
}

/// The ciphertext size of a plaintext of `plain` bytes under a header of `header` bytes.
pub fn sealed_size(header: u64, plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK).max(1);
    header + NONCE + plain + chunks * 16
}

/// The ciphertext range (offset, length) holding the plaintext bytes
/// `offset..offset + len` of a file whose ciphertext is `size` bytes with a header of
/// `header` bytes: whole chunks, so that each can be authenticated.
pub fn sealed_range(header: u64, size: u64, offset: u64, len: u64) -> (u64, u64) {
    let payload = header + NONCE;
    let first = offset / CHUNK;
    let last = (offset + len.max(1) - 1) / CHUNK;
    let start = (payload + first * SEALED_CHUNK).min(size);
    let end = (payload + (last + 1) * SEALED_CHUNK).min(size);
    (start, end - start)
}

/// A writer into a buffer the reading side drains.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What an [`Encrypting`] reader saw once it reached the end: the plaintext's size and
/// SHA-256, and the ciphertext's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext bytes read.
    pub plain_bytes: u64,
    /// Hex SHA-256 of the plaintext.
    pub plain_sha256: String,
    /// Ciphertext bytes produced.
    pub sealed_bytes: u64,
    /// Hex SHA-256 of the ciphertext.
    pub sealed_sha256: String,
}

/// Reads a plaintext from `src` and yields its age encryption, hashing both sides.
pub struct Encrypting<R> {
    src: R,
    writer: Option<age::stream::StreamWriter<Shared>>,
    out: Shared,
    taken: usize,
    plain: Sha256,
    plain_bytes: u64,
    sealed: Sha256,
    sealed_bytes: u64,
    buf: Vec<u8>,
    done: Arc<OnceLock<Sealed>>,
}

impl<R> std::fmt::Debug for Encrypting<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypting")
            .field("plain_bytes", &self.plain_bytes)
            .field("sealed_bytes", &self.sealed_bytes)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Encrypting<R> {
    /// Starts encrypting `src` to `recipients` (a new file key). The returned cell is set
    /// when the reader reaches the end of the ciphertext.
    pub fn new(
        src: R,
        recipients: &Recipients,
    ) -> Result<(Self, Arc<OnceLock<Sealed>>), CryptError> {
        let out = Shared::default();
        let writer = recipients
            .encryptor()?
            .wrap_output(out.clone())
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        let done = Arc::new(OnceLock::new());
        Ok((
            Encrypting {
                src,
                writer: Some(writer),
                out,
                taken: 0,
                plain: Sha256::new(),
                plain_bytes: 0,
                sealed: Sha256::new(),
                sealed_bytes: 0,
                buf: vec![0u8; 1 << 20],
                done: Arc::clone(&done),
            },
            done,
        ))
    }

    /// Encrypts the next piece of plaintext (or finishes the stream) into `out`.
    fn fill(&mut self) -> io::Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        let n = loop {
            match self.src.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            if let Some(writer) = self.writer.take() {
                writer.finish()?;
            }
            return Ok(());
        }
        self.plain.update(&self.buf[..n]);
        self.plain_bytes += n as u64;
        writer.write_all(&self.buf[..n])
    }
}

impl<R: Read> Read for Encrypting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut out = self
                    .out
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if self.taken < out.len() {
                    let n = buf.len().min(out.len() - self.taken);
                    buf[..n].copy_from_slice(&out[self.taken..self.taken + n]);
                    self.sealed.update(&buf[..n]);
                    self.sealed_bytes += n as u64;
                    self.taken += n;
                    if self.taken == out.len() {
                        out.clear();
                        self.taken = 0;
                    }
                    return Ok(n);
                }
            }
            if self.writer.is_none() {
                let _ = self.done.set(Sealed {
                    plain_bytes: self.plain_bytes,
                    plain_sha256: hex::encode(self.plain.clone().finalize()),
                    sealed_bytes: self.sealed_bytes,
                    sealed_sha256: hex::encode(self.sealed.clone().finalize()),
                });
                return Ok(0);
            }
            self.fill()?;
        }
    }
}
