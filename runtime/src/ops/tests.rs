//! The engine on an in-memory deletion zone: aging and eviction carried out from the
//! planner's plans, and what a failing zone or a damaged copy leaves behind.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;

use super::Tierkeep;
use crate::catalog::State;
use crate::config::{Sources, load};
use crate::domain::{BackupKind, Zone};
use crate::progress::Progress;
use crate::store::{BackupKey, LocalStore, MemoryStore, Op, ZoneStore, ZoneUrl};

const T0: OffsetDateTime = datetime!(2026-11-25 00:00 UTC);
const H: Duration = Duration::from_secs(3600);

struct Fixture {
    _dir: tempfile::TempDir,
    tk: Tierkeep,
    deletion: MemoryStore,
}

/// A host with T1 = 1 h, T2 = 2 h, a black box of `bb` backups (a local directory) and a
/// deletion zone of `del` backups (in memory).
fn fixture(bb: u64, del: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub")).expect("sources");
    std::fs::write(src.join("a.txt"), "alpha\n".repeat(100)).expect("a");
    std::fs::write(src.join("sub/b.bin"), [7u8; 4096]).expect("b");
    let config = root.join("tierkeep.toml");
    std::fs::write(
        &config,
        format!(
            r#"
host_id = "unit"
data_dir = "{data}"
[source]
paths = ["{src}"]
[schedule]
interval = "1h"
aging = "2h"
[zones.black_box]
url = "file://{data}/bb"
max_backups = {bb}
[zones.deletion]
url = "file://{data}/deletion"
max_backups = {del}
[zones.reserved]
url = "file://{data}/reserved"
max_backups = 5
"#,
            data = root.join("data").display(),
            src = src.display(),
        ),
    )
    .expect("config");
    let settings = load(
        &Sources {
            file: Some(config),
            flags: vec![],
            env: false,
        },
        false,
    )
    .expect("config loads")
    .settings;
    let local = |zone: Zone| -> Arc<dyn ZoneStore> {
        let ZoneUrl::Local(path) = &settings.zone(zone).url else {
            panic!("a local zone");
        };
        Arc::new(LocalStore::new(
            settings.zone(zone).url.to_string(),
            path.clone(),
        ))
    };
    let deletion = MemoryStore::new("memory://deletion");
    let stores = [
        local(Zone::BlackBox),
        Arc::new(deletion.clone()) as Arc<dyn ZoneStore>,
        local(Zone::Reserved),
    ];
    let tk = Tierkeep::with_stores(settings, stores);
    Fixture {
        _dir: dir,
        tk,
        deletion,
    }
}

impl Fixture {
    async fn backup_at(&self, at: OffsetDateTime) -> String {
        let clock = move || at;
        self.tk
            .backup(
                BackupKind::Scheduled,
                None,
                false,
                &clock,
                &Progress::hidden(),
            )
            .await
            .expect("backup")
            .manifest
            .id
            .to_string()
    }

    fn ids_in(&self, zone: Zone) -> Vec<String> {
        let mut ids: Vec<String> = self
            .tk
            .catalog()
            .expect("catalog")
            .list(Some(zone))
            .expect("list")
            .into_iter()
            .map(|r| r.id.to_string())
            .collect();
        ids.sort();
        ids
    }

