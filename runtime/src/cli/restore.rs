//! `tierkeep restore ID --to DIR [--path P] [--force] [--keep-setuid]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tierkeep::domain::format_size;

use super::{Global, print_json};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id (or a unique prefix of it).
    pub id: String,
    /// Directory to restore into; `/` puts the data back where it was.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Restore only this original absolute path (a file or a directory).
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Restore into a non-empty directory, replacing what is in the way.
    #[arg(long)]
    pub force: bool,
    /// Keep setuid and setgid bits of files even when DIR is not `/` (by default they
    /// are dropped there, with a warning naming each file).
    #[arg(long)]
    pub keep_setuid: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub identity: super::IdentityArg,
}

pub async fn run(g: &Global, a: RestoreArgs) -> Result<ExitCode> {
    let tk = g.open_with(false, &a.identity)?;
    let progress = g.progress(a.json);
    let out = tk
        .restore(
            &a.id,
            &a.to,
            a.force,
            a.path.as_deref(),
            a.keep_setuid,
            &progress,
        )
        .await?;
    if a.json {
        print_json(&out)?;
    } else {
        outln!(
            "restored {} from the {} zone{} into {}: {} entries, {}",
            out.id,
            out.zone,
            if out.exported_first {
                " (exported and verified first)"
            } else {
                ""
            },
            out.target.display(),
            out.entries,
            format_size(out.bytes)
        );
        for w in &out.warnings {
            errln!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
