//! Verifies and extracts archives.
//!
//! A reader thread reads the archive file, hashes the compressed bytes and decompresses
//! them; the calling thread parses tar entries and writes files, so decompression and
//! writing overlap like `zstd -d | tar -x`. At the end the hash and size are compared
//! with the manifest.
//!
//! Safety rules: entry names must be relative, without `..`; no entry is ever written
//! through a symlink (every parent directory is checked with `lstat`, new files are
//! created with `O_EXCL`); hard links must point at an entry inside the target. Symlink
//! targets are data and are restored verbatim, since they are never followed here.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
// `create_new` (O_CREAT|O_EXCL) never follows a symlink at the last component.
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use filetime::FileTime;
use tar::EntryType;

use super::{ArchiveError, HashingReader};

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Directory to restore into (created if missing).
    pub target: PathBuf,
    /// Restore into a non-empty target, replacing files that are in the way.
    pub force: bool,
    /// Restore only this original absolute path (a file or a directory's subtree).
    pub only: Option<PathBuf>,
    /// (size, hex SHA-256) the archive must have, from its manifest.
    pub expected: Option<(u64, String)>,
    /// Set owners (defaults to true when running as root).
    pub owners: bool,
}

/// What an extraction did.
#[derive(Debug, Clone, Default)]
pub struct ExtractSummary {
    /// Entries restored.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Archive bytes read.
    pub archive_bytes: u64,
    /// Hex SHA-256 of the archive.
    pub archive_sha256: String,
    /// Entries skipped (device nodes, FIFOs, hard links to paths outside `--path`).
    pub warnings: Vec<String>,
}

/// Whether this process runs as root (so owners can be restored).
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

type Chunk = io::Result<(Vec<u8>, u64)>;
type Decoder = (
    Receiver<Chunk>,
    thread::JoinHandle<io::Result<(u64, String)>>,
);

