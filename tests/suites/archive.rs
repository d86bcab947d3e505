//! Archive format 2 end to end: independent frames that the standard tools restore,
//! reuse of the previous backup's frames (and what must stop it), `ls` from the index,
//! partial restores from the frames that hold a path, and an index that lies.

#[path = "../support/mod.rs"]
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use support::{Host, assert_same_tree, entry_of, make_tree, pseudo_random};
use tierkeep::archive::index::{self, Index, IndexRef};

fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

fn archive_of(host: &Host, id: &str) -> std::path::PathBuf {
    host.zone_dir("black-box", id).join("archive.tar.zst")
}

fn manifest_of(host: &Host, id: &str) -> serde_json::Value {
    let text = fs::read(host.zone_dir("black-box", id).join("manifest.json")).expect("manifest");
    serde_json::from_slice(&text).expect("json")
}

fn index_of(archive: &Path, m: &serde_json::Value) -> (Index, IndexRef) {
    let reference: IndexRef = serde_json::from_value(m["index"].clone()).expect("index ref");
    let bytes = fs::read(archive).expect("read");
    let at = reference.offset as usize;
    let index =
        index::decode_index(&bytes[at..at + reference.bytes as usize], &reference).expect("index");
    (index, reference)
}

fn run(cmd: &str, args: &[&Path]) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).arg("sh");
    for a in args {
        c.arg(a);
    }
    c.output().expect("sh")
}

/// A source tree with every kind of entry, and a large file across several frames.
fn tree_with_large_file(host: &Host) {
    make_tree(&host.src());
    fs::write(
        host.src().join("disk.img"),
        pseudo_random(11, 13 * 1024 * 1024 + 1000),
    )
    .expect("write");
}

#[test]
fn format_2_archives_restore_with_zstd_and_tar() {
    let host = Host::new("");
    tree_with_large_file(&host);
    let m = host.backup(&[]);
    assert_eq!(m["format"], 2);
    let archive = archive_of(&host, &id(&m));
    let (index, _) = index_of(&archive, &m);
    assert!(index.frames.len() >= 5, "{} frames", index.frames.len());
    let img = index
        .entries
        .iter()
        .find(|e| e.name.0.ends_with(b"disk.img"))
        .expect("disk.img");
    assert!(img.chunked && img.frames[1] - img.frames[0] == 4, "{img:?}");

    let t = run("zstd -t -q \"$1\"", &[&archive]);
    assert!(t.status.success(), "zstd -t: {t:?}");
    let l = run("zstd -l \"$1\"", &[&archive]);
    assert!(l.status.success(), "zstd -l: {l:?}");
    // GNU tar's own zstd support, and the pipe.
    let by_tar = host.root().join("by-tar");
    fs::create_dir(&by_tar).expect("mkdir");
    let x = run("tar --zstd -xpf \"$1\" -C \"$2\"", &[&archive, &by_tar]);
    assert!(x.status.success(), "tar --zstd -x: {x:?}");
    assert_same_tree(&host.src(), &by_tar.join(entry_of(&host.src())));
    let by_pipe = host.root().join("by-pipe");
    support::untar_with_standard_tools(&archive, &by_pipe);
    assert_same_tree(&host.src(), &by_pipe.join(entry_of(&host.src())));
    host.restore_and_compare(&id(&m));
    host.ok(&["verify", &id(&m), "--deep"]);
}

