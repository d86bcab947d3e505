//! One conformance test that every store must pass, run against [`LocalStore`] and
//! [`MemoryStore`], and tests of the memory store's injected failures.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

use super::*;
use crate::archive::Manifest;
use crate::domain::{BackupId, BackupKind};

fn key(host: &str, minute: i64) -> BackupKey {
    let at = OffsetDateTime::from_unix_timestamp(1_750_000_000 + minute * 60).unwrap();
    BackupKey {
        host: host.to_owned(),
        id: BackupId::new(at, 0xabc),
    }
}

fn manifest(key: &BackupKey, archive: &[u8]) -> Manifest {
    Manifest {
        // A plain archive of arbitrary bytes: format 1 (format 2 names an index).
        format: 1,
        id: key.id.clone(),
        host_id: key.host.clone(),
        kind: BackupKind::Scheduled,
        label: None,
        created_at: OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
        source: vec!["/srv".into()],
        entries: 1,
        logical_bytes: archive.len() as u64,
        archive_bytes: archive.len() as u64,
        archive_sha256: "00".repeat(32),
        compression: "zstd".into(),
        tool_version: "test".into(),
        policy: "default".into(),
        warnings: Vec::new(),
        index: None,
        reused_bytes: 0,
        reused_from: None,
        full_read_at: None,
        encryption: None,
    }
}

/// A progress callback and the total it has been called with.
fn counter() -> (ProgressFn, Arc<AtomicU64>) {
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    (
        Arc::new(move |n| {
            t.fetch_add(n, Ordering::Relaxed);
        }),
        total,
    )
}

