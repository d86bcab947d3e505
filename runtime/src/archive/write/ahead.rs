//! Reads the previous archive's frames for reuse: ahead of the writer, on a thread of
//! its own, each checked against the SHA-256 its index gives.
//!
//! A backup that copies most of its frames spends its time reading and hashing them. So
//! the writer announces the frames it expects to copy (the unit after the one it copies
//! now, when that one looks unchanged too; the next chunk of a large file), and a reader
//! thread reads them in that order and hands them over through a short queue, so the
//! disk reads the next frame while the writer hashes this one, walks the sources and
//! compresses what changed. A frame asked for without being announced, or out of order,
//! is read on the spot. Only announced frames are read ahead, so a backup after many
//! changes reads little it does not use.
//!
//! Reads use direct I/O (`O_DIRECT`) where the file system takes it, like the archive
//! writer: the frames go from the disk into one reused buffer, with no fresh page-cache
//! pages to fill (on a virtual machine with lazily backed memory, reading 575 MB through
//! the page cache cost 1.2–1.5 s of CPU, directly about 0.05 s). A file system that
//! refuses direct reads gets buffered ones.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::archive::direct::read_at;
use crate::archive::index::Frame;

/// Frames read ahead and not yet taken (besides the one being read).
const AHEAD: usize = 3;

/// A frame as read: its bytes, or why they cannot be copied.
pub(super) enum Fetched {
    /// The bytes, matching the index's SHA-256.
    Bytes(Vec<u8>),
    /// The read failed.
    Unreadable(io::Error),
    /// The bytes do not match the index's SHA-256.
    Damaged,
}

/// Where one frame is and what it must hash to.
#[derive(Debug, Clone)]
struct Place {
    offset: u64,
    bytes: u64,
    sha256: String,
}

/// The frame reader; see the module documentation.
pub(super) struct FrameReader {
    file: Arc<File>,
    places: Arc<Vec<Place>>,
    /// Frames announced and not yet read; `None` when the reader is to stop.
    queue: Arc<(Mutex<Option<VecDeque<usize>>>, Condvar)>,
    /// One past the highest frame announced.
    announced: usize,
    /// Frames announced and not yet received from the reader thread.
    pending: usize,
    rx: Option<Receiver<(usize, io::Result<Vec<u8>>)>>,
    /// A frame the reader thread sent past the one asked for.
    stash: Option<(usize, io::Result<Vec<u8>>)>,
    scratch: Vec<u8>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("frames", &self.places.len())
            .finish_non_exhaustive()
    }
}

fn fetch(file: &File, place: &Place, scratch: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let len = usize::try_from(place.bytes).map_err(io::Error::other)?;
    read_at(file, place.offset, len, scratch)
}

/// Checks a frame as read against the SHA-256 the index gives.
fn check(place: &Place, read: io::Result<Vec<u8>>) -> Fetched {
    match read {
        Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == place.sha256 => Fetched::Bytes(bytes),
        Ok(_) => Fetched::Damaged,
        Err(e) => Fetched::Unreadable(e),
    }
}

impl FrameReader {
    /// Starts reading `frames` of `file` ahead.
    pub(super) fn start(file: File, frames: &[Frame]) -> io::Result<FrameReader> {
        let file = Arc::new(file);
        let places: Arc<Vec<Place>> = Arc::new(
            frames
                .iter()
                .map(|f| Place {
                    offset: f.offset,
                    bytes: f.bytes,
                    sha256: f.sha256.clone(),
                })
                .collect(),
        );
        let queue = Arc::new((Mutex::new(Some(VecDeque::new())), Condvar::new()));
        let (tx, rx) = sync_channel(AHEAD);
        let thread = {
            let (file, places, queue) = (file.clone(), places.clone(), queue.clone());
            std::thread::Builder::new()
                .name("tierkeep-reuse".into())
                .spawn(move || {
                    let mut scratch = Vec::new();
                    while let Some(k) = next_announced(&queue) {
                        let fetched = match places.get(k) {
                            Some(place) => fetch(&file, place, &mut scratch),
                            None => Err(io::Error::other("no such frame")),
                        };
                        if tx.send((k, fetched)).is_err() {
                            return;
                        }
                    }
                })?
        };
        Ok(FrameReader {
            file,
            places,
            queue,
            announced: 0,
            pending: 0,
            rx: Some(rx),
            stash: None,
            scratch: Vec::new(),
            thread: Some(thread),
        })
    }

    /// Says the writer expects to ask for `frames` (in order) soon; frames at or before
    /// one announced already are left out.
    pub(super) fn announce(&mut self, frames: Range<usize>) {
        let from = frames.start.max(self.announced);
        let to = frames.end.min(self.places.len());
        if from >= to {
            return;
        }
        let (lock, cv) = &*self.queue;
        if let Ok(mut q) = lock.lock()
            && let Some(q) = q.as_mut()
        {
            q.extend(from..to);
            self.announced = to;
            self.pending += to - from;
            cv.notify_one();
        }
    }

