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
//! checked with `lstat` (once per directory) and never followed when it is a symlink,
//! and no directory is replaced. Every entry (regular files, made and renamed; symlinks;
//! hard links; directories) is then made through its directory opened by the kernel
//! beneath the target with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and each
//! directory's owner, mode and mtime are set through its own handle, so a symlink
//! swapped into the path after the check is refused too (where the kernel has no
//! `openat2`, paths are used). Symlink targets are data and are restored verbatim, since
//! they are never followed here. The model keeps a 16-byte digest of each name and its kind, about 40
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

mod checks;
mod decode;
mod disk;
pub mod frames;
#[cfg(test)]
mod tests;

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;

use tar::EntryType;

use self::checks::{Action, Tree, hostile, is_dot, shown_name};
pub use self::decode::{ArchiveSource, Decrypt};
use self::decode::{ChannelReader, check_result, spawn_decoder};
use self::disk::{Disk, copy_data, read_meta};
use super::{ArchiveError, StoppedAt};

pub use self::checks::safe_components;

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

/// Reads a whole archive through the decompressor, the tar parser and every safety rule
/// of [`extract`], without writing anything: proves it restores. Returns (entries,
/// archive bytes, SHA-256).
pub fn check_archive(
    archive: &ArchiveSource,
    expected: Option<&(u64, String)>,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, u64, String), ArchiveError> {
    let (rx, handle) = spawn_decoder(archive)?;
    let mut reader = ChannelReader::new(rx, progress);
    let mut ex = Extractor::new(None);
    let parsed = ex.run(&mut reader);
    let (bytes, sha) = ex.finish_stream(reader, handle, parsed, expected)?;
    Ok((ex.summary.entries, bytes, sha))
}

/// Lists a whole archive by reading its stream (format 1 has no index): each entry's
/// name, kind, size, mtime, mode, owner and link target, the other index fields zero.
pub fn list_archive(archive: &ArchiveSource) -> Result<Vec<super::index::Entry>, ArchiveError> {
    use super::index::{Entry, Kind, Name};
    let (rx, handle) = spawn_decoder(archive)?;
    let mut noop = |_| {};
    let reader = ChannelReader::new(rx, &mut noop);
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(reader);
    let read = |e| ArchiveError::stream("read", e);
    for entry in ar.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let Some(kind) = Kind::of(entry.header().entry_type()) else {
            continue;
        };
        let name = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| Name(l.into_owned()));
        let meta = read_meta(&mut entry)?;
        out.push(Entry {
            name: Name(name),
            kind,
            size: meta.size,
            mtime: meta.mtime.unix_seconds(),
            mtime_nsec: i64::from(meta.mtime.nanoseconds()),
            ctime: 0,
            ctime_nsec: 0,
            mode: meta.mode,
            uid: u32::try_from(meta.uid).unwrap_or(u32::MAX),
            gid: u32::try_from(meta.gid).unwrap_or(u32::MAX),
            dev: 0,
            ino: 0,
            link: link.filter(|_| matches!(kind, Kind::Symlink | Kind::Hardlink)),
            offset: 0,
            data: 0,
            frames: [0, 0],
            chunked: false,
        });
    }
    drop(ar);
    let _ = handle.join();
    Ok(out)
}

/// Extracts `archive` into `opts.target`.
pub fn extract(
    archive: &ArchiveSource,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractSummary, ArchiveError> {
    let disk = disk_for(opts)?;
    let (rx, handle) = spawn_decoder(archive)?;
    let mut reader = ChannelReader::new(rx, progress);
    let mut ex = Extractor::new(Some(disk));
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

/// Prepares the target of `opts` and the writing side that restores into it.
fn disk_for(opts: &ExtractOptions) -> Result<Disk, ArchiveError> {
    prepare_target(&opts.target, opts.force)?;
    let canonical =
        fs::canonicalize(&opts.target).map_err(|e| ArchiveError::io("resolve", &opts.target, e))?;
    Ok(Disk {
        root: opts.target.clone(),
        owners: opts.owners,
        keep_setuid: keeps_setuid_bits(&canonical, opts.keep_setuid),
        only: only_components(opts.only.as_deref())?,
        dirs: Vec::new(),
        known_dirs: std::collections::HashSet::new(),
        handles: Default::default(),
    })
}

/// The components of a `--path` (stored form), refused when it is not a safe name.
fn only_components(only: Option<&Path>) -> Result<Option<Vec<Vec<u8>>>, ArchiveError> {
    let Some(p) = only else {
        return Ok(None);
    };
    let bytes = p.as_os_str().as_bytes();
    let comps = safe_components(bytes).map_err(|reason| ArchiveError::Hostile {
        entry: p.display().to_string(),
        reason,
    })?;
    Ok(Some(comps.into_iter().map(<[u8]>::to_vec).collect()))
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
