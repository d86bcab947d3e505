//! The CLI as a black box: backups of real trees on a real filesystem, restores compared
//! entry by entry, standard tools on the archives, hostile archives, full zones,
//! configuration errors, and several processes sharing one catalog.

#[path = "../support/mod.rs"]
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command as StdCommand, Stdio};

use predicates::prelude::*;
use support::{Host, assert_same_tree, entry_of, make_tree, sha256_file};

fn restored_src(host: &Host, target: &Path) -> std::path::PathBuf {
    target.join(entry_of(&host.src()))
}

#[test]
fn round_trip_keeps_every_kind_of_entry() {
    let host = Host::new("");
    make_tree(&host.src());
    let m = host.backup(&[]);
    let id = m["id"].as_str().expect("id");
    assert_eq!(m["kind"], "scheduled");
    let target = host.root().join("restore");
    // `--keep-setuid`: the tree has a setuid file, and the copy must be identical.
    let out = host.ok(&[
        "restore",
        id,
        "--to",
        target.to_str().expect("utf8"),
        "--keep-setuid",
    ]);
    assert!(out.contains("restored"), "{out}");
    assert_same_tree(&host.src(), &restored_src(&host, &target));

    // The list agrees with the manifest.
    let list = host.list(None);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["zone"], "black-box");
    assert_eq!(list[0]["sha256"], m["archive_sha256"]);
    assert_eq!(list[0]["size_bytes"], m["archive_bytes"]);
}

#[test]
fn archives_restore_with_zstd_and_tar_alone() {
    let host = Host::new("");
    make_tree(&host.src());
    let m = host.backup(&[]);
    let id = m["id"].as_str().expect("id");
    let dir = host.zone_dir("black-box", id);
    let archive = dir.join("archive.tar.zst");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    // sha256sum, the standard tool, agrees with the manifest.
    let out = StdCommand::new("sha256sum")
        .arg(&archive)
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        manifest["archive_sha256"].as_str()
    );
    assert_eq!(
        fs::metadata(&archive).expect("stat").len(),
        manifest["archive_bytes"].as_u64().expect("bytes")
    );

    // `export` writes the same bytes; `zstd -d | tar -x` restores the tree.
    let exported = host.root().join("exported.tar.zst");
    host.ok(&["export", id, "--to", exported.to_str().expect("utf8")]);
    assert_eq!(sha256_file(&exported), sha256_file(&archive));
    let target = host.root().join("by-tar");
    support::untar_with_standard_tools(&exported, &target);
    assert_same_tree(&host.src(), &restored_src(&host, &target));
}

#[test]
fn single_path_restore_and_target_rules() {
    let host = Host::new("");
    make_tree(&host.src());
    let id = host.backup(&[])["id"].as_str().expect("id").to_owned();
    let src = host.src();

    // One directory's subtree.
    let sub = src.join("app/data");
    let t1 = host.root().join("t1");
    host.ok(&[
        "restore",
        &id,
        "--to",
        t1.to_str().expect("utf8"),
        "--path",
        sub.to_str().expect("utf8"),
    ]);
    let restored = t1.join(entry_of(&sub));
    assert_same_tree(&sub, &restored);
    assert!(!t1.join(entry_of(&src.join("app/config"))).exists());

    // One file.
    let file = src.join("app/config/app.toml");
    let t2 = host.root().join("t2");
    host.ok(&[
        "restore",
        &id,
        "--to",
        t2.to_str().expect("utf8"),
        "--path",
        file.to_str().expect("utf8"),
    ]);
    assert_eq!(
        fs::read(t2.join(entry_of(&file))).expect("read"),
        fs::read(&file).expect("read")
    );

    // A path the backup does not hold.
    let t3 = host.root().join("t3");
    let err = host.fails(
        &[
            "restore",
            &id,
            "--to",
            t3.to_str().expect("utf8"),
            "--path",
            "/no/such/path",
        ],
        3,
    );
    assert!(err.contains("holds nothing at"), "{err}");

    // A non-empty target is refused unless --force.
    let err = host.fails(&["restore", &id, "--to", t2.to_str().expect("utf8")], 3);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    host.ok(&[
        "restore",
        &id,
        "--to",
        t2.to_str().expect("utf8"),
        "--force",
        "--keep-setuid",
    ]);
    assert_same_tree(&src, &restored_src(&host, &t2));

    // Unknown ids are refused with exit 3.
    host.fails(
        &[
            "restore",
            "20200101T000000.000Z-000000000000",
            "--to",
            "/tmp/x",
        ],
        3,
    );
}

