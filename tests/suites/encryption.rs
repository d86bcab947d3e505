//! Encryption at rest: archives in the deletion and reserved zones are age files that
//! `age -d -i KEY | zstd -d | tar -x` restores (Debian's `age`), made for age X25519,
//! SSH and passphrase recipients, on a real S3 server (the fixture of `support/s3.rs`)
//! and in local zones; wrong, missing and tampered inputs fail with nothing extracted.

#[path = "../support/s3.rs"]
mod s3;
#[path = "../support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Host, assert_same_tree, entry_of, make_tree};

fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

/// Runs a standard tool that must succeed; returns stdout.
fn tool(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} ({e}): install Debian's age and openssh-client")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An age identity made with `age-keygen`: (identity file, public key).
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    tool(Command::new("age-keygen").arg("-o").arg(&file));
    let public = tool(Command::new("age-keygen").arg("-y").arg(&file));
    (
        file,
        String::from_utf8(public).expect("utf8").trim().to_owned(),
    )
}

/// An ed25519 SSH key made with `ssh-keygen`: (private key file, public key line).
fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let file = dir.join("id_ed25519");
    tool(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f"])
            .arg(&file),
    );
    let public = fs::read_to_string(file.with_extension("pub")).expect("public key");
    (file, public.trim().to_owned())
}

/// A host whose deletion and reserved zones are fresh buckets, encrypted with
/// `encryption` (a TOML table body).
fn s3_host(encryption: &str) -> (Host, String, String) {
    let server = s3::shared();
    let deletion = server.bucket("tk-enc-del");
    let reserved = server.bucket("tk-enc-res");
    let host = s3_host_on(&deletion, &reserved, encryption);
    (host, deletion, reserved)
}

/// A host (with its own data directory) on existing buckets.
fn s3_host_on(deletion: &str, reserved: &str, encryption: &str) -> Host {
    let server = s3::shared();
    let mut host = Host::new(&format!(
        "{}[zones.black_box]\nmax_backups = 1\n\
         [zones.deletion]\nurl = \"s3://{deletion}/zone\"\nmax_backups = 10\n\
         [zones.reserved]\nurl = \"s3://{reserved}\"\nmax_backups = 10\n\
         [encryption]\n{encryption}\n",
        server.config_section(),
    ));
    host.env = server.env();
    host
}

fn object(bucket: &str, key: &str) -> Vec<u8> {
    s3::shared().get(bucket, key)
}

/// `age -d -i KEY < sealed | zstd -d | tar -x -C target`, all standard tools.
fn restore_with_standard_tools(sealed: &[u8], key: &Path, target: &Path) {
    fs::create_dir_all(target).expect("target");
    let file = target.with_extension("age");
    fs::write(&file, sealed).expect("write");
    let script = format!(
        "set -o pipefail; age -d -i '{}' '{}' | zstd -d | tar -x -C '{}'",
        key.display(),
        file.display(),
        target.display()
    );
    tool(Command::new("bash").arg("-c").arg(script));
}

