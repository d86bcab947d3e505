//! `tierkeep ls ID [PATH] [--json]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tierkeep::domain::format_size;

use super::{Global, print_json};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Backup id (or a unique prefix of it), in any zone.
    pub id: String,
    /// Only this original absolute path (a file, or a directory and what it holds).
    pub path: Option<PathBuf>,
    /// Print the listing as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub identity: super::IdentityArg,
}

pub async fn run(g: &Global, a: LsArgs) -> Result<ExitCode> {
    let tk = g.open_with(false, &a.identity)?;
    let listing = tk.ls(&a.id, a.path.as_deref()).await?;
    if a.json {
        print_json(&listing)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in &listing.entries {
        let link = match (&e.link, e.kind) {
            (Some(l), "symlink") => format!(" -> {l}"),
            (Some(l), _) => format!(" link to {l}"),
            (None, _) => String::new(),
        };
        let mtime = e
            .mtime
            .format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap_or_default();
        outln!(
            "{:<8} {} {:>5}/{:<5} {:>10} {mtime} {}{link}",
            e.kind,
            e.mode,
            e.uid,
            e.gid,
            format_size(e.size),
            e.path
        );
    }
    if !listing.from_index {
        errln!(
            "(read from the whole archive: backup {} has no usable index)",
            listing.id
        );
    }
    Ok(ExitCode::SUCCESS)
}
