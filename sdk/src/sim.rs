//! Run a policy natively over a simulated timeline, to test what it does over weeks in
//! milliseconds. The timeline runs tierkeep's own lifecycle planner
//! (`tierkeep_core::plan`), the one the host's engine, its daemon and `tierkeep policy
//! simulate` carry out, with the host's checks of every answer and its fallback to the
//! built-in rules: at each interval the policy gives, a scheduled attempt (every
//! `fail_every`-th fails); before a backup is made, room in a full black box by aging its
//! oldest early; then a pass of the lifecycle (the policy's aging, each move preceded by
//! the evictions in the policy's order that make room for it, and a deletion zone over
//! its capacity brought back within it). Every step succeeds. (`tierkeep policy
//! simulate` runs a built `.wasm` through the real host the same way.)
//!
//! A policy's answer that the host would refuse (an interval outside 1 s to 31 days, an
//! id it was not given, an id named twice, an eviction order that cannot make room) or
//! a panic in the policy (a trap in wasm) is replaced by the built-in rules' answer for
//! that decision, as on the host, and reported in [`Report::faults`].
//!
//! Native only: not compiled for `wasm32` (a policy module has no use for it).

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tierkeep_core::decision::{self, Attempt, PolicyContext, PolicyFault, Rules};
use tierkeep_core::domain::{self, BackupId, BackupView, Capacity, Schedule, Usage, unix_ms as ms};
use tierkeep_core::plan::{self, Action, Asked, Plan, State};
use tierkeep_core::simulate;
use time::OffsetDateTime;

use crate::{Backup, BackupKind, Context, Policy, Room, Zone};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Sim {
    /// Start time (ms since the epoch).
    pub start: i64,
    /// How long to run (ms).
    pub duration: u64,
    /// The context template: schedule, capacities, settings, recent attempts and the
    /// reserved zone's usage (the other zones' usage is filled in). A zone missing from
    /// it has no limit.
    pub context: Context,
    /// Every n-th scheduled attempt fails (`0`: none).
    pub fail_every: u64,
    /// Size of each backup.
    pub backup_size: u64,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A scheduled backup was made: when, and its id (the host's id format,
    /// `20261125T135337.123Z-00000000002a`, which sorts by creation time).
    Created(i64, String),
    /// A scheduled attempt failed.
    Failed(i64),
    /// The host did not admit a scheduled backup (its black box could not be made room
    /// in): nothing was written.
    Refused(i64),
    /// A backup moved to the deletion zone.
    Aged(i64, String),
    /// A backup was evicted from the deletion zone.
    Evicted(i64, String),
}

/// A decision in which the policy's answer was not used: the built-in rules decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When (ms since the epoch).
    pub at: i64,
    /// `interval`, `aging` or `eviction`.
    pub decision: &'static str,
    /// Why, as the host logs it (e.g. `refused answer: aging: ... named twice`).
    pub reason: String,
}

/// The outcome.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Everything, in order.
    pub events: Vec<Event>,
    /// Backups left in the black box, oldest first.
    pub black_box: Vec<Backup>,
    /// Backups left in the deletion zone, oldest first.
    pub deletion: Vec<Backup>,
    /// Decisions the policy answered itself (and the host accepted).
    pub decisions: u64,
    /// Decisions in which the built-in rules replaced the policy's answer, in order.
    pub faults: Vec<Fault>,
}

