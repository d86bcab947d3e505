//! Command-line interface: one module per subcommand, global options flattened.
//! Exit status: 0 success, 1 failure, 2 bad usage or configuration, 3 refused.
//! Output goes through [`output`] (`outln!`, `errln!`): a closed stdout never panics.

/// `println!` that stops quietly when stdout is closed (see [`output`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::err_line(format_args!($($arg)*))
    };
}

mod backup;
mod catalog;
mod config;
mod delete;
mod export;
mod list;
mod ls;
mod output;
mod policy;
mod restore;
mod run;
mod status;
mod tick;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tierkeep::config::{ConfigError, Loaded, Sources};
use tierkeep::ops::{OpsError, Tierkeep};

/// Full, independently restorable backups kept in a black box, a deletion zone and a
/// reserved zone.
#[derive(Debug, Parser)]
#[command(name = "tierkeep", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (default: ./tierkeep.toml if present).
    #[arg(long, global = true, env = "TIERKEEP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override data_dir (catalog, staging, and the default zones).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Override host_id.
    #[arg(long, global = true, value_name = "ID")]
    pub host_id: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// More logging (-v info, -vv debug); TIERKEEP_LOG takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Never draw progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: scheduled backups at the policy's interval, aging and eviction, with
    /// /metrics and /healthz, until SIGTERM or SIGINT.
    Run(run::RunArgs),
    /// Take a backup now: into the black box, or the reserved zone with --manual.
    Backup(backup::BackupArgs),
    /// List backups, newest first.
    List(list::ListArgs),
    /// One pass of aging and eviction (with recovery), then exit.
    Tick(tick::TickArgs),
    /// Zones' usage and capacity, next backup, last result, policy.
    Status(status::StatusArgs),
    /// List the entries of a backup (from its index: one ranged read in a bucket).
    Ls(ls::LsArgs),
    /// Restore a backup (black box in place; other zones are exported first; with
    /// --path, only the frames holding the path are read).
    Restore(restore::RestoreArgs),
    /// Write a backup's archive to a file, for zstd and tar.
    Export(export::ExportArgs),
    /// Re-hash backups and compare them with their manifests.
    Verify(verify::VerifyArgs),
    /// Delete a backup (the only way out of the reserved zone).
    Delete(delete::DeleteArgs),
    /// Show or check the configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Rebuild or inspect the catalog.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// List, inspect, check and simulate policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Logging on stderr: warnings for commands, information for the daemon (`run`).
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let g = &cli.global;
    let daemon = matches!(cli.command, Command::Run(_));
    let level = match g.verbose {
        0 if !daemon => "warn",
        0 => "info",
        1 => "info",
        _ => "debug",
    };
    let filter = std::env::var("TIERKEEP_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("tierkeep={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| output::QuietStderr);
    let _ = match g.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

impl Global {
    pub fn sources(&self) -> Sources {
        let mut flags = Vec::new();
        if let Some(d) = &self.data_dir {
            let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
            flags.push(("data_dir".into(), serde_json::json!(abs)));
        }
        if let Some(h) = &self.host_id {
            flags.push(("host_id".into(), serde_json::json!(h)));
        }
        Sources {
            file: self.config.clone(),
            flags,
            env: true,
        }
    }

    /// Loads the configuration; `deep` also checks sources and zone directories.
    pub fn load(&self, deep: bool) -> Result<Loaded> {
        Ok(tierkeep::config::load(&self.sources(), deep)?)
    }

    /// For the policy tools (`policy check`, `simulate`, `list`), which need a schedule and
    /// capacities but no sources: the configuration, or — when there is no configuration
    /// file at all (no --config, TIERKEEP_CONFIG or ./tierkeep.toml) — the built-in
    /// defaults (and environment), said on stderr.
    pub fn load_or_defaults(&self) -> Result<Loaded> {
        if self.config.is_some() || std::path::Path::new("tierkeep.toml").is_file() {
            return self.load(false);
        }
        let mut sources = self.sources();
        // The policy tools never read the sources: a placeholder satisfies the one key
        // that has no default.
        sources
            .flags
            .push(("source.paths".into(), serde_json::json!(["/"])));
        let loaded = tierkeep::config::load(&sources, false)?;
        let s = &loaded.settings;
        errln!(
            "note: no configuration file (--config, TIERKEEP_CONFIG or ./tierkeep.toml): using \
             the built-in defaults: interval {}, aging {}, zones of {}/{}/{} backups, policy \
             settings {}",
            tierkeep::domain::format_duration(s.schedule.interval),
            tierkeep::domain::format_duration(s.schedule.aging),
            s.zone(tierkeep::domain::Zone::BlackBox)
                .capacity
                .max_backups,
            s.zone(tierkeep::domain::Zone::Deletion)
                .capacity
                .max_backups,
            s.zone(tierkeep::domain::Zone::Reserved)
                .capacity
                .max_backups,
            serde_json::to_string(&s.policy_settings)?
        );
        Ok(loaded)
    }

    /// Loads the configuration and opens the zones.
    pub fn open(&self, deep: bool) -> Result<Tierkeep> {
        self.open_with(deep, &IdentityArg::default())
    }

    /// [`Global::open`] for a command that may read an encrypted backup: `--identity`
    /// (or `TIERKEEP_IDENTITY`) replaces `encryption.identity_file`.
    pub fn open_with(&self, deep: bool, identity: &IdentityArg) -> Result<Tierkeep> {
        let mut loaded = self.load(deep)?;
        if let Some(file) = &identity.identity {
            loaded.settings.encryption.identity_file = Some(file.clone());
        }
        Ok(Tierkeep::new(loaded.settings)?)
    }

    pub fn progress(&self, json: bool) -> tierkeep::progress::Progress {
        tierkeep::progress::Progress::terminal(!json && !self.no_progress)
    }
}

/// `--identity FILE`, for the commands that read an encrypted backup's contents.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IdentityArg {
    /// The identity that decrypts an encrypted backup: an age identity file
    /// (`age-keygen`) or an unencrypted SSH private key; instead of
    /// encryption.identity_file. A passphrase comes from TIERKEEP_PASSPHRASE.
    #[arg(long, env = "TIERKEEP_IDENTITY", value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
}

