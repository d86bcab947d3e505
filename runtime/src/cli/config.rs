//! `tierkeep config show|check`

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use tierkeep::config::{ConfigError, Settings, provenance};
use tierkeep::domain::Zone;
use tierkeep::policy::{self, Source, WasmPolicy};
use tierkeep::store::{self, StoreError};

use super::{Global, print_json};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every effective value and where it came from (secrets are never printed).
    Show(ShowArgs),
    /// Validate, including source readability, zone writability and the policy file
    /// (compiled, described, its settings validated).
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
                    outln!("# config file: {}", f.display());
                }
                let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
                for (k, v, from) in rows {
                    outln!("{k:<width$} = {v}    # {from}");
                }
            }
        }
        ConfigCommand::Check => {
            let loaded = g.load(true)?;
            let policy = check_policy(&loaded.settings)?;
            for w in &loaded.settings.warnings {
                outln!("warning: {w}");
            }
            if let Some(w) = check_object_lock(&loaded.settings).await? {
                outln!("warning: {w}");
            }
            outln!("policy: {policy}");
            outln!(
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

/// With `zones.reserved.lock_retention` set, asks the reserved bucket whether it has S3
/// Object Lock enabled: a bucket without it is a configuration error (manual backups
/// would be refused); a server that cannot be asked now is only a warning.
async fn check_object_lock(settings: &Settings) -> Result<Option<String>, ConfigError> {
    let zone = settings.zone(Zone::Reserved);
    if zone.lock_retention.is_none() {
        return Ok(None);
    }
    let problem = |p: String| config_problem(settings, p);
    let store = store::open(&zone.url, &settings.s3_settings(Zone::Reserved))
        .map_err(|e| problem(e.to_string()))?;
    match store.check_lock().await {
        Ok(()) => Ok(None),
        Err(e @ StoreError::NoObjectLock { .. }) => Err(problem(e.to_string())),
        Err(e) => Ok(Some(format!(
            "zones.reserved.lock_retention: could not ask the reserved bucket whether it has \
             S3 Object Lock enabled ({e}); manual backups check it again before writing"
        ))),
    }
}

/// A configuration error about `settings`, naming its file.
fn config_problem(settings: &Settings, problem: String) -> ConfigError {
    ConfigError {
        origin: settings
            .file
            .as_ref()
            .map(|f| format!(" ({})", f.display()))
            .unwrap_or_default(),
        problems: vec![problem],
    }
}

/// Loads the configured policy as `run` would (resolve the file, compile it, `describe`,
/// `validate-settings`) and says who would decide; a missing or broken file is a
/// configuration error here, though at run time the built-in rules would stand in for it.
fn check_policy(settings: &Settings) -> Result<String, ConfigError> {
    let problem = |p: String| {
        config_problem(
            settings,
            format!("{p} (at run time the built-in default rules would decide instead)"),
        )
    };
    match policy::resolve(&settings.policy, settings.policy_dir.as_deref()).map_err(problem)? {
        Source::Builtin if settings.policy_settings.is_empty() => {
            Ok("built-in default rules".into())
        }
        Source::Builtin => Ok(
            "built-in default rules (policy.settings are ignored: the built-in rules take none)"
                .into(),
        ),
        Source::File(file) => {
            let engine = policy::engine().map_err(problem)?;
            let json = serde_json::to_string(&settings.policy_settings)
                .map_err(|e| problem(format!("policy.settings: {e}")))?;
            let p = WasmPolicy::load(&engine, &file, &json, Some(&policy::cache_dir(settings)))
                .map_err(|e| problem(e.to_string()))?;
            Ok(format!(
                "{} {} ({}), settings accepted",
                p.metadata.name,
                p.metadata.version,
                file.display()
            ))
        }
    }
}
