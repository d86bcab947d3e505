//! Streams source trees into a format 2 archive file: a tar stream cut into independent
//! zstd frames, compressed on every core, followed by the entry index and the seek table
//! (see [`super::index`]).
//!
//! Entry names are the sources' absolute paths without the leading `/`, as GNU tar
//! writes them. Headers are GNU (binary numbers for large sizes and ids, `L`/`K` records
//! for long or non-UTF-8 names, written byte for byte); a PAX `x` record before an entry
//! carries its mtime to the nanosecond. Regular files, directories (empty ones too),
//! symlinks and hard links are stored; sockets, FIFOs and devices are skipped and
//! reported. A file that changes, shrinks or vanishes while it is read is reported in the
//! result; a shrunk file is padded with zeros so the stream stays valid.
//!
//! # Reuse
//!
//! Given the previous archive of the same sources ([`WriteOptions::previous`]), the
//! writer copies its frames byte for byte instead of reading and compressing files:
//!
//! - a *unit* (a group frame starting with an entry, plus the data frames of a large
//!   file it ends with) is copied when every entry in it is unchanged: same name, kind,
//!   size, mtime and ctime to the nanosecond, device, inode, mode, owner and link target
//!   (hard links: the same first name). To keep the frames aligned with the previous
//!   archive after a change, a group frame is also cut before any entry that starts a
//!   unit there;
//! - a changed large file's chunk whose bytes hash as the previous archive's chunk at
//!   the same place is copied (the file is read, but only changed chunks compressed).
//!
//! Every copied frame is checked against the SHA-256 the previous index gives; a frame
//! that does not match is never copied: its files are read again. The result does not
//! depend on the previous archive: it is as complete and independent as any other.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use self::walk::{Item, Walk};
use super::framer::Framer;
use super::index::{
    CHUNK, Entry, GROUP_TARGET, Index, IndexRef, Kind, Name, encode_index, encode_seek_table,
};
use super::{ArchiveError, BackgroundWriter};

use self::records::{FileBody, copy_body, write_headers};
pub use self::reuse::Previous;
use self::reuse::{announce_following, unit_unchanged, write_chunks};

mod ahead;
mod records;
mod reuse;
mod walk;

/// What to put into an archive.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Absolute source paths (files or directories).
    pub sources: Vec<PathBuf>,
    /// Glob patterns matched against each entry's absolute path and its file name.
    pub exclude: Vec<String>,
    /// Absolute paths never to descend into (the data and zone directories).
    pub skip_paths: Vec<PathBuf>,
    /// zstd level (3 matches `zstd -3`).
    pub level: i32,
    /// zstd worker threads (0 = one).
    pub threads: u32,
    /// The previous archive of the same sources to copy unchanged frames from.
    pub previous: Option<PreviousArchive>,
}

/// A previous archive a backup may copy frames from.
#[derive(Debug, Clone)]
pub struct PreviousArchive {
    /// The archive file (in the black box).
    pub path: PathBuf,
    /// Where its index is, from its manifest.
    pub index: IndexRef,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct WriteSummary {
    /// Entries in the tar stream.
    pub entries: u64,
    /// Sum of regular file sizes.
    pub logical_bytes: u64,
    /// Archive size.
    pub archive_bytes: u64,
    /// Hex SHA-256 of the archive.
    pub archive_sha256: String,
    /// Changed, vanished or skipped files.
    pub warnings: Vec<String>,
    /// Where the entry index is.
    pub index: Option<IndexRef>,
    /// Compressed bytes copied from the previous archive.
    pub reused_bytes: u64,
}

/// Compiles exclude patterns.
pub fn compile_excludes(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("exclude pattern `{p}`: {e}"))?;
        b.add(g);
    }
    b.build().map_err(|e| e.to_string())
}

/// What a walk leaves out: exclude globs (matched before `lstat`), and the skip
/// directories by identity (dev, inode), resolved once, so a skip directory reached by
/// another name (a bind mount, a symlinked parent) is left out too.
struct Skip {
    excludes: GlobSet,
    dirs: Vec<(u64, u64)>,
}

