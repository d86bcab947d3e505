//! Verifies and extracts archives.
//!
//! A reader thread reads the archive file, hashes the compressed bytes and decompresses
//! them; the calling thread parses tar entries and writes files, so decompression and
//! writing overlap like `zstd -d | tar -x`. At the end the hash and size are compared
//! with the manifest.
//!
//! # Safety rules
//!
//! [`extract`] (`restore`) and [`check_archive`] (`verify --deep`) run the same
//! extractor; the check has no target and writes nothing. Every entry first passes these
//! rules, applied to a model of the tree the archive has created so far (which names are
//! directories, files, symlinks), so the check refuses exactly the archives a restore
//! into an empty target refuses, with the same reason:
//!
//! - entry names and hard link targets are relative, without `..` or NUL, and no
//!   component is longer than 255 bytes;
//! - no entry is written or linked through a symlink, or below a file, that an earlier
//!   entry created;
//! - a hard link points at a file or symlink an earlier entry created;
//! - a file, symlink or hard link does not replace a directory an earlier entry created;
//! - a file's data is all there (as many bytes as its header says);
//! - entries of other types (devices, FIFOs) are skipped with a warning.
//!
//! Writing adds checks of what the target held before (with `--force`): every parent is
//! checked with `lstat` and never followed when it is a symlink, and no directory is
//! replaced. Symlink targets are data and are restored verbatim, since they are never
//! followed here. The model keeps a 16-byte digest of each name and its kind, about 40
//! bytes an entry.
//!
//! # What a failed or killed restore leaves
//!
//! Each regular file is written as `.NAME.tierkeep-partial` (created with `O_EXCL`, mode
//! 0600) in its directory and renamed over `NAME` only once its bytes, owner, mode and
//! mtime are set; an error removes it. A restore that fails therefore leaves the entries
//! before the failing one complete and nothing at the failing one's name, and its error
//! names the entry. A restore that is killed leaves at most the one file it was writing,
//! under its partial name; restoring again with `--force` removes that leftover when it
//! writes the file again. Directories get their modes and mtimes last, so after a failure
//! they may still have the defaults they were created with.
//!
//! # Setuid and setgid
//!
//! Files restored in place (the target is `/`) keep their setuid and setgid bits;
//! restored anywhere else they lose them, with a warning naming each file, unless
//! [`ExtractOptions::keep_setuid`]. This holds whoever runs the restore: a copy of a
//! system unpacked under `/mnt/restore` must not hand out setuid programs, be they root's
//! or the restoring user's. Directories keep theirs (setgid on a directory only makes new
//! files inherit its group).

use std::collections::HashMap;
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
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::{ArchiveError, HashingReader, StoppedAt};

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
    /// Keep files' setuid and setgid bits even when the target is not `/`.
    pub keep_setuid: bool,
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
    /// Entries skipped (device nodes, FIFOs, hard links to paths outside `--path`), and
    /// files whose setuid or setgid bits were dropped.
    pub warnings: Vec<String>,
}

