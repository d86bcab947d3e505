//! Run a policy natively over a simulated timeline, to test what it does over weeks in
//! milliseconds. The rules of the host are modelled simply: a scheduled backup every
//! `interval`; a black box that ages its oldest backup early when full; aging as the
//! policy says; eviction in the policy's order until the deletion zone has room. Answers
//! naming unknown backups are ignored, as the host would refuse them. (`tierkeep policy
//! simulate` runs a built `.wasm` through the real host instead.)

use crate::{Backup, BackupKind, Context, Policy, Room, Zone};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Sim {
    /// Start time (ms since the epoch).
    pub start: i64,
    /// How long to run (ms).
    pub duration: u64,
    /// The context template: schedule, capacities, settings (usage is filled in).
    pub context: Context,
    /// Every n-th scheduled attempt fails (`0`: none).
    pub fail_every: u64,
    /// Size of each backup.
    pub backup_size: u64,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A scheduled backup was made.
    Created(i64, String),
    /// A scheduled attempt failed.
    Failed(i64),
    /// A backup moved to the deletion zone.
    Aged(i64, String),
    /// A backup was evicted from the deletion zone.
    Evicted(i64, String),
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
}

fn cap(ctx: &Context, zone: Zone) -> u64 {
    crate::zone(ctx, zone).map_or(u64::MAX, |z| z.max_backups)
}

/// Runs `P` over the timeline.
pub fn run<P: Policy>(sim: &Sim) -> Report {
    let mut r = Report::default();
    let mut ctx = sim.context.clone();
    let end = sim.start + i64::try_from(sim.duration).unwrap_or(i64::MAX);
    let mut now = sim.start;
    let mut attempts = 0u64;
    while now < end {
        ctx.now = now;
        attempts += 1;
        let failed = sim.fail_every > 0 && attempts.is_multiple_of(sim.fail_every);
        ctx.recent.insert(
            0,
            crate::Attempt {
                at: now,
                succeeded: !failed,
            },
        );
        ctx.recent.truncate(32);
        if failed {
            r.events.push(Event::Failed(now));
        } else {
            while r.black_box.len() as u64 >= cap(&ctx, Zone::BlackBox) {
                let oldest = r.black_box.remove(0);
                age::<P>(&mut r, &mut ctx, oldest, now);
            }
            let b = Backup {
                id: format!("b{now:016}"),
                kind: BackupKind::Scheduled,
                created_at: now,
                size_bytes: sim.backup_size,
            };
            r.events.push(Event::Created(now, b.id.clone()));
            r.black_box.push(b);
        }
        fill(&mut ctx, &r);
        for id in crate::__private::aging::<P>(&ctx, &r.black_box) {
            if let Some(i) = r.black_box.iter().position(|b| b.id == id) {
                let b = r.black_box.remove(i);
                age::<P>(&mut r, &mut ctx, b, now);
            }
        }
        fill(&mut ctx, &r);
        let step = crate::__private::interval::<P>(&ctx).max(1);
        now = now.saturating_add(i64::try_from(step).unwrap_or(i64::MAX));
    }
    r
}

fn fill(ctx: &mut Context, r: &Report) {
    for z in &mut ctx.zones {
        let list = match z.zone {
            Zone::BlackBox => &r.black_box,
            Zone::Deletion => &r.deletion,
            Zone::Reserved => continue,
        };
        z.backups = list.len() as u64;
        z.bytes = list.iter().map(|b| b.size_bytes).sum();
    }
}

fn age<P: Policy>(r: &mut Report, ctx: &mut Context, b: Backup, now: i64) {
    let max = cap(ctx, Zone::Deletion);
    if r.deletion.len() as u64 >= max {
        fill(ctx, r);
        let room = Room {
            backups: 1,
            bytes: b.size_bytes,
        };
        for id in crate::__private::eviction::<P>(ctx, &r.deletion, room) {
            if (r.deletion.len() as u64) < max {
                break;
            }
            if let Some(i) = r.deletion.iter().position(|d| d.id == id) {
                let gone = r.deletion.remove(i);
                r.events.push(Event::Evicted(now, gone.id));
            }
        }
        // An answer that did not make room: the host falls back to the earliest first.
        while r.deletion.len() as u64 >= max && !r.deletion.is_empty() {
            let gone = r.deletion.remove(0);
            r.events.push(Event::Evicted(now, gone.id));
        }
    }
    r.events.push(Event::Aged(now, b.id.clone()));
    r.deletion.push(b);
}