#[test]
fn a_second_backup_copies_unchanged_frames_and_reads_what_changed() {
    let host = Host::new("[zones.black_box]\nmax_backups = 5\n");
    tree_with_large_file(&host);
    for n in 0..40 {
        fs::write(
            host.src().join(format!("app/small-{n:02}")),
            pseudo_random(n, 20_000),
        )
        .expect("write");
    }
    let first = host.backup(&[]);
    assert!(first.get("reused_bytes").is_none(), "{first}");

    // Changed, added, removed and renamed files.
    fs::write(host.src().join("app/small-07"), b"changed").expect("write");
    fs::write(host.src().join("app/added"), b"new file").expect("write");
    fs::remove_file(host.src().join("app/small-20")).expect("rm");
    fs::rename(
        host.src().join("app/small-30"),
        host.src().join("app/renamed-30"),
    )
    .expect("mv");
    let second = host.backup(&[]);
    let reused = second["reused_bytes"].as_u64().expect("reused_bytes");
    let size = second["archive_bytes"].as_u64().expect("size");
    assert!(reused > size / 2, "reused {reused} of {size}");
    assert_eq!(second["reused_from"], first["id"]);
    host.restore_and_compare(&id(&second));
    let by_pipe = host.root().join("by-pipe");
    support::untar_with_standard_tools(&archive_of(&host, &id(&second)), &by_pipe);
    assert_same_tree(&host.src(), &by_pipe.join(entry_of(&host.src())));

    // Reuse does not chain damage or dependence: the first backup can go and the
    // second still restores.
    host.ok(&["delete", &id(&first), "--yes"]);
    host.restore_and_compare(&id(&second));

    // `--full-read` and `backup.reuse = false` read everything.
    let full = host.backup(&["--full-read"]);
    assert!(full.get("reused_bytes").is_none(), "{full}");
    let off = host
        .cmd(&["backup", "--json"])
        .env("TIERKEEP_BACKUP__REUSE", "false")
        .output()
        .expect("run");
    assert!(off.status.success(), "{off:?}");
    let off: serde_json::Value = serde_json::from_slice(&off.stdout).expect("json");
    assert!(off["manifest"].get("reused_bytes").is_none(), "{off}");
}

#[test]
fn a_file_rewritten_behind_its_old_mtime_is_caught_by_its_ctime() {
    let host = Host::new("");
    make_tree(&host.src());
    let path = host.src().join("app/data/blob.bin");
    let before = fs::metadata(&path).expect("stat");
    host.backup(&[]);
    // Same size, new bytes, the old mtime put back.
    let mut data = fs::read(&path).expect("read");
    data[1000] ^= 0xff;
    fs::write(&path, &data).expect("write");
    let mtime = filetime::FileTime::from_last_modification_time(&before);
    filetime::set_file_mtime(&path, mtime).expect("utime");
    let second = host.backup(&[]);
    host.restore_and_compare(&id(&second));
}

#[test]
fn a_damaged_frame_of_the_previous_backup_is_never_copied() {
    let host = Host::new("");
    tree_with_large_file(&host);
    let first = host.backup(&[]);
    let archive = archive_of(&host, &id(&first));
    let (index, _) = index_of(&archive, &first);
    // Flip a byte in the middle of the large file's second data frame, and one in the
    // first group frame.
    let img = index
        .entries
        .iter()
        .find(|e| e.name.0.ends_with(b"disk.img"))
        .expect("disk.img");
    let f = &index.frames[img.frames[0] as usize + 2];
    let file = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&archive)
        .expect("open");
    for at in [
        f.offset + f.bytes / 2,
        index.frames[0].offset + index.frames[0].bytes / 2,
    ] {
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).expect("read");
        file.write_all_at(&[b[0] ^ 0x55], at).expect("write");
    }
    drop(file);
    let out = host.cmd(&["backup", "--json", "-v"]).output().expect("run");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("damaged"), "{stderr}");
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let second = &second["manifest"];
    host.ok(&["verify", &id(second), "--deep"]);
    host.restore_and_compare(&id(second));
}

#[test]
fn a_large_file_changed_in_place_costs_only_its_changed_chunk() {
    let host = Host::new("");
    tree_with_large_file(&host);
    let first = host.backup(&[]);
    let img = host.src().join("disk.img");
    let f = fs::OpenOptions::new().write(true).open(&img).expect("open");
    f.write_all_at(&[0xAB; 4096], 6 * 1024 * 1024)
        .expect("write");
    drop(f);
    let second = host.backup(&[]);
    // Three of its four chunks (4 + 4 + 1 MiB, random data: compressed ≈ raw) are
    // copied, and the small files before it too.
    let reused = second["reused_bytes"].as_u64().expect("reused");
    assert!(reused >= 12 * 1024 * 1024, "reused {reused}");
    assert!(reused < first["archive_bytes"].as_u64().expect("size"));
    host.restore_and_compare(&id(&second));
}

