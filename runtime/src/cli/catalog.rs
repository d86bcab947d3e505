//! `tierkeep catalog rebuild|history`

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use tierkeep::domain::rfc3339;

use super::{Global, now, print_json};

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog from the zones' manifests (after losing the host's disk, or
    /// to repair it); removes incomplete uploads.
    Rebuild(JsonArg),
    /// The audit trail: created, aged, evicted, deleted... newest first.
    History(HistoryArgs),
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this backup.
    pub id: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, c: CatalogCommand) -> Result<ExitCode> {
    let tk = g.open(false)?;
    match c {
        CatalogCommand::Rebuild(a) => {
            let r = tk.rebuild_catalog(now()).await?;
            if a.json {
                print_json(&r)?;
                if !r.unreachable.is_empty() {
                    return Ok(ExitCode::from(1));
                }
            } else {
                outln!(
                    "catalog rebuilt from the zones: {} backups found, {} added, {} corrected, {} missing",
                    r.backups,
                    r.catalog.discovered.len(),
                    r.catalog.moved.len(),
                    r.catalog.missing.len()
                );
                for m in &r.finished_moves {
                    outln!("finished an interrupted move: {m}");
                }
                for m in &r.catalog.missing {
                    outln!("missing: {m} (recorded, but no zone holds it)");
                }
                for i in &r.removed_incomplete {
                    outln!("removed incomplete: {i}");
                }
                for u in &r.unreadable {
                    outln!("unreadable, left alone: {u}");
                }
                for u in &r.unreachable {
                    errln!("error: zone unreachable, not rebuilt: {u}");
                }
                if !r.unreachable.is_empty() {
                    return Ok(ExitCode::from(1));
                }
            }
        }
        CatalogCommand::History(a) => {
            let catalog = tk.catalog()?;
            // A full id, or a unique prefix of a present backup.
            let id = match a.id.as_deref() {
                Some(text) if text.parse::<tierkeep::domain::BackupId>().is_err() => {
                    Some(tk.resolve(&catalog, text)?.id.to_string())
                }
                other => other.map(str::to_owned),
            };
            let events = catalog.events(id.as_deref(), a.limit)?;
            if a.json {
                print_json(&events)?;
            } else {
                for e in events {
                    let zones = match (e.zone_from, e.zone_to) {
                        (Some(f), Some(t)) => format!("{f} -> {t}"),
                        (Some(f), None) => format!("from {f}"),
                        (None, Some(t)) => format!("in {t}"),
                        (None, None) => String::new(),
                    };
                    outln!(
                        "{} {:<10} {} {} {}",
                        rfc3339(e.at),
                        e.kind,
                        e.backup_id.unwrap_or_else(|| "-".into()),
                        zones,
                        e.reason
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
