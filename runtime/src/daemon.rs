//! The daemon (`tierkeep run`): the generation module (scheduled backups at the interval
//! the policy gives), the demotion module (aging) and the purge module (eviction) on one
//! scheduler, with start-up recovery, graceful shutdown and the `/metrics` and
//! `/healthz` endpoints.
//!
//! One pass of work runs at a time and holds the host lock only while it works, so a
//! manual backup or a restore from the CLI runs between passes (a CLI backup waits for
//! the pass to finish, and the pass for it). The clock is injected ([`Clock`]); the
//! waiting is planned by the pure [`next_wake`].
//!
//! Shutdown: when the `shutdown` future completes (the first SIGTERM or SIGINT), no new
//! work starts; a pass in flight may run on for `daemon.shutdown_grace` to reach its end,
//! then it is dropped where it stands. Dropping work is safe by construction: a move
//! commits its manifest last and records it before the local copy goes, an archive is
//! written to a `.partial` file first, and the next start's recovery finishes or rolls
//! back whatever was in flight. The `abort` future (a second signal) drops it at once.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::domain::{BackupKind, Zone};
use crate::metrics::{self, Gauge};
use crate::ops::{OpsError, Tierkeep};
use crate::progress::Progress;

/// The longest the scheduler sleeps: it looks at aging, eviction and a changed policy at
/// least this often (and retries aging that failed).
pub const MAX_IDLE: Duration = Duration::from_secs(60);
/// The shortest pause between two passes.
pub const MIN_PAUSE: Duration = Duration::from_millis(500);
/// A recovery pass runs at least this often, besides start-up and after failed work.
pub const RECOVERY_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Where the daemon reads the time and waits for it to pass. A test can drive the
/// scheduler through days in seconds with a clock whose `sleep` moves it forward.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
    /// Waits until `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// When the scheduler next wakes: at the next scheduled backup, when the oldest
/// black-box backup reaches T2, or after `MAX_IDLE` (longer after failed passes:
/// `MAX_IDLE` times 2^failures, at most ten times it), whichever comes first — and
/// never sooner than `MIN_PAUSE`.
pub fn next_wake(
    now: OffsetDateTime,
    next_backup: OffsetDateTime,
    oldest_ages_at: Option<OffsetDateTime>,
    failures: u32,
) -> OffsetDateTime {
    let idle = MAX_IDLE
        .saturating_mul(1u32 << failures.min(4))
        .min(MAX_IDLE * 10);
    let mut wake = now + idle;
    if next_backup < wake {
        wake = next_backup;
    }
    // An overdue one is being retried (aging failed): it waits like everything else.
    if let Some(t) = oldest_ages_at
        && t > now
        && t < wake
    {
        wake = t;
    }
    wake.max(now + MIN_PAUSE)
}

/// What the daemon knows of itself, shared with the HTTP endpoints.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DaemonState {
    /// When it started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started: Option<OffsetDateTime>,
    /// When the next scheduled backup is due.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_backup: Option<OffsetDateTime>,
    /// When the last pass ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_pass: Option<OffsetDateTime>,
    /// Why the last pass failed, if it did.
    pub last_error: Option<String>,
    /// Passes that failed in a row.
    pub failures: u32,
    /// Whether it is shutting down.
    pub stopping: bool,
}

/// How `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shut down with no work in flight, or after it finished within the grace period.
    Clean,
    /// The grace period ran out and the work in flight was dropped (recoverable).
    GraceExpired,
    /// A second signal dropped the work in flight (recoverable).
    Aborted,
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon runs for this host.
    #[error(
        "another tierkeep daemon is already running for host {host} (pid {pid}, lock {}): \
         stop it first (one daemon per host and data_dir)",
        path.display()
    )]
    AlreadyRunning {
        /// The host.
        host: String,
        /// The pid written in the lock file.
        pid: String,
        /// The lock file.
        path: std::path::PathBuf,
    },
    /// The lock file cannot be used.
    #[error("cannot use the daemon lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics address cannot be used.
    #[error("cannot listen on daemon.metrics_addr {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Held while a daemon runs for a host: a second `tierkeep run` for the same host (and
/// data_dir) refuses to start instead of doubling the schedule.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

