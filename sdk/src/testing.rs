//! Native test helpers: build contexts and backups, and call a policy's decisions
//! through the same code path its wasm export uses (settings parsed from JSON).

use crate::{Attempt, Backup, BackupKind, Context, Policy, Room, Schedule, Zone, ZoneState};

/// A context at `now` (ms) with T1 = 1h, T2 = 4h, a black box of 3, deletion and
/// reserved zones of 30, all empty, no recent attempts and no settings.
pub fn context(now: i64) -> Context {
    let zone = |zone, max| ZoneState {
        zone,
        max_backups: max,
        max_bytes: None,
        backups: 0,
        bytes: 0,
    };
    Context {
        now,
        schedule: Schedule {
            interval: crate::time::HOUR,
            aging: 4 * crate::time::HOUR,
        },
        zones: vec![
            zone(Zone::BlackBox, 3),
            zone(Zone::Deletion, 30),
            zone(Zone::Reserved, 30),
        ],
        recent: Vec::new(),
        settings: String::new(),
    }
}

/// The same context with settings (JSON).
pub fn with_settings(mut ctx: Context, json: &str) -> Context {
    ctx.settings = json.to_owned();
    ctx
}

/// The same context with recent attempts (newest first): `true` for success.
pub fn with_recent(mut ctx: Context, outcomes: &[bool]) -> Context {
    ctx.recent = outcomes
        .iter()
        .enumerate()
        .map(|(i, &succeeded)| Attempt {
            at: ctx.now - (i as i64 + 1) * crate::time::HOUR as i64,
            succeeded,
        })
        .collect();
    ctx
}

/// A scheduled backup of 1 MiB created at `created_at` (ms), with an id that sorts by time.
pub fn backup(created_at: i64) -> Backup {
    Backup {
        id: format!("b{created_at:016}"),
        kind: BackupKind::Scheduled,
        created_at,
        size_bytes: 1 << 20,
    }
}

/// `P::validate` on settings JSON.
pub fn validate<P: Policy>(json: &str) -> Result<(), String> {
    crate::__private::validate::<P>(json)
}

/// `P::interval`.
pub fn interval<P: Policy>(ctx: &Context) -> u64 {
    crate::__private::interval::<P>(ctx)
}

/// `P::aging`.
pub fn aging<P: Policy>(ctx: &Context, black_box: &[Backup]) -> Vec<String> {
    crate::__private::aging::<P>(ctx, black_box)
}

/// `P::eviction`, with room for `backups` more.
pub fn eviction<P: Policy>(ctx: &Context, deletion: &[Backup], backups: u64) -> Vec<String> {
    crate::__private::eviction::<P>(
        ctx,
        deletion,
        Room {
            backups,
            bytes: backups << 20,
        },
    )
}
