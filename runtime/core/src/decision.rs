//! The decision engine: asks a policy ([`Rules`]) for the interval, aging and eviction,
//! checks every answer, and replaces a faulty one by the built-in rules for that
//! decision. Pure: the time is in the [`PolicyContext`], the policy is behind a trait
//! (the wasm host implements it; [`BuiltinRules`] is the native reference).
//!
//! What is checked:
//! - interval: between [`MIN_INTERVAL`] and [`MAX_INTERVAL`];
//! - aging: only ids of black-box backups it was given, none twice;
//! - eviction: only ids of deletion-zone backups it was given, none twice, and enough
//!   of them to make the room asked for (the host evicts from the front until it fits).
//!
//! A trap, an exhausted fuel or memory budget, or a refused answer is a [`PolicyFault`];
//! the decision then comes from the built-in rules, and the fault is reported with it.

use std::collections::HashSet;
use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::{BackupId, BackupView, Capacity, Schedule, Usage, Zone, plan_aging};

/// The shortest interval a policy may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval a policy may ask for.
pub const MAX_INTERVAL: Duration = Duration::from_secs(31 * 24 * 3600);

/// A zone's capacity and usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneSnapshot {
    /// Which zone.
    pub zone: Zone,
    /// How much it may hold.
    pub capacity: Capacity,
    /// How much it holds.
    pub usage: Usage,
}

/// A recent scheduled backup attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// When it ran.
    pub at: OffsetDateTime,
    /// Whether it produced a backup.
    pub succeeded: bool,
}

/// Everything a decision may depend on.
#[derive(Debug, Clone)]
pub struct PolicyContext {
    /// The current time (from the caller's clock).
    pub now: OffsetDateTime,
    /// T1 and T2.
    pub schedule: Schedule,
    /// Black box, deletion, reserved.
    pub zones: [ZoneSnapshot; 3],
    /// Recent scheduled attempts, newest first.
    pub recent: Vec<Attempt>,
    /// The policy's settings as JSON.
    pub settings: String,
}

impl PolicyContext {
    /// The snapshot of `zone`.
    pub fn zone(&self, zone: Zone) -> &ZoneSnapshot {
        match zone {
            Zone::BlackBox => &self.zones[0],
            Zone::Deletion => &self.zones[1],
            Zone::Reserved => &self.zones[2],
        }
    }
}

/// Room an eviction must make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Room {
    /// Backups about to arrive.
    pub backups: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Why a policy's answer was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyFault {
    /// It trapped (a panic, an out-of-bounds access, ...).
    #[error("trapped: {0}")]
    Trap(String),
    /// It ran out of fuel (a loop, or too much work).
    #[error("ran out of its time budget (fuel): stopped")]
    OutOfFuel,
    /// It tried to use more memory than allowed.
    #[error("exceeded its memory cap: stopped")]
    OutOfMemory,
    /// It answered, but the answer breaks the contract.
    #[error("refused answer: {0}")]
    BadAnswer(String),
    /// It could not be run at all.
    #[error("could not run: {0}")]
    Unavailable(String),
}

/// A policy, as the decision engine sees it.
pub trait Rules {
    /// The policy's name, for logs.
    fn name(&self) -> &str;
    /// Milliseconds to the next scheduled backup.
    fn interval(&self, ctx: &PolicyContext) -> Result<u64, PolicyFault>;
    /// Ids of black-box backups to age now.
    fn aging(
        &self,
        ctx: &PolicyContext,
        black_box: &[BackupView],
    ) -> Result<Vec<String>, PolicyFault>;
    /// Deletion-zone backups in eviction order.
    fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: Room,
    ) -> Result<Vec<String>, PolicyFault>;
}

/// The built-in rules (the patent's): interval T1, age after T2, evict the earliest.
/// The fallback for every faulty answer, and the reference the `default` component is
/// tested against.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinRules;

impl Rules for BuiltinRules {
    fn name(&self) -> &str {
        "built-in default"
    }

