//! `tierkeep list [--zone Z] [--json]`

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use tierkeep::domain::{Zone, format_size, rfc3339};
use tierkeep::ops::Tierkeep;
use tierkeep::store::ListedState;

use super::{Global, print_json};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this zone: black-box, deletion or reserved.
    #[arg(long)]
    pub zone: Option<Zone>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    id: String,
    zone: Zone,
    kind: String,
    created_at: String,
    size_bytes: u64,
    sha256: String,
    label: Option<String>,
    host_id: String,
    logical_bytes: u64,
    entries: u64,
    /// Why the copy is marked damaged, if it is.
    damaged: Option<String>,
}

pub async fn run(g: &Global, a: ListArgs) -> Result<ExitCode> {
    let tk = g.open(false)?;
    let catalog = tk.catalog()?;
    let records = catalog.list(a.zone)?;
    let damaged: std::collections::HashMap<String, String> = catalog
        .damaged()?
        .into_iter()
        .map(|(r, e)| (r.id.to_string(), e.reason))
        .collect();
    if records.is_empty() && (a.zone.is_none() || catalog.list(None)?.is_empty()) {
        rebuild_hint(&tk).await;
    }
    if a.json {
        let rows: Vec<Row> = records
            .into_iter()
            .map(|r| Row {
                id: r.id.to_string(),
                zone: r.zone,
                kind: r.kind.to_string(),
                created_at: rfc3339(r.created_at),
                size_bytes: r.size_bytes,
                sha256: r.sha256,
                label: r.label,
                host_id: r.host_id,
                logical_bytes: r.logical_bytes,
                entries: r.entries,
                damaged: damaged.get(r.id.as_str()).cloned(),
            })
            .collect();
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        outln!(
            "no backups{}",
            a.zone
                .map(|z| format!(" in the {z} zone"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<34} {:<9} {:<9} {:<20} {:>10}  LABEL",
        "ID",
        "ZONE",
        "KIND",
        "CREATED",
        "SIZE"
    );
    for r in records {
        let mark = if damaged.contains_key(r.id.as_str()) {
            "DAMAGED "
        } else {
            ""
        };
        outln!(
            "{:<34} {:<9} {:<9} {:<20} {:>10}  {mark}{}",
            r.id.as_str(),
            r.zone.as_str(),
            r.kind.as_str(),
            rfc3339(r.created_at).chars().take(19).collect::<String>(),
            format_size(r.size_bytes),
            r.label.unwrap_or_default()
        );
    }
    if !damaged.is_empty() {
        outln!(
            "{} damaged backup(s): their copy does not match the manifest; see `tierkeep status`",
            damaged.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// With an empty catalog, looks whether the zones hold committed backups of this host
/// (after the loss of data_dir, say) and, if they do, says on stderr how to get them back
/// into the catalog. Best effort: a zone that does not answer quickly is skipped.
async fn rebuild_hint(tk: &Tierkeep) {
    let mut found = Vec::new();
    for zone in Zone::ALL {
        let listed = tokio::time::timeout(HINT_TIMEOUT, tk.store(zone).list()).await;
        let Ok(Ok(listed)) = listed else {
            tracing::debug!(%zone, "zone not listed for the rebuild hint");
            continue;
        };
        let n = listed
            .iter()
            .filter(|l| l.key.host == tk.settings.host_id)
            .filter(|l| matches!(l.state, ListedState::Committed(_)))
            .count();
        if n > 0 {
            found.push(format!("{n} in the {zone} zone"));
        }
    }
    if !found.is_empty() {
        errln!(
            "hint: the catalog is empty, but the zones hold committed backups of host {} \
             ({}): `tierkeep catalog rebuild` adds them to the catalog",
            tk.settings.host_id,
            found.join(", ")
        );
    }
}

/// How long the rebuild hint waits for each zone's listing.
const HINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
