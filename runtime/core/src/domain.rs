//! The pure domain core: zones, backup identities, capacities and the rules that decide
//! whether a backup may enter a zone. Nothing here does I/O or reads the clock; callers
//! pass `now` and the current state in and get a decision back.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The three storage zones of the patent's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Zone {
    /// Local SSD directory holding the newest scheduled backups.
    BlackBox,
    /// Store (an S3 bucket or a local directory, usually on HDD) that backups age into
    /// and are evicted from.
    Deletion,
    /// Store for manual backups, never touched by automatic work.
    Reserved,
}

impl Zone {
    /// Every zone, in lifecycle order.
    pub const ALL: [Zone; 3] = [Zone::BlackBox, Zone::Deletion, Zone::Reserved];

    /// The name used on the command line, in `--json` output and in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::BlackBox => "black-box",
            Zone::Deletion => "deletion",
            Zone::Reserved => "reserved",
        }
    }

    /// The zone's position in [`Zone::ALL`], for zone-indexed state.
    pub fn index(self) -> usize {
        match self {
            Zone::BlackBox => 0,
            Zone::Deletion => 1,
            Zone::Reserved => 2,
        }
    }

    /// Whether restoring from this zone reads the archive in place (the black box) or
    /// exports it to a staging area first (every other zone).
    pub fn restores_in_place(self) -> bool {
        matches!(self, Zone::BlackBox)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown zone name.
#[derive(Debug, thiserror::Error)]
#[error("unknown zone `{0}`: expected black-box, deletion or reserved")]
pub struct UnknownZone(String);

impl FromStr for Zone {
    type Err = UnknownZone;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "black-box" | "black_box" | "blackbox" => Ok(Zone::BlackBox),
            "deletion" => Ok(Zone::Deletion),
            "reserved" => Ok(Zone::Reserved),
            other => Err(UnknownZone(other.to_owned())),
        }
    }
}

/// Whether a backup was taken by the schedule or by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    /// Taken by the schedule; starts in the black box.
    Scheduled,
    /// Taken by an operator with `backup --manual`; lives in the reserved zone.
    Manual,
}

impl BackupKind {
    /// The name used in manifests, the catalog and `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Scheduled => "scheduled",
            BackupKind::Manual => "manual",
        }
    }

    /// The zone a new backup of this kind is written to.
    pub fn home_zone(self) -> Zone {
        match self {
            BackupKind::Scheduled => Zone::BlackBox,
            BackupKind::Manual => Zone::Reserved,
        }
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scheduled" => Ok(BackupKind::Scheduled),
            "manual" => Ok(BackupKind::Manual),
            other => Err(format!("unknown backup kind `{other}`")),
        }
    }
}

/// A backup id: `YYYYMMDDTHHMMSS.mmmZ-<12 hex>`. Ids sort by creation time (UTC,
/// millisecond resolution) and the random suffix keeps them unique across hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

/// A string that is not a backup id.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a backup id (expected e.g. 20261125T135337.123Z-a1b2c3d4e5f6)")]
pub struct InvalidBackupId(String);

