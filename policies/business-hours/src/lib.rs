//! Frequent backups in working hours, fewer at night and at weekends, and backoff after
//! failed backups: after `k` failures in a row the next attempt comes after
//! `retry * 2^(k-1)`, never later than the normal interval. Aging and eviction follow
//! the default rules.

use serde::Deserialize;
use tierkeep_sdk::time::{HOUR, MINUTE, SECOND, civil, duration};
use tierkeep_sdk::{Context, Level, Metadata, Policy};

/// Working hours and intervals.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Interval in working hours (`"15m"` or milliseconds).
    #[serde(deserialize_with = "duration")]
    pub work_interval: u64,
    /// Interval outside them.
    #[serde(deserialize_with = "duration")]
    pub off_interval: u64,
    /// First working hour (local time), 0–23.
    pub start_hour: u32,
    /// End of the working day (exclusive), 1–24.
    pub end_hour: u32,
    /// Working days, 0 = Monday … 6 = Sunday.
    pub workdays: Vec<u32>,
    /// Local time's offset from UTC in minutes (e.g. 60 for UTC+1).
    pub utc_offset_minutes: i32,
    /// First retry delay after a failure; doubles with each further failure.
    #[serde(deserialize_with = "duration")]
    pub retry: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            work_interval: 15 * MINUTE,
            off_interval: 2 * HOUR,
            start_hour: 8,
            end_hour: 18,
            workdays: vec![0, 1, 2, 3, 4],
            utc_offset_minutes: 0,
            retry: MINUTE,
        }
    }
}

impl Settings {
    /// Whether `ts` falls in working hours.
    pub fn working(&self, ts: i64) -> bool {
        let c = civil(ts, self.utc_offset_minutes);
        self.workdays.contains(&c.weekday) && c.hour >= self.start_hour && c.hour < self.end_hour
    }
}

/// The business-hours policy.
#[derive(Debug)]
pub struct BusinessHours;

impl Policy for BusinessHours {
    type Settings = Settings;

    fn metadata() -> Metadata {
        tierkeep_sdk::metadata(
            "business-hours",
            env!("CARGO_PKG_VERSION"),
            "a shorter interval in working hours than at night and weekends, with \
             exponential backoff after failed backups",
            vec![
                tierkeep_sdk::setting(
                    "work_interval",
                    "duration",
                    "\"15m\"",
                    "interval in working hours",
                ),
                tierkeep_sdk::setting(
                    "off_interval",
                    "duration",
                    "\"2h\"",
                    "interval at night and at weekends",
                ),
                tierkeep_sdk::setting(
                    "start_hour",
                    "integer",
                    "8",
                    "first working hour, local time",
                ),
                tierkeep_sdk::setting(
                    "end_hour",
                    "integer",
                    "18",
                    "end of the working day (exclusive)",
                ),
                tierkeep_sdk::setting(
                    "workdays",
                    "list<integer>",
                    "[0,1,2,3,4]",
                    "working days, 0 = Monday",
                ),
                tierkeep_sdk::setting(
                    "utc_offset_minutes",
                    "integer",
                    "0",
                    "local time's offset from UTC",
                ),
                tierkeep_sdk::setting(
                    "retry",
                    "duration",
                    "\"1m\"",
                    "first retry after a failure; doubles after each further one",
                ),
            ],
        )
    }

    fn validate(s: &Settings) -> Result<(), String> {
        if s.start_hour >= s.end_hour || s.end_hour > 24 {
            return Err(format!(
                "working hours {}–{} are empty or out of range: need start_hour < end_hour <= 24",
                s.start_hour, s.end_hour
            ));
        }
        if let Some(d) = s.workdays.iter().find(|d| **d > 6) {
            return Err(format!(
                "workdays: {d} is not a day (0 = Monday … 6 = Sunday)"
            ));
        }
        for (name, v) in [
            ("work_interval", s.work_interval),
            ("off_interval", s.off_interval),
            ("retry", s.retry),
        ] {
            if v < SECOND {
                return Err(format!("{name} must be at least 1s"));
            }
        }
        if s.utc_offset_minutes.abs() > 14 * 60 {
            return Err("utc_offset_minutes must lie within ±14 hours".into());
        }
        Ok(())
    }

    fn interval(ctx: &Context, s: &Settings) -> u64 {
        let normal = if s.working(ctx.now) {
            s.work_interval
        } else {
            s.off_interval
        };
        let failures = ctx.recent.iter().take_while(|a| !a.succeeded).count() as u32;
        if failures == 0 {
            return normal;
        }
        let backoff = s.retry.saturating_mul(1u64 << (failures - 1).min(32));
        tierkeep_sdk::log(
            Level::Info,
            &format!(
                "{failures} failed backup(s) in a row: next attempt in {} ms",
                backoff.min(normal)
            ),
        );
        backoff.min(normal)
    }
}

tierkeep_sdk::export_policy!(BusinessHours);
tierkeep_sdk::use_decision_allocator!();

#[cfg(test)]
mod tests {
    use super::*;
    use tierkeep_sdk::testing::{context, interval, validate, with_recent, with_settings};

    // 2026-11-25T00:00:00Z, a Wednesday.
    const WED: i64 = 1_795_564_800_000;
    const H: i64 = HOUR as i64;

    #[test]
    fn intervals_follow_the_working_week() {
        let cases = [
            (WED + 9 * H, 15 * MINUTE, "Wednesday 09:00"),
            (WED + 7 * H, 2 * HOUR, "Wednesday 07:00"),
            (WED + 18 * H, 2 * HOUR, "Wednesday 18:00"),
            (WED + 3 * 24 * H + 10 * H, 2 * HOUR, "Saturday 10:00"),
        ];
        for (now, want, what) in cases {
            assert_eq!(interval::<BusinessHours>(&context(now)), want, "{what}");
        }
        // UTC+10: Wednesday 23:00 UTC is Thursday 09:00 local.
        let ctx = with_settings(context(WED + 23 * H), r#"{"utc_offset_minutes": 600}"#);
        assert_eq!(interval::<BusinessHours>(&ctx), 15 * MINUTE);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_interval() {
        let night = WED + 2 * H;
        let cases: [(&[bool], u64); 5] = [
            (&[true, false], 2 * HOUR),
            (&[false, true], MINUTE),
            (&[false, false, true], 2 * MINUTE),
            (&[false, false, false, false], 8 * MINUTE),
            (&[false; 12], 2 * HOUR),
        ];
        for (recent, want) in cases {
            let ctx = with_recent(context(night), recent);
            assert_eq!(interval::<BusinessHours>(&ctx), want, "{recent:?}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(validate::<BusinessHours>(r#"{"start_hour": 18, "end_hour": 8}"#).is_err());
        assert!(validate::<BusinessHours>(r#"{"workdays": [7]}"#).is_err());
        assert!(validate::<BusinessHours>(r#"{"work_interval": "0s"}"#).is_err());
        assert!(validate::<BusinessHours>(r#"{"work_interval": "soon"}"#).is_err());
        assert!(
            validate::<BusinessHours>(r#"{"work_interval": "5m", "workdays": [0, 6]}"#).is_ok()
        );
    }
}