/// Claims the daemon lock of the host (`data_dir/locks/<host>.daemon.lock`, holding the
/// pid of the daemon that has it).
pub fn claim(settings: &crate::config::Settings) -> Result<DaemonLock, DaemonError> {
    use std::io::{Read, Seek, Write};
    let dir = settings.data_dir.join("locks");
    let path = dir.join(format!("{}.daemon.lock", settings.host_id));
    let io = |source| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            Ok(DaemonLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(DaemonError::AlreadyRunning {
                host: settings.host_id.clone(),
                pid: pid.trim().to_owned(),
                path,
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// The pid of the daemon running for this host, if one is (read from its lock).
pub fn running(settings: &crate::config::Settings) -> Option<u32> {
    use std::io::Read;
    let path = settings
        .data_dir
        .join("locks")
        .join(format!("{}.daemon.lock", settings.host_id));
    let mut file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => {
            let mut pid = String::new();
            file.read_to_string(&mut pid).ok()?;
            pid.trim().parse().ok()
        }
    }
}

/// Binds the metrics listener of `settings` (`None` when `daemon.metrics_addr = "off"`).
pub async fn bind_metrics(addr: &str) -> Result<Option<TcpListener>, DaemonError> {
    if addr == "off" {
        return Ok(None);
    }
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| DaemonError::Listen {
            addr: addr.to_owned(),
            source,
        })
}

/// The scheduler of one host.
#[derive(Debug)]
pub struct Daemon {
    tk: Arc<Tierkeep>,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<DaemonState>>,
}

impl Daemon {
    /// A daemon over `tk`, reading time from `clock`.
    pub fn new(tk: Arc<Tierkeep>, clock: Arc<dyn Clock>) -> Daemon {
        Daemon {
            tk,
            clock,
            state: Arc::new(Mutex::new(DaemonState::default())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DaemonState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown` completes (then within the grace period) or `abort` does.
    /// `listener`, if any, serves `/metrics` and `/healthz` meanwhile.
    pub async fn run(
        &self,
        listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
        abort: impl Future<Output = ()>,
    ) -> Ended {
        let mut shutdown = pin!(shutdown);
        let mut abort = pin!(abort);
        self.state().started = Some(self.clock.now());
        let server = listener.map(|l| {
            let addr = l
                .local_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            tracing::info!(%addr, "serving /metrics and /healthz on http://{addr}");
            tokio::spawn(serve(l, self.view()))
        });
        let grace = self.tk.settings.shutdown_grace;
        tracing::info!(
            host = %self.tk.settings.host_id,
            policy = %self.tk.policy.status().describe(),
            interval = %crate::domain::format_duration(self.tk.settings.schedule.interval),
            aging = %crate::domain::format_duration(self.tk.settings.schedule.aging),
            grace = %crate::domain::format_duration(grace),
            "tierkeep daemon started"
        );
        // Said at start, and never in the way of scheduled work: the daemon takes no
        // manual backups, but an operator's next one would be refused.
        let tk = self.tk.clone();
        tokio::spawn(async move {
            match tk.check_object_lock().await {
                Ok(()) => {}
                Err(
                    e @ crate::ops::OpsError::Store(crate::store::StoreError::NoObjectLock {
                        ..
                    }),
                ) => {
                    tracing::error!(
                        "{e}; scheduled work goes on, but every `tierkeep backup --manual` is \
                         refused until this is fixed"
                    );
                }
                Err(e) => tracing::warn!(
                    "could not check S3 Object Lock on the reserved zone at start ({e}); manual \
                     backups check it before writing"
                ),
            }
        });
        let mut ended = Ended::Clean;
        let mut last_recovery: Option<std::time::Instant> = None;
        let mut first = true;
        'outer: loop {
            if last_recovery.is_none_or(|t| t.elapsed() >= RECOVERY_EVERY) {
                self.tk.set_recovered(false);
                last_recovery = Some(std::time::Instant::now());
            }
            let pass = self.pass(first);
            let mut pass = pin!(pass);
            tokio::select! {
                wake = &mut pass => {
                    first = false;
                    let wait = (wake - self.clock.now()).try_into().unwrap_or(MIN_PAUSE);
                    tokio::select! {
                        () = self.clock.sleep(wait) => {}
                        () = &mut shutdown => {
                            tracing::info!("shutdown requested; no work in flight");
                            break 'outer;
                        }
                        () = &mut abort => {
                            ended = Ended::Aborted;
                            break 'outer;
                        }
                    }
                }
                () = &mut shutdown => {
                    self.state().stopping = true;
                    tracing::warn!(
                        grace = %crate::domain::format_duration(grace),
                        "shutdown requested: no new work; waiting for the work in flight to \
                         finish (a second signal stops it at once)"
                    );
                    tokio::select! {
                        _ = &mut pass => tracing::info!("work in flight finished"),
                        () = tokio::time::sleep(grace) => {
                            tracing::warn!(
                                "the grace period ran out: the work in flight was stopped where \
                                 it stood; the next start finishes or rolls it back"
                            );
                            ended = Ended::GraceExpired;
                        }
                        () = &mut abort => {
                            tracing::warn!(
                                "second signal: the work in flight was stopped at once; the \
                                 next start finishes or rolls it back"
                            );
                            ended = Ended::Aborted;
                        }
                    }
                    break 'outer;
                }
                () = &mut abort => {
                    ended = Ended::Aborted;
                    break 'outer;
                }
            }
        }
        self.state().stopping = true;
        if ended != Ended::Clean {
            self.tk.release_hooks().await;
        }
        if let Some(s) = server {
            s.abort();
        }
        tracing::info!(?ended, "tierkeep daemon stopped");
        ended
    }

    /// One pass: start-up recovery (the first time), aging and eviction, then a
    /// scheduled backup if one is due. Returns when the scheduler should wake next.
    async fn pass(&self, first: bool) -> OffsetDateTime {
        let now = self.clock.now();
        if first {
            self.startup_recovery(now).await;
        }
        let mut error: Option<String> = None;
        // Aging and eviction first, so that a backup that reached T2 ages as such rather
        // than early to make room for the new one (the lifecycle logs each move).
        match self.tk.tick(now, &Progress::hidden()).await {
            Ok(report) if !report.damaged.is_empty() => {
                error = Some(format!(
                    "aging found damaged backups (left in place): {}",
                    report.damaged.join(", ")
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("aging and eviction failed: {e}");
                error = Some(format!("aging and eviction: {e}"));
            }
        }
        let cached = self.state().next_backup;
        let due = match cached {
            Some(t) => t,
            // The first of this run: as `status` says.
            None => match self
                .tk
                .catalog()
                .and_then(|c| self.tk.next_backup_due(&c, now))
            {
                Ok(t) => t,
                Err(e) => {
                    error.get_or_insert(e.to_string());
                    now
                }
            },
        };
        self.state().next_backup = Some(due);
        // A shutdown asked for during the aging above starts no backup.
        let stopping = self.state().stopping;
        if now >= due && !stopping {
            let attempt = self.clock.now();
            let clock = self.clock.clone();
            let now_fn = move || clock.now();
            match self
                .tk
                .backup(BackupKind::Scheduled, None, &now_fn, &Progress::hidden())
                .await
            {
                Ok(out) => tracing::info!(
                    id = %out.manifest.id,
                    bytes = out.manifest.archive_bytes,
                    seconds = out.seconds,
                    "scheduled backup created"
                ),
                Err(e) => {
                    tracing::error!("scheduled backup failed: {e}");
                    error = Some(format!("scheduled backup: {e}"));
                }
            }
            let next = match self.interval_after(attempt) {
                Ok(d) => attempt + d,
                Err(e) => {
                    error.get_or_insert(e.to_string());
                    attempt + self.tk.settings.schedule.interval
                }
            };
            tracing::info!(next = %rfc3339(next), "next scheduled backup");
            self.state().next_backup = Some(next);
        }
        let now = self.clock.now();
        let oldest_ages_at = self.oldest_ages_at().unwrap_or(None);
        let mut st = self.state();
        st.last_pass = Some(now);
        metrics::inc(
            "tierkeep_daemon_passes_total",
            &[("outcome", if error.is_some() { "failed" } else { "ok" })],
        );
        if error.is_some() {
            st.failures = st.failures.saturating_add(1);
        } else {
            st.failures = 0;
        }
        st.last_error = error;
        let next_backup = st.next_backup.unwrap_or(now);
        next_wake(now, next_backup, oldest_ages_at, st.failures)
    }

    async fn startup_recovery(&self, now: OffsetDateTime) {
        let result = async {
            let _lock = self.tk.lock().await?;
            let mut catalog = self.tk.catalog()?;
            self.tk.set_recovered(false);
            let report = self.tk.recover_if_needed(&mut catalog, now).await?;
            self.tk.end_work(true);
            Ok::<_, OpsError>(report.unwrap_or_default())
        }
        .await;
        match result {
            Ok(r) => {
                let c = &r.catalog;
                tracing::info!(
                    backups = r.backups,
                    finished_moves = r.finished_moves.len(),
                    removed_incomplete = r.removed_incomplete.len(),
                    discovered = c.discovered.len(),
                    corrected = c.moved.len(),
                    evictions_completed = c.evicted.len(),
                    missing = c.missing.len(),
                    "start-up recovery done"
                );
                for id in &r.finished_moves {
                    tracing::info!(%id, "start-up recovery finished an interrupted move");
                }
                for i in &r.removed_incomplete {
                    tracing::info!(item = %i, "start-up recovery removed an incomplete upload or staging file");
                }
                for id in &c.discovered {
                    tracing::warn!(%id, "start-up recovery found a backup the catalog did not know; added it");
                }
                for id in &c.missing {
                    tracing::error!(%id, "MISSING: the catalog records this backup but no zone holds it");
                }
                for u in &r.unreadable {
                    tracing::warn!(item = %u, "start-up recovery could not read a manifest; left alone");
                }
                for z in &r.unreachable {
                    tracing::warn!(zone = %z, "start-up recovery could not list a zone; it will be retried");
                }
            }
            Err(e) => tracing::error!("start-up recovery failed (retried with the next pass): {e}"),
        }
    }

    /// The policy's interval after the attempt at `attempt`.
    fn interval_after(&self, attempt: OffsetDateTime) -> Result<Duration, OpsError> {
        let catalog = self.tk.catalog()?;
        let ctx = self.tk.policy_context(&catalog, attempt)?;
        Ok(self.tk.decide_interval(&ctx))
    }

    /// When the oldest black-box backup reaches T2.
    fn oldest_ages_at(&self) -> Result<Option<OffsetDateTime>, OpsError> {
        let catalog = self.tk.catalog()?;
        Ok(catalog
            .list(Some(Zone::BlackBox))?
            .iter()
            .map(|r| r.created_at + self.tk.settings.schedule.aging)
            .min())
    }

    /// The Prometheus text of this daemon (also what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.view().metrics()
    }

    /// What the HTTP endpoints read.
    fn view(&self) -> View {
        View {
            tk: self.tk.clone(),
            clock: self.clock.clone(),
            state: self.state.clone(),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What the HTTP endpoints read.
#[derive(Debug, Clone)]
struct View {
    tk: Arc<Tierkeep>,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<DaemonState>>,
}

impl View {
    fn state(&self) -> DaemonState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn metrics(&self) -> String {
        let st = self.state();
        let mut gauges = Vec::new();
        let g = |name, help, values| Gauge { name, help, values };
        gauges.push(g(
            "tierkeep_build_info",
            "Version of the running tierkeep.",
            vec![(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        ));
        match self.tk.status(self.clock.now()) {
            Ok(s) => {
                let zl = |z: Zone| vec![("zone", z.as_str().to_owned())];
                gauges.push(g(
                    "tierkeep_zone_backups",
                    "Backups present in the zone (from the catalog).",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), z.backups as f64))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_bytes",
                    "Archive bytes present in the zone.",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), z.bytes as f64))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_capacity_backups",
                    "The zone's capacity in backups (max_backups).",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), z.max_backups as f64))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_capacity_bytes",
                    "The zone's capacity in bytes (max_bytes), where set.",
                    s.zones
                        .iter()
                        .filter_map(|z| z.max_bytes.map(|b| (zl(z.zone), b as f64)))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_up",
                    "1 when the zone answered the last work that needed it, 0 while it is \
                     unreachable (see `tierkeep status`).",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), f64::from(u8::from(z.reachable))))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_damaged_backups",
                    "Backups whose copy does not match its manifest, by zone (never moved; \
                     see `tierkeep status`).",
                    Zone::ALL
                        .iter()
                        .map(|&zone| {
                            let n = s.damaged.iter().filter(|d| d.zone == zone).count();
                            (zl(zone), n as f64)
                        })
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_black_box_pressure",
                    "1 when the black box is over capacity or its last scheduled backup was \
                     refused (see `tierkeep status`).",
                    vec![(vec![], f64::from(u8::from(s.black_box_pressure.is_some())))],
                ));
                gauges.push(g(
                    "tierkeep_policy_error",
                    "1 when the configured policy file is not running (built-in rules or the \
                     previous version decide).",
                    vec![(vec![], f64::from(u8::from(s.policy_error.is_some())))],
                ));
                if let Ok(catalog) = self.tk.catalog() {
                    let mut last = Vec::new();
                    for zone in [Zone::BlackBox, Zone::Reserved] {
                        if let Ok(Some(t)) = catalog.last_created_in(zone) {
                            last.push((zl(zone), metrics::unix(t)));
                        }
                    }
                    gauges.push(g(
                        "tierkeep_last_success_timestamp_seconds",
                        "When the last backup into the zone was created (black-box: scheduled, \
                         reserved: manual).",
                        last,
                    ));
                }
                gauges.push(g(
                    "tierkeep_catalog_up",
                    "1 when the catalog could be read for this scrape.",
                    vec![(vec![], 1.0)],
                ));
            }
            Err(e) => {
                tracing::warn!("metrics: cannot read the catalog: {e}");
                gauges.push(g(
                    "tierkeep_catalog_up",
                    "1 when the catalog could be read for this scrape.",
                    vec![(vec![], 0.0)],
                ));
            }
        }
        if let Some(t) = st.next_backup {
            gauges.push(g(
                "tierkeep_next_backup_timestamp_seconds",
                "When the next scheduled backup is due.",
                vec![(vec![], metrics::unix(t))],
            ));
        }
        if let Some(t) = st.last_pass {
            gauges.push(g(
                "tierkeep_daemon_last_pass_timestamp_seconds",
                "When the daemon's last pass of work ended.",
                vec![(vec![], metrics::unix(t))],
            ));
        }
        gauges.push(g(
            "tierkeep_daemon_failing_passes",
            "Passes of work that failed in a row (0 when the last one succeeded).",
            vec![(vec![], f64::from(st.failures))],
        ));
        metrics::render(&gauges)
    }

    /// `/healthz`: 200 `ok`; 200 `degraded` while a zone is unreachable or the last
    /// passes failed (the daemon works, but something needs attention); 503 while
    /// stopping or when the catalog cannot be read.
    fn health(&self) -> (u16, String) {
        let st = self.state();
        let zones: Vec<serde_json::Value> = match self.tk.catalog() {
            Ok(catalog) => Zone::ALL
                .iter()
                .map(|&zone| {
                    serde_json::json!({
                        "zone": zone,
                        "health": crate::outage::recorded_health(&catalog, zone),
                    })
                })
                .collect(),
            Err(e) => {
                let body = serde_json::json!({
                    "status": "failing",
                    "error": e.to_string(),
                    "daemon": st,
                });
                return (503, format!("{body}\n"));
            }
        };
        let unreachable = zones.iter().any(|z| z["health"]["state"] != "reachable");
        let (code, status) = if st.stopping {
            (503, "stopping")
        } else if unreachable || st.failures > 0 {
            (200, "degraded")
        } else {
            (200, "ok")
        };
        let body = serde_json::json!({
            "status": status,
            "zones": zones,
            "daemon": st,
        });
        (code, format!("{body}\n"))
    }
}

async fn serve(listener: TcpListener, view: View) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let view = view.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let view = view.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&view, &req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

async fn respond<B>(view: &View, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let (code, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let v = view.clone();
            let text = tokio::task::spawn_blocking(move || v.metrics())
                .await
                .unwrap_or_else(|e| format!("# metrics failed: {e}\n"));
            (200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        (&hyper::Method::GET, "/healthz") => {
            let (c, b) = view.health();
            (c, "application/json", b)
        }
        (&hyper::Method::GET, _) => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
        _ => (405, "text/plain", "only GET\n".into()),
    };
    hyper::Response::builder()
        .status(code)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn wakes_for_the_earliest_thing_due_and_never_spins() {
        let now = datetime!(2026-11-25 12:00 UTC);
        // Next backup in an hour, nothing in the black box: wake after MAX_IDLE.
        assert_eq!(
            next_wake(now, now + Duration::from_secs(3600), None, 0),
            now + MAX_IDLE
        );
        // A backup due in 10 s wins.
        assert_eq!(
            next_wake(now, now + Duration::from_secs(10), None, 0),
            now + Duration::from_secs(10)
        );
        // The oldest black-box backup ages in 5 s.
        assert_eq!(
            next_wake(
                now,
                now + Duration::from_secs(10),
                Some(now + Duration::from_secs(5)),
                0
            ),
            now + Duration::from_secs(5)
        );
        // Overdue things never make it spin: at least MIN_PAUSE; overdue aging (it
        // failed) waits for the idle period.
        assert_eq!(
            next_wake(now, now - Duration::from_secs(5), Some(now), 0),
            now + MIN_PAUSE
        );
        assert_eq!(
            next_wake(
                now,
                now + Duration::from_secs(3600),
                Some(now - Duration::from_secs(5)),
                0
            ),
            now + MAX_IDLE
        );
        // Failing passes back off, up to ten times MAX_IDLE, but a due backup still wins.
        assert_eq!(
            next_wake(now, now + Duration::from_secs(86400), None, 1),
            now + MAX_IDLE * 2
        );
        assert_eq!(
            next_wake(now, now + Duration::from_secs(86400), None, 30),
            now + MAX_IDLE * 10
        );
        assert_eq!(
            next_wake(now, now + Duration::from_secs(90), None, 30),
            now + Duration::from_secs(90)
        );
    }
}
