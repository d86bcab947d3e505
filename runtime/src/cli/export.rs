//! `tierkeep export ID --to FILE`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tierkeep::domain::format_size;

use super::{Global, print_json};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Backup id (or a unique prefix of it).
    pub id: String,
    /// File to write (`archive.tar.zst` format).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, a: ExportArgs) -> Result<ExitCode> {
    let tk = g.open(false)?;
    let progress = g.progress(a.json);
    let rec = tk.export(&a.id, &a.to, a.force, &progress).await?;
    if a.json {
        print_json(&serde_json::json!({
            "id": rec.id.as_str(),
            "zone": rec.zone,
            "path": a.to,
            "size_bytes": rec.size_bytes,
            "sha256": rec.sha256,
        }))?;
    } else {
        outln!(
            "wrote {} ({}, verified)\nsha256 {}\nrestore with: zstd -d < {} | tar -x -C DIR",
            a.to.display(),
            format_size(rec.size_bytes),
            rec.sha256,
            a.to.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