/// Whether this process runs as root (so owners can be restored).
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether restored files keep their setuid and setgid bits: always in place (the
/// target, canonicalized, is `/`), anywhere else only when asked (`--keep-setuid`).
pub fn keeps_setuid_bits(canonical_target: &Path, keep_setuid: bool) -> bool {
    keep_setuid || canonical_target == Path::new("/")
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

/// Reads a whole archive through the decompressor, the tar parser and every safety rule
/// of [`extract`], without writing anything: proves it restores. Returns (entries,
/// archive bytes, SHA-256).
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
    let mut ex = Extractor::new(None);
    let parsed = ex.run(&mut reader);
    let (bytes, sha) = ex.finish_stream(reader, handle, parsed, expected)?;
    Ok((ex.summary.entries, bytes, sha))
}

/// Extracts `archive` into `opts.target`.
pub fn extract(
    archive: &Path,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractSummary, ArchiveError> {
    prepare_target(&opts.target, opts.force)?;
    let canonical =
        fs::canonicalize(&opts.target).map_err(|e| ArchiveError::io("resolve", &opts.target, e))?;
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
    let mut reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        compressed_seen: 0,
        progress,
    };
    let mut ex = Extractor::new(Some(Disk {
        root: opts.target.clone(),
        owners: opts.owners,
        keep_setuid: keeps_setuid_bits(&canonical, opts.keep_setuid),
        only,
        dirs: Vec::new(),
    }));
    let parsed = ex.run(&mut reader).and_then(|()| ex.finish_dirs());
    let (bytes, sha) = ex.finish_stream(reader, handle, parsed, opts.expected.as_ref())?;
    if opts.only.is_some() && ex.summary.entries == 0 {
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

/// Splits an entry name into its normal components, refusing absolute names, `..` and
/// components no Linux filesystem stores (over 255 bytes).
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
            c if c.len() > 255 => {
                return Err("a component of the name is longer than 255 bytes".into());
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err("name has no components".into());
    }
    Ok(out)
}

/// `./` and the like: the target directory itself, as `tar -C dir .` writes it.
fn is_dot(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .split(|&b| b == b'/')
            .all(|c| c.is_empty() || c == b".")
}

/// The original path of a normalized name: `srv/app/x` is `/srv/app/x`.
fn original(normalized: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(normalized))
}

/// An entry as the operator knows it: its original path, or the raw name in backticks
/// when that is not a safe relative name.
fn shown_name(raw: &[u8]) -> String {
    match safe_components(raw) {
        Ok(comps) => original(&comps.join(&b'/')),
        Err(_) => format!("`{}`", String::from_utf8_lossy(raw)),
    }
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

/// What an earlier entry left at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// Whether the restore writes it (not for entries outside `--path`, nor in a check).
    written: bool,
}

/// A name in the model: the first 16 bytes of the SHA-256 of its components joined with
/// `/` (a component holds no `/`, so the joining is unambiguous).
type Key = [u8; 16];

fn digest(hasher: Sha256) -> Key {
    let mut key = [0u8; 16];
    key.copy_from_slice(&hasher.finalize()[..16]);
    key
}

fn key_of<'a>(comps: impl IntoIterator<Item = &'a [u8]>) -> Key {
    let mut hasher = Sha256::new();
    for (i, comp) in comps.into_iter().enumerate() {
        if i > 0 {
            hasher.update(b"/");
        }
        hasher.update(comp);
    }
    digest(hasher)
}

/// What an accepted entry asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Dir,
    File,
    /// A symlink with this target.
    Symlink(Vec<u8>),
    /// A hard link to this earlier entry (its normalized name).
    HardLink(Vec<u8>),
    /// A hard link to itself (a path archived twice): already there.
    Nothing,
    /// Not restored, with this warning.
    Skip(String),
}

/// The tree the archive has created so far. Every safety rule is checked against it, not
/// against the disk, so that a check writing nothing refuses what a restore refuses.
#[derive(Debug, Default)]
struct Tree {
    nodes: HashMap<Key, Node>,
}

impl Tree {
    /// Whether an earlier entry created `leaf` in the directory `dir`.
    fn holds(&self, dir: &[&[u8]], leaf: &[u8]) -> bool {
        let key = key_of(dir.iter().copied().chain([leaf]));
        self.nodes.contains_key(&key)
    }