    fn interval(&self, ctx: &PolicyContext) -> Result<u64, PolicyFault> {
        Ok(u64::try_from(ctx.schedule.interval.as_millis()).unwrap_or(u64::MAX))
    }

    fn aging(
        &self,
        ctx: &PolicyContext,
        black_box: &[BackupView],
    ) -> Result<Vec<String>, PolicyFault> {
        Ok(plan_aging(&ctx.schedule, ctx.now, black_box)
            .into_iter()
            .map(|id| id.to_string())
            .collect())
    }

    fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: Room,
    ) -> Result<Vec<String>, PolicyFault> {
        let mut v: Vec<&BackupView> = deletion.iter().collect();
        v.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        // The earliest first, as many as make room (all of them if even that does not).
        let capacity = ctx.zone(Zone::Deletion).capacity;
        let mut count = deletion.len() as u64;
        let mut bytes: u64 = deletion.iter().map(|b| b.size_bytes).sum();
        let mut out = Vec::new();
        for b in v {
            if fits(capacity, room, count, bytes) {
                break;
            }
            count -= 1;
            bytes -= b.size_bytes;
            out.push(b.id.to_string());
        }
        Ok(out)
    }
}

/// A decision and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    /// What to do.
    pub value: T,
    /// The policy that decided (its name, or the built-in rules').
    pub by: String,
    /// Why the policy's own answer was not used, if it was not.
    pub fault: Option<PolicyFault>,
}

/// Checks an interval.
pub fn check_interval(ms: u64) -> Result<Duration, PolicyFault> {
    let d = Duration::from_millis(ms);
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(PolicyFault::BadAnswer(format!(
            "interval of {ms} ms is outside the host's limits (1 s to 31 days)"
        )));
    }
    Ok(d)
}

fn pick(answer: &[String], given: &[BackupView], what: &str) -> Result<Vec<BackupId>, PolicyFault> {
    if answer.is_empty() {
        return Ok(Vec::new());
    }
    // A short answer (the usual one: what makes room) is looked up directly; a long one
    // through an index, so that checking stays linear in the number of backups.
    let index: Option<std::collections::HashMap<&str, &BackupView>> =
        (answer.len() > 8).then(|| given.iter().map(|b| (b.id.as_str(), b)).collect());
    let find = |id: &str| match &index {
        Some(map) => map.get(id).copied(),
        None => given.iter().find(|b| b.id.as_str() == id),
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(answer.len());
    for id in answer {
        let Some(b) = find(id) else {
            return Err(PolicyFault::BadAnswer(format!(
                "{what}: `{id}` is not one of the {} backups it was given",
                given.len()
            )));
        };
        if !seen.insert(id.as_str()) {
            return Err(PolicyFault::BadAnswer(format!(
                "{what}: `{id}` named twice"
            )));
        }
        out.push(b.id.clone());
    }
    Ok(out)
}

/// Checks an aging answer.
pub fn check_aging(
    answer: &[String],
    black_box: &[BackupView],
) -> Result<Vec<BackupId>, PolicyFault> {
    pick(answer, black_box, "aging")
}

/// Whether `room` fits in a zone of `capacity` holding `count` backups of `bytes`.
fn fits(capacity: Capacity, room: Room, count: u64, bytes: u64) -> bool {
    capacity.has_room(count, bytes, room.backups, room.bytes)
}

/// Checks an eviction answer and returns the prefix to evict so that `room` fits in
/// `capacity`.
pub fn check_eviction(
    answer: &[String],
    deletion: &[BackupView],
    capacity: Capacity,
    room: Room,
) -> Result<Vec<BackupId>, PolicyFault> {
    let order = pick(answer, deletion, "eviction")?;
    let mut count = deletion.len() as u64;
    let mut bytes: u64 = deletion.iter().map(|b| b.size_bytes).sum();
    let fits = |count: u64, bytes: u64| fits(capacity, room, count, bytes);
    let sizes: std::collections::HashMap<&BackupId, u64> = if order.len() > 8 {
        deletion.iter().map(|b| (&b.id, b.size_bytes)).collect()
    } else {
        Default::default()
    };
    let mut out = Vec::new();
    for id in order {
        if fits(count, bytes) {
            break;
        }
        let size = sizes.get(&id).copied().unwrap_or_else(|| {
            deletion
                .iter()
                .find(|b| b.id == id)
                .map_or(0, |b| b.size_bytes)
        });
        count -= 1;
        bytes -= size;
        out.push(id);
    }
    if !fits(count, bytes) {
        return Err(PolicyFault::BadAnswer(format!(
            "eviction: the {} backups named do not make room for {} more in a zone of {}",
            answer.len(),
            room.backups,
            capacity.max_backups
        )));
    }
    Ok(out)
}

/// Asks `rules`, checks, and falls back to the built-in rules on a fault.
#[derive(Clone, Copy)]
pub struct Decider<'a> {
    /// The policy in charge.
    pub rules: &'a dyn Rules,
}

