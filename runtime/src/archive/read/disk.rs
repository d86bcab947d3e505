//! The writing side of a restore: entries' metadata, copying their data, each regular
//! file written under its partial name and renamed into place, symlinks, hard links, and
//! directories' modes and mtimes applied last.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
// `create_new` (O_CREAT|O_EXCL) never follows a symlink at the last component.
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::checks::{Tree, hostile, original, safe_components};
use crate::archive::ArchiveError;

pub(super) fn parse_pax_time(value: &[u8]) -> Option<FileTime> {
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

/// An entry's metadata, from its header and PAX records.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: FileTime,
    /// Bytes of data.
    pub(super) size: u64,
}

pub(super) fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, ArchiveError> {
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
pub(super) fn copy_data(
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
pub(super) fn partial_name(leaf: &[u8], attempt: u32) -> Vec<u8> {
    let mut name = Vec::with_capacity(255);
    name.push(b'.');
    name.extend_from_slice(&leaf[..leaf.len().min(220)]);
    name.extend_from_slice(PARTIAL_SUFFIX);
    if attempt > 0 {
        name.extend_from_slice(format!(".{attempt}").as_bytes());
    }
    name
}

/// A directory of the target opened beneath its root: the kernel resolved every
/// component and refused symlinks (`openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`), so files made through it cannot land elsewhere even if a
/// symlink is swapped into the path meanwhile.
pub(super) type DirFd = std::sync::Arc<rustix::fd::OwnedFd>;

/// A file being written under its partial name, removed when dropped unless it was
/// renamed into place. With a [`DirFd`] every step goes through it; without one
/// (kernels before 5.6, or `openat2` refused by a sandbox) through paths.
pub(super) struct Partial {
    pub(super) path: PathBuf,
    name: Vec<u8>,
    dir: Option<DirFd>,
    file: File,
    placed: bool,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Partial {
    /// Creates the partial file for `leaf` in `dir` (opened as `fd` when given). One
    /// already there that is not an entry of this archive (`is_entry`) was left by a
    /// killed restore: it is replaced.
    pub(super) fn create(
        dir: &Path,
        fd: Option<&DirFd>,
        leaf: &[u8],
        is_entry: impl Fn(&[u8]) -> bool,
    ) -> Result<Partial, ArchiveError> {
        use rustix::fs::{AtFlags, Mode, OFlags};
        let mut attempt = 0;
        let mut removed = false;
        loop {
            let name = partial_name(leaf, attempt);
            let path = dir.join(OsStr::from_bytes(&name));
            let created = match fd {
                Some(fd) => rustix::fs::openat(
                    fd,
                    name.as_slice(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map(File::from)
                .map_err(errno),
                None => OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path),
            };
            match created {
                Ok(file) => {
                    return Ok(Partial {
                        path,
                        name,
                        dir: fd.cloned(),
                        file,
                        placed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    let not_dir = match fd {
                        Some(fd) => {
                            rustix::fs::statat(fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                                .is_ok_and(|st| {
                                    !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir()
                                })
                        }
                        None => fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()),
                    };
                    let leftover = !removed && !is_entry(&name) && not_dir;
                    if leftover {
                        tracing::info!(path = %path.display(), "removing a partial file an interrupted restore left");
                        remove(fd, &name, &path)
                            .map_err(|e| ArchiveError::io("remove", &path, e))?;
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

    /// Renames the file into place as `leaf` of the same directory.
    pub(super) fn place(&mut self, leaf: &[u8], target: &Path) -> Result<(), ArchiveError> {
        let moved = match &self.dir {
            Some(fd) => rustix::fs::renameat(fd, self.name.as_slice(), fd, leaf).map_err(errno),
            None => fs::rename(&self.path, target),
        };
        moved.map_err(|e| ArchiveError::io("rename the partial file into place as", target, e))?;
        self.placed = true;
        Ok(())
    }
}

fn remove(fd: Option<&DirFd>, name: &[u8], path: &Path) -> io::Result<()> {
    match fd {
        Some(fd) => rustix::fs::unlinkat(fd, name, rustix::fs::AtFlags::empty()).map_err(errno),
        None => fs::remove_file(path),
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.placed
            && let Err(e) = remove(self.dir.as_ref(), &self.name, &self.path)
        {
            tracing::warn!(path = %self.path.display(), "cannot remove the partial file: {e}");
        }
    }
}

pub(super) struct PendingDir {
    path: PathBuf,
    /// Its components below the root, joined with `/` (for `openat2`).
    rel: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: FileTime,
}

/// The writing side of a restore.
pub(super) struct Disk {
    pub(super) root: PathBuf,
    pub(super) owners: bool,
    pub(super) keep_setuid: bool,
    pub(super) only: Option<Vec<Vec<u8>>>,
    pub(super) dirs: Vec<PendingDir>,
    /// Directories below the root known to be real directories (see [`Disk::parent`]).
    pub(super) known_dirs: std::collections::HashSet<PathBuf>,
    /// The root opened once, and the last directory opened beneath it.
    pub(super) handles: Handles,
}

/// Directory handles of a restore (see [`DirFd`]).
#[derive(Default)]
pub(super) struct Handles {
    root: Option<rustix::fd::OwnedFd>,
    last: Option<(Vec<u8>, DirFd)>,
    /// `openat2` is not available here: paths are used.
    unsupported: bool,
}

impl Disk {
    pub(super) fn wanted(&self, comps: &[&[u8]]) -> bool {
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
    /// entry created; these were in the target before. A directory checked or created
    /// once is remembered for the rest of the restore (no entry can replace it: the
    /// model refuses that, and nothing here removes a directory), so most entries cost
    /// no `lstat` at all instead of one per path component.
    fn parent(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        create: bool,
    ) -> Result<PathBuf, ArchiveError> {
        let mut dir = self.root.clone();
        for comp in &comps[..comps.len() - 1] {
            dir.push(OsStr::from_bytes(comp));
            if self.known_dirs.contains(&dir) {
                continue;
            }
            match fs::symlink_metadata(&dir) {
                Ok(md) if md.is_dir() => {
                    self.known_dirs.insert(dir.clone());
                }
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
                    self.known_dirs.insert(dir.clone());
                }
                Err(e) => return Err(ArchiveError::io("stat", &dir, e)),
            }
        }
        Ok(dir)
    }

    /// The directory `dir_comps` below the root, opened by the kernel beneath the root
    /// without following any symlink; `None` where `openat2` is unavailable. A symlink
    /// found there now (the walk of [`Disk::parent`] saw a directory) was swapped in
    /// during the restore: refused.
    pub(super) fn dir_fd(
        &mut self,
        name: &[u8],
        dir_comps: &[&[u8]],
    ) -> Result<Option<DirFd>, ArchiveError> {
        use rustix::fs::OFlags;
        let rel = if dir_comps.is_empty() {
            b".".to_vec()
        } else {
            dir_comps.join(&b'/')
        };
        if let Some((last, fd)) = &self.handles.last
            && *last == rel
        {
            return Ok(Some(fd.clone()));
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Some(fd) = self.beneath(name, &rel, flags)? else {
            return Ok(None);
        };
        let fd: DirFd = std::sync::Arc::new(fd);
        self.handles.last = Some((rel, fd.clone()));
        Ok(Some(fd))
    }

    /// Opens `rel` (below the root) with `flags`, resolved by the kernel beneath the root
    /// without following any symlink (`openat2`); `None` where `openat2` is unavailable
    /// (remembered for the rest of the restore). What is not a directory there now was
    /// swapped in during the restore: refused as hostile.
    fn beneath(
        &mut self,
        name: &[u8],
        rel: &[u8],
        flags: rustix::fs::OFlags,
    ) -> Result<Option<rustix::fd::OwnedFd>, ArchiveError> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        use rustix::io::Errno;
        let h = &mut self.handles;
        if h.unsupported {
            return Ok(None);
        }
        if h.root.is_none() {
            let root = rustix::fs::open(
                &self.root,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| ArchiveError::io("open", &self.root, errno(e)))?;
            h.root = Some(root);
        }
        let Some(root) = h.root.as_ref() else {
            return Ok(None);
        };
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(root, rel, flags, Mode::empty(), how) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOSYS | Errno::PERM | Errno::INVAL) => {
                tracing::debug!("openat2 is not available: the restore resolves paths itself");
                h.unsupported = true;
                Ok(None)
            }
            Err(e @ (Errno::LOOP | Errno::XDEV | Errno::NOTDIR | Errno::NOENT)) => Err(hostile(
                name,
                format!(
                    "{} changed during the restore ({}): a symlink or file was put in place of \
                     a directory, and nothing is written through it",
                    self.root.join(OsStr::from_bytes(rel)).display(),
                    errno(e)
                ),
            )),
            Err(e) => Err(ArchiveError::io(
                "open",
                self.root.join(OsStr::from_bytes(rel)),
                errno(e),
            )),
        }
    }

    /// Removes whatever non-directory is at `leaf` of `fd` (`path` without one), never
    /// following a symlink.
    fn clear(fd: Option<&DirFd>, leaf: &[u8], path: &Path) -> Result<(), ArchiveError> {
        match lstat(fd, leaf, path) {
            Ok(Some(true)) => Err(ArchiveError::io(
                "replace",
                path,
                io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
            )),
            Ok(Some(false)) => {
                remove(fd, leaf, path).map_err(|e| ArchiveError::io("remove", path, e))
            }
            Ok(None) => Ok(()),
            Err(e) => Err(ArchiveError::io("stat", path, e)),
        }
    }

    /// The parent directory of `comps` (walked and created by [`Disk::parent`]), its
    /// handle opened beneath the root where `openat2` is available, the leaf and the
    /// entry's full path.
    fn place_of<'c>(
        &mut self,
        name: &[u8],
        comps: &[&'c [u8]],
    ) -> Result<(Option<DirFd>, &'c [u8], PathBuf), ArchiveError> {
        let parent = self.parent(name, comps, true)?;
        let (dir_comps, leaf) = comps.split_at(comps.len() - 1);
        let fd = self.dir_fd(name, dir_comps)?;
        Ok((fd, leaf[0], parent.join(OsStr::from_bytes(leaf[0]))))
    }

    pub(super) fn dir(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        meta: &Meta,
    ) -> Result<(), ArchiveError> {
        let (fd, leaf, path) = self.place_of(name, comps)?;
        let make = |fd: Option<&DirFd>| match fd {
            Some(fd) => {
                rustix::fs::mkdirat(fd, leaf, rustix::fs::Mode::from_raw_mode(0o777)).map_err(errno)
            }
            None => fs::create_dir(&path),
        };
        match lstat(fd.as_ref(), leaf, &path) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => {
                Self::clear(fd.as_ref(), leaf, &path)?;
                make(fd.as_ref()).map_err(|e| ArchiveError::io("create", &path, e))?;
            }
            Ok(None) => make(fd.as_ref()).map_err(|e| ArchiveError::io("create", &path, e))?,
            Err(e) => return Err(ArchiveError::io("stat", &path, e)),
        }
        self.known_dirs.insert(path.clone());
        self.dirs.push(PendingDir {
            path,
            rel: comps.join(&b'/'),
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
    pub(super) fn file(
        &mut self,
        tree: &Tree,
        name: &[u8],
        comps: &[&[u8]],
        data: &mut impl Read,
        meta: &Meta,
        buf: &mut [u8],
    ) -> Result<(u64, Option<String>), ArchiveError> {
        let (fd, leaf, path) = self.place_of(name, comps)?;
        let parent = path.parent().unwrap_or(&self.root).to_owned();
        let dir_comps = &comps[..comps.len() - 1];
        if lstat(fd.as_ref(), leaf, &path).is_ok_and(|d| d == Some(true)) {
            return Err(ArchiveError::io(
                "replace",
                &path,
                io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
            ));
        }
        let mut partial =
            Partial::create(&parent, fd.as_ref(), leaf, |n| tree.holds(dir_comps, n))?;
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
        partial.place(leaf, &path)?;
        Ok((written, warning))
    }

    pub(super) fn symlink(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), ArchiveError> {
        use rustix::fs::AtFlags;
        let (fd, leaf, path) = self.place_of(name, comps)?;
        Self::clear(fd.as_ref(), leaf, &path)?;
        let made = match &fd {
            Some(fd) => rustix::fs::symlinkat(target, fd, leaf).map_err(errno),
            None => std::os::unix::fs::symlink(OsStr::from_bytes(target), &path),
        };
        made.map_err(|e| ArchiveError::io("create symlink", &path, e))?;
        if self.owners {
            let owned = match &fd {
                Some(fd) => {
                    let (uid, gid) = ids(meta.uid, meta.gid);
                    rustix::fs::chownat(fd, leaf, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(errno)
                }
                None => {
                    std::os::unix::fs::lchown(&path, Some(meta.uid as u32), Some(meta.gid as u32))
                }
            };
            owned.map_err(|e| ArchiveError::io("chown", &path, e))?;
        }
        let timed = match &fd {
            Some(fd) => {
                rustix::fs::utimensat(fd, leaf, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno)
            }
            None => filetime::set_symlink_file_times(&path, meta.mtime, meta.mtime),
        };
        timed.map_err(|e| ArchiveError::io("set mtime of", &path, e))
    }

    pub(super) fn hard_link(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        let tcomps = safe_components(target).map_err(|r| hostile(name, r))?;
        let source = self
            .parent(name, &tcomps, false)?
            .join(OsStr::from_bytes(tcomps[tcomps.len() - 1]));
        let source_fd = self.dir_fd(name, &tcomps[..tcomps.len() - 1])?;
        let source_leaf = tcomps[tcomps.len() - 1];
        match lstat(source_fd.as_ref(), source_leaf, &source) {
            Ok(Some(false)) => {}
            Ok(Some(true)) => {
                return Err(ArchiveError::io(
                    "link to",
                    &source,
                    io::Error::new(io::ErrorKind::IsADirectory, "it is a directory"),
                ));
            }
            Ok(None) => {
                return Err(ArchiveError::io(
                    "stat",
                    &source,
                    io::Error::from(io::ErrorKind::NotFound),
                ));
            }
            Err(e) => return Err(ArchiveError::io("stat", &source, e)),
        }
        let (fd, leaf, path) = self.place_of(name, comps)?;
        Self::clear(fd.as_ref(), leaf, &path)?;
        // linkat without AT_SYMLINK_FOLLOW links the name itself, never a symlink's target.
        let linked = match (&source_fd, &fd) {
            (Some(from), Some(to)) => {
                rustix::fs::linkat(from, source_leaf, to, leaf, rustix::fs::AtFlags::empty())
                    .map_err(errno)
            }
            _ => fs::hard_link(&source, &path),
        };
        linked.map_err(|e| ArchiveError::io("create hard link", &path, e))
    }

    /// Applies directories' owners, modes and mtimes, deepest first, once their
    /// contents are in place: each directory opened beneath the root by the kernel
    /// (`openat2`, no symlink followed) and changed through its handle; by path where
    /// `openat2` is unavailable or the directory cannot be opened for reading.
    pub(super) fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.path.as_os_str().len()));
        let dirs = std::mem::take(&mut self.dirs);
        for d in &dirs {
            match self.open_dir(d)? {
                Some(fd) => {
                    if self.owners {
                        let (uid, gid) = ids(d.uid, d.gid);
                        rustix::fs::fchown(&fd, Some(uid), Some(gid))
                            .map_err(|e| ArchiveError::io("chown", &d.path, errno(e)))?;
                    }
                    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(d.mode & 0o7777))
                        .map_err(|e| ArchiveError::io("chmod", &d.path, errno(e)))?;
                    rustix::fs::futimens(&fd, &timestamps(d.mtime))
                        .map_err(|e| ArchiveError::io("set mtime of", &d.path, errno(e)))?;
                }
                None => {
                    if self.owners {
                        std::os::unix::fs::lchown(&d.path, Some(d.uid as u32), Some(d.gid as u32))
                            .map_err(|e| ArchiveError::io("chown", &d.path, e))?;
                    }
                    fs::set_permissions(&d.path, Permissions::from_mode(d.mode & 0o7777))
                        .map_err(|e| ArchiveError::io("chmod", &d.path, e))?;
                    filetime::set_file_times(&d.path, d.mtime, d.mtime)
                        .map_err(|e| ArchiveError::io("set mtime of", &d.path, e))?;
                }
            }
        }
        self.dirs = dirs;
        Ok(())
    }

    /// A restored directory opened for reading beneath the root (see [`Disk::beneath`]);
    /// `None` where `openat2` is unavailable, or the directory is not readable by this
    /// user.
    fn open_dir(&mut self, d: &PendingDir) -> Result<Option<rustix::fd::OwnedFd>, ArchiveError> {
        use rustix::fs::OFlags;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match self.beneath(&d.rel, &d.rel, flags) {
            Err(ArchiveError::Io { cause, .. })
                if cause.kind() == io::ErrorKind::PermissionDenied =>
            {
                Ok(None)
            }
            other => other,
        }
    }
}

/// Whether `leaf` of `fd` (`path` without one) is a directory (`Some(true)`), something
/// else (`Some(false)`), or absent; a symlink is never followed.
fn lstat(fd: Option<&DirFd>, leaf: &[u8], path: &Path) -> io::Result<Option<bool>> {
    let found = match fd {
        Some(fd) => rustix::fs::statat(fd, leaf, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
            .map_err(errno),
        None => fs::symlink_metadata(path).map(|m| m.is_dir()),
    };
    match found {
        Ok(is_dir) => Ok(Some(is_dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn ids(uid: u64, gid: u64) -> (rustix::fs::Uid, rustix::fs::Gid) {
    (
        rustix::fs::Uid::from_raw(uid as u32),
        rustix::fs::Gid::from_raw(gid as u32),
    )
}

fn timestamps(t: FileTime) -> rustix::fs::Timestamps {
    let at = rustix::fs::Timespec {
        tv_sec: t.unix_seconds(),
        tv_nsec: t.nanoseconds().into(),
    };
    rustix::fs::Timestamps {
        last_access: at,
        last_modification: at,
    }
}