fn states(listed: &[Listed]) -> Vec<(BackupKey, &'static str)> {
    listed
        .iter()
        .map(|l| {
            let s = match &l.state {
                ListedState::Committed(_) => "committed",
                ListedState::Incomplete => "incomplete",
                ListedState::Unreadable(_) => "unreadable",
            };
            (l.key.clone(), s)
        })
        .collect()
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

/// What every store must do. `plant_manifest` writes raw bytes as a backup folder's
/// manifest behind the store's back (as a damaged or foreign zone would hold them);
/// `scratch` is an empty local directory for source and fetched files.
async fn conformance(
    store: &dyn ZoneStore,
    plant_manifest: impl Fn(&BackupKey, &[u8]),
    scratch: &Path,
) {
    store.check().await.unwrap();
    assert!(
        store.list().await.unwrap().is_empty(),
        "a new zone is empty"
    );

    let a = key("host-a", 1);
    let b = key("host-a", 2);
    let c = key("host-b", 3);
    let bytes_a = b"archive of a".repeat(1000);
    let src = scratch.join("a.tar.zst");
    fs::write(&src, &bytes_a).unwrap();
    let m = manifest(&a, &bytes_a);

    // Nothing is there yet.
    assert_not_found(store.read_manifest(&a).await, "read_manifest of nothing");
    assert_not_found(store.delete(&a).await, "delete of nothing");
    assert_not_found(
        store.remove_incomplete(&a).await,
        "remove_incomplete of nothing",
    );
    let (p, _) = counter();
    assert_not_found(
        store
            .fetch_archive(&a, ARCHIVE_NAME, &scratch.join("nothing"), p.clone())
            .await,
        "fetch_archive of nothing",
    );
    assert_not_found(
        readable_copy(store, &a, ARCHIVE_NAME, &scratch.join("nothing"), p).await,
        "readable_copy of nothing",
    );
    assert!(
        !scratch.join("nothing").exists(),
        "a failed fetch leaves nothing"
    );

    // The manifest is the commit marker: no commit without an archive.
    assert!(store.put_manifest(&m).await.is_err());
    assert!(store.list().await.unwrap().is_empty());

    // An archive alone is an incomplete upload, not a backup.
    let (p, moved) = counter();
    store.put_archive(&a, ARCHIVE_NAME, &src, p).await.unwrap();
    assert_eq!(moved.load(Ordering::Relaxed), bytes_a.len() as u64);
    assert_eq!(
        states(&store.list().await.unwrap()),
        [(a.clone(), "incomplete")]
    );
    assert_not_found(store.read_manifest(&a).await, "read_manifest of incomplete");
    assert_not_found(store.delete(&a).await, "delete of incomplete");
    assert_eq!(store.list().await.unwrap().len(), 1, "delete left it alone");

    // Committed.
    store.put_manifest(&m).await.unwrap();
    let listed = store.list().await.unwrap();
    assert_eq!(states(&listed), [(a.clone(), "committed")]);
    match &listed[0].state {
        ListedState::Committed(got) => assert_eq!(**got, m),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.read_manifest(&a).await.unwrap(), m);

    // The digest of what is stored, with progress; none of a missing backup.
    let (p, hashed) = counter();
    assert_eq!(
        store.digest_archive(&a, ARCHIVE_NAME, p).await.unwrap(),
        (
            bytes_a.len() as u64,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes_a))
        )
    );
    assert_eq!(hashed.load(Ordering::Relaxed), bytes_a.len() as u64);
    let (p, _) = counter();
    assert_not_found(
        store.digest_archive(&c, ARCHIVE_NAME, p).await,
        "digest_archive of nothing",
    );

    let dest = scratch.join("fetched");
    let (p, moved) = counter();
    store
        .fetch_archive(&a, ARCHIVE_NAME, &dest, p)
        .await
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), bytes_a);
    assert_eq!(moved.load(Ordering::Relaxed), bytes_a.len() as u64);

    let fetch_to = scratch.join("readable");
    let (p, _) = counter();
    let copy = readable_copy(store, &a, ARCHIVE_NAME, &fetch_to, p)
        .await
        .unwrap();
    assert_eq!(fs::read(copy.path()).unwrap(), bytes_a);
    assert_eq!(
        copy.is_fetched(),
        store.local_archive(&a, ARCHIVE_NAME).is_none()
    );
    let (path, fetched) = (copy.path().to_path_buf(), copy.is_fetched());
    drop(copy);
    assert_eq!(path.exists(), !fetched, "only a fetched copy is removed");

    // A committed backup is not an incomplete upload.
    let refused = store.remove_incomplete(&a).await;
    assert!(
        refused.is_err() && !matches!(refused, Err(StoreError::NotFound { .. })),
        "{refused:?}"
    );
    assert_eq!(store.read_manifest(&a).await.unwrap(), m);

    // An incomplete upload and an unreadable manifest, listed in id order.
    let (p, _) = counter();
    store
        .put_archive(&b, ARCHIVE_NAME, &src, p.clone())
        .await
        .unwrap();
    store.put_archive(&c, ARCHIVE_NAME, &src, p).await.unwrap();
    plant_manifest(&c, &manifest(&b, &bytes_a).to_json());
    let listed = store.list().await.unwrap();
    assert_eq!(
        states(&listed),
        [
            (a.clone(), "committed"),
            (b.clone(), "incomplete"),
            (c.clone(), "unreadable")
        ]
    );
    match &listed[2].state {
        ListedState::Unreadable(why) => assert!(why.contains("it describes"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.read_manifest(&c).await,
        Err(StoreError::BadManifest { .. })
    ));
    plant_manifest(&c, b"{ not json");
    assert_eq!(
        states(&store.list().await.unwrap())[2],
        (c.clone(), "unreadable")
    );

    // Delete: the backup is gone, the others stay.
    store.delete(&a).await.unwrap();
    assert_not_found(store.read_manifest(&a).await, "read_manifest of deleted");
    assert_not_found(store.delete(&a).await, "delete of deleted");
    let (p, _) = counter();
    assert_not_found(
        store
            .fetch_archive(&a, ARCHIVE_NAME, &scratch.join("deleted"), p)
            .await,
        "fetch_archive of deleted",
    );
    store.remove_incomplete(&b).await.unwrap();
    assert_not_found(store.remove_incomplete(&b).await, "remove_incomplete twice");
    assert_eq!(
        states(&store.list().await.unwrap()),
        [(c.clone(), "unreadable")]
    );
    store.check_lock().await.unwrap();
    assert!(
        store
            .abort_stale_uploads("host-a")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("zone");
    let scratch = dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let url = ZoneUrl::Local(root.clone());
    let store = open(&url, &S3Settings::default()).unwrap();
    assert_eq!(store.url(), url.to_string());
    let plant = |key: &BackupKey, bytes: &[u8]| {
        let dir = root.join(&key.host).join(key.id.as_str());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(MANIFEST_NAME), bytes).unwrap();
    };
    conformance(store.as_ref(), plant, &scratch).await;
}