#[test]
fn full_zones_refuse_before_writing() {
    let host = Host::new("[zones.reserved]\nmax_backups = 1\n[zones.black_box]\nmax_backups = 1\n");
    fs::write(host.src().join("f"), b"data").expect("write");
    let first = host.backup(&["--manual", "--label", "before upgrade"]);
    assert_eq!(first["kind"], "manual");
    assert_eq!(first["label"], "before upgrade");
    let reserved = host.data().join("reserved/test-host");
    let count = |p: &Path| fs::read_dir(p).map(|r| r.count()).unwrap_or(0);
    assert_eq!(count(&reserved), 1);

    let err = host.fails(&["backup", "--manual"], 3);
    assert!(err.contains("reserved zone is full"), "{err}");
    assert!(err.contains("holds 1 of 1"), "{err}");
    assert!(err.contains("tierkeep delete"), "{err}");
    assert_eq!(count(&reserved), 1, "nothing new in the reserved zone");
    assert_eq!(
        count(&host.data().join("reserved/.staging")),
        0,
        "nothing staged"
    );
    assert_eq!(host.list(Some("reserved")).len(), 1);

    // A full black box is different: its oldest backup ages early into the deletion zone.
    let a = host.backup(&[]);
    let b = host.backup(&[]);
    assert_eq!(host.list(Some("black-box"))[0]["id"], b["id"]);
    assert_eq!(host.list(Some("deletion"))[0]["id"], a["id"]);
    assert_eq!(
        host.list(Some("reserved")).len(),
        1,
        "the reserved zone is untouched"
    );

    // The refusals are in the audit trail; the operator can make room explicitly.
    let history = host.ok(&["catalog", "history"]);
    assert!(history.contains("refused"), "{history}");
    let id = first["id"].as_str().expect("id");
    host.fails(&["delete", id], 2);
    host.ok(&["delete", id, "--yes"]);
    host.backup(&["--manual"]);
    let trail = host.ok(&["catalog", "history", id]);
    assert!(
        trail.contains("deleted") && trail.contains("created"),
        "{trail}"
    );
}

/// (name, type, link target, content) of one raw tar entry.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// Writes a tar stream by hand (raw names, no checks), compressed with zstd.
fn hostile_archive(entries: &[RawEntry<'_>]) -> Vec<u8> {
    zstd::encode_all(&raw_tar(entries)[..], 3).expect("zstd")
}

/// Writes a tar stream by hand (raw names, no checks).
fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            h.set_mtime(1_600_000_000);
            let slot = &mut h.as_old_mut().name;
            slot[..name.len()].copy_from_slice(name);
            let l = &mut h.as_old_mut().linkname;
            l[..link.len()].copy_from_slice(link);
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.finish().expect("finish");
    }
    tar_bytes
}

/// The refusal in an error message: from "refused archive entry" to the end of its
/// reason.
fn refusal(text: &str) -> &str {
    let start = text.find("refused archive entry").expect("a refusal");
    let len = text[start..]
        .find("; the archive may be hostile")
        .expect("end of the reason");
    &text[start..start + len]
}

/// Every path below `root` whose name ends in `.tierkeep-partial` (or `.tierkeep-partial.N`).
fn partial_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if fs::symlink_metadata(&p).expect("lstat").is_dir() {
                stack.push(p.clone());
            }
            if p.to_string_lossy().contains(".tierkeep-partial") {
                out.push(p);
            }
        }
    }
    out
}

/// Plants an archive as a committed black-box backup and registers it.
fn plant(host: &Host, id: &str, archive: &[u8]) {
    let dir = host.zone_dir("black-box", id);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("archive.tar.zst"), archive).expect("write");
    let sha = support::sha256_file(&dir.join("archive.tar.zst"));
    let manifest = serde_json::json!({
        "format": 1, "id": id, "host_id": "test-host", "kind": "scheduled",
        "created_at": "2026-01-01T00:00:00Z", "source": ["/x"], "entries": 2,
        "logical_bytes": 10, "archive_bytes": archive.len(), "archive_sha256": sha,
        "compression": "zstd", "tool_version": "test", "policy": "test"
    });
    fs::write(dir.join("manifest.json"), manifest.to_string()).expect("write");
    host.ok(&["catalog", "rebuild"]);
}

