//! The lifecycle planner: the one place where aging, early aging and eviction are
//! decided. [`plan_tick`] (a pass of the lifecycle) and [`plan_room`] (room in the black
//! box for a new backup) take the zones' contents ([`State`]) and the policy
//! ([`Rules`], asked through the checking [`Decider`]) and return a [`Plan`]: steps,
//! each with its reason and who decided, in the order they must be carried out.
//!
//! The engine's executors (`tick`, a scheduled backup, the daemon) and `policy simulate`
//! and the SDK's native timeline all run these functions and only carry out the steps.
//! An executor stops at the first step that fails and plans again on its next pass; a
//! backup found damaged goes into [`State::damaged`] and the plan is made again at once,
//! so that one bad backup never blocks the others.
//!
//! A new backup's admission ([`plan_admission`]) is the last step of a backup's plan.
//! It is planned once the room steps have been carried out, because it depends on
//! whether they could be (a deletion zone that does not answer leaves the black box
//! full: black-box pressure).
//!
//! Planning is pure: it simulates each step on its copy of the state, so that every
//! decision sees the zones as they will be when its step runs (an eviction before a move
//! sees the deletion zone after the evictions and moves planned before it).

use std::collections::HashSet;
use std::time::Duration;

use time::OffsetDateTime;

use crate::decision::{
    Attempt, BuiltinRules, Decider, Decision, PolicyContext, PolicyFault, Room, Rules, ZoneSnapshot,
};
use crate::domain::{
    Admission, BackupId, BackupKind, BackupView, BlackBoxAdmission, Capacity, Schedule, Usage,
    Zone, admit_new_backup, admit_scheduled, format_duration, plan_room_around,
};

/// What the planner knows: the zones' contents at `now`.
#[derive(Debug, Clone)]
pub struct State {
    /// The current time (from the caller's clock).
    pub now: OffsetDateTime,
    /// T1 and T2.
    pub schedule: Schedule,
    /// Black box, deletion, reserved.
    pub capacities: [Capacity; 3],
    /// The black box's backups (any order).
    pub black_box: Vec<BackupView>,
    /// The deletion zone's backups (any order).
    pub deletion: Vec<BackupView>,
    /// What the reserved zone holds.
    pub reserved: Usage,
    /// Black-box backups whose copy is damaged: they stay, take room, never move.
    pub damaged: HashSet<BackupId>,
    /// Recent scheduled attempts, newest first.
    pub recent: Vec<Attempt>,
    /// The policy's settings (JSON).
    pub settings: String,
}

impl State {
    /// The policy context of this state.
    pub fn context(&self) -> PolicyContext {
        let snap = |zone: Zone, list: &[BackupView]| ZoneSnapshot {
            zone,
            capacity: self.capacities[zone.index()],
            usage: usage(list),
        };
        PolicyContext {
            now: self.now,
            schedule: self.schedule,
            zones: [
                snap(Zone::BlackBox, &self.black_box),
                snap(Zone::Deletion, &self.deletion),
                ZoneSnapshot {
                    zone: Zone::Reserved,
                    capacity: self.capacities[Zone::Reserved.index()],
                    usage: self.reserved,
                },
            ],
            recent: self.recent.clone(),
            settings: self.settings.clone(),
        }
    }
}

fn usage(list: &[BackupView]) -> Usage {
    Usage {
        backups: list.len() as u64,
        bytes: list.iter().map(|b| b.size_bytes).sum(),
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Move a black-box backup to the deletion zone (upload, verify, commit, remove).
    Age {
        /// The backup.
        id: BackupId,
        /// Its archive size.
        bytes: u64,
    },
    /// Evict a deletion-zone backup.
    Evict {
        /// The backup.
        id: BackupId,
    },
}

/// Why a step is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The policy's aging decision.
    Aging,
    /// A full black box ages its oldest early to make room for a new backup.
    MakeRoom,
    /// A black box over its capacity (taken beyond it under pressure) is brought back
    /// within it.
    OverCapacity,
    /// The deletion zone needs room (for a move, or it is over its capacity).
    Eviction,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What to do.
    pub action: Action,
    /// Why, in kind.
    pub cause: Cause,
    /// Why, for the audit trail.
    pub reason: String,
    /// Who decided: the policy's name, the built-in rules' (when they stood in for a
    /// faulty answer), or `host` for the host's own rule that a full black box ages its
    /// oldest early (no policy is asked for that).
    pub by: String,
}

