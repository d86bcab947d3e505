//! Shared helpers of the end-to-end suites: a scratch host (config, data and source
//! folders in a temporary directory), a generator of trees holding every kind of entry,
//! and a comparison of two trees down to modes, owners, nanosecond mtimes and links.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use filetime::FileTime;
use sha2::{Digest, Sha256};

/// A scratch host: `root/src` is backed up, `root/data` holds catalog and zones.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Extra environment for every `tierkeep` run (S3 credentials).
    pub env: Vec<(&'static str, String)>,
}

impl Host {
    /// A host with `extra` TOML appended to a minimal config.
    pub fn new(extra: &str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("tierkeep-test-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("src")).expect("src");
        let config = root.join("tierkeep.toml");
        let text = format!(
            "host_id = \"test-host\"\ndata_dir = \"{}\"\n[source]\npaths = [\"{}\"]\n{extra}",
            root.join("data").display(),
            root.join("src").display()
        );
        fs::write(&config, text).expect("config");
        Host {
            dir,
            config,
            env: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn src(&self) -> PathBuf {
        self.root().join("src")
    }

    pub fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    /// `tierkeep --config <this host's config> ARGS`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        Command::from_std(self.std_cmd(args))
    }

    /// The same command as a `std::process::Command`, to spawn and watch.
    pub fn std_cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("tierkeep"));
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("TIERKEEP_LOG");
        // The suites' backups are small: keep the black box's disk reserve small too, so
        // that a test machine with less than the default 1 GiB free still runs them (the
        // reserve itself is tested with an explicit value).
        c.env("TIERKEEP_ZONES__BLACK_BOX__MIN_FREE", "16MiB");
        // Only what the test gives: no credentials or profile from the caller's shell.
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ] {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs a command that must succeed and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run tierkeep");
        assert!(
            out.status.success(),
            "tierkeep {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd(args).output().expect("run tierkeep");
        assert_eq!(
            out.status.code(),
            Some(code),
            "tierkeep {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Takes a backup and returns its manifest (from `--json`).
    pub fn backup(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["backup", "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).expect("backup --json");
        v["manifest"].clone()
    }

    /// `list --json`.
    pub fn list(&self, zone: Option<&str>) -> Vec<serde_json::Value> {
        let mut args = vec!["list", "--json"];
        if let Some(z) = zone {
            args.extend_from_slice(&["--zone", z]);
        }
        serde_json::from_str(&self.ok(&args)).expect("list --json")
    }

    /// Restores `id` into a fresh folder, checks the result is identical to the source
    /// tree (setuid bits too: `--keep-setuid`), removes it, and returns the command's
    /// output.
    pub fn restore_and_compare(&self, id: &str) -> String {
        let target = self.root().join(format!("restore-{id}"));
        let out = self.ok(&[
            "restore",
            id,
            "--to",
            target.to_str().expect("utf8"),
            "--keep-setuid",
        ]);
        assert_same_tree(&self.src(), &target.join(entry_of(&self.src())));
        fs::remove_dir_all(&target).expect("cleanup");
        out
    }

    /// `restore ID --to TARGET --path PATH --json` (must succeed), parsed.
    pub fn restore_path(&self, id: &str, target: &Path, path: &Path) -> serde_json::Value {
        let out = self.ok(&[
            "restore",
            id,
            "--to",
            target.to_str().expect("utf8"),
            "--path",
            path.to_str().expect("utf8"),
            "--json",
        ]);
        serde_json::from_str(&out).expect("restore --json")
    }

    /// The folder of a backup in a local zone.
    pub fn zone_dir(&self, zone: &str, id: &str) -> PathBuf {
        self.data().join(zone).join("test-host").join(id)
    }
}

/// Restores an archive with standard tools alone: `zstd -d < ARCHIVE | tar -xp -C TARGET`.
pub fn untar_with_standard_tools(archive: &Path, target: &Path) {
    fs::create_dir_all(target).expect("mkdir");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("zstd -d -q < \"$1\" | tar -xp -C \"$2\"")
        .arg("sh")
        .arg(archive)
        .arg(target)
        .status()
        .expect("zstd | tar");
    assert!(
        status.success(),
        "zstd -d | tar -x failed on {}",
        archive.display()
    );
}

/// The entry name of an absolute path (its path without the leading `/`).
pub fn entry_of(path: &Path) -> PathBuf {
    PathBuf::from(path.to_string_lossy().trim_start_matches('/'))
}

fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        path,
        FileTime::from_unix_time(secs, nanos),
        FileTime::from_unix_time(secs, nanos),
    )
    .expect("set mtime");
}

pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Fills `root` with every kind of entry the archive format must keep: regular files
/// (empty, small, a few MiB), nested and empty directories, relative, absolute and
/// dangling symlinks, hard links, unusual modes, owners (when root), nanosecond mtimes on
/// files, directories and symlinks, long and non-UTF-8 names.
pub fn make_tree(root: &Path) {
    let as_root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let d = |p: &str| {
        let path = root.join(p);
        fs::create_dir_all(&path).expect("mkdir");
        path
    };
    let f = |p: &str, data: &[u8], mode: u32| {
        let path = root.join(p);
        fs::write(&path, data).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    };
    d("app/config");
    d("app/data/nested/deeper");
    d("empty-dir");
    d("empty-dir-2/inner-empty");
    f("app/config/app.toml", b"port = 8080\n", 0o640);
    f("app/empty-file", b"", 0o644);
    f("app/run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    f(
        "app/data/blob.bin",
        &pseudo_random(7, 3 * 1024 * 1024 + 17),
        0o600,
    );
    f(
        "app/data/text.log",
        "line of text that compresses well\n"
            .repeat(20_000)
            .as_bytes(),
        0o644,
    );
    f("app/data/nested/deeper/x", b"deep", 0o444);
    f("app/setuid-tool", b"tool", 0o4755);
    f("app/sticky-ish", b"sticky", 0o1777 & 0o7777);
    // Hard links: three names for one inode, and a pair.
    let h = f("app/data/hard-a", b"shared by three names", 0o640);
    fs::hard_link(&h, root.join("app/data/hard-b")).expect("link");
    fs::hard_link(&h, root.join("app/data/nested/hard-c")).expect("link");
    let p = f("app/pair-1", b"pair", 0o600);
    fs::hard_link(&p, root.join("app/pair-2")).expect("link");
    // Symlinks.
    symlink("config/app.toml", root.join("app/link-rel")).expect("symlink");
    symlink("/etc/hostname", root.join("app/link-abs")).expect("symlink");
    symlink("does/not/exist", root.join("app/link-dangling")).expect("symlink");
    symlink("data/nested", root.join("app/link-dir")).expect("symlink");
    symlink("../app/./config//", root.join("app/link-odd")).expect("symlink");
    // Long names: a component of 200 bytes and a path well over 255 bytes.
    let long_dir = format!("long/{}/{}", "d".repeat(120), "e".repeat(120));
    d(&long_dir);
    f(&format!("{long_dir}/{}", "f".repeat(200)), b"long", 0o644);
    symlink(
        format!("{}/{}", "t".repeat(150), "u".repeat(100)),
        root.join(format!("{long_dir}/long-link")),
    )
    .expect("symlink");
    fs::hard_link(
        root.join(format!("{long_dir}/{}", "f".repeat(200))),
        root.join("long/hard-to-long"),
    )
    .expect("link");
    // Non-UTF-8 and unusual names.
    let odd = root.join(OsStr::from_bytes(b"odd-\xff\xfe-name"));
    fs::write(&odd, b"latin-1 bytes").expect("write");
    fs::create_dir(root.join(OsStr::from_bytes(b"dir-\xe9t\xe9"))).expect("mkdir");
    fs::write(root.join("spaces and ünïcödé ✓.txt"), b"unicode").expect("write");
    symlink(
        OsStr::from_bytes(b"target-\x80"),
        root.join(OsStr::from_bytes(b"link-\x81")),
    )
    .expect("symlink");
    // Owners.
    if as_root {
        std::os::unix::fs::chown(root.join("app/config/app.toml"), Some(1234), Some(5678))
            .expect("chown");
        std::os::unix::fs::lchown(root.join("app/link-rel"), Some(4321), Some(8765))
            .expect("lchown");
        std::os::unix::fs::chown(root.join("app/config"), Some(1000), Some(1000)).expect("chown");
    }
    // Modes of directories last (a read-only directory cannot take new entries).
    fs::set_permissions(
        root.join("app/data/nested/deeper"),
        fs::Permissions::from_mode(0o555),
    )
    .expect("chmod");
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o700)).expect("chmod");
    // Nanosecond mtimes everywhere, children before parents.
    let mut all = Vec::new();
    walk(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(
            p,
            1_600_000_000 + i as i64 * 977,
            ((i as u64 * 123_456_789) % 1_000_000_000) as u32,
        );
    }
    set_mtime(root, 1_650_000_000, 42);
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let md = fs::symlink_metadata(&p).expect("lstat");
        out.push(p.clone());
        if md.is_dir() {
            walk(&p, out);
        }
    }
}

