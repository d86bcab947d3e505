//! Partial reads of a format 2 archive: the entries under one path, taken from only the
//! frames that hold them.
//!
//! The index says which frames to read; the index itself is trusted only as far as its
//! SHA-256 in the manifest goes, and never for safety: every frame read is checked
//! against the SHA-256s of its compressed and decompressed bytes, the selected entries'
//! bytes are put together into a small tar stream, its headers are compared with the
//! index (names, kinds, sizes) before anything is written, and the stream then goes
//! through the same extractor and safety rules as a full restore.

use std::ops::Range;

use sha2::{Digest, Sha256};

use super::{ExtractOptions, ExtractSummary, Extractor};
use crate::archive::ArchiveError;
use crate::archive::index::{Entry, Index, Kind};

/// The entries to read for one path and the frames holding them.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Entry numbers, in stream order: those at or under the path, and the first names
    /// of hard links among them that point outside it.
    pub entries: Vec<usize>,
    /// Runs of consecutive frames to read.
    pub runs: Vec<Range<usize>>,
    /// Compressed bytes of those frames.
    pub bytes: u64,
}

/// Whether entry `name` (stored form, no leading `/`) is `only` or below it.
pub fn under(name: &[u8], only: &[u8]) -> bool {
    let name = name.strip_suffix(b"/").unwrap_or(name);
    let only = only.strip_suffix(b"/").unwrap_or(only);
    name == only || (name.starts_with(only) && name.get(only.len()) == Some(&b'/'))
}

/// The entries at or under `only` (`None`: all) and the frames to read for them.
pub fn select(index: &Index, only: Option<&[u8]>) -> Selection {
    let mut chosen: Vec<usize> = (0..index.entries.len())
        .filter(|&n| only.is_none_or(|o| under(&index.entries[n].name.0, o)))
        .collect();
    // A hard link needs its first name in the model, as in a full read.
    let targets: Vec<usize> = chosen
        .iter()
        .filter_map(|&n| {
            let e = &index.entries[n];
            let link = e.link.as_ref().filter(|_| e.kind == Kind::Hardlink)?;
            index.entries[..n].iter().rposition(|t| t.name.0 == link.0)
        })
        .collect();
    chosen.extend(targets);
    chosen.sort_unstable();
    chosen.dedup();
    let mut runs: Vec<Range<usize>> = Vec::new();
    for &n in &chosen {
        let [a, b] = index.entries[n].frames;
        let (a, b) = (a as usize, b as usize + 1);
        match runs.last_mut() {
            Some(r) if a <= r.end => r.end = r.end.max(b),
            _ => runs.push(a..b),
        }
    }
    let bytes = runs
        .iter()
        .flat_map(|r| &index.frames[r.clone()])
        .map(|f| f.bytes)
        .sum();
    Selection {
        entries: chosen,
        runs,
        bytes,
    }
}

/// The decompressed bytes of a run of frames.
#[derive(Debug)]
pub struct Decoded {
    /// Offset of the first byte in the tar stream.
    pub raw_offset: u64,
    /// The bytes.
    pub raw: Vec<u8>,
}

fn damaged(what: String) -> ArchiveError {
    ArchiveError::Stream {
        action: "read",
        cause: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    }
}

/// Checks and decompresses the frames `run`, whose compressed bytes are `data`.
pub fn decode_run(index: &Index, run: Range<usize>, data: &[u8]) -> Result<Decoded, ArchiveError> {
    let frames = &index.frames[run.clone()];
    let total: u64 = frames.iter().map(|f| f.bytes).sum();
    if data.len() as u64 != total {
        return Err(damaged(format!(
            "frames {}..{} should be {total} bytes, {} were read",
            run.start,
            run.end,
            data.len()
        )));
    }
    let raw_total: u64 = frames.iter().map(|f| f.raw_bytes).sum();
    let mut raw = Vec::with_capacity(usize::try_from(raw_total).unwrap_or(0));
    let mut at = 0usize;
    for (k, f) in frames.iter().enumerate() {
        let n = run.start + k;
        let len = usize::try_from(f.bytes).unwrap_or(usize::MAX);
        let bytes = &data[at..at + len];
        at += len;
        if hex::encode(Sha256::digest(bytes)) != f.sha256 {
            return Err(damaged(format!(
                "frame {n} does not match its SHA-256 in the index: the copy is corrupted"
            )));
        }
        let cap = usize::try_from(f.raw_bytes).unwrap_or(usize::MAX);
        let out = zstd::bulk::decompress(bytes, cap)
            .map_err(|e| damaged(format!("frame {n} does not decompress: {e}")))?;
        if out.len() as u64 != f.raw_bytes || hex::encode(Sha256::digest(&out)) != f.raw_sha256 {
            return Err(damaged(format!(
                "frame {n} decompresses to bytes that do not match the index"
            )));
        }
        raw.extend_from_slice(&out);
    }
    Ok(Decoded {
        raw_offset: frames.first().map_or(0, |f| f.raw_offset),
        raw,
    })
}

