//! The previous archive a backup may copy frames from: its index, and its frames, read
//! ahead ([`super::ahead`]), each checked against the SHA-256 the index gives before it
//! is used.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ahead::{Fetched, FrameReader};
use super::walk::{Item, Walk};
use super::{Skip, item_name, stream_err};
use crate::archive::framer::Framer;
use crate::archive::index::{self, CHUNK, Entry, Frame, Index, IndexRef, Kind};
use crate::archive::{ArchiveError, direct};

/// The previous archive, opened for reuse.
#[derive(Debug)]
pub struct Previous {
    path: PathBuf,
    frames: RefCell<FrameReader>,
    index: Index,
    /// First entry name of each reusable unit → the unit.
    units: HashMap<Vec<u8>, Unit>,
    /// Entry name → entry number (regular files with chunked data only).
    chunked: HashMap<Vec<u8>, usize>,
}

/// A run of frames that only a run of whole entries occupies: a group frame whose first
/// byte is an entry's first byte, and, when its last entry is a chunked file, that
/// file's data frames.
#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub(super) entries: Range<usize>,
    pub(super) frames: Range<usize>,
}

impl Previous {
    /// Opens the archive at `path` and reads its index from `reference`.
    pub fn open(path: &Path, reference: &IndexRef) -> Result<Previous, String> {
        let file = direct::open_read(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let len = usize::try_from(reference.bytes).map_err(|e| e.to_string())?;
        let bytes = direct::read_at(&file, reference.offset, len, &mut Vec::new())
            .map_err(|e| format!("read the index of {}: {e}", path.display()))?;
        let index = index::decode_index(&bytes, reference)
            .map_err(|e| format!("the index of {} is damaged: {e}", path.display()))?;
        let (units, chunked) = units_of(&index);
        let frames = FrameReader::start(file, &index.frames)
            .map_err(|e| format!("start reading {}: {e}", path.display()))?;
        Ok(Previous {
            path: path.to_path_buf(),
            frames: RefCell::new(frames),
            index,
            units,
            chunked,
        })
    }

    pub(super) fn entry(&self, n: usize) -> &Entry {
        &self.index.entries[n]
    }

    pub(super) fn frame(&self, n: usize) -> &Frame {
        &self.index.frames[n]
    }

    /// The unit starting with the entry named `name`.
    pub(super) fn unit(&self, name: &[u8]) -> Option<&Unit> {
        self.units.get(name)
    }

    /// The chunked file entry named `name`.
    pub(super) fn chunked(&self, name: &[u8]) -> Option<&Entry> {
        self.chunked.get(name).map(|&n| &self.index.entries[n])
    }

    /// Says frames `frames` are likely to be asked for next, so they are read ahead.
    pub(super) fn announce(&self, frames: Range<usize>) {
        self.frames.borrow_mut().announce(frames);
    }

    /// Frame `n`'s compressed bytes, or `None` (logged) when they cannot be read or do
    /// not match the index: the caller then reads the files instead.
    pub(super) fn read_frame(&self, n: usize) -> Option<Vec<u8>> {
        match self.frames.borrow_mut().get(n) {
            Fetched::Bytes(bytes) => Some(bytes),
            Fetched::Unreadable(e) => {
                tracing::warn!(
                    archive = %self.path.display(),
                    "cannot read frame {n} of the previous backup ({e}); its files are read again"
                );
                None
            }
            Fetched::Damaged => {
                tracing::warn!(
                    archive = %self.path.display(),
                    "frame {n} of the previous backup is damaged (its SHA-256 does not match the \
                     index); it is not copied: its files are read again"
                );
                None
            }
        }
    }
}

fn units_of(index: &Index) -> (HashMap<Vec<u8>, Unit>, HashMap<Vec<u8>, usize>) {
    let mut units = HashMap::new();
    let mut chunked = HashMap::new();
    let entries = &index.entries;
    for (n, e) in entries.iter().enumerate() {
        if e.chunked && e.kind == index::Kind::File {
            chunked.insert(e.name.0.clone(), n);
        }
    }
    let mut i = 0;
    while i < entries.len() {
        let first = entries[i].frames[0] as usize;
        let mut j = i;
        while j < entries.len() && entries[j].frames[0] as usize == first {
            j += 1;
        }
        let last_frame = entries[j - 1].frames[1] as usize;
        let starts_frame = index
            .frames
            .get(first)
            .is_some_and(|f| f.raw_offset == entries[i].offset);
        // The unit's frames hold nothing else: the next entry starts after them, and
        // the last entry ends where the last frame does.
        let alone = entries
            .get(j)
            .is_none_or(|next| next.frames[0] as usize > last_frame)
            && index
                .frames
                .get(last_frame)
                .is_some_and(|f| f.raw_offset + f.raw_bytes == entries[j - 1].end());
        if starts_frame && alone {
            units.insert(
                entries[i].name.0.clone(),
                Unit {
                    entries: i..j,
                    frames: first..last_frame + 1,
                },
            );
        }
        i = j;
    }
    (units, chunked)
}

/// Writes a large file's data (`remaining` bytes, starting at chunk `from`) in frames
/// of [`CHUNK`] bytes, the last one padded to the block. A chunk whose bytes hash as
/// the previous archive's frame at the same place in the same file is copied from it
/// instead of being compressed.
pub(super) fn write_chunks(
    out: &mut Framer,
    prev: Option<(&Previous, &Entry)>,
    data: &mut dyn Read,
    mut remaining: u64,
    from: u64,
    chunk: &mut Vec<u8>,
) -> Result<(), ArchiveError> {
    let mut k = from;
    while remaining > 0 {
        let n = remaining.min(CHUNK);
        chunk.clear();
        chunk.resize(usize::try_from(n).unwrap_or(usize::MAX), 0);
        let mut filled = 0;
        while filled < chunk.len() {
            match data.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(got) => filled += got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_err(e)),
            }
        }
        // FileBody never ends early; any other reader that does is padded with zeros.
        chunk[filled..].fill(0);
        remaining -= n;
        if remaining == 0 {
            let pad = ((512 - n % 512) % 512) as usize;
            chunk.resize(chunk.len() + pad, 0);
        }
        let same = prev.and_then(|(p, e)| {
            let f = e.frames[0] as usize + 1 + usize::try_from(k).ok()?;
            if f > e.frames[1] as usize {
                return None;
            }
            let frame = p.frame(f);
            let same = frame.raw_bytes == chunk.len() as u64
                && hex::encode(Sha256::digest(&chunk[..])) == frame.raw_sha256;
            if !same {
                return None;
            }
            // The next chunk is likely unchanged too: read it while this file is.
            if f < e.frames[1] as usize {
                p.announce(f + 1..f + 2);
            }
            p.read_frame(f).map(|bytes| (bytes, frame))
        });
        match same {
            Some((bytes, frame)) => out.copy(bytes, frame).map_err(stream_err)?,
            None => out.push_frame(std::mem::take(chunk)).map_err(stream_err)?,
        }
        k += 1;
    }
    Ok(())
}