/// Decompresses `archive` on a thread; returns the receiving end and the join handle
/// yielding (archive bytes, hex SHA-256).
fn spawn_decoder(archive: &Path) -> Result<Decoder, ArchiveError> {
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

struct ChannelReader<'a> {
    rx: Receiver<Chunk>,
    chunk: Vec<u8>,
    pos: usize,
    compressed_seen: u64,
    progress: &'a mut dyn FnMut(u64),
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

fn check_result(
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

/// Reads a whole archive through the decompressor and the tar parser without writing
/// anything: proves it restores. Returns (entries, archive bytes, SHA-256).
pub fn check_archive(
    archive: &Path,
    expected: Option<&(u64, String)>,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, u64, String), ArchiveError> {
    let (rx, handle) = spawn_decoder(archive)?;
    let mut reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        compressed_seen: 0,
        progress,
    };
    let mut entries = 0u64;
    let parsed: Result<(), ArchiveError> = (|| {
        let mut ar = tar::Archive::new(&mut reader);
        for entry in ar.entries().map_err(|e| ArchiveError::stream("read", e))? {
            let mut entry = entry.map_err(|e| ArchiveError::stream("read", e))?;
            io::copy(&mut entry, &mut io::sink()).map_err(|e| ArchiveError::stream("read", e))?;
            entries += 1;
        }
        Ok(())
    })();
    finish_stream(reader, handle, parsed, expected).map(|(b, s)| (entries, b, s))
}

/// Drains the stream after the tar end marker, joins the decoder and checks the hash.
fn finish_stream(
    mut reader: ChannelReader<'_>,
    handle: thread::JoinHandle<io::Result<(u64, String)>>,
    parsed: Result<(), ArchiveError>,
    expected: Option<&(u64, String)>,
) -> Result<(u64, String), ArchiveError> {
    if parsed.is_ok() {
        let _ = io::copy(&mut reader, &mut io::sink());
    }
    drop(reader);
    let decoded = handle
        .join()
        .map_err(|_| ArchiveError::stream("decode", io::Error::other("decoder thread panicked")))?;
    // A mismatch explains a parse error better than the parse error itself.
    match (parsed, decoded) {
        (Ok(()), Ok(actual)) => check_result(expected, actual),
        (Err(e), Ok(actual)) => {
            check_result(expected, actual)?;
            Err(e)
        }
        (Ok(()), Err(e)) => Err(ArchiveError::stream("decompress", e)),
        (Err(e), Err(_)) => Err(e),
    }
}

/// Extracts `archive` into `opts.target`.
pub fn extract(
    archive: &Path,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractSummary, ArchiveError> {
    prepare_target(&opts.target, opts.force)?;
    let only: Option<Vec<Vec<u8>>> = match &opts.only {
        Some(p) => {
            let bytes = p.as_os_str().as_bytes();
            let comps = safe_components(bytes).map_err(|reason| ArchiveError::Hostile {
                entry: p.display().to_string(),
                reason,
            })?;
            Some(comps.into_iter().map(<[u8]>::to_vec).collect())
        }
        None => None,
    };
    let (rx, handle) = spawn_decoder(archive)?;
    let reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        compressed_seen: 0,
        progress,
    };
    let mut ex = Extractor {
        root: opts.target.clone(),
        owners: opts.owners,
        only,
        dirs: Vec::new(),
        summary: ExtractSummary::default(),
        buf: vec![0u8; 1 << 20],
    };
    let mut reader = reader;
    let parsed = ex.run(&mut reader);
    let finalized = if parsed.is_ok() {
        ex.finish_dirs()
    } else {
        Ok(())
    };
    let parsed = parsed.and(finalized);
    let (bytes, sha) = finish_stream(reader, handle, parsed, opts.expected.as_ref())?;
    if ex.only.is_some() && ex.summary.entries == 0 {
        return Err(ArchiveError::PathNotInBackup(
            opts.only
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ));
    }
    ex.summary.archive_bytes = bytes;
    ex.summary.archive_sha256 = sha;
    Ok(ex.summary)
}

fn prepare_target(target: &Path, force: bool) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(target) {
        Ok(md) if md.is_dir() => {
            let mut rd = fs::read_dir(target).map_err(|e| ArchiveError::io("list", target, e))?;
            if rd.next().is_some() && !force {
                return Err(ArchiveError::TargetNotEmpty(target.to_path_buf()));
            }
            Ok(())
        }
        Ok(md) if md.file_type().is_symlink() => {
            // The operator named it; follow it once, as `tar -C` would.
            let real =
                fs::canonicalize(target).map_err(|e| ArchiveError::io("resolve", target, e))?;
            prepare_target(&real, force)
        }
        Ok(_) => Err(ArchiveError::io(
            "restore into",
            target,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(target).map_err(|e| ArchiveError::io("create", target, e))
        }
        Err(e) => Err(ArchiveError::io("stat", target, e)),
    }
}

/// Splits an entry name into its normal components, refusing absolute names and `..`.
pub fn safe_components(name: &[u8]) -> Result<Vec<&[u8]>, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains(&0) {
        return Err("name contains a NUL byte".into());
    }
    if name[0] == b'/' {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains `..`".into()),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err("name has no components".into());
    }
    Ok(out)
}

struct PendingDir {
    path: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: FileTime,
}

struct Extractor {
    root: PathBuf,
    owners: bool,
    only: Option<Vec<Vec<u8>>>,
    dirs: Vec<PendingDir>,
    summary: ExtractSummary,
    buf: Vec<u8>,
}

fn hostile(name: &[u8], reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Hostile {
        entry: String::from_utf8_lossy(name).into_owned(),
        reason: reason.into(),
    }
}