impl Report {
    /// Ids evicted, in order.
    pub fn evicted(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Evicted(_, id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Ids aged into the deletion zone, in order.
    pub fn aged(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Aged(_, id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// `P` as the host's decision engine sees a policy: each call converts the core's types
/// to the contract's, as the wasm host does, and goes through the same entry points as
/// the module's export (settings parsed from the context's JSON). A panic is a trap.
struct Native<P> {
    name: String,
    policy: PhantomData<fn() -> P>,
}

impl<P: Policy> Native<P> {
    fn new() -> Self {
        Native {
            name: P::metadata().name,
            policy: PhantomData,
        }
    }
}

fn call<T>(f: impl FnOnce() -> T) -> Result<T, PolicyFault> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic in the policy");
        PolicyFault::Trap(format!("panicked: {message}"))
    })
}

impl<P: Policy> Rules for Native<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn interval(&self, ctx: &PolicyContext) -> Result<u64, PolicyFault> {
        let c = to_context(ctx);
        call(|| crate::__private::interval::<P>(&c))
    }

    fn aging(
        &self,
        ctx: &PolicyContext,
        black_box: &[BackupView],
    ) -> Result<Vec<String>, PolicyFault> {
        let c = to_context(ctx);
        let list = to_backups(black_box);
        call(|| crate::__private::aging::<P>(&c, &list))
    }

    fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: decision::Room,
    ) -> Result<Vec<String>, PolicyFault> {
        let c = to_context(ctx);
        let list = to_backups(deletion);
        let room = Room {
            backups: room.backups,
            bytes: room.bytes,
        };
        call(|| crate::__private::eviction::<P>(&c, &list, room))
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or_else(|_| {
        panic!("sim: {ms} ms since the epoch is outside the years -9999 to 9999")
    })
}

fn zone_from_core(zone: domain::Zone) -> Zone {
    match zone {
        domain::Zone::BlackBox => Zone::BlackBox,
        domain::Zone::Deletion => Zone::Deletion,
        domain::Zone::Reserved => Zone::Reserved,
    }
}

fn to_context(ctx: &PolicyContext) -> Context {
    Context {
        now: ms(ctx.now),
        schedule: crate::Schedule {
            interval: duration_ms(ctx.schedule.interval),
            aging: duration_ms(ctx.schedule.aging),
        },
        zones: ctx
            .zones
            .iter()
            .map(|z| crate::ZoneState {
                zone: zone_from_core(z.zone),
                max_backups: z.capacity.max_backups,
                max_bytes: z.capacity.max_bytes,
                backups: z.usage.backups,
                bytes: z.usage.bytes,
            })
            .collect(),
        recent: ctx
            .recent
            .iter()
            .take(32)
            .map(|a| crate::Attempt {
                at: ms(a.at),
                succeeded: a.succeeded,
            })
            .collect(),
        settings: ctx.settings.clone(),
    }
}

fn to_backup(b: &BackupView) -> Backup {
    Backup {
        id: b.id.to_string(),
        kind: match b.kind {
            domain::BackupKind::Scheduled => BackupKind::Scheduled,
            domain::BackupKind::Manual => BackupKind::Manual,
        },
        created_at: ms(b.created_at),
        size_bytes: b.size_bytes,
    }
}

fn to_backups(list: &[BackupView]) -> Vec<Backup> {
    list.iter().map(to_backup).collect()
}

/// The planner's starting state from the simulation's template.
fn initial_state(sim: &Sim) -> State {
    let template = &sim.context;
    let zone = |z: Zone| template.zones.iter().find(|s| s.zone == z);
    let capacity = |z: Zone| {
        zone(z).map_or(
            Capacity {
                max_backups: u64::MAX,
                max_bytes: None,
            },
            |s| Capacity {
                max_backups: s.max_backups,
                max_bytes: s.max_bytes,
            },
        )
    };
    State {
        now: at(sim.start),
        schedule: Schedule {
            interval: std::time::Duration::from_millis(template.schedule.interval),
            aging: std::time::Duration::from_millis(template.schedule.aging),
        },
        capacities: [
            capacity(Zone::BlackBox),
            capacity(Zone::Deletion),
            capacity(Zone::Reserved),
        ],
        black_box: Vec::new(),
        deletion: Vec::new(),
        reserved: zone(Zone::Reserved).map_or(Usage::default(), |s| Usage {
            backups: s.backups,
            bytes: s.bytes,
        }),
        damaged: Default::default(),
        recent: template
            .recent
            .iter()
            .map(|a| Attempt {
                at: at(a.at),
                succeeded: a.succeeded,
            })
            .collect(),
        settings: template.settings.clone(),
    }
}

fn note(r: &mut Report, now: i64, decision: &'static str, fault: Option<&PolicyFault>) {
    match fault {
        None => r.decisions += 1,
        Some(f) => r.faults.push(Fault {
            at: now,
            decision,
            reason: f.to_string(),
        }),
    }
}

fn count(r: &mut Report, now: i64, asked: &[Asked]) {
    for a in asked {
        note(r, now, a.decision, a.fault.as_ref());
    }
}

/// Records a plan's steps as events (the planner has carried them out on the state).
fn record(r: &mut Report, state: &State, plan: &Plan) {
    let now = ms(state.now);
    count(r, now, &plan.asked);
    for step in &plan.steps {
        r.events.push(match &step.action {
            Action::Age { id, .. } => Event::Aged(now, id.to_string()),
            Action::Evict { id } => Event::Evicted(now, id.to_string()),
        });
    }
}

fn oldest_first(list: &[BackupView]) -> Vec<Backup> {
    let mut v: Vec<&BackupView> = list.iter().collect();
    v.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    v.into_iter().map(to_backup).collect()
}

/// Runs `P` over the timeline through the host's lifecycle planner.
///
/// # Panics
///
/// When the timeline leaves the years -9999 to 9999 (the host's clock range).
pub fn run<P: Policy>(sim: &Sim) -> Report {
    let rules = Native::<P>::new();
    let mut r = Report::default();
    let mut state = initial_state(sim);
    let end = sim
        .start
        .saturating_add(i64::try_from(sim.duration).unwrap_or(i64::MAX));
    let mut attempts = 0u64;
    let mut n = 0u64;
    while ms(state.now) < end {
        let now = ms(state.now);
        attempts += 1;
        let failed = sim.fail_every > 0 && attempts.is_multiple_of(sim.fail_every);
        state.recent.insert(
            0,
            Attempt {
                at: state.now,
                succeeded: !failed,
            },
        );
        state.recent.truncate(32);
        if failed {
            r.events.push(Event::Failed(now));
        } else {
            let room = plan::plan_room_on(&mut state, &rules, 1, sim.backup_size);
            record(&mut r, &state, &room);
            if simulate::admitted(&state, sim.backup_size) {
                n += 1;
                let b = BackupView {
                    id: BackupId::new(state.now, n),
                    created_at: state.now,
                    size_bytes: sim.backup_size,
                    kind: domain::BackupKind::Scheduled,
                };
                r.events.push(Event::Created(now, b.id.to_string()));
                state.black_box.push(b);
            } else {
                r.events.push(Event::Refused(now));
            }
        }
        let tick = plan::plan_tick_on(&mut state, &rules);
        record(&mut r, &state, &tick);
        let interval = plan::plan_interval(&state, &rules);
        note(&mut r, now, "interval", interval.fault.as_ref());
        state.now =
            at(now.saturating_add(i64::try_from(duration_ms(interval.value)).unwrap_or(i64::MAX)));
    }
    r.black_box = oldest_first(&state.black_box);
    r.deletion = oldest_first(&state.deletion);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{context, with_settings};
    use crate::time::{DAY, HOUR, MINUTE};
    use crate::{Metadata, oldest_first as sdk_oldest_first};

    struct Builtin;
    impl Policy for Builtin {
        type Settings = ();
        fn metadata() -> Metadata {
            crate::metadata("builtin", "0.0.0", "the defaults", vec![])
        }
    }

    /// Evicts the newest first, and keeps the newest backup in the black box.
    struct Newest;
    impl Policy for Newest {
        type Settings = ();
        fn metadata() -> Metadata {
            crate::metadata("newest", "0.0.0", "evicts the newest first", vec![])
        }
        fn eviction(_: &Context, _: &(), deletion: &[Backup], _: Room) -> Vec<String> {
            let mut v = sdk_oldest_first(deletion);
            v.reverse();
            v.into_iter().map(|b| b.id.clone()).collect()
        }
    }

    /// Answers the host refuses, for every decision.
    struct Liar;
    impl Policy for Liar {
        type Settings = ();
        fn metadata() -> Metadata {
            crate::metadata("liar", "0.0.0", "lies", vec![])
        }
        fn interval(_: &Context, _: &()) -> u64 {
            0
        }
        fn aging(_: &Context, _: &(), black_box: &[Backup]) -> Vec<String> {
            black_box
                .iter()
                .flat_map(|b| [b.id.clone(), b.id.clone()])
                .collect()
        }
        fn eviction(_: &Context, _: &(), _: &[Backup], _: Room) -> Vec<String> {
            Vec::new()
        }
    }

    /// Panics in aging.
    struct Panics;
    impl Policy for Panics {
        type Settings = ();
        fn metadata() -> Metadata {
            crate::metadata("panics", "0.0.0", "panics", vec![])
        }
        fn aging(_: &Context, _: &(), _: &[Backup]) -> Vec<String> {
            panic!("boom")
        }
    }

    fn sim(duration: u64) -> Sim {
        Sim {
            start: 0,
            duration,
            context: context(0),
            fail_every: 0,
            backup_size: 1 << 20,
        }
    }

    #[test]
    fn the_defaults_age_after_t2_and_evict_the_earliest() {
        // T1 = 1h, T2 = 4h, zones 3/30: 40 hourly backups.
        let r = run::<Builtin>(&sim(40 * HOUR));
        assert!(r.faults.is_empty(), "{:?}", r.faults);
        let created: Vec<&str> = r
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Created(_, id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 40);
        assert_eq!(created[0], "19700101T000000.000Z-000000000001");
        // The black box holds 3: each new backup ages the oldest early (T2 = 4h is never
        // reached), so the three newest are left.
        assert_eq!(r.black_box.len(), 3);
        assert_eq!(r.black_box[2].id, created[39]);
        // 37 aged, the deletion zone keeps 30: the 7 earliest were evicted, in order.
        assert_eq!(r.aged().len(), 37);
        assert_eq!(r.deletion.len(), 30);
        assert_eq!(r.evicted(), created[..7].to_vec());
    }

    #[test]
    fn eviction_follows_the_policys_order() {
        let r = run::<Newest>(&sim(40 * HOUR));
        assert!(r.faults.is_empty(), "{:?}", r.faults);
        assert_eq!(r.deletion.len(), 30);
        // Each eviction takes the newest in the zone: the earliest 29 stay.
        let aged = r.aged();
        assert_eq!(
            r.deletion
                .iter()
                .take(29)
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>(),
            aged[..29].to_vec()
        );
    }

    #[test]
    fn refused_answers_fall_back_to_the_builtin_rules() {
        let r = run::<Liar>(&sim(40 * HOUR));
        // Interval 0: refused, T1 instead (40 attempts in 40 hours).
        let created = r
            .events
            .iter()
            .filter(|e| matches!(e, Event::Created(..)))
            .count();
        assert_eq!(created, 40);
        // The same zones as the defaults give: every refused answer was replaced.
        let builtin = run::<Builtin>(&sim(40 * HOUR));
        assert_eq!(r.events, builtin.events);
        assert_eq!(r.decisions, 0, "no answer of the liar was used");
        let kinds = |d: &str| r.faults.iter().filter(|f| f.decision == d).count();
        assert_eq!(kinds("interval"), 40);
        assert_eq!(kinds("aging"), 40);
        assert_eq!(kinds("eviction"), 7, "asked only when the zone was full");
        let twice = r
            .faults
            .iter()
            .find(|f| f.decision == "aging")
            .expect("aging");
        assert!(twice.reason.contains("named twice"), "{}", twice.reason);
        let short = r
            .faults
            .iter()
            .find(|f| f.decision == "eviction")
            .expect("eviction");
        assert!(
            short.reason.contains("do not make room"),
            "{}",
            short.reason
        );
    }

    #[test]
    fn a_panic_is_a_trap_and_the_builtin_rules_decide() {
        let mut s = sim(10 * HOUR);
        s.context.zones[0].max_backups = 100;
        let r = run::<Panics>(&s);
        assert_eq!(r.faults.len(), 10);
        assert!(r.faults[0].reason.contains("boom"), "{:?}", r.faults[0]);
        // Aged after T2 all the same: hours 0..=5 by hour 9.
        assert_eq!(r.aged().len(), 6);
    }

    #[test]
    fn failures_settings_and_the_recent_attempts_reach_the_policy() {
        /// Backs up every `minutes`, or every 2 minutes after a failure.
        #[derive(Default, serde::Deserialize)]
        struct Minutes {
            minutes: u64,
        }
        struct Backoff;
        impl Policy for Backoff {
            type Settings = Minutes;
            fn metadata() -> Metadata {
                crate::metadata("backoff", "0.0.0", "retries fast", vec![])
            }
            fn interval(ctx: &Context, s: &Minutes) -> u64 {
                match ctx.recent.first() {
                    Some(a) if !a.succeeded => 2 * MINUTE,
                    _ => s.minutes * MINUTE,
                }
            }
        }
        let mut s = sim(DAY);
        s.context = with_settings(context(0), r#"{"minutes": 30}"#);
        s.fail_every = 4;
        let r = run::<Backoff>(&s);
        assert!(r.faults.is_empty(), "{:?}", r.faults);
        let failed: Vec<i64> = r
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Failed(t) => Some(*t),
                _ => None,
            })
            .collect();
        // Attempts at 0, 30, 60, 90 (the 4th: fails), 92, 122, 152, 182 (the 8th: fails), ...
        let m = MINUTE as i64;
        assert_eq!(&failed[..2], &[90 * m, 182 * m]);
        assert!(r.events.contains(&Event::Created(
            92 * m,
            BackupId::new(at(92 * m), 4).to_string()
        )));
    }

    #[test]
    fn a_byte_limit_on_the_deletion_zone_evicts_by_size() {
        let mut s = sim(20 * HOUR);
        s.context.zones[1].max_bytes = Some(5 << 20);
        let r = run::<Builtin>(&s);
        assert!(r.faults.is_empty(), "{:?}", r.faults);
        assert_eq!(r.deletion.len(), 5);
        assert_eq!(r.evicted().len(), 20 - 3 - 5);
    }
}
