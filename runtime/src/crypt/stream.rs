//! Encrypting an archive as it is read, and the layout of an age file's ciphertext.
//!
//! An age file is a text header (ending with a `--- MAC` line), a 16-byte nonce, then the
//! payload: the plaintext in chunks of 64 KiB, each followed by its 16-byte
//! ChaCha20-Poly1305 tag (the last chunk may be shorter; an empty plaintext is one empty
//! chunk). So the plaintext byte `p` sits in chunk `p / 64 KiB`, whose ciphertext starts
//! at `payload + chunk × (64 KiB + 16)`.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

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

/// Plaintext and ciphertext move between the stages in blocks of this size.
const BLOCK: usize = 1 << 20;

/// Blocks waiting between two stages (so about 2 × 4 MiB in memory).
const QUEUE: usize = 4;

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

type Block = io::Result<Vec<u8>>;

/// Buffers handed back by the stage that consumed them, so that a stage reuses warm
/// memory instead of faulting in a fresh megabyte for every block.
struct Recycled {
    rx: Receiver<Vec<u8>>,
}

/// The returning side of a [`Recycled`] pool.
#[derive(Clone)]
struct Giver(SyncSender<Vec<u8>>);

impl Giver {
    fn give(&self, v: Vec<u8>) {
        let _ = self.0.try_send(v);
    }
}

fn recycled() -> (Giver, Recycled) {
    let (tx, rx) = sync_channel(QUEUE + 2);
    (Giver(tx), Recycled { rx })
}

impl Recycled {
    /// A buffer handed back, or a new one of `capacity`.
    fn take(&self, capacity: usize) -> Vec<u8> {
        self.rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }
}

/// Room in a ciphertext block: a block is sent once it holds [`BLOCK`] bytes, and age
/// writes a sealed chunk at a time.
const SEALED_BLOCK: usize = BLOCK + 2 * SEALED_CHUNK as usize;

/// A writer that hands the ciphertext on in blocks, hashing it.
struct BlockSender {
    tx: SyncSender<Block>,
    buf: Vec<u8>,
    hash: Sha256,
    bytes: u64,
    free: Recycled,
}

impl BlockSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut next = self.free.take(SEALED_BLOCK);
        next.clear();
        let block = std::mem::replace(&mut self.buf, next);
        self.hash.update(&block);
        self.bytes += block.len() as u64;
        self.tx
            .send(Ok(block))
            .map_err(|_| io::Error::other("the encrypted upload stopped"))
    }
}

impl Write for BlockSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= BLOCK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a plaintext and yields its age encryption, hashing both sides, in a pipeline
/// of three stages so that the writing side (a disk, an upload) only copies: a thread
/// reads the plaintext and hashes it, a thread encrypts it and hashes the ciphertext,
/// and the reader hands the ciphertext out.
pub struct Encrypting {
    rx: Receiver<Block>,
    give: Giver,
    block: Vec<u8>,
    at: usize,
    yielded: u64,
    plain: Option<JoinHandle<io::Result<(u64, String)>>>,
    encrypt: Option<JoinHandle<Option<(u64, String)>>>,
    done: Arc<OnceLock<Sealed>>,
    /// The first error handed out: every later read repeats it, so that a caller that
    /// reads on never sees an end of file after a failure.
    failed: Option<(io::ErrorKind, String)>,
}

impl std::fmt::Debug for Encrypting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypting")
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

/// Reads `src` in blocks, hashing them, and sends them on: (bytes, hex SHA-256).
fn read_plain(
    mut src: impl Read,
    tx: &SyncSender<Block>,
    free: &Recycled,
) -> io::Result<(u64, String)> {
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let mut block = free.take(BLOCK);
        block.resize(BLOCK, 0);
        let mut filled = 0;
        while filled < BLOCK {
            match src.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            }
        }
        if filled == 0 {
            return Ok((bytes, hex::encode(hash.finalize())));
        }
        block.truncate(filled);
        hash.update(&block);
        bytes += filled as u64;
        if tx.send(Ok(block)).is_err() {
            return Err(io::Error::other("the encrypted upload stopped"));
        }
    }
}

