//! The decoding side of a read: a thread that reads the archive file, hashes the
//! compressed bytes and decompresses them into chunks, the reader the tar parser pulls
//! those chunks through, and the comparison of the archive's size and hash with its
//! manifest.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use crate::archive::{ArchiveError, HashingReader, index};
use crate::crypt::{CryptError, Identities};

/// An archive file to read, and how: as it is, or decrypted (an `.age` copy).
#[derive(Debug, Clone)]
pub struct ArchiveSource {
    /// The file.
    pub path: PathBuf,
    /// For an encrypted file: the identities that decrypt it, and the backup's id and
    /// recipients for messages.
    pub decrypt: Option<Decrypt>,
}

/// How to decrypt an [`ArchiveSource`].
#[derive(Debug, Clone)]
pub struct Decrypt {
    /// What decrypts it.
    pub identities: Arc<Identities>,
    /// The backup's id.
    pub id: String,
    /// Its recipients' fingerprints, joined.
    pub recipients: String,
}

/// The plaintext of an archive file: the file itself, or its decryption.
pub(crate) trait Plain: Read + Seek + Send {}
impl<T: Read + Seek + Send> Plain for T {}

impl ArchiveSource {
    /// A plaintext archive file.
    pub fn plain(path: impl Into<PathBuf>) -> Self {
        ArchiveSource {
            path: path.into(),
            decrypt: None,
        }
    }

    /// Opens the plaintext for reading: an encrypted file's header is decrypted here,
    /// so a wrong or missing identity fails before anything is read.
    pub(crate) fn open(&self) -> Result<Box<dyn Plain>, ArchiveError> {
        // Read directly, off the page cache, with the next blocks read ahead.
        let file = crate::archive::direct::Reader::open(&self.path)
            .map_err(|e| ArchiveError::io("open", &self.path, e))?;
        let Some(d) = &self.decrypt else {
            return Ok(Box::new(file));
        };
        let fail = |reason: String| CryptError::Decrypt {
            id: d.id.clone(),
            recipients: d.recipients.clone(),
            reason,
        };
        let decryptor = age::Decryptor::new(file).map_err(|e| fail(e.to_string()))?;
        let reader = decryptor
            .decrypt(d.identities.iter())
            .map_err(|e| fail(crate::crypt::ranged::decrypt_reason(&e, &d.identities)))?;
        Ok(Box::new(reader))
    }
}

pub(super) type Chunk = io::Result<(Vec<u8>, u64)>;
pub(super) type Decoder = (
    Receiver<Chunk>,
    thread::JoinHandle<io::Result<(u64, String)>>,
);

