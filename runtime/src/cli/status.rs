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
    outln!("host      {}", s.host_id);
    outln!("policy    {}", s.policy);
    for z in &s.zones {
        outln!("{:<9} {}  {}", z.zone.as_str(), usage_line(z), z.url);
        if !z.reachable {
            outln!(
                "          UNREACHABLE since {}: {}",
                z.unreachable_since.map(rfc3339).unwrap_or_default(),
                z.last_error.as_deref().unwrap_or("")
            );
        }
    }
    match s.daemon_pid {
        Some(pid) => outln!("daemon    running (pid {pid})"),
        None => outln!("daemon    not running (`tierkeep run`)"),
    }
    outln!("next backup due {}", rfc3339(s.next_backup));
    match &s.last_result {
        Some(e) => outln!(
            "last result: {} at {}{}: {}",
            e.kind,
            rfc3339(e.at),
            e.backup_id
                .as_ref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            e.reason
        ),
        None => outln!("last result: no backup yet"),
    }
    if let Some(p) = &s.black_box_pressure {
        outln!("BLACK-BOX PRESSURE: {p}");
    }
    for d in &s.damaged {
        outln!(
            "DAMAGED: {} in the {} zone, found {}: {} (it is never moved; restore another \
             backup, and delete it with `tierkeep delete {} --yes` once you have checked it)",
            d.id,
            d.zone,
            rfc3339(d.since),
            d.reason,
            d.id
        );
    }
    if s.policy_error.is_some() {
        outln!("POLICY ERROR: {}", policy_note(&s));
    }
    outln!("catalog   {}", s.catalog.display());
    Ok(ExitCode::SUCCESS)
}

/// What a broken or missing policy file means, said from a process that loaded it just
/// now: it cannot see what a running daemon kept.
fn policy_note(s: &tierkeep::ops::Status) -> String {
    use tierkeep::policy::Deciding;
    let Some(path) = &s.policy_file else {
        return s.policy_error.clone().unwrap_or_default();
    };
    let file = path.display();
    let (problem, until) = if path.is_file() {
        (
            "is broken",
            format!("it is fixed (`tierkeep policy check {file}` says why it is refused)"),
        )
    } else {
        ("is missing", "it is put in place".to_owned())
    };
    if s.policy_state == Deciding::KeptPrevious {
        return format!("{file} {problem}; the version loaded before keeps deciding until {until}");
    }
    let daemon = match s.daemon_pid {
        Some(pid) => format!(
            "; the running daemon (pid {pid}) keeps deciding with the version of the file it \
             loaded before, if it loaded one (its log says which), else with the built-in \
             default rules"
        ),
        None => String::new(),
    };
    format!(
        "{file} {problem}; this command, and any tierkeep started now, uses the built-in \
         default rules until {until}{daemon}"
    )
}