/// The tar stream of the selected entries (each from its first header to the end of
/// its padded data), with the end marker.
pub fn assemble(index: &Index, sel: &Selection, runs: &[Decoded]) -> Result<Vec<u8>, ArchiveError> {
    let mut out = Vec::new();
    for &n in &sel.entries {
        let e = &index.entries[n];
        let run = runs
            .iter()
            .find(|d| d.raw_offset <= e.offset && e.end() <= d.raw_offset + d.raw.len() as u64)
            .ok_or_else(|| damaged(format!("entry {n} is not in the frames read")))?;
        let a = usize::try_from(e.offset - run.raw_offset).unwrap_or(usize::MAX);
        let b = usize::try_from(e.end() - run.raw_offset).unwrap_or(usize::MAX);
        out.extend_from_slice(&run.raw[a..b]);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

/// Compares the headers of `tar` with the index entries it was assembled from: the same
/// names, kinds and sizes, in order, and nothing else.
pub fn check_headers(tar: &[u8], expected: &[&Entry]) -> Result<(), ArchiveError> {
    let lie = |what: String| ArchiveError::Index(format!("it disagrees with the archive: {what}"));
    let mut ar = tar::Archive::new(tar);
    let unreadable =
        |e: std::io::Error| lie(format!("the bytes it points at are not tar entries ({e})"));
    let entries = ar.entries().map_err(unreadable)?;
    let mut seen = 0usize;
    for entry in entries {
        let entry = entry.map_err(unreadable)?;
        let Some(want) = expected.get(seen) else {
            return Err(lie(
                "the frames hold more entries than the index says".into()
            ));
        };
        let name = entry.path_bytes();
        let Some(kind) = Kind::of(entry.header().entry_type()) else {
            return Err(lie(format!(
                "an entry of type {:?} where the index has one",
                entry.header().entry_type()
            )));
        };
        let trim = |n: &[u8]| n.strip_suffix(b"/").unwrap_or(n).to_vec();
        if trim(&name) != trim(&want.name.0) || kind != want.kind || entry.size() != want.size {
            return Err(lie(format!(
                "the index has {} `{}` ({} bytes) where the archive has {} `{}` ({} bytes)",
                want.kind.as_str(),
                String::from_utf8_lossy(&want.name.0),
                want.size,
                kind.as_str(),
                String::from_utf8_lossy(&name),
                entry.size()
            )));
        }
        seen += 1;
    }
    if seen != expected.len() {
        return Err(lie(format!(
            "{} entries were expected in the frames, {seen} are there",
            expected.len()
        )));
    }
    Ok(())
}

/// Extracts an assembled tar stream (see [`assemble`]) into `opts.target`, with every
/// rule of a full restore; `opts.only` selects what is written.
pub fn extract_assembled(
    tar: &[u8],
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractSummary, ArchiveError> {
    let mut ex = Extractor::new(Some(super::disk_for(opts)?));
    ex.run(tar).and_then(|()| ex.finish_dirs())?;
    progress(tar.len() as u64);
    if ex.summary.entries == 0 {
        return Err(ArchiveError::PathNotInBackup(
            opts.only
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ));
    }
    Ok(ex.summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::index::{Frame, Name};

    fn entry(name: &str, kind: Kind, link: Option<&str>, frames: [u32; 2], at: u64) -> Entry {
        Entry {
            name: Name(name.as_bytes().to_vec()),
            kind,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            ctime: 0,
            ctime_nsec: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            dev: 0,
            ino: 0,
            link: link.map(|l| Name(l.as_bytes().to_vec())),
            offset: at,
            data: at + 512,
            frames,
            chunked: false,
        }
    }

    fn frame(n: u64) -> Frame {
        Frame {
            offset: n * 100,
            bytes: 100,
            raw_offset: n * 4096,
            raw_bytes: 4096,
            sha256: String::new(),
            raw_sha256: String::new(),
        }
    }

    #[test]
    fn under_means_the_path_or_below_it() {
        assert!(under(b"srv/app", b"srv/app"));
        assert!(under(b"srv/app/", b"srv/app"));
        assert!(under(b"srv/app/x", b"srv/app/"));
        assert!(!under(b"srv/apple", b"srv/app"));
        assert!(!under(b"srv", b"srv/app"));
    }

    #[test]
    fn a_selection_takes_the_frames_of_its_entries_and_of_hard_link_targets() {
        let index = Index {
            frames: (0..4).map(frame).collect(),
            entries: vec![
                entry("a/first", Kind::File, None, [0, 0], 0),
                entry("b/", Kind::Dir, None, [1, 1], 4096),
                entry("b/x", Kind::File, None, [2, 2], 8192),
                entry("b/link", Kind::Hardlink, Some("a/first"), [3, 3], 12288),
            ],
        };
        let sel = select(&index, Some(b"b"));
        assert_eq!(sel.entries, vec![0, 1, 2, 3]);
        assert_eq!(sel.runs, vec![0..4]);
        let sel = select(&index, Some(b"b/x"));
        assert_eq!(sel.entries, vec![2]);
        assert_eq!(sel.runs, vec![2..3]);
        assert_eq!(sel.bytes, 100);
        assert!(select(&index, Some(b"c")).entries.is_empty());
    }
}