impl BackupId {
    /// Builds the id of a backup created at `at`, with 48 random bits.
    pub fn new(at: OffsetDateTime, random: u64) -> Self {
        let at = at.to_offset(time::UtcOffset::UTC);
        BackupId(format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{:012x}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond(),
            random & 0xffff_ffff_ffff
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BackupId {
    type Err = InvalidBackupId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = b.len() == 33
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'.'
            && b[16..19].iter().all(u8::is_ascii_digit)
            && b[19] == b'Z'
            && b[20] == b'-'
            && b[21..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if ok {
            Ok(BackupId(s.to_owned()))
        } else {
            Err(InvalidBackupId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = InvalidBackupId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

/// A host id: the first path segment of every backup inside a zone.
pub fn validate_host_id(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 128 {
        return Err("must be 1 to 128 characters long".into());
    }
    if host.starts_with('.') {
        return Err("must not start with a dot".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may only contain ASCII letters, digits, `-`, `_` and `.`".into());
    }
    Ok(())
}

/// How much a zone may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// The maximum number of backups.
    pub max_backups: u64,
    /// The maximum total archive bytes, where set.
    pub max_bytes: Option<u64>,
}

/// How much a zone holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Backups present.
    pub backups: u64,
    /// Sum of their archive sizes.
    pub bytes: u64,
}

/// Why a zone cannot take one more backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fullness {
    /// The count limit is reached.
    Count {
        /// Backups present.
        used: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The byte limit is reached (or would be exceeded by the expected size).
    Bytes {
        /// Bytes present.
        used: u64,
        /// Configured maximum.
        max: u64,
    },
}

impl fmt::Display for Fullness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fullness::Count { used, max } => write!(f, "it holds {used} of {max} backups"),
            Fullness::Bytes { used, max } => write!(
                f,
                "it holds {} of its {} byte limit",
                format_size(*used),
                format_size(*max)
            ),
        }
    }
}

impl Capacity {
    /// Whether `incoming` more backups of `incoming_bytes` fit beside `count` backups of
    /// `bytes`.
    pub fn has_room(&self, count: u64, bytes: u64, incoming: u64, incoming_bytes: u64) -> bool {
        count + incoming <= self.max_backups
            && self
                .max_bytes
                .is_none_or(|max| bytes.saturating_add(incoming_bytes) <= max)
    }

    /// Decides whether one more backup fits. `expected_bytes` is a lower bound of the new
    /// archive's size when known (0 when not).
    pub fn admits(&self, usage: Usage, expected_bytes: u64) -> Result<(), Fullness> {
        if usage.backups >= self.max_backups {
            return Err(Fullness::Count {
                used: usage.backups,
                max: self.max_backups,
            });
        }
        if let Some(max) = self.max_bytes
            && (usage.bytes >= max || usage.bytes.saturating_add(expected_bytes) > max)
        {
            return Err(Fullness::Bytes {
                used: usage.bytes,
                max,
            });
        }
        Ok(())
    }
}

/// The admission decision for a new backup of `kind`, made before any data is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Write the backup into `zone`.
    Admit {
        /// The zone the backup goes to.
        zone: Zone,
    },
    /// Refuse: the zone is full, and nothing may be removed to make room.
    Refuse {
        /// The full zone.
        zone: Zone,
        /// How full it is.
        fullness: Fullness,
        /// What the operator can do.
        advice: &'static str,
    },
}

/// Decides where a new manual backup goes and whether it is admitted: the reserved zone
/// is never made room in automatically. (A scheduled backup into a full black box ages
/// the oldest one early instead: see [`plan_room`].)
pub fn admit_new_backup(kind: BackupKind, capacity: Capacity, usage: Usage) -> Admission {
    let zone = kind.home_zone();
    match capacity.admits(usage, 0) {
        Ok(()) => Admission::Admit { zone },
        Err(fullness) => Admission::Refuse {
            zone,
            fullness,
            advice: match kind {
                BackupKind::Manual => {
                    "manual backups are never deleted automatically: remove one you no longer \
                     need with `tierkeep delete ID --yes` (see `tierkeep list --zone reserved`), \
                     or raise zones.reserved.max_backups / max_bytes"
                }
                BackupKind::Scheduled => {
                    "the black box is full and its oldest backups could not be aged out: \
                     check the deletion zone, or remove a backup with `tierkeep delete ID --yes`"
                }
            },
        },
    }
}

/// How a scheduled backup is let into the black box (the generation module's admission,
/// after it has tried to age the oldest backups out early).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlackBoxAdmission {
    /// It fits.
    Admit,
    /// Black-box pressure: the zone is full and aging could not run (the deletion zone
    /// is unreachable). No unmoved backup is ever deleted to make room, and the newest
    /// data matters most, so the backup is taken beyond `max_backups` while the disk
    /// keeps its reserve; aging brings the zone back within capacity once it can run.
    OverCapacity {
        /// How many backups the black box will hold with this one.
        holding: u64,
    },
    /// Not taken: writing it could fill the disk below its reserve.
    Refuse {
        /// Why, for the operator.
        reason: String,
    },
}

/// Decides whether a scheduled backup of about `estimate` bytes may be written into the
/// black box holding `usage` within `capacity`. `aging_failed` is the error that kept
/// the oldest backups from aging out (if they had to); `available` is the free space of
/// the black box's filesystem (if known); `min_free` is the reserve it must keep.
pub fn admit_scheduled(
    capacity: Capacity,
    usage: Usage,
    aging_failed: Option<&str>,
    available: Option<u64>,
    estimate: u64,
    min_free: u64,
) -> BlackBoxAdmission {
    if let Some(free) = available
        && free < estimate.saturating_add(min_free)
    {
        return BlackBoxAdmission::Refuse {
            reason: format!(
                "the black box's filesystem has {} free; a backup of about {} must leave \
                 zones.black_box.min_free ({}) free",
                format_size(free),
                format_size(estimate),
                format_size(min_free)
            ),
        };
    }
    // The count only: a byte limit is checked against the real size once the archive is
    // written (and room made for it then).
    match capacity.admits(usage, 0) {
        Ok(()) => BlackBoxAdmission::Admit,
        Err(fullness) => match aging_failed {
            Some(_) => BlackBoxAdmission::OverCapacity {
                holding: usage.backups + 1,
            },
            None => BlackBoxAdmission::Refuse {
                reason: format!("the black box is full ({fullness})"),
            },
        },
    }
}

/// What the lifecycle rules need to know of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupView {
    /// Its id (ids sort by creation time).
    pub id: BackupId,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Its archive size.
    pub size_bytes: u64,
    /// Scheduled or manual.
    pub kind: BackupKind,
}

