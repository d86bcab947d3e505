//! `tierkeep verify [ID] [--all] [--deep]`

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::{Global, now, print_json};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id (or a unique prefix); without it, every backup.
    #[arg(conflicts_with = "all")]
    pub id: Option<String>,
    /// Every backup in every zone (the default without ID).
    #[arg(long)]
    pub all: bool,
    /// Also decompress every entry and apply every check of `restore` (names, links,
    /// symlinks, complete data), writing nothing: proves the archive restores.
    #[arg(long)]
    pub deep: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub identity: super::IdentityArg,
}

pub async fn run(g: &Global, a: VerifyArgs) -> Result<ExitCode> {
    let tk = g.open_with(false, &a.identity)?;
    let progress = g.progress(a.json);
    let results = tk.verify(a.id.as_deref(), a.deep, now(), &progress).await?;
    let failed = results.iter().filter(|r| !r.ok).count();
    if a.json {
        print_json(&results)?;
    } else {
        for r in &results {
            match &r.error {
                None => outln!("ok      {} ({})", r.id, r.zone),
                Some(e) => outln!("FAILED  {} ({}): {e}", r.id, r.zone),
            }
        }
        outln!("{} verified, {} failed", results.len() - failed, failed);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