/// A decision the planner asked for (the ones that asked the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// `aging` or `eviction`.
    pub decision: &'static str,
    /// Who decided.
    pub by: String,
    /// Why the policy's own answer was not used, if it was not.
    pub fault: Option<PolicyFault>,
}

/// What to do, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
    /// The decisions asked for on the way.
    pub asked: Vec<Asked>,
    /// When the black box cannot be brought within its capacity: the damaged backups
    /// that stay in the way (everything else is already planned to age).
    pub stuck: Vec<BackupId>,
}

struct Planner<'a> {
    rules: &'a dyn Rules,
    state: &'a mut State,
    plan: Plan,
}

impl Planner<'_> {
    fn capacity(&self, zone: Zone) -> Capacity {
        self.state.capacities[zone.index()]
    }

    fn note<T>(&mut self, decision: &'static str, d: &Decision<T>) {
        self.plan.asked.push(Asked {
            decision,
            by: d.by.clone(),
            fault: d.fault.clone(),
        });
    }

    /// Evicts, in the policy's order, until `room` fits in the deletion zone.
    fn make_room_in_deletion(&mut self, room: Room) {
        let ctx = self.state.context();
        let d = Decider { rules: self.rules }.eviction(&ctx, &self.state.deletion, room);
        if d.value.is_empty() && d.fault.is_none() {
            // It fits: nothing was asked.
            return;
        }
        self.note("eviction", &d);
        let order = match &d.fault {
            None if d.by == BuiltinRules.name() => {
                "the earliest is evicted first (built-in default rules)".to_owned()
            }
            None => format!("evicted in the order of policy {}", d.by),
            Some(f) => format!(
                "the earliest is evicted first (built-in rules; policy {} failed: {f})",
                self.rules.name()
            ),
        };
        let reason = format!(
            "deletion zone full ({} of {} backups): {order}",
            self.state.deletion.len(),
            self.capacity(Zone::Deletion).max_backups,
        );
        for id in d.value {
            let Some(i) = self.state.deletion.iter().position(|b| b.id == id) else {
                continue;
            };
            self.state.deletion.remove(i);
            self.plan.steps.push(Step {
                action: Action::Evict { id },
                cause: Cause::Eviction,
                reason: reason.clone(),
                by: d.by.clone(),
            });
        }
    }

    /// Moves black-box backup `i` to the deletion zone, evicting first to make room.
    fn age(&mut self, i: usize, cause: Cause, reason: String, by: String) {
        let bytes = self.state.black_box[i].size_bytes;
        self.make_room_in_deletion(Room { backups: 1, bytes });
        let b = self.state.black_box.remove(i);
        self.plan.steps.push(Step {
            action: Action::Age {
                id: b.id.clone(),
                bytes,
            },
            cause,
            reason,
            by,
        });
        self.state.deletion.push(b);
    }

    /// Ages the oldest backups early (passing over damaged ones) until `incoming` more
    /// (of `incoming_bytes`) fit in the black box.
    fn make_room_in_black_box(&mut self, incoming: u64, incoming_bytes: u64) {
        let cap = self.capacity(Zone::BlackBox);
        let damaged = &self.state.damaged;
        let (ids, enough) = plan_room_around(
            cap,
            &self.state.black_box,
            &|id| damaged.contains(id),
            incoming,
            incoming_bytes,
        );
        let held = self.state.black_box.len();
        let (cause, reason) = if incoming == 0 {
            (
                Cause::OverCapacity,
                format!(
                    "black box over its capacity ({held} of {} backups, taken under pressure): \
                     aged to bring it back within capacity",
                    cap.max_backups
                ),
            )
        } else {
            (
                Cause::MakeRoom,
                format!(
                    "black box full ({held} of {} backups): aged early to make room for a new \
                     backup",
                    cap.max_backups
                ),
            )
        };
        for id in ids {
            if let Some(i) = self.state.black_box.iter().position(|b| b.id == id) {
                self.age(i, cause, reason.clone(), "host".to_owned());
            }
        }
        if !enough {
            let mut stuck: Vec<BackupId> = self
                .state
                .black_box
                .iter()
                .filter(|b| self.state.damaged.contains(&b.id))
                .map(|b| b.id.clone())
                .collect();
            stuck.sort();
            self.plan.stuck = stuck;
        }
    }
}

