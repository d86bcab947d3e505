//! Streams source trees into a `tar` + `zstd` archive file.
//!
//! Entry names are the sources' absolute paths without the leading `/`, as GNU tar
//! writes them. Headers are GNU (binary numbers for large sizes and ids, `L`/`K` records
//! for long or non-UTF-8 names, written byte for byte); a PAX `x` record before an entry
//! carries its mtime to the nanosecond. Regular files, directories (empty ones too),
//! symlinks and hard links are stored; sockets, FIFOs and devices are skipped and
//! reported. A file that changes, shrinks or vanishes while it is read is reported in the
//! result; a shrunk file is padded with zeros so the stream stays valid.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tar::{EntryType, Header};

use super::{ArchiveError, BackgroundWriter};

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
    /// zstd worker threads (0 = single-threaded).
    pub threads: u32,
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
/// source bytes read as it goes.
pub fn write_archive(
    opts: &WriteOptions,
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<WriteSummary, ArchiveError> {
    let skip = Skip::new(opts).map_err(|e| ArchiveError::Stream {
        action: "setup",
        cause: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let file = File::create(out).map_err(|e| ArchiveError::io("create", out, e))?;
    let sink = BackgroundWriter::new(file).map_err(|e| ArchiveError::io("write", out, e))?;
    let mut encoder = zstd::stream::write::Encoder::new(sink, opts.level)
        .map_err(|e| ArchiveError::stream("zstd init", e))?;
    encoder
        .include_checksum(true)
        .map_err(|e| ArchiveError::stream("zstd init", e))?;
    if opts.threads > 0 {
        encoder
            .multithread(opts.threads)
            .map_err(|e| ArchiveError::stream("zstd multithread", e))?;
    }
    let mut w = Writer {
        tar: tar::Builder::new(encoder),
        skip,
        links: HashMap::new(),
        summary: WriteSummary::default(),
        buf: vec![0u8; 1 << 20],
        progress,
    };
    for src in &opts.sources {
        w.add_tree(src)?;
    }
    let encoder = w
        .tar
        .into_inner()
        .map_err(|e| ArchiveError::stream("finish tar", e))?;
    let sink = encoder
        .finish()
        .map_err(|e| ArchiveError::stream("finish zstd", e))?;
    let (_file, bytes, sha) = sink
        .finish()
        .map_err(|e| ArchiveError::io("write", out, e))?;
    let mut summary = w.summary;
    summary.archive_bytes = bytes;
    summary.archive_sha256 = sha;
    Ok(summary)
}

struct Writer<'a, W: Write> {
    tar: tar::Builder<W>,
    skip: Skip,
    /// (dev, inode) of files with several links → the entry name written first.
    links: HashMap<(u64, u64), Vec<u8>>,
    summary: WriteSummary,
    buf: Vec<u8>,
    progress: &'a mut dyn FnMut(u64),
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

impl<W: Write> Writer<'_, W> {
    fn warn(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.summary.warnings.push(msg);
    }

    fn add_tree(&mut self, root: &Path) -> Result<(), ArchiveError> {
        // Depth-first, names sorted, so archives of the same tree are laid out alike.
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            if self.skip.by_name(&path) {
                continue;
            }
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound && path != root => {
                    self.warn(format!("{}: vanished before it was read", path.display()));
                    continue;
                }
                Err(e) => return Err(ArchiveError::io("stat", &path, e)),
            };
            if self.skip.by_identity(&md) {
                continue;
            }
            let ft = md.file_type();
            if ft.is_dir() {
                self.add_dir(&path, &md)?;
                let mut children = match fs::read_dir(&path) {
                    Ok(rd) => rd
                        .map(|e| e.map(|e| e.path()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            ArchiveError::io(
                                "list (fix its permissions or add it to source.exclude)",
                                &path,
                                e,
                            )
                        })?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.warn(format!("{}: vanished while it was read", path.display()));
                        continue;
                    }
                    Err(e) => {
                        return Err(ArchiveError::io(
                            "list (fix its permissions or add it to source.exclude)",
                            &path,
                            e,
                        ));
                    }
                };
                children.sort_by(|a, b| b.as_os_str().cmp(a.as_os_str()));
                stack.extend(children);
            } else if ft.is_file() {
                self.add_file(&path, &md)?;
            } else if ft.is_symlink() {
                self.add_symlink(&path, &md)?;
            } else {
                let what = if ft.is_socket() {
                    "socket"
                } else if ft.is_fifo() {
                    "FIFO"
                } else {
                    "device node"
                };
                self.warn(format!("{}: skipped ({what})", path.display()));
            }
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

    fn append(
        &mut self,
        header: Header,
        md: &Metadata,
        name: &[u8],
        link: Option<&[u8]>,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        append_entry(&mut self.tar, header, md, name, link, data, &mut self.buf)?;
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
        self.append(header, md, &name, None, &mut io::empty())
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
            Some(target.as_os_str().as_bytes()),
            &mut io::empty(),
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
            return self.append(header, md, &name, Some(&first), &mut io::empty());
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
        let mut reader = FileBody {
            file: &mut file,
            remaining: size,
            short: false,
            error: None,
            progress: &mut *self.progress,
        };
        append_entry(
            &mut self.tar,
            header,
            &md,
            &name,
            None,
            &mut reader,
            &mut self.buf,
        )?;
        self.summary.entries += 1;
        if let Some(e) = reader.error.take() {
            return Err(ArchiveError::io("read", path, e));
        }
        let short = reader.short;
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

/// Feeds exactly `remaining` bytes of a file into the tar stream, padding with zeros if
/// the file shrinks, and remembering a read error instead of corrupting the stream.
struct FileBody<'a> {
    file: &'a mut File,
    remaining: u64,
    short: bool,
    error: Option<io::Error>,
    progress: &'a mut dyn FnMut(u64),
}

impl Read for FileBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = if self.short || self.error.is_some() {
            out[..want].fill(0);
            want
        } else {
            match self.file.read(&mut out[..want]) {
                Ok(0) => {
                    self.short = true;
                    out[..want].fill(0);
                    want
                }
                Ok(n) => {
                    (self.progress)(n as u64);
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) => {
                    // Abort the backup after this entry; keep the stream well-formed.
                    self.error = Some(e);
                    out[..want].fill(0);
                    want
                }
            }
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes the PAX record carrying the nanosecond mtime, then the GNU long-name and
/// long-link records where needed, then the header and `data`.
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    mut header: Header,
    md: &Metadata,
    name: &[u8],
    link: Option<&[u8]>,
    data: &mut dyn Read,
    buf: &mut [u8],
) -> Result<(), ArchiveError> {
    let nsec = md.mtime_nsec();
    if nsec != 0 || md.mtime() < 0 {
        let value = pax_time(md.mtime(), nsec);
        let record = pax_record("mtime", value.as_bytes());
        let mut x = Header::new_ustar();
        x.set_entry_type(EntryType::XHeader);
        set_raw_name(&mut x, b"././@PaxHeader");
        x.set_mode(0o644);
        x.set_size(record.len() as u64);
        x.set_cksum();
        tar.append(&x, record.as_slice())
            .map_err(|e| ArchiveError::stream("write", e))?;
    }
    if name.len() > 100 {
        long_record(tar, b'L', name)?;
    }
    set_raw_name(&mut header, &name[..name.len().min(100)]);
    if let Some(link) = link {
        if link.len() > 100 {
            long_record(tar, b'K', link)?;
        }
        let slot = &mut header.as_old_mut().linkname;
        slot.fill(0);
        slot[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    }
    header.set_cksum();
    // The body is streamed with our own large buffer (the tar crate copies 8 KiB at a
    // time), then padded to the 512-byte block.
    let w = tar.get_mut();
    let err = |e| ArchiveError::stream("write", e);
    w.write_all(header.as_bytes()).map_err(err)?;
    let mut written = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        w.write_all(&buf[..n]).map_err(err)?;
        written += n as u64;
    }
    let pad = ((512 - written % 512) % 512) as usize;
    w.write_all(&[0u8; 512][..pad]).map_err(err)?;
    Ok(())
}

/// A GNU `L` (long name) or `K` (long link) record holding `value` byte for byte.
fn long_record<W: Write>(
    tar: &mut tar::Builder<W>,
    kind: u8,
    value: &[u8],
) -> Result<(), ArchiveError> {
    let mut h = Header::new_gnu();
    set_raw_name(&mut h, b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_entry_type(EntryType::new(kind));
    h.set_cksum();
    let data = value.chain(&[0u8][..]);
    tar.append(&h, data)
        .map_err(|e| ArchiveError::stream("write", e))
}

fn set_raw_name(h: &mut Header, name: &[u8]) {
    let slot = &mut h.as_old_mut().name;
    slot.fill(0);
    let n = name.len().min(slot.len());
    slot[..n].copy_from_slice(&name[..n]);
}

/// `seconds.nanoseconds` as PAX writes times, for negative times too.
fn pax_time(secs: i64, nsec: i64) -> String {
    if secs >= 0 || nsec == 0 {
        format!("{secs}.{nsec:09}")
    } else {
        // -1.5 s is stored as secs = -2, nsec = 500_000_000.
        let total_ns = i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let abs = total_ns.unsigned_abs();
        format!("-{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
pub(crate) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("mtime", b"1700000000.123456789");
        let text = String::from_utf8(r.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), r.len());
        // Crossing a power of ten.
        for n in 0..200 {
            let v = vec![b'x'; n];
            let r = pax_record("k", &v);
            let text = String::from_utf8(r.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "value length {n}");
        }
    }

    #[test]
    fn a_file_that_shrinks_is_padded_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut file = File::open(&path).unwrap();
        let mut seen = 0u64;
        let mut progress = |n| seen += n;
        // The header announced 20 bytes; the file now holds 10.
        let mut body = FileBody {
            file: &mut file,
            remaining: 20,
            short: false,
            error: None,
            progress: &mut progress,
        };
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        assert!(body.short);
        assert_eq!(out.len(), 20);
        assert_eq!(&out[..10], b"0123456789");
        assert!(out[10..].iter().all(|&b| b == 0));
        assert_eq!(seen, 10);
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 7), "5.000000007");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
    }

    #[test]
    fn entry_names_drop_leading_slash() {
        assert_eq!(entry_name(Path::new("/srv/app/x")), b"srv/app/x");
        assert_eq!(entry_name(Path::new("/")), b"");
    }
}