#[test]
fn hostile_archives_are_refused_and_nothing_escapes() {
    let host = Host::new("");
    let outside = host.root().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let outside_str = outside.to_str().expect("utf8").as_bytes().to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "20260101T000000.001Z-000000000001",
            hostile_archive(&[(b"../outside/evil", tar::EntryType::Regular, b"", b"pwned")]),
        ),
        (
            "20260101T000000.002Z-000000000002",
            hostile_archive(&[(
                format!("{}/evil", outside.display()).as_bytes(),
                tar::EntryType::Regular,
                b"",
                b"pwned",
            )]),
        ),
        (
            "20260101T000000.003Z-000000000003",
            hostile_archive(&[
                (b"link", tar::EntryType::Symlink, &outside_str, b""),
                (b"link/evil", tar::EntryType::Regular, b"", b"pwned"),
            ]),
        ),
        (
            "20260101T000000.004Z-000000000004",
            hostile_archive(&[(
                b"a/b/../../../outside/evil",
                tar::EntryType::Regular,
                b"",
                b"x",
            )]),
        ),
        (
            "20260101T000000.005Z-000000000005",
            hostile_archive(&[
                (b"ok", tar::EntryType::Regular, b"", b"fine"),
                (b"hl", tar::EntryType::Link, b"../outside/evil", b""),
            ]),
        ),
        (
            // A hard link made through a symlink that points outside.
            "20260101T000000.006Z-000000000006",
            hostile_archive(&[
                (b"link", tar::EntryType::Symlink, &outside_str, b""),
                (b"hl", tar::EntryType::Link, b"link/evil", b""),
                (
                    b"hl",
                    tar::EntryType::Regular,
                    b"",
                    b"written through the hard link",
                ),
            ]),
        ),
        (
            // A file below a file.
            "20260101T000000.007Z-000000000007",
            hostile_archive(&[
                (b"f", tar::EntryType::Regular, b"", b"a file"),
                (b"f/evil", tar::EntryType::Regular, b"", b"below it"),
            ]),
        ),
        (
            // A hard link to an entry that comes later.
            "20260101T000000.008Z-000000000008",
            hostile_archive(&[
                (b"hl", tar::EntryType::Link, b"later", b""),
                (b"later", tar::EntryType::Regular, b"", b"x"),
            ]),
        ),
    ];
    for (id, archive) in &cases {
        plant(&host, id, archive);
        let target = host.root().join(format!("target-{id}"));
        let err = host.fails(&["restore", id, "--to", target.to_str().expect("utf8")], 1);
        assert!(err.contains("refused archive entry"), "{id}: {err}");
        assert_eq!(
            fs::read_dir(&outside).expect("read_dir").count(),
            0,
            "{id}: something was written outside the target"
        );
        // `verify --deep` runs the same checks, writing nothing, and gives the same reason.
        let out = host
            .cmd(&["verify", id, "--deep"])
            .output()
            .expect("verify");
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{id}: {report}");
        assert!(report.contains(&format!("FAILED  {id}")), "{id}: {report}");
        assert_eq!(
            refusal(&report),
            refusal(&err),
            "{id}: verify and restore disagree"
        );
        assert_eq!(
            fs::read_dir(&outside).expect("read_dir").count(),
            0,
            "{id}: verify wrote something"
        );
    }
}

#[test]
fn a_truncated_archive_fails_naming_the_entry_and_leaves_no_half_file() {
    let host = Host::new("");
    let big = vec![b'x'; 10_000];
    let mut tar_bytes = raw_tar(&[
        (b"srv/app/done", tar::EntryType::Regular, b"", b"complete"),
        (b"srv/app/x", tar::EntryType::Regular, b"", &big[..]),
    ]);
    // The first entry takes 1024 bytes, the second's header 512: cut inside its data.
    tar_bytes.truncate(1024 + 512 + 4096);
    let id = "20260101T000000.001Z-000000000001";
    plant(
        &host,
        id,
        &zstd::encode_all(&tar_bytes[..], 3).expect("zstd"),
    );

    let target = host.root().join("t");
    let err = host.fails(&["restore", id, "--to", target.to_str().expect("utf8")], 1);
    assert!(err.contains("stopped at entry /srv/app/x"), "{err}");
    assert!(err.contains("the target is incomplete"), "{err}");
    assert_eq!(
        err.matches("the archive ends inside this entry").count(),
        1,
        "the cause is printed once: {err}"
    );
    assert_eq!(
        fs::read(target.join("srv/app/done")).expect("read"),
        b"complete"
    );
    assert!(
        fs::symlink_metadata(target.join("srv/app/x")).is_err(),
        "half a file was left at its name"
    );
    assert_eq!(partial_files(&target), Vec::<std::path::PathBuf>::new());

    // `verify --deep` finds it without writing; the plain hash check cannot.
    let out = host
        .cmd(&["verify", id, "--deep"])
        .output()
        .expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("/srv/app/x") && report.contains("ends inside this entry"),
        "{report}"
    );
    host.ok(&["verify", id]);

    // An I/O error's cause is printed once too: a directory in the way of a file.
    let t2 = host.root().join("t2");
    fs::create_dir_all(t2.join("srv/app/done")).expect("mkdir");
    let err = host.fails(
        &["restore", id, "--to", t2.to_str().expect("utf8"), "--force"],
        1,
    );
    assert!(err.contains("stopped at entry /srv/app/done"), "{err}");
    assert_eq!(
        err.matches("a directory is in the way").count(),
        1,
        "the cause is printed once: {err}"
    );
}

#[test]
fn a_killed_restore_leaves_only_a_partial_file_and_a_forced_restore_repairs() {
    let host = Host::new("");
    make_tree(&host.src());
    let id = host.backup(&[])["id"].as_str().expect("id").to_owned();
    let target = host.root().join("t");
    let t = target.to_str().expect("utf8");
    // Abort (no clean-up, like SIGKILL) with the first file written but not renamed.
    let out = host
        .cmd(&["restore", &id, "--to", t, "--keep-setuid"])
        .env("TIERKEEP_FAULTS", "restore.before_rename=kill")
        .output()
        .expect("restore");
    assert!(!out.status.success());
    let partials = partial_files(&target);
    assert_eq!(partials.len(), 1, "{partials:?}");
    let name = partials[0].file_name().expect("name").as_encoded_bytes();
    let full = &name[1..name.len() - ".tierkeep-partial".len()];
    let full = partials[0].with_file_name(std::ffi::OsStr::from_bytes(full));
    assert!(
        fs::symlink_metadata(&full).is_err(),
        "{} exists though it was not finished",
        full.display()
    );

    host.ok(&["restore", &id, "--to", t, "--force", "--keep-setuid"]);
    assert_same_tree(&host.src(), &restored_src(&host, &target));
    assert_eq!(partial_files(&target), Vec::<std::path::PathBuf>::new());
}

