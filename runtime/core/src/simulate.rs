//! `policy simulate`: runs a policy through the lifecycle planner ([`crate::plan`], the
//! same one the engine carries out, with the decision engine's checks and fallback) on a
//! virtual clock: a scheduled backup at each interval the policy gives (some fail, at
//! the given rate), room made in a full black box by aging its oldest early, aging as the
//! policy decides, eviction in the policy's order before a move that would overflow. No
//! data is written: backups are sizes on a timeline.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use std::collections::HashSet;

use crate::decision::{Attempt, PolicyFault, Rules};
use crate::domain::{BackupId, BackupKind, BackupView, Capacity, Schedule, Usage};
use crate::plan::{
    Action, Asked, Incoming, Plan, State, Verdict, plan_admission, plan_interval, plan_room_on,
    plan_tick_on,
};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimParams {
    /// Start of the virtual clock.
    pub start: OffsetDateTime,
    /// How long to run.
    pub period: Duration,
    /// Archive size of every backup.
    pub backup_size: u64,
    /// Probability that a scheduled backup fails (0–1).
    pub fail_rate: f64,
    /// Seed for the failures.
    pub seed: u64,
    /// T1, T2.
    pub schedule: Schedule,
    /// Black box, deletion, reserved.
    pub capacities: [Capacity; 3],
    /// The policy's settings (JSON).
    pub settings: String,
}

/// One event on the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct SimEvent {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `created`, `failed`, `refused` (the planner did not admit it), `aged` or
    /// `evicted`.
    pub kind: &'static str,
    /// The backup (none for a failed attempt).
    pub id: Option<String>,
}

/// Backups per zone.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Black box.
    #[serde(rename = "black-box")]
    pub black_box: u64,
    /// Deletion zone.
    pub deletion: u64,
    /// Reserved zone (a simulation makes no manual backups).
    pub reserved: u64,
}

/// Zone occupancy at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Backups per zone then.
    #[serde(flatten)]
    pub counts: Counts,
    /// Bytes in the deletion zone then.
    pub deletion_bytes: u64,
}

/// The outcome of a simulation.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Backups per zone at the end.
    #[serde(rename = "final")]
    pub final_counts: Counts,
    /// Everything that happened, in order.
    pub events: Vec<SimEvent>,
    /// The most backups each zone held at once.
    pub peak: Counts,
    /// The most bytes the deletion zone held at once.
    pub peak_deletion_bytes: u64,
    /// Totals.
    pub created: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Moves to the deletion zone.
    pub aged: u64,
    /// Evictions.
    pub evicted: u64,
    /// Decisions the policy answered itself.
    pub decisions: u64,
    /// Decisions that fell back to the built-in rules (a trap, a loop, a bad answer).
    pub fallbacks: u64,
    /// The first fallback's reason, if any.
    pub first_fault: Option<String>,
    /// Occupancy after each step.
    pub samples: Vec<Sample>,
    /// The policy that ran.
    pub policy: String,
}

/// The decisions a plan asked for, counted into the report.
fn count(r: &mut SimReport, asked: &[Asked]) {
    for a in asked {
        note(r, a.fault.as_ref());
    }
}

fn note(r: &mut SimReport, fault: Option<&PolicyFault>) {
    match fault {
        None => r.decisions += 1,
        Some(f) => {
            r.fallbacks += 1;
            r.first_fault.get_or_insert_with(|| f.to_string());
        }
    }
}

/// Records a plan's steps as events (the planner has carried them out on the state).
fn record(r: &mut SimReport, now: OffsetDateTime, plan: &Plan) {
    count(r, &plan.asked);
    for step in &plan.steps {
        let (kind, id) = match &step.action {
            Action::Age { id, .. } => {
                r.aged += 1;
                ("aged", id)
            }
            Action::Evict { id } => {
                r.evicted += 1;
                ("evicted", id)
            }
        };
        r.events.push(SimEvent {
            at: now,
            kind,
            id: Some(id.to_string()),
        });
    }
}

fn sample(r: &mut SimReport, state: &State) {
    let counts = Counts {
        black_box: state.black_box.len() as u64,
        deletion: state.deletion.len() as u64,
        reserved: 0,
    };
    let deletion_bytes = state.deletion.iter().map(|b| b.size_bytes).sum();
    r.peak.black_box = r.peak.black_box.max(counts.black_box);
    r.peak.deletion = r.peak.deletion.max(counts.deletion);
    r.peak_deletion_bytes = r.peak_deletion_bytes.max(deletion_bytes);
    r.samples.push(Sample {
        at: state.now,
        counts,
        deletion_bytes,
    });
}

/// Whether the planner admits a scheduled backup of `bytes` into the black box of
/// `state` (its room already made; in a simulation every move succeeds and the disk
/// never runs short, so only a black box that cannot be made room in refuses).
pub fn admitted(state: &State, bytes: u64) -> bool {
    let step = plan_admission(
        state,
        &Incoming {
            kind: BackupKind::Scheduled,
            aging_failed: None,
            available: None,
            estimate: bytes,
            min_free: 0,
        },
    );
    matches!(step.verdict, Verdict::Admit { .. })
}

