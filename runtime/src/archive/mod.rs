//! The backup archive: one tar stream (GNU headers with PAX records for nanosecond
//! times), compressed with zstd, plus a small JSON manifest. Any archive restores with
//! `zstd -d < archive.tar.zst | tar -x` and its `sha256sum` matches the manifest.
//!
//! Format 2 (written now) cuts the stream into independent frames and appends an entry
//! index and a seek table in skippable frames ([`index`]); format 1 (one zstd stream,
//! no index) is still read. [`write`] streams a source tree into an archive file,
//! copying unchanged frames from the previous archive; [`read`] verifies and extracts
//! one, refusing entries that would escape the target, in whole or from the frames that
//! hold one path ([`read::frames`]).

pub(crate) mod direct;
mod framer;
pub mod index;
pub mod manifest;
pub mod read;
pub mod write;

use std::io::{self, Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use direct::BackgroundWriter;
pub use manifest::{MANIFEST_FORMAT, Manifest};

/// Errors of the archive writer and reader.
///
/// Every message includes its cause and no variant returns it from `source()`, so a
/// chain printed with `{:#}` (as the CLI does) shows each cause once, and `to_string()`
/// (catalog notes, `verify` results) still carries all of it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An encrypted archive cannot be decrypted (no identity, a wrong one).
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
    /// I/O on a source or target path failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// Writing or reading the archive stream itself failed.
    #[error("archive stream {action}: {cause}")]
    Stream {
        /// What was being done.
        action: &'static str,
        /// The cause.
        cause: io::Error,
    },
    /// The archive contains an entry that is refused (escapes the target, goes through a
    /// symlink, is malformed).
    #[error("refused archive entry `{entry}`: {reason}; the archive may be hostile or corrupted")]
    Hostile {
        /// The entry name, lossily decoded.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file entry's data stops before the size its header gives.
    #[error(
        "the archive ends inside this entry: {read} of its {size} bytes are there (the \
         archive is truncated, or was written by a faulty tool): restore from another backup"
    )]
    Truncated {
        /// Bytes present.
        read: u64,
        /// Bytes the header announced.
        size: u64,
    },
    /// Extraction (or, without a target, the check of `verify --deep`) stopped at an
    /// entry; says what the target holds.
    #[error("{}", stopped_message(target.as_deref(), at, cause))]
    Stopped {
        /// The restore target; `None` for a check that writes nothing.
        target: Option<PathBuf>,
        /// Where in the archive.
        at: StoppedAt,
        /// Why.
        cause: Box<ArchiveError>,
    },
    /// The archive bytes do not match the manifest.
    #[error(
        "archive does not match its manifest: expected {expected_bytes} bytes with SHA-256 \
         {expected_sha256}, read {actual_bytes} bytes with SHA-256 {actual_sha256}; the copy \
         is corrupted: restore from another backup"
    )]
    Mismatch {
        /// Size recorded in the manifest.
        expected_bytes: u64,
        /// Hash recorded in the manifest.
        expected_sha256: String,
        /// Size read.
        actual_bytes: u64,
        /// Hash read.
        actual_sha256: String,
    },
    /// A restore target is not empty and `--force` was not given.
    #[error(
        "restore target {0} is not empty: choose an empty or new directory, or pass --force to \
         restore over its contents"
    )]
    TargetNotEmpty(PathBuf),
    /// A format 2 archive's entry index is missing, damaged or disagrees with the
    /// archive.
    #[error("the archive's entry index cannot be used: {0}")]
    Index(String),
    /// The restore asked for a path the archive does not hold.
    #[error("the backup holds nothing at {0}")]
    PathNotInBackup(String),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Where in an archive an extraction or a check stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoppedAt {
    /// While handling this entry (its original path, `/srv/app/x`).
    Entry(String),
    /// Reading the header that follows this entry (`None`: the first header).
    After(Option<String>),
    /// After the last entry: setting directories' modes and times, or checking the
    /// archive's size and hash.
    End,
}

fn stopped_message(
    target: Option<&std::path::Path>,
    at: &StoppedAt,
    cause: &ArchiveError,
) -> String {
    let place = match (at, cause) {
        // A refused entry names itself.
        (StoppedAt::Entry(_), ArchiveError::Hostile { .. }) => String::new(),
        (StoppedAt::Entry(e), _) => format!(" at entry {e}"),
        (StoppedAt::After(Some(e)), _) => format!(" after entry {e}"),
        (StoppedAt::After(None), _) => " at its first entry".to_owned(),
        (StoppedAt::End, _) => " after its last entry".to_owned(),
    };
    let Some(target) = target else {
        return format!("archive check stopped{place}: {cause}; a restore would stop there too");
    };
    let holds = match at {
        StoppedAt::Entry(_) => "the entries before this one are in place, this one was not written",
        StoppedAt::After(Some(_)) => "the entries up to this one are in place",
        StoppedAt::After(None) => "nothing was restored",
        StoppedAt::End => {
            "every entry was written, but directories may lack their modes and times and \
             the data may not match the backup"
        }
    };
    format!(
        "restore into {} stopped{place}: {cause}; the target is incomplete: {holds}; nothing \
         was written outside it",
        target.display()
    )
}

impl ArchiveError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        ArchiveError::Io {
            action,
            path: path.into(),
            cause,
        }
    }
    pub(crate) fn stream(action: &'static str, cause: io::Error) -> Self {
        ArchiveError::Stream { action, cause }
    }
}