#[test]
fn setuid_bits_are_dropped_outside_root_unless_asked() {
    let host = Host::new("");
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    let tool = host.src().join("tool");
    fs::write(&tool, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).expect("chmod");
    assert_eq!(mode(&tool), 0o4755);
    // setgid sticks only if the file's group is one of ours (it is, unless /tmp says
    // otherwise): compare with what the source really has.
    let group_tool = host.src().join("group-tool");
    fs::write(&group_tool, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&group_tool, fs::Permissions::from_mode(0o2750)).expect("chmod");
    let group_mode = mode(&group_tool);
    let id = host.backup(&[])["id"].as_str().expect("id").to_owned();
    // A good backup passes the deep check.
    let out = host.ok(&["verify", &id, "--deep"]);
    assert!(out.contains(&format!("ok      {id}")), "{out}");

    let t1 = host.root().join("t1");
    let out = host
        .cmd(&["restore", &id, "--to", t1.to_str().expect("utf8")])
        .output()
        .expect("restore");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: {}: setuid/setgid bits dropped (mode 4755 restored as 0755)",
            tool.display()
        )) && stderr.contains("--keep-setuid"),
        "{stderr}"
    );
    assert_eq!(mode(&t1.join(entry_of(&tool))), 0o755);
    assert_eq!(mode(&t1.join(entry_of(&group_tool))), group_mode & !0o6000);
    if group_mode & 0o2000 != 0 {
        assert!(
            stderr.contains(&format!("warning: {}: setuid/setgid", group_tool.display())),
            "{stderr}"
        );
    }

    let t2 = host.root().join("t2");
    let out = host
        .cmd(&[
            "restore",
            &id,
            "--to",
            t2.to_str().expect("utf8"),
            "--keep-setuid",
        ])
        .output()
        .expect("restore");
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&t2.join(entry_of(&tool))), 0o4755);
    assert_eq!(mode(&t2.join(entry_of(&group_tool))), group_mode);
}

#[test]
fn corrupted_archives_are_detected() {
    let host = Host::new("");
    make_tree(&host.src());
    let id = host.backup(&[])["id"].as_str().expect("id").to_owned();
    let archive = host.zone_dir("black-box", &id).join("archive.tar.zst");
    let mut bytes = fs::read(&archive).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&archive, &bytes).expect("write");

    let out = host.cmd(&["verify"]).output().expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
    let target = host.root().join("t");
    let err = host.fails(&["restore", &id, "--to", target.to_str().expect("utf8")], 1);
    assert!(
        err.contains("does not match its manifest") || err.contains("archive stream"),
        "{err}"
    );
    let exported = host.root().join("e.tar.zst");
    let err = host.fails(
        &["export", &id, "--to", exported.to_str().expect("utf8")],
        1,
    );
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(!exported.exists());
}

