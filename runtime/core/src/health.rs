//! Zone health: whether each zone answers, since when it has not, and when it may be
//! tried again — a circuit breaker in front of the zones' stores.
//!
//! While a zone is unreachable, work that needs it does not wait for a full round of S3
//! retries on every pass: it is skipped at once until the next probe is due, and then a
//! single cheap probe (the zone store's `check`, no retries) decides whether
//! the work runs. Probes back off from [`FIRST_PROBE_AFTER`] to [`MAX_PROBE_AFTER`]. So a
//! due backup is never held up by retries against a zone that is down.
//!
//! Pure: the caller passes `now` and each outcome in. The transitions (a zone that just
//! stopped answering, one that answers again) are what the caller records in the audit
//! trail (`unreachable` and `reachable` events), so that `status` in another process
//! sees the same state.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

/// The first probe of an unreachable zone comes this long after the failure.
pub const FIRST_PROBE_AFTER: Duration = Duration::from_secs(5);
/// Probes of a zone that stays unreachable back off (doubling) up to this interval.
pub const MAX_PROBE_AFTER: Duration = Duration::from_secs(30);

/// What tierkeep knows about whether a zone answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ZoneHealth {
    /// The zone answered (or has not been found failing).
    Reachable,
    /// The zone's last operation failed because it could not be reached or used.
    Unreachable {
        /// When it stopped answering.
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
        /// The last error it gave.
        last_error: String,
        /// Failed operations and probes since then.
        failures: u32,
        /// When work may probe it again; until then work that needs it is skipped.
        #[serde(with = "time::serde::rfc3339")]
        next_probe: OffsetDateTime,
    },
}

/// What work that needs a zone should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The zone is reachable: go ahead.
    Go,
    /// The zone was unreachable and a probe is due: probe it first, go ahead if it answers.
    Probe,
    /// The zone is unreachable and no probe is due yet: skip the work.
    Skip,
}

/// The wait before the probe that follows the `failures`-th failure in a row.
pub fn probe_after(failures: u32) -> Duration {
    FIRST_PROBE_AFTER
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_PROBE_AFTER)
}

impl ZoneHealth {
    /// A zone that an earlier process found unreachable at `since` with `error` (from the
    /// audit trail): probed by the first work that needs it.
    pub fn recorded_unreachable(since: OffsetDateTime, error: String) -> ZoneHealth {
        ZoneHealth::Unreachable {
            since,
            last_error: error,
            failures: 1,
            next_probe: since,
        }
    }

    /// Whether work needing the zone should go ahead, probe first, or be skipped.
    pub fn gate(&self, now: OffsetDateTime) -> Gate {
        match self {
            ZoneHealth::Reachable => Gate::Go,
            ZoneHealth::Unreachable { next_probe, .. } if now >= *next_probe => Gate::Probe,
            ZoneHealth::Unreachable { .. } => Gate::Skip,
        }
    }

    /// Records a failure at `now`; returns true when the zone has just become
    /// unreachable (the transition to record).
    pub fn failed(&mut self, now: OffsetDateTime, error: String) -> bool {
        match self {
            ZoneHealth::Reachable => {
                *self = ZoneHealth::Unreachable {
                    since: now,
                    last_error: error,
                    failures: 1,
                    next_probe: now + probe_after(1),
                };
                true
            }
            ZoneHealth::Unreachable {
                last_error,
                failures,
                next_probe,
                ..
            } => {
                *last_error = error;
                *failures = failures.saturating_add(1);
                *next_probe = now + probe_after(*failures);
                false
            }
        }
    }

    /// Records that the zone answered; returns `(since, failures)` when it had been
    /// unreachable (the transition to record).
    pub fn answered(&mut self) -> Option<(OffsetDateTime, u32)> {
        match std::mem::replace(self, ZoneHealth::Reachable) {
            ZoneHealth::Reachable => None,
            ZoneHealth::Unreachable {
                since, failures, ..
            } => Some((since, failures)),
        }
    }

    /// Whether the zone is reachable as far as is known.
    pub fn is_reachable(&self) -> bool {
        matches!(self, ZoneHealth::Reachable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn an_unreachable_zone_is_skipped_until_its_probe_and_probes_back_off() {
        let t0 = datetime!(2026-12-01 12:00 UTC);
        let mut h = ZoneHealth::Reachable;
        assert_eq!(h.gate(t0), Gate::Go);
        assert!(h.failed(t0, "connection refused".into()));
        // Work in the next seconds does not touch the zone.
        assert_eq!(h.gate(t0 + Duration::from_secs(1)), Gate::Skip);
        assert_eq!(h.gate(t0 + FIRST_PROBE_AFTER), Gate::Probe);
        // A failed probe is not a new transition, and the next one waits twice as long.
        let t1 = t0 + FIRST_PROBE_AFTER;
        assert!(!h.failed(t1, "connection refused again".into()));
        assert_eq!(h.gate(t1 + FIRST_PROBE_AFTER), Gate::Skip);
        assert_eq!(h.gate(t1 + FIRST_PROBE_AFTER * 2), Gate::Probe);
        match &h {
            ZoneHealth::Unreachable {
                since,
                last_error,
                failures,
                ..
            } => {
                assert_eq!(*since, t0);
                assert_eq!(last_error, "connection refused again");
                assert_eq!(*failures, 2);
            }
            ZoneHealth::Reachable => panic!("still unreachable"),
        }
        // It answers: the outage's start and length are reported once.
        assert_eq!(h.answered(), Some((t0, 2)));
        assert_eq!(h.answered(), None);
        assert_eq!(h.gate(t1), Gate::Go);
    }

    #[test]
    fn probe_intervals_are_bounded() {
        assert_eq!(probe_after(1), FIRST_PROBE_AFTER);
        assert_eq!(probe_after(2), FIRST_PROBE_AFTER * 2);
        assert_eq!(probe_after(3), FIRST_PROBE_AFTER * 4);
        assert_eq!(probe_after(4), MAX_PROBE_AFTER);
        assert_eq!(probe_after(u32::MAX), MAX_PROBE_AFTER);
        // A state an earlier process recorded is probed by the first work that needs it.
        let t = datetime!(2026-12-01 12:00 UTC);
        let h = ZoneHealth::recorded_unreachable(t, "down".into());
        assert_eq!(h.gate(t), Gate::Probe);
    }
}
