//! `tierkeep backup [--manual] [--label TEXT]`

use std::process::ExitCode;

use anyhow::Result;
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
    let out = tk.backup(kind, a.label, &now, &progress).await?;
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