/// Aging (the demotion module), by the built-in rules: every black-box backup that has
/// been there for T2 or longer, oldest first.
pub fn plan_aging(
    schedule: &Schedule,
    now: OffsetDateTime,
    black_box: &[BackupView],
) -> Vec<BackupId> {
    let mut due: Vec<&BackupView> = black_box
        .iter()
        .filter(|b| now - b.created_at >= schedule.aging)
        .collect();
    due.sort_by(|a, b| a.id.cmp(&b.id));
    due.into_iter().map(|b| b.id.clone()).collect()
}

/// Which backups must leave a zone, oldest first, so that it holds `incoming` more
/// backups (and `incoming_bytes` more bytes) within `capacity`. Used for eviction from
/// the deletion zone (the purge module: the earliest goes first) and for early aging
/// out of a full black box.
pub fn plan_room(
    capacity: Capacity,
    present: &[BackupView],
    incoming: u64,
    incoming_bytes: u64,
) -> Vec<BackupId> {
    plan_room_around(capacity, present, &|_| false, incoming, incoming_bytes).0
}

/// Like [`plan_room`], passing over the backups `stuck` says cannot move (a damaged
/// copy): they still take room. Returns the backups to age, oldest first, and whether
/// that makes enough room.
pub fn plan_room_around(
    capacity: Capacity,
    present: &[BackupView],
    stuck: &dyn Fn(&BackupId) -> bool,
    incoming: u64,
    incoming_bytes: u64,
) -> (Vec<BackupId>, bool) {
    let mut sorted: Vec<&BackupView> = present.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut count = sorted.len() as u64;
    let mut bytes: u64 = sorted.iter().map(|b| b.size_bytes).sum();
    let fits = |count, bytes| capacity.has_room(count, bytes, incoming, incoming_bytes);
    let mut out = Vec::new();
    for b in sorted {
        if fits(count, bytes) {
            break;
        }
        if stuck(&b.id) {
            continue;
        }
        out.push(b.id.clone());
        count -= 1;
        bytes -= b.size_bytes;
    }
    (out, fits(count, bytes))
}

/// The schedule handed to every policy: T1 and T2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// T1: time between scheduled backups.
    pub interval: Duration,
    /// T2: time a backup stays in the black box before it ages.
    pub aging: Duration,
}

