//! The operations the CLI and the daemon run: backup, restore, export, verify,
//! delete, status and catalog rebuild. Each takes `now` from its caller; the decisions
//! come from [`crate::domain`], the I/O from the archive, store and catalog modules.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;

use crate::archive::read::{
    ExtractOptions, ExtractSummary, check_archive, extract, running_as_root,
};
use crate::archive::write::{WriteOptions, estimate, write_archive};
use crate::archive::{ArchiveError, MANIFEST_FORMAT, Manifest, verify_file};
use crate::catalog::{Catalog, CatalogError, Record, State};
use crate::config::Settings;
use crate::domain::{
    Admission, BackupId, BackupKind, BlackBoxAdmission, Capacity, Usage, Zone, admit_new_backup,
    admit_scheduled, format_size,
};
use crate::progress::Progress;
use crate::store::{self, BackupKey, StoreError, ZoneStore};

/// Errors of operations, each mapped to an exit status.
///
/// As in [`ArchiveError`], a message includes its cause and no variant returns it from
/// `source()` (the transparent ones forward their inner error, which follows the same
/// rule), so `{:#}` prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Catalog trouble.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Zone store trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Archive trouble.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A zone is full; nothing was written.
    #[error("refused: the {zone} zone is full ({fullness}); nothing was written. {advice}")]
    ZoneFull {
        /// The zone.
        zone: Zone,
        /// How full, in words.
        fullness: String,
        /// What to do.
        advice: String,
    },
    /// No backup has that id.
    #[error(
        "no backup {0} in the catalog; see `tierkeep list` (or `tierkeep catalog rebuild` after restoring a host)"
    )]
    NotFound(String),
    /// A prefix matched several backups.
    #[error("`{0}` matches several backups: {1}; give more of the id")]
    Ambiguous(String, String),
    /// Bad request (relative --path, existing export file).
    #[error("{0}")]
    Usage(String),
    /// Something in the local filesystem failed.
    #[error("{what} {path}: {cause}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// A background task died, or an internal rule was about to be broken.
    #[error("internal error: {0}")]
    Internal(String),
    /// A fault injected by a test (`TIERKEEP_FAULTS`).
    #[error(transparent)]
    Fault(#[from] crate::faults::InjectedFault),
    /// A source consistency hook failed; the backup was not taken.
    #[error("backup aborted, nothing was written: {0}")]
    Hook(crate::hooks::HookError),
    /// A zone does not answer: work that needs it is skipped until a cheap probe finds
    /// it answering again (see [`crate::health`]).
    #[error(
        "the {zone} zone ({url}) is unreachable since {since}: {error}; work that needs it \
         is skipped until a probe finds it answering again"
    )]
    ZoneUnreachable {
        /// The zone.
        zone: Zone,
        /// Its URL.
        url: String,
        /// When it stopped answering (RFC 3339).
        since: String,
        /// The last error it gave.
        error: String,
    },
    /// A backup's copy does not match its manifest: it is left where it is.
    #[error(
        "backup {id}: its {zone} copy is damaged ({reason}); it stays where it is and is not \
         moved: check it with `tierkeep verify {id}`, and delete it with `tierkeep delete {id} \
         --yes` once another good backup exists"
    )]
    Damaged {
        /// The backup.
        id: String,
        /// The zone of the damaged copy.
        zone: Zone,
        /// What the check found.
        reason: String,
    },
    /// Writing the backup could fill the black box's disk; nothing was written.
    #[error("refused: {reason}; nothing was written. {advice}")]
    NoRoom {
        /// Why.
        reason: String,
        /// What to do.
        advice: String,
    },
}

impl OpsError {
    /// The process exit status for this error (1 failure, 2 usage, 3 refused; see the
    /// README's command-line section).
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::ZoneFull { .. } | OpsError::NotFound(_) | OpsError::NoRoom { .. } => 3,
            OpsError::Store(StoreError::NotFound { .. } | StoreError::Locked { .. }) => 3,
            OpsError::Store(StoreError::NoObjectLock { .. }) => 2,
            OpsError::Archive(ArchiveError::TargetNotEmpty(_)) => 3,
            OpsError::Archive(ArchiveError::PathNotInBackup(_)) => 3,
            OpsError::Ambiguous(..) | OpsError::Usage(_) => 2,
            OpsError::Store(StoreError::Unsupported(_)) => 2,
            _ => 1,
        }
    }
}

impl From<crate::hooks::HookError> for OpsError {
    fn from(e: crate::hooks::HookError) -> Self {
        OpsError::Hook(e)
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OpsError + 'a {
    move |cause| OpsError::Io {
        what,
        path: path.to_path_buf(),
        cause,
    }
}

/// How the black box gets back within capacity after aging failed with `e`: the words
/// of a pressure message, naming the real cause.
fn catch_up(e: &OpsError) -> String {
    match e {
        OpsError::ZoneUnreachable { zone, .. } => {
            format!("aging catches up once the {zone} zone answers")
        }
        OpsError::Damaged { id, .. } => format!(
            "damaged backups never move: check them and remove them with `tierkeep delete ID \
             --yes` ({id})"
        ),
        _ => "aging is tried again by every pass (`tierkeep tick`, or the daemon)".into(),
    }
}

/// Reports a scheduled backup taken beyond the black box's capacity: an error in the
/// log, the metric, and a `pressure` event in the audit trail.
fn note_pressure(catalog: &mut Catalog, now: OffsetDateTime, why: &str) -> Result<(), OpsError> {
    let text = format!("black-box pressure: {why}");
    tracing::error!("{text}");
    crate::metrics::inc(
        "tierkeep_black_box_pressure_events_total",
        &[("outcome", "over_capacity")],
    );
    catalog.note(now, "pressure", Some(Zone::BlackBox), &text)?;
    Ok(())
}

/// Opens (creating it and its folder) the lock file `path` and locks it, exclusive or
/// shared; when another process holds it, calls `waiting` and waits on a blocking thread.
async fn lock_file(path: &Path, exclusive: bool, waiting: impl FnOnce()) -> Result<File, OpsError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let held = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match held {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            waiting();
            tokio::task::spawn_blocking(move || {
                if exclusive {
                    file.lock()
                } else {
                    file.lock_shared()
                }
                .map(|()| file)
            })
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))?
            .map_err(io_err("lock", path))
        }
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock", path)(e)),
    }
}

