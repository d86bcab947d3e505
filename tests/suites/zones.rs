//! Zones and the lifecycle between them: aging (early, when the black box is full, and
//! after T2), eviction of the earliest deletion-zone backup, restore from the deletion
//! zone, and crash safety — the process is killed for real (SIGABRT) at every step of a
//! move and of an eviction, and the next run must leave every backup restorable from
//! exactly one zone or recorded as evicted.

#[path = "../support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::process::ExitStatusExt;

use support::{Host, assert_same_tree, entry_of, make_tree};

/// Ids with a committed manifest in a local zone.
fn committed(host: &Host, zone: &str) -> Vec<String> {
    let dir = host.data().join(zone).join("test-host");
    let mut out: Vec<String> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn ids(list: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    v.sort();
    v
}

/// Every zone's committed backups agree with the catalog, and no backup is in two zones.
fn assert_consistent(host: &Host) {
    let mut seen = std::collections::HashSet::new();
    for zone in ["black-box", "deletion", "reserved"] {
        let in_zone = committed(host, zone);
        assert_eq!(
            ids(&host.list(Some(zone))),
            in_zone,
            "catalog and {zone} zone disagree"
        );
        for id in in_zone {
            assert!(seen.insert(id.clone()), "{id} is in two zones");
        }
        let leftovers: Vec<_> = fs::read_dir(host.data().join(zone).join("test-host"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| !e.path().join("manifest.json").is_file())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "incomplete uploads left in {zone}: {leftovers:?}"
        );
    }
    let history = host.ok(&["catalog", "history", "--limit", "1000"]);
    assert!(
        !history.contains("missing"),
        "a backup went missing:\n{history}"
    );
}

#[test]
fn aging_eviction_and_restore_from_the_deletion_zone() {
    let host = Host::new(
        "[zones.black_box]\nmax_backups = 1\n[zones.deletion]\nmax_backups = 2\n\
         [zones.reserved]\nmax_backups = 1\n",
    );
    make_tree(&host.src());
    let manual = host.backup(&["--manual", "--label", "keep"]);
    let a = host.backup(&[]);
    let b = host.backup(&[]); // ages a early
    let c = host.backup(&[]); // ages b early
    let d = host.backup(&[]); // deletion full: evicts a (the earliest), then ages c
    let id = |v: &serde_json::Value| v["id"].as_str().expect("id").to_owned();
    assert_eq!(committed(&host, "black-box"), vec![id(&d)]);
    assert_eq!(committed(&host, "deletion"), vec![id(&b), id(&c)]);
    assert_eq!(committed(&host, "reserved"), vec![id(&manual)]);
    assert_consistent(&host);

    let trail = host.ok(&["catalog", "history", &id(&a)]);
    assert!(
        trail.contains("evicted") && trail.contains("earliest"),
        "{trail}"
    );
    assert!(
        trail.contains("aged") && trail.contains("black box full"),
        "{trail}"
    );
    host.fails(&["restore", &id(&a), "--to", "/tmp/never"], 3);

    // Restore from the deletion zone exports and verifies first, and is bit-identical.
    let out = host.restore_and_compare(&id(&b));
    assert!(out.contains("exported and verified first"), "{out}");
    // `export` from the deletion zone restores with standard tools.
    let file = host.root().join("b.tar.zst");
    host.ok(&["export", &id(&b), "--to", file.to_str().expect("utf8")]);
    let target = host.root().join("by-tar");
    support::untar_with_standard_tools(&file, &target);
    assert_same_tree(&host.src(), &target.join(entry_of(&host.src())));

    // tick never touches the reserved zone, and has nothing else to do before T2.
    host.ok(&["tick"]);
    assert_eq!(committed(&host, "reserved"), vec![id(&manual)]);
}

#[test]
fn tick_ages_after_t2() {
    let host = Host::new(
        "[schedule]\ninterval = \"1s\"\naging = \"2s\"\n[zones.black_box]\nmax_backups = 5\n",
    );
    fs::write(host.src().join("f"), b"data").expect("write");
    let a = host.backup(&[]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = host.ok(&["tick", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["aged"][0], a["id"], "{out}");
    assert_eq!(
        ids(&host.list(Some("deletion"))),
        vec![a["id"].as_str().expect("id").to_owned()]
    );
    let trail = host.ok(&["catalog", "history", a["id"].as_str().expect("id")]);
    assert!(trail.contains("T2 = 2s"), "{trail}");
    assert_consistent(&host);
}

#[test]
fn a_kill_at_any_step_of_a_move_loses_nothing() {
    for point in tierkeep::faults::MOVE_POINTS {
        let host = Host::new("[zones.black_box]\nmax_backups = 1\n");
        make_tree(&host.src());
        let a = host.backup(&[]);
        let a_id = a["id"].as_str().expect("id").to_owned();
        // The next scheduled backup must age `a` early; kill it at `point`.
        let out = host
            .cmd(&["backup"])
            .env("TIERKEEP_FAULTS", format!("{point}=kill"))
            .output()
            .expect("run");
        assert_eq!(
            out.status.signal(),
            Some(6),
            "{point}: expected SIGABRT, got {:?}",
            out.status
        );
        // Recovery on the next run.
        host.ok(&["tick"]);
        assert_consistent(&host);
        let holding: Vec<&str> = ["black-box", "deletion"]
            .into_iter()
            .filter(|z| committed(&host, z).contains(&a_id))
            .collect();
        assert_eq!(holding.len(), 1, "{point}: {a_id} is in {holding:?}");
        host.restore_and_compare(&a_id);
        // And the work goes on: a later backup ages `a` if it is still in the black box.
        let b = host.backup(&[]);
        assert_eq!(committed(&host, "deletion"), vec![a_id.clone()], "{point}");
        assert_eq!(
            committed(&host, "black-box"),
            vec![b["id"].as_str().expect("id").to_owned()]
        );
        assert_consistent(&host);
    }
}

#[test]
fn a_failed_step_before_commit_keeps_the_black_box_copy() {
    for point in [
        "move.before_upload",
        "move.after_upload",
        "move.after_verify",
    ] {
        let host = Host::new("[zones.black_box]\nmax_backups = 1\n");
        fs::write(host.src().join("f"), b"data").expect("write");
        let a = host.backup(&[]);
        let out = host
            .cmd(&["backup"])
            .env("TIERKEEP_FAULTS", format!("{point}=error"))
            .output()
            .expect("run");
        // The move fails, so the black box is under pressure: the new backup is taken
        // beyond capacity (never in place of `a`), loudly.
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{point}: {err}");
        assert!(err.contains("injected fault"), "{err}");
        assert!(err.contains("black-box pressure"), "{err}");
        let a_id = a["id"].as_str().expect("id").to_owned();
        let bb = committed(&host, "black-box");
        assert_eq!(bb.len(), 2, "{point}");
        assert!(bb.contains(&a_id), "{point}");
        assert!(committed(&host, "deletion").is_empty(), "{point}");
        assert_consistent(&host);
        // Once the move works, aging brings the black box back within capacity.
        host.backup(&[]);
        assert_eq!(committed(&host, "black-box").len(), 1, "{point}");
        assert_eq!(committed(&host, "deletion").len(), 2, "{point}");
        assert_consistent(&host);
    }
}

#[test]
fn a_kill_during_an_eviction_is_finished_as_an_eviction() {
    for point in tierkeep::faults::EVICT_POINTS {
        let host =
            Host::new("[zones.black_box]\nmax_backups = 1\n[zones.deletion]\nmax_backups = 1\n");
        fs::write(host.src().join("f"), b"data").expect("write");
        let a = host.backup(&[]);
        host.backup(&[]); // a ages into the deletion zone, which is now full
        let out = host
            .cmd(&["backup"])
            .env("TIERKEEP_FAULTS", format!("{point}=kill"))
            .output()
            .expect("run");
        assert_eq!(out.status.signal(), Some(6), "{point}");
        host.ok(&["tick"]);
        assert_consistent(&host);
        let a_id = a["id"].as_str().expect("id");
        let trail = host.ok(&["catalog", "history", a_id]);
        let still_there = committed(&host, "deletion").contains(&a_id.to_owned());
        assert!(
            still_there || trail.contains("evicted"),
            "{point}: {a_id} is neither in the deletion zone nor recorded as evicted:\n{trail}"
        );
        host.backup(&[]);
        assert_consistent(&host);
        assert!(host.ok(&["catalog", "history", a_id]).contains("evicted"));
    }
}

/// A black box of at most 150 KiB (and 5 backups) over a source of 64 KiB of random
/// data, so that each archive is about 64 KiB and the byte limit holds two.
fn byte_limited_host() -> Host {
    let host = Host::new(
        "[zones.black_box]\nmax_backups = 5\nmax_bytes = \"150KiB\"\n[zones.deletion]\nmax_backups = 10\n",
    );
    let mut data = vec![0u8; 64 << 10];
    getrandom::fill(&mut data).expect("random");
    fs::write(host.src().join("f"), &data).expect("write");
    host
}

/// Archive bytes in the black box, as `list` says.
fn black_box_bytes(host: &Host) -> u64 {
    host.list(Some("black-box"))
        .iter()
        .map(|b| b["size_bytes"].as_u64().expect("size"))
        .sum()
}

#[test]
fn a_black_box_byte_limit_ages_the_oldest_to_make_room() {
    let host = byte_limited_host();
    let made: Vec<String> = (0..4)
        .map(|_| host.backup(&[])["id"].as_str().expect("id").to_owned())
        .collect();
    let bb = committed(&host, "black-box");
    assert_eq!(
        bb,
        made[2..].to_vec(),
        "the newest two stay in the black box"
    );
    assert_eq!(committed(&host, "deletion"), made[..2].to_vec());
    let bytes = black_box_bytes(&host);
    assert!(bytes <= 150 << 10, "{bytes} bytes in the black box");
    assert_consistent(&host);
}

#[test]
fn a_black_box_over_its_byte_limit_keeps_the_newest_when_aging_fails() {
    let host = byte_limited_host();
    host.backup(&[]);
    host.backup(&[]);
    // Aging fails: the third backup is kept beyond the byte limit, loudly.
    let out = host
        .cmd(&["backup", "--json"])
        .env("TIERKEEP_FAULTS", "move.before_upload=error")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("black-box pressure") && err.contains("max_bytes"),
        "{err}"
    );
    assert_eq!(committed(&host, "black-box").len(), 3);
    assert!(committed(&host, "deletion").is_empty());
    assert_consistent(&host);
    // Aging works again: the next pass brings the black box back within its bytes.
    host.ok(&["tick"]);
    let bytes = black_box_bytes(&host);
    assert!(bytes <= 150 << 10, "{bytes} bytes in the black box");
    assert_eq!(committed(&host, "deletion").len(), 1);
    assert_consistent(&host);
}

/// Flips one byte in the middle of a file.
fn flip_byte(path: &std::path::Path) {
    let mut bytes = fs::read(path).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    fs::write(path, bytes).expect("write");
}

#[test]
fn one_damaged_backup_never_blocks_aging_of_the_rest() {
    let host = Host::new(
        "[schedule]\ninterval = \"1s\"\naging = \"2s\"\n[zones.black_box]\nmax_backups = 3\n",
    );
    make_tree(&host.src());
    let id = |v: &serde_json::Value| v["id"].as_str().expect("id").to_owned();
    let a = id(&host.backup(&[]));
    let b = id(&host.backup(&[]));
    let c = id(&host.backup(&[]));
    flip_byte(&host.zone_dir("black-box", &a).join("archive.tar.zst"));
    std::thread::sleep(std::time::Duration::from_millis(2100));

    // The oldest is damaged: the pass says so (exit 1) and the healthy ones still move.
    let out = host.cmd(&["tick", "--json"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["damaged"], serde_json::json!([a]), "{report}");
    assert_eq!(report["aged"], serde_json::json!([b, c]), "{report}");
    assert_eq!(committed(&host, "black-box"), vec![a.clone()]);
    assert_eq!(committed(&host, "deletion"), vec![b.clone(), c.clone()]);
    assert_consistent(&host);
    // Nothing of the damaged copy was committed in the deletion zone.
    assert!(!host.zone_dir("deletion", &a).exists());

    // The audit trail has the failed move with its reason, and the damage.
    let trail = host.ok(&["catalog", "history", &a]);
    assert!(
        trail.contains("failed") && trail.contains("move to the deletion zone failed"),
        "{trail}"
    );
    assert!(trail.contains("damaged"), "{trail}");
    // `list`, `list --json` and `status` mark it.
    let listed = host.list(Some("black-box"));
    assert!(listed[0]["damaged"].is_string(), "{listed:?}");
    assert!(host.ok(&["list"]).contains("DAMAGED"));
    let status: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", "--json"])).expect("status");
    assert_eq!(status["damaged"][0]["id"], serde_json::json!(a), "{status}");
    assert_eq!(status["damaged"][0]["zone"], "black-box", "{status}");
    assert!(host.ok(&["status"]).contains("DAMAGED"));

    // Later passes skip it without trying again, and succeed.
    let out = host.ok(&["tick", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["damaged"], serde_json::json!([]), "{report}");
    let failures = |trail: &str| trail.matches("move to the deletion zone failed").count();
    assert_eq!(failures(&host.ok(&["catalog", "history", &a])), 1);

    // A full black box whose oldest is damaged ages the next oldest instead, and a black
    // box holding only damaged backups names that cause, not the deletion zone.
    let d = id(&host.backup(&[]));
    let e = id(&host.backup(&[]));
    let f = id(&host.backup(&[])); // full: a (damaged), d, e; d ages early
    assert_eq!(committed(&host, "black-box"), vec![a.clone(), e, f]);
    assert!(committed(&host, "deletion").contains(&d));
    let status = host.ok(&["status"]);
    assert!(!status.contains("BLACK-BOX PRESSURE"), "{status}");

    // `verify` finds it damaged too; the deletion copies verify.
    let out = host.cmd(&["verify", "--all"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&a), "{text}");
}

#[test]
fn pressure_from_a_damaged_backup_names_the_damage() {
    let host = Host::new("[zones.black_box]\nmax_backups = 1\n");
    make_tree(&host.src());
    let a = host.backup(&[]);
    let a = a["id"].as_str().expect("id").to_owned();
    flip_byte(&host.zone_dir("black-box", &a).join("archive.tar.zst"));
    // The full black box's only backup cannot age: the new one is still taken (no
    // unmoved backup is deleted), and the message names the damage as the cause.
    let out = host.cmd(&["backup"]).output().expect("run");
    assert!(out.status.success(), "{out:?}");
    let history = host.ok(&["catalog", "history"]);
    let pressure = history
        .lines()
        .find(|l| l.contains("pressure"))
        .unwrap_or_else(|| panic!("no pressure event:\n{history}"));
    assert!(
        pressure.contains("damaged") && !pressure.contains("answers"),
        "{pressure}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", "--json"])).expect("status");
    let p = status["black_box_pressure"].as_str().expect("pressure");
    assert!(p.contains("damaged") && p.contains(&a), "{p}");
    assert_eq!(status["zones"][1]["reachable"], true, "{status}");
}
