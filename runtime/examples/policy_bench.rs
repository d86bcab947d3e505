//! Decision cost of a policy component, through the real host: compile, load from the
//! precompiled cache, a bare call (store + instantiation + `interval`), and an eviction
//! call over 10, 1,000 and 100,000 backups; the same calls on the native built-in rules
//! for comparison. Medians in µs.
//!
//! `cargo run --release -p tierkeep --example policy_bench [-- POLICY]` (default:
//! `default`; any name `tierkeep-policies list` shows).

use std::time::{Duration, Instant};

use tierkeep::decision::{BuiltinRules, PolicyContext, Room, Rules, ZoneSnapshot};
use tierkeep::domain::{BackupId, BackupKind, BackupView, Capacity, Schedule, Usage, Zone};
use tierkeep::policy::{WasmPolicy, compile_cached, engine};
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
    let bare = time(200, || policy.interval(&ctx(10)).expect("interval"));
    println!("bare call (new store, instantiate, interval) {bare:>10.1} µs");
    println!("eviction over N backups (median µs): wasm / native built-in");
    for n in [10u64, 1_000, 100_000] {
        let backups: Vec<BackupView> = (0..n)
            .map(|i| {
                let at = now - Duration::from_secs(3600 * (i + 1));
                BackupView {
                    id: BackupId::new(at, i),
                    created_at: at,
                    size_bytes: 1 << 30,
                    kind: BackupKind::Scheduled,
                }
            })
            .collect();
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
}
