//! The simulator as it was before the lifecycle planner: kept, unchanged in behaviour,
//! as the reference of the planner's differential test (the planner must produce the
//! same event streams on the same timelines).

use tierkeep::decision::{Attempt, Decider, PolicyContext, Room, Rules, ZoneSnapshot};
use tierkeep::domain::{BackupId, BackupKind, BackupView, Usage, Zone, plan_room};
use tierkeep::simulate::SimParams;
use time::OffsetDateTime;

/// One event: when, what (`created`, `failed`, `aged`, `evicted`), which backup.
pub type Event = (OffsetDateTime, &'static str, Option<String>);

/// Events, decisions the policy answered, and fallbacks.
pub struct Report {
    pub events: Vec<Event>,
    pub decisions: u64,
    pub fallbacks: u64,
}

struct Sim<'a> {
    p: &'a SimParams,
    rules: &'a dyn Rules,
    bb: Vec<BackupView>,
    del: Vec<BackupView>,
    recent: Vec<Attempt>,
    r: Report,
}

impl Sim<'_> {
    fn ctx(&self, now: OffsetDateTime) -> PolicyContext {
        let snap = |zone, capacity, list: &[BackupView]| ZoneSnapshot {
            zone,
            capacity,
            usage: Usage {
                backups: list.len() as u64,
                bytes: list.iter().map(|b| b.size_bytes).sum(),
            },
        };
        PolicyContext {
            now,
            schedule: self.p.schedule,
            zones: [
                snap(Zone::BlackBox, self.p.capacities[0], &self.bb),
                snap(Zone::Deletion, self.p.capacities[1], &self.del),
                snap(Zone::Reserved, self.p.capacities[2], &[]),
            ],
            recent: self.recent.clone(),
            settings: self.p.settings.clone(),
        }
    }

    fn note<T>(&mut self, d: &tierkeep::decision::Decision<T>) {
        match &d.fault {
            None => self.r.decisions += 1,
            Some(_) => self.r.fallbacks += 1,
        }
    }

    fn event(&mut self, at: OffsetDateTime, kind: &'static str, id: Option<&BackupId>) {
        self.r.events.push((at, kind, id.map(ToString::to_string)));
    }

    /// Moves `b` to the deletion zone, evicting first as the policy orders.
    fn age(&mut self, now: OffsetDateTime, b: BackupView) {
        let ctx = self.ctx(now);
        let d = Decider { rules: self.rules }.eviction(
            &ctx,
            &self.del,
            Room {
                backups: 1,
                bytes: b.size_bytes,
            },
        );
        if !d.value.is_empty() || d.fault.is_some() {
            self.note(&d);
        }
        for id in &d.value {
            if let Some(i) = self.del.iter().position(|x| &x.id == id) {
                self.del.remove(i);
                self.event(now, "evicted", Some(id));
            }
        }
        self.event(now, "aged", Some(&b.id));
        self.del.push(b);
    }
}

/// Runs `rules` over the simulated period.
pub fn simulate(p: &SimParams, rules: &dyn Rules) -> Report {
    let mut sim = Sim {
        p,
        rules,
        bb: Vec::new(),
        del: Vec::new(),
        recent: Vec::new(),
        r: Report {
            events: Vec::new(),
            decisions: 0,
            fallbacks: 0,
        },
    };
    let end = p.start + p.period;
    let mut now = p.start;
    let mut rng = p.seed | 1;
    let mut n: u64 = 0;
    while now < end {
        // xorshift64*: reproducible failures.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        let roll = (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        let failed = roll < p.fail_rate;
        sim.recent.insert(
            0,
            Attempt {
                at: now,
                succeeded: !failed,
            },
        );
        sim.recent.truncate(32);
        if failed {
            sim.event(now, "failed", None);
        } else {
            // The host's rule: a full black box ages its oldest early.
            for id in plan_room(p.capacities[0], &sim.bb, 1, p.backup_size) {
                if let Some(i) = sim.bb.iter().position(|b| b.id == id) {
                    let b = sim.bb.remove(i);
                    sim.age(now, b);
                }
            }
            n += 1;
            let b = BackupView {
                id: BackupId::new(now, n),
                created_at: now,
                size_bytes: p.backup_size,
                kind: BackupKind::Scheduled,
            };
            sim.event(now, "created", Some(&b.id));
            sim.bb.push(b);
        }
        let ctx = sim.ctx(now);
        let d = Decider { rules }.aging(&ctx, &sim.bb);
        sim.note(&d);
        for id in d.value {
            if let Some(i) = sim.bb.iter().position(|b| b.id == id) {
                let b = sim.bb.remove(i);
                sim.age(now, b);
            }
        }
        let ctx = sim.ctx(now);
        let d = Decider { rules }.interval(&ctx);
        sim.note(&d);
        now += d.value;
    }
    sim.r
}
