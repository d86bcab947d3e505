//! Unit tests of the reader: the safety rules, check and restore agreeing, partial
//! files, and the parsing of names and PAX times.

use super::disk::{Partial, parse_pax_time, partial_name};
use super::*;
use filetime::FileTime;
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
        Action::Skip("/b/h: hard link to /a/f which is outside the restored path; skipped".into())
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
    let checked = check_archive(&ArchiveSource::plain(&archive), None, &mut |_| {}).map(|_| ());
    let target = tmp.path().join("t");
    let restored = extract(
        &ArchiveSource::plain(&archive),
        &options(&target),
        &mut |_| {},
    )
    .map(|_| ());
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

    let err = check_archive(&ArchiveSource::plain(&archive), None, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Stopped { target: None, at: StoppedAt::Entry(e), cause }
            if e == "/srv/app/x"
                && matches!(**cause, ArchiveError::Truncated { read: 4096, size: 10_000 })),
        "{err:?}"
    );

    let target = tmp.path().join("t");
    let err = extract(
        &ArchiveSource::plain(&archive),
        &options(&target),
        &mut |_| {},
    )
    .unwrap_err();
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
    let err = extract(
        &ArchiveSource::plain(&archive),
        &options(&target),
        &mut |_| {},
    )
    .unwrap_err();
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
    let p = Partial::create(tmp.path(), None, b"f", |_| false).unwrap();
    assert_eq!(p.path, leftover);
    assert_eq!(fs::metadata(&leftover).unwrap().len(), 0);
    assert_eq!(fs::metadata(&leftover).unwrap().mode() & 0o777, 0o600);
    drop(p);
    assert!(!leftover.exists(), "dropped unplaced: removed");

    // A restored entry that happens to have the partial name stays.
    fs::write(&leftover, b"an entry").unwrap();
    let p = Partial::create(tmp.path(), None, b"f", |n| n == b".f.tierkeep-partial").unwrap();
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

/// The writing side of a restore into `root`, as its unit tests drive it.
fn disk_at(root: &Path) -> super::disk::Disk {
    super::disk::Disk {
        root: root.to_path_buf(),
        owners: false,
        keep_setuid: false,
        only: None,
        dirs: Vec::new(),
        known_dirs: std::collections::HashSet::new(),
        handles: Default::default(),
    }
}

#[test]
fn files_are_made_through_directories_the_kernel_opened_beneath_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("real")).unwrap();
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("swapped")).unwrap();
    let mut disk = disk_at(&root);
    // A directory that is one resolves (where openat2 exists at all).
    let real = disk.dir_fd(b"real/f", &[b"real"]).unwrap();
    if let Some(fd) = real {
        let p = Partial::create(&root.join("real"), Some(&fd), b"f", |_| false).unwrap();
        assert!(p.path.starts_with(root.join("real")));
        // A symlink in its place (as if swapped in after the walk) is refused by the
        // kernel, and nothing is made outside.
        let err = disk.dir_fd(b"swapped/f", &[b"swapped"]).unwrap_err();
        assert!(
            err.to_string().contains("changed during the restore"),
            "{err}"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}

#[test]
fn links_directories_and_their_modes_go_through_the_kernel_too() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("real")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(root.join("real/f"), b"data").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("swapped")).unwrap();
    let mut disk = disk_at(&root);
    if disk.dir_fd(b"real", &[]).unwrap().is_none() {
        eprintln!("not applicable: openat2 is not available here");
        return;
    }
    let meta = super::disk::Meta {
        mode: 0o700,
        uid: 0,
        gid: 0,
        mtime: FileTime::from_unix_time(1_000_000, 5),
        size: 0,
    };
    // Made through the handles: a symlink (its own mtime), a hard link, a directory.
    disk.symlink(b"real/l", &[b"real", b"l"], b"f", &meta)
        .unwrap();
    assert_eq!(fs::read_link(root.join("real/l")).unwrap(), Path::new("f"));
    let lmeta = fs::symlink_metadata(root.join("real/l")).unwrap();
    assert_eq!(FileTime::from_last_modification_time(&lmeta), meta.mtime);
    disk.hard_link(b"real/h", &[b"real", b"h"], b"real/f")
        .unwrap();
    assert_eq!(fs::read(root.join("real/h")).unwrap(), b"data");
    disk.dir(b"real/d", &[b"real", b"d"], &meta).unwrap();
    disk.finish_dirs().unwrap();
    let dmeta = fs::metadata(root.join("real/d")).unwrap();
    assert_eq!(dmeta.permissions().mode() & 0o7777, 0o700);
    assert_eq!(FileTime::from_last_modification_time(&dmeta), meta.mtime);

    // The walk saw a directory at `swapped` (as if a symlink was swapped in after it):
    // the kernel refuses to resolve through it, and nothing is made or changed outside.
    disk.known_dirs.insert(root.join("swapped"));
    let refused = |r: Result<(), ArchiveError>| {
        let err = r.unwrap_err();
        assert!(
            err.to_string().contains("changed during the restore"),
            "{err}"
        );
    };
    refused(disk.symlink(b"swapped/l", &[b"swapped", b"l"], b"x", &meta));
    refused(disk.hard_link(b"swapped/h", &[b"swapped", b"h"], b"real/f"));
    refused(disk.hard_link(b"real/h2", &[b"real", b"h2"], b"swapped/f"));
    refused(disk.dir(b"swapped/d", &[b"swapped", b"d"], &meta));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // A directory swapped for a symlink before its mode is set: refused, not followed.
    disk.dirs.clear();
    disk.dir(b"real/d2", &[b"real", b"d2"], &meta).unwrap();
    fs::rename(root.join("real/d2"), tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("real/d2")).unwrap();
    refused(disk.finish_dirs());
    let omode = fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(omode, 0o755);
}