/// Entries a failed restore left in `target`.
fn left_in(target: &Path) -> Vec<PathBuf> {
    fs::read_dir(target)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn an_aged_backup_is_an_age_file_that_standard_tools_restore() {
    let keys = tempfile::tempdir().expect("keys");
    let (key, public) = age_key(keys.path(), "key.txt");
    let (mut host, deletion, _) = s3_host(&format!("recipients = [\"{public}\"]"));
    make_tree(&host.src());
    let check = host.ok(&["config", "check"]);
    assert!(check.contains("configuration is valid"), "{check}");
    let a = host.backup(&[]);
    host.backup(&[]); // a ages into the bucket, encrypted on the way
    let folder = format!("zone/test-host/{}", id(&a));
    let keys_in_bucket = s3::shared().keys(&deletion);
    assert!(
        keys_in_bucket.contains(&format!("{folder}/archive.tar.zst.age")),
        "{keys_in_bucket:?}"
    );
    assert!(
        !keys_in_bucket.contains(&format!("{folder}/archive.tar.zst")),
        "no plaintext copy: {keys_in_bucket:?}"
    );
    let sealed = object(&deletion, &format!("{folder}/archive.tar.zst.age"));
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));

    // The manifest says how, and names no source path.
    let manifest: serde_json::Value =
        serde_json::from_slice(&object(&deletion, &format!("{folder}/manifest.json")))
            .expect("manifest");
    assert_eq!(manifest["format"], 3);
    assert_eq!(manifest["encryption"]["scheme"], "age");
    assert_eq!(
        manifest["archive_bytes"].as_u64(),
        Some(sealed.len() as u64)
    );
    assert_eq!(manifest["archive_sha256"], support::sha256_bytes(&sealed));
    assert_eq!(manifest["encryption"]["plain_sha256"], a["archive_sha256"]);
    let fingerprint = manifest["encryption"]["recipients"][0]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    assert!(fingerprint.starts_with("age:"), "{fingerprint}");
    let text = String::from_utf8_lossy(&object(&deletion, &format!("{folder}/manifest.json")))
        .into_owned();
    assert!(
        !text.contains(host.src().to_str().expect("utf8")),
        "no source path in a plaintext manifest: {text}"
    );

    // Standard tools alone restore it bit for bit.
    let by_tools = host.root().join("by-tools");
    restore_with_standard_tools(&sealed, &key, &by_tools);
    assert_same_tree(&host.src(), &by_tools.join(entry_of(&host.src())));

    // The host verifies the stored bytes with no key; a deep check needs one.
    host.ok(&["verify", &id(&a)]);
    let out = host
        .cmd(&["verify", &id(&a), "--deep"])
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no identity") && text.contains(&fingerprint),
        "{text}"
    );
    // Not a damaged backup: it is not marked so.
    assert!(host.list(Some("deletion"))[0]["damaged"].is_null());
    let err = host.fails(&["ls", &id(&a)], 2);
    assert!(err.contains(&fingerprint), "{err}");

    // With the identity: restore, ls, a partial restore, a deep verify.
    host.env
        .push(("TIERKEEP_IDENTITY", key.display().to_string()));
    let out = host.restore_and_compare(&id(&a));
    assert!(out.contains("exported and verified first"), "{out}");
    host.ok(&["verify", &id(&a), "--deep"]);
    let listing: serde_json::Value =
        serde_json::from_str(&host.ok(&["ls", &id(&a), "--json"])).expect("ls");
    assert_eq!(listing["from_index"], true);
    assert_eq!(
        listing["entries"].as_array().expect("entries").len() as u64,
        a["entries"].as_u64().expect("entries")
    );
    let one = host.src().join("app/config/app.toml");
    let target = host.root().join("one");
    // (Its frame is most of this small archive: the whole age file is read.)
    host.restore_path(&id(&a), &target, &one);
    assert_eq!(
        fs::read(target.join(entry_of(&one))).expect("restored"),
        b"port = 8080\n"
    );
    // `export` hands over the age file as stored.
    let exported = host.root().join("a.tar.zst.age");
    host.ok(&["export", &id(&a), "--to", exported.to_str().expect("utf8")]);
    assert_eq!(fs::read(&exported).expect("exported"), sealed);
}

#[test]
fn ls_and_a_partial_restore_of_an_encrypted_backup_read_only_a_few_chunks() {
    let keys = tempfile::tempdir().expect("keys");
    let (key, public) = age_key(keys.path(), "key.txt");
    let (mut host, _, _) = s3_host(&format!(
        "recipients = [\"{public}\"]\nidentity_file = \"{}\"",
        key.display()
    ));
    fs::create_dir_all(host.src().join("app")).expect("mkdir");
    fs::write(host.src().join("app/app.toml"), b"port = 8080\n").expect("write");
    fs::write(
        host.src().join("big.bin"),
        support::pseudo_random(9, 24 << 20),
    )
    .expect("write");
    let a = host.backup(&[]);
    host.backup(&[]);
    let size = host
        .list(Some("deletion"))
        .iter()
        .find(|b| b["id"] == a["id"])
        .and_then(|b| b["size_bytes"].as_u64())
        .expect("aged");
    let listing: serde_json::Value =
        serde_json::from_str(&host.ok(&["ls", &id(&a), "--json"])).expect("ls");
    let read = listing["archive_bytes_read"].as_u64().expect("read");
    assert!(read * 100 < size, "ls read {read} of {size}");
    let conf = host.src().join("app/app.toml");
    let target = host.root().join("one");
    let out = host.restore_path(&id(&a), &target, &conf);
    let read = out["archive_bytes_read"].as_u64().expect("read");
    assert!(read * 50 < size, "a partial restore read {read} of {size}");
    assert_eq!(
        fs::read(target.join(entry_of(&conf))).expect("restored"),
        b"port = 8080\n"
    );
    // The big file's frames come back whole, chunk by chunk.
    let big = host.src().join("big.bin");
    let target = host.root().join("big");
    host.restore_path(&id(&a), &target, &big);
    assert_eq!(
        support::sha256_file(&target.join(entry_of(&big))),
        support::sha256_file(&big)
    );
    host.env.clear();
}