/// One pass of the lifecycle at `state.now`: the policy's aging (each move preceded by
/// the evictions that make room for it), then a black box over its capacity brought
/// back within it, then a deletion zone over its capacity brought back within it.
pub fn plan_tick(mut state: State, rules: &dyn Rules) -> Plan {
    plan_tick_on(&mut state, rules)
}

/// [`plan_tick`], leaving `state` as it will be once every step has been carried out
/// (what a simulator needs; no copy of the state is made).
pub fn plan_tick_on(state: &mut State, rules: &dyn Rules) -> Plan {
    let mut p = Planner {
        rules,
        state,
        plan: Plan::default(),
    };
    let ctx = p.state.context();
    let d = Decider { rules }.aging(&ctx, &p.state.black_box);
    p.note("aging", &d);
    let now = p.state.now;
    let aging = p.state.schedule.aging;
    for id in d.value {
        if p.state.damaged.contains(&id) {
            continue;
        }
        let Some(i) = p.state.black_box.iter().position(|b| b.id == id) else {
            continue;
        };
        let held: Duration = (now - p.state.black_box[i].created_at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let reason = format!(
            "policy {} aged it after {} in the black box (T2 = {})",
            d.by,
            format_duration(held),
            format_duration(aging)
        );
        p.age(i, Cause::Aging, reason, d.by.clone());
    }
    p.make_room_in_black_box(0, 0);
    p.make_room_in_deletion(Room::default());
    p.plan
}

/// Room in the black box for `incoming` new backups of `incoming_bytes`: its oldest
/// backups aged early (damaged ones passed over), each move preceded by the evictions
/// that make room for it. [`Plan::stuck`] is set when that cannot make enough room.
pub fn plan_room(mut state: State, rules: &dyn Rules, incoming: u64, incoming_bytes: u64) -> Plan {
    plan_room_on(&mut state, rules, incoming, incoming_bytes)
}

/// [`plan_room`], leaving `state` as it will be once every step has been carried out.
pub fn plan_room_on(
    state: &mut State,
    rules: &dyn Rules,
    incoming: u64,
    incoming_bytes: u64,
) -> Plan {
    let mut p = Planner {
        rules,
        state,
        plan: Plan::default(),
    };
    p.make_room_in_black_box(incoming, incoming_bytes);
    p.plan
}

/// What the host knows of a new backup once the steps that make room for it were
/// carried out.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Scheduled (into the black box) or manual (into the reserved zone).
    pub kind: BackupKind,
    /// The error that kept the black box's oldest backups from aging out to make room,
    /// if they had to and could not.
    pub aging_failed: Option<&'a str>,
    /// Free bytes on the black box's filesystem, where known.
    pub available: Option<u64>,
    /// About how large the backup will be (the last one's size).
    pub estimate: u64,
    /// The free space the black box's filesystem must keep.
    pub min_free: u64,
}

/// Whether a new backup is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write it into `zone`.
    Admit {
        /// Its zone.
        zone: Zone,
        /// Black-box pressure: the zone is full and could not be made room in, so the
        /// newest data is taken beyond `max_backups` (this many held with it).
        beyond_capacity: Option<u64>,
    },
    /// Write nothing.
    Refuse {
        /// The zone it was for.
        zone: Zone,
        /// Why, for the error (the zone's fullness, or the disk's reserve).
        why: String,
        /// What the operator can do, where the rules know it.
        advice: Option<&'static str>,
    },
}

/// The admission step of a backup's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionStep {
    /// Admit or refuse.
    pub verdict: Verdict,
    /// Why, for the audit trail and the logs.
    pub reason: String,
    /// Who decided: always `host` (no policy decides admission).
    pub by: String,
}

