//! Unit tests of the domain rules.

#[test]
fn black_box_pressure_never_deletes_and_keeps_the_disk_reserve() {
    let cap = Capacity {
        max_backups: 2,
        max_bytes: None,
    };
    let full = Usage {
        backups: 2,
        bytes: 200,
    };
    let room = Usage {
        backups: 1,
        bytes: 100,
    };
    let gib = 1u64 << 30;
    assert_eq!(
        admit_scheduled(cap, room, None, Some(10 * gib), 100, gib),
        BlackBoxAdmission::Admit
    );
    // Full, aging impossible, disk has room: the newest is taken over capacity.
    assert_eq!(
        admit_scheduled(cap, full, Some("unreachable"), Some(10 * gib), 100, gib),
        BlackBoxAdmission::OverCapacity { holding: 3 }
    );
    // Full and aging did not fail: nothing to excuse going over.
    assert!(matches!(
        admit_scheduled(cap, full, None, Some(10 * gib), 100, gib),
        BlackBoxAdmission::Refuse { .. }
    ));
    // The disk reserve wins over everything, pressure or not.
    for (usage, failed) in [(room, None), (full, Some("unreachable"))] {
        let r = admit_scheduled(cap, usage, failed, Some(gib + 99), 100, gib);
        let BlackBoxAdmission::Refuse { reason } = r else {
            panic!("admitted into a disk below its reserve: {r:?}");
        };
        assert!(reason.contains("min_free"), "{reason}");
    }
    // A byte limit is not judged on the estimate (room is made after writing).
    let bytes_cap = Capacity {
        max_backups: 2,
        max_bytes: Some(150),
    };
    assert_eq!(
        admit_scheduled(bytes_cap, room, None, Some(10 * gib), 100, gib),
        BlackBoxAdmission::Admit
    );
    // Unknown free space (not a local filesystem we can ask): capacity alone decides.
    assert_eq!(
        admit_scheduled(cap, room, None, None, 100, gib),
        BlackBoxAdmission::Admit
    );
}

use super::*;
use rstest::rstest;
use time::macros::datetime;

#[test]
fn ids_sort_by_time_and_parse_back() {
    let a = BackupId::new(datetime!(2026-11-25 13:53:37.123 UTC), 0xabc);
    let b = BackupId::new(datetime!(2026-11-25 13:53:37.124 UTC), 0x1);
    assert!(a < b);
    assert_eq!(a.as_str(), "20261125T135337.123Z-000000000abc");
    assert_eq!(a.as_str().parse::<BackupId>().unwrap(), a);
    assert!("../etc".parse::<BackupId>().is_err());
    assert!(
        "20261125T135337.123Z-00000000ABCD"
            .parse::<BackupId>()
            .is_err()
    );
}

#[rstest]
#[case("90s", 90)]
#[case("15m", 900)]
#[case("4h", 14_400)]
#[case("1h30m", 5_400)]
#[case("2d", 172_800)]
#[case(" 1 w ", 604_800)]
#[case("1h 30m", 5_400)]
#[case("2 hours", 7_200)]
#[case("3 mins 20 secs", 200)]
#[case("1d2h3m4s", 93_784)]
fn durations_parse(#[case] text: &str, #[case] secs: u64) {
    assert_eq!(parse_duration(text).unwrap(), Duration::from_secs(secs));
    assert_eq!(
        parse_duration(&format_duration(Duration::from_secs(secs))).unwrap(),
        Duration::from_secs(secs)
    );
}

#[rstest]
#[case("")]
#[case("10")]
#[case("h")]
#[case("3 fortnights")]
#[case("0")]
#[case("15M")]
#[case("4H")]
#[case("1h-30m")]
#[case("99999999999999999999s")]
fn bad_durations_explain(#[case] text: &str) {
    let e = parse_duration(text).expect_err(text);
    assert!(e.contains(text.trim()) || e == "empty duration", "{e}");
}

#[test]
fn duration_messages_say_what_is_wrong() {
    assert_eq!(
        parse_duration("10").unwrap_err(),
        "`10` has no unit: write e.g. 10s, 10m or 10h"
    );
    assert_eq!(
        parse_duration("3 fortnights").unwrap_err(),
        "`3 fortnights`: unknown unit `fortnights`"
    );
    assert!(parse_duration("1h 5").unwrap_err().contains("has no unit"));
    assert!(
        parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("too long")
    );
    assert!(
        parse_duration("h")
            .unwrap_err()
            .contains("is not a duration")
    );
}

#[rstest]
#[case(Duration::from_secs(0), "0s")]
#[case(Duration::from_secs(4 * 3600), "4h")]
#[case(Duration::from_secs(5_400), "1h30m")]
#[case(Duration::from_secs(93_784), "1d2h3m4s")]
#[case(Duration::from_secs(31 * 86_400), "31d")]
#[case(Duration::from_millis(1_500), "1s500ms")]
#[case(Duration::from_millis(500), "500ms")]
#[case(Duration::from_micros(2_001), "2001us")]
#[case(Duration::from_nanos(7), "7ns")]
fn durations_format_as_before_and_read_back(#[case] d: Duration, #[case] text: &str) {
    assert_eq!(format_duration(d), text);
    assert_eq!(parse_duration(text).unwrap(), d);
}

#[test]
fn sub_second_and_fractional_durations_are_read() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5_400));
}

#[rstest]
#[case("512", 512)]
#[case("10KB", 10_000)]
#[case("500GiB", 500 * 1024 * 1024 * 1024)]
#[case("1.5 KiB", 1536)]
fn sizes_parse(#[case] text: &str, #[case] bytes: u64) {
    assert_eq!(parse_size(text).unwrap(), bytes);
}