    fn in_memory(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .deletion
            .keys()
            .into_iter()
            .map(|k| k.id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[tokio::test]
async fn a_tick_ages_what_is_due_and_evicts_the_earliest_to_make_room() {
    let f = fixture(5, 2);
    let mut ids = Vec::new();
    for h in 0..3 {
        ids.push(f.backup_at(T0 + H * h).await);
    }
    // At 03:00 with T2 = 2 h, the backups of 00:00 and 01:00 are due.
    let report =
        f.tk.tick(T0 + 3 * H, &Progress::hidden())
            .await
            .expect("tick");
    assert_eq!(report.aged, ids[..2].to_vec());
    assert!(report.evicted.is_empty());
    assert_eq!(f.ids_in(Zone::Deletion), ids[..2].to_vec());
    assert_eq!(f.in_memory(), ids[..2].to_vec(), "committed in the store");
    assert_eq!(f.ids_in(Zone::BlackBox), ids[2..].to_vec());
    // Two more due into a full deletion zone: the earliest go first, one per move.
    ids.push(f.backup_at(T0 + 3 * H).await);
    let report =
        f.tk.tick(T0 + 5 * H, &Progress::hidden())
            .await
            .expect("tick");
    assert_eq!(report.aged, ids[2..4].to_vec());
    assert_eq!(report.evicted, ids[..2].to_vec());
    assert_eq!(f.in_memory(), ids[2..4].to_vec());
    let catalog = f.tk.catalog().expect("catalog");
    let gone = catalog
        .get(&ids[0].parse().expect("id"))
        .expect("get")
        .expect("kept as history");
    assert_eq!(gone.state, State::Evicted);
}

#[tokio::test]
async fn a_deletion_zone_that_does_not_answer_loses_nothing() {
    let f = fixture(5, 5);
    let mut ids = Vec::new();
    for h in 0..2 {
        ids.push(f.backup_at(T0 + H * h).await);
    }
    f.deletion.set_unreachable(Some("connection refused"));
    let now = T0 + 4 * H;
    let err =
        f.tk.tick(now, &Progress::hidden())
            .await
            .expect_err("zone down");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(
        f.ids_in(Zone::BlackBox),
        ids,
        "every backup stays in the black box"
    );
    assert!(f.in_memory().is_empty(), "nothing half-written remains");
    // Back: the next pass, once a probe is due, moves both.
    f.deletion.set_unreachable(None);
    let report =
        f.tk.tick(now + Duration::from_secs(60), &Progress::hidden())
            .await
            .expect("tick after the outage");
    assert_eq!(report.aged, ids);
    assert_eq!(f.in_memory(), ids);
}

#[tokio::test]
async fn a_failed_verify_or_commit_keeps_the_black_box_copy_and_is_retried() {
    // The read-back of the uploaded copy, then the manifest that commits it.
    for op in [Op::DigestArchive, Op::PutManifest] {
        let f = fixture(5, 5);
        let id = f.backup_at(T0).await;
        f.deletion.fail_next(op);
        let now = T0 + 3 * H;
        f.tk.tick(now, &Progress::hidden())
            .await
            .expect_err("the move fails");
        assert_eq!(f.ids_in(Zone::BlackBox), vec![id.clone()], "{op:?}");
        assert!(
            f.in_memory().is_empty(),
            "{op:?}: the uncommitted upload is removed"
        );
        let catalog = f.tk.catalog().expect("catalog");
        let events = catalog.events(Some(&id), 10).expect("events");
        assert!(
            events.iter().any(
                |e| e.kind == "failed" && e.reason.contains("move to the deletion zone failed")
            ),
            "{op:?}: the failed move is in the audit trail: {events:?}"
        );
        let report =
            f.tk.tick(now + Duration::from_secs(60), &Progress::hidden())
                .await
                .expect("retried");
        assert_eq!(report.aged, vec![id.clone()], "{op:?}");
        assert_eq!(f.in_memory(), vec![id], "{op:?}");
    }
}

#[tokio::test]
async fn a_damaged_copy_stays_and_the_next_backup_moves() {
    let f = fixture(5, 5);
    let first = f.backup_at(T0).await;
    let second = f.backup_at(T0 + H).await;
    let key = BackupKey {
        host: "unit".into(),
        id: first.parse().expect("id"),
    };
    let path =
        f.tk.store(Zone::BlackBox)
            .local_archive(&key, crate::store::ARCHIVE_NAME)
            .expect("a local archive");
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).expect("damage");
    let report =
        f.tk.tick(T0 + 4 * H, &Progress::hidden())
            .await
            .expect("tick");
    assert_eq!(report.damaged, vec![first.clone()]);
    assert_eq!(report.aged, vec![second.clone()]);
    assert_eq!(f.ids_in(Zone::BlackBox), vec![first.clone()]);
    assert_eq!(f.in_memory(), vec![second]);
    let catalog = f.tk.catalog().expect("catalog");
    assert!(
        catalog
            .is_damaged(&first.parse().expect("id"))
            .expect("damaged")
    );
}

#[tokio::test]
async fn a_full_black_box_ages_its_oldest_early_for_a_new_backup() {
    let f = fixture(2, 5);
    let a = f.backup_at(T0).await;
    let b = f.backup_at(T0 + H / 2).await;
    // Nothing is due (T2 = 2 h), but the black box holds 2 of 2.
    let c = f.backup_at(T0 + H).await;
    assert_eq!(f.ids_in(Zone::Deletion), vec![a.clone()]);
    assert_eq!(f.in_memory(), vec![a.clone()]);
    assert_eq!(f.ids_in(Zone::BlackBox), vec![b, c]);
    let catalog = f.tk.catalog().expect("catalog");
    let events = catalog.events(Some(&a), 10).expect("events");
    assert!(
        events.iter().any(|e| e.kind == "aged"
            && e.reason
                .contains("black box full (2 of 2 backups): aged early")),
        "{events:?}"
    );
}
