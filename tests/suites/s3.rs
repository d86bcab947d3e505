//! The deletion and reserved zones on a real S3 server (the fixture of
//! `support/s3.rs`: an external server, MinIO or Garage in a container through
//! testcontainers, a Garage process, or an in-process s3s-fs server, in that order of
//! preference). The same cases run on each.

#[path = "../support/s3.rs"]
mod s3;
#[path = "../support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::process::ExitStatusExt;

use support::{Host, assert_same_tree, entry_of, make_tree};

/// A host whose deletion and reserved zones are fresh buckets on the fixture's server.
/// `caps` = (black box, deletion, reserved) max_backups; `extra` is more TOML tables.
fn s3_host(caps: (u64, u64, u64), extra: &str) -> (Host, String, String) {
    s3_host_on(s3::shared(), caps, extra)
}

fn s3_host_on(server: &s3::S3, caps: (u64, u64, u64), extra: &str) -> (Host, String, String) {
    let deletion = server.bucket("tk-deletion");
    let reserved = server.bucket("tk-reserved");
    let mut host = Host::new(&format!(
        "{}[zones.black_box]\nmax_backups = {}\n\
         [zones.deletion]\nurl = \"s3://{deletion}/zone\"\nmax_backups = {}\n\
         [zones.reserved]\nurl = \"s3://{reserved}\"\nmax_backups = {}\n{extra}",
        server.config_section(),
        caps.0,
        caps.1,
        caps.2
    ));
    host.env = server.env();
    (host, deletion, reserved)
}

fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

fn ids(host: &Host, zone: &str) -> Vec<String> {
    let mut v: Vec<String> = host.list(Some(zone)).iter().map(id).collect();
    v.sort();
    v
}

/// Committed backups in a bucket (ids whose manifest.json exists), and other objects.
fn bucket_state(bucket: &str) -> (Vec<String>, Vec<String>) {
    bucket_state_on(s3::shared(), bucket)
}

fn bucket_state_on(server: &s3::S3, bucket: &str) -> (Vec<String>, Vec<String>) {
    let keys = server.keys(bucket);
    let mut committed = Vec::new();
    let mut others = Vec::new();
    for k in &keys {
        if let Some(dir) = k.strip_suffix("/manifest.json") {
            committed.push(dir.rsplit('/').next().expect("id").to_owned());
        } else if let Some(dir) = k.strip_suffix("/archive.tar.zst") {
            let has_manifest = keys.contains(&format!("{dir}/manifest.json"));
            if !has_manifest {
                others.push(k.clone());
            }
        } else {
            others.push(k.clone());
        }
    }
    committed.sort();
    (committed, others)
}

#[test]
fn aging_and_eviction_into_a_bucket_and_restore_from_it() {
    let (host, deletion, _reserved) = s3_host((1, 2, 10), "");
    make_tree(&host.src());
    host.ok(&["config", "check"]);
    let a = host.backup(&[]);
    let b = host.backup(&[]); // a ages into the bucket
    let (committed, others) = bucket_state(&deletion);
    assert_eq!(committed, vec![id(&a)]);
    assert!(others.is_empty(), "{others:?}");
    assert!(
        !host.zone_dir("black-box", &id(&a)).exists(),
        "the local copy went after the upload verified"
    );
    let c = host.backup(&[]); // b ages
    let d = host.backup(&[]); // the bucket is full: a (the earliest) is evicted, then c ages
    assert_eq!(bucket_state(&deletion).0, vec![id(&b), id(&c)]);
    assert_eq!(ids(&host, "deletion"), vec![id(&b), id(&c)]);
    assert_eq!(ids(&host, "black-box"), vec![id(&d)]);
    let trail = host.ok(&["catalog", "history", &id(&a)]);
    assert!(trail.contains("evicted"), "{trail}");

    // Restore from the deletion zone: exported and verified first, bit-identical.
    let out = host.restore_and_compare(&id(&b));
    assert!(out.contains("exported and verified first"), "{out}");
    // `export` writes an archive that zstd and tar restore.
    let file = host.root().join("c.tar.zst");
    host.ok(&["export", &id(&c), "--to", file.to_str().expect("utf8")]);
    let target = host.root().join("by-tar");
    support::untar_with_standard_tools(&file, &target);
    assert_same_tree(&host.src(), &target.join(entry_of(&host.src())));
    host.ok(&["verify", "--all", "--deep"]);

    // A lost catalog comes back from the bucket.
    for ext in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(host.data().join(format!("catalog.sqlite{ext}")));
    }
    host.ok(&["catalog", "rebuild"]);
    assert_eq!(ids(&host, "deletion"), vec![id(&b), id(&c)]);
}

