//! The scheduler: one pass of work at a time (start-up recovery, aging, eviction, then a
//! scheduled backup if one is due), the wait until the next pass, the recovery interval
//! and the grace period on shutdown.
//!
//! Every decision that depends on time is a pure function of the daemon's clock
//! reading ([`next_wake`], [`sleep_until`], [`backup_step`], [`recovery_due`],
//! [`Grace`]); the loop in [`Daemon::run`] only reads the injected [`Clock`] and waits.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::net::TcpListener;

use super::clock::Clock;
use super::http;
use super::state::{DaemonState, Shared};
use crate::domain::{BackupKind, Zone};
use crate::metrics;
use crate::ops::{OpsError, Tierkeep};
use crate::progress::Progress;

/// The longest the scheduler sleeps: it looks at aging, eviction and a changed policy at
/// least this often (and retries aging that failed).
pub const MAX_IDLE: Duration = Duration::from_secs(60);
/// The shortest pause between two passes.
pub const MIN_PAUSE: Duration = Duration::from_millis(500);
/// A recovery pass runs at least this often, besides start-up and after failed work.
pub const RECOVERY_EVERY: Duration = Duration::from_secs(24 * 3600);
/// During the grace period, the longest real-time wait between two looks at the clock.
const GRACE_LOOK: Duration = Duration::from_secs(1);

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

/// How long to sleep at `now` to wake at `wake` (`MIN_PAUSE` when `wake` has already
/// passed, e.g. because the pass took longer than planned).
pub fn sleep_until(wake: OffsetDateTime, now: OffsetDateTime) -> Duration {
    (wake - now).try_into().unwrap_or(MIN_PAUSE)
}

/// What a pass does about the scheduled backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupStep {
    /// Take it now: it is due or overdue.
    Take,
    /// Not yet due.
    Wait,
    /// Due, but the daemon is stopping: no new work starts.
    Skip,
}

/// Whether a pass at `now` takes the scheduled backup due at `due` (the last scheduled
/// attempt plus the policy's interval after it, or, before the first attempt of this
/// run, what the catalog says).
pub fn backup_step(due: OffsetDateTime, now: OffsetDateTime, stopping: bool) -> BackupStep {
    match (now >= due, stopping) {
        (false, _) => BackupStep::Wait,
        (true, true) => BackupStep::Skip,
        (true, false) => BackupStep::Take,
    }
}

/// Whether a recovery pass is due at `now`, the last one of this process having been
/// asked for at `last` (`None`: none yet, so at start-up). Due every `RECOVERY_EVERY`,
/// and also when the clock went back before `last` (a stepped wall clock must not put
/// it off for as long as the step).
pub fn recovery_due(last: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    last.is_none_or(|t| now < t || now >= t + RECOVERY_EVERY)
}

/// The grace period of a shutdown, measured on the daemon's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    from: OffsetDateTime,
    length: Duration,
}

impl Grace {
    /// A grace period of `length` from `asked` (when the shutdown was asked for).
    pub fn new(asked: OffsetDateTime, length: Duration) -> Grace {
        Grace {
            from: asked,
            length,
        }
    }