/// One entry's observable state.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub sha256: Option<String>,
    pub link: Option<Vec<u8>>,
    /// Index of the hard-link group (by first path in sorted order), if nlink > 1.
    pub link_group: Option<PathBuf>,
}

/// Describes every entry below `root` (not `root` itself), keyed by relative path.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut paths = Vec::new();
    walk(root, &mut paths);
    paths.sort();
    let mut groups: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut out = BTreeMap::new();
    for p in paths {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let sha256 = ft.is_file().then(|| {
            let mut h = Sha256::new();
            let mut f = fs::File::open(&p).expect("open");
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        });
        let link_group = (ft.is_file() && md.nlink() > 1).then(|| {
            groups
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        out.insert(
            rel,
            Node {
                kind,
                mode: if ft.is_symlink() {
                    0
                } else {
                    md.mode() & 0o7777
                },
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if ft.is_dir() { 0 } else { md.len() },
                sha256,
                link: ft.is_symlink().then(|| {
                    fs::read_link(&p)
                        .expect("readlink")
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                link_group,
            },
        );
    }
    out
}

/// Asserts two trees are identical entry by entry.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = describe(expected);
    let b = describe(actual);
    let missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "trees differ: missing {missing:?}, extra {extra:?}"
    );
    for (k, na) in &a {
        let nb = &b[k];
        assert_eq!(na, nb, "entry {} differs", k.display());
    }
    let ma = fs::symlink_metadata(expected).expect("lstat");
    let mb = fs::symlink_metadata(actual).expect("lstat");
    assert_eq!(
        (ma.mode() & 0o7777, ma.mtime(), ma.mtime_nsec()),
        (mb.mode() & 0o7777, mb.mtime(), mb.mtime_nsec()),
        "root directory differs"
    );
}

/// Hex SHA-256 of a file.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    let mut h = Sha256::new();
    h.update(fs::read(path).expect("read"));
    hex::encode(h.finalize())
}
