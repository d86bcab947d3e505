//! `tierkeep policy`: list, inspect, check and simulate policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use tierkeep::decision::{BuiltinRules, Decider, PolicyContext, Room, Rules, ZoneSnapshot};
use tierkeep::domain::{
    BackupId, BackupKind, BackupView, Usage, Zone, format_duration, format_size, parse_duration,
    parse_size,
};
use tierkeep::policy::{WasmPolicy, engine};
use tierkeep::simulate::{SimParams, simulate, svg};

use super::{Global, UsageError, now, print_json};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The built-in policy and every .wasm in policy.dir, with the one in force.
    List(ListArgs),
    /// A policy file's metadata, settings, imports/exports and size.
    Inspect(InspectArgs),
    /// Load a policy, validate settings and try each decision once; exit 1 if broken.
    Check(CheckArgs),
    /// Run a policy on a virtual clock with the real decision engine.
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The policy component (.wasm).
    pub file: PathBuf,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy component (.wasm).
    pub file: PathBuf,
    /// Settings as JSON (default: the configuration's policy.settings).
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The policy component (default: the configured policy).
    pub file: Option<PathBuf>,
    /// How long to simulate.
    #[arg(long = "for", default_value = "30d", value_name = "DURATION")]
    pub period: String,
    /// Archive size of each backup.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub backup_size: String,
    /// Probability that a scheduled backup fails.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Seed for the failures.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Settings as JSON (default: the configuration's policy.settings).
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// Write an SVG chart of zone occupancy and backup lifetimes.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// JSON output: {"final": {...}, "events": [...], ...}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, c: PolicyCommand) -> Result<ExitCode> {
    match c {
        PolicyCommand::List(a) => list(g, a),
        PolicyCommand::Inspect(a) => inspect(a),
        PolicyCommand::Check(a) => check(g, a),
        PolicyCommand::Simulate(a) => simulate_cmd(g, a),
    }
}

fn load(file: &Path, settings: &str) -> Result<WasmPolicy> {
    let engine = engine().map_err(anyhow::Error::msg)?;
    Ok(WasmPolicy::load(&engine, file, settings, None)?)
}

