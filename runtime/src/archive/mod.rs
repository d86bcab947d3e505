//! The backup archive: one tar stream (GNU headers with PAX records for nanosecond
//! times), compressed with zstd, plus a small JSON manifest. Any archive restores with
//! `zstd -d < archive.tar.zst | tar -x` and its `sha256sum` matches the manifest.
//!
//! [`write`] streams a source tree into an archive file; [`read`] verifies and extracts
//! one, refusing entries that would escape the target.

pub mod manifest;
pub mod read;
pub mod write;

use std::io::{self, Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub use manifest::{MANIFEST_FORMAT, Manifest};

/// Errors of the archive writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// I/O on a source or target path failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing or reading the archive stream itself failed.
    #[error("archive stream {action}: {source}")]
    Stream {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The archive contains an entry that is refused (escapes the target, goes through a
    /// symlink, is malformed).
    #[error(
        "refused archive entry `{entry}`: {reason}; nothing was written outside the target, \
         the archive may be hostile or corrupted"
    )]
    Hostile {
        /// The entry name, lossily decoded.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// The archive bytes do not match the manifest.
    #[error(
        "archive does not match its manifest: expected {expected_bytes} bytes with SHA-256 \
         {expected_sha256}, read {actual_bytes} bytes with SHA-256 {actual_sha256}; the copy \
         is corrupted: restore from another backup"
    )]
    Mismatch {
        /// Size recorded in the manifest.
        expected_bytes: u64,
        /// Hash recorded in the manifest.
        expected_sha256: String,
        /// Size read.
        actual_bytes: u64,
        /// Hash read.
        actual_sha256: String,
    },
    /// A restore target is not empty and `--force` was not given.
    #[error(
        "restore target {0} is not empty: choose an empty or new directory, or pass --force to \
         restore over its contents"
    )]
    TargetNotEmpty(PathBuf),
    /// The restore asked for a path the archive does not hold.
    #[error("the backup holds nothing at {0}")]
    PathNotInBackup(String),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl ArchiveError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ArchiveError::Io {
            action,
            path: path.into(),
            source,
        }
    }
    pub(crate) fn stream(action: &'static str, source: io::Error) -> Self {
        ArchiveError::Stream { action, source }
    }
}

/// A writer that hashes and counts every byte passing through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// Returns the inner writer, the byte count and the hex SHA-256.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts every byte passing through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// The byte count and hex SHA-256 so far.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Hashes a whole file: (bytes, hex SHA-256).
pub fn hash_file(
    path: &std::path::Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String), ArchiveError> {
    let file = std::fs::File::open(path).map_err(|e| ArchiveError::io("open", path, e))?;
    let mut reader = HashingReader::new(file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ArchiveError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        progress(n as u64);
    }
    Ok(reader.finish())
}