/// Whether the walk's items from number `at` on would be written exactly as `unit`'s
/// entries (see [`unchanged`]).
pub(super) fn unit_unchanged(
    prev: &Previous,
    walk: &mut Walk,
    skip: &Skip,
    at: usize,
    unit: &Unit,
    links: &HashMap<(u64, u64), Vec<u8>>,
) -> bool {
    let n = unit.entries.len();
    let items = walk.peek(skip, at + n);
    let mut added = HashMap::new();
    items.len() >= at + n
        && items.iter().skip(at).take(n).enumerate().all(|(k, item)| {
            item.as_ref().is_ok_and(|item| {
                unchanged(item, prev.entry(unit.entries.start + k), links, &mut added)
            })
        })
}

/// Announces the frames of the unit that follows the walk's first `after` items when it
/// looks unchanged, so that they are read while the current unit is copied. A hint
/// only: the unit is checked again when its turn comes.
pub(super) fn announce_following(
    prev: &Previous,
    walk: &mut Walk,
    skip: &Skip,
    after: usize,
    links: &HashMap<(u64, u64), Vec<u8>>,
) {
    let Some(Ok(item)) = walk.peek(skip, after + 1).get(after) else {
        return;
    };
    let Some(unit) = item_name(item).and_then(|n| prev.unit(&n)) else {
        return;
    };
    if unit_unchanged(prev, walk, skip, after, unit, links) {
        prev.announce(unit.frames.clone());
    }
}

/// Whether the walk's `item` would be written exactly as the previous archive's entry
/// `e`: same name, kind, size, mtime and ctime to the nanosecond, device, inode, mode,
/// owner and link target. `added` collects the hard-link first names the unit adds.
fn unchanged(
    item: &Item,
    e: &Entry,
    links: &HashMap<(u64, u64), Vec<u8>>,
    added: &mut HashMap<(u64, u64), Vec<u8>>,
) -> bool {
    let (path, md) = match item {
        Item::Dir(p, md) | Item::File(p, md) | Item::Symlink(p, md) => (p, md),
        Item::Skipped(_) => return false,
    };
    let Some(name) = item_name(item) else {
        return false;
    };
    let same = name == e.name.0
        && md.mtime() == e.mtime
        && md.mtime_nsec() == e.mtime_nsec
        && md.ctime() == e.ctime
        && md.ctime_nsec() == e.ctime_nsec
        && md.dev() == e.dev
        && md.ino() == e.ino
        && md.mode() & 0o7777 == e.mode
        && md.uid() == e.uid
        && md.gid() == e.gid;
    if !same {
        return false;
    }
    match item {
        Item::Dir(..) => e.kind == Kind::Dir,
        Item::Symlink(..) => {
            e.kind == Kind::Symlink
                && fs::read_link(path).is_ok_and(|t| {
                    e.link.as_ref().map(|l| l.0.as_slice()) == Some(t.as_os_str().as_bytes())
                })
        }
        Item::File(..) => {
            let key = (md.dev(), md.ino());
            if md.nlink() > 1
                && let Some(first) = links.get(&key).or_else(|| added.get(&key))
            {
                return e.kind == Kind::Hardlink
                    && *first != name
                    && e.link.as_ref().is_some_and(|l| l.0 == *first);
            }
            if e.kind != Kind::File || e.size != md.len() {
                return false;
            }
            if md.nlink() > 1 {
                added.insert(key, name);
            }
            true
        }
        Item::Skipped(_) => false,
    }
}
