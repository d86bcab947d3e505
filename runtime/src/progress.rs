//! Progress reporting for long work: a bar with bytes, rate and ETA on a terminal, and
//! nothing at all otherwise (pipes, logs, `--json`).

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress sink; clones share the same bar.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Reports nothing.
    pub fn hidden() -> Self {
        Progress { bar: None }
    }

    /// A bar on stderr when `enabled` and stderr is a terminal.
    pub fn terminal(enabled: bool) -> Self {
        use std::io::IsTerminal;
        if !enabled || !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Progress { bar: Some(bar) }
    }

    /// Whether a bar is shown.
    pub fn is_visible(&self) -> bool {
        self.bar.is_some()
    }

    /// Starts a phase of `total` bytes (0 when unknown).
    pub fn phase(&self, msg: &'static str, total: u64) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
            b.set_length(total);
            b.set_position(0);
            b.reset_eta();
        }
    }

    /// Adds `n` bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// A callback for stores.
    pub fn callback(&self) -> crate::store::ProgressFn {
        let this = self.clone();
        Arc::new(move |n| this.inc(n))
    }
}