    /// Checks the directories above `comps`: none may be a symlink or a file an earlier
    /// entry created. With `create`, records missing ones as directories (written by the
    /// restore or not) and returns true; without, returns whether they all exist.
    fn parents(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        create: Option<bool>,
    ) -> Result<bool, ArchiveError> {
        let mut hasher = Sha256::new();
        for (i, comp) in comps[..comps.len() - 1].iter().enumerate() {
            if i > 0 {
                hasher.update(b"/");
            }
            hasher.update(comp);
            let key = digest(hasher.clone());
            let shown = || original(&comps[..=i].join(&b'/'));
            match self.nodes.get(&key).map(|n| n.kind) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(hostile(
                        name,
                        format!(
                            "{} is a symlink that an earlier entry created, and nothing is \
                             written or linked through a symlink",
                            shown()
                        ),
                    ));
                }
                Some(Kind::File) => {
                    return Err(hostile(
                        name,
                        format!(
                            "{} is a file that an earlier entry created, not a directory",
                            shown()
                        ),
                    ));
                }
                None => match create {
                    Some(written) => {
                        self.nodes.insert(
                            key,
                            Node {
                                kind: Kind::Dir,
                                written,
                            },
                        );
                    }
                    None => return Ok(false),
                },
            }
        }
        Ok(true)
    }

    /// Applies the safety rules to the entry `name` (split into `comps`) of type `kind`
    /// and, if it passes, records what it creates. `write`: whether the restore writes it.
    fn admit(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        kind: EntryType,
        link: Option<&[u8]>,
        write: bool,
    ) -> Result<Action, ArchiveError> {
        self.parents(name, comps, Some(write))?;
        let key = key_of(comps.iter().copied());
        let normalized = comps.join(&b'/');
        let is_dir = self.nodes.get(&key).is_some_and(|n| n.kind == Kind::Dir);
        let over_dir = |what: &str| {
            if is_dir {
                return Err(hostile(
                    name,
                    format!(
                        "an earlier entry made {} a directory, which a {what} does not replace",
                        original(&normalized)
                    ),
                ));
            }
            Ok(())
        };
        let (action, made) = match kind {
            EntryType::Directory => (Action::Dir, Kind::Dir),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                over_dir("file")?;
                (Action::File, Kind::File)
            }
            EntryType::Symlink => {
                let target = link.ok_or_else(|| hostile(name, "symlink without a target"))?;
                over_dir("symlink")?;
                (Action::Symlink(target.to_vec()), Kind::Symlink)
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| hostile(name, "hard link without a target"))?;
                let shown = String::from_utf8_lossy(target);
                let tcomps = safe_components(target)
                    .map_err(|r| hostile(name, format!("hard link target `{shown}`: {r}")))?;
                let tkey = key_of(tcomps.iter().copied());
                let found = if self.parents(name, &tcomps, None)? {
                    self.nodes.get(&tkey).copied()
                } else {
                    None
                };
                let source = match found {
                    Some(n) if n.kind != Kind::Dir => n,
                    _ => {
                        return Err(hostile(
                            name,
                            format!(
                                "hard link to `{shown}`, which the archive did not restore \
                                 before it"
                            ),
                        ));
                    }
                };
                if tkey == key {
                    return Ok(Action::Nothing);
                }
                over_dir("hard link")?;
                let tnormalized = tcomps.join(&b'/');
                if write && !source.written {
                    return Ok(Action::Skip(format!(
                        "{}: hard link to {} which is outside the restored path; skipped",
                        original(&normalized),
                        original(&tnormalized)
                    )));
                }
                (Action::HardLink(tnormalized), source.kind)
            }
            other => {
                return Ok(Action::Skip(format!(
                    "{}: skipped entry of type {other:?}",
                    original(&normalized)
                )));
            }
        };
        self.nodes.insert(
            key,
            Node {
                kind: made,
                written: write,
            },
        );
        Ok(action)
    }
}

/// An entry's metadata, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: FileTime,
    /// Bytes of data.
    size: u64,
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, ArchiveError> {
    let bad = |e| ArchiveError::stream("read", e);
    let header = entry.header();
    let mode = header.mode().map_err(bad)?;
    let uid = header.uid().map_err(bad)?;
    let gid = header.gid().map_err(bad)?;
    let mut mtime =
        FileTime::from_unix_time(i64::try_from(header.mtime().map_err(bad)?).unwrap_or(0), 0);
    if let Some(exts) = entry.pax_extensions().map_err(bad)? {
        for ext in exts.flatten() {
            if ext.key_bytes() == b"mtime"
                && let Some(t) = parse_pax_time(ext.value_bytes())
            {
                mtime = t;
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        size: entry.size(),
    })
}

/// Copies an entry's data into `out` (or nowhere, to check it) and checks that all of
/// it is there.
fn copy_data(
    data: &mut impl Read,
    size: u64,
    mut out: Option<(&mut File, &Path)>,
    buf: &mut [u8],
) -> Result<u64, ArchiveError> {
    let mut read = 0u64;
    loop {
        let n = data
            .read(buf)
            .map_err(|e| ArchiveError::stream("read", e))?;
        if n == 0 {
            break;
        }
        if let Some((file, path)) = out.as_mut() {
            file.write_all(&buf[..n])
                .map_err(|e| ArchiveError::io("write", *path, e))?;
        }
        read += n as u64;
    }
    if read < size {
        return Err(ArchiveError::Truncated { read, size });
    }
    Ok(read)
}

const PARTIAL_SUFFIX: &[u8] = b".tierkeep-partial";

/// `.NAME.tierkeep-partial` (`.N` added on later attempts), with NAME cut short enough
/// that the whole fits in a file name (255 bytes).
fn partial_name(leaf: &[u8], attempt: u32) -> Vec<u8> {
    let mut name = Vec::with_capacity(255);
    name.push(b'.');
    name.extend_from_slice(&leaf[..leaf.len().min(220)]);
    name.extend_from_slice(PARTIAL_SUFFIX);
    if attempt > 0 {
        name.extend_from_slice(format!(".{attempt}").as_bytes());
    }
    name
}

/// A file being written under its partial name, removed when dropped unless it was
/// renamed into place.
struct Partial {
    path: PathBuf,
    file: File,
    placed: bool,
}

impl Partial {
    /// Creates the partial file for `leaf` in `dir`. One already there that is not an
    /// entry of this archive (`is_entry`) was left by a killed restore: it is replaced.
    fn create(
        dir: &Path,
        leaf: &[u8],
        is_entry: impl Fn(&[u8]) -> bool,
    ) -> Result<Partial, ArchiveError> {
        let mut attempt = 0;
        let mut removed = false;
        loop {
            let name = partial_name(leaf, attempt);
            let path = dir.join(OsStr::from_bytes(&name));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Partial {
                        path,
                        file,
                        placed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    let leftover = !removed
                        && !is_entry(&name)
                        && fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir());
                    if leftover {
                        tracing::info!(path = %path.display(), "removing a partial file an interrupted restore left");
                        fs::remove_file(&path).map_err(|e| ArchiveError::io("remove", &path, e))?;
                        removed = true;
                    } else {
                        attempt += 1;
                        removed = false;
                    }
                }
                Err(e) => return Err(ArchiveError::io("create", &path, e)),
            }
        }
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.placed
            && let Err(e) = fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), "cannot remove the partial file: {e}");
        }
    }
}

