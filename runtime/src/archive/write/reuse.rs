//! The previous archive a backup may copy frames from: its index, and positioned reads
//! of its frames, each checked against the SHA-256 the index gives before it is used.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::index::{self, Entry, Frame, Index, IndexRef};

/// The previous archive, opened for reuse.
#[derive(Debug)]
pub struct Previous {
    path: PathBuf,
    file: File,
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
        let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let len = usize::try_from(reference.bytes).map_err(|e| e.to_string())?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, reference.offset)
            .map_err(|e| format!("read the index of {}: {e}", path.display()))?;
        let index = index::decode_index(&bytes, reference)
            .map_err(|e| format!("the index of {} is damaged: {e}", path.display()))?;
        let (units, chunked) = units_of(&index);
        Ok(Previous {
            path: path.to_path_buf(),
            file,
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

    /// Frame `n`'s compressed bytes, or `None` (logged) when they cannot be read or do
    /// not match the index: the caller then reads the files instead.
    pub(super) fn read_frame(&self, n: usize) -> Option<Vec<u8>> {
        let f = &self.index.frames[n];
        let mut buf = vec![0u8; usize::try_from(f.bytes).ok()?];
        if let Err(e) = self.file.read_exact_at(&mut buf, f.offset) {
            tracing::warn!(
                archive = %self.path.display(),
                "cannot read frame {n} of the previous backup ({e}); its files are read again"
            );
            return None;
        }
        if hex::encode(Sha256::digest(&buf)) != f.sha256 {
            tracing::warn!(
                archive = %self.path.display(),
                "frame {n} of the previous backup is damaged (its SHA-256 does not match the \
                 index); it is not copied: its files are read again"
            );
            return None;
        }
        Some(buf)
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