fn parse_pax_time(value: &[u8]) -> Option<FileTime> {
    let text = std::str::from_utf8(value).ok()?;
    let (neg, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    if neg {
        let total = -(i128::from(secs) * 1_000_000_000 + i128::from(nanos));
        let s = total.div_euclid(1_000_000_000);
        let n = total.rem_euclid(1_000_000_000);
        Some(FileTime::from_unix_time(
            i64::try_from(s).ok()?,
            u32::try_from(n).ok()?,
        ))
    } else {
        Some(FileTime::from_unix_time(secs, nanos))
    }
}

impl Extractor {
    fn wanted(&self, comps: &[&[u8]]) -> bool {
        match &self.only {
            None => true,
            Some(prefix) => {
                comps.len() >= prefix.len()
                    && prefix.iter().zip(comps).all(|(a, b)| a.as_slice() == *b)
            }
        }
    }

    /// Walks (creating where missing) the parent directories of `comps` below the root,
    /// refusing any that is a symlink or not a directory.
    fn parent_dir(
        &self,
        name: &[u8],
        comps: &[&[u8]],
        create: bool,
    ) -> Result<PathBuf, ArchiveError> {
        let mut dir = self.root.clone();
        for comp in &comps[..comps.len() - 1] {
            dir.push(OsStr::from_bytes(comp));
            match fs::symlink_metadata(&dir) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(hostile(
                        name,
                        format!("it would be written through the symlink {}", dir.display()),
                    ));
                }
                Ok(_) => {
                    return Err(hostile(
                        name,
                        format!("{} is in the way and is not a directory", dir.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&dir).map_err(|e| ArchiveError::io("create", &dir, e))?;
                }
                Err(e) => return Err(ArchiveError::io("stat", &dir, e)),
            }
        }
        Ok(dir)
    }

    /// Removes whatever non-directory is at `path` (never following a symlink).
    fn clear(path: &Path) -> Result<(), ArchiveError> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => Err(ArchiveError::io(
                "replace",
                path,
                io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
            )),
            Ok(_) => fs::remove_file(path).map_err(|e| ArchiveError::io("remove", path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArchiveError::io("stat", path, e)),
        }
    }

    fn run<R: Read>(&mut self, reader: R) -> Result<(), ArchiveError> {
        let mut ar = tar::Archive::new(reader);
        let entries = ar.entries().map_err(|e| ArchiveError::stream("read", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ArchiveError::stream("read", e))?;
            let kind = entry.header().entry_type();
            if matches!(kind, EntryType::XGlobalHeader) {
                continue;
            }
            let name = entry.path_bytes().into_owned();
            if name
                .split(|&b| b == b'/')
                .all(|c| c.is_empty() || c == b".")
                && !name.is_empty()
            {
                // `./`: the target directory itself, as `tar -C dir .` writes it.
                continue;
            }
            let comps = safe_components(&name).map_err(|r| hostile(&name, r))?;
            if !self.wanted(&comps) {
                continue;
            }
            let header = entry.header();
            let mode = header.mode().map_err(|e| ArchiveError::stream("read", e))?;
            let uid = header.uid().map_err(|e| ArchiveError::stream("read", e))?;
            let gid = header.gid().map_err(|e| ArchiveError::stream("read", e))?;
            let mut mtime = FileTime::from_unix_time(
                i64::try_from(
                    header
                        .mtime()
                        .map_err(|e| ArchiveError::stream("read", e))?,
                )
                .unwrap_or(0),
                0,
            );
            if let Some(exts) = entry
                .pax_extensions()
                .map_err(|e| ArchiveError::stream("read", e))?
            {
                for ext in exts.flatten() {
                    if ext.key_bytes() == b"mtime"
                        && let Some(t) = parse_pax_time(ext.value_bytes())
                    {
                        mtime = t;
                    }
                }
            }
            let parent = self.parent_dir(&name, &comps, true)?;
            let path = parent.join(OsStr::from_bytes(comps[comps.len() - 1]));
            match kind {
                EntryType::Directory => {
                    match fs::symlink_metadata(&path) {
                        Ok(md) if md.is_dir() => {}
                        Ok(_) => {
                            Self::clear(&path)?;
                            fs::create_dir(&path)
                                .map_err(|e| ArchiveError::io("create", &path, e))?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            fs::create_dir(&path)
                                .map_err(|e| ArchiveError::io("create", &path, e))?;
                        }
                        Err(e) => return Err(ArchiveError::io("stat", &path, e)),
                    }
                    self.dirs.push(PendingDir {
                        path,
                        mode,
                        uid,
                        gid,
                        mtime,
                    });
                }
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    Self::clear(&path)?;
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .map_err(|e| ArchiveError::io("create", &path, e))?;
                    let mut written = 0u64;
                    loop {
                        let n = entry
                            .read(&mut self.buf)
                            .map_err(|e| ArchiveError::stream("read", e))?;
                        if n == 0 {
                            break;
                        }
                        file.write_all(&self.buf[..n])
                            .map_err(|e| ArchiveError::io("write", &path, e))?;
                        written += n as u64;
                    }
                    self.summary.bytes += written;
                    if self.owners {
                        std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32))
                            .map_err(|e| ArchiveError::io("chown", &path, e))?;
                    }
                    file.set_permissions(Permissions::from_mode(mode & 0o7777))
                        .map_err(|e| ArchiveError::io("chmod", &path, e))?;
                    filetime::set_file_handle_times(&file, Some(mtime), Some(mtime))
                        .map_err(|e| ArchiveError::io("set mtime of", &path, e))?;
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| hostile(&name, "symlink without a target"))?
                        .into_owned();
                    Self::clear(&path)?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                        .map_err(|e| ArchiveError::io("create symlink", &path, e))?;
                    if self.owners {
                        std::os::unix::fs::lchown(&path, Some(uid as u32), Some(gid as u32))
                            .map_err(|e| ArchiveError::io("chown", &path, e))?;
                    }
                    filetime::set_symlink_file_times(&path, mtime, mtime)
                        .map_err(|e| ArchiveError::io("set mtime of", &path, e))?;
                }
                EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| hostile(&name, "hard link without a target"))?
                        .into_owned();
                    let tcomps = safe_components(&target).map_err(|r| {
                        hostile(
                            &name,
                            format!(
                                "hard link target `{}`: {r}",
                                String::from_utf8_lossy(&target)
                            ),
                        )
                    })?;
                    let tparent = self.parent_dir(&name, &tcomps, false);
                    let source = match tparent {
                        Ok(p) => p.join(OsStr::from_bytes(tcomps[tcomps.len() - 1])),
                        Err(ArchiveError::Io { source, .. })
                            if source.kind() == io::ErrorKind::NotFound =>
                        {
                            PathBuf::new()
                        }
                        Err(e) => return Err(e),
                    };
                    match fs::symlink_metadata(&source) {
                        Ok(md) if !md.is_dir() => {}
                        _ if self.only.is_some() => {
                            let msg = format!(
                                "/{}: hard link to /{} which is outside the restored path; skipped",
                                String::from_utf8_lossy(&name),
                                String::from_utf8_lossy(&target)
                            );
                            tracing::warn!("{msg}");
                            self.summary.warnings.push(msg);
                            continue;
                        }
                        _ => {
                            return Err(hostile(
                                &name,
                                format!(
                                    "hard link to `{}`, which the archive did not restore before it",
                                    String::from_utf8_lossy(&target)
                                ),
                            ));
                        }
                    }
                    if source == path {
                        // A link to itself (a path archived twice): it is already here.
                        self.summary.entries += 1;
                        continue;
                    }
                    Self::clear(&path)?;
                    fs::hard_link(&source, &path)
                        .map_err(|e| ArchiveError::io("create hard link", &path, e))?;
                }
                other => {
                    let msg = format!(
                        "/{}: skipped entry of type {other:?}",
                        String::from_utf8_lossy(&name)
                    );
                    tracing::warn!("{msg}");
                    self.summary.warnings.push(msg);
                    continue;
                }
            }
            self.summary.entries += 1;
        }
        Ok(())
    }

    /// Applies directories' owners, modes and mtimes, deepest first, once their
    /// contents are in place.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.path.as_os_str().len()));
        for d in &self.dirs {
            if self.owners {
                std::os::unix::fs::lchown(&d.path, Some(d.uid as u32), Some(d.gid as u32))
                    .map_err(|e| ArchiveError::io("chown", &d.path, e))?;
            }
            fs::set_permissions(&d.path, Permissions::from_mode(d.mode & 0o7777))
                .map_err(|e| ArchiveError::io("chmod", &d.path, e))?;
            filetime::set_file_times(&d.path, d.mtime, d.mtime)
                .map_err(|e| ArchiveError::io("set mtime of", &d.path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert!(safe_components(b"../x").is_err());
        assert!(safe_components(b"a/../../x").is_err());
        assert!(safe_components(b"/etc/passwd").is_err());
        assert!(safe_components(b"").is_err());
        assert!(safe_components(b"./").is_err());
        assert_eq!(
            safe_components(b"./srv//app/").unwrap(),
            vec![&b"srv"[..], &b"app"[..]]
        );
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(
            parse_pax_time(b"5.000000007"),
            Some(FileTime::from_unix_time(5, 7))
        );
        assert_eq!(
            parse_pax_time(b"5.5"),
            Some(FileTime::from_unix_time(5, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"-1.5"),
            Some(FileTime::from_unix_time(-2, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
