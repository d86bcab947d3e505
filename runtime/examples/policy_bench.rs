//! Decision cost of a policy component, through the real host: compile, load from the
//! precompiled cache, a bare call (store + instantiation + `interval`), and an eviction
//! call over 10, 1,000 and 100,000 backups, and a checked eviction decision through the
//! decision engine; the same calls on the native built-in rules for comparison (medians
//! in µs); then a year of hourly backups through the `policy simulate` engine with the
//! component and with the built-in rules.
//!
//! `cargo run --release -p tierkeep --example policy_bench [-- POLICY]` (default:
//! `default`; any name `tierkeep-policies list` shows).

use std::time::{Duration, Instant};

use tierkeep::decision::{BuiltinRules, Decider, PolicyContext, Room, Rules, ZoneSnapshot};
use tierkeep::domain::{BackupId, BackupKind, BackupView, Capacity, Schedule, Usage, Zone};
use tierkeep::policy::{WasmPolicy, compile_cached, engine};
use tierkeep::simulate::{SimParams, simulate};
use time::OffsetDateTime;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f());
        v.push(t.elapsed());
    }
    median(v)
}

/// `n` scheduled backups of 1 GiB, one an hour before `now`.
fn hourly_backups(now: OffsetDateTime, n: u64) -> Vec<BackupView> {
    (0..n)
        .map(|i| {
            let at = now - Duration::from_secs(3600 * (i + 1));
            BackupView {
                id: BackupId::new(at, i),
                created_at: at,
                size_bytes: 1 << 30,
                kind: BackupKind::Scheduled,
            }
        })
        .collect()
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "default".into());
    let path = tierkeep_policies::path(&name).expect("a built policy name");
    let bytes = std::fs::read(path).expect("read");
    let engine = engine().expect("engine");
    let cache = tempfile::tempdir().expect("tempdir");
    println!(
        "policy {name}: {} ({} KiB)",
        path.display(),
        bytes.len() / 1024
    );
    let compile = time(5, || {
        compile_cached(&engine, &bytes, None).expect("compile")
    });
    compile_cached(&engine, &bytes, Some(cache.path())).expect("fill the cache");
    let map = time(50, || {
        let (c, cached) = compile_cached(&engine, &bytes, Some(cache.path())).expect("cached");
        assert!(cached);
        c
    });
    let load = time(50, || {
        WasmPolicy::load(&engine, path, "", Some(cache.path())).expect("load")
    });
    println!("compile (no cache)                    {compile:>10.0} µs");
    println!("map the precompiled form (cache hit)  {map:>10.0} µs");
    println!("cached load (map, link, describe, validate settings) {load:>10.0} µs");

    let policy = WasmPolicy::load(&engine, path, "", Some(cache.path())).expect("load");
    let now = OffsetDateTime::now_utc();
    let zone = |zone, n| ZoneSnapshot {
        zone,
        capacity: Capacity {
            max_backups: n,
            max_bytes: None,
        },
        usage: Usage {
            backups: n,
            bytes: 0,
        },
    };
    let ctx = |n| PolicyContext {
        now,
        schedule: Schedule {
            interval: Duration::from_secs(3600),
            aging: Duration::from_secs(4 * 3600),
        },
        zones: [
            zone(Zone::BlackBox, 3),
            zone(Zone::Deletion, n),
            zone(Zone::Reserved, 10),
        ],
        recent: Vec::new(),
        settings: String::new(),
    };
    println!(
        "list decisions through {}",
        if policy.packed() {
            "tierkeep:policy/policy-packed"
        } else {
            "tierkeep:policy/policy (no policy-packed export)"
        }
    );
    let bare = time(200, || policy.interval(&ctx(10)).expect("interval"));
    println!("bare call (new store, instantiate, interval) {bare:>10.1} µs");
    println!("eviction over N backups (median µs): wasm / native built-in");
    for n in [10u64, 1_000, 100_000] {
        let backups = hourly_backups(now, n);
        let c = ctx(n);
        let reps = if n >= 100_000 { 7 } else { 101 };
        let room = Room {
            backups: 1,
            bytes: 1 << 30,
        };
        let wasm = time(reps, || {
            policy.eviction(&c, &backups, room).expect("eviction")
        });
        let native = time(reps, || {
            BuiltinRules.eviction(&c, &backups, room).expect("native")
        });
        println!("  {n:>7} backups  {wasm:>12.1}  {native:>12.1}");
    }
    // The same decision through the decision engine (the answer checked, the prefix
    // that makes room taken), as `tick` and the daemon ask it.
    let n = 1_000u64;
    let backups = hourly_backups(now, n);
    let c = ctx(n);
    let room = Room {
        backups: 1,
        bytes: 1 << 30,
    };
    let checked = time(101, || {
        Decider { rules: &policy }.eviction(&c, &backups, room)
    });
    let checked_native = time(101, || {
        Decider {
            rules: &BuiltinRules,
        }
        .eviction(&c, &backups, room)
    });
    println!(
        "checked eviction decision over {n} backups (engine)  {checked:>10.1}  {checked_native:>12.1}"
    );

    // A year of hourly backups on the virtual clock of `policy simulate`, side by side.
    let params = SimParams {
        start: now,
        period: Duration::from_secs(365 * 24 * 3600),
        backup_size: 20 << 30,
        fail_rate: 0.0,
        seed: 1,
        schedule: Schedule {
            interval: Duration::from_secs(3600),
            aging: Duration::from_secs(4 * 3600),
        },
        capacities: [
            Capacity {
                max_backups: 3,
                max_bytes: None,
            },
            Capacity {
                max_backups: 30,
                max_bytes: None,
            },
            Capacity {
                max_backups: 30,
                max_bytes: None,
            },
        ],
        settings: String::new(),
    };
    // On its own engine and load, as `policy simulate` runs in its own process: a slot
    // that ran the 100,000-backup decision above keeps more memory to reset.
    let fresh = tierkeep::policy::engine().expect("engine");
    let policy = WasmPolicy::load(&fresh, path, "", Some(cache.path())).expect("load");
    let t = Instant::now();
    let wasm = simulate(&params, &policy);
    let wasm_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let native = simulate(&params, &BuiltinRules);
    let native_s = t.elapsed().as_secs_f64();
    assert_eq!(
        wasm.events.len(),
        native.events.len(),
        "the two decide alike"
    );
    println!(
        "simulate 365d hourly ({} decisions): component {wasm_s:.3} s, built-in {native_s:.3} s, \
         ratio {:.1}x",
        wasm.decisions,
        wasm_s / native_s.max(1e-9)
    );
}