    /// What is left of the grace period at `now`, or `None` once it ran out. A clock
    /// that went back before its start restarts it from `now`, so a stepped wall clock
    /// stretches it to twice its length at most.
    pub fn left(&mut self, now: OffsetDateTime) -> Option<Duration> {
        if now < self.from {
            self.from = now;
        }
        let end = self.from + self.length;
        (now < end).then(|| sleep_until(end, now))
    }
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

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The scheduler of one host.
#[derive(Debug)]
pub struct Daemon {
    tk: Arc<Tierkeep>,
    clock: Arc<dyn Clock>,
    state: Shared,
}

impl Daemon {
    /// A daemon over `tk`, reading time from `clock`.
    pub fn new(tk: Arc<Tierkeep>, clock: Arc<dyn Clock>) -> Daemon {
        Daemon {
            tk,
            clock,
            state: Shared::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DaemonState> {
        self.state.lock()
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
            tokio::spawn(http::serve(l, self.view()))
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
        let mut last_recovery: Option<OffsetDateTime> = None;
        let mut first = true;
        'outer: loop {
            let now = self.clock.now();
            if recovery_due(last_recovery, now) {
                self.tk.set_recovered(false);
                last_recovery = Some(now);
            }
            let pass = self.pass(first);
            let mut pass = pin!(pass);
            tokio::select! {
                wake = &mut pass => {
                    first = false;
                    let wait = sleep_until(wake, self.clock.now());
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
                    ended = self.finish_within_grace(pass.as_mut(), abort.as_mut(), grace).await;
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

    /// After a shutdown asked for during a pass: lets the pass run on for the grace
    /// period, measured on the clock (waited for in real time, looking at the clock at
    /// least every second), or until `abort` completes. Dropping the pass stops it.
    async fn finish_within_grace<P, A>(
        &self,
        mut pass: Pin<&mut P>,
        mut abort: Pin<&mut A>,
        grace: Duration,
    ) -> Ended
    where
        P: Future,
        A: Future<Output = ()>,
    {
        let mut left = Grace::new(self.clock.now(), grace);
        loop {
            let Some(wait) = left.left(self.clock.now()) else {
                tracing::warn!(
                    "the grace period ran out: the work in flight was stopped where it stood; \
                     the next start finishes or rolls it back"
                );
                return Ended::GraceExpired;
            };
            tokio::select! {
                _ = pass.as_mut() => {
                    tracing::info!("work in flight finished");
                    return Ended::Clean;
                }
                () = tokio::time::sleep(wait.min(GRACE_LOOK)) => {}
                () = abort.as_mut() => {
                    tracing::warn!(
                        "second signal: the work in flight was stopped at once; the next start \
                         finishes or rolls it back"
                    );
                    return Ended::Aborted;
                }
            }
        }
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
        if backup_step(due, now, stopping) == BackupStep::Take {
            let attempt = self.clock.now();
            let clock = self.clock.clone();
            let now_fn = move || clock.now();
            match self
                .tk
                .backup(
                    BackupKind::Scheduled,
                    None,
                    false,
                    &now_fn,
                    &Progress::hidden(),
                )
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
    fn view(&self) -> http::View {
        http::View {
            tk: self.tk.clone(),
            clock: self.clock.clone(),
            state: self.state.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
    #[test]
    fn wakes_for_the_earliest_thing_due_and_never_spins() {
        let now = NOW;
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

    #[test]
    fn sleeps_until_the_wake_and_never_less_than_min_pause_when_late() {
        assert_eq!(sleep_until(NOW + secs(42), NOW), secs(42));
        assert_eq!(sleep_until(NOW, NOW), Duration::ZERO);
        // The pass ran past its wake: a short pause, not a negative or a huge sleep.
        assert_eq!(sleep_until(NOW - secs(3), NOW), MIN_PAUSE);
    }

    #[test]
    fn a_backup_is_taken_once_due_and_never_while_stopping() {
        let due = NOW + secs(3600);
        assert_eq!(backup_step(due, NOW, false), BackupStep::Wait);
        assert_eq!(backup_step(due, due - secs(1), false), BackupStep::Wait);
        assert_eq!(backup_step(due, due, false), BackupStep::Take);
        assert_eq!(backup_step(due, due + secs(7200), false), BackupStep::Take);
        assert_eq!(backup_step(due, due, true), BackupStep::Skip);
        assert_eq!(backup_step(due, NOW, true), BackupStep::Wait);
    }

    #[test]
    fn the_next_backup_follows_the_last_attempt_by_the_interval() {
        // What the loop does after an attempt at `attempt` with the policy's interval:
        // the next pass before `attempt + interval` waits, the one at it takes it, and
        // the scheduler wakes for it.
        let attempt = NOW;
        let interval = secs(3600);
        let due = attempt + interval;
        let later = attempt + secs(600);
        assert_eq!(backup_step(due, later, false), BackupStep::Wait);
        assert_eq!(next_wake(later, due, None, 0), later + MAX_IDLE);
        let close = due - secs(30);
        assert_eq!(next_wake(close, due, None, 0), due);
        assert_eq!(sleep_until(next_wake(close, due, None, 0), close), secs(30));
        assert_eq!(backup_step(due, due, false), BackupStep::Take);
    }

    #[test]
    fn recovery_runs_at_start_then_once_per_interval_and_after_the_clock_went_back() {
        assert!(recovery_due(None, NOW));
        assert!(!recovery_due(Some(NOW), NOW));
        assert!(!recovery_due(Some(NOW), NOW + RECOVERY_EVERY - secs(1)));
        assert!(recovery_due(Some(NOW), NOW + RECOVERY_EVERY));
        assert!(recovery_due(Some(NOW), NOW + RECOVERY_EVERY * 3));
        assert!(recovery_due(Some(NOW), NOW - secs(1)));
    }

    #[test]
    fn the_grace_period_runs_out_on_the_clock() {
        let mut grace = Grace::new(NOW, secs(30));
        assert_eq!(grace.left(NOW), Some(secs(30)));
        assert_eq!(grace.left(NOW + secs(20)), Some(secs(10)));
        assert_eq!(grace.left(NOW + secs(30)), None);
        assert_eq!(grace.left(NOW + secs(3600)), None);
        // No grace at all: the work in flight is dropped at once.
        assert_eq!(Grace::new(NOW, Duration::ZERO).left(NOW), None);
    }

    #[test]
    fn a_clock_that_goes_back_stretches_the_grace_period_to_twice_at_most() {
        let mut grace = Grace::new(NOW, secs(30));
        assert_eq!(grace.left(NOW + secs(29)), Some(secs(1)));
        // The wall clock is stepped back an hour: the period restarts from there...
        let back = NOW - secs(3600);
        assert_eq!(grace.left(back), Some(secs(30)));
        assert_eq!(grace.left(back + secs(10)), Some(secs(20)));
        // ...and does not wait for the clock to catch up with the old start.
        assert_eq!(grace.left(back + secs(30)), None);
    }
}