impl Skip {
    fn new(opts: &WriteOptions) -> Result<Skip, String> {
        Ok(Skip {
            excludes: compile_excludes(&opts.exclude)?,
            dirs: opts
                .skip_paths
                .iter()
                .filter_map(|p| fs::metadata(p).ok())
                .map(|m| (m.dev(), m.ino()))
                .collect(),
        })
    }

    fn by_name(&self, path: &Path) -> bool {
        !self.excludes.is_empty()
            && (self.excludes.is_match(path)
                || path.file_name().is_some_and(|n| self.excludes.is_match(n)))
    }

    fn by_identity(&self, md: &Metadata) -> bool {
        md.is_dir() && self.dirs.contains(&(md.dev(), md.ino()))
    }
}

/// Counts the bytes and entries a backup of `opts` would read (for progress bars).
pub fn estimate(opts: &WriteOptions) -> (u64, u64) {
    let Ok(skip) = Skip::new(opts) else {
        return (0, 0);
    };
    let mut bytes = 0;
    let mut entries = 0;
    let mut stack: Vec<PathBuf> = opts.sources.clone();
    while let Some(p) = stack.pop() {
        if skip.by_name(&p) {
            continue;
        }
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if skip.by_identity(&md) {
            continue;
        }
        entries += 1;
        if md.is_file() {
            bytes += md.len();
        } else if md.is_dir()
            && let Ok(rd) = fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    (bytes, entries)
}

/// Writes an archive of `opts.sources` to `out`, calling `progress` with the number of
/// source bytes read (or copied from the previous archive) as it goes.
pub fn write_archive(
    opts: &WriteOptions,
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<WriteSummary, ArchiveError> {
    let skip = Skip::new(opts).map_err(|e| ArchiveError::Stream {
        action: "setup",
        cause: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let previous = opts.previous.as_ref().and_then(|p| {
        Previous::open(&p.path, &p.index)
            .inspect_err(|e| {
                tracing::warn!("not reusing the previous backup: {e}; every file is read");
            })
            .ok()
    });
    let sink = BackgroundWriter::create(out).map_err(|e| ArchiveError::io("create", out, e))?;
    let framer = Framer::new(sink, opts.level, opts.threads)
        .map_err(|e| ArchiveError::stream("start the compressors", e))?;
    let mut w = Writer {
        framer,
        skip,
        walk: Walk::new(&opts.sources),
        links: HashMap::new(),
        summary: WriteSummary::default(),
        buf: vec![0u8; 1 << 20],
        chunk: Vec::new(),
        progress: Some(progress),
        previous,
        entries: Vec::new(),
    };
    let written = w.run().and_then(|()| {
        // The tar end marker, in a frame of its own so that the last group stays
        // reusable.
        w.framer.cut().map_err(stream_err)?;
        w.framer.write_all(&[0u8; 1024]).map_err(stream_err)
    });
    let Writer {
        framer,
        entries,
        mut summary,
        ..
    } = w;
    summary.reused_bytes = framer.reused_bytes;
    // When the output failed (a full disk, say), the walk only saw "the archive writer
    // stopped": the output's error is the cause to report.
    let (mut sink, frames) = match (written, framer.finish()) {
        (_, Err(e)) => return Err(ArchiveError::io("write", out, e)),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(finished)) => finished,
    };
    let data_end = frames.last().map_or(0, |f| f.offset + f.bytes);
    let index = Index { frames, entries };
    let index_bytes = encode_index(&index).map_err(|e| ArchiveError::stream("index", e))?;
    let mut sizes: Vec<(u64, u64)> = index
        .frames
        .iter()
        .map(|f| (f.bytes, f.raw_bytes))
        .collect();
    sizes.push((index_bytes.len() as u64, 0));
    let table = encode_seek_table(&sizes).map_err(|e| ArchiveError::stream("seek table", e))?;
    sink.write_all(&index_bytes)
        .and_then(|()| sink.write_all(&table))
        .map_err(|e| ArchiveError::io("write", out, e))?;
    let (_file, bytes, sha) = sink
        .finish()
        .map_err(|e| ArchiveError::io("write", out, e))?;
    summary.index = Some(IndexRef {
        offset: data_end,
        bytes: index_bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&index_bytes)),
    });
    summary.archive_bytes = bytes;
    summary.archive_sha256 = sha;
    Ok(summary)
}

fn stream_err(e: io::Error) -> ArchiveError {
    ArchiveError::stream("write", e)
}

struct Writer<'a> {
    framer: Framer,
    skip: Skip,
    walk: Walk,
    /// (dev, inode) of files with several links → the entry name written first.
    links: HashMap<(u64, u64), Vec<u8>>,
    summary: WriteSummary,
    buf: Vec<u8>,
    /// One chunk of a large file.
    chunk: Vec<u8>,
    progress: Option<&'a mut dyn FnMut(u64)>,
    previous: Option<Previous>,
    entries: Vec<Entry>,
}