/// The exit status of an error: configuration → 2, refusals → 3, else 1.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<OpsError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<UsageError>() {
            let _ = e;
            return 2;
        }
    }
    1
}

/// A usage mistake the parser cannot catch.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs a command and turns its result into an exit status.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let changes_state = cli.command.changes_state();
    let result = runtime.block_on(dispatch(cli));
    // Work a stopped daemon dropped may still hold a blocking thread (an archive being
    // written): do not wait for it; what it leaves is recovered at the next start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    output::flush();
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            errln!("error: {err:#}");
            return ExitCode::from(exit_code(&err));
        }
    };
    // A reader that went away is not an error (see `output`); another write error is
    // reported, and fails a command whose output is its whole result.
    if let Some(e) = output::stdout_error() {
        if changes_state {
            errln!("warning: the output could not be written to stdout ({e}); the work is done");
        } else {
            errln!("error: cannot write to stdout: {e}");
            return ExitCode::from(1);
        }
    }
    code
}

impl Command {
    /// Whether the command changes backups or the catalog (its exit status then reports
    /// that work, whatever happened to its output).
    fn changes_state(&self) -> bool {
        match self {
            Command::Run(_)
            | Command::Backup(_)
            | Command::Tick(_)
            | Command::Restore(_)
            | Command::Export(_)
            | Command::Delete(_) => true,
            Command::Catalog(c) => matches!(c, catalog::CatalogCommand::Rebuild(_)),
            Command::List(_)
            | Command::Ls(_)
            | Command::Status(_)
            | Command::Verify(_)
            | Command::Config(_)
            | Command::Policy(_) => false,
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Run(a) => run::run(g, a).await,
        Command::Backup(a) => backup::run(g, a).await,
        Command::List(a) => list::run(g, a).await,
        Command::Ls(a) => ls::run(g, a).await,
        Command::Status(a) => status::run(g, a).await,
        Command::Tick(a) => tick::run(g, a).await,
        Command::Restore(a) => restore::run(g, a).await,
        Command::Export(a) => export::run(g, a).await,
        Command::Verify(a) => verify::run(g, a).await,
        Command::Delete(a) => delete::run(g, a).await,
        Command::Config(c) => config::run(g, c).await,
        Command::Catalog(c) => catalog::run(g, c).await,
        Command::Policy(c) => policy::run(g, c).await,
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
