//! Grandfather-father-son retention in the deletion zone: keep the newest backup of each
//! of the last `hourly` hours, `daily` days, `weekly` ISO weeks and `monthly` months
//! (UTC). When the zone is full, evict what no bucket keeps first (earliest first), then
//! the earliest of the kept ones. Interval and aging follow the schedule (T1, T2).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use tierkeep_sdk::time::{Period, period_key};
use tierkeep_sdk::{Backup, Context, Metadata, Policy, Room};

/// How many periods of each kind to keep.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Newest backup of each of the last N hours.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks.
    pub weekly: u32,
    /// ... calendar months.
    pub monthly: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hourly: 24,
            daily: 7,
            weekly: 4,
            monthly: 6,
        }
    }
}

/// The ids GFS keeps among `backups`.
pub fn kept(settings: &Settings, backups: &[Backup]) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    for (period, n) in [
        (Period::Hour, settings.hourly),
        (Period::Day, settings.daily),
        (Period::Week, settings.weekly),
        (Period::Month, settings.monthly),
    ] {
        // Newest backup per period, then the newest N periods.
        let mut newest: BTreeMap<i64, &Backup> = BTreeMap::new();
        for b in backups {
            let e = newest.entry(period_key(b.created_at, period)).or_insert(b);
            if (b.created_at, &b.id) > (e.created_at, &e.id) {
                *e = b;
            }
        }
        for b in newest.values().rev().take(n as usize) {
            keep.insert(b.id.clone());
        }
    }
    keep
}

/// Grandfather-father-son.
#[derive(Debug)]
pub struct Gfs;

impl Policy for Gfs {
    type Settings = Settings;

    fn metadata() -> Metadata {
        tierkeep_sdk::metadata(
            "gfs",
            env!("CARGO_PKG_VERSION"),
            "grandfather-father-son: keep N hourly, daily, weekly and monthly backups in the \
             deletion zone; evict what no bucket keeps first, then the earliest",
            vec![
                tierkeep_sdk::setting(
                    "hourly",
                    "integer",
                    "24",
                    "newest backup of each of the last N hours",
                ),
                tierkeep_sdk::setting(
                    "daily",
                    "integer",
                    "7",
                    "newest backup of each of the last N days",
                ),
                tierkeep_sdk::setting(
                    "weekly",
                    "integer",
                    "4",
                    "newest backup of each of the last N ISO weeks",
                ),
                tierkeep_sdk::setting(
                    "monthly",
                    "integer",
                    "6",
                    "newest backup of each of the last N months",
                ),
            ],
        )
    }

    fn validate(s: &Settings) -> Result<(), String> {
        if s.hourly + s.daily + s.weekly + s.monthly == 0 {
            return Err(
                "gfs keeps nothing: set at least one of hourly, daily, weekly, monthly".into(),
            );
        }
        Ok(())
    }

    fn eviction(_ctx: &Context, s: &Settings, deletion: &[Backup], _room: Room) -> Vec<String> {
        let keep = kept(s, deletion);
        let oldest = tierkeep_sdk::oldest_first(deletion);
        let (kept, spare): (Vec<&Backup>, Vec<&Backup>) =
            oldest.into_iter().partition(|b| keep.contains(&b.id));
        spare
            .into_iter()
            .chain(kept)
            .map(|b| b.id.clone())
            .collect()
    }
}

tierkeep_sdk::export_policy!(Gfs);
tierkeep_sdk::use_decision_allocator!();

#[cfg(test)]
mod tests {
    use super::*;
    use tierkeep_sdk::testing::{backup, context, eviction, validate, with_settings};
    use tierkeep_sdk::time::{DAY, HOUR};

    // 2026-11-25T00:00:00Z, a Wednesday.
    const MIDNIGHT: i64 = 1_795_564_800_000;

    #[test]
    fn evicts_what_no_bucket_keeps_first() {
        let h = HOUR as i64;
        let ctx = with_settings(
            context(MIDNIGHT),
            r#"{"hourly": 2, "daily": 2, "weekly": 0, "monthly": 0}"#,
        );
        // Three backups on the previous day, three in the last hours.
        let b = [
            backup(MIDNIGHT - 20 * h),
            backup(MIDNIGHT - 10 * h),
            backup(MIDNIGHT - 2 * h), // newest of yesterday: daily keeps it
            backup(MIDNIGHT + h / 4),
            backup(MIDNIGHT + h / 2), // newest of hour 0: hourly keeps it (and daily)
            backup(MIDNIGHT + h + 1), // newest of hour 1: hourly keeps it
        ];
        let order = eviction::<Gfs>(&ctx, &b, 1);
        let ids = |i: &[usize]| i.iter().map(|&i| b[i].id.clone()).collect::<Vec<_>>();
        assert_eq!(order, ids(&[0, 1, 3, 2, 4, 5]));
    }

    #[test]
    fn monthly_buckets_survive_daily_churn() {
        let d = DAY as i64;
        let ctx = with_settings(
            context(MIDNIGHT),
            r#"{"hourly": 0, "daily": 3, "weekly": 0, "monthly": 3}"#,
        );
        let b: Vec<_> = (0..90).map(|i| backup(MIDNIGHT - (89 - i) * d)).collect();
        let keep = kept(
            &Settings {
                hourly: 0,
                daily: 3,
                weekly: 0,
                monthly: 3,
            },
            &b,
        );
        assert_eq!(
            keep.len(),
            5,
            "3 days + the newest of 2 earlier months: {keep:?}"
        );
        let order = eviction::<Gfs>(&ctx, &b, 1);
        assert_eq!(order.len(), 90);
        assert!(order[..85].iter().all(|id| !keep.contains(id)));
    }

    #[test]
    fn settings_are_checked() {
        assert!(
            validate::<Gfs>(r#"{"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0}"#).is_err()
        );
        assert!(validate::<Gfs>(r#"{"yearly": 3}"#).is_err());
        assert!(validate::<Gfs>("{}").is_ok());
    }
}