/// What a backup produced.
#[derive(Debug, Clone, Serialize)]
pub struct BackupOutcome {
    /// The manifest written.
    pub manifest: Manifest,
    /// Zone it went to.
    pub zone: Zone,
    /// Seconds taken.
    pub seconds: f64,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    /// The backup.
    pub id: String,
    /// The zone it came from.
    pub zone: Zone,
    /// Whether it was exported to staging first.
    pub exported_first: bool,
    /// Entries restored.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Skipped entries, and files whose setuid or setgid bits were dropped.
    pub warnings: Vec<String>,
    /// Target.
    pub target: PathBuf,
}

/// The verification of one backup.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    /// The backup.
    pub id: String,
    /// Its zone.
    pub zone: Zone,
    /// Whether it matches.
    pub ok: bool,
    /// Details when not.
    pub error: Option<String>,
}

/// A zone's state for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneStatus {
    /// Zone.
    pub zone: Zone,
    /// URL.
    pub url: String,
    /// Backups present.
    pub backups: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Capacity in backups.
    pub max_backups: u64,
    /// Capacity in bytes.
    pub max_bytes: Option<u64>,
    /// Newest backup in the zone.
    pub newest: Option<String>,
    /// Whether the zone answered the last work that needed it (false while it is
    /// unreachable: work that needs it is skipped until a probe finds it answering).
    pub reachable: bool,
    /// Since when it has not answered, while it is unreachable.
    #[serde(with = "time::serde::rfc3339::option")]
    pub unreachable_since: Option<OffsetDateTime>,
    /// The error it gave when it stopped answering.
    pub last_error: Option<String>,
}

/// A backup whose copy was found damaged, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedBackup {
    /// The backup.
    pub id: String,
    /// The zone holding the damaged copy.
    pub zone: Zone,
    /// When it was found damaged.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// What the check found.
    pub reason: String,
}

/// The answer of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Host id.
    pub host_id: String,
    /// Zones.
    pub zones: Vec<ZoneStatus>,
    /// When the next scheduled backup is due.
    #[serde(with = "time::serde::rfc3339")]
    pub next_backup: OffsetDateTime,
    /// The last backup attempt's outcome.
    pub last_result: Option<crate::catalog::Event>,
    /// The policy in force, in words: `gfs 0.1.0 (FILE)`, `built-in default rules`,
    /// `built-in default rules, because FILE is broken: ...`.
    pub policy: String,
    /// Why the configured policy file is not running, if it is not.
    pub policy_error: Option<String>,
    /// What decides in the process that answered: `file`, `built-in`,
    /// `built-in-fallback` (the file is missing or broken) or `kept-previous` (a version
    /// loaded before; only a long-running process such as the daemon can keep one).
    pub policy_state: crate::policy::Deciding,
    /// The configured policy file, if the configuration names one.
    pub policy_file: Option<PathBuf>,
    /// The running policy file's version, when a file decides.
    pub policy_version: Option<String>,
    /// Black-box pressure: why the black box is over its capacity or its last scheduled
    /// backup was refused (the deletion zone unreachable, the disk reserve reached).
    pub black_box_pressure: Option<String>,
    /// The pid of the daemon (`tierkeep run`) running for this host, if one is.
    pub daemon_pid: Option<u32>,
    /// Backups whose copy does not match its manifest (never moved; restore another).
    pub damaged: Vec<DamagedBackup>,
    /// The catalog file.
    pub catalog: PathBuf,
}

/// An exclusive lock on a host's backup work, held while it lives.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

/// A hold on one backup's copy in its zone: shared by readers (restore, export, verify)
/// while they read it, exclusive for whoever removes that copy (the end of a move, an
/// eviction, an operator's delete), who therefore waits for the readers to finish. So a
/// restore from the CLI runs safely beside the daemon's aging and eviction.
#[derive(Debug)]
pub struct Pin {
    file: File,
    path: PathBuf,
}