#[test]
fn a_wrong_key_a_missing_key_and_a_flipped_byte_each_fail_with_nothing_extracted() {
    let keys = tempfile::tempdir().expect("keys");
    let (_key, public) = age_key(keys.path(), "key.txt");
    let (other, _) = age_key(keys.path(), "other.txt");
    let (mut host, deletion, _) = s3_host(&format!("recipients = [\"{public}\"]"));
    make_tree(&host.src());
    let a = host.backup(&[]);
    host.backup(&[]);

    let target = host.root().join("missing");
    let err = host.fails(
        &["restore", &id(&a), "--to", target.to_str().expect("utf8")],
        2,
    );
    assert!(err.contains("--identity"), "{err}");
    assert!(left_in(&target).is_empty());

    let target = host.root().join("wrong");
    let other_arg = other.to_str().expect("utf8");
    let args = [
        "restore",
        &id(&a),
        "--to",
        target.to_str().expect("utf8"),
        "--identity",
        other_arg,
    ];
    let err = host.fails(&args, 1);
    assert!(err.contains("none of the identities"), "{err}");
    assert!(left_in(&target).is_empty(), "{:?}", left_in(&target));
    let err = host.fails(&["ls", &id(&a), "--identity", other_arg], 1);
    assert!(err.contains("cannot decrypt"), "{err}");

    // One flipped byte in the stored ciphertext.
    let object_key = format!("zone/test-host/{}/archive.tar.zst.age", id(&a));
    let mut sealed = object(&deletion, &object_key);
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x01;
    s3::shared().put(&deletion, &object_key, sealed);
    host.env.push((
        "TIERKEEP_IDENTITY",
        keys.path().join("key.txt").display().to_string(),
    ));
    let target = host.root().join("tampered");
    host.fails(
        &["restore", &id(&a), "--to", target.to_str().expect("utf8")],
        1,
    );
    assert!(left_in(&target).is_empty(), "{:?}", left_in(&target));
    let out = host
        .cmd(&["verify", &id(&a), "--json"])
        .output()
        .expect("verify");
    assert!(!out.status.success());
}

#[test]
fn ssh_recipients_and_a_passphrase_recipient() {
    let keys = tempfile::tempdir().expect("keys");
    let (ssh, public) = ssh_key(keys.path());
    let recipients = keys.path().join("recipients.txt");
    fs::write(&recipients, format!("# operations\n{public}\n")).expect("write");
    let (mut host, _, reserved) =
        s3_host(&format!("recipients_file = \"{}\"", recipients.display()));
    make_tree(&host.src());
    // A manual backup is encrypted as it is stored in the reserved bucket.
    let m = host.backup(&["--manual", "--label", "before upgrade"]);
    let folder = format!("test-host/{}", id(&m));
    let sealed = object(&reserved, &format!("{folder}/archive.tar.zst.age"));
    let by_tools = host.root().join("by-tools");
    restore_with_standard_tools(&sealed, &ssh, &by_tools);
    assert_same_tree(&host.src(), &by_tools.join(entry_of(&host.src())));
    host.env
        .push(("TIERKEEP_IDENTITY", ssh.display().to_string()));
    host.restore_and_compare(&id(&m));
    assert_eq!(host.list(Some("reserved"))[0]["label"], "before upgrade");

    // A passphrase as the only recipient; tierkeep decrypts with TIERKEEP_PASSPHRASE.
    let pass = keys.path().join("passphrase");
    fs::write(&pass, "correct horse battery staple\n").expect("write");
    let (mut host, _, reserved) = s3_host(&format!("passphrase_file = \"{}\"", pass.display()));
    make_tree(&host.src());
    let m = host.backup(&["--manual"]);
    let sealed = object(
        &reserved,
        &format!("test-host/{}/archive.tar.zst.age", id(&m)),
    );
    assert!(String::from_utf8_lossy(&sealed[..200]).contains("scrypt"));
    // The configured passphrase file decrypts; a wrong passphrase does not.
    host.restore_and_compare(&id(&m));
    host.env
        .push(("TIERKEEP_PASSPHRASE", "wrong horse".to_owned()));
    let target = host.root().join("wrong");
    let err = host.fails(
        &["restore", &id(&m), "--to", target.to_str().expect("utf8")],
        1,
    );
    assert!(err.contains("cannot decrypt"), "{err}");
    assert!(left_in(&target).is_empty());
}