/// A writer that hashes and counts every byte passing through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// Returns the inner writer, the byte count and the hex SHA-256.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts every byte passing through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// The byte count and hex SHA-256 so far.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Hashes a whole file and compares it with `expected` (size, hex SHA-256).
pub fn verify_file(
    path: &std::path::Path,
    expected: &(u64, String),
    progress: &mut dyn FnMut(u64),
) -> Result<(), ArchiveError> {
    check_digest(expected, hash_file(path, progress)?)
}

/// Compares a copy's (bytes, hex SHA-256) with the `expected` ones.
pub fn check_digest(expected: &(u64, String), actual: (u64, String)) -> Result<(), ArchiveError> {
    if actual.0 != expected.0 || !actual.1.eq_ignore_ascii_case(&expected.1) {
        return Err(ArchiveError::Mismatch {
            expected_bytes: expected.0,
            expected_sha256: expected.1.clone(),
            actual_bytes: actual.0,
            actual_sha256: actual.1,
        });
    }
    Ok(())
}

/// Hashes a whole file: (bytes, hex SHA-256).
pub fn hash_file(
    path: &std::path::Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, String), ArchiveError> {
    let file = direct::Reader::open(path).map_err(|e| ArchiveError::io("open", path, e))?;
    let mut reader = HashingReader::new(file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ArchiveError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        progress(n as u64);
    }
    Ok(reader.finish())
}

#[cfg(test)]
mod round_trip {
    //! Property test: any tree of files, directories and symlinks with arbitrary names
    //! (non-UTF-8 and long ones too), contents, modes and nanosecond mtimes comes back
    //! identical through [`write::write_archive`] and [`read::extract`].

    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Kind {
        File(Vec<u8>),
        Dir,
        Symlink(Vec<u8>),
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(
                prop_oneof![b'a'..=b'z', Just(b' '), Just(b'-'), 0x80u8..=0xff],
                1..12
            ),
            (101usize..180).prop_map(|n| vec![b'L'; n]),
        ]
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    }

    fn entry() -> impl Strategy<Value = (Vec<Vec<u8>>, Kind, u32, i64, u32)> {
        (
            proptest::collection::vec(name(), 1..4),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Kind::File),
                Just(Kind::Dir),
                name().prop_map(Kind::Symlink),
            ],
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o4750)],
            0i64..2_000_000_000,
            0u32..1_000_000_000,
        )
    }

    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u32, i64, i64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let md = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let (kind, data) = if md.is_dir() {
                    stack.push(p.clone());
                    ("dir", vec![])
                } else if md.file_type().is_symlink() {
                    (
                        "symlink",
                        fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec(),
                    )
                } else {
                    ("file", fs::read(&p).unwrap())
                };
                let mode = if kind == "symlink" {
                    0
                } else {
                    md.mode() & 0o7777
                };
                out.insert(
                    rel,
                    (kind.to_owned(), mode, md.mtime(), md.mtime_nsec(), data),
                );
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn any_tree_round_trips(entries in proptest::collection::vec(entry(), 1..25)) {
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("src");
            fs::create_dir(&src).unwrap();
            let mut dirs = Vec::new();
            for (comps, kind, mode, secs, nanos) in &entries {
                let mut path = src.clone();
                let mut ok = true;
                for c in &comps[..comps.len() - 1] {
                    path.push(OsStr::from_bytes(c));
                    match fs::symlink_metadata(&path) {
                        Ok(md) if md.is_dir() => {}
                        Ok(_) => { ok = false; break; }
                        Err(_) => fs::create_dir(&path).unwrap(),
                    }
                }
                path.push(OsStr::from_bytes(&comps[comps.len() - 1]));
                if !ok || fs::symlink_metadata(&path).is_ok() {
                    continue;
                }
                match kind {
                    Kind::File(data) => {
                        fs::write(&path, data).unwrap();
                        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                    }
                    Kind::Dir => {
                        fs::create_dir(&path).unwrap();
                        dirs.push((path.clone(), *secs, *nanos));
                        continue;
                    }
                    Kind::Symlink(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), &path).unwrap(),
                }
                let t = filetime::FileTime::from_unix_time(*secs, *nanos);
                filetime::set_symlink_file_times(&path, t, t).unwrap();
            }
            // Directory times last, deepest first, so adding children does not move them.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.0.as_os_str().len()));
            for (p, secs, nanos) in dirs {
                let t = filetime::FileTime::from_unix_time(secs, nanos);
                filetime::set_file_times(&p, t, t).unwrap();
            }
            let archive = tmp.path().join("a.tar.zst");
            let opts = super::write::WriteOptions {
                sources: vec![src.clone()],
                exclude: vec![],
                skip_paths: vec![],
                level: 1,
                threads: 0,
                previous: None,
            };
            let summary = super::write::write_archive(&opts, &archive, &mut |_| {}).unwrap();
            prop_assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
            let target = tmp.path().join("restore");
            let x = super::read::ExtractOptions {
                target: target.clone(),
                force: false,
                only: None,
                expected: Some((summary.archive_bytes, summary.archive_sha256.clone())),
                owners: false,
                keep_setuid: true,
            };
            super::read::extract(&super::read::ArchiveSource::plain(&archive), &x, &mut |_| {}).unwrap();
            let restored = target.join(src.strip_prefix("/").unwrap());
            prop_assert_eq!(snapshot(&src), snapshot(&restored));
        }
    }
}