/// Whether the new backup `incoming` is admitted into its zone as `state` holds it (the
/// state once its room steps were carried out). A manual backup is refused by a full
/// reserved zone, which is never made room in automatically; a scheduled one is refused
/// when it could leave the disk below its reserve, and taken beyond the black box's
/// capacity when only a failed aging kept room from being made.
pub fn plan_admission(state: &State, incoming: &Incoming) -> AdmissionStep {
    let zone = incoming.kind.home_zone();
    let capacity = state.capacities[zone.index()];
    let step = |verdict, reason| AdmissionStep {
        verdict,
        reason,
        by: "host".to_owned(),
    };
    if incoming.kind == BackupKind::Manual {
        return match admit_new_backup(incoming.kind, capacity, state.reserved) {
            Admission::Admit { zone } => step(
                Verdict::Admit {
                    zone,
                    beyond_capacity: None,
                },
                format!(
                    "the {zone} zone has room ({} of {} backups)",
                    state.reserved.backups, capacity.max_backups
                ),
            ),
            Admission::Refuse {
                zone,
                fullness,
                advice,
            } => step(
                Verdict::Refuse {
                    zone,
                    why: fullness.to_string(),
                    advice: Some(advice),
                },
                format!("the {zone} zone is full: {fullness}"),
            ),
        };
    }
    let held = usage(&state.black_box);
    match admit_scheduled(
        capacity,
        held,
        incoming.aging_failed,
        incoming.available,
        incoming.estimate,
        incoming.min_free,
    ) {
        BlackBoxAdmission::Admit => step(
            Verdict::Admit {
                zone,
                beyond_capacity: None,
            },
            format!(
                "the black box has room ({} of {} backups)",
                held.backups, capacity.max_backups
            ),
        ),
        BlackBoxAdmission::OverCapacity { holding } => step(
            Verdict::Admit {
                zone,
                beyond_capacity: Some(holding),
            },
            format!(
                "the black box is full ({} of {} backups) and its oldest backups cannot age \
                 out ({}); no unmoved backup is deleted, so this backup is taken beyond \
                 max_backups ({holding} held)",
                held.backups,
                capacity.max_backups,
                incoming.aging_failed.unwrap_or_default()
            ),
        ),
        BlackBoxAdmission::Refuse { reason } => step(
            Verdict::Refuse {
                zone,
                why: reason.clone(),
                advice: None,
            },
            reason,
        ),
    }
}