#[test]
fn configuration_errors_explain_themselves() {
    let host = Host::new("bogus_key = 1\n");
    let err = host.fails(&["config", "check"], 2);
    assert!(err.contains("bogus_key"), "{err}");

    let host = Host::new("[schedule]\ninterval = \"1h\"\naging = \"20h\"\n");
    let err = host.fails(&["list"], 2);
    assert!(err.contains("schedule.aging"), "{err}");

    let host = Host::new("[zones.black_box]\nmax_backups = 0\n");
    let err = host.fails(&["status"], 2);
    assert!(err.contains("1 to 10 backups"), "{err}");

    // An unreadable source, and a zone directory that cannot be created.
    let host = Host::new("");
    fs::remove_dir(host.src()).expect("rmdir");
    let err = host.fails(&["backup"], 2);
    assert!(err.contains("source.paths"), "{err}");
    let scratch = tempfile::tempdir().expect("tempdir");
    let blocker = scratch.path().join("blocker");
    fs::write(&blocker, b"a file where a directory should be").expect("write");
    let host = Host::new(&format!(
        "[zones.reserved]\nurl = \"file://{}/zone\"\n",
        blocker.display()
    ));
    let err = host.fails(&["config", "check"], 2);
    assert!(err.contains("not writable"), "{err}");
    // A source that is a symlink would back up only the link: refused.
    let host = Host::new("");
    let real = host.root().join("real");
    fs::create_dir(&real).expect("mkdir");
    fs::remove_dir(host.src()).expect("rmdir");
    std::os::unix::fs::symlink(&real, host.src()).expect("symlink");
    let err = host.fails(&["config", "check"], 2);
    assert!(err.contains("is a symlink"), "{err}");

    // Environment beats the file; show says where each value came from; secrets stay secret.
    let host =
        Host::new("[s3]\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"hunter2\"\n");
    let out = host
        .cmd(&["config", "show"])
        .env("TIERKEEP_ZONES__BLACK_BOX__MAX_BACKUPS", "5")
        .env("TIERKEEP_TEST_UNRELATED", "ignored")
        .output()
        .expect("config show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("zones.black_box.max_backups"))
        .expect("line");
    assert!(
        line.contains("= 5") && line.contains("TIERKEEP_ZONES__BLACK_BOX__MAX_BACKUPS"),
        "{line}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("zones.deletion.max_backups"))
        .expect("line");
    assert!(
        line.contains("= 50"),
        "deletion defaults to 10x the black box: {line}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("host_id"))
        .expect("line");
    assert!(line.contains("file "), "{line}");
    host.cmd(&["config", "show"])
        .arg("--host-id")
        .arg("from-flag")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("from-flag").and(predicate::str::contains("command line")),
        );
}

// ---------------------------------------------------------------------------------------
// Failure paths an operator can trust: a closed stdout, what `config check` catches, the
// hint of an empty catalog, and what a backup's success line says.
// ---------------------------------------------------------------------------------------

/// Runs `tierkeep ARGS` with stdout a pipe whose read end is already closed (a reader
/// that went away, as `| head -1` leaves it); returns the exit code and stderr.
fn with_closed_stdout(host: &Host, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = host
        .std_cmd(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run tierkeep");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_panic(what: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{what} panicked: {stderr}"
    );
}

#[test]
fn a_closed_stdout_is_quiet_and_committed_work_still_succeeds() {
    let host = Host::new("");
    fs::write(host.src().join("f"), b"data").expect("write");
    // The backup is committed before its success line meets the closed pipe: it is a
    // success, said by the exit status, and it is in the catalog.
    let (code, err) = with_closed_stdout(&host, &["backup"]);
    assert_no_panic("backup", &err);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = with_closed_stdout(&host, &["backup", "--json"]);
    assert_no_panic("backup --json", &err);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        host.list(None).len(),
        2,
        "both backups are committed and listed"
    );
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["catalog", "history"],
        &["status"],
        &["status", "--json"],
        &["config", "show"],
        &["verify"],
        &["tick"],
    ] {
        let (code, err) = with_closed_stdout(&host, args);
        assert_no_panic(&format!("{args:?}"), &err);
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    // A failed verification keeps its exit status even when nobody reads the report.
    let id = host.list(None)[0]["id"].as_str().expect("id").to_owned();
    let archive = host.zone_dir("black-box", &id).join("archive.tar.zst");
    let mut bytes = fs::read(&archive).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&archive, bytes).expect("write");
    let (code, err) = with_closed_stdout(&host, &["verify"]);
    assert_no_panic("verify", &err);
    assert_eq!(code, Some(1), "{err}");

    // The same through a real shell pipeline: the reader stops after one line.
    for _ in 0..3 {
        host.backup(&["--manual"]);
    }
    let rc = host.root().join("rc");
    let out = StdCommand::new("sh")
        .arg("-c")
        .arg(r#"{ "$@"; echo $? > "$RC"; } | head -1"#)
        .arg("sh")
        .arg(assert_cmd::cargo::cargo_bin("tierkeep"))
        .arg("--config")
        .arg(&host.config)
        .args(["catalog", "history"])
        .env("RC", &rc)
        .output()
        .expect("sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_no_panic("catalog history | head -1", &err);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert_eq!(fs::read_to_string(&rc).expect("rc").trim(), "0", "{err}");
}

/// The daemon logs on stderr: with stdout and stderr both closed pipes (its terminal went
/// away) it keeps working, and still stops gracefully.
#[test]
fn the_daemon_keeps_running_without_stdout_or_stderr() {
    let host = Host::new("[schedule]\ninterval = \"1s\"\naging = \"2s\"\n");
    fs::write(host.src().join("f"), b"data").expect("write");
    let (out_reader, out_writer) = std::io::pipe().expect("pipe");
    let (err_reader, err_writer) = std::io::pipe().expect("pipe");
    drop(out_reader);
    drop(err_reader);
    let mut daemon = host
        .std_cmd(&["-v", "run", "--metrics-addr", "off"])
        .stdout(out_writer)
        .stderr(err_writer)
        .spawn()
        .expect("spawn the daemon");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host.list(None).len() < 3 {
        assert!(
            daemon.try_wait().expect("try_wait").is_none(),
            "the daemon died"
        );
        assert!(std::time::Instant::now() < deadline, "no scheduled backups");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let killed = StdCommand::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = daemon.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "a graceful stop: {status:?}");
}

#[test]
fn config_check_catches_what_run_would_refuse() {
    // A policy file that does not exist: run would fall back to the built-in rules.
    let policies = tempfile::tempdir().expect("tempdir");
    let host = Host::new(&format!(
        "[policy]\nname = \"keep-every-third\"\ndir = \"{}\"\n",
        policies.path().display()
    ));
    let err = host.fails(&["config", "check"], 2);
    assert!(
        err.contains("no keep-every-third.wasm") && err.contains("built-in default rules"),
        "{err}"
    );
    // A file that is not a policy.
    fs::write(
        policies.path().join("keep-every-third.wasm"),
        b"\0asm\x0d\0\x01\0garbage",
    )
    .expect("write");
    let err = host.fails(&["config", "check"], 2);
    assert!(
        err.contains("keep-every-third.wasm") && err.contains("does not compile"),
        "{err}"
    );
    // An interval beyond the host's 31 days.
    let host = Host::new("[schedule]\ninterval = \"40d\"\naging = \"40d\"\n");
    let err = host.fails(&["config", "check"], 2);
    assert!(
        err.contains("schedule.interval (40d)") && err.contains("1s to 31d"),
        "{err}"
    );
    // The built-in rules, as configured, pass and are named.
    let host = Host::new("");
    let out = host.ok(&["config", "check"]);
    assert!(out.contains("policy: built-in default rules"), "{out}");
}

#[test]
fn list_on_an_empty_catalog_points_at_the_rebuild() {
    let host = Host::new("");
    fs::write(host.src().join("f"), b"data").expect("write");
    // Nothing anywhere: no hint.
    let out = host.cmd(&["list"]).output().expect("list");
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    host.backup(&[]);
    host.backup(&[]);
    host.backup(&["--manual"]);
    // data_dir's catalog lost; the zones still hold the committed backups.
    for ext in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(host.data().join(format!("catalog.sqlite{ext}")));
    }
    let out = host.cmd(&["list", "--json"]).output().expect("list");
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(rows.is_empty(), "stdout stays a clean empty array");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tierkeep catalog rebuild")
            && err.contains("2 in the black-box zone")
            && err.contains("1 in the reserved zone"),
        "{err}"
    );
    let out = host.cmd(&["list"]).output().expect("list");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no backups");
    assert!(String::from_utf8_lossy(&out.stderr).contains("catalog rebuild"));

    host.ok(&["catalog", "rebuild"]);
    let out = host.cmd(&["list"]).output().expect("list");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.list(None).len(), 3);
}