#[test]
fn ls_reads_the_index_and_names_what_is_there() {
    let host = Host::new("");
    make_tree(&host.src());
    let m = host.backup(&[]);
    let listing: serde_json::Value =
        serde_json::from_str(&host.ok(&["ls", &id(&m), "--json"])).expect("json");
    assert_eq!(listing["from_index"], true);
    let read = listing["archive_bytes_read"].as_u64().expect("read");
    assert_eq!(read, m["index"]["bytes"].as_u64().expect("index bytes"));
    let entries = listing["entries"].as_array().expect("entries");
    assert_eq!(
        entries.len() as u64,
        m["entries"].as_u64().expect("entries")
    );
    let conf = host.src().join("app/config/app.toml");
    let one: serde_json::Value =
        serde_json::from_str(&host.ok(&["ls", &id(&m), conf.to_str().expect("utf8"), "--json"]))
            .expect("json");
    let e = &one["entries"][0];
    assert_eq!(e["path"], conf.to_str().expect("utf8"));
    assert_eq!(e["type"], "file");
    assert_eq!(e["size"], 12);
    assert_eq!(e["mode"], "0640");
    let text = host.ok(&[
        "ls",
        &id(&m),
        host.src().join("app").to_str().expect("utf8"),
    ]);
    assert!(
        text.contains("app.toml") && text.contains("run.sh"),
        "{text}"
    );
    let missing = host.src().join("nothing-here");
    let err = host.fails(&["ls", &id(&m), missing.to_str().expect("utf8")], 3);
    assert!(err.contains("holds nothing"), "{err}");
    host.fails(&["ls", "20990101T000000.000Z-000000000000"], 3);
}

#[test]
fn restore_of_one_path_reads_only_its_frames() {
    let host = Host::new("");
    tree_with_large_file(&host);
    let m = host.backup(&[]);
    let conf = host.src().join("app/config/app.toml");
    let target = host.root().join("one");
    let out = host.restore_path(&id(&m), &target, &conf);
    // Exactly the index and the frames holding the file.
    let read = out["archive_bytes_read"].as_u64().expect("read");
    let (index, reference) = index_of(&archive_of(&host, &id(&m)), &m);
    let name = entry_of(&conf).to_str().expect("utf8").as_bytes().to_vec();
    let e = index
        .entries
        .iter()
        .find(|e| e.name.0 == name)
        .expect("entry");
    let frames: u64 = index.frames[e.frames[0] as usize..=e.frames[1] as usize]
        .iter()
        .map(|f| f.bytes)
        .sum();
    assert_eq!(read, reference.bytes + frames);
    assert!(
        read * 4 < m["archive_bytes"].as_u64().expect("size"),
        "read {read}"
    );
    assert_eq!(
        fs::read(target.join(entry_of(&conf))).expect("restored"),
        b"port = 8080\n"
    );
    // A directory's subtree, compared whole.
    let dir = host.src().join("app/data");
    let target = host.root().join("dir");
    host.ok(&[
        "restore",
        &id(&m),
        "--to",
        target.to_str().expect("utf8"),
        "--path",
        dir.to_str().expect("utf8"),
        "--keep-setuid",
    ]);
    assert_same_tree(&dir, &target.join(entry_of(&dir)));
    let missing = host.src().join("nothing-here");
    let target = host.root().join("none");
    host.fails(
        &[
            "restore",
            &id(&m),
            "--to",
            target.to_str().expect("utf8"),
            "--path",
            missing.to_str().expect("utf8"),
        ],
        3,
    );
}