/// Decompresses `archive` on a thread; returns the receiving end and the join handle
/// yielding (archive bytes, hex SHA-256). An archive that ends with a seek table
/// (format 2) has its frames decompressed in parallel; any other is one zstd stream.
pub(super) fn spawn_decoder(archive: &ArchiveSource) -> Result<Decoder, ArchiveError> {
    let mut file = archive.open()?;
    let (tx, rx): (SyncSender<Chunk>, Receiver<Chunk>) = sync_channel(16);
    let frames = seek_table(&mut file);
    file.seek(SeekFrom::Start(0))
        .map_err(|e| ArchiveError::io("read", &archive.path, e))?;
    if let Some(frames) = frames {
        let handle = thread::Builder::new()
            .name("tierkeep-decode".into())
            .spawn(move || parallel::decode(file, &frames, &tx))
            .map_err(|e| ArchiveError::stream("spawn decoder", e))?;
        return Ok((rx, handle));
    }
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

/// The largest decompressed frame the parallel decoder accepts from a seek table (the
/// writer's are about 8 MiB at most); a table claiming more is not trusted, and the
/// archive is read as one stream.
const MAX_FRAME: u64 = 64 << 20;

/// The frames listed by the seek table at the end of `file`, when there is one that
/// accounts for the whole file with frames of a sane size.
fn seek_table(file: &mut dyn Plain) -> Option<Vec<(u64, u64)>> {
    let len = file.seek(SeekFrom::End(0)).ok()?;
    let mut foot = [0u8; 9];
    file.seek(SeekFrom::Start(len.checked_sub(9)?)).ok()?;
    file.read_exact(&mut foot).ok()?;
    let table = index::seek_table_bytes(&foot).filter(|&t| t <= len)?;
    let mut tail = vec![0u8; usize::try_from(table).ok()?];
    file.seek(SeekFrom::Start(len - table)).ok()?;
    file.read_exact(&mut tail).ok()?;
    let frames = index::decode_seek_table(&tail).ok()?;
    let total: u64 = frames.iter().map(|f| f.0).sum::<u64>() + table;
    (total == len && frames.iter().all(|f| f.1 <= MAX_FRAME)).then_some(frames)
}

mod parallel {
    //! Format 2's frames decompressed on every core: this thread reads the file in
    //! order (hashing every byte) and hands each frame to a pool; an ordering thread
    //! passes the results on in file order.

    use std::collections::BTreeMap;
    use std::io::{self, Read};
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
    use std::sync::{Arc, Mutex};
    use std::thread;

    use super::Chunk;
    use crate::archive::HashingReader;
    use crate::archive::index;

    type Job = (usize, Vec<u8>, u64, u64);
    type Done = (usize, io::Result<Vec<u8>>, u64);

    pub(super) fn decode(
        file: Box<dyn super::Plain>,
        frames: &[(u64, u64)],
        out: &SyncSender<Chunk>,
    ) -> io::Result<(u64, String)> {
        // Eight decompress faster than any disk writes; more would only hold memory.
        let workers = thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let (job_tx, job_rx) = sync_channel::<Job>(workers * 2);
        let (done_tx, done_rx) = sync_channel::<Done>(workers * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut pool = Vec::new();
        for _ in 0..workers {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            pool.push(thread::spawn(move || work(&rx, &tx)));
        }
        drop(done_tx);
        let out2 = out.clone();
        let order = thread::spawn(move || in_order(&done_rx, &out2));
        let mut reader = HashingReader::new(io::BufReader::with_capacity(1 << 20, file));
        let mut position = 0u64;
        let mut seq = 0usize;
        let mut failed = None;
        for &(bytes, raw) in frames {
            let mut frame = vec![0u8; usize::try_from(bytes).unwrap_or(0)];
            if let Err(e) = reader.read_exact(&mut frame) {
                failed = Some(e);
                break;
            }
            position += bytes;
            if index::is_skippable(&frame) {
                continue;
            }
            if job_tx.send((seq, frame, raw, position)).is_err() {
                break;
            }
            seq += 1;
        }
        drop(job_tx);
        for w in pool {
            let _ = w.join();
        }
        let ordered = order
            .join()
            .unwrap_or(Err(io::Error::other("decoder thread panicked")));
        if let Some(e) = failed {
            let _ = out.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
        ordered?;
        io::copy(&mut reader, &mut io::sink())?;
        Ok(reader.finish())
    }

    fn work(rx: &Mutex<Receiver<Job>>, tx: &SyncSender<Done>) {
        loop {
            let job = match rx.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok((seq, frame, raw, position)) = job else {
                return;
            };
            let cap = usize::try_from(raw).unwrap_or(0);
            let result = zstd::bulk::decompress(&frame, cap).and_then(|data| {
                if data.len() as u64 == raw {
                    Ok(data)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "frame {seq} decompresses to {} bytes, its seek table entry says {raw}",
                            data.len()
                        ),
                    ))
                }
            });
            if tx.send((seq, result, position)).is_err() {
                return;
            }
        }
    }

    fn in_order(rx: &Receiver<Done>, out: &SyncSender<Chunk>) -> io::Result<()> {
        let mut waiting = BTreeMap::new();
        let mut next = 0usize;
        for (seq, result, position) in rx {
            waiting.insert(seq, (result, position));
            while let Some((result, position)) = waiting.remove(&next) {
                next += 1;
                match result {
                    Ok(data) => {
                        if out.send(Ok((data, position))).is_err() {
                            return Err(io::Error::other("extraction stopped"));
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = out.send(Err(e));
                        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                    }
                }
            }
        }
        Ok(())
    }
}

pub(super) struct ChannelReader<'a> {
    pub(super) rx: Receiver<Chunk>,
    pub(super) chunk: Vec<u8>,
    pub(super) pos: usize,
    pub(super) compressed_seen: u64,
    pub(super) progress: &'a mut dyn FnMut(u64),
}

impl<'a> ChannelReader<'a> {
    pub(super) fn new(rx: Receiver<Chunk>, progress: &'a mut dyn FnMut(u64)) -> Self {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            compressed_seen: 0,
            progress,
        }
    }
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