#[test]
fn manual_backups_go_to_the_reserved_bucket_and_a_full_one_refuses() {
    let (host, _deletion, reserved) = s3_host((3, 30, 1), "");
    fs::write(host.src().join("f"), b"important").expect("write");
    let m = host.backup(&["--manual", "--label", "before upgrade"]);
    assert_eq!(bucket_state(&reserved).0, vec![id(&m)]);
    let before = s3::shared().keys(&reserved);
    let err = host.fails(&["backup", "--manual"], 3);
    assert!(
        err.contains("reserved zone is full") && err.contains("holds 1 of 1"),
        "{err}"
    );
    assert_eq!(
        s3::shared().keys(&reserved),
        before,
        "nothing changed in the bucket"
    );
    assert_eq!(s3::shared().uploads(&reserved), 0);
    // tick never touches the reserved zone.
    host.ok(&["tick"]);
    assert_eq!(s3::shared().keys(&reserved), before);
    host.restore_and_compare(&id(&m));
    host.ok(&["delete", &id(&m), "--yes"]);
    assert!(bucket_state(&reserved).0.is_empty());
}

#[test]
fn large_archives_use_multipart_uploads_and_ranged_downloads() {
    let (host, deletion, _reserved) = s3_host((1, 10, 10), "");
    // 40 MiB that does not compress: several 16 MiB parts.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let data: Vec<u8> = (0..40 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    fs::write(host.src().join("random.bin"), &data).expect("write");
    let a = host.backup(&[]);
    assert!(a["archive_bytes"].as_u64().expect("bytes") > 32 << 20);
    host.backup(&[]);
    assert_eq!(bucket_state(&deletion).0, vec![id(&a)]);
    assert_eq!(
        s3::shared().uploads(&deletion),
        0,
        "no multipart upload left open"
    );
    host.restore_and_compare(&id(&a));
    // `verify` reads the object back with ranged GETs hashed in order (several ranges
    // here) and catches one byte flipped in its middle.
    host.ok(&["verify", &id(&a)]);
    let object = s3::shared()
        .keys(&deletion)
        .into_iter()
        .find(|k| k.contains(&id(&a)) && k.ends_with("archive.tar.zst"))
        .expect("the aged archive");
    let good = s3::shared().get(&deletion, &object);
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    s3::shared().put(&deletion, &object, bad);
    host.fails(&["verify", &id(&a)], 1);
    s3::shared().put(&deletion, &object, good);
    host.ok(&["verify", &id(&a)]);
}

#[test]
fn a_kill_at_any_step_of_a_move_to_s3_loses_nothing() {
    for point in tierkeep::faults::MOVE_POINTS {
        let (host, deletion, _reserved) = s3_host((1, 10, 10), "");
        make_tree(&host.src());
        let a = host.backup(&[]);
        let out = host
            .cmd(&["backup"])
            .env("TIERKEEP_FAULTS", format!("{point}=kill"))
            .output()
            .expect("run");
        assert_eq!(out.status.signal(), Some(6), "{point}: {:?}", out.status);
        host.ok(&["tick"]);
        let in_bucket = bucket_state(&deletion).0.contains(&id(&a));
        let in_bb = host
            .zone_dir("black-box", &id(&a))
            .join("manifest.json")
            .is_file();
        assert!(
            in_bucket ^ in_bb,
            "{point}: in bucket {in_bucket}, in black box {in_bb}"
        );
        assert!(
            bucket_state(&deletion).1.is_empty(),
            "{point}: incomplete objects left"
        );
        assert_eq!(
            s3::shared().uploads(&deletion),
            0,
            "{point}: upload left open"
        );
        let zone = if in_bucket { "deletion" } else { "black-box" };
        assert_eq!(ids(&host, zone), vec![id(&a)], "{point}");
        host.restore_and_compare(&id(&a));
        host.backup(&[]);
        assert_eq!(bucket_state(&deletion).0, vec![id(&a)], "{point}");
    }
}