/// Rewrites a black-box backup's index (and manifest) after `edit`, as a faulty or
/// hostile tool could, keeping every hash consistent.
fn rewrite_index(host: &Host, id: &str, edit: impl FnOnce(&mut Index)) {
    let archive = archive_of(host, id);
    let mut m = manifest_of(host, id);
    let (mut index, reference) = index_of(&archive, &m);
    edit(&mut index);
    let bytes = fs::read(&archive).expect("read");
    let mut out = bytes[..reference.offset as usize].to_vec();
    let frame = index::encode_index(&index).expect("encode");
    let mut sizes: Vec<(u64, u64)> = index
        .frames
        .iter()
        .map(|f| (f.bytes, f.raw_bytes))
        .collect();
    sizes.push((frame.len() as u64, 0));
    let new_ref = IndexRef {
        offset: out.len() as u64,
        bytes: frame.len() as u64,
        sha256: support::sha256_bytes(&frame),
    };
    out.extend_from_slice(&frame);
    out.extend_from_slice(&index::encode_seek_table(&sizes).expect("table"));
    fs::File::create(&archive)
        .and_then(|mut f| f.write_all(&out))
        .expect("write");
    m["index"] = serde_json::to_value(&new_ref).expect("ref");
    m["archive_bytes"] = out.len().into();
    m["archive_sha256"] = support::sha256_bytes(&out).into();
    fs::write(
        host.zone_dir("black-box", id).join("manifest.json"),
        m.to_string(),
    )
    .expect("write");
    // The catalog keeps the manifest it was given: start it again from the zones.
    for ext in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(host.data().join(format!("catalog.sqlite{ext}")));
    }
    host.ok(&["catalog", "rebuild"]);
}

#[test]
fn an_index_that_lies_fails_the_partial_restore_and_writes_nothing() {
    let host = Host::new("");
    // The large file keeps the frames of the small ones a small part of the archive,
    // so that the partial restore uses the index.
    tree_with_large_file(&host);
    let m = host.backup(&[]);
    let conf = host.src().join("app/config/app.toml");
    let run_sh = host.src().join("app/run.sh");
    // The index calls app.toml's entry run.sh's name.
    let conf_name = entry_of(&conf).to_str().expect("utf8").as_bytes().to_vec();
    let run_name = entry_of(&run_sh)
        .to_str()
        .expect("utf8")
        .as_bytes()
        .to_vec();
    rewrite_index(&host, &id(&m), |index| {
        for e in &mut index.entries {
            if e.name.0 == run_name {
                e.name.0 = b"elsewhere".to_vec();
            } else if e.name.0 == conf_name {
                e.name.0.clone_from(&run_name);
            }
        }
    });
    let target = host.root().join("lied");
    // The partial restore of run.sh fails, writing nothing.
    let refused = || {
        let err = host.fails(
            &[
                "restore",
                &id(&m),
                "--to",
                target.to_str().expect("utf8"),
                "--path",
                run_sh.to_str().expect("utf8"),
            ],
            1,
        );
        assert!(err.contains("disagrees"), "{err}");
        assert!(
            !target.exists() || fs::read_dir(&target).expect("ls").next().is_none(),
            "nothing is written"
        );
    };
    refused();
    // The full restore does not use the index and still restores.
    host.restore_and_compare(&id(&m));

    // An index that points one block into the entry (past its PAX record), consistent
    // with itself.
    rewrite_index(&host, &id(&m), |index| {
        for e in &mut index.entries {
            if e.name.0 == run_name {
                assert!(e.data - e.offset >= 1024, "the entry has a PAX record");
                e.offset += 512;
            }
        }
    });
    refused();
}

