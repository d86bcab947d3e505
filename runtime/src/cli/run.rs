//! `tierkeep run`: the daemon. Scheduled backups at the policy's interval, aging and
//! eviction, `/metrics` and `/healthz`, until SIGTERM or SIGINT (then a graceful stop
//! within `daemon.shutdown_grace`; a second signal stops at once).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tierkeep::daemon::{Daemon, Ended, SystemClock, bind_metrics, claim};
use tokio::signal::unix::{SignalKind, signal};

use super::Global;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Override daemon.metrics_addr (`off` for no endpoint).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

pub async fn run(g: &Global, a: RunArgs) -> Result<ExitCode> {
    let tk = Arc::new(g.open(true)?);
    for w in &tk.settings.warnings {
        tracing::warn!("configuration: {w}");
    }
    let _running = claim(&tk.settings)?;
    let addr = a
        .metrics_addr
        .unwrap_or_else(|| tk.settings.metrics_addr.clone());
    let listener = bind_metrics(&addr).await?;

    // The first SIGTERM or SIGINT asks for a graceful stop, the second for an abort.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut senders = [Some(first_tx), Some(second_tx)].into_iter().flatten();
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::warn!("{name} received");
            match senders.next() {
                Some(tx) => {
                    let _ = tx.send(());
                }
                None => return,
            }
        }
    });
    let shutdown = async {
        let _ = first_rx.await;
    };
    let abort = async {
        let _ = second_rx.await;
    };

    let daemon = Daemon::new(tk, Arc::new(SystemClock));
    match daemon.run(listener, shutdown, abort).await {
        Ended::Clean | Ended::GraceExpired => Ok(ExitCode::SUCCESS),
        Ended::Aborted => {
            errln!(
                "tierkeep: stopped at once by a second signal; the next start finishes or rolls \
                 back the work that was in flight"
            );
            Ok(ExitCode::from(1))
        }
    }
}