impl Pin {
    /// Releases an exclusive pin after the copy is gone, removing its file.
    fn release_removed(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// The runtime for one host's configuration.
#[derive(Debug)]
pub struct Tierkeep {
    /// Effective settings.
    pub settings: Settings,
    stores: [Arc<dyn ZoneStore>; 3],
    /// The running policy (reloaded when its file changes).
    pub policy: Arc<crate::policy::PolicyHost>,
    /// Whether zones and catalog are known to be consistent, so that work may skip the
    /// recovery pass: false in a new process (every CLI run recovers first), set by a
    /// recovery, cleared by work that failed (the daemon recovers at start, then only
    /// after a failure or once a day).
    recovered: std::sync::atomic::AtomicBool,
    /// The environment of a backup whose pre-hook has run and whose post-hook has not
    /// yet: what [`Tierkeep::release_hooks`] needs if the backup is dropped midway.
    open_hook: std::sync::Mutex<Option<Vec<(&'static str, String)>>>,
    /// Whether each zone answers (the circuit breaker of [`crate::health`]); read from the
    /// audit trail by the first work that needs it.
    pub(crate) health: std::sync::Mutex<Option<[crate::health::ZoneHealth; 3]>>,
}

impl Tierkeep {
    /// Opens the zones of `settings`.
    pub fn new(settings: Settings) -> Result<Self, OpsError> {
        let stores = [
            store::open(
                &settings.zone(Zone::BlackBox).url,
                &settings.s3_settings(Zone::BlackBox),
            )?,
            store::open(
                &settings.zone(Zone::Deletion).url,
                &settings.s3_settings(Zone::Deletion),
            )?,
            store::open(
                &settings.zone(Zone::Reserved).url,
                &settings.s3_settings(Zone::Reserved),
            )?,
        ];
        let policy = Arc::new(crate::policy::PolicyHost::configured(&settings));
        Ok(Tierkeep {
            settings,
            stores,
            policy,
            recovered: std::sync::atomic::AtomicBool::new(false),
            open_hook: std::sync::Mutex::new(None),
            health: std::sync::Mutex::new(None),
        })
    }

    /// The store of a zone.
    pub fn store(&self, zone: Zone) -> &Arc<dyn ZoneStore> {
        &self.stores[zone.index()]
    }

    /// Opens the catalog.
    pub fn catalog(&self) -> Result<Catalog, OpsError> {
        Ok(Catalog::open(&self.settings.catalog_path())?)
    }

    /// Hashes a local copy of `rec`'s archive on a blocking thread and compares it with
    /// the catalog's size and SHA-256.
    pub(crate) async fn verify_copy_of(
        &self,
        rec: &Record,
        path: &Path,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let expected = (rec.size_bytes, rec.sha256.clone());
        let check = path.to_path_buf();
        let bar = progress.clone();
        bar.phase("verify", rec.size_bytes);
        tokio::task::spawn_blocking(move || {
            let mut cb = |n| bar.inc(n);
            verify_file(&check, &expected, &mut cb)
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))??;
        Ok(())
    }

    pub(crate) fn staging(&self) -> Result<PathBuf, OpsError> {
        let dir = self.settings.data_dir.join("staging");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(dir)
    }

    /// Takes the host's work lock, waiting for another backup of this host to finish.
    pub async fn lock(&self) -> Result<HostLock, OpsError> {
        let path = self
            .settings
            .data_dir
            .join("locks")
            .join(format!("{}.lock", self.settings.host_id));
        let file = lock_file(&path, true, || {
            tracing::warn!(lock = %path.display(), "another tierkeep process is working on this host; waiting for it to finish");
        })
        .await?;
        Ok(HostLock { _file: file })
    }

    /// Takes the pin of backup `id` (see [`Pin`]): shared to read it, exclusive to remove
    /// a copy of it (waiting, with a log line, for the readers).
    pub(crate) async fn pin(&self, id: &BackupId, exclusive: bool) -> Result<Pin, OpsError> {
        let path = self
            .settings
            .data_dir
            .join("locks")
            .join("pins")
            .join(format!("{}-{id}.pin", self.settings.host_id));
        let file = lock_file(&path, exclusive, || {
            if exclusive {
                tracing::warn!(%id, "waiting for a restore, export or verify of this backup to finish reading it");
            }
        })
        .await?;
        Ok(Pin { file, path })
    }

    /// Removes the copy of `rec` in `zone` once no reader is reading it.
    pub(crate) async fn remove_copy(&self, rec: &Record, zone: Zone) -> Result<(), OpsError> {
        let pin = self.pin(&rec.id, true).await?;
        let result = self.store(zone).delete(&self.key(rec)).await;
        pin.release_removed();
        match result {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves `text` and pins the backup for reading; the record returned is read
    /// again under the pin, so it names the zone the backup is in now.
    async fn resolve_pinned(&self, text: &str) -> Result<(Record, Pin), OpsError> {
        let rec = {
            let catalog = self.catalog()?;
            self.resolve(&catalog, text)?
        };
        self.repin(rec).await
    }

    async fn repin(&self, rec: Record) -> Result<(Record, Pin), OpsError> {
        let pin = self.pin(&rec.id, false).await?;
        let catalog = self.catalog()?;
        match catalog.get(&rec.id)? {
            Some(r) if r.state == State::Present => Ok((r, pin)),
            _ => Err(OpsError::NotFound(rec.id.to_string())),
        }
    }

    /// Resolves an id or unique prefix to a present backup.
    pub fn resolve(&self, catalog: &Catalog, text: &str) -> Result<Record, OpsError> {
        if let Ok(id) = text.parse::<BackupId>() {
            if let Some(r) = catalog.get(&id)?
                && r.state == State::Present
            {
                return Ok(r);
            }
            return Err(OpsError::NotFound(text.to_owned()));
        }
        if text.len() < 4 {
            return Err(OpsError::NotFound(text.to_owned()));
        }
        let mut found = catalog.find(text)?;
        match found.len() {
            0 => Err(OpsError::NotFound(text.to_owned())),
            1 => Ok(found.remove(0)),
            _ => Err(OpsError::Ambiguous(
                text.to_owned(),
                found
                    .iter()
                    .take(5)
                    .map(|r| r.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    fn key(&self, rec: &Record) -> BackupKey {
        BackupKey {
            host: rec.host_id.clone(),
            id: rec.id.clone(),
        }
    }

    /// Takes a backup now: scheduled into the black box, manual into the reserved zone.
    /// A full zone refuses before any data is written.
    /// `clock` is read once the host lock is held, so the backup's time is the time its
    /// data is read, not the time it started waiting.
    pub async fn backup(
        &self,
        kind: BackupKind,
        label: Option<String>,
        clock: &(dyn Fn() -> OffsetDateTime + Send + Sync),
        progress: &Progress,
    ) -> Result<BackupOutcome, OpsError> {
        let started = std::time::Instant::now();
        let _lock = self.lock().await?;
        let now = clock();
        let mut catalog = self.catalog()?;
        let zone = kind.home_zone();
        let result = self
            .backup_locked(&mut catalog, kind, label, now, progress)
            .await;
        let took = started.elapsed();
        let outcome = match &result {
            Ok(_) => "created",
            Err(OpsError::ZoneFull { .. } | OpsError::NoRoom { .. }) => "refused",
            Err(_) => "failed",
        };
        let labels = [("zone", zone.as_str()), ("outcome", outcome)];
        crate::metrics::inc("tierkeep_backups_total", &labels);
        crate::metrics::observe("tierkeep_backup_duration_seconds", &labels, took);
        if let Ok(m) = &result {
            crate::metrics::add(
                "tierkeep_backup_bytes_total",
                &[("zone", zone.as_str())],
                m.archive_bytes as f64,
            );
        }
        // A refusal wrote nothing and leaves nothing to recover.
        self.end_work(outcome != "failed");
        result.map(|manifest| BackupOutcome {
            manifest,
            zone,
            seconds: took.as_secs_f64(),
        })
    }

    /// Whether the next piece of work must run a recovery pass first.
    pub fn needs_recovery(&self) -> bool {
        !self.recovered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records that zones and catalog are consistent (after a recovery) or may not be
    /// (after failed work).
    pub fn set_recovered(&self, yes: bool) {
        self.recovered
            .store(yes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs a recovery pass if one is needed (see [`Tierkeep::needs_recovery`]).
    pub(crate) async fn recover_if_needed(
        &self,
        catalog: &mut Catalog,
        now: OffsetDateTime,
    ) -> Result<Option<crate::lifecycle::RecoveryReport>, OpsError> {
        // Work by another process (a CLI run) that did not end cleanly left its marker.
        let marker = self.work_marker();
        if marker.exists() {
            self.set_recovered(false);
        }
        let report = if self.needs_recovery() {
            let report = self.recover(catalog, now).await?;
            // A zone that could not be listed is looked at again by the next piece of work.
            self.set_recovered(report.unreachable.is_empty());
            Some(report)
        } else {
            None
        };
        fs::write(&marker, std::process::id().to_string()).map_err(io_err("write", &marker))?;
        Ok(report)
    }

    /// `data_dir/locks/<host>.work`: present while a backup or a lifecycle pass works
    /// under the host lock, removed when it ends cleanly. Whoever finds it left over by a
    /// process that crashed (or was stopped) runs a recovery pass first.
    fn work_marker(&self) -> PathBuf {
        self.settings
            .data_dir
            .join("locks")
            .join(format!("{}.work", self.settings.host_id))
    }

    /// Ends a piece of work begun by [`Tierkeep::recover_if_needed`]: a clean end removes
    /// the marker; a failure leaves it (and the next work recovers first).
    pub(crate) fn end_work(&self, ok: bool) {
        if ok {
            let _ = fs::remove_file(self.work_marker());
        } else {
            self.set_recovered(false);
        }
    }

    /// Free bytes of the black box's filesystem, if it can be asked.
    fn black_box_available(&self) -> Option<u64> {
        let dir = self.store(Zone::BlackBox).staging_dir().or_else(|| {
            self.settings
                .zone(Zone::BlackBox)
                .url
                .local_dir()
                .map(Path::to_path_buf)
        })?;
        let mut probe = dir.as_path();
        // The zone's directory may not exist yet: ask its nearest existing ancestor.
        while !probe.exists() {
            probe = probe.parent()?;
        }
        match rustix::fs::statvfs(probe) {
            Ok(st) => Some(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(e) => {
                tracing::warn!(dir = %probe.display(), "cannot read the free space: {e}");
                None
            }
        }
    }

    /// The generation (or manual) module's work under the host lock: admission, hooks,
    /// archive, commit.
    async fn backup_locked(
        &self,
        catalog: &mut Catalog,
        kind: BackupKind,
        label: Option<String>,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<Manifest, OpsError> {
        let zone = kind.home_zone();
        let zs = self.settings.zone(zone);
        self.recover_if_needed(catalog, now).await?;
        let mut pressure = false;
        if kind == BackupKind::Scheduled {
            let aging_error = self
                .make_room_in_black_box(catalog, 1, 0, now, progress)
                .await
                .err();
            let aging_failed = aging_error.as_ref().map(ToString::to_string);
            let catches_up = aging_error.as_ref().map(catch_up).unwrap_or_default();
            let usage = catalog.usage(zone)?;
            // About as large as the newest backup of this host.
            let estimate = catalog
                .list(None)?
                .iter()
                .find(|r| r.kind == BackupKind::Scheduled)
                .map_or(0, |r| r.size_bytes);
            match admit_scheduled(
                zs.capacity,
                usage,
                aging_failed.as_deref(),
                self.black_box_available(),
                estimate,
                zs.min_free,
            ) {
                BlackBoxAdmission::Admit => {}
                BlackBoxAdmission::OverCapacity { holding } => {
                    pressure = true;
                    let why = aging_failed.unwrap_or_default();
                    let text = format!(
                        "the black box is full ({} of {} backups) and its oldest backups \
                         cannot age out ({why}); no unmoved backup is deleted, so this backup is \
                         taken beyond max_backups ({holding} held); {catches_up}",
                        usage.backups, zs.capacity.max_backups
                    );
                    note_pressure(catalog, now, &text)?;
                }
                BlackBoxAdmission::Refuse { reason } => {
                    let err = OpsError::NoRoom {
                        reason,
                        advice: match &aging_failed {
                            Some(e) => format!(
                                "The oldest backups could not age out ({e}); {catches_up}. Or \
                                 free space on the black box's disk"
                            ),
                            None => "Free space on the black box's disk, or lower \
                                     zones.black_box.min_free"
                                .into(),
                        },
                    };
                    if aging_failed.is_some() {
                        tracing::error!("black-box pressure: {err}");
                        crate::metrics::inc(
                            "tierkeep_black_box_pressure_events_total",
                            &[("outcome", "refused")],
                        );
                    }
                    catalog.note(now, "refused", Some(zone), &err.to_string())?;
                    return Err(err);
                }
            }
        } else if let Admission::Refuse {
            zone,
            fullness,
            advice,
        } = admit_new_backup(kind, zs.capacity, catalog.usage(zone)?)
        {
            let err = OpsError::ZoneFull {
                zone,
                fullness: fullness.to_string(),
                advice: advice.to_owned(),
            };
            catalog.note(now, "refused", Some(zone), &err.to_string())?;
            return Err(err);
        }
        let store = self.store(zone).clone();
        let checked = match self.zone_available(catalog, zone, now).await {
            Ok(()) => store.check().await.map_err(OpsError::from),
            Err(e) => Err(e),
        };
        self.zone_outcome(catalog, zone, now, checked.as_ref().err());
        checked?;
        // A manual backup that the configuration says is locked is not written into a
        // bucket that cannot lock it.
        if kind == BackupKind::Manual
            && let Err(e) = store.check_lock().await
        {
            let err = OpsError::from(e);
            catalog.note(now, "refused", Some(zone), &err.to_string())?;
            return Err(err);
        }

        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| OpsError::Internal(e.to_string()))?;
        let id = BackupId::new(now, u64::from_le_bytes(random));
        let key = BackupKey {
            host: self.settings.host_id.clone(),
            id: id.clone(),
        };
        let staging_dir = match store.staging_dir() {
            Some(d) => {
                fs::create_dir_all(&d).map_err(io_err("create", &d))?;
                d
            }
            None => self.staging()?,
        };
        let staged = staging_dir.join(format!("{}-{id}.tar.zst.partial", self.settings.host_id));
        let result = self
            .write_and_commit(
                catalog,
                kind,
                label,
                now,
                &key,
                &staged,
                store.as_ref(),
                pressure,
                progress,
            )
            .await;
        progress.finish();
        self.zone_outcome(catalog, zone, now, result.as_ref().err());
        match result {
            Ok(manifest) => {
                catalog.insert_created(&manifest, zone, now, &format!("{kind} backup"))?;
                tracing::info!(id = %manifest.id, zone = %zone, bytes = manifest.archive_bytes, "backup created");
                Ok(manifest)
            }
            Err(e) => {
                let _ = fs::remove_file(&staged);
                if let Err(clean) = store.remove_incomplete(&key).await
                    && !matches!(clean, StoreError::NotFound { .. })
                {
                    tracing::warn!("could not remove the incomplete backup {key}: {clean}");
                }
                catalog.note(now, "failed", Some(zone), &e.to_string())?;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_and_commit(
        &self,
        catalog: &mut Catalog,
        kind: BackupKind,
        label: Option<String>,
        now: OffsetDateTime,
        key: &BackupKey,
        staged: &Path,
        store: &dyn ZoneStore,
        pressure: bool,
        progress: &Progress,
    ) -> Result<Manifest, OpsError> {
        let mut skip = vec![self.settings.data_dir.clone()];
        for z in &self.settings.zones {
            if let Some(p) = z.url.local_dir() {
                skip.push(p.to_path_buf());
            }
        }
        let opts = WriteOptions {
            sources: self.settings.sources.clone(),
            exclude: self.settings.exclude.clone(),
            skip_paths: skip,
            level: self.settings.compression_level,
            threads: self.settings.threads,
        };
        let out = staged.to_path_buf();
        let bar = progress.clone();
        let hooks = &self.settings.hooks;
        let hook_env = |result: Option<&str>| {
            let mut env = vec![
                ("TIERKEEP_BACKUP_ID", key.id.to_string()),
                ("TIERKEEP_BACKUP_KIND", kind.to_string()),
                ("TIERKEEP_HOST_ID", key.host.clone()),
            ];
            if let Some(r) = result {
                env.push(("TIERKEEP_BACKUP_RESULT", r.to_owned()));
            }
            env
        };
        if hooks.post_backup.is_some() {
            // From here on the post-hook is owed, even if this backup is dropped.
            *self.open_hook.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(hook_env(Some("aborted")));
        }
        if let Some(cmd) = &hooks.pre_backup
            && let Err(e) =
                crate::hooks::run("pre_backup", cmd, hooks.timeout, &hook_env(None)).await
        {
            crate::metrics::inc("tierkeep_hook_failures_total", &[("hook", "pre_backup")]);
            // The post-hook undoes what a partly run pre-hook may have done (a freeze).
            self.post_hook(hooks, &hook_env(Some("failed"))).await;
            return Err(e.into());
        }

        let summary = tokio::task::spawn_blocking(move || {
            if bar.is_visible() {
                let (bytes, _) = estimate(&opts);
                bar.phase("backup", bytes);
            }
            let mut cb = |n| bar.inc(n);
            write_archive(&opts, &out, &mut cb)
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()));
        // The sources have been read (or reading failed): release them at once, before
        // the archive is stored.
        if hooks.pre_backup.is_some() || hooks.post_backup.is_some() {
            let ok = matches!(summary, Ok(Ok(_)));
            self.post_hook(hooks, &hook_env(Some(if ok { "ok" } else { "failed" })))
                .await;
        }
        let summary = summary??;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: key.id.clone(),
            host_id: key.host.clone(),
            kind,
            label,
            created_at: now,
            source: self
                .settings
                .sources
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            entries: summary.entries,
            logical_bytes: summary.logical_bytes,
            archive_bytes: summary.archive_bytes,
            archive_sha256: summary.archive_sha256,
            compression: "zstd".into(),
            tool_version: format!("tierkeep {}", env!("CARGO_PKG_VERSION")),
            policy: self.policy.status().describe(),
            warnings: summary.warnings,
        };
        // A byte limit can only be checked now that the size is known.
        let zone = kind.home_zone();
        let capacity = self.settings.zone(zone).capacity;
        if capacity.max_bytes.is_some() {
            match kind {
                BackupKind::Manual => {
                    if let Err(fullness) =
                        capacity.admits(catalog.usage(zone)?, manifest.archive_bytes)
                    {
                        return Err(OpsError::ZoneFull {
                            zone,
                            fullness: format!(
                                "{fullness}, and this backup is {}",
                                format_size(manifest.archive_bytes)
                            ),
                            advice: "the archive was discarded; remove a manual backup with \
                                     `tierkeep delete ID --yes` or raise zones.reserved.max_bytes"
                                .into(),
                        });
                    }
                }
                BackupKind::Scheduled if pressure => {}
                BackupKind::Scheduled => {
                    if let Err(e) = self
                        .make_room_in_black_box(catalog, 1, manifest.archive_bytes, now, progress)
                        .await
                    {
                        // The byte limit, with aging impossible: the same pressure rule as
                        // for the count (the disk reserve was checked before writing).
                        let text = format!(
                            "this backup ({}) does not fit zones.black_box.max_bytes and the \
                             oldest backups cannot age out ({e}); no unmoved backup is deleted, \
                             so it is kept beyond the limit; {}",
                            format_size(manifest.archive_bytes),
                            catch_up(&e)
                        );
                        note_pressure(catalog, now, &text)?;
                    }
                }
            }
        }
        progress.phase("store", manifest.archive_bytes);
        store.put_archive(key, staged, progress.callback()).await?;
        store.put_manifest(&manifest).await?;
        Ok(manifest)
    }

    /// Runs the post-backup hook, if any; a failure is logged loudly and counted, but
    /// does not undo a backup that was taken.
    async fn post_hook(&self, hooks: &crate::config::Hooks, env: &[(&str, String)]) {
        if let Some(cmd) = &hooks.post_backup
            && let Err(e) = crate::hooks::run("post_backup", cmd, hooks.timeout, env).await
        {
            crate::metrics::inc("tierkeep_hook_failures_total", &[("hook", "post_backup")]);
            tracing::error!("{e}: the sources may still be in the state the pre-hook left them");
        }
        // Owed no more only once it has run to its end (a run dropped midway is redone by
        // `release_hooks`).
        self.open_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Runs the post-backup hook of a backup that was dropped between its pre-hook and
    /// its post-hook (a daemon stopped at the end of its grace period), with
    /// `TIERKEEP_BACKUP_RESULT=aborted`, so that nothing stays frozen.
    pub async fn release_hooks(&self) {
        let env = self
            .open_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(env) = env {
            tracing::warn!("running hooks.post_backup for the backup that was stopped");
            self.post_hook(&self.settings.hooks, &env).await;
        }
    }

    /// Brings the archive of `rec` to a local file: in place for the black box, else
    /// exported into staging and verified. Returns (path, exported?).
    async fn local_copy(
        &self,
        rec: &Record,
        progress: &Progress,
    ) -> Result<(PathBuf, bool), OpsError> {
        let store = self.store(rec.zone);
        let key = self.key(rec);
        let (path, exported) = if rec.zone.restores_in_place()
            && let Some(p) = store.local_archive(&key)
        {
            if !p.is_file() {
                return Err(OpsError::Store(StoreError::NotFound {
                    zone: store.url().to_owned(),
                    key,
                }));
            }
            (p, false)
        } else {
            let dest =
                self.staging()?
                    .join(format!("{}.export-{}.tar.zst", rec.id, std::process::id()));
            let _ = fs::remove_file(&dest);
            progress.phase("export", rec.size_bytes);
            store
                .fetch_archive(&key, &dest, progress.callback())
                .await?;
            (dest, true)
        };
        // Verify before anything is extracted, so a damaged copy never overwrites data.
        if let Err(e) = self.verify_copy_of(rec, &path, progress).await {
            if exported {
                let _ = fs::remove_file(&path);
            }
            return Err(e);
        }
        Ok((path, exported))
    }

    /// Restores backup `id` into `target` (or only `only`, an original absolute path).
    /// Files keep setuid and setgid bits only when `target` is `/` or with `keep_setuid`.
    pub async fn restore(
        &self,
        id: &str,
        target: &Path,
        force: bool,
        only: Option<&Path>,
        keep_setuid: bool,
        progress: &Progress,
    ) -> Result<RestoreOutcome, OpsError> {
        let (rec, _pin) = self.resolve_pinned(id).await?;
        let only = match only {
            Some(p) if !p.is_absolute() => {
                return Err(OpsError::Usage(format!(
                    "--path {}: give the original absolute path, e.g. /srv/app/config",
                    p.display()
                )));
            }
            Some(p)
                if p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                    || p.to_string_lossy().trim_matches('/').is_empty() =>
            {
                return Err(OpsError::Usage(format!(
                    "--path {}: give the absolute path of a file or directory inside the \
                     backup, without `..` (omit --path to restore everything)",
                    p.display()
                )));
            }
            Some(p) => Some(PathBuf::from(
                p.to_string_lossy().trim_start_matches('/').to_owned(),
            )),
            None => None,
        };
        let (archive, exported) = self.local_copy(&rec, progress).await?;
        let opts = ExtractOptions {
            target: target.to_path_buf(),
            force,
            only: only.clone(),
            expected: Some((rec.size_bytes, rec.sha256.clone())),
            owners: running_as_root(),
            keep_setuid,
        };
        let bar = progress.clone();
        bar.phase("restore", rec.size_bytes);
        let src = archive.clone();
        let result: Result<ExtractSummary, ArchiveError> = tokio::task::spawn_blocking(move || {
            let mut cb = |n| bar.inc(n);
            extract(&src, &opts, &mut cb)
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))?;
        progress.finish();
        if exported {
            let _ = fs::remove_file(&archive);
        }
        let summary = result?;
        tracing::info!(id = %rec.id, target = %target.display(), entries = summary.entries, "restored");
        Ok(RestoreOutcome {
            id: rec.id.to_string(),
            zone: rec.zone,
            exported_first: exported,
            entries: summary.entries,
            bytes: summary.bytes,
            warnings: summary.warnings,
            target: target.to_path_buf(),
        })
    }

    /// Writes the archive of `id` to `to`, verified, for standard tools.
    pub async fn export(
        &self,
        id: &str,
        to: &Path,
        force: bool,
        progress: &Progress,
    ) -> Result<Record, OpsError> {
        let (rec, _pin) = self.resolve_pinned(id).await?;
        if to.exists() && !force {
            return Err(OpsError::Usage(format!(
                "{} exists: choose another file or pass --force to replace it",
                to.display()
            )));
        }
        let partial = PathBuf::from(format!("{}.partial", to.display()));
        let store = self.store(rec.zone).clone();
        let key = self.key(&rec);
        progress.phase("export", rec.size_bytes);
        store
            .fetch_archive(&key, &partial, progress.callback())
            .await?;
        let verified = self.verify_copy_of(&rec, &partial, progress).await;
        progress.finish();
        if let Err(e) = verified {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        fs::rename(&partial, to).map_err(io_err("rename to", to))?;
        Ok(rec)
    }

    /// Re-hashes backups and compares them with their manifests (and, with `deep`,
    /// decompresses every entry and applies every check of a restore, writing nothing).
    pub async fn verify(
        &self,
        id: Option<&str>,
        deep: bool,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<Vec<VerifyResult>, OpsError> {
        let records = {
            let catalog = self.catalog()?;
            match id {
                Some(id) => vec![self.resolve(&catalog, id)?],
                None => catalog.list(None)?,
            }
        };
        let mut out = Vec::new();
        for rec in records {
            let id = rec.id.clone();
            let outcome = match self.repin(rec.clone()).await {
                Ok((rec, _pin)) => self.verify_one(&rec, deep, progress).await,
                // Aged or evicted while the others were verified: nothing to check.
                Err(OpsError::NotFound(_)) if !matches!(rec.state, State::Missing) => {
                    tracing::info!(%id, "no longer present (aged or evicted meanwhile)");
                    continue;
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &outcome {
                tracing::error!(id = %rec.id, zone = %rec.zone, "verification failed: {e}");
            }
            if let Err(e) = self.note_verified(&rec, now, outcome.as_ref().err()) {
                tracing::warn!(id = %rec.id, "cannot record the verification: {e}");
            }
            out.push(VerifyResult {
                id: rec.id.to_string(),
                zone: rec.zone,
                ok: outcome.is_ok(),
                error: outcome.err().map(|e| e.to_string()),
            });
        }
        progress.finish();
        Ok(out)
    }

    /// Records what a verification of `rec` found: a copy that does not match its
    /// manifest (or does not restore) is marked `damaged`; a damaged one that verifies
    /// again is `verified`. Errors of reaching the copy say nothing about it.
    fn note_verified(
        &self,
        rec: &Record,
        now: OffsetDateTime,
        error: Option<&OpsError>,
    ) -> Result<(), OpsError> {
        let mut catalog = self.catalog()?;
        let was_damaged = catalog.is_damaged(&rec.id)?;
        match error {
            Some(OpsError::Archive(
                e @ (ArchiveError::Mismatch { .. }
                | ArchiveError::Stream { .. }
                | ArchiveError::Hostile { .. }),
            )) if !was_damaged => {
                catalog.note_backup(&rec.id, now, "damaged", Some(rec.zone), &e.to_string())?;
                crate::metrics::inc(
                    "tierkeep_damaged_found_total",
                    &[("zone", rec.zone.as_str())],
                );
            }
            None if was_damaged => {
                catalog.note_backup(
                    &rec.id,
                    now,
                    "verified",
                    Some(rec.zone),
                    "verified again: the copy matches its manifest",
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn verify_one(
        &self,
        rec: &Record,
        deep: bool,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let store = self.store(rec.zone);
        let key = self.key(rec);
        let stored = store.read_manifest(&key).await?;
        if stored != rec.manifest {
            return Err(OpsError::Usage(format!(
                "the manifest in zone {} differs from the catalog's copy; run `tierkeep catalog rebuild`",
                rec.zone
            )));
        }
        let dest =
            self.staging()?
                .join(format!("{}.verify-{}.tar.zst", rec.id, std::process::id()));
        let copy = store::readable_copy(store.as_ref(), &key, &dest, progress.callback()).await?;
        let expected = (rec.size_bytes, rec.sha256.clone());
        let bar = progress.clone();
        bar.phase("verify", rec.size_bytes);
        let check = copy.path().to_path_buf();
        let result = tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
            let mut cb = |n| bar.inc(n);
            if deep {
                check_archive(&check, Some(&expected), &mut cb).map(|_| ())
            } else {
                verify_file(&check, &expected, &mut cb)
            }
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))?;
        Ok(result?)
    }

    /// Checks that the reserved zone can lock new manual backups as configured
    /// (`zones.reserved.lock_retention` needs a bucket with S3 Object Lock enabled).
    pub async fn check_object_lock(&self) -> Result<(), OpsError> {
        Ok(self.store(Zone::Reserved).check_lock().await?)
    }

    /// An operator's explicit delete, from any zone. A backup under S3 Object Lock is
    /// refused ([`StoreError::Locked`], exit 3) with the bucket and the catalog unchanged.
    pub async fn delete(&self, id: &str, now: OffsetDateTime) -> Result<Record, OpsError> {
        let _lock = self.lock().await?;
        let mut catalog = self.catalog()?;
        let rec = self.resolve(&catalog, id)?;
        self.remove_copy(&rec, rec.zone).await?;
        catalog.mark_removed(
            &rec.id,
            rec.zone,
            State::Deleted,
            now,
            "operator: tierkeep delete",
        )?;
        tracing::info!(id = %rec.id, zone = %rec.zone, "backup deleted by operator");
        Ok(rec)
    }

    /// Rebuilds the catalog from the zones' manifests (recovery: incomplete uploads and
    /// stale staging files are removed and interrupted moves finished, under the host
    /// lock so no backup is under way).
    pub async fn rebuild_catalog(
        &self,
        now: OffsetDateTime,
    ) -> Result<crate::lifecycle::RecoveryReport, OpsError> {
        let _lock = self.lock().await?;
        let mut catalog = self.catalog()?;
        self.recover(&mut catalog, now).await
    }

    /// Zones, next backup, last result.
    pub fn status(&self, now: OffsetDateTime) -> Result<Status, OpsError> {
        let catalog = self.catalog()?;
        let mut zones = Vec::new();
        for zone in Zone::ALL {
            let zs = self.settings.zone(zone);
            let Usage { backups, bytes } = catalog.usage(zone)?;
            let Capacity {
                max_backups,
                max_bytes,
            } = zs.capacity;
            let (reachable, unreachable_since, last_error) =
                match crate::outage::recorded_health(&catalog, zone) {
                    crate::health::ZoneHealth::Reachable => (true, None, None),
                    crate::health::ZoneHealth::Unreachable {
                        since, last_error, ..
                    } => (false, Some(since), Some(last_error)),
                };
            zones.push(ZoneStatus {
                zone,
                url: zs.url.to_string(),
                backups,
                bytes,
                max_backups,
                max_bytes,
                newest: catalog.list(Some(zone))?.first().map(|r| r.id.to_string()),
                reachable,
                unreachable_since,
                last_error,
            });
        }
        let damaged: Vec<DamagedBackup> = catalog
            .damaged()?
            .into_iter()
            .map(|(r, e)| DamagedBackup {
                id: r.id.to_string(),
                zone: r.zone,
                since: e.at,
                reason: e.reason,
            })
            .collect();
        let black_box_pressure = {
            let bb = &zones[0];
            let last_attempt = crate::lifecycle::scheduled_attempts(&catalog)?
                .into_iter()
                .next();
            if bb.backups > bb.max_backups {
                let stuck: Vec<&str> = damaged
                    .iter()
                    .filter(|d| d.zone == Zone::BlackBox)
                    .map(|d| d.id.as_str())
                    .collect();
                let why = if !zones[1].reachable {
                    format!(
                        "the deletion zone is unreachable since {}",
                        zones[1]
                            .unreachable_since
                            .map(crate::domain::rfc3339)
                            .unwrap_or_default()
                    )
                } else if !stuck.is_empty() {
                    format!(
                        "damaged backups never move ({}), and the others could not make room",
                        stuck.join(", ")
                    )
                } else {
                    "aging failed (see `tierkeep catalog history`)".to_owned()
                };
                Some(format!(
                    "the black box holds {} backups, over its capacity of {}: {why}",
                    bb.backups, bb.max_backups
                ))
            } else {
                last_attempt
                    .filter(|e| e.kind == "refused")
                    .map(|e| format!("the last scheduled backup was not taken: {}", e.reason))
            }
        };
        let policy = self.policy.status();
        Ok(Status {
            black_box_pressure,
            daemon_pid: crate::daemon::running(&self.settings),
            host_id: self.settings.host_id.clone(),
            zones,
            next_backup: self.next_backup_due(&catalog, now)?,
            last_result: catalog.last_attempt()?,
            damaged,
            policy: policy.describe(),
            policy_error: policy.error,
            policy_state: policy.deciding,
            policy_file: policy.file,
            policy_version: policy.version,
            catalog: catalog.path().to_path_buf(),
        })
    }
}

/// Removes what interrupted runs of this host left in a staging directory: its own
/// `*.partial` files (written only under the host lock, which the caller holds), and
/// exports of restores or verifications older than a day (those run without the lock, so
/// younger ones may belong to a restore under way).
pub(crate) fn remove_partials(dir: &Path, host: &str, removed: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let day = std::time::Duration::from_secs(86_400);
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let own_partial = name.starts_with(&format!("{host}-")) && name.ends_with(".partial");
        let old_export = (name.contains(".export-") || name.contains(".verify-"))
            && e.metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
        if (own_partial || old_export) && fs::remove_file(&p).is_ok() {
            removed.push(format!("staging: {}", p.display()));
        }
    }
}

/// Formats a zone's usage line: `2/3 backups, 1.2 GiB`.
pub fn usage_line(z: &ZoneStatus) -> String {
    let bytes = match z.max_bytes {
        Some(m) => format!("{} of {}", format_size(z.bytes), format_size(m)),
        None => format_size(z.bytes),
    };
    format!("{}/{} backups, {bytes}", z.backups, z.max_backups)
}