#[tokio::test]
async fn memory_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new("mem://zone");
    let handle = store.clone();
    let plant = |key: &BackupKey, bytes: &[u8]| handle.put_raw_manifest(key, bytes.to_vec());
    conformance(&store, plant, dir.path()).await;
}

#[tokio::test]
async fn readable_copy_of_a_missing_local_archive_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new("file:///zone".into(), dir.path().to_path_buf());
    let (p, _) = counter();
    assert_not_found(
        readable_copy(&store, &key("h", 1), ARCHIVE_NAME, &dir.path().join("x"), p).await,
        "readable_copy",
    );
}

#[tokio::test]
async fn injected_failures_fail_once_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::write(&src, b"bytes").unwrap();
    let store = MemoryStore::new("mem://zone");
    let k = key("h", 1);
    let (p, moved) = counter();

    store.fail_next(Op::PutArchive);
    store.fail_next(Op::PutArchive);
    for _ in 0..2 {
        let err = store
            .put_archive(&k, ARCHIVE_NAME, &src, p.clone())
            .await
            .unwrap_err();
        assert_eq!(err.retry(), Retry::Temporary, "{err}");
        assert!(err.to_string().contains("injected failure"), "{err}");
    }
    assert!(store.keys().is_empty(), "a failed put stores nothing");
    assert_eq!(moved.load(Ordering::Relaxed), 0);
    store
        .put_archive(&k, ARCHIVE_NAME, &src, p.clone())
        .await
        .unwrap();
    assert_eq!(store.archive(&k).as_deref(), Some(&b"bytes"[..]));
    assert_eq!(store.calls(Op::PutArchive), 3);

    store.fail_next_with(
        Op::PutManifest,
        StoreError::Unsupported("refused by the test".into()),
    );
    let err = store
        .put_manifest(&manifest(&k, b"bytes"))
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Unsupported(m) if m == "refused by the test"));
    assert_eq!(
        states(&store.list().await.unwrap()),
        [(k.clone(), "incomplete")]
    );
    // Other operations were not affected.
    assert_eq!(store.calls(Op::List), 1);
}

#[tokio::test]
async fn an_unreachable_memory_zone_fails_everything_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::write(&src, b"bytes").unwrap();
    let store = MemoryStore::new("mem://zone");
    let k = key("h", 1);
    let (p, _) = counter();
    store
        .put_archive(&k, ARCHIVE_NAME, &src, p.clone())
        .await
        .unwrap();
    store.put_manifest(&manifest(&k, b"bytes")).await.unwrap();

    store.set_unreachable(Some("connection refused"));
    let errs: Vec<StoreError> = vec![
        store.check().await.unwrap_err(),
        store.list().await.unwrap_err(),
        store.read_manifest(&k).await.unwrap_err(),
        store
            .fetch_archive(&k, ARCHIVE_NAME, &dir.path().join("f"), p.clone())
            .await
            .unwrap_err(),
        store.delete(&k).await.unwrap_err(),
        store.remove_incomplete(&k).await.unwrap_err(),
        store.check_lock().await.unwrap_err(),
        store.abort_stale_uploads("h").await.unwrap_err(),
    ];
    for e in &errs {
        assert_eq!(e.retry(), Retry::Temporary, "{e}");
        assert!(e.to_string().contains("mem://zone"), "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
    assert!(!dir.path().join("f").exists());

    store.set_unreachable(None);
    assert_eq!(
        states(&store.list().await.unwrap()),
        [(k.clone(), "committed")],
        "nothing changed while unreachable"
    );
}

/// `open` takes the parsed URL: a local zone is named by its normalized URL.
#[test]
fn open_uses_the_parsed_url() {
    let url: ZoneUrl = "file:///var/lib/tierkeep/./zone/".parse().unwrap();
    let store = open(&url, &S3Settings::default()).unwrap();
    assert_eq!(store.url(), "file:///var/lib/tierkeep/zone");
    assert_eq!(
        store.staging_dir(),
        Some(PathBuf::from("/var/lib/tierkeep/zone/.staging"))
    );
}