impl std::fmt::Debug for Decider<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("rules", &self.rules.name())
            .finish()
    }
}

impl Decider<'_> {
    fn decide<T>(
        &self,
        ask: impl FnOnce(&dyn Rules) -> Result<T, PolicyFault>,
        builtin: impl FnOnce() -> T,
    ) -> Decision<T> {
        match ask(self.rules) {
            Ok(value) => Decision {
                value,
                by: self.rules.name().to_owned(),
                fault: None,
            },
            Err(fault) => Decision {
                value: builtin(),
                by: BuiltinRules.name().to_owned(),
                fault: Some(fault),
            },
        }
    }

    /// The interval to the next scheduled backup.
    pub fn interval(&self, ctx: &PolicyContext) -> Decision<Duration> {
        self.decide(
            |r| check_interval(r.interval(ctx)?),
            || ctx.schedule.interval.clamp(MIN_INTERVAL, MAX_INTERVAL),
        )
    }

    /// Black-box backups to age now.
    pub fn aging(&self, ctx: &PolicyContext, black_box: &[BackupView]) -> Decision<Vec<BackupId>> {
        self.decide(
            |r| check_aging(&r.aging(ctx, black_box)?, black_box),
            || plan_aging(&ctx.schedule, ctx.now, black_box),
        )
    }

    /// Deletion-zone backups to evict (in order) so that `room` fits. Asks the policy
    /// only when the zone does not already have the room.
    pub fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: Room,
    ) -> Decision<Vec<BackupId>> {
        let capacity = ctx.zone(Zone::Deletion).capacity;
        let builtin = || {
            let order = BuiltinRules
                .eviction(ctx, deletion, room)
                .unwrap_or_default();
            // The built-in order always makes room unless the room asked for exceeds
            // the zone; then it evicts everything it can.
            check_eviction(&order, deletion, capacity, room)
                .unwrap_or_else(|_| order.iter().filter_map(|id| id.parse().ok()).collect())
        };
        if check_eviction(&[], deletion, capacity, room).is_ok() {
            return Decision {
                value: Vec::new(),
                by: self.rules.name().to_owned(),
                fault: None,
            };
        }
        self.decide(
            |r| check_eviction(&r.eviction(ctx, deletion, room)?, deletion, capacity, room),
            builtin,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BackupKind;
    use time::macros::datetime;

    fn views(n: u64) -> Vec<BackupView> {
        (0..n)
            .map(|i| {
                let at = datetime!(2026-11-25 00:00 UTC) + Duration::from_secs(3600 * i);
                BackupView {
                    id: BackupId::new(at, i),
                    created_at: at,
                    size_bytes: 10,
                    kind: BackupKind::Scheduled,
                }
            })
            .collect()
    }

    fn ids(v: &[BackupView], idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| v[i].id.to_string()).collect()
    }

    #[test]
    fn answers_are_checked() {
        assert!(check_interval(0).is_err());
        assert!(check_interval(999).is_err());
        assert!(check_interval(1000).is_ok());
        assert!(check_interval(32 * 24 * 3_600_000).is_err());
        let v = views(4);
        assert_eq!(check_aging(&ids(&v, &[2, 0]), &v).map(|x| x.len()), Ok(2));
        assert!(check_aging(&ids(&v, &[1, 1]), &v).is_err(), "twice");
        assert!(check_aging(&["nope".into()], &v).is_err(), "not given");
        let cap = Capacity {
            max_backups: 4,
            max_bytes: None,
        };
        let room = Room {
            backups: 2,
            bytes: 20,
        };
        // Two must go; the answer's order is kept and only its prefix is used.
        let out = check_eviction(&ids(&v, &[3, 1, 0]), &v, cap, room).expect("enough");
        assert_eq!(
            out.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ids(&v, &[3, 1])
        );
        assert!(
            check_eviction(&ids(&v, &[3]), &v, cap, room).is_err(),
            "too few"
        );
        // Bytes: 40 present, cap 35, room 10 → 15 must go → two backups.
        let bytes_cap = Capacity {
            max_backups: 100,
            max_bytes: Some(35),
        };
        let room = Room {
            backups: 1,
            bytes: 10,
        };
        let out = check_eviction(&ids(&v, &[0, 1, 2]), &v, bytes_cap, room).expect("bytes");
        assert_eq!(out.len(), 2);
    }

    struct Liar;
    impl Rules for Liar {
        fn name(&self) -> &str {
            "liar"
        }
        fn interval(&self, _: &PolicyContext) -> Result<u64, PolicyFault> {
            Ok(0)
        }
        fn aging(&self, _: &PolicyContext, _: &[BackupView]) -> Result<Vec<String>, PolicyFault> {
            Err(PolicyFault::OutOfFuel)
        }
        fn eviction(
            &self,
            _: &PolicyContext,
            _: &[BackupView],
            _: Room,
        ) -> Result<Vec<String>, PolicyFault> {
            Ok(vec![])
        }
    }

    #[test]
    fn faulty_answers_fall_back_to_the_builtin_rules() {
        let v = views(5);
        let cap = |n| Capacity {
            max_backups: n,
            max_bytes: None,
        };
        let snap = |zone, n, used| ZoneSnapshot {
            zone,
            capacity: cap(n),
            usage: Usage {
                backups: used,
                bytes: used * 10,
            },
        };
        let ctx = PolicyContext {
            now: datetime!(2026-11-25 06:00 UTC),
            schedule: Schedule {
                interval: Duration::from_secs(3600),
                aging: Duration::from_secs(3 * 3600),
            },
            zones: [
                snap(Zone::BlackBox, 5, 5),
                snap(Zone::Deletion, 5, 5),
                snap(Zone::Reserved, 5, 0),
            ],
            recent: vec![],
            settings: String::new(),
        };
        let d = Decider { rules: &Liar };
        let i = d.interval(&ctx);
        assert_eq!(i.value, Duration::from_secs(3600));
        assert!(matches!(i.fault, Some(PolicyFault::BadAnswer(_))));
        let a = d.aging(&ctx, &v);
        assert_eq!(a.fault, Some(PolicyFault::OutOfFuel));
        assert_eq!(a.value.len(), 4, "06:00 minus T2 = 03:00: four are due");
        let e = d.eviction(&ctx, &v, Room::default());
        assert_eq!(
            e.value,
            Vec::<BackupId>::new(),
            "the zone fits: nothing asked"
        );
        let e = d.eviction(
            &ctx,
            &v,
            Room {
                backups: 1,
                bytes: 10,
            },
        );
        assert!(e.fault.is_some(), "an empty order cannot make room");
        assert_eq!(e.value, vec![v[0].id.clone()], "the earliest goes");
        assert_eq!(e.by, "built-in default");
    }
}