struct PendingDir {
    path: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: FileTime,
}

/// The writing side of a restore.
struct Disk {
    root: PathBuf,
    owners: bool,
    keep_setuid: bool,
    only: Option<Vec<Vec<u8>>>,
    dirs: Vec<PendingDir>,
}

impl Disk {
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
    /// refusing any that is a symlink or not a directory. The model has refused those an
    /// entry created; these were in the target before.
    fn parent(&self, name: &[u8], comps: &[&[u8]], create: bool) -> Result<PathBuf, ArchiveError> {
        let mut dir = self.root.clone();
        for comp in &comps[..comps.len() - 1] {
            dir.push(OsStr::from_bytes(comp));
            match fs::symlink_metadata(&dir) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(hostile(
                        name,
                        format!(
                            "{} is a symlink that was in the target before the restore, and \
                             nothing is written or linked through a symlink",
                            dir.display()
                        ),
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

    fn dir(&mut self, name: &[u8], comps: &[&[u8]], meta: &Meta) -> Result<(), ArchiveError> {
        let path = self
            .parent(name, comps, true)?
            .join(OsStr::from_bytes(comps[comps.len() - 1]));
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                Self::clear(&path)?;
                fs::create_dir(&path).map_err(|e| ArchiveError::io("create", &path, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(|e| ArchiveError::io("create", &path, e))?;
            }
            Err(e) => return Err(ArchiveError::io("stat", &path, e)),
        }
        self.dirs.push(PendingDir {
            path,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
        });
        Ok(())
    }

    /// Writes a regular file under its partial name and renames it into place once its
    /// data, owner, mode and mtime are set. Returns the bytes written and a warning if
    /// setuid or setgid bits were dropped.
    fn file(
        &mut self,
        tree: &Tree,
        name: &[u8],
        comps: &[&[u8]],
        data: &mut impl Read,
        meta: &Meta,
        buf: &mut [u8],
    ) -> Result<(u64, Option<String>), ArchiveError> {
        let parent = self.parent(name, comps, true)?;
        let (dir_comps, leaf) = comps.split_at(comps.len() - 1);
        let leaf = leaf[0];
        let path = parent.join(OsStr::from_bytes(leaf));
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(ArchiveError::io(
                "replace",
                &path,
                io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
            ));
        }
        let mut partial = Partial::create(&parent, leaf, |n| tree.holds(dir_comps, n))?;
        let written = copy_data(
            data,
            meta.size,
            Some((&mut partial.file, &partial.path)),
            buf,
        )?;
        if self.owners {
            std::os::unix::fs::fchown(&partial.file, Some(meta.uid as u32), Some(meta.gid as u32))
                .map_err(|e| ArchiveError::io("chown", &partial.path, e))?;
        }
        let mut mode = meta.mode & 0o7777;
        let mut warning = None;
        if mode & 0o6000 != 0 && !self.keep_setuid {
            warning = Some(format!(
                "{}: setuid/setgid bits dropped (mode {mode:04o} restored as {:04o}) because \
                 the target is not /; pass --keep-setuid to keep them",
                original(&comps.join(&b'/')),
                mode & !0o6000
            ));
            mode &= !0o6000;
        }
        partial
            .file
            .set_permissions(Permissions::from_mode(mode))
            .map_err(|e| ArchiveError::io("chmod", &partial.path, e))?;
        filetime::set_file_handle_times(&partial.file, Some(meta.mtime), Some(meta.mtime))
            .map_err(|e| ArchiveError::io("set mtime of", &partial.path, e))?;
        crate::faults::point("restore.before_rename").map_err(|f| {
            ArchiveError::io("rename", &partial.path, io::Error::other(f.to_string()))
        })?;
        fs::rename(&partial.path, &path)
            .map_err(|e| ArchiveError::io("rename the partial file into place as", &path, e))?;
        partial.placed = true;
        Ok((written, warning))
    }

    fn symlink(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), ArchiveError> {
        let path = self
            .parent(name, comps, true)?
            .join(OsStr::from_bytes(comps[comps.len() - 1]));
        Self::clear(&path)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
            .map_err(|e| ArchiveError::io("create symlink", &path, e))?;
        if self.owners {
            std::os::unix::fs::lchown(&path, Some(meta.uid as u32), Some(meta.gid as u32))
                .map_err(|e| ArchiveError::io("chown", &path, e))?;
        }
        filetime::set_symlink_file_times(&path, meta.mtime, meta.mtime)
            .map_err(|e| ArchiveError::io("set mtime of", &path, e))
    }

    fn hard_link(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        let path = self
            .parent(name, comps, true)?
            .join(OsStr::from_bytes(comps[comps.len() - 1]));
        let tcomps = safe_components(target).map_err(|r| hostile(name, r))?;
        let source = self
            .parent(name, &tcomps, false)?
            .join(OsStr::from_bytes(tcomps[tcomps.len() - 1]));
        match fs::symlink_metadata(&source) {
            Ok(md) if !md.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::io(
                    "link to",
                    &source,
                    io::Error::new(io::ErrorKind::IsADirectory, "it is a directory"),
                ));
            }
            Err(e) => return Err(ArchiveError::io("stat", &source, e)),
        }
        Self::clear(&path)?;
        fs::hard_link(&source, &path).map_err(|e| ArchiveError::io("create hard link", &path, e))
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

/// Reads entries, applies the safety rules to each and, with a [`Disk`], writes them.
struct Extractor {
    tree: Tree,
    /// `None` for a check that writes nothing.
    disk: Option<Disk>,
    summary: ExtractSummary,
    buf: Vec<u8>,
}

impl Extractor {
    fn new(disk: Option<Disk>) -> Self {
        Extractor {
            tree: Tree::default(),
            disk,
            summary: ExtractSummary::default(),
            buf: vec![0u8; 1 << 20],
        }
    }

    fn stopped(&self, at: StoppedAt, cause: ArchiveError) -> ArchiveError {
        ArchiveError::Stopped {
            target: self.disk.as_ref().map(|d| d.root.clone()),
            at,
            cause: Box::new(cause),
        }
    }

    fn run<R: Read>(&mut self, reader: R) -> Result<(), ArchiveError> {
        let mut ar = tar::Archive::new(reader);
        let read = |e| ArchiveError::stream("read", e);
        let entries = ar
            .entries()
            .map_err(|e| self.stopped(StoppedAt::After(None), read(e)))?;
        let mut last: Option<Vec<u8>> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                self.stopped(StoppedAt::After(last.as_deref().map(shown_name)), read(e))
            })?;
            let name = entry.path_bytes().into_owned();
            self.entry(&name, &mut entry)
                .map_err(|e| self.stopped(StoppedAt::Entry(shown_name(&name)), e))?;
            last = Some(name);
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        name: &[u8],
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ArchiveError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) || is_dot(name) {
            return Ok(());
        }
        let comps = safe_components(name).map_err(|r| hostile(name, r))?;
        let write = self.disk.as_ref().is_some_and(|d| d.wanted(&comps));
        let meta = read_meta(entry)?;
        let link = entry.link_name_bytes().map(std::borrow::Cow::into_owned);
        let action = self
            .tree
            .admit(name, &comps, kind, link.as_deref(), write)?;
        let disk = self.disk.as_mut().filter(|_| write);
        // Warnings go to the summary, which the caller shows; logged here at debug level
        // only, so that the CLI does not print them twice.
        match (action, disk) {
            (Action::Skip(warning), _) => {
                if write {
                    tracing::debug!("{warning}");
                    self.summary.warnings.push(warning);
                }
                return Ok(());
            }
            (Action::File, Some(disk)) => {
                let (bytes, warning) =
                    disk.file(&self.tree, name, &comps, entry, &meta, &mut self.buf)?;
                self.summary.bytes += bytes;
                if let Some(warning) = warning {
                    tracing::debug!("{warning}");
                    self.summary.warnings.push(warning);
                }
            }
            // Not written: read the data anyway, to check it is all there.
            (Action::File, None) => {
                copy_data(entry, meta.size, None, &mut self.buf)?;
            }
            (Action::Dir, Some(disk)) => disk.dir(name, &comps, &meta)?,
            (Action::Symlink(target), Some(disk)) => disk.symlink(name, &comps, &target, &meta)?,
            (Action::HardLink(target), Some(disk)) => disk.hard_link(name, &comps, &target)?,
            (Action::Nothing, _) | (_, None) => {}
        }
        if write || self.disk.is_none() {
            self.summary.entries += 1;
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        match self.disk.as_mut() {
            Some(disk) => disk
                .finish_dirs()
                .map_err(|e| self.stopped(StoppedAt::End, e)),
            None => Ok(()),
        }
    }

    /// Drains the stream after the tar end marker, joins the decoder and checks the hash.
    fn finish_stream(
        &self,
        mut reader: ChannelReader<'_>,
        handle: thread::JoinHandle<io::Result<(u64, String)>>,
        parsed: Result<(), ArchiveError>,
        expected: Option<&(u64, String)>,
    ) -> Result<(u64, String), ArchiveError> {
        if parsed.is_ok() {
            let _ = io::copy(&mut reader, &mut io::sink());
        }
        drop(reader);
        let decoded = handle.join().map_err(|_| {
            ArchiveError::stream("decode", io::Error::other("decoder thread panicked"))
        })?;
        // After the last entry a check has nothing to add; a restore says what it wrote.
        let at_end = |e| match self.disk {
            Some(_) => self.stopped(StoppedAt::End, e),
            None => e,
        };
        match (parsed, decoded) {
            (Ok(()), Ok(actual)) => check_result(expected, actual).map_err(at_end),
            // A mismatch explains a parse error better than the parse error itself.
            (Err(e), Ok(actual)) => match check_result(expected, actual) {
                Ok(_) => Err(e),
                Err(mismatch) => Err(match e {
                    ArchiveError::Stopped { target, at, .. } => ArchiveError::Stopped {
                        target,
                        at,
                        cause: Box::new(mismatch),
                    },
                    _ => mismatch,
                }),
            },
            (Ok(()), Err(e)) => Err(at_end(ArchiveError::stream("decompress", e))),
            (Err(e), Err(_)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// (name, type, link target, data) of one raw tar entry.
    type Raw<'a> = (&'a str, EntryType, &'a str, &'a str);

    /// A tar stream written by hand: raw names, no checks.
    fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = tar::Builder::new(&mut out);
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            h.set_mtime(1_600_000_000);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        out
    }

    fn write_archive(dir: &Path, tar_bytes: &[u8]) -> PathBuf {
        let path = dir.join("a.tar.zst");
        fs::write(&path, zstd::encode_all(tar_bytes, 1).unwrap()).unwrap();
        path
    }

    fn options(target: &Path) -> ExtractOptions {
        ExtractOptions {
            target: target.to_path_buf(),
            force: false,
            only: None,
            expected: None,
            owners: false,
            keep_setuid: false,
        }
    }

    /// Every file below `root`, relative.
    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
        out.sort();
        out
    }

    #[rstest]
    #[case::in_place("/", false, true)]
    #[case::in_place_spelled_oddly("//.", false, true)]
    #[case::elsewhere("/tmp", false, false)]
    #[case::elsewhere_asked("/tmp", true, true)]
    fn setuid_bits_are_kept_in_place_or_when_asked(
        #[case] target: &str,
        #[case] keep: bool,
        #[case] kept: bool,
    ) {
        let canonical = fs::canonicalize(target).unwrap();
        assert_eq!(keeps_setuid_bits(&canonical, keep), kept);
    }

    /// The rules on the model alone: the last entry's outcome (an action, or a refusal
    /// containing the text).
    #[rstest]
    #[case::through_a_symlink(
        &[("l", EntryType::Symlink, "/etc"), ("l/passwd", EntryType::Regular, "")],
        Err("/l is a symlink that an earlier entry created")
    )]
    #[case::below_a_file(
        &[("f", EntryType::Regular, ""), ("f/x", EntryType::Regular, "")],
        Err("/f is a file that an earlier entry created")
    )]
    #[case::file_over_directory(
        &[("d", EntryType::Directory, ""), ("d", EntryType::Regular, "")],
        Err("a file does not replace")
    )]
    #[case::symlink_over_directory(
        &[("d/x", EntryType::Regular, ""), ("d", EntryType::Symlink, "/")],
        Err("a symlink does not replace")
    )]
    #[case::hard_link_forward(
        &[("h", EntryType::Link, "later"), ("later", EntryType::Regular, "")],
        Err("which the archive did not restore before it")
    )]
    #[case::hard_link_to_directory(
        &[("d", EntryType::Directory, ""), ("h", EntryType::Link, "d")],
        Err("which the archive did not restore before it")
    )]
    #[case::hard_link_through_symlink(
        &[("f", EntryType::Regular, ""), ("l", EntryType::Symlink, "."),
          ("h", EntryType::Link, "l/f")],
        Err("/l is a symlink that an earlier entry created")
    )]
    #[case::hard_link_escaping(
        &[("h", EntryType::Link, "../x")],
        Err("hard link target `../x`: path contains `..`")
    )]
    #[case::symlink_without_target(
        &[("l", EntryType::Symlink, "")],
        Err("symlink without a target")
    )]
    #[case::directory_replaces_symlink(
        &[("l", EntryType::Symlink, "/etc"), ("l", EntryType::Directory, ""),
          ("l/x", EntryType::Regular, "")],
        Ok(Action::File)
    )]
    #[case::hard_link_to_earlier_file(
        &[("a/f", EntryType::Regular, ""), ("h", EntryType::Link, "./a//f")],
        Ok(Action::HardLink(b"a/f".to_vec()))
    )]
    #[case::hard_link_to_itself(
        &[("f", EntryType::Regular, ""), ("f", EntryType::Link, "f")],
        Ok(Action::Nothing)
    )]
    #[case::fifo(
        &[("p", EntryType::Fifo, "")],
        Ok(Action::Skip("/p: skipped entry of type Fifo".into()))
    )]
    fn the_model_applies_the_rules(
        #[case] entries: &[(&str, EntryType, &str)],
        #[case] last: Result<Action, &str>,
    ) {
        let mut tree = Tree::default();
        let mut outcome = None;
        for (name, kind, link) in entries {
            let comps = safe_components(name.as_bytes()).unwrap();
            let link = (!link.is_empty()).then_some(link.as_bytes());
            outcome = Some(tree.admit(name.as_bytes(), &comps, *kind, link, false));
            if outcome.as_ref().is_some_and(Result::is_err) {
                break;
            }
        }
        match (outcome.unwrap(), last) {
            (Ok(action), Ok(expected)) => assert_eq!(action, expected),
            (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{e}"),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn hard_links_outside_the_restored_path_are_skipped() {
        let mut tree = Tree::default();
        tree.admit(b"a/f", &[b"a", b"f"], EntryType::Regular, None, false)
            .unwrap();
        let action = tree
            .admit(b"b/h", &[b"b", b"h"], EntryType::Link, Some(b"a/f"), true)
            .unwrap();
        assert_eq!(
            action,
            Action::Skip(
                "/b/h: hard link to /a/f which is outside the restored path; skipped".into()
            )
        );
    }

    /// Restore and check refuse the same archives for the same reason, and neither
    /// accepts what the other refuses.
    #[rstest]
    #[case::escape(&[("../evil", EntryType::Regular, "", "x")])]
    #[case::absolute(&[("/tmp/evil", EntryType::Regular, "", "x")])]
    #[case::through_symlink(&[
        ("l", EntryType::Symlink, "/tmp", ""),
        ("l/evil", EntryType::Regular, "", "x"),
    ])]
    #[case::hard_link_through_symlink(&[
        ("l", EntryType::Symlink, "/etc", ""),
        ("h", EntryType::Link, "l/passwd", ""),
    ])]
    #[case::below_a_file(&[
        ("f", EntryType::Regular, "", "x"),
        ("f/g", EntryType::Regular, "", "x"),
    ])]
    #[case::good(&[
        ("d/f", EntryType::Regular, "", "x"),
        ("d/h", EntryType::Link, "d/f", ""),
        ("d/l", EntryType::Symlink, "../outside", ""),
    ])]
    fn check_and_restore_agree(#[case] entries: &[Raw<'_>]) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = write_archive(tmp.path(), &raw_tar(entries));
        let checked = check_archive(&archive, None, &mut |_| {}).map(|_| ());
        let target = tmp.path().join("t");
        let restored = extract(&archive, &options(&target), &mut |_| {}).map(|_| ());
        match (checked, restored) {
            (Ok(()), Ok(())) => {}
            (
                Err(ArchiveError::Stopped {
                    target: None,
                    at: a1,
                    cause: c1,
                }),
                Err(ArchiveError::Stopped {
                    target: Some(_),
                    at: a2,
                    cause: c2,
                }),
            ) if matches!(*c1, ArchiveError::Hostile { .. }) => {
                assert_eq!(a1, a2);
                assert_eq!(c1.to_string(), c2.to_string());
            }
            (c, r) => panic!("check: {c:?}\nrestore: {r:?}"),
        }
    }

    #[test]
    fn a_file_cut_short_is_not_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let mut tar_bytes = raw_tar(&[
            ("srv/app/ok", EntryType::Regular, "", "complete"),
            ("srv/app/x", EntryType::Regular, "", &"x".repeat(10_000)),
        ]);
        // Headers and data of the first entry take 1024 bytes, the second header 512.
        tar_bytes.truncate(1024 + 512 + 4096);
        let archive = write_archive(tmp.path(), &tar_bytes);

        let err = check_archive(&archive, None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Stopped { target: None, at: StoppedAt::Entry(e), cause }
                if e == "/srv/app/x"
                    && matches!(**cause, ArchiveError::Truncated { read: 4096, size: 10_000 })),
            "{err:?}"
        );

        let target = tmp.path().join("t");
        let err = extract(&archive, &options(&target), &mut |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "restore into {} stopped at entry /srv/app/x: the archive ends inside this \
                 entry: 4096 of its 10000 bytes are there",
                target.display()
            )) && text.contains("the target is incomplete"),
            "{text}"
        );
        assert_eq!(files(&target), ["srv", "srv/app", "srv/app/ok"]);
    }

    #[test]
    fn a_damaged_header_is_placed_after_the_last_good_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let mut tar_bytes = raw_tar(&[
            ("srv/app/done", EntryType::Regular, "", "complete"),
            ("srv/app/next", EntryType::Regular, "", "never read"),
        ]);
        tar_bytes[1024 + 148] ^= 0x01; // the second header's checksum
        let archive = write_archive(tmp.path(), &tar_bytes);
        let target = tmp.path().join("t");
        let err = extract(&archive, &options(&target), &mut |_| {}).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Stopped { at: StoppedAt::After(Some(e)), .. }
                if e == "/srv/app/done"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("the target is incomplete: the entries up to this one are in place"),
            "{err}"
        );
        assert_eq!(files(&target), ["srv", "srv/app", "srv/app/done"]);
    }

    #[test]
    fn leftover_partial_files_are_replaced_but_entries_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let leftover = tmp.path().join(".f.tierkeep-partial");
        fs::write(&leftover, b"left by a killed restore").unwrap();
        let p = Partial::create(tmp.path(), b"f", |_| false).unwrap();
        assert_eq!(p.path, leftover);
        assert_eq!(fs::metadata(&leftover).unwrap().len(), 0);
        assert_eq!(fs::metadata(&leftover).unwrap().mode() & 0o777, 0o600);
        drop(p);
        assert!(!leftover.exists(), "dropped unplaced: removed");

        // A restored entry that happens to have the partial name stays.
        fs::write(&leftover, b"an entry").unwrap();
        let p = Partial::create(tmp.path(), b"f", |n| n == b".f.tierkeep-partial").unwrap();
        assert_eq!(p.path, tmp.path().join(".f.tierkeep-partial.1"));
        assert_eq!(fs::read(&leftover).unwrap(), b"an entry");
    }

    #[test]
    fn partial_names_fit_in_a_file_name() {
        assert_eq!(partial_name(b"x", 0), b".x.tierkeep-partial");
        assert_eq!(partial_name(b"x", 2), b".x.tierkeep-partial.2");
        assert!(partial_name(&[b'n'; 255], 99).len() <= 255);
    }

    #[test]
    fn errors_print_each_cause_once() {
        let io = ArchiveError::io(
            "create",
            "/t/srv/x",
            io::Error::new(io::ErrorKind::PermissionDenied, "no permission here"),
        );
        let stopped = ArchiveError::Stopped {
            target: Some("/t".into()),
            at: StoppedAt::Entry("/srv/x".into()),
            cause: Box::new(io),
        };
        let chain = format!(
            "{:#}",
            anyhow::Error::from(crate::ops::OpsError::Archive(stopped))
        );
        assert_eq!(chain.matches("no permission here").count(), 1, "{chain}");
        assert!(chain.contains("stopped at entry /srv/x"), "{chain}");
    }

    #[test]
    fn components_refuse_escapes() {
        assert!(safe_components(b"../x").is_err());
        assert!(safe_components(b"a/../../x").is_err());
        assert!(safe_components(b"/etc/passwd").is_err());
        assert!(safe_components(b"").is_err());
        assert!(safe_components(b"./").is_err());
        assert!(safe_components(&[b'n'; 256]).is_err());
        assert!(safe_components(&[b'n'; 255]).is_ok());
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