#[test]
fn a_backup_says_what_it_saved_where_and_how_to_restore_it() {
    let host = Host::new("");
    fs::write(host.src().join("f"), b"data").expect("write");
    let out = host.ok(&["backup"]);
    let id = host.list(None)[0]["id"].as_str().expect("id").to_owned();
    let archive = host.zone_dir("black-box", &id).join("archive.tar.zst");
    assert!(archive.is_file());
    assert!(
        out.contains(&format!(
            "created backup {id} in the black-box zone: 2 entries"
        )) && out.contains(&format!("from {}", host.src().display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("archive: {}", archive.display())),
        "{out}"
    );
    let restore = format!(
        "restore with: tierkeep --config {} restore {id} --to DIR",
        host.config.display()
    );
    assert!(out.contains(&restore), "{out}");

    // --json: the same outcome as before, with where the archive is.
    let v: serde_json::Value =
        serde_json::from_str(&host.ok(&["backup", "--json", "--manual"])).expect("json");
    let id = v["manifest"]["id"].as_str().expect("id");
    assert_eq!(v["zone"], "reserved");
    assert!(v["seconds"].is_number());
    assert_eq!(
        v["archive"].as_str().expect("archive"),
        host.zone_dir("reserved", id)
            .join("archive.tar.zst")
            .display()
            .to_string()
    );
}

// End of the failure-path tests.
// ---------------------------------------------------------------------------------------

#[test]
fn catalog_rebuilds_from_the_zones() {
    let host = Host::new("");
    fs::write(host.src().join("f"), b"data").expect("write");
    let a = host.backup(&[]);
    let b = host.backup(&["--manual", "--label", "keep"]);
    // An incomplete upload (archive without manifest) is cleaned up by the rebuild.
    let junk = host.zone_dir("black-box", "20260101T000000.000Z-00000000dead");
    fs::create_dir_all(&junk).expect("mkdir");
    fs::write(junk.join("archive.tar.zst"), b"partial").expect("write");

    for ext in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(host.data().join(format!("catalog.sqlite{ext}")));
    }
    assert!(host.list(None).is_empty());
    let out = host.ok(&["catalog", "rebuild"]);
    assert!(out.contains("2 backups found"), "{out}");
    assert!(!junk.exists());
    let list = host.list(None);
    let ids: Vec<&str> = list.iter().map(|r| r["id"].as_str().expect("id")).collect();
    assert_eq!(
        ids,
        vec![b["id"].as_str().expect("id"), a["id"].as_str().expect("id")]
    );
    assert_eq!(list[0]["zone"], "reserved");
    assert_eq!(list[0]["label"], "keep");
    host.ok(&["verify", "--all", "--deep"]);
}