#[test]
fn a_format_1_backup_lists_and_restores_a_path_by_reading_its_stream() {
    let host = Host::new("");
    make_tree(&host.src());
    // A format 1 archive: one zstd stream of the tar, as earlier versions wrote.
    let archive = host.root().join("v1.tar.zst");
    let st = run(
        "tar -C / -cf - \"$(echo \"$1\" | sed 's|^/||')\" | zstd -q -3 -o \"$2\"",
        &[&host.src(), &archive],
    );
    assert!(st.status.success(), "{st:?}");
    let id = "20260101T000000.000Z-0000000000f1";
    let dir = host.zone_dir("black-box", id);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::copy(&archive, dir.join("archive.tar.zst")).expect("copy");
    let manifest = serde_json::json!({
        "format": 1, "id": id, "host_id": "test-host", "kind": "scheduled",
        "created_at": "2026-01-01T00:00:00Z",
        "source": [host.src().to_str().expect("utf8")], "entries": 1,
        "logical_bytes": 10, "archive_bytes": fs::metadata(&archive).expect("stat").len(),
        "archive_sha256": support::sha256_file(&archive),
        "compression": "zstd", "tool_version": "test", "policy": "test"
    });
    fs::write(dir.join("manifest.json"), manifest.to_string()).expect("write");
    host.ok(&["catalog", "rebuild"]);
    let listing: serde_json::Value =
        serde_json::from_str(&host.ok(&["ls", id, "--json"])).expect("json");
    assert_eq!(listing["from_index"], false);
    let conf = host.src().join("app/config/app.toml");
    assert!(
        listing["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["path"] == conf.to_str().expect("utf8")),
        "{listing}"
    );
    let target = host.root().join("one");
    host.ok(&[
        "restore",
        id,
        "--to",
        target.to_str().expect("utf8"),
        "--path",
        conf.to_str().expect("utf8"),
    ]);
    assert_eq!(
        fs::read(target.join(entry_of(&conf))).expect("restored"),
        b"port = 8080\n"
    );
    // A scheduled backup after it reads everything (no index to reuse) and is format 2.
    let next = host.backup(&[]);
    assert_eq!(next["format"], 2);
    assert!(next.get("reused_bytes").is_none(), "{next}");
}

#[test]
fn a_reusing_backup_killed_at_any_moment_leaves_nothing_and_the_next_one_restores() {
    let host = Host::new("[zones.black_box]\nmax_backups = 10\n");
    tree_with_large_file(&host);
    for n in 0..30u64 {
        fs::write(
            host.src().join(format!("app/part-{n:02}")),
            pseudo_random(100 + n, 700_000),
        )
        .expect("write");
    }
    host.backup(&[]);
    fs::write(host.src().join("app/part-03"), b"changed").expect("write");
    let bin = assert_cmd::cargo::cargo_bin("tierkeep");
    for delay_ms in [5u64, 30, 80, 150, 300] {
        let mut child = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&host.config)
            .args(["backup", "--json"])
            .env("TIERKEEP_ZONES__BLACK_BOX__MIN_FREE", "16MiB")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    let last = host.backup(&[]);
    host.restore_and_compare(&id(&last));
    host.ok(&["verify", "--all", "--deep"]);
    let zone = host.data().join("black-box/test-host");
    for e in fs::read_dir(&zone).expect("zone") {
        let dir = e.expect("entry").path();
        assert!(
            dir.join("manifest.json").is_file(),
            "{} is incomplete",
            dir.display()
        );
    }
}

#[test]
fn a_damaged_index_makes_reuse_and_ls_read_the_archive_instead_and_say_so() {
    let host = Host::new("");
    make_tree(&host.src());
    let first = host.backup(&[]);
    let archive = archive_of(&host, &id(&first));
    let at = first["index"]["offset"].as_u64().expect("offset") + 40;
    let file = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&archive)
        .expect("open");
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).expect("read");
    file.write_all_at(&[b[0] ^ 0xff], at).expect("write");
    drop(file);

    let out = host
        .cmd(&["ls", &id(&first), "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("index is damaged"), "{stderr}");
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listing["from_index"], false);

    let out = host.cmd(&["backup", "--json"]).output().expect("run");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not reusing the previous backup"),
        "{stderr}"
    );
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(second["manifest"].get("reused_bytes").is_none(), "{second}");
    host.restore_and_compare(&id(&second["manifest"]));
}
