//! `tierkeep config show|check`

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use tierkeep::config::provenance;

use super::{Global, print_json};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every effective value and where it came from (secrets are never printed).
    Show(ShowArgs),
    /// Validate, including source readability and zone writability.
    Check,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, c: ConfigCommand) -> Result<ExitCode> {
    match c {
        ConfigCommand::Show(a) => {
            let loaded = g.load(false)?;
            let rows: Vec<(String, String, String)> = loaded
                .settings
                .effective()
                .into_iter()
                .map(|(k, v)| {
                    let from = provenance(&loaded.figment, &k);
                    (k, v, from)
                })
                .collect();
            if a.json {
                let map: serde_json::Map<String, serde_json::Value> = rows
                    .into_iter()
                    .map(|(k, v, from)| (k, serde_json::json!({"value": v, "from": from})))
                    .collect();
                print_json(&map)?;
            } else {
                if let Some(f) = &loaded.settings.file {
                    println!("# config file: {}", f.display());
                }
                let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
                for (k, v, from) in rows {
                    println!("{k:<width$} = {v}    # {from}");
                }
            }
        }
        ConfigCommand::Check => {
            let loaded = g.load(true)?;
            for w in &loaded.settings.warnings {
                println!("warning: {w}");
            }
            println!(
                "configuration is valid{}",
                loaded
                    .settings
                    .file
                    .as_ref()
                    .map(|f| format!(" ({})", f.display()))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
