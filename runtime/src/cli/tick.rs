//! `tierkeep tick`: one pass of aging and eviction, then exit (cron, tests).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::{Global, now, print_json};

#[derive(Debug, Args)]
pub struct TickArgs {
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, a: TickArgs) -> Result<ExitCode> {
    let tk = g.open(false)?;
    let progress = g.progress(a.json);
    let report = tk.tick(now(), &progress).await?;
    // A pass that found a damaged backup did the rest of its work, and fails so that
    // whoever runs it (cron) hears of it; later passes skip that backup.
    let code = if report.damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if a.json {
        print_json(&report)?;
        return Ok(code);
    }
    let r = &report.recovery;
    for id in &r.finished_moves {
        outln!("finished an interrupted move: {id}");
    }
    for i in &r.removed_incomplete {
        outln!("removed incomplete: {i}");
    }
    for id in &r.catalog.missing {
        outln!("MISSING: {id} is recorded in the catalog but no zone holds it");
    }
    for id in &report.aged {
        outln!("aged: {id} -> deletion");
    }
    for id in &report.evicted {
        outln!("evicted: {id} (deletion zone full)");
    }
    for id in &report.damaged {
        errln!(
            "error: {id}: its black-box copy is damaged (it does not match its manifest): not \
             moved, marked damaged (see `tierkeep status`); the other backups aged as usual"
        );
    }
    if report.aged.is_empty() && report.evicted.is_empty() && report.damaged.is_empty() {
        outln!("nothing to age or evict");
    }
    Ok(code)
}