/// Encrypts the blocks of `rx` into `writer`, then finishes the age stream: the
/// ciphertext's (bytes, hex SHA-256).
fn encrypt_blocks(
    rx: &Receiver<Block>,
    mut writer: age::stream::StreamWriter<BlockSender>,
    give: &Giver,
) -> io::Result<(u64, String)> {
    for block in rx {
        let block = block?;
        writer.write_all(&block)?;
        give.give(block);
    }
    let mut sender = writer.finish()?;
    sender.send()?;
    Ok((sender.bytes, hex::encode(sender.hash.finalize())))
}

impl Encrypting {
    /// Starts encrypting `src` to `recipients` (a new file key). The returned cell is set
    /// when the reader reaches the end of the ciphertext.
    pub fn new(
        src: impl Read + Send + 'static,
        recipients: &Recipients,
    ) -> Result<(Self, Arc<OnceLock<Sealed>>), CryptError> {
        let (plain_tx, plain_rx) = sync_channel::<Block>(QUEUE);
        let (sealed_tx, sealed_rx) = sync_channel::<Block>(QUEUE);
        let (plain_give, plain_free) = recycled();
        let (sealed_give, sealed_free) = recycled();
        let writer = recipients
            .encryptor()?
            .wrap_output(BlockSender {
                tx: sealed_tx.clone(),
                buf: Vec::with_capacity(SEALED_BLOCK),
                hash: Sha256::new(),
                bytes: 0,
                free: sealed_free,
            })
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        let spawn = |name: &str| std::thread::Builder::new().name(name.to_owned());
        let plain = spawn("tierkeep-read-plain")
            .spawn(move || read_plain(src, &plain_tx, &plain_free))
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        let encrypt = spawn("tierkeep-encrypt")
            .spawn(
                move || match encrypt_blocks(&plain_rx, writer, &plain_give) {
                    Ok(sealed) => Some(sealed),
                    Err(e) => {
                        let _ = sealed_tx.send(Err(e));
                        None
                    }
                },
            )
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        let done = Arc::new(OnceLock::new());
        Ok((
            Encrypting {
                rx: sealed_rx,
                give: sealed_give,
                block: Vec::new(),
                at: 0,
                yielded: 0,
                plain: Some(plain),
                encrypt: Some(encrypt),
                done: Arc::clone(&done),
                failed: None,
            },
            done,
        ))
    }

    /// The end of the ciphertext: the stages' results, and the totals recorded.
    fn finish(&mut self) -> io::Result<()> {
        let Some(h) = self.encrypt.take() else {
            return Ok(());
        };
        let (sealed_bytes, sealed_sha256) = h
            .join()
            .map_err(|_| io::Error::other("the encrypting thread panicked"))?
            .ok_or_else(|| io::Error::other("encrypting failed"))?;
        if sealed_bytes != self.yielded {
            return Err(io::Error::other(format!(
                "{sealed_bytes} bytes were encrypted and {} handed out",
                self.yielded
            )));
        }
        let Some(h) = self.plain.take() else {
            return Ok(());
        };
        let (plain_bytes, plain_sha256) = h
            .join()
            .map_err(|_| io::Error::other("the reading thread panicked"))??;
        let _ = self.done.set(Sealed {
            plain_bytes,
            plain_sha256,
            sealed_bytes,
            sealed_sha256,
        });
        Ok(())
    }
}

impl Encrypting {
    /// The next ciphertext bytes into `buf` (0 at the end, once every stage succeeded).
    fn read_next(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            match self.rx.recv() {
                Ok(block) => {
                    let used = std::mem::replace(&mut self.block, block?);
                    self.give.give(used);
                    self.at = 0;
                }
                Err(_) => {
                    self.finish()?;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.yielded += n as u64;
        self.at += n;
        Ok(n)
    }
}

impl Read for Encrypting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, text)) = &self.failed {
            return Err(io::Error::new(*kind, text.clone()));
        }
        self.read_next(buf).inspect_err(|e| {
            self.failed = Some((e.kind(), e.to_string()));
        })
    }
}