/// The entry name of an absolute path: the path without its leading `/`.
fn entry_name(path: &Path) -> Vec<u8> {
    let bytes = path.as_os_str().as_bytes();
    let trimmed = bytes
        .iter()
        .position(|&b| b != b'/')
        .map_or(&bytes[bytes.len()..], |i| &bytes[i..]);
    trimmed.to_vec()
}

/// The entry name an item of the walk gets (`None`: it gets no entry).
fn item_name(item: &Item) -> Option<Vec<u8>> {
    match item {
        Item::Dir(p, _) => {
            let mut name = entry_name(p);
            if name.is_empty() {
                return None;
            }
            name.push(b'/');
            Some(name)
        }
        Item::File(p, _) | Item::Symlink(p, _) => Some(entry_name(p)),
        Item::Skipped(_) => None,
    }
}

impl Writer<'_> {
    fn warn(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.summary.warnings.push(msg);
    }

    fn run(&mut self) -> Result<(), ArchiveError> {
        loop {
            if self.reuse_unit()? {
                continue;
            }
            let Some(item) = self.walk.next(&self.skip) else {
                return Ok(());
            };
            match item? {
                Item::Dir(p, md) => self.add_dir(&p, &md)?,
                Item::File(p, md) => self.add_file(&p, &md)?,
                Item::Symlink(p, md) => self.add_symlink(&p, &md)?,
                Item::Skipped(warning) => self.warn(warning),
            }
        }
    }

    /// When the next entries are, unchanged, a unit of the previous archive, copies its
    /// frames instead of reading the files. Returns whether it did.
    fn reuse_unit(&mut self) -> Result<bool, ArchiveError> {
        let Some(prev) = self.previous.as_ref() else {
            return Ok(false);
        };
        let Some(Ok(first)) = self.walk.peek(&self.skip, 1).front() else {
            return Ok(false);
        };
        let Some(unit) = item_name(first).and_then(|n| prev.unit(&n)).cloned() else {
            return Ok(false);
        };
        let n = unit.entries.len();
        if !unit_unchanged(prev, &mut self.walk, &self.skip, 0, &unit, &self.links) {
            return Ok(false);
        }
        prev.announce(unit.frames.clone());
        announce_following(prev, &mut self.walk, &self.skip, n, &self.links);
        let Some(group) = prev.read_frame(unit.frames.start) else {
            return Ok(false);
        };
        self.framer.cut().map_err(stream_err)?;
        let base_frame = self.framer.frame();
        let shift = |x: u64| x - prev.frame(unit.frames.start).raw_offset + self.framer.position();
        let renumber = |f: u32| f - unit.frames.start as u32 + base_frame;
        let mut copied = Vec::with_capacity(n);
        for k in unit.entries.clone() {
            let e = prev.entry(k);
            let mut e2 = e.clone();
            e2.offset = shift(e.offset);
            e2.data = shift(e.data);
            e2.frames = [renumber(e.frames[0]), renumber(e.frames[1])];
            copied.push(e2);
        }
        self.framer
            .copy(group, prev.frame(unit.frames.start))
            .map_err(stream_err)?;
        let mut last_path = None;
        for e in &copied {
            let Some(Ok(item)) = self.walk.next(&self.skip) else {
                unreachable!("peeked items are there");
            };
            if let Item::File(p, md) = item {
                if e.kind == Kind::File {
                    self.summary.logical_bytes += e.size;
                    if let Some(p) = self.progress.as_mut() {
                        p(e.size);
                    }
                    if md.nlink() > 1 {
                        self.links.insert((md.dev(), md.ino()), e.name.0.clone());
                    }
                }
                last_path = Some(p);
            }
            self.summary.entries += 1;
        }
        let last = copied.last().cloned();
        self.entries.extend(copied);
        // A chunked file's data frames, each checked; from a damaged one on, the file
        // is read again.
        for f in unit.frames.start + 1..unit.frames.end {
            if let Some(bytes) = prev.read_frame(f) {
                self.framer.copy(bytes, prev.frame(f)).map_err(stream_err)?;
                continue;
            }
            let (Some(e), Some(path)) = (last.as_ref(), last_path.as_ref()) else {
                break;
            };
            let chunk = (f - unit.frames.start - 1) as u64;
            self.reread_chunks(path, e, chunk)?;
            break;
        }
        Ok(true)
    }

    /// Writes a chunked file's data from chunk `from` on, read from `path` (after a
    /// damaged frame of the previous archive).
    fn reread_chunks(&mut self, path: &Path, e: &Entry, from: u64) -> Result<(), ArchiveError> {
        let start = from * CHUNK;
        let remaining = e.size - start;
        let opened = File::open(path).and_then(|mut f| {
            io::Seek::seek(&mut f, io::SeekFrom::Start(start))?;
            Ok(f)
        });
        let mut file = match opened {
            Ok(f) => f,
            Err(err) => {
                self.warn(format!(
                    "{}: cannot be read again after a damaged frame of the previous backup \
                     ({err}); the archived copy is padded with zeros from byte {start}",
                    path.display()
                ));
                let mut zeros = io::repeat(0).take(remaining);
                return write_chunks(
                    &mut self.framer,
                    None,
                    &mut zeros,
                    remaining,
                    from,
                    &mut self.chunk,
                );
            }
        };
        let mut reader = FileBody {
            file: &mut file,
            remaining,
            short: false,
            error: None,
            progress: &mut |_| {},
        };
        write_chunks(
            &mut self.framer,
            self.previous.as_ref().map(|p| (p, e)),
            &mut reader,
            remaining,
            from,
            &mut self.chunk,
        )?;
        if let Some(err) = reader.error.take() {
            return Err(ArchiveError::io("read", path, err));
        }
        if reader.short {
            self.warn(format!(
                "{}: shrank while it was read; the archived copy is padded with zeros",
                path.display()
            ));
        }
        Ok(())
    }

    fn header(&self, md: &Metadata, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        h.set_size(0);
        h
    }

    /// Where the next entry starts: cuts the current frame first when it is full, before
    /// a large file (whose headers get a frame of their own, so that a change to it
    /// leaves the small files before it reusable), or when the previous archive has a
    /// unit starting with this entry (so the frames after a change line up with the
    /// previous archive's again).
    fn begin(&mut self, name: &[u8], chunked: bool) -> Result<(u64, u32), ArchiveError> {
        let pending = self.framer.pending();
        let resync = pending > 0
            && (chunked
                || self
                    .previous
                    .as_ref()
                    .is_some_and(|p| p.unit(name).is_some()));
        if pending >= GROUP_TARGET || resync {
            self.framer.cut().map_err(stream_err)?;
        }
        Ok((self.framer.position(), self.framer.frame()))
    }

    /// Writes one entry: its records and header, then `size` bytes of `data` (in frames
    /// of their own for a large file), and records it in the index.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        header: Header,
        md: &Metadata,
        name: &[u8],
        kind: Kind,
        link: Option<&[u8]>,
        data: &mut dyn Read,
        size: u64,
    ) -> Result<(), ArchiveError> {
        let chunked = kind == Kind::File && size >= CHUNK;
        let (offset, first) = self.begin(name, chunked)?;
        write_headers(&mut self.framer, header, md, name, link)?;
        let data_at = self.framer.position();
        if chunked {
            self.framer.cut().map_err(stream_err)?;
            let prev = self
                .previous
                .as_ref()
                .and_then(|p| p.chunked(name).map(|e| (p, e)));
            write_chunks(&mut self.framer, prev, data, size, 0, &mut self.chunk)?;
        } else {
            copy_body(&mut self.framer, data, &mut self.buf)?;
        }
        self.entries.push(Entry {
            name: Name(name.to_vec()),
            kind,
            size,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            ctime: md.ctime(),
            ctime_nsec: md.ctime_nsec(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            dev: md.dev(),
            ino: md.ino(),
            link: link.map(|l| Name(l.to_vec())),
            offset,
            data: data_at,
            frames: [first, self.framer.last_frame()],
            chunked,
        });
        self.summary.entries += 1;
        Ok(())
    }

    fn add_dir(&mut self, path: &Path, md: &Metadata) -> Result<(), ArchiveError> {
        let mut name = entry_name(path);
        if name.is_empty() {
            // The root directory itself has no entry of its own.
            return Ok(());
        }
        name.push(b'/');
        let header = self.header(md, EntryType::Directory);
        self.append(header, md, &name, Kind::Dir, None, &mut io::empty(), 0)
    }

    fn add_symlink(&mut self, path: &Path, md: &Metadata) -> Result<(), ArchiveError> {
        let target = match fs::read_link(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(format!("{}: vanished before it was read", path.display()));
                return Ok(());
            }
            Err(e) => return Err(ArchiveError::io("read link", path, e)),
        };
        let header = self.header(md, EntryType::Symlink);
        let name = entry_name(path);
        self.append(
            header,
            md,
            &name,
            Kind::Symlink,
            Some(target.as_os_str().as_bytes()),
            &mut io::empty(),
            0,
        )
    }

    fn add_file(&mut self, path: &Path, md: &Metadata) -> Result<(), ArchiveError> {
        let name = entry_name(path);
        if md.nlink() > 1
            && let Some(first) = self.links.get(&(md.dev(), md.ino())).cloned()
        {
            if first == name {
                // The same path reached twice (overlapping sources): archived already.
                return Ok(());
            }
            let header = self.header(md, EntryType::Link);
            return self.append(
                header,
                md,
                &name,
                Kind::Hardlink,
                Some(&first),
                &mut io::empty(),
                0,
            );
        }
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(format!("{}: vanished before it was read", path.display()));
                return Ok(());
            }
            Err(e) => {
                return Err(ArchiveError::io(
                    "open (fix its permissions or add it to source.exclude)",
                    path,
                    e,
                ));
            }
        };
        // Describe the file as opened, not as listed; if another file was put in its
        // place since it was listed (a symlink, say), leave it out and say so.
        let listed = (md.dev(), md.ino());
        let md = file
            .metadata()
            .map_err(|e| ArchiveError::io("stat", path, e))?;
        if (md.dev(), md.ino()) != listed || !md.is_file() {
            self.warn(format!(
                "{}: replaced by another file while it was read; left out",
                path.display()
            ));
            return Ok(());
        }
        if md.nlink() > 1 {
            self.links.insert((md.dev(), md.ino()), name.clone());
        }
        let size = md.len();
        let mut header = self.header(&md, EntryType::Regular);
        header.set_size(size);
        let mut progress = self.progress.take();
        let mut noop = |_| {};
        let mut reader = FileBody {
            file: &mut file,
            remaining: size,
            short: false,
            error: None,
            progress: match progress.as_mut() {
                Some(p) => &mut **p,
                None => &mut noop,
            },
        };
        let appended = self.append(header, &md, &name, Kind::File, None, &mut reader, size);
        let (error, short) = (reader.error.take(), reader.short);
        self.progress = progress;
        appended?;
        if let Some(e) = error {
            return Err(ArchiveError::io("read", path, e));
        }
        self.summary.logical_bytes += size;
        if short {
            self.warn(format!(
                "{}: shrank while it was read; the archived copy is padded with zeros",
                path.display()
            ));
        } else {
            match file.metadata() {
                Ok(after)
                    if after.len() != md.len()
                        || after.mtime() != md.mtime()
                        || after.mtime_nsec() != md.mtime_nsec()
                        || after.ctime() != md.ctime()
                        || after.ctime_nsec() != md.ctime_nsec() =>
                {
                    self.warn(format!(
                        "{}: changed while it was read; the archived copy may be inconsistent",
                        path.display()
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(ArchiveError::io("stat", path, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_drop_leading_slash() {
        assert_eq!(entry_name(Path::new("/srv/app/x")), b"srv/app/x");
        assert_eq!(entry_name(Path::new("/")), b"");
    }
}