fn list(g: &Global, a: ListArgs) -> Result<ExitCode> {
    let settings = g.load_or_defaults()?.settings;
    let mut rows = vec![serde_json::json!({
        "name": "default",
        "source": "built-in",
        "description": "interval T1; age after T2; evict the earliest first",
        "active": settings.policy == "default"
            && !settings.policy_dir.as_ref().is_some_and(|d| d.join("default.wasm").is_file()),
    })];
    if let Some(dir) = &settings.policy_dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("policy.dir {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        files.sort();
        let json = serde_json::to_string(&settings.policy_settings)?;
        for f in files {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let active = stem == settings.policy;
            let row = match load(&f, if active { &json } else { "" }) {
                Ok(p) => serde_json::json!({
                    "name": stem, "source": f, "version": p.metadata.version,
                    "description": p.metadata.description, "active": active,
                }),
                Err(e) => serde_json::json!({
                    "name": stem, "source": f, "error": e.to_string(), "active": active,
                }),
            };
            rows.push(row);
        }
    }
    if a.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &rows {
        let mark = if r["active"].as_bool() == Some(true) {
            "*"
        } else {
            " "
        };
        let source = r["source"].as_str().unwrap_or_default();
        match r.get("error") {
            Some(e) => outln!(
                "{mark} {:<16} BROKEN  {source}: {}",
                r["name"].as_str().unwrap_or_default(),
                e.as_str().unwrap_or_default()
            ),
            None => outln!(
                "{mark} {:<16} {:<7} {source} — {}",
                r["name"].as_str().unwrap_or_default(),
                r["version"].as_str().unwrap_or("-"),
                r["description"].as_str().unwrap_or_default()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let p = load(&a.file, "")?;
    if a.json {
        print_json(&serde_json::json!({
            "file": p.path, "size_bytes": p.size, "sha256": p.sha256,
            "metadata": p.metadata, "imports": p.interface.imports,
            "exports": p.interface.exports,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "file:        {} ({})",
        p.path.display(),
        format_size(p.size)
    );
    outln!("sha256:      {}", p.sha256);
    outln!("name:        {} {}", p.metadata.name, p.metadata.version);
    outln!("description: {}", p.metadata.description);
    if p.metadata.settings.is_empty() {
        outln!("settings:    none");
    } else {
        outln!("settings:");
        for s in &p.metadata.settings {
            outln!(
                "  {:<20} {:<14} default {:<10} {}",
                s.name,
                s.kind,
                s.default,
                s.description
            );
        }
    }
    outln!("imports:     {}", p.interface.imports.join("; "));
    outln!("exports:     {}", p.interface.exports.join("; "));
    Ok(ExitCode::SUCCESS)
}

/// A small context and a few backups to try each decision on.
fn sample(settings: &str) -> (PolicyContext, Vec<BackupView>) {
    let now = now();
    let schedule = tierkeep::domain::Schedule {
        interval: Duration::from_secs(3600),
        aging: Duration::from_secs(4 * 3600),
    };
    let backups: Vec<BackupView> = (1..=5u64)
        .map(|i| {
            let at = now - Duration::from_secs(i * 3600 * 3);
            BackupView {
                id: BackupId::new(at, i),
                created_at: at,
                size_bytes: 1 << 20,
                kind: BackupKind::Scheduled,
            }
        })
        .collect();
    let cap = |n| tierkeep::domain::Capacity {
        max_backups: n,
        max_bytes: None,
    };
    let usage = Usage {
        backups: 5,
        bytes: 5 << 20,
    };
    let ctx = PolicyContext {
        now,
        schedule,
        zones: [
            ZoneSnapshot {
                zone: Zone::BlackBox,
                capacity: cap(5),
                usage,
            },
            ZoneSnapshot {
                zone: Zone::Deletion,
                capacity: cap(5),
                usage,
            },
            ZoneSnapshot {
                zone: Zone::Reserved,
                capacity: cap(5),
                usage: Usage::default(),
            },
        ],
        recent: Vec::new(),
        settings: settings.to_owned(),
    };
    (ctx, backups)
}

fn check(g: &Global, a: CheckArgs) -> Result<ExitCode> {
    let settings = match a.settings {
        Some(s) => s,
        None => serde_json::to_string(&g.load_or_defaults()?.settings.policy_settings)?,
    };
    let p = match load(&a.file, &settings) {
        Ok(p) => p,
        Err(e) => {
            outln!("BROKEN: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    outln!(
        "loaded {} {} ({}), settings accepted",
        p.metadata.name,
        p.metadata.version,
        format_size(p.size)
    );
    let (ctx, backups) = sample(&settings);
    let d = Decider { rules: &p };
    let mut broken = false;
    let mut report =
        |what: &str, fault: &Option<tierkeep::decision::PolicyFault>, ok: String| match fault {
            None => outln!("  {what:<9} ok: {ok}"),
            Some(f) => {
                broken = true;
                outln!("  {what:<9} FAULT: {f}");
            }
        };
    let i = d.interval(&ctx);
    report("interval", &i.fault, format_duration(i.value));
    let ag = d.aging(&ctx, &backups);
    report(
        "aging",
        &ag.fault,
        format!("{} of 5 backups", ag.value.len()),
    );
    let ev = d.eviction(
        &ctx,
        &backups,
        Room {
            backups: 1,
            bytes: 1 << 20,
        },
    );
    report(
        "eviction",
        &ev.fault,
        ev.value
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    if broken {
        outln!("BROKEN: its faulty decisions would be replaced by the built-in rules");
        return Ok(ExitCode::from(1));
    }
    outln!("OK");
    Ok(ExitCode::SUCCESS)
}

fn simulate_cmd(g: &Global, a: SimulateArgs) -> Result<ExitCode> {
    let settings = g.load_or_defaults()?.settings;
    let period = parse_duration(&a.period).map_err(|e| UsageError(format!("--for: {e}")))?;
    let backup_size =
        parse_size(&a.backup_size).map_err(|e| UsageError(format!("--backup-size: {e}")))?;
    if !(0.0..=1.0).contains(&a.fail_rate) {
        return Err(UsageError("--fail-rate must lie between 0 and 1".into()).into());
    }
    let json = match a.settings {
        Some(s) => s,
        None => serde_json::to_string(&settings.policy_settings)?,
    };
    let file = match a.file {
        Some(f) => Some(f),
        None => match tierkeep::policy::resolve(&settings.policy, settings.policy_dir.as_deref())
            .map_err(UsageError)?
        {
            tierkeep::policy::Source::Builtin => None,
            tierkeep::policy::Source::File(f) => Some(f),
        },
    };
    let wasm = match &file {
        Some(f) => Some(load(f, &json)?),
        None => None,
    };
    let rules: &dyn Rules = match &wasm {
        Some(p) => p,
        None => &BuiltinRules,
    };
    let params = SimParams {
        start: now(),
        period,
        backup_size,
        fail_rate: a.fail_rate,
        seed: a.seed,
        schedule: settings.schedule,
        capacities: [
            settings.zone(Zone::BlackBox).capacity,
            settings.zone(Zone::Deletion).capacity,
            settings.zone(Zone::Reserved).capacity,
        ],
        settings: json,
    };
    let started = std::time::Instant::now();
    let report = simulate(&params, rules);
    let took = started.elapsed();
    if let Some(path) = &a.svg {
        std::fs::write(path, svg(&report, &params))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "policy {} over {} ({} per backup, fail rate {}), simulated in {:.0?}",
        report.policy,
        format_duration(period),
        format_size(backup_size),
        a.fail_rate,
        took
    );
    outln!(
        "created {}  failed {}  aged {}  evicted {}",
        report.created,
        report.failed,
        report.aged,
        report.evicted
    );
    outln!(
        "final:  black-box {}  deletion {}  reserved {}",
        report.final_counts.black_box,
        report.final_counts.deletion,
        report.final_counts.reserved
    );
    outln!(
        "peak:   black-box {}  deletion {} ({})",
        report.peak.black_box,
        report.peak.deletion,
        format_size(report.peak_deletion_bytes)
    );
    // Weekly summary of the timeline.
    let week = time::Duration::days(7);
    let mut next = params.start + week;
    for s in &report.samples {
        if s.at >= next {
            outln!(
                "  {}  black-box {:>3}  deletion {:>4}",
                tierkeep::domain::rfc3339(s.at),
                s.counts.black_box,
                s.counts.deletion
            );
            next += week;
        }
    }
    outln!(
        "decisions by the policy: {}; fallbacks to the built-in rules: {}{}",
        report.decisions,
        report.fallbacks,
        report
            .first_fault
            .as_ref()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default()
    );
    if let Some(path) = &a.svg {
        outln!("chart: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