#[test]
fn processes_share_the_catalog_safely() {
    let host =
        Host::new("[zones.black_box]\nmax_backups = 10\n[zones.reserved]\nmax_backups = 10\n");
    for i in 0..300 {
        let d = host.src().join(format!("d{}", i % 17));
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join(format!("f{i}")), vec![b'x'; 4096 + i]).expect("write");
    }
    let bin = assert_cmd::cargo::cargo_bin("tierkeep");
    let spawn = |args: &[&str]| {
        StdCommand::new(&bin)
            .arg("--config")
            .arg(&host.config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let mut writers: Vec<_> = (0..4)
        .map(|i| {
            if i % 2 == 0 {
                spawn(&["backup", "--json"])
            } else {
                spawn(&["backup", "--manual", "--json"])
            }
        })
        .collect();
    let mut readers = Vec::new();
    for _ in 0..12 {
        readers.push(spawn(&["list", "--json"]));
        readers.push(spawn(&["status", "--json"]));
    }
    for child in writers.drain(..).chain(readers) {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "a concurrent command failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    }
    let list = host.list(None);
    assert_eq!(list.len(), 4);
    let catalog =
        tierkeep::catalog::Catalog::open(&host.data().join("catalog.sqlite")).expect("open");
    catalog.integrity_check().expect("integrity");
    host.ok(&["verify", "--all"]);
}

#[test]
fn large_files_stream_and_standard_tar_reads_their_size() {
    // A sparse 9 GiB file: larger than the 8 GiB an octal tar size field holds.
    let host = Host::new("");
    let big = host.src().join("big.img");
    let f = fs::File::create(&big).expect("create");
    let size: u64 = 9 * 1024 * 1024 * 1024 + 123;
    f.set_len(size).expect("set_len");
    let mut small = fs::File::create(host.src().join("after-big")).expect("create");
    small.write_all(b"entry after the big one").expect("write");
    drop(small);
    let m = host.backup(&[]);
    let id = m["id"].as_str().expect("id");
    assert_eq!(m["logical_bytes"].as_u64(), Some(size + 23));
    host.ok(&["verify", id, "--deep"]);
    let archive = host.zone_dir("black-box", id).join("archive.tar.zst");
    let out = StdCommand::new("sh")
        .arg("-c")
        .arg("zstd -d -q < \"$1\" | tar -tv")
        .arg("sh")
        .arg(&archive)
        .output()
        .expect("tar -tv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.ends_with("big.img"))
        .expect("big.img listed");
    assert!(line.contains(&size.to_string()), "{line}");
    // Restoring a single small path still streams past the big entry.
    let t = host.root().join("t");
    let after = host.src().join("after-big");
    host.ok(&[
        "restore",
        id,
        "--to",
        t.to_str().expect("utf8"),
        "--path",
        after.to_str().expect("utf8"),
    ]);
    assert_eq!(
        fs::read(t.join(entry_of(&after))).expect("read"),
        b"entry after the big one"
    );
}

#[test]
fn killed_backups_leave_nothing_behind() {
    let host = Host::new("[zones.black_box]\nmax_backups = 10\n");
    // Enough data that a backup takes a little while.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..40 {
        let data: Vec<u8> = (0..512 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        fs::write(host.src().join(format!("f{i}")), data).expect("write");
    }
    let bin = assert_cmd::cargo::cargo_bin("tierkeep");
    for delay_ms in [5u64, 40, 120, 250, 400, 700] {
        let mut child = StdCommand::new(&bin)
            .arg("--config")
            .arg(&host.config)
            .args(["backup", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    // The next run repairs: stale partial files and incomplete uploads go, committed
    // backups the catalog missed are added.
    host.backup(&[]);
    let zone = host.data().join("black-box/test-host");
    let mut in_zone: Vec<String> = fs::read_dir(&zone)
        .expect("zone")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    in_zone.sort();
    for id in &in_zone {
        assert!(
            zone.join(id).join("manifest.json").is_file(),
            "{id} has no manifest: an incomplete upload was left behind"
        );
    }
    let staging = host.data().join("black-box/.staging");
    let leftovers: Vec<_> = fs::read_dir(&staging)
        .expect("staging")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(leftovers.is_empty(), "staging not cleaned: {leftovers:?}");
    let mut listed: Vec<String> = host
        .list(Some("black-box"))
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, in_zone, "the catalog and the zone disagree");
    host.ok(&["verify", "--all"]);
}

/// Runs `script` under `sh` in a private user and mount namespace (`unshare`, so no
/// privileges are needed) with an 8 MiB tmpfs mounted on `mount`: a real small disk.
/// The script gets `TK`, `CFG`, `DATA`, `SRC` and `OUT` (a folder for what it reports,
/// returned), defines `tk` (tierkeep with this host's configuration) and must end with
/// status 0; `first.err` and `list.err` in `OUT` explain an early stop.
fn on_a_small_disk(host: &Host, mount: &Path, script: &str) -> std::path::PathBuf {
    fs::create_dir_all(mount).expect("mount point");
    let out = host.root().join("out");
    fs::create_dir_all(&out).expect("out");
    let script = format!(
        "set -u\nmount -t tmpfs -o size=8m tierkeep-small \"$MOUNT\" || exit 90\n\
         tk() {{ \"$TK\" --config \"$CFG\" --no-progress \"$@\"; }}\n{script}"
    );
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = host
        .std_cmd(&[])
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let status = StdCommand::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .envs(envs)
        // The reserve would refuse any backup on an 8 MiB disk.
        .env("TIERKEEP_ZONES__BLACK_BOX__MIN_FREE", "1MiB")
        .env("TK", assert_cmd::cargo::cargo_bin("tierkeep"))
        .env("CFG", &host.config)
        .env("DATA", host.data())
        .env("SRC", host.src())
        .env("MOUNT", mount)
        .env("OUT", &out)
        .status()
        .expect("run unshare (util-linux)");
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "the script stopped early (90: no tmpfs mount in a user namespace here, 91: the \
         first backup failed: {}, 92: list failed: {})",
        read("first.err"),
        read("list.err")
    );
    out
}

/// 24 MiB that zstd cannot shrink, for a disk of 8 MiB.
fn incompressible(path: &Path) {
    let mut bytes = vec![0u8; 24 << 20];
    getrandom::fill(&mut bytes).expect("random");
    fs::write(path, &bytes).expect("write");
}

/// A backup that fills the black box's disk while it writes fails with the kernel's
/// reason, leaves no partial archive behind, and keeps the backup made before it
/// restorable.
#[test]
fn a_backup_that_fills_the_disk_fails_cleanly_and_keeps_the_earlier_one() {
    let host = Host::new("");
    fs::write(host.src().join("small.txt"), b"kept through a full disk\n").expect("write");
    let big = host.root().join("big.bin");
    incompressible(&big);
    let script = format!(
        r#"
        tk backup --json > "$OUT/first.json" 2> "$OUT/first.err" || exit 91
        cp "{big}" "$SRC/big.bin"
        tk backup > "$OUT/second.out" 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"
        find "$DATA" -type f | sort > "$OUT/files.txt"
        tk list --json > "$OUT/list.json" 2> "$OUT/list.err" || exit 92
        rm "$SRC/big.bin"
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["id"])' \
            "$OUT/list.json" > "$OUT/id"
        tk verify --all > "$OUT/verify.out" 2>&1; echo $? > "$OUT/verify.rc"
        tk restore "$(cat "$OUT/id")" --to "$OUT/restored" > /dev/null 2> "$OUT/restore.err"
        echo $? > "$OUT/restore.rc"
        "#,
        big = big.display()
    );
    let out = on_a_small_disk(&host, &host.data(), &script);
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let err = read("second.err");
    assert_eq!(
        read("second.rc").trim(),
        "1",
        "the second backup fails: {err}"
    );
    assert!(
        err.contains("No space left on device"),
        "the error gives the kernel's reason: {err}"
    );
    let files = read("files.txt");
    assert_eq!(
        files.lines().filter(|f| f.contains("archive")).count(),
        1,
        "only the first backup's archive is on the disk, no partial one:\n{files}"
    );
    let listed: serde_json::Value = serde_json::from_str(&read("list.json")).expect("list");
    let first: serde_json::Value = serde_json::from_str(&read("first.json")).expect("first");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], first["manifest"]["id"]);
    assert_eq!(read("verify.rc").trim(), "0", "{}", read("verify.out"));
    assert_eq!(read("restore.rc").trim(), "0", "{}", read("restore.err"));
    // The source folder's own mtime moved with big.bin; the backup holds the file.
    let restored = restored_src(&host, &out.join("restored"));
    assert_eq!(
        fs::read(restored.join("small.txt")).expect("restored file"),
        b"kept through a full disk\n"
    );
    assert!(!restored.join("big.bin").exists());
}

/// An aging into a local deletion zone whose disk fills up fails, leaves no partial copy
/// there, and keeps the backup in the black box, where it still verifies.
#[test]
fn an_aging_into_a_full_deletion_disk_keeps_the_black_box_copy() {
    let host = Host::new("[schedule]\ninterval = \"1s\"\naging = \"1s\"\n");
    incompressible(&host.src().join("big.bin"));
    let script = r#"
        tk backup --json > "$OUT/first.json" 2> "$OUT/first.err" || exit 91
        sleep 1.2
        tk tick > "$OUT/tick.out" 2> "$OUT/tick.err"; echo $? > "$OUT/tick.rc"
        find "$MOUNT" -type f | sort > "$OUT/files.txt"
        tk list --json > "$OUT/list.json" 2> "$OUT/list.err" || exit 92
        tk verify --all > "$OUT/verify.out" 2>&1; echo $? > "$OUT/verify.rc"
    "#;
    let out = on_a_small_disk(&host, &host.data().join("deletion"), script);
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let said = format!("{}{}", read("tick.out"), read("tick.err"));
    assert!(
        said.contains("No space left on device"),
        "the tick reports the disk's error: {said}"
    );
    assert!(
        !said.contains("stopped answering"),
        "a full local folder is not called an outage: {said}"
    );
    let files = read("files.txt");
    assert!(
        !files.contains("archive"),
        "no archive or partial copy is left in the deletion zone:\n{files}"
    );
    let listed: serde_json::Value = serde_json::from_str(&read("list.json")).expect("list");
    let first: serde_json::Value = serde_json::from_str(&read("first.json")).expect("first");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], first["manifest"]["id"]);
    assert_eq!(listed[0]["zone"], "black-box", "{listed}");
    assert_eq!(read("verify.rc").trim(), "0", "{}", read("verify.out"));
}
