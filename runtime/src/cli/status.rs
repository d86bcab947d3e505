//! `tierkeep status [--json]`

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tierkeep::domain::rfc3339;
use tierkeep::ops::usage_line;

use super::{Global, now, print_json};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, a: StatusArgs) -> Result<ExitCode> {
    let tk = g.open(false)?;
    let s = tk.status(now())?;
    if a.json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("host      {}", s.host_id);
    println!("policy    {}", s.policy);
    for z in &s.zones {
        println!("{:<9} {}  {}", z.zone.as_str(), usage_line(z), z.url);
        if !z.reachable {
            println!(
                "          UNREACHABLE since {}: {}",
                z.unreachable_since.map(rfc3339).unwrap_or_default(),
                z.last_error.as_deref().unwrap_or("")
            );
        }
    }
    match s.daemon_pid {
        Some(pid) => println!("daemon    running (pid {pid})"),
        None => println!("daemon    not running (`tierkeep run`)"),
    }
    println!("next backup due {}", rfc3339(s.next_backup));
    match &s.last_result {
        Some(e) => println!(
            "last result: {} at {}{}: {}",
            e.kind,
            rfc3339(e.at),
            e.backup_id
                .as_ref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            e.reason
        ),
        None => println!("last result: no backup yet"),
    }
    if let Some(p) = &s.black_box_pressure {
        println!("BLACK-BOX PRESSURE: {p}");
    }
    for d in &s.damaged {
        println!(
            "DAMAGED: {} in the {} zone, found {}: {} (it is never moved; restore another \
             backup, and delete it with `tierkeep delete {} --yes` once you have checked it)",
            d.id,
            d.zone,
            rfc3339(d.since),
            d.reason,
            d.id
        );
    }
    if let Some(e) = &s.policy_error {
        println!("POLICY ERROR: {e}");
    }
    println!("catalog   {}", s.catalog.display());
    Ok(ExitCode::SUCCESS)
}
