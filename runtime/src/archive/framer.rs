//! Cuts the tar stream into independent zstd frames and compresses them on every core.
//!
//! The writer appends tar bytes with [`Write`] and calls [`Framer::cut`] at the
//! boundaries it chooses; each cut frame becomes a job for a pool of compressing
//! threads, or, with [`Framer::copy`], a frame already compressed (reused from the
//! previous archive) passes through unchanged. A single output thread puts the results
//! back in order, hashes them and writes them to the archive file, recording each frame
//! for the index. Jobs and results travel through bounded channels, so memory stays at
//! a few frames per thread however fast the sources are read.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use sha2::{Digest, Sha256};

use super::BackgroundWriter;
use super::index::Frame;

enum Job {
    Compress {
        seq: u32,
        raw: Vec<u8>,
    },
    Copy {
        seq: u32,
        frame: Vec<u8>,
        prev: Frame,
    },
}

struct Done {
    seq: u32,
    frame: Vec<u8>,
    raw_bytes: u64,
    sha256: String,
    raw_sha256: String,
}

type Output = io::Result<(BackgroundWriter, Vec<Frame>)>;

/// The frame cutter; see the module documentation.
pub struct Framer {
    buf: Vec<u8>,
    raw_offset: u64,
    next_seq: u32,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    output: Option<JoinHandle<Output>>,
    /// Compressed bytes copied from a previous archive.
    pub reused_bytes: u64,
}

impl Framer {
    /// Starts `threads` compressors (at least one) at zstd `level` and the output thread
    /// writing to `sink`.
    pub fn new(sink: BackgroundWriter, level: i32, threads: u32) -> io::Result<Framer> {
        let threads = threads.max(1) as usize;
        // At least 8 jobs queued (32 MiB of tar): a walk that copies frames can run on
        // while the compressors work through the files that changed before them.
        let (job_tx, job_rx) = sync_channel::<Job>(threads.max(8));
        let (done_tx, done_rx) = sync_channel::<io::Result<Done>>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            workers.push(
                thread::Builder::new()
                    .name(format!("tierkeep-zstd-{n}"))
                    .spawn(move || compress_jobs(&rx, &tx, level))?,
            );
        }
        drop(done_tx);
        let output = thread::Builder::new()
            .name("tierkeep-frames".into())
            .spawn(move || write_in_order(sink, &done_rx))?;
        Ok(Framer {
            buf: Vec::with_capacity(super::index::GROUP_TARGET * 2),
            raw_offset: 0,
            next_seq: 0,
            jobs: Some(job_tx),
            workers,
            output: Some(output),
            reused_bytes: 0,
        })
    }

    /// Offset in the tar stream of the next byte written.
    pub fn position(&self) -> u64 {
        self.raw_offset + self.buf.len() as u64
    }

    /// Number of the frame the next byte written goes into.
    pub fn frame(&self) -> u32 {
        self.next_seq
    }

    /// Number of the frame holding the last byte written.
    pub fn last_frame(&self) -> u32 {
        if self.buf.is_empty() {
            self.next_seq.saturating_sub(1)
        } else {
            self.next_seq
        }
    }

    /// Bytes written since the last cut.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn send(&mut self, job: Job) -> io::Result<()> {
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if sent {
            self.next_seq += 1;
            Ok(())
        } else {
            // The output thread stopped on an error: finish() reports it.
            self.jobs = None;
            Err(io::Error::other("the archive writer stopped"))
        }
    }

    /// Ends the current frame (nothing happens when it is empty).
    pub fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw = std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(super::index::GROUP_TARGET * 2),
        );
        self.compress(raw)
    }

    /// Adds `raw` as a frame of its own (cuts first), without copying it.
    pub fn push_frame(&mut self, raw: Vec<u8>) -> io::Result<()> {
        self.cut()?;
        self.compress(raw)
    }

    fn compress(&mut self, raw: Vec<u8>) -> io::Result<()> {
        self.raw_offset += raw.len() as u64;
        let seq = self.next_seq;
        self.send(Job::Compress { seq, raw })
    }

    /// Adds `frame`, the compressed bytes of `prev` (already checked against its
    /// SHA-256), as the next frame; cuts first.
    pub fn copy(&mut self, frame: Vec<u8>, prev: &Frame) -> io::Result<()> {
        self.cut()?;
        self.raw_offset += prev.raw_bytes;
        self.reused_bytes += frame.len() as u64;
        let seq = self.next_seq;
        self.send(Job::Copy {
            seq,
            frame,
            prev: prev.clone(),
        })
    }

    /// Cuts the last frame, waits for every frame to be written and returns the sink and
    /// the frames, in order.
    pub fn finish(mut self) -> Output {
        let cut = self.cut();
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let out = match self.output.take().map(JoinHandle::join) {
            Some(Ok(out)) => out,
            _ => Err(io::Error::other("the archive writer thread panicked")),
        };
        // An output error explains a failed cut better than the cut itself.
        let (sink, frames) = out?;
        cut?;
        Ok((sink, frames))
    }
}

impl Write for Framer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn compress_jobs(rx: &Mutex<Receiver<Job>>, tx: &SyncSender<io::Result<Done>>, level: i32) {
    let mut compressor = match zstd::bulk::Compressor::new(level).and_then(|mut c| {
        c.include_checksum(true)?;
        c.include_contentsize(true)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let done = match job {
            Job::Compress { seq, raw } => compressor.compress(&raw).map(|frame| Done {
                seq,
                sha256: hex::encode(Sha256::digest(&frame)),
                frame,
                raw_bytes: raw.len() as u64,
                raw_sha256: hex::encode(Sha256::digest(&raw)),
            }),
            Job::Copy { seq, frame, prev } => Ok(Done {
                seq,
                frame,
                raw_bytes: prev.raw_bytes,
                sha256: prev.sha256,
                raw_sha256: prev.raw_sha256,
            }),
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

fn write_in_order(mut sink: BackgroundWriter, rx: &Receiver<io::Result<Done>>) -> Output {
    let mut waiting: BTreeMap<u32, Done> = BTreeMap::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut offset = 0u64;
    let mut raw_offset = 0u64;
    for done in rx {
        let done = done?;
        waiting.insert(done.seq, done);
        while let Some(done) = waiting.remove(&(frames.len() as u32)) {
            sink.write_all(&done.frame)?;
            let bytes = done.frame.len() as u64;
            frames.push(Frame {
                offset,
                bytes,
                raw_offset,
                raw_bytes: done.raw_bytes,
                sha256: done.sha256,
                raw_sha256: done.raw_sha256,
            });
            offset += bytes;
            raw_offset += done.raw_bytes;
        }
    }
    if !waiting.is_empty() {
        return Err(io::Error::other("a compressed frame went missing"));
    }
    Ok((sink, frames))
}
