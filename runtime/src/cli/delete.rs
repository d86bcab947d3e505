//! `tierkeep delete ID --yes`

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::{Global, UsageError, now};

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Backup id (the full id; prefixes are not accepted for deletion).
    pub id: String,
    /// Confirm: the backup is removed from its zone for good.
    #[arg(long)]
    pub yes: bool,
}

pub async fn run(g: &Global, a: DeleteArgs) -> Result<ExitCode> {
    if !a.yes {
        return Err(UsageError(format!(
            "refusing to delete {} without --yes: the backup would be gone for good",
            a.id
        ))
        .into());
    }
    if a.id.parse::<tierkeep::domain::BackupId>().is_err() {
        return Err(UsageError(format!(
            "`{}` is not a full backup id; `tierkeep list` shows them",
            a.id
        ))
        .into());
    }
    let tk = g.open(false)?;
    let rec = tk.delete(&a.id, now()).await?;
    outln!("deleted {} from the {} zone", rec.id, rec.zone);
    Ok(ExitCode::SUCCESS)
}