/// The interval to the next scheduled backup at `state.now` (checked; the built-in
/// rules' on a fault).
pub fn plan_interval(state: &State, rules: &dyn Rules) -> Decision<Duration> {
    Decider { rules }.interval(&state.context())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn view(hours: u64, bytes: u64) -> BackupView {
        let at = datetime!(2026-11-25 00:00 UTC) + Duration::from_secs(3600 * hours);
        BackupView {
            id: BackupId::new(at, hours),
            created_at: at,
            size_bytes: bytes,
            kind: BackupKind::Scheduled,
        }
    }

    fn state(bb: &[u64], del: &[u64], caps: (u64, u64)) -> State {
        let cap = |n| Capacity {
            max_backups: n,
            max_bytes: None,
        };
        State {
            now: datetime!(2026-11-25 10:00 UTC),
            schedule: Schedule {
                interval: Duration::from_secs(3600),
                aging: Duration::from_secs(4 * 3600),
            },
            capacities: [cap(caps.0), cap(caps.1), cap(10)],
            black_box: bb.iter().map(|&h| view(h, 10)).collect(),
            deletion: del.iter().map(|&h| view(h, 10)).collect(),
            reserved: Usage::default(),
            damaged: HashSet::new(),
            recent: Vec::new(),
            settings: String::new(),
        }
    }

    fn actions(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match &s.action {
                Action::Age { id, .. } => format!("age {}", &id.as_str()[9..11]),
                Action::Evict { id } => format!("evict {}", &id.as_str()[9..11]),
            })
            .collect()
    }

    #[test]
    fn a_tick_ages_what_is_due_making_room_first() {
        // T2 = 4 h at 10:00: hours 0..=6 are due; the deletion zone (cap 3) holds 3.
        let mut after = state(&[5, 6, 7, 8, 9], &[0, 1, 2], (5, 3));
        let plan = plan_tick_on(&mut after, &BuiltinRules);
        let a = actions(&plan);
        assert_eq!(a.len(), 4, "{a:?}");
        assert!(
            a[0].starts_with("evict") && a[1].starts_with("age"),
            "{a:?}"
        );
        assert!(
            a[2].starts_with("evict") && a[3].starts_with("age"),
            "{a:?}"
        );
        assert_eq!(plan.steps[1].cause, Cause::Aging);
        assert!(plan.steps[0].reason.contains("deletion zone full (3 of 3"));
        assert_eq!(after.black_box.len(), 3);
        assert_eq!(after.deletion.len(), 3);
    }

    #[test]
    fn damaged_backups_never_move_and_the_rest_do() {
        let mut s = state(&[5, 6, 7], &[], (2, 10));
        s.schedule.aging = Duration::from_secs(100 * 3600);
        s.damaged.insert(view(5, 10).id);
        let plan = plan_room(s.clone(), &BuiltinRules, 1, 0);
        assert_eq!(actions(&plan), ["age 06", "age 07"]);
        assert!(plan.stuck.is_empty());
        // Only the damaged one left: the room cannot be made, and the plan says why.
        let mut s = state(&[5], &[], (1, 10));
        s.damaged.insert(view(5, 10).id);
        let plan = plan_room(s, &BuiltinRules, 1, 0);
        assert!(plan.steps.is_empty());
        assert_eq!(plan.stuck, vec![view(5, 10).id]);
    }

    #[test]
    fn an_over_full_black_box_is_brought_back_within_capacity() {
        let mut s = state(&[7, 8, 9], &[], (2, 10));
        s.schedule.aging = Duration::from_secs(100 * 3600);
        let plan = plan_tick(s, &BuiltinRules);
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].cause, Cause::OverCapacity);
        assert_eq!(plan.steps[0].by, "host");
    }

    #[test]
    fn admission_is_planned_by_the_host_on_the_state_left_by_the_room_steps() {
        let scheduled = |aging_failed, available| Incoming {
            kind: BackupKind::Scheduled,
            aging_failed,
            available,
            estimate: 100,
            min_free: 50,
        };
        // Room: admitted.
        let s = state(&[1], &[], (2, 10));
        let step = plan_admission(&s, &scheduled(None, Some(1_000)));
        assert_eq!(
            step.verdict,
            Verdict::Admit {
                zone: Zone::BlackBox,
                beyond_capacity: None
            }
        );
        assert_eq!(step.by, "host");
        // Full because aging failed: taken beyond capacity (black-box pressure), loudly.
        let s = state(&[1, 2], &[], (2, 10));
        let step = plan_admission(&s, &scheduled(Some("the deletion zone is down"), None));
        assert_eq!(
            step.verdict,
            Verdict::Admit {
                zone: Zone::BlackBox,
                beyond_capacity: Some(3)
            }
        );
        assert!(
            step.reason.contains("(the deletion zone is down)"),
            "{}",
            step.reason
        );
        // Full with nothing failing (what is left is damaged): refused.
        let step = plan_admission(&s, &scheduled(None, None));
        assert!(
            matches!(&step.verdict, Verdict::Refuse { why, advice: None, .. }
                if why.contains("full")),
            "{step:?}"
        );
        // The disk's reserve: refused before anything else, even with room.
        let s = state(&[1], &[], (2, 10));
        let step = plan_admission(&s, &scheduled(None, Some(120)));
        assert!(
            matches!(&step.verdict, Verdict::Refuse { why, .. } if why.contains("min_free")),
            "{step:?}"
        );
        // A manual backup into a full reserved zone: refused, with the operator's way out.
        let mut s = state(&[], &[], (2, 10));
        s.reserved = Usage {
            backups: 10,
            bytes: 0,
        };
        let manual = Incoming {
            kind: BackupKind::Manual,
            ..scheduled(Some("ignored for manual backups"), Some(0))
        };
        let step = plan_admission(&s, &manual);
        assert!(
            matches!(&step.verdict, Verdict::Refuse { zone: Zone::Reserved, advice: Some(a), .. }
                if a.contains("tierkeep delete")),
            "{step:?}"
        );
        s.reserved.backups = 9;
        assert!(matches!(
            plan_admission(&s, &manual).verdict,
            Verdict::Admit {
                zone: Zone::Reserved,
                beyond_capacity: None
            }
        ));
    }
}
