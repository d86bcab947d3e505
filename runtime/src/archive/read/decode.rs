//! The decoding side of a read: a thread that reads the archive file, hashes the
//! compressed bytes and decompresses them into chunks, the reader the tar parser pulls
//! those chunks through, and the comparison of the archive's size and hash with its
//! manifest.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use crate::archive::{ArchiveError, HashingReader};

pub(super) type Chunk = io::Result<(Vec<u8>, u64)>;
pub(super) type Decoder = (
    Receiver<Chunk>,
    thread::JoinHandle<io::Result<(u64, String)>>,
);

/// Decompresses `archive` on a thread; returns the receiving end and the join handle
/// yielding (archive bytes, hex SHA-256).
pub(super) fn spawn_decoder(archive: &Path) -> Result<Decoder, ArchiveError> {
    let file = File::open(archive).map_err(|e| ArchiveError::io("open", archive, e))?;
    let (tx, rx): (SyncSender<Chunk>, Receiver<Chunk>) = sync_channel(16);
    let handle = thread::Builder::new()
        .name("tierkeep-decode".into())
        .spawn(move || -> io::Result<(u64, String)> {
            let hashing = HashingReader::new(file);
            let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                1 << 20,
                hashing,
            ))?;
            decoder.window_log_max(31)?;
            let mut counted = 0u64;
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                let mut filled = 0;
                while filled < chunk.len() {
                    match decoder.read(&mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let msg = e.to_string();
                            let _ = tx.send(Err(e));
                            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                        }
                    }
                }
                if filled == 0 {
                    break;
                }
                chunk.truncate(filled);
                counted += filled as u64;
                let position = decoder.get_ref().get_ref().bytes;
                if tx.send(Ok((chunk, position))).is_err() {
                    // The consumer stopped (an error on its side); it reports why.
                    return Err(io::Error::other("extraction stopped"));
                }
            }
            let mut hashing = decoder.finish().into_inner();
            // Hash whatever follows the last frame too, so the comparison covers the file.
            io::copy(&mut hashing, &mut io::sink())?;
            tracing::trace!(decompressed = counted, "archive decoded");
            Ok(hashing.finish())
        })
        .map_err(|e| ArchiveError::stream("spawn decoder", e))?;
    Ok((rx, handle))
}

pub(super) struct ChannelReader<'a> {
    pub(super) rx: Receiver<Chunk>,
    pub(super) chunk: Vec<u8>,
    pub(super) pos: usize,
    pub(super) compressed_seen: u64,
    pub(super) progress: &'a mut dyn FnMut(u64),
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok((chunk, position))) => {
                    (self.progress)(position.saturating_sub(self.compressed_seen));
                    self.compressed_seen = position;
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub(super) fn check_result(
    expected: Option<&(u64, String)>,
    actual: (u64, String),
) -> Result<(u64, String), ArchiveError> {
    if let Some((bytes, sha)) = expected
        && (*bytes != actual.0 || !sha.eq_ignore_ascii_case(&actual.1))
    {
        return Err(ArchiveError::Mismatch {
            expected_bytes: *bytes,
            expected_sha256: sha.clone(),
            actual_bytes: actual.0,
            actual_sha256: actual.1,
        });
    }
    Ok(actual)
}