/// Runs `rules` over the simulated period: at each interval the policy gives, a
/// scheduled attempt (failing at the given rate) that, when it succeeds, first has the
/// planner make room in the black box ([`plan_room_on`]) and admit the backup
/// ([`admitted`]); then a pass of the lifecycle ([`plan_tick_on`]). Every step of every
/// plan succeeds.
pub fn simulate(p: &SimParams, rules: &dyn Rules) -> SimReport {
    let mut r = SimReport {
        final_counts: Counts::default(),
        events: Vec::new(),
        peak: Counts::default(),
        peak_deletion_bytes: 0,
        created: 0,
        failed: 0,
        aged: 0,
        evicted: 0,
        decisions: 0,
        fallbacks: 0,
        first_fault: None,
        samples: Vec::new(),
        policy: rules.name().to_owned(),
    };
    let mut state = State {
        now: p.start,
        schedule: p.schedule,
        capacities: p.capacities,
        black_box: Vec::new(),
        deletion: Vec::new(),
        reserved: Usage::default(),
        damaged: HashSet::new(),
        recent: Vec::new(),
        settings: p.settings.clone(),
    };
    let end = p.start + p.period;
    let mut rng = p.seed | 1;
    let mut n: u64 = 0;
    while state.now < end {
        let now = state.now;
        // xorshift64*: reproducible failures.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        let roll = (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        let failed = roll < p.fail_rate;
        state.recent.insert(
            0,
            Attempt {
                at: now,
                succeeded: !failed,
            },
        );
        state.recent.truncate(32);
        if failed {
            r.events.push(SimEvent {
                at: now,
                kind: "failed",
                id: None,
            });
            r.failed += 1;
        } else {
            let plan = plan_room_on(&mut state, rules, 1, p.backup_size);
            record(&mut r, now, &plan);
            if admitted(&state, p.backup_size) {
                n += 1;
                let b = BackupView {
                    id: BackupId::new(now, n),
                    created_at: now,
                    size_bytes: p.backup_size,
                    kind: BackupKind::Scheduled,
                };
                r.events.push(SimEvent {
                    at: now,
                    kind: "created",
                    id: Some(b.id.to_string()),
                });
                r.created += 1;
                state.black_box.push(b);
            } else {
                r.events.push(SimEvent {
                    at: now,
                    kind: "refused",
                    id: None,
                });
            }
        }
        let plan = plan_tick_on(&mut state, rules);
        record(&mut r, now, &plan);
        sample(&mut r, &state);
        let d = plan_interval(&state, rules);
        note(&mut r, d.fault.as_ref());
        state.now += d.value;
    }
    r.final_counts = Counts {
        black_box: state.black_box.len() as u64,
        deletion: state.deletion.len() as u64,
        reserved: 0,
    };
    r
}

/// An SVG chart: zone occupancy over time (top) and each backup's lifetime (bottom:
/// dark while in the black box, grey in the deletion zone).
pub fn svg(report: &SimReport, params: &SimParams) -> String {
    use std::collections::HashMap;
    use std::fmt::Write;
    let (w, top, h) = (960.0_f64, 220.0_f64, 520.0_f64);
    let (left, right) = (60.0, 20.0);
    let t0 = params.start.unix_timestamp() as f64;
    let span = params.period.as_secs_f64().max(1.0);
    let x = |t: OffsetDateTime| left + (t.unix_timestamp() as f64 - t0) / span * (w - left - right);
    let max = report
        .peak
        .black_box
        .max(report.peak.deletion)
        .max(params.capacities[1].max_backups)
        .max(1) as f64;
    let y = |n: u64| top - 10.0 - n as f64 / max * (top - 40.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="16">{} — {} created, {} aged, {} evicted, {} failed</text>"#,
        xml(&report.policy),
        report.created,
        report.aged,
        report.evicted,
        report.failed
    );
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        top - 10.0,
        w - right,
        top - 10.0
    );
    for (label, color, pick) in [
        ("black box", "#222", 0usize),
        ("deletion", "#1f77b4", 1usize),
    ] {
        let mut pts = String::new();
        for smp in &report.samples {
            let n = if pick == 0 {
                smp.counts.black_box
            } else {
                smp.counts.deletion
            };
            let _ = write!(pts, "{:.1},{:.1} ", x(smp.at), y(n));
        }
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>"#
        );
        let ly = if pick == 0 { 34.0 } else { 48.0 };
        let _ = write!(
            s,
            r#"<text x="{}" y="{ly}" fill="{color}">{label}</text>"#,
            w - 120.0
        );
    }
    let cap_y = y(params.capacities[1].max_backups);
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{cap_y:.1}" x2="{}" y2="{cap_y:.1}" stroke="#1f77b4" stroke-dasharray="4 3"/><text x="4" y="{cap_y:.1}">{}</text>"##,
        w - right,
        params.capacities[1].max_backups
    );
    // Lifetimes.
    let mut created: Vec<(String, OffsetDateTime)> = Vec::new();
    let mut aged: HashMap<&str, OffsetDateTime> = HashMap::new();
    let mut evicted: HashMap<&str, OffsetDateTime> = HashMap::new();
    for e in &report.events {
        let Some(id) = &e.id else { continue };
        match e.kind {
            "created" => created.push((id.clone(), e.at)),
            "aged" => {
                aged.insert(id, e.at);
            }
            "evicted" => {
                evicted.insert(id, e.at);
            }
            _ => {}
        }
    }
    let end = params.start + params.period;
    let rows = created.len().max(1) as f64;
    let (lt, lb) = (top + 20.0, h - 20.0);
    for (i, (id, at)) in created.iter().enumerate() {
        let ry = lt + i as f64 / rows * (lb - lt);
        let a = aged.get(id.as_str()).copied().unwrap_or(end);
        let ev = evicted.get(id.as_str()).copied().unwrap_or(end);
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="{ry:.1}" x2="{:.1}" y2="{ry:.1}" stroke="#222"/>"##,
            x(*at),
            x(a)
        );
        if aged.contains_key(id.as_str()) {
            let _ = write!(
                s,
                r##"<line x1="{:.1}" y1="{ry:.1}" x2="{:.1}" y2="{ry:.1}" stroke="#9ab"/>"##,
                x(a),
                x(ev)
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{}">backup lifetimes (dark: black box, grey: deletion zone), oldest at the top</text>"#,
        top + 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