#[test]
fn no_bucket_object_is_plaintext_and_a_new_data_directory_recovers_with_the_identity() {
    let keys = tempfile::tempdir().expect("keys");
    let (key, public) = age_key(keys.path(), "key.txt");
    let encryption = format!("recipients = [\"{public}\"]");
    let (host, deletion, reserved) = s3_host(&encryption);
    make_tree(&host.src());
    let marker = "a line only the sources hold: 7f3c9e";
    fs::write(host.src().join("secret.txt"), marker).expect("write");
    let a = host.backup(&[]);
    let b = host.backup(&[]);
    host.backup(&[]);
    let m = host.backup(&["--manual"]);
    let server = s3::shared();
    for bucket in [&deletion, &reserved] {
        for k in server.keys(bucket) {
            let bytes = server.get(bucket, &k);
            if k.ends_with("manifest.json") {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("secret.txt") && !text.contains(marker),
                    "{k}: {text}"
                );
                continue;
            }
            assert!(k.ends_with(".age"), "only age files and manifests: {k}");
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{k}");
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("secret.txt") && !text.contains(marker),
                "{k}"
            );
            // Not a zstd stream either (its magic at any frame start).
            assert!(
                !bytes.windows(4).any(|w| w == [0x28, 0xb5, 0x2f, 0xfd]),
                "{k}"
            );
        }
    }

    // Disaster recovery: a new data directory, the same buckets, the identity.
    let mut fresh = s3_host_on(&deletion, &reserved, &encryption);
    fresh.ok(&["catalog", "rebuild"]);
    let mut found: Vec<String> = fresh.list(None).iter().map(id).collect();
    found.sort();
    let mut expected = vec![id(&a), id(&b), id(&m)];
    expected.sort();
    assert_eq!(found, expected);
    fresh
        .env
        .push(("TIERKEEP_IDENTITY", key.display().to_string()));
    fresh.ok(&["verify", "--all", "--deep"]);
    let target = fresh.root().join("recovered");
    fresh.ok(&[
        "restore",
        &id(&m),
        "--to",
        target.to_str().expect("utf8"),
        "--keep-setuid",
    ]);
    assert_same_tree(&host.src(), &target.join(entry_of(&host.src())));
}

#[test]
fn local_zones_are_encrypted_too_and_config_check_names_a_bad_recipient() {
    let keys = tempfile::tempdir().expect("keys");
    let (key, public) = age_key(keys.path(), "key.txt");
    let mut host = Host::new(&format!(
        "[zones.black_box]\nmax_backups = 1\n[encryption]\nrecipients = [\"{public}\"]\n"
    ));
    make_tree(&host.src());
    fs::write(
        host.src().join("big.bin"),
        support::pseudo_random(3, 12 << 20),
    )
    .expect("write");
    let a = host.backup(&[]);
    // The black box stays plaintext by default: restores in place need no key.
    assert!(
        host.zone_dir("black-box", &id(&a))
            .join("archive.tar.zst")
            .is_file()
    );
    host.restore_and_compare(&id(&a));
    host.backup(&[]);
    let dir = host.zone_dir("deletion", &id(&a));
    assert!(
        dir.join("archive.tar.zst.age").is_file(),
        "{:?}",
        left_in(&dir)
    );
    assert!(!dir.join("archive.tar.zst").exists());
    host.env
        .push(("TIERKEEP_IDENTITY", key.display().to_string()));
    host.restore_and_compare(&id(&a));
    let one = host.src().join("app/config/app.toml");
    let target = host.root().join("one");
    let out = host.restore_path(&id(&a), &target, &one);
    assert_eq!(out["exported_first"], false);
    assert_eq!(
        fs::read(target.join(entry_of(&one))).expect("restored"),
        b"port = 8080\n"
    );

    // A malformed recipient is named, with where it came from.
    let bad = Host::new(&format!(
        "[encryption]\nrecipients = [\"{public}\", \"age1qqqq\", \"AGE-SECRET-KEY-1XYZ\"]\n"
    ));
    let err = bad.fails(&["config", "check"], 2);
    assert!(err.contains("encryption.recipients[1]"), "{err}");
    assert!(
        err.contains("encryption.recipients[2]") && err.contains("secret key"),
        "{err}"
    );
    assert!(
        !err.contains("XYZ"),
        "a secret is never echoed whole: {err}"
    );
}