    /// Frame `n`, checked: from the reader thread when it was announced, else read now.
    pub(super) fn get(&mut self, n: usize) -> Fetched {
        self.announce(n..n + 1);
        loop {
            let next = match self.stash.take() {
                Some(s) => s,
                None if self.pending > 0 => match self.rx.as_ref().and_then(|rx| rx.recv().ok()) {
                    Some(got) => {
                        self.pending -= 1;
                        got
                    }
                    None => {
                        self.pending = 0;
                        break;
                    }
                },
                None => break,
            };
            match next {
                (k, read) if k == n => return check(&self.places[k], read),
                (k, _) if k < n => {}
                later => {
                    self.stash = Some(later);
                    break;
                }
            }
        }
        match self.places.get(n) {
            Some(place) => check(place, fetch(&self.file, place, &mut self.scratch)),
            None => Fetched::Unreadable(io::Error::other("no such frame")),
        }
    }
}

/// The reader thread's next frame: waits for one to be announced; `None` once the
/// reader is dropped.
fn next_announced(queue: &(Mutex<Option<VecDeque<usize>>>, Condvar)) -> Option<usize> {
    let (lock, cv) = queue;
    let mut q = lock.lock().ok()?;
    loop {
        match q.as_mut()?.pop_front() {
            Some(k) => return Some(k),
            None => q = cv.wait(q).ok()?,
        }
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        // Closing both queues stops the thread at its next frame or announcement.
        self.rx = None;
        let (lock, cv) = &*self.queue;
        if let Ok(mut q) = lock.lock() {
            *q = None;
        }
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::archive::direct::open_read as open;

    /// A file of `sizes.len()` frames of the given sizes, each of its own byte value, and
    /// their places.
    fn frames(dir: &Path, sizes: &[usize]) -> (std::path::PathBuf, Vec<Frame>, Vec<Vec<u8>>) {
        let path = dir.join("archive");
        let mut all = Vec::new();
        let mut frames = Vec::new();
        let mut bodies = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..n)
                .map(|i| (i as u8) ^ (k as u8).wrapping_mul(37))
                .collect();
            frames.push(Frame {
                offset: all.len() as u64,
                bytes: n as u64,
                raw_offset: 0,
                raw_bytes: 0,
                sha256: hex::encode(Sha256::digest(&body)),
                raw_sha256: String::new(),
            });
            all.extend_from_slice(&body);
            bodies.push(body);
        }
        std::fs::write(&path, &all).unwrap();
        (path, frames, bodies)
    }

    fn bytes(f: Fetched) -> Vec<u8> {
        match f {
            Fetched::Bytes(b) => b,
            Fetched::Unreadable(e) => panic!("unreadable: {e}"),
            Fetched::Damaged => panic!("damaged"),
        }
    }

    #[test]
    fn announced_skipped_repeated_and_unannounced_frames_all_come_back_right() {
        let dir = tempfile::tempdir().unwrap();
        // Sizes that start and end frames off the 4096 alignment, one larger than a
        // direct-I/O window.
        let (path, places, bodies) =
            frames(dir.path(), &[100, 5000, 4096, 1, 70_000, 3, 9000, 123_457]);
        let mut r = FrameReader::start(open(&path).unwrap(), &places).unwrap();
        // In order, announced ahead.
        r.announce(0..3);
        assert_eq!(bytes(r.get(0)), bodies[0]);
        assert_eq!(bytes(r.get(1)), bodies[1]);
        // Announced, then skipped over: frames 2 and 3 are read and dropped.
        r.announce(3..6);
        assert_eq!(bytes(r.get(4)), bodies[4]);
        // Asked for after they were dropped: read on the spot, while frame 5, read
        // ahead, waits for its turn (nothing may wait for the reader thread here).
        assert_eq!(bytes(r.get(2)), bodies[2]);
        assert_eq!(bytes(r.get(3)), bodies[3]);
        assert_eq!(bytes(r.get(5)), bodies[5]);
        // Not announced at all.
        assert_eq!(bytes(r.get(7)), bodies[7]);
        assert_eq!(bytes(r.get(6)), bodies[6]);
        assert_eq!(bytes(r.get(6)), bodies[6]);
        assert!(matches!(r.get(8), Fetched::Unreadable(_)));
    }

    #[test]
    fn a_damaged_or_missing_frame_is_refused_and_the_others_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let (path, places, bodies) = frames(dir.path(), &[10_000, 20_000, 30_000]);
        // Flip a byte in frame 1 and cut the file inside frame 2.
        let mut all = std::fs::read(&path).unwrap();
        all[10_000 + 7] ^= 1;
        all.truncate(10_000 + 20_000 + 100);
        std::fs::write(&path, &all).unwrap();
        let mut r = FrameReader::start(open(&path).unwrap(), &places).unwrap();
        r.announce(0..3);
        assert_eq!(bytes(r.get(0)), bodies[0]);
        assert!(matches!(r.get(1), Fetched::Damaged));
        assert!(matches!(r.get(2), Fetched::Unreadable(_)));
        // The same frames on the spot, unannounced.
        assert!(matches!(r.get(1), Fetched::Damaged));
        assert_eq!(bytes(r.get(0)), bodies[0]);
    }
}