/// A dedicated server the test can stop, and a host on it with T1 = T2 = 1 s (`None`,
/// after saying so, when the fixture's server cannot be stopped).
fn stoppable_host() -> Option<(s3::S3, Host, String)> {
    let server = s3::dedicated();
    if !server.can_stop() {
        eprintln!(
            "not applicable: the {:?} S3 fixture cannot be stopped by the test",
            server.kind
        );
        return None;
    }
    let (host, deletion, _reserved) = s3_host_on(
        &server,
        (5, 10, 10),
        "[schedule]\ninterval = \"1s\"\naging = \"1s\"\n",
    );
    Some((server, host, deletion))
}

#[test]
fn a_stopped_server_keeps_the_backup_in_the_black_box_until_it_is_back() {
    let Some((server, host, deletion)) = stoppable_host() else {
        return;
    };
    fs::write(host.src().join("f"), vec![7u8; 1 << 20]).expect("write");
    let a = host.backup(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    server.stop();
    let out = host.cmd(&["tick"]).output().expect("tick");
    server.restart();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zone s3://"), "{err}");
    assert_eq!(
        ids(&host, "black-box"),
        vec![id(&a)],
        "the backup stays in the black box"
    );
    assert!(
        host.zone_dir("black-box", &id(&a))
            .join("archive.tar.zst")
            .is_file()
    );
    // Once the server is back, the move happens, once.
    host.ok(&["tick"]);
    assert_eq!(bucket_state_on(&server, &deletion).0, vec![id(&a)]);
    assert!(ids(&host, "black-box").is_empty());
    host.restore_and_compare(&id(&a));
}

#[test]
fn a_server_stopped_mid_upload_loses_nothing_and_the_move_finishes_later() {
    let Some((server, host, deletion)) = stoppable_host() else {
        return;
    };
    // 80 MiB of random data: a multipart upload of five 16 MiB parts, four in flight.
    let mut data = vec![0u8; 80 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(host.src().join("big"), &data).expect("write");
    drop(data);
    let a = host.backup(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Every finished part pauses 1.5 s; the server is stopped at the first pause, so
    // the remaining parts meet a dead server.
    let mut child = host
        .std_cmd(&["tick"])
        .env("TIERKEEP_FAULTS", "s3.part_uploaded=pause:1500")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tick");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("stderr line");
        let paused = line.contains("pausing");
        seen.push(line);
        if paused {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("pausing")),
        "no part was uploaded: {seen:#?}"
    );
    server.stop();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "{seen:#?}\n{rest:#?}");
    let err = rest.join("\n");
    assert!(err.contains("zone s3://"), "{err}");
    assert_eq!(ids(&host, "black-box"), vec![id(&a)], "the backup stays");
    let local = host.zone_dir("black-box", &id(&a)).join("archive.tar.zst");
    assert_eq!(
        support::sha256_file(&local),
        a["archive_sha256"].as_str().expect("sha256"),
        "the black-box copy is intact"
    );
    server.restart();
    host.ok(&["tick"]);
    assert_eq!(bucket_state_on(&server, &deletion), (vec![id(&a)], vec![]));
    if server.lists_uploads() {
        assert_eq!(server.uploads(&deletion), 0, "the stale upload was aborted");
    }
    assert_eq!(
        journal(&host),
        Vec::<String>::new(),
        "every upload was ended"
    );
    assert!(ids(&host, "black-box").is_empty());
    host.restore_and_compare(&id(&a));
}

/// The multipart uploads in flight that the host noted (`data_dir/staging/uploads`).
fn journal(host: &Host) -> Vec<String> {
    fs::read_dir(host.data().join("staging").join("uploads"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A file of `mib` MiB of pseudo-random (incompressible) bytes.
fn random_file(path: &std::path::Path, mib: usize, seed: u64) {
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = seed | 1;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(path, &data).expect("write");
}

#[test]
fn ls_and_a_partial_restore_from_a_bucket_read_only_the_index_and_a_few_frames() {
    let (host, _deletion, _reserved) = s3_host((1, 10, 10), "");
    // Small files in a frame of their own beside 24 MiB of large file frames.
    fs::create_dir_all(host.src().join("app/config")).expect("mkdir");
    fs::write(host.src().join("app/config/app.toml"), b"port = 8080\n").expect("write");
    for n in 0..20 {
        fs::write(
            host.src().join(format!("app/note-{n}")),
            format!("note {n}\n"),
        )
        .expect("write");
    }
    random_file(&host.src().join("big.bin"), 24, 5);
    let a = host.backup(&[]);
    host.backup(&[]); // a ages into the bucket
    assert_eq!(ids(&host, "deletion"), vec![id(&a)]);
    let size = a["archive_bytes"].as_u64().expect("size");

    let listing: serde_json::Value =
        serde_json::from_str(&host.ok(&["ls", &id(&a), "--json"])).expect("json");
    assert_eq!(listing["zone"], "deletion");
    let read = listing["archive_bytes_read"].as_u64().expect("read");
    assert!(read * 100 < size, "ls read {read} of {size}");
    assert_eq!(
        listing["entries"].as_array().expect("entries").len() as u64,
        a["entries"].as_u64().expect("entries")
    );

    let conf = host.src().join("app/config/app.toml");
    let target = host.root().join("one");
    let out = host.restore_path(&id(&a), &target, &conf);
    let read = out["archive_bytes_read"].as_u64().expect("read");
    assert!(read * 50 < size, "a partial restore read {read} of {size}");
    assert_eq!(out["exported_first"], false);
    assert_eq!(
        fs::read(target.join(entry_of(&conf))).expect("restored"),
        b"port = 8080\n"
    );
    // No archive was fetched into staging.
    let staging = host.data().join("staging");
    let left: Vec<_> = fs::read_dir(&staging)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_multipart_upload_killed_midway_is_aborted_by_the_next_run() {
    let (server, host, deletion) = {
        let server = s3::dedicated();
        let (host, deletion, _) = s3_host_on(
            &server,
            (5, 10, 10),
            "[schedule]\ninterval = \"1s\"\naging = \"1s\"\n",
        );
        (server, host, deletion)
    };
    random_file(&host.src().join("big"), 40, 0x5151);
    let a = host.backup(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut child = host
        .std_cmd(&["tick"])
        .env("TIERKEEP_FAULTS", "s3.part_uploaded=pause:5000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tick");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let paused = lines.map_while(Result::ok).any(|l| l.contains("pausing"));
    assert!(paused, "no part was uploaded");
    // kill -9 in the middle of the upload: nothing can abort it now.
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9));
    assert_eq!(journal(&host).len(), 1, "the upload in flight is noted");
    if server.lists_uploads() {
        assert_eq!(
            server.uploads(&deletion),
            1,
            "the killed upload is on the server"
        );
    }
    // The next run's recovery aborts it (from the server's listing, or from the note on
    // servers that cannot list uploads), then the move happens once.
    let out = host.ok(&["tick", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        report["recovery"]["removed_incomplete"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{report}"
    );
    assert_eq!(journal(&host), Vec::<String>::new());
    if server.lists_uploads() {
        assert_eq!(server.uploads(&deletion), 0, "the stale upload was aborted");
    }
    assert_eq!(bucket_state_on(&server, &deletion), (vec![id(&a)], vec![]));
    host.restore_and_compare(&id(&a));
}

#[test]
fn credentials_come_from_the_standard_aws_chain() {
    let server = s3::shared();
    let (mut host, deletion, reserved) = s3_host((1, 10, 10), "");
    // No keys in the config or in AWS_ACCESS_KEY_ID: a named profile in a shared
    // credentials file, as on an operator's host.
    let creds = host.root().join("aws-credentials");
    fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [backup]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key, server.secret_key
        ),
    )
    .expect("write credentials");
    host.env = vec![
        ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
        (
            "AWS_CONFIG_FILE",
            host.root().join("no-config").display().to_string(),
        ),
        ("AWS_PROFILE", "backup".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    fs::write(host.src().join("f"), b"profile").expect("write");
    let m = host.backup(&["--manual"]);
    assert_eq!(bucket_state(&reserved).0, vec![id(&m)]);
    host.backup(&[]);
    host.backup(&[]);
    assert_eq!(
        bucket_state(&deletion).0.len(),
        1,
        "aged through the profile's keys"
    );
    // With nothing in the chain, the error says where credentials can come from.
    host.env = vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            host.root().join("none").display().to_string(),
        ),
        (
            "AWS_CONFIG_FILE",
            host.root().join("none").display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    let err = host.fails(&["backup", "--manual"], 1);
    assert!(err.contains("no usable S3 credentials"), "{err}");
    assert!(err.contains("AWS_PROFILE"), "{err}");
}

#[test]
fn wrong_credentials_and_missing_buckets_are_explained() {
    let server = s3::shared();
    let mut host = Host::new(&format!(
        "{}[zones.deletion]\nurl = \"s3://no-such-bucket-tierkeep\"\n",
        server.config_section()
    ));
    host.env = server.env();
    fs::write(host.src().join("f"), b"x").expect("write");
    host.backup(&[]);
    let out = host.cmd(&["backup"]).output().expect("run");
    // The black box has room: the scheduled backup does not need the deletion zone yet.
    assert!(out.status.success());
    let host = {
        let mut h = Host::new(&format!(
            "{}[zones.black_box]\nmax_backups = 1\n[zones.deletion]\nurl = \"s3://no-such-bucket-tierkeep\"\n",
            server.config_section()
        ));
        h.env = server.env();
        h
    };
    fs::write(host.src().join("f"), b"x").expect("write");
    host.backup(&[]);
    // Now the black box is full and its backup cannot age: black-box pressure. Nothing
    // unmoved is deleted, the new backup is taken beyond capacity, loudly, naming why.
    let out = host.cmd(&["backup"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("black-box pressure"), "{err}");
    assert!(err.contains("no-such-bucket-tierkeep"), "{err}");
    assert_eq!(host.list(Some("black-box")).len(), 2);
    let status: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", "--json"])).expect("status --json");
    assert!(status["black_box_pressure"].is_string(), "{status}");
    let (mut host, _, _) = s3_host((1, 10, 10), "");
    host.env = vec![
        ("AWS_ACCESS_KEY_ID", "GK000000000000000000000000".into()),
        ("AWS_SECRET_ACCESS_KEY", "0".repeat(64)),
    ];
    fs::write(host.src().join("f"), b"x").expect("write");
    let err = host.fails(&["backup", "--manual"], 1);
    assert!(
        err.contains("denied") || err.contains("credentials") || err.contains("Access"),
        "{err}"
    );
}

// S3 Object Lock in the reserved zone, against moto's standalone server (an emulator
// that enforces Object Lock; Garage and s3s-fs have none). Without a moto server
// (`TIERKEEP_TEST_MOTO`, or `moto_server` on PATH) these tests say so and pass.

/// The moto server, or `None` after saying the test does not apply.
fn moto() -> Option<&'static s3::S3> {
    let server = s3::moto();
    if server.is_none() {
        eprintln!(
            "not applicable: no moto server (set TIERKEEP_TEST_MOTO or put moto_server on PATH)"
        );
    }
    server
}

/// A host whose reserved zone is `reserved` on `server` (`extra` goes into its table).
fn reserved_host(server: &s3::S3, reserved: &str, extra: &str) -> Host {
    let deletion = server.bucket("tk-deletion");
    let mut host = Host::new(&format!(
        "{}[zones.deletion]\nurl = \"s3://{deletion}\"\n\
         [zones.reserved]\nurl = \"s3://{reserved}\"\n{extra}\n",
        server.config_section(),
    ));
    host.env = server.env();
    host
}

/// The versions of a backup's two objects in a bucket listing.
fn version_of<'a>(versions: &'a [(String, String, bool)], id: &str, name: &str) -> &'a str {
    versions
        .iter()
        .find(|(k, _, marker)| !marker && k.ends_with(&format!("{id}/{name}")))
        .map(|(_, v, _)| v.as_str())
        .unwrap_or_else(|| panic!("no version of {id}/{name} in {versions:?}"))
}

#[test]
fn a_locked_manual_backup_is_neither_deleted_nor_overwritten_nor_lost() {
    let Some(server) = moto() else { return };
    let reserved = server.locked_bucket("tk-locked");
    let host = reserved_host(server, &reserved, "lock_retention = \"1d\"");
    make_tree(&host.src());
    host.ok(&["config", "check"]);
    let m = host.backup(&["--manual", "--label", "locked"]);
    let id = id(&m);
    let before = server.versions(&reserved);
    assert_eq!(before.len(), 2, "archive and manifest: {before:?}");
    let archive_version = version_of(&before, &id, "archive.tar.zst").to_owned();
    let archive_key = format!("test-host/{id}/archive.tar.zst");
    let until = server
        .retain_until(&reserved, &archive_key, &archive_version)
        .expect("the archive has a retention");

    // (a) tierkeep delete refuses (exit 3), naming the date the retention ends, and
    // changes nothing: neither the bucket nor the catalog.
    let err = host.fails(&["delete", &id, "--yes"], 3);
    assert!(err.contains("Object Lock"), "{err}");
    assert!(err.contains("COMPLIANCE"), "{err}");
    // The date named is when the last retention ends (the manifest's, set just after
    // the archive's), to the second, rounded up.
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let named = err
        .split("until ")
        .nth(1)
        .and_then(|rest| rest.split([';', ' ', ',']).next())
        .and_then(|t| time::OffsetDateTime::parse(t, rfc3339).ok())
        .unwrap_or_else(|| panic!("no date after `until`: {err}"));
    let archive_until = time::OffsetDateTime::parse(&until, rfc3339).expect("date");
    let after = named - archive_until;
    assert!(
        after >= time::Duration::ZERO && after < time::Duration::seconds(5),
        "names the end of the retention ({until}): {err}"
    );
    let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    assert!(
        (in_a_day - named).abs() < time::Duration::minutes(1),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        server.versions(&reserved),
        before,
        "no version removed or hidden"
    );
    assert_eq!(
        ids(&host, "reserved"),
        vec![id.clone()],
        "the catalog keeps it"
    );
    let trail = host.ok(&["catalog", "history", &id]);
    assert!(!trail.contains("deleted"), "{trail}");

    // (b) A raw DeleteObject of the archive's version, with the host's own keys, is
    // refused by the server itself.
    let raw = server
        .delete_version(&reserved, &archive_key, &archive_version)
        .expect_err("the server must refuse to delete a locked version");
    assert!(raw.contains("AccessDenied"), "{raw}");

    // (c) Overwriting only adds a version: the locked one stays, and restores.
    let garbage = server.put(&reserved, &archive_key, b"not an archive".to_vec());
    assert_ne!(garbage, archive_version);
    let after = server.versions(&reserved);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().any(|(_, v, _)| *v == archive_version));
    let kept = server.get_version(&reserved, &archive_key, &archive_version);
    let file = host.root().join("locked.tar.zst");
    fs::write(&file, &kept).expect("write");
    assert_eq!(
        support::sha256_file(&file),
        m["archive_sha256"].as_str().expect("sha256"),
        "the locked version is the archive the manifest describes"
    );
    let target = host.root().join("from-locked-version");
    support::untar_with_standard_tools(&file, &target);
    assert_same_tree(&host.src(), &target.join(entry_of(&host.src())));
    // tierkeep sees the overwrite (the current object no longer matches)...
    host.fails(&["verify", &id], 1);
    // ...still refuses to delete (the locked version is older than the current one)...
    let err = host.fails(&["delete", &id, "--yes"], 3);
    assert!(err.contains("Object Lock"), "{err}");
    // ...and once the unlocked overwrite is removed, the backup restores bit-identical.
    server
        .delete_version(&reserved, &archive_key, &garbage)
        .expect("the overwrite has no lock");
    host.ok(&["verify", &id]);
    host.restore_and_compare(&id);
    assert_eq!(server.versions(&reserved), before);
}

#[test]
fn an_unlocked_backup_on_a_versioned_bucket_is_deleted_for_real() {
    let Some(server) = moto() else { return };
    // Object Lock (and so versioning) on the bucket, but no retention configured.
    let reserved = server.locked_bucket("tk-versioned");
    let host = reserved_host(server, &reserved, "");
    fs::write(host.src().join("f"), b"unlocked").expect("write");
    let m = host.backup(&["--manual"]);
    let id = id(&m);
    // An older version of the manifest too: every version must go.
    let manifest_key = format!("test-host/{id}/manifest.json");
    let current = server.versions(&reserved);
    let manifest_version = version_of(&current, &id, "manifest.json").to_owned();
    let bytes = server.get_version(&reserved, &manifest_key, &manifest_version);
    server.put(&reserved, &manifest_key, bytes);
    assert_eq!(server.versions(&reserved).len(), 3);
    let out = host.ok(&["delete", &id, "--yes"]);
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(
        server.versions(&reserved),
        vec![],
        "no version and no delete marker left"
    );
    assert!(ids(&host, "reserved").is_empty());
}

/// `config check`, a manual backup and the daemon's start, with `lock_retention` set on
/// a bucket of `server` that has no Object Lock.
fn lock_retention_without_object_lock(server: &s3::S3) {
    let reserved = server.bucket("tk-nolock");
    let host = reserved_host(server, &reserved, "lock_retention = \"1d\"");
    fs::write(host.src().join("f"), b"x").expect("write");
    let err = host.fails(&["config", "check"], 2);
    assert!(
        err.contains(&format!(
            "bucket `{reserved}` has no S3 Object Lock enabled"
        )),
        "{err}"
    );
    assert!(err.contains("lock_retention"), "{err}");
    // A manual backup is refused before anything is written (exit 2: configuration).
    let err = host.fails(&["backup", "--manual"], 2);
    assert!(err.contains("has no S3 Object Lock enabled"), "{err}");
    assert_eq!(
        server.keys(&reserved),
        Vec::<String>::new(),
        "nothing written"
    );
    assert!(ids(&host, "reserved").is_empty());
    // Scheduled backups do not need the reserved zone.
    host.backup(&[]);
    // The daemon says so at start, and runs on.
    let mut child = host
        .std_cmd(&["run", "--metrics-addr", "off"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let stderr = child.stderr.take().expect("stderr");
    let said = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .take(200)
        .find(|l| l.contains("has no S3 Object Lock enabled"));
    let _ = sigterm(child.id());
    let status = child.wait().expect("wait");
    let line = said.expect("the daemon names the problem at start");
    assert!(line.contains("ERROR"), "{line}");
    assert!(status.success(), "a SIGTERM stops it cleanly: {status:?}");
}

/// Sends SIGTERM to a process this test started.
fn sigterm(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
}

#[test]
fn lock_retention_on_a_bucket_without_object_lock_is_refused_clearly() {
    lock_retention_without_object_lock(s3::shared());
    if let Some(server) = moto() {
        lock_retention_without_object_lock(server);
    }
}

/// A reader of `left` bytes of noise that then fails, or panics.
struct Breaks {
    left: usize,
    panics: bool,
    x: u64,
}

impl std::io::Read for Breaks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if self.panics {
                panic!("a reader bug (on purpose, in a test)");
            }
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.left);
        for b in &mut buf[..n] {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *b = (self.x >> 32) as u8;
        }
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn an_upload_whose_reader_fails_or_panics_stores_nothing() {
    use std::sync::Arc;
    use tierkeep::domain::BackupId;
    use tierkeep::store::{self, BackupKey, S3Settings, ZoneUrl};

    let server = s3::shared();
    let bucket = server.bucket("stream");
    let url: ZoneUrl = format!("s3://{bucket}/zone").parse().expect("zone url");
    let settings = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        force_path_style: true,
        credentials: Some((server.access_key.clone(), server.secret_key.clone())),
        ..S3Settings::default()
    };
    let zone = store::open(&url, &settings).expect("open the zone");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let at = time::OffsetDateTime::from_unix_timestamp(1_750_000_000).expect("time");
    // Within the first part (one PUT would follow), and after two whole 16 MiB parts
    // of a multipart upload.
    for (n, (left, panics)) in [
        (3 << 20, false),
        (3 << 20, true),
        (40 << 20, false),
        (40 << 20, true),
    ]
    .into_iter()
    .enumerate()
    {
        let key = BackupKey {
            host: "h".into(),
            id: BackupId::new(at, n as u64),
        };
        let src = Breaks {
            left,
            panics,
            x: 0x2545_F491_4F6C_DD1D,
        };
        let result = rt.block_on(zone.put_archive_stream(
            &key,
            "archive.tar.zst.age",
            Box::new(src),
            48 << 20,
            Arc::new(|_| {}),
        ));
        let err = result.expect_err("a broken reader is a failed upload");
        let text = err.to_string();
        let expected = if panics {
            "reader stopped"
        } else {
            "the disk went away"
        };
        assert!(text.contains(expected), "case {n}: {text}");
        assert!(
            server.keys(&bucket).is_empty(),
            "case {n}: nothing is stored: {:?}",
            server.keys(&bucket)
        );
    }
    if server.lists_uploads() {
        assert_eq!(server.uploads(&bucket), 0, "every multipart upload aborted");
    }
}