#[test]
fn an_encrypted_black_box_needs_the_identity_to_restore_and_skips_reuse() {
    let keys = tempfile::tempdir().expect("keys");
    let (key, public) = age_key(keys.path(), "key.txt");
    let mut host = Host::new(&format!(
        "[zones.black_box]\nmax_backups = 2\n[encryption]\nrecipients = [\"{public}\"]\nblack_box = true\n"
    ));
    make_tree(&host.src());
    let a = host.backup(&[]);
    let dir = host.zone_dir("black-box", &id(&a));
    assert!(
        dir.join("archive.tar.zst.age").is_file(),
        "{:?}",
        left_in(&dir)
    );
    let b = host.backup(&[]);
    assert_eq!(b["reused_bytes"].as_u64().unwrap_or(0), 0);
    let target = host.root().join("no-key");
    host.fails(
        &["restore", &id(&a), "--to", target.to_str().expect("utf8")],
        2,
    );
    host.env
        .push(("TIERKEEP_IDENTITY", key.display().to_string()));
    host.restore_and_compare(&id(&a));
    // Aging carries the age file as it is.
    host.backup(&[]);
    assert!(
        host.zone_dir("deletion", &id(&a))
            .join("archive.tar.zst.age")
            .is_file()
    );
    host.restore_and_compare(&id(&a));
}

#[test]
fn a_format_1_backup_aged_into_an_encrypted_zone_stays_readable() {
    let keys = tempfile::tempdir().expect("keys");
    let (key, public) = age_key(keys.path(), "key.txt");
    let mut host = Host::new(&format!("[encryption]\nrecipients = [\"{public}\"]\n"));
    make_tree(&host.src());
    // A format 1 archive (one zstd stream, no index), as earlier versions wrote, old
    // enough to age at the next tick.
    let archive = host.root().join("v1.tar.zst");
    let src = host.src();
    let rel = src.strip_prefix("/").expect("absolute");
    tool(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; tar -C / -cf - '{}' | zstd -q -3 -o '{}'",
        rel.display(),
        archive.display()
    )));
    let old = "20260101T000000.000Z-0000000000f1";
    let dir = host.zone_dir("black-box", old);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::copy(&archive, dir.join("archive.tar.zst")).expect("copy");
    let manifest = serde_json::json!({
        "format": 1, "id": old, "host_id": "test-host", "kind": "scheduled",
        "created_at": "2026-01-01T00:00:00Z",
        "source": [src.to_str().expect("utf8")], "entries": 1,
        "logical_bytes": 10, "archive_bytes": fs::metadata(&archive).expect("stat").len(),
        "archive_sha256": support::sha256_file(&archive),
        "compression": "zstd", "tool_version": "test", "policy": "test"
    });
    fs::write(dir.join("manifest.json"), manifest.to_string()).expect("write");
    host.ok(&["catalog", "rebuild"]);
    host.ok(&["tick"]);
    let aged = host.zone_dir("deletion", old);
    assert!(
        aged.join("archive.tar.zst.age").is_file(),
        "{:?}",
        left_in(&aged)
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&fs::read(aged.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(stored["format"], 3);
    // Its manifest reads back: verify, a rebuilt catalog and a restore all find it.
    host.ok(&["verify", old]);
    host.ok(&["catalog", "rebuild"]);
    assert_eq!(host.list(Some("deletion"))[0]["id"], old);
    host.env
        .push(("TIERKEEP_IDENTITY", key.display().to_string()));
    host.ok(&["verify", old, "--deep"]);
    let listing: serde_json::Value =
        serde_json::from_str(&host.ok(&["ls", old, "--json"])).expect("ls");
    assert_eq!(listing["from_index"], false);
    let conf = host.src().join("app/config/app.toml");
    let target = host.root().join("one");
    host.restore_path(old, &target, &conf);
    assert_eq!(
        fs::read(target.join(entry_of(&conf))).expect("restored"),
        b"port = 8080\n"
    );
}
