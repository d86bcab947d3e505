//! The default rules of tierkeep (the patent's): a scheduled backup every T1, a backup
//! ages out of the black box after T2, and the earliest deletion-zone backup is evicted
//! first. The host has the same rules built in natively, as the fallback and the
//! reference; a test checks that the two decide alike.

use tierkeep_sdk::{Metadata, Policy};

/// The default rules: every method keeps the SDK's default.
#[derive(Debug)]
pub struct DefaultRules;

impl Policy for DefaultRules {
    type Settings = ();

    fn metadata() -> Metadata {
        tierkeep_sdk::metadata(
            "default",
            env!("CARGO_PKG_VERSION"),
            "interval T1; age after T2; evict the earliest first",
            vec![],
        )
    }
}

tierkeep_sdk::export_policy!(DefaultRules);
tierkeep_sdk::use_decision_allocator!();

#[cfg(test)]
mod tests {
    use super::DefaultRules;
    use tierkeep_sdk::testing::{aging, backup, context, eviction, interval};
    use tierkeep_sdk::time::HOUR;

    const NOW: i64 = 1_795_624_911_000;

    #[test]
    fn decides_by_the_schedule() {
        let ctx = context(NOW);
        assert_eq!(interval::<DefaultRules>(&ctx), HOUR);
        let h = HOUR as i64;
        let bb = [backup(NOW - 5 * h), backup(NOW - 4 * h), backup(NOW - h)];
        assert_eq!(
            aging::<DefaultRules>(&ctx, &bb),
            vec![bb[0].id.clone(), bb[1].id.clone()]
        );
        let del = [
            backup(NOW - 50 * h),
            backup(NOW - 90 * h),
            backup(NOW - 70 * h),
        ];
        // Room for one more in a zone of 30 holding 3: nothing to evict.
        assert!(eviction::<DefaultRules>(&ctx, &del, 1).is_empty());
        // A zone of 3: the earliest goes; a zone of 1: all three, earliest first.
        let mut full = ctx.clone();
        full.zones[1].max_backups = 3;
        assert_eq!(
            eviction::<DefaultRules>(&full, &del, 1),
            vec![del[1].id.clone()]
        );
        full.zones[1].max_backups = 1;
        assert_eq!(
            eviction::<DefaultRules>(&full, &del, 1),
            vec![del[1].id.clone(), del[2].id.clone(), del[0].id.clone()]
        );
    }
}