#[test]
fn full_reserved_zone_refuses_with_advice() {
    let cap = Capacity {
        max_backups: 2,
        max_bytes: None,
    };
    let full = Usage {
        backups: 2,
        bytes: 10,
    };
    match admit_new_backup(BackupKind::Manual, cap, full) {
        Admission::Refuse { zone, fullness, .. } => {
            assert_eq!(zone, Zone::Reserved);
            assert_eq!(fullness, Fullness::Count { used: 2, max: 2 });
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    let room = Usage {
        backups: 1,
        bytes: 10,
    };
    assert_eq!(
        admit_new_backup(BackupKind::Scheduled, cap, room),
        Admission::Admit {
            zone: Zone::BlackBox
        }
    );
}

#[test]
fn byte_limit_counts() {
    let cap = Capacity {
        max_backups: 10,
        max_bytes: Some(100),
    };
    assert!(
        cap.admits(
            Usage {
                backups: 1,
                bytes: 100
            },
            0
        )
        .is_err()
    );
    assert!(
        cap.admits(
            Usage {
                backups: 1,
                bytes: 50
            },
            60
        )
        .is_err()
    );
    assert!(
        cap.admits(
            Usage {
                backups: 1,
                bytes: 50
            },
            10
        )
        .is_ok()
    );
}

fn view(id_ms: u16, at: OffsetDateTime, size: u64) -> BackupView {
    BackupView {
        id: BackupId::new(
            at + Duration::from_millis(u64::from(id_ms)),
            u64::from(id_ms),
        ),
        created_at: at,
        size_bytes: size,
        kind: BackupKind::Scheduled,
    }
}

#[test]
fn aging_takes_what_is_older_than_t2_oldest_first() {
    let s = Schedule {
        interval: Duration::from_secs(3600),
        aging: Duration::from_secs(3 * 3600),
    };
    let now = datetime!(2026-11-25 12:00 UTC);
    let bb = vec![
        view(3, datetime!(2026-11-25 11:00 UTC), 1),
        view(1, datetime!(2026-11-25 08:00 UTC), 1),
        view(2, datetime!(2026-11-25 09:00 UTC), 1),
    ];
    assert_eq!(
        plan_aging(&s, now, &bb),
        vec![bb[1].id.clone(), bb[2].id.clone()]
    );
    assert!(plan_aging(&s, datetime!(2026-11-25 10:59 UTC), &bb).is_empty());
}

#[test]
fn room_is_made_earliest_first_by_count_and_bytes() {
    let t = datetime!(2026-11-25 00:00 UTC);
    let zone = vec![view(2, t, 50), view(1, t, 10), view(3, t, 40)];
    let cap = Capacity {
        max_backups: 3,
        max_bytes: None,
    };
    assert!(plan_room(cap, &zone, 0, 0).is_empty());
    assert_eq!(plan_room(cap, &zone, 1, 0), vec![zone[1].id.clone()]);
    assert_eq!(
        plan_room(cap, &zone, 2, 0),
        vec![zone[1].id.clone(), zone[0].id.clone()]
    );
    let cap = Capacity {
        max_backups: 10,
        max_bytes: Some(100),
    };
    // 100 bytes present; 30 more need the two earliest (10 + 50) to go.
    assert_eq!(
        plan_room(cap, &zone, 1, 30),
        vec![zone[1].id.clone(), zone[0].id.clone()]
    );
}

#[test]
fn room_is_made_around_a_damaged_backup() {
    let t = datetime!(2026-11-25 00:00 UTC);
    let zone = vec![view(1, t, 10), view(2, t, 10), view(3, t, 10)];
    let cap = Capacity {
        max_backups: 3,
        max_bytes: None,
    };
    let oldest = zone[0].id.clone();
    let stuck = move |id: &BackupId| *id == oldest;
    // The damaged oldest stays; the next oldest ages in its place.
    assert_eq!(
        plan_room_around(cap, &zone, &stuck, 1, 0),
        (vec![zone[1].id.clone()], true)
    );
    // Nothing else can move: not enough room, and the caller says why.
    let all = |_: &BackupId| true;
    assert_eq!(plan_room_around(cap, &zone, &all, 1, 0), (vec![], false));
    assert_eq!(plan_room_around(cap, &zone, &all, 0, 0), (vec![], true));
}

#[test]
fn next_backup_is_interval_after_last() {
    let s = Duration::from_secs(3600);
    let now = datetime!(2026-11-25 12:00 UTC);
    assert_eq!(next_scheduled(s, None, now), now);
    assert_eq!(
        next_scheduled(s, Some(datetime!(2026-11-25 11:30 UTC)), now),
        datetime!(2026-11-25 12:30 UTC)
    );
    assert_eq!(
        next_scheduled(s, Some(datetime!(2026-11-25 09:00 UTC)), now),
        now
    );
}

proptest::proptest! {
    #[test]
    fn unix_ms_truncates_as_the_nanosecond_division_does(
        nanos in -253_402_300_799_000_000_000i128..253_402_300_799_000_000_000i128
    ) {
        let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("in range");
        proptest::prop_assert_eq!(
            unix_ms(t),
            i64::try_from(nanos / 1_000_000).expect("fits")
        );
    }
}

#[test]
fn unix_ms_around_the_epoch() {
    for (nanos, ms) in [
        (0i128, 0i64),
        (1, 0),
        (999_999, 0),
        (1_000_000, 1),
        (-1, 0),
        (-999_999, 0),
        (-1_000_000, -1),
        (-1_000_001, -1),
        (-1_999_999_999, -1999),
    ] {
        let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("in range");
        assert_eq!(unix_ms(t), ms, "{nanos} ns");
    }
}
