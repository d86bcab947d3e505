//! `tierkeep backup [--manual] [--label TEXT] [--full-read]`

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tierkeep::domain::{BackupKind, format_size};
use tierkeep::ops::{BackupOutcome, Tierkeep};
use tierkeep::store::BackupKey;

use super::{Global, now, print_json};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A manual backup, kept in the reserved zone until an operator deletes it.
    #[arg(long)]
    pub manual: bool,
    /// A label stored in the manifest.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Read and compress every file, copying nothing from the previous backup (a
    /// scheduled backup otherwise copies the frames of unchanged files).
    #[arg(long)]
    pub full_read: bool,
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
        out = tk.backup(kind, a.label, a.full_read, &now, &progress) => out?,
        _ = tokio::signal::ctrl_c() => return interrupted(&tk, "SIGINT").await,
        _ = term.recv() => return interrupted(&tk, "SIGTERM").await,
    };
    let archive = archive_location(&tk, &out);
    if a.json {
        // The outcome as it always was, plus where the archive is.
        let mut v = serde_json::to_value(&out)?;
        if let Some(map) = v.as_object_mut() {
            map.insert("archive".into(), serde_json::json!(archive));
        }
        print_json(&v)?;
    } else {
        let m = &out.manifest;
        outln!(
            "created backup {} in the {} zone: {} entries, {} of data from {}, in a {} archive \
             ({:.1} s)",
            m.id,
            out.zone,
            m.entries,
            format_size(m.logical_bytes),
            m.source.join(", "),
            format_size(m.archive_bytes),
            out.seconds
        );
        if let Some(from) = m.reused_from.as_ref().filter(|_| m.reused_bytes > 0) {
            outln!(
                "copied {} of unchanged frames from backup {from} instead of reading them again",
                format_size(m.reused_bytes)
            );
        }
        outln!("archive: {archive}");
        outln!("sha256 {}", m.archive_sha256);
        // The same global options, so that the command finds this configuration.
        let mut global = String::new();
        for (flag, value) in [
            (
                "--config",
                g.config.as_ref().map(|c| c.display().to_string()),
            ),
            (
                "--data-dir",
                g.data_dir.as_ref().map(|d| d.display().to_string()),
            ),
            ("--host-id", g.host_id.clone()),
        ] {
            if let Some(v) = value {
                global.push_str(&format!("{flag} {} ", shell_word(&v)));
            }
        }
        outln!("restore with: tierkeep {global}restore {} --to DIR", m.id);
        for w in &m.warnings {
            errln!("warning: {w}");
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

/// Where the new backup's archive is: its path in a local zone, its URL in a bucket.
fn archive_location(tk: &Tierkeep, out: &BackupOutcome) -> String {
    let key = BackupKey {
        host: out.manifest.host_id.clone(),
        id: out.manifest.id.clone(),
    };
    let store = tk.store(out.zone);
    let name = out.manifest.archive_name();
    match store.local_archive(&key, name) {
        Some(path) => path.display().to_string(),
        None => format!("{}/{}/{name}", store.url().trim_end_matches('/'), key),
    }
}

/// A path as one shell word (quoted only when it needs to be).
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
