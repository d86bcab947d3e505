//! WebAssembly policies through the real host: the shipped components decide by their
//! tables, the `default` component agrees with the built-in rules over a long simulated
//! timeline, every broken fixture is stopped (fuel, memory cap, trap, refused answer,
//! refused import) and the built-in rules decide instead, a policy written outside the
//! repository against the SDK is built and picked up by a running host without a
//! restart, and the `policy` commands work end to end.

#[path = "../support/mod.rs"]
mod support;

mod legacy_sim;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::Host;
use tierkeep::decision::{
    Attempt, BuiltinRules, Decider, PolicyContext, PolicyFault, Room, Rules, ZoneSnapshot,
};
use tierkeep::domain::{BackupId, BackupKind, BackupView, Capacity, Schedule, Usage, Zone};
use tierkeep::plan::{Action, Plan, State, plan_room, plan_tick};
use tierkeep::policy::{PolicyHost, WasmPolicy, engine};
use tierkeep::simulate::{SimParams, simulate};
use time::OffsetDateTime;
use time::macros::datetime;

fn wasm(name: &str) -> &'static Path {
    tierkeep_policies::path(name).unwrap_or_else(|| panic!("no built component {name}"))
}

fn load(name: &str, settings: &str) -> WasmPolicy {
    let engine = engine().expect("engine");
    WasmPolicy::load(&engine, wasm(name), settings, None)
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

const H: Duration = Duration::from_secs(3600);

fn schedule() -> Schedule {
    Schedule {
        interval: H,
        aging: 4 * H,
    }
}

fn ctx(now: OffsetDateTime, settings: &str, recent: &[bool]) -> PolicyContext {
    let cap = |n| Capacity {
        max_backups: n,
        max_bytes: None,
    };
    let z = |zone, n| ZoneSnapshot {
        zone,
        capacity: cap(n),
        usage: Usage::default(),
    };
    PolicyContext {
        now,
        schedule: schedule(),
        zones: [
            z(Zone::BlackBox, 3),
            z(Zone::Deletion, 30),
            z(Zone::Reserved, 30),
        ],
        recent: recent
            .iter()
            .enumerate()
            .map(|(i, &succeeded)| Attempt {
                at: now - H * (i as u32 + 1),
                succeeded,
            })
            .collect(),
        settings: settings.to_owned(),
    }
}

fn backup(at: OffsetDateTime, n: u64) -> BackupView {
    BackupView {
        id: BackupId::new(at, n),
        created_at: at,
        size_bytes: 1 << 20,
        kind: BackupKind::Scheduled,
    }
}

// 2026-11-25 is a Wednesday.
const WED: OffsetDateTime = datetime!(2026-11-25 00:00 UTC);

#[test]
fn shipped_components_decide_by_their_tables() {
    // default: T1; aging after T2, oldest first; the earliest evicted first.
    let p = load("default", "");
    let c = ctx(WED + 10 * H, "", &[]);
    assert_eq!(p.interval(&c), Ok(3_600_000));
    let bb = [
        backup(WED + 5 * H, 1),
        backup(WED + 6 * H, 2),
        backup(WED + 9 * H, 3),
    ];
    assert_eq!(
        p.aging(&c, &bb),
        Ok(vec![bb[0].id.to_string(), bb[1].id.to_string()])
    );
    let del = [backup(WED + 2 * H, 5), backup(WED, 4), backup(WED + H, 6)];
    // A zone with room: nothing named. A zone of 3 needing room for one: the earliest.
    // A zone of 1: all three, earliest first (the SDK names only what makes room).
    assert_eq!(p.eviction(&c, &del, Room::default()), Ok(vec![]));
    let one = Room {
        backups: 1,
        bytes: 0,
    };
    let mut full = c.clone();
    full.zones[1].capacity.max_backups = 3;
    assert_eq!(
        p.eviction(&full, &del, one),
        Ok(vec![del[1].id.to_string()])
    );
    full.zones[1].capacity.max_backups = 1;
    assert_eq!(
        p.eviction(&full, &del, one),
        Ok(vec![
            del[1].id.to_string(),
            del[2].id.to_string(),
            del[0].id.to_string()
        ])
    );

    // business-hours: working hours, nights, weekends, time zones, backoff.
    let p = load("business-hours", "{}");
    let cases: [(OffsetDateTime, &str, &[bool], u64); 7] = [
        (WED + 9 * H, "{}", &[], 15 * 60_000),
        (WED + 7 * H, "{}", &[], 2 * 3_600_000),
        (WED + 72 * H + 10 * H, "{}", &[], 2 * 3_600_000),
        (
            WED + 23 * H,
            r#"{"utc_offset_minutes": 600}"#,
            &[],
            15 * 60_000,
        ),
        (WED + 2 * H, "{}", &[false], 60_000),
        (WED + 2 * H, "{}", &[false, false, false], 4 * 60_000),
        (
            WED + 10 * H,
            r#"{"work_interval": "5m"}"#,
            &[false; 10],
            5 * 60_000,
        ),
    ];
    for (now, settings, recent, want) in cases {
        assert_eq!(
            p.interval(&ctx(now, settings, recent)),
            Ok(want),
            "{now} {settings} {recent:?}"
        );
    }

    // gfs: what no bucket keeps goes first, then the earliest of the kept.
    let p = load("gfs", "{}");
    let settings = r#"{"hourly": 2, "daily": 2, "weekly": 0, "monthly": 0}"#;
    let at = |mins: i64| WED + time::Duration::minutes(mins);
    let del = [
        backup(at(-20 * 60), 1),
        backup(at(-10 * 60), 2),
        backup(at(-2 * 60), 3),
        backup(at(15), 4),
        backup(at(30), 5),
        backup(at(61), 6),
    ];
    let order = p
        .eviction(&ctx(WED + 2 * H, settings, &[]), &del, Room::default())
        .expect("gfs eviction");
    let want: Vec<String> = [0, 1, 3, 2, 4, 5]
        .iter()
        .map(|&i| del[i].id.to_string())
        .collect();
    assert_eq!(order, want);
}

fn sim_params(fail_rate: f64, max_bytes: Option<u64>, days: u64) -> SimParams {
    SimParams {
        start: datetime!(2026-01-01 00:00 UTC),
        period: Duration::from_secs(days * 86_400),
        backup_size: 3 << 30,
        fail_rate,
        seed: 42,
        schedule: Schedule {
            interval: H,
            aging: 3 * H,
        },
        capacities: [
            Capacity {
                max_backups: 5,
                max_bytes: None,
            },
            Capacity {
                max_backups: 50,
                max_bytes,
            },
            Capacity {
                max_backups: 50,
                max_bytes: None,
            },
        ],
        settings: String::new(),
    }
}

#[test]
fn the_default_component_agrees_with_the_builtin_rules() {
    let p = load("default", "");
    for (fail_rate, max_bytes, days) in [(0.0, None, 120), (0.1, Some(100 << 30), 60)] {
        let params = sim_params(fail_rate, max_bytes, days);
        let native = simulate(&params, &BuiltinRules);
        let component = simulate(&params, &p);
        assert_eq!(component.fallbacks, 0, "{:?}", component.first_fault);
        assert!(native.created > 1000 || days < 100);
        assert!(native.evicted > 0, "the timeline must reach eviction");
        let events = |r: &tierkeep::simulate::SimReport| {
            r.events
                .iter()
                .map(|e| (e.at, e.kind, e.id.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(events(&native), events(&component));
    }
}

/// A module that exports only `tierkeep:policy/policy` (made before `policy-packed`
/// existed) still loads, and its list decisions go through `policy`: it decides exactly
/// as the built-in rules and the `default` component, whose list decisions go through
/// `policy-packed`, over the same long timelines.
#[test]
fn a_module_without_the_packed_export_decides_through_policy() {
    let old = load("fixture-unpacked", "");
    let packed = load("default", "");
    assert!(!old.packed(), "the fixture exports no policy-packed");
    assert!(
        packed.packed(),
        "modules built with the SDK export policy-packed"
    );
    for (fail_rate, max_bytes, days) in [(0.0, None, 120), (0.1, Some(100 << 30), 60)] {
        let params = sim_params(fail_rate, max_bytes, days);
        let native = simulate(&params, &BuiltinRules);
        let events = |r: &tierkeep::simulate::SimReport| {
            r.events
                .iter()
                .map(|e| (e.at, e.kind, e.id.clone()))
                .collect::<Vec<_>>()
        };
        for p in [&old, &packed] {
            let r = simulate(&params, p);
            assert_eq!(r.fallbacks, 0, "{:?}", r.first_fault);
            assert_eq!(events(&native), events(&r), "{}", p.metadata.name);
        }
    }
    // A long list both ways: the same eviction, a manual backup among them included.
    let now = WED + 10 * H;
    let mut del: Vec<BackupView> = (0..2000u64)
        .map(|i| backup(WED - H * (i as u32 + 1), i))
        .collect();
    del[1999].kind = BackupKind::Manual;
    let mut c = ctx(now, "", &[]);
    c.zones[1].capacity.max_backups = 1990;
    let room = Room {
        backups: 1,
        bytes: 1 << 20,
    };
    let want = Decider {
        rules: &BuiltinRules,
    }
    .eviction(&c, &del, room)
    .value;
    assert_eq!(want.len(), 11);
    for p in [&old, &packed] {
        let got = Decider { rules: p }.eviction(&c, &del, room);
        assert!(got.fault.is_none(), "{:?}", got.fault);
        assert_eq!(got.value, want, "{}", p.metadata.name);
    }
}

/// The lifecycle planner against the simulator it replaced: identical event streams for
/// the shipped policies over 120 days, with and without failed attempts, with a count
/// limit and a byte limit on the deletion zone.
#[test]
fn the_planner_decides_as_the_simulator_it_replaced() {
    for name in ["default", "gfs", "business-hours"] {
        let p = load(name, "{}");
        for (fail_rate, max_bytes) in [(0.0, None), (0.2, None), (0.1, Some(100 << 30))] {
            let params = sim_params(fail_rate, max_bytes, 120);
            let planned = simulate(&params, &p);
            let legacy = legacy_sim::simulate(&params, &p);
            let events: Vec<legacy_sim::Event> = planned
                .events
                .iter()
                .map(|e| (e.at, e.kind, e.id.clone()))
                .collect();
            assert!(
                planned.evicted > 0 && planned.aged > 0,
                "{name}: the timeline must reach aging and eviction"
            );
            assert_eq!(
                events.len(),
                legacy.events.len(),
                "{name} at fail rate {fail_rate}: event counts differ"
            );
            if let Some(i) = (0..events.len()).find(|&i| events[i] != legacy.events[i]) {
                panic!(
                    "{name} at fail rate {fail_rate}: event {i} differs: planner {:?}, before {:?}",
                    events[i], legacy.events[i]
                );
            }
            assert_eq!(
                (planned.decisions, planned.fallbacks),
                (legacy.decisions, legacy.fallbacks),
                "{name}: decisions asked"
            );
        }
    }
}

/// A plan as text: one line per step (action, backup, cause, who decided, reason).
fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    for step in &plan.steps {
        let (what, id) = match &step.action {
            Action::Age { id, .. } => ("age", id),
            Action::Evict { id } => ("evict", id),
        };
        out.push_str(&format!(
            "{what} {id} [{:?} by {}] {}\n",
            step.cause, step.by, step.reason
        ));
    }
    for a in &plan.asked {
        out.push_str(&format!(
            "asked {} of {}{}\n",
            a.decision,
            a.by,
            a.fault
                .as_ref()
                .map(|f| format!(" (fault: {f})"))
                .unwrap_or_default()
        ));
    }
    if !plan.stuck.is_empty() {
        out.push_str(&format!("stuck: {:?}\n", plan.stuck));
    }
    out
}

/// Snapshots of the plans the shipped policies make on one Wednesday morning: a pass of
/// the lifecycle with backups due and a full deletion zone (a month of dailies and a
/// day of hourlies), and room made for a new backup in a full black box.
#[test]
fn plans_of_the_shipped_policies() {
    let now = WED + 10 * H;
    let bb: Vec<BackupView> = (0..6)
        .map(|i| backup(now - H * (6 - i), u64::from(i)))
        .collect();
    let mut del: Vec<BackupView> = (0..24)
        .map(|i| backup(now - H * (8 + i), 100 + u64::from(i)))
        .collect();
    del.extend((1..=26).map(|d| backup(WED - 24 * H * d, 200 + u64::from(d))));
    let cap = |n| Capacity {
        max_backups: n,
        max_bytes: None,
    };
    let state = State {
        now,
        schedule: schedule(),
        capacities: [cap(6), cap(50), cap(10)],
        black_box: bb,
        deletion: del,
        reserved: Usage::default(),
        damaged: Default::default(),
        recent: Vec::new(),
        settings: "{}".into(),
    };
    for name in ["default", "gfs", "business-hours"] {
        let p = load(name, "{}");
        let tick = plan_tick(state.clone(), &p);
        let room = plan_room(state.clone(), &p, 1, 1 << 20);
        insta::assert_snapshot!(
            format!("plan_{name}"),
            format!(
                "tick:\n{}\nroom for a new backup:\n{}",
                plan_text(&tick),
                plan_text(&room)
            )
        );
    }
}

#[test]
fn broken_fixtures_are_stopped_and_the_builtin_rules_decide() {
    let now = WED + 10 * H;
    let bb: Vec<BackupView> = (0..3)
        .map(|i| backup(WED + H * (i + 1), u64::from(i)))
        .collect();
    let del: Vec<BackupView> = (0..30)
        .map(|i| backup(WED - H * (i + 1), 100 + u64::from(i)))
        .collect();
    let mut c = ctx(now, "", &[]);
    c.zones[1].usage = Usage {
        backups: 30,
        bytes: 30 << 20,
    };
    let room = Room {
        backups: 1,
        bytes: 1 << 20,
    };
    let builtin = Decider {
        rules: &BuiltinRules,
    };
    let want_interval = builtin.interval(&c).value;
    let want_aging = builtin.aging(&c, &bb).value;
    let want_eviction = builtin.eviction(&c, &del, room).value;
    assert_eq!(want_eviction.len(), 1);
    for (name, expect) in [
        ("fixture-spin", PolicyFault::OutOfFuel),
        ("fixture-hog", PolicyFault::OutOfMemory),
        ("fixture-trap", PolicyFault::Trap(String::new())),
        ("fixture-liar", PolicyFault::BadAnswer(String::new())),
    ] {
        let p = load(name, "");
        let d = Decider { rules: &p };
        let same_kind = |f: &Option<PolicyFault>| {
            std::mem::discriminant(f.as_ref().expect("a fault")) == std::mem::discriminant(&expect)
        };
        let i = d.interval(&c);
        assert!(same_kind(&i.fault), "{name} interval: {:?}", i.fault);
        assert_eq!(i.value, want_interval, "{name}");
        let a = d.aging(&c, &bb);
        assert!(same_kind(&a.fault), "{name} aging: {:?}", a.fault);
        assert_eq!(a.value, want_aging, "{name}");
        let e = d.eviction(&c, &del, room);
        assert!(same_kind(&e.fault), "{name} eviction: {:?}", e.fault);
        assert_eq!(
            e.value, want_eviction,
            "{name}: nothing the built-in rules keep is evicted"
        );
        assert_eq!(e.by, "built-in default");
    }
    // The trap fixture's three ways: a panic, an exhausted call stack and a read outside
    // linear memory, the last two caught by the checks compiled in.
    let p = load("fixture-trap", "");
    let d = Decider { rules: &p };
    for (fault, says) in [
        (d.interval(&c).fault, "unreachable"),
        (d.aging(&c, &bb).fault, "call stack exhausted"),
        (
            d.eviction(&c, &del, room).fault,
            "out of bounds memory access",
        ),
    ] {
        let text = fault.expect("a trap").to_string();
        assert!(text.contains(says), "expected {says:?}: {text}");
    }
    let engine = engine().expect("engine");
    let err = WasmPolicy::load(&engine, wasm("fixture-bad-import"), "", None)
        .expect_err("a policy with a clock import must be refused");
    let msg = err.to_string();
    assert!(msg.contains("fixture:bad-import/clock"), "{msg}");
    assert!(msg.contains("does not offer"), "{msg}");
}

/// A host whose policy is a broken fixture: its zones end up exactly as the built-in
/// rules would leave them.
#[test]
fn a_broken_policy_in_charge_loses_nothing() {
    for fixture in [
        "fixture-liar",
        "fixture-trap",
        "fixture-spin",
        "fixture-hog",
    ] {
        let policies = tempfile::tempdir().expect("tempdir");
        fs::copy(
            wasm(fixture),
            policies.path().join(format!("{fixture}.wasm")),
        )
        .expect("copy");
        let host = Host::new(&format!(
            "[schedule]\ninterval = \"1s\"\naging = \"1s\"\n\
             [policy]\nname = \"{fixture}\"\ndir = \"{}\"\n\
             [zones.black_box]\nmax_backups = 2\n[zones.deletion]\nmax_backups = 2\n",
            policies.path().display()
        ));
        fs::write(host.src().join("f"), fixture).expect("write");
        let mut made = Vec::new();
        for _ in 0..5 {
            made.push(host.backup(&[])["id"].as_str().expect("id").to_owned());
        }
        std::thread::sleep(Duration::from_millis(1100));
        let out = host.cmd(&["tick"]).output().expect("tick");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(fixture) && log.contains("built-in"),
            "{fixture}: {log}"
        );
        // Built-in rules: the two newest are in the deletion zone, the rest evicted.
        let list = host.list(None);
        let mut kept: Vec<&str> = list.iter().map(|r| r["id"].as_str().expect("id")).collect();
        kept.sort();
        assert_eq!(
            kept,
            made[3..].iter().map(String::as_str).collect::<Vec<_>>(),
            "{fixture}"
        );
        let history = host.ok(&["catalog", "history", "--json"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(&history).expect("json");
        let evicted: Vec<&str> = events
            .iter()
            .filter(|e| e["kind"] == "evicted")
            .filter_map(|e| e["backup_id"].as_str())
            .collect();
        let mut evicted_sorted = evicted.clone();
        evicted_sorted.sort();
        assert_eq!(
            evicted_sorted,
            made[..3].iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}

/// Writes a policy crate outside the repository, as the SDK guide says, builds it for
/// wasm32-unknown-unknown and wraps it with `tierkeep-policies wrap`.
fn build_outside_policy(dir: &Path, interval_minutes: u64) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    fs::create_dir_all(dir.join("src")).expect("mkdir");
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"every-few-minutes\"\nversion = \"1.2.3\"\nedition = \"2024\"\n\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
             [dependencies]\ntierkeep-sdk = {{ path = \"{}\" }}\n\n\
             [profile.release]\nopt-level = \"s\"\nstrip = true\npanic = \"abort\"\n\n[workspace]\n",
            repo.join("sdk").display()
        ),
    )
    .expect("manifest");
    fs::write(
        dir.join("src/lib.rs"),
        format!(
            "use tierkeep_sdk::{{Context, Metadata, Policy, time}};\n\
             pub struct EveryFewMinutes;\n\
             impl Policy for EveryFewMinutes {{\n\
                 type Settings = ();\n\
                 fn metadata() -> Metadata {{\n\
                     tierkeep_sdk::metadata(\"every-few-minutes\", \"1.2.3\", \"test\", vec![])\n\
                 }}\n\
                 fn interval(_: &Context, _: &()) -> u64 {{ {interval_minutes} * time::MINUTE }}\n\
             }}\n\
             tierkeep_sdk::export_policy!(EveryFewMinutes);\n"
        ),
    )
    .expect("lib.rs");
    // Same dependency versions as the repository (and so the same compiled crates).
    fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")).expect("lock");
    // The target folder the policy bundle builds into (shared compiled dependencies).
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("policy-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = target.join("wasm32-unknown-unknown/release/every_few_minutes.wasm");
    // `cargo run -p tierkeep-policies -- wrap CORE OUT` of the guide, as a library call.
    let component = dir.join("component.wasm");
    let wrapped = tierkeep_policies::wrap(&fs::read(&core).expect("core module")).expect("wrap");
    fs::write(&component, wrapped).expect("write component");
    component
}

#[test]
fn a_policy_built_outside_the_repo_is_picked_up_without_a_restart() {
    let work = tempfile::tempdir().expect("tempdir");
    let policies = work.path().join("policies");
    fs::create_dir_all(&policies).expect("mkdir");
    let host = PolicyHost::new("every-few-minutes", Some(&policies), "{}", None);
    let c = ctx(WED, "", &[]);
    // Not there yet: the built-in rules decide, and status says why.
    assert_eq!(host.rules().name(), "built-in default");
    assert!(
        host.status()
            .error
            .expect("error")
            .contains("every-few-minutes.wasm")
    );

    let first = build_outside_policy(&work.path().join("v1"), 7);
    let drop_in = |from: &Path| {
        let tmp = policies.join(".incoming");
        fs::copy(from, &tmp).expect("copy");
        fs::rename(&tmp, policies.join("every-few-minutes.wasm")).expect("rename");
    };
    drop_in(&first);
    let rules = host.rules();
    assert_eq!(rules.name(), "every-few-minutes");
    assert_eq!(rules.interval(&c), Ok(7 * 60_000));

    // A broken file never replaces the working policy.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(policies.join(".incoming"), b"\0asm\x0d\0\x01\0garbage").expect("write");
    fs::rename(
        policies.join(".incoming"),
        policies.join("every-few-minutes.wasm"),
    )
    .expect("mv");
    let rules = host.rules();
    assert_eq!(rules.interval(&c), Ok(7 * 60_000), "still the working one");
    assert!(
        host.status()
            .error
            .expect("reported")
            .contains("does not compile")
    );

    // A fixed version replaces it.
    let second = build_outside_policy(&work.path().join("v2"), 11);
    drop_in(&second);
    assert_eq!(host.rules().interval(&c), Ok(11 * 60_000));
    assert!(host.status().error.is_none());
}

#[test]
fn policy_commands_list_inspect_check_and_simulate() {
    let policies = tempfile::tempdir().expect("tempdir");
    for name in ["gfs", "business-hours", "fixture-trap"] {
        fs::copy(wasm(name), policies.path().join(format!("{name}.wasm"))).expect("copy");
    }
    let host = Host::new(&format!(
        "[policy]\nname = \"gfs\"\ndir = \"{}\"\nsettings = {{ hourly = 12, daily = 7 }}\n\
         [zones.black_box]\nmax_backups = 3\n[zones.deletion]\nmax_backups = 40\n",
        policies.path().display()
    ));
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&host.ok(&["policy", "list", "--json"])).expect("json");
    let names: Vec<&str> = list
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["default", "business-hours", "fixture-trap", "gfs"]);
    let gfs = &list[3];
    assert_eq!(gfs["active"], true);
    assert_eq!(gfs["version"], "0.1.0");
    assert!(
        list[2].get("error").is_none(),
        "a trapping policy still loads"
    );

    let inspect: serde_json::Value = serde_json::from_str(&host.ok(&[
        "policy",
        "inspect",
        "--json",
        &wasm("gfs").display().to_string(),
    ]))
    .expect("json");
    assert_eq!(inspect["metadata"]["name"], "gfs");
    let settings: Vec<&str> = inspect["metadata"]["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(settings, ["hourly", "daily", "weekly", "monthly"]);
    // Only the contract: gfs does not log, so it imports no more than the types.
    let imports = inspect["imports"].as_array().expect("imports");
    assert!(
        imports
            .iter()
            .all(|i| i.as_str().expect("import").starts_with("tierkeep:policy/")),
        "{imports:?}"
    );
    let exports = inspect["exports"].as_array().expect("exports");
    assert!(
        exports.iter().any(|e| e
            .as_str()
            .expect("export")
            .contains("tierkeep:policy/policy@0.1.0 {describe")),
        "{exports:?}"
    );
    assert!(inspect["size_bytes"].as_u64().expect("size") > 1000);

    host.ok(&["policy", "check", &wasm("gfs").display().to_string()]);
    let refused = host
        .cmd(&[
            "policy",
            "check",
            "--settings",
            r#"{"yearly": 2}"#,
            &wasm("gfs").display().to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(1));
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(
        text.contains("settings refused") && text.contains("yearly"),
        "{text}"
    );
    let out = host
        .cmd(&[
            "policy",
            "check",
            "--settings",
            "{}",
            &wasm("fixture-trap").display().to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAULT: trapped"), "{text}");

    let svg = host.root().join("chart.svg");
    let sim: serde_json::Value = serde_json::from_str(&host.ok(&[
        "policy",
        "simulate",
        "--for",
        "90d",
        "--backup-size",
        "20GiB",
        "--fail-rate",
        "0.05",
        "--json",
        "--svg",
        &svg.display().to_string(),
    ]))
    .expect("json");
    let fin = &sim["final"];
    assert!(fin["black-box"].as_u64().expect("bb") <= 3);
    assert_eq!(fin["deletion"].as_u64(), Some(40), "full after 90 days");
    assert_eq!(fin["reserved"].as_u64(), Some(0));
    let events = sim["events"].as_array().expect("events");
    let count = |k: &str| events.iter().filter(|e| e["kind"] == k).count() as u64;
    assert!(count("created") > 1900, "hourly for 90 days, 5% failing");
    assert!(count("failed") > 40);
    assert_eq!(
        count("created") - count("aged"),
        fin["black-box"].as_u64().expect("bb")
    );
    assert_eq!(count("aged") - count("evicted"), 40);
    assert!(events[0]["at"].as_str().expect("at").ends_with('Z'));
    assert_eq!(sim["policy"], "gfs");
    assert_eq!(sim["fallbacks"], 0);
    let chart = fs::read_to_string(&svg).expect("svg");
    assert!(chart.starts_with("<svg") && chart.contains("polyline"));

    // The human summary, and status naming the policy in force.
    let text = host.ok(&["policy", "simulate", "--for", "14d"]);
    assert!(text.contains("policy gfs over 14d"), "{text}");
    let status = host.ok(&["status"]);
    assert!(status.contains("gfs 0.1.0"), "{status}");
}

/// `status` names what decides: the loaded file (name, version, path), the built-in
/// rules as configured, or the built-in rules standing in for a missing or broken file;
/// a long-running host that loaded a working version says it keeps that one.
#[test]
fn status_says_which_policy_decides() {
    let policies = tempfile::tempdir().expect("tempdir");
    let file = policies.path().join("gfs.wasm");
    let host = Host::new(&format!(
        "[policy]\nname = \"gfs\"\ndir = \"{}\"\n",
        policies.path().display()
    ));
    let status = |host: &Host| -> (String, serde_json::Value) {
        let text = host.ok(&["status"]);
        let json = serde_json::from_str(&host.ok(&["status", "--json"])).expect("json");
        (text, json)
    };

    // Missing: the built-in rules stand in, and say so.
    let (text, json) = status(&host);
    assert!(
        text.contains(&format!(
            "policy    built-in default rules, because {} is missing",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("any tierkeep started now, uses the built-in default rules"),
        "{text}"
    );
    assert!(!text.contains("gfs (built-in)"), "{text}");
    assert_eq!(json["policy_state"], "built-in-fallback");
    assert_eq!(json["policy_file"], file.display().to_string());
    assert!(
        json["policy_error"]
            .as_str()
            .expect("error")
            .contains("gfs.wasm")
    );

    // Loaded: name, version and file; config check agrees.
    fs::copy(wasm("gfs"), &file).expect("copy");
    let (text, json) = status(&host);
    assert!(
        text.contains(&format!("policy    gfs 0.1.0 ({})", file.display())),
        "{text}"
    );
    assert!(!text.contains("POLICY ERROR"), "{text}");
    assert_eq!(json["policy_state"], "file");
    assert_eq!(json["policy_version"], "0.1.0");
    assert!(json["policy_error"].is_null());
    let out = host.ok(&["config", "check"]);
    assert!(out.contains("policy: gfs 0.1.0"), "{out}");

    // A daemon-like host that loaded it keeps it when a broken file replaces it...
    let running = PolicyHost::new("gfs", Some(policies.path()), "{}", None);
    assert_eq!(running.rules().name(), "gfs");
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&file, b"\0asm\x0d\0\x01\0garbage").expect("write");
    let kept = running.status();
    assert_eq!(kept.deciding, tierkeep::policy::Deciding::KeptPrevious);
    assert_eq!(running.rules().name(), "gfs");
    let said = kept.describe();
    assert!(
        said.starts_with("gfs 0.1.0") && said.contains("is broken: does not compile"),
        "{said}"
    );

    // ...while a new process (this status) cannot know that, and says what it knows.
    let (text, json) = status(&host);
    assert!(
        text.contains(&format!(
            "policy    built-in default rules, because {} is broken: does not compile",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("tierkeep policy check {}", file.display())),
        "{text}"
    );
    assert_eq!(json["policy_state"], "built-in-fallback");
    assert!(
        json["policy_error"]
            .as_str()
            .expect("error")
            .contains("does not compile")
    );
    // The built-in rules as configured are named as such, with no error.
    let host = Host::new("");
    let (text, json) = status(&host);
    assert!(
        text.contains("policy    built-in default rules\n"),
        "{text}"
    );
    assert_eq!(json["policy_state"], "built-in");
}

/// `policy check` and `policy simulate` work without any configuration, on the built-in
/// defaults, and say so.
#[test]
fn policy_tools_need_no_configuration() {
    let empty = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("tierkeep"))
            .args(args)
            .current_dir(empty.path())
            .env_remove("TIERKEEP_CONFIG")
            .env_remove("TIERKEEP_LOG")
            .output()
            .expect("run tierkeep");
        assert!(
            out.status.success(),
            "tierkeep {args:?}: {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    let gfs = wasm("gfs").display().to_string();
    let (out, err) = run(&["policy", "check", &gfs]);
    assert!(
        out.contains("loaded gfs 0.1.0") && out.contains("OK"),
        "{out}"
    );
    assert!(err.contains("no configuration file"), "{err}");
    assert!(err.contains("built-in defaults"), "{err}");
    let (out, _) = run(&["policy", "simulate", &gfs, "--for", "3d", "--json"]);
    let sim: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(sim["policy"], "gfs");
    assert!(sim["final"]["black-box"].as_u64().expect("bb") <= 3);
    let (out, _) = run(&["policy", "simulate", "--for", "2d"]);
    assert!(out.contains("over 2d"), "{out}");
    let (out, _) = run(&["policy", "list"]);
    assert!(out.contains("* default"), "{out}");
}