/// When the next scheduled backup is due, given the last scheduled attempt's time and
/// the interval the policy gives: `interval` after it, or now if that has passed.
pub fn next_scheduled(
    interval: Duration,
    last: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> OffsetDateTime {
    match last {
        Some(last) => {
            let due = last + interval;
            if due < now { now } else { due }
        }
        None => now,
    }
}

/// Parses a human duration: `90s`, `15m`, `4h`, `2d`, `1w`, a sum such as `1h30m` or
/// `1h 30m`, or anything else [`humantime::parse_duration`] reads (`500ms`, `1.5h`,
/// `2 hours`, `1y` = 365.25 days), with the differences kept from tierkeep's own parser:
///
/// - a bare number (`10`, even `0`) is refused: it has no unit (humantime reads `0` as
///   zero);
/// - units are lowercase: any uppercase letter is refused (humantime reads `M` as
///   months, a trap beside `m` for minutes);
/// - the error messages name the text and what was expected, as before.
///
/// What humantime adds over the parser it replaced: sub-second units (`ms`, `us`, `ns`),
/// fractions (`1.5h`), `months`/`years`, and digits separated by spaces (`1 0s` is 10 s).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{text}` has no unit: write e.g. {t}s, {t}m or {t}h"
        ));
    }
    if let Some(c) = t.chars().find(char::is_ascii_uppercase) {
        return Err(format!(
            "`{text}`: units are lowercase (`{c}`): e.g. 90s, 15m, 4h, 2d or 1h30m"
        ));
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("`{text}` has no unit: write e.g. {value}s, {value}m or {value}h")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("`{text}`: unknown unit `{unit}`")
        }
        humantime::DurationError::NumberOverflow => format!("`{text}` is too long"),
        humantime::DurationError::Empty => "empty duration".into(),
        humantime::DurationError::InvalidCharacter(_)
        | humantime::DurationError::NumberExpected(_) => {
            format!("`{text}` is not a duration: expected e.g. 90s, 15m, 4h, 2d or 1h30m")
        }
    })
}

/// Formats a duration the way [`parse_duration`] reads it: days, hours, minutes and
/// seconds run together (`1d2h`, `1h30m`, `0s`), and a part of a second as `ms`, `us` or
/// `ns` (`1s500ms`). Not [`humantime::format_duration`], which writes `1h 30m`, `2days`
/// and months: operators' status lines and audit reasons keep this form.
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    let nanos = d.subsec_nanos();
    if s == 0 && nanos == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    if nanos > 0 {
        let (n, unit) = if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, "ms")
        } else if nanos.is_multiple_of(1000) {
            (nanos / 1000, "us")
        } else {
            (nanos, "ns")
        };
        out.push_str(&format!("{n}{unit}"));
    }
    out
}

/// Parses a human size: `512`, `10KB`, `500GiB`, `1.5TiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let num_len = t
        .bytes()
        .take_while(|c| c.is_ascii_digit() || *c == b'.')
        .count();
    if num_len == 0 {
        return Err(format!(
            "`{text}` is not a size: expected e.g. 500GiB or 10GB"
        ));
    }
    let num: f64 = t[..num_len]
        .parse()
        .map_err(|_| format!("`{text}` is not a size: bad number"))?;
    let unit = t[num_len..].trim();
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("`{text}`: unknown size unit `{unit}`")),
    };
    let v = num * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(v.round() as u64)
}

/// Formats a byte count with binary units (`1.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Milliseconds since the Unix epoch, truncated toward zero: the timestamps of the policy
/// contract. The same as `t.unix_timestamp_nanos() / 1_000_000`, without the 128-bit
/// division (this runs for every backup handed to a policy).
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    let secs = t.unix_timestamp();
    let nanos = i64::from(t.nanosecond());
    // Before the epoch the seconds are floored and the nanoseconds count up from them:
    // truncating toward zero rounds a partial millisecond up there.
    let part = nanos / 1_000_000 + i64::from(secs < 0 && nanos % 1_000_000 != 0);
    secs.saturating_mul(1000).saturating_add(part)
}

/// Formats a time as RFC 3339 in UTC.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests;
