//! Durations in milliseconds, and calendar arithmetic (UTC) for calendar-based
//! retention such as grandfather-father-son. No clock: the time is always given.

/// One second, in milliseconds.
pub const SECOND: u64 = 1_000;
/// One minute.
pub const MINUTE: u64 = 60 * SECOND;
/// One hour.
pub const HOUR: u64 = 60 * MINUTE;
/// One day.
pub const DAY: u64 = 24 * HOUR;
/// One week.
pub const WEEK: u64 = 7 * DAY;

/// Parses a human duration into milliseconds: `90s`, `15m`, `4h`, `2d`, `1w`, `500ms`,
/// or a bare number of milliseconds (`250`). The units are those of tierkeep's
/// configuration (the same parser, [`humantime::parse_duration`]): sums such as `1h30m`
/// or `1h 30m`, fractions such as `1.5h`, and long names such as `2 hours` are read too.
///
/// Kept from the parser it replaced: a bare number is milliseconds (humantime wants a
/// unit); units are lowercase (humantime reads `M` as months, a trap beside `m` for
/// minutes, so any uppercase letter is refused). A duration finer than a millisecond
/// (`1us`) is refused.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let not_a_duration = || format!("`{text}` is not a duration (e.g. 90s, 15m, 4h, 2d)");
    if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) {
        return t.parse().map_err(|_| format!("`{text}` is too long"));
    }
    if t.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("`{text}`: units are lowercase (ms, s, m, h, d, w)"));
    }
    let d = humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if !unit.is_empty() => {
            format!("`{text}`: unknown unit `{unit}` (ms, s, m, h, d, w)")
        }
        humantime::DurationError::NumberOverflow => format!("`{text}` is too long"),
        _ => not_a_duration(),
    })?;
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!("`{text}` is finer than a millisecond"));
    }
    u64::try_from(d.as_millis()).map_err(|_| format!("`{text}` is too long"))
}

/// Formats milliseconds as the largest whole unit (`90m`, `4h`, `1500ms`).
pub fn format_duration(ms: u64) -> String {
    for (unit, name) in [
        (WEEK, "w"),
        (DAY, "d"),
        (HOUR, "h"),
        (MINUTE, "m"),
        (SECOND, "s"),
    ] {
        if ms >= unit && ms.is_multiple_of(unit) {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

/// Serde helper for duration settings written as `"4h"` or as milliseconds:
/// `#[serde(deserialize_with = "tierkeep_sdk::time::duration")]`.
pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Ms(u64),
        Text(String),
    }
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Ms(ms) => Ok(ms),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// A calendar date and time (UTC, or shifted by an offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of month, 1–31.
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// Day of week, 0 = Monday … 6 = Sunday.
    pub weekday: u32,
}

/// The calendar date of `ts` (milliseconds since the epoch) shifted by `offset_minutes`
/// (e.g. `60` for UTC+1).
pub fn civil(ts: i64, offset_minutes: i32) -> Civil {
    let ts = ts + i64::from(offset_minutes) * 60_000;
    let day_ms = DAY as i64;
    let days = ts.div_euclid(day_ms);
    let ms_of_day = ts.rem_euclid(day_ms);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (ms_of_day / HOUR as i64) as u32,
        // 1970-01-01 was a Thursday (3 when Monday is 0).
        weekday: (days + 3).rem_euclid(7) as u32,
    }
}

/// A calendar period for bucketing backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// Clock hours.
    Hour,
    /// Calendar days.
    Day,
    /// ISO weeks (Monday to Sunday).
    Week,
    /// Calendar months.
    Month,
}

/// The number of the period `ts` falls in: equal numbers mean the same hour, day, week
/// or month (UTC).
pub fn period_key(ts: i64, period: Period) -> i64 {
    match period {
        Period::Hour => ts.div_euclid(HOUR as i64),
        Period::Day => ts.div_euclid(DAY as i64),
        // Day 0 (1970-01-01) is a Thursday: shift so weeks start on Monday.
        Period::Week => (ts.div_euclid(DAY as i64) + 3).div_euclid(7),
        Period::Month => {
            let c = civil(ts, 0);
            c.year * 12 + i64::from(c.month) - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("4h"), Ok(4 * HOUR));
        assert_eq!(parse_duration("250"), Ok(250));
        assert_eq!(parse_duration(" 15 m "), Ok(15 * MINUTE));
        assert_eq!(parse_duration("15min"), Ok(15 * MINUTE));
        assert_eq!(parse_duration("2d"), Ok(2 * DAY));
        assert_eq!(parse_duration("1w"), Ok(WEEK));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("1h30m"), Ok(90 * MINUTE));
        assert_eq!(parse_duration("1.5s"), Ok(1_500));
        assert_eq!(
            parse_duration("4 parsecs"),
            Err("`4 parsecs`: unknown unit `parsecs` (ms, s, m, h, d, w)".into())
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("15M").is_err(), "not 15 months");
        assert!(parse_duration("1us").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("20000000000000w").is_err());
        assert_eq!(format_duration(4 * HOUR), "4h");
        assert_eq!(format_duration(90 * MINUTE), "90m");
    }

    #[test]
    fn calendar_matches_known_dates() {
        // 2026-11-25T16:41:51Z, a Wednesday.
        let ts = 1_795_624_911_000;
        let c = civil(ts, 0);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.weekday),
            (2026, 11, 25, 16, 2)
        );
        // 2024-02-29T23:30Z is 2024-03-01T00:30 at UTC+1.
        let leap = 1_709_249_400_000;
        assert_eq!((civil(leap, 0).month, civil(leap, 0).day), (2, 29));
        assert_eq!((civil(leap, 60).month, civil(leap, 60).day), (3, 1));
        assert_eq!(civil(-1, 0).year, 1969);
        // Monday 2026-11-23 and Sunday 2026-11-29 share a week; Monday 30th does not.
        let monday = ts - 2 * DAY as i64;
        let sunday = ts + 4 * DAY as i64;
        assert_eq!(
            period_key(monday, Period::Week),
            period_key(sunday, Period::Week)
        );
        assert_ne!(
            period_key(sunday, Period::Week),
            period_key(sunday + DAY as i64, Period::Week)
        );
        assert_eq!(period_key(ts, Period::Month), 2026 * 12 + 10);
    }
}
