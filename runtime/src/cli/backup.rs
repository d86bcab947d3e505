//! `tierkeep backup [--manual] [--label TEXT]`

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tierkeep::domain::{BackupKind, format_size};

use super::{Global, now, print_json};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A manual backup, kept in the reserved zone until an operator deletes it.
    #[arg(long)]
    pub manual: bool,
    /// A label stored in the manifest.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, a: BackupArgs) -> Result<ExitCode> {
    let tk = g.open(true)?;
    let kind = if a.manual {
        BackupKind::Manual
    } else {
        BackupKind::Scheduled
    };
    let progress = g.progress(a.json);
    // SIGINT or SIGTERM stops the backup where it stands (what it leaves is recovered by
    // the next run), but still runs a post-hook that is owed, so nothing stays frozen.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let out = tokio::select! {
        out = tk.backup(kind, a.label, &now, &progress) => out?,
        _ = tokio::signal::ctrl_c() => return interrupted(&tk, "SIGINT").await,
        _ = term.recv() => return interrupted(&tk, "SIGTERM").await,
    };
    if a.json {
        print_json(&out)?;
    } else {
        let m = &out.manifest;
        println!(
            "created backup {} in the {} zone: {} entries, {} of data in a {} archive ({:.1} s)",
            m.id,
            out.zone,
            m.entries,
            format_size(m.logical_bytes),
            format_size(m.archive_bytes),
            out.seconds
        );
        println!("sha256 {}", m.archive_sha256);
        for w in &m.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn interrupted(tk: &tierkeep::ops::Tierkeep, signal: &str) -> Result<ExitCode> {
    tk.release_hooks().await;
    anyhow::bail!(
        "{signal}: the backup was stopped before it was committed; the next tierkeep run \
         removes what it left"
    )
}
