//! The daemon (`tierkeep run`): the generation module (scheduled backups at the interval
//! the policy gives), the demotion module (aging) and the purge module (eviction) on one
//! scheduler, with start-up recovery, graceful shutdown and the `/metrics` and
//! `/healthz` endpoints.
//!
//! One pass of work runs at a time and holds the host lock only while it works, so a
//! manual backup or a restore from the CLI runs between passes (a CLI backup waits for
//! the pass to finish, and the pass for it). The clock is injected ([`Clock`]) and every
//! decision that depends on time reads it; the waiting is planned by the pure
//! [`next_wake`].
//!
//! Shutdown: when the `shutdown` future completes (the first SIGTERM or SIGINT), no new
//! work starts; a pass in flight may run on for `daemon.shutdown_grace` (measured on the
//! clock) to reach its end, then it is dropped where it stands. Dropping work is safe by
//! construction: a move commits its manifest last and records it before the local copy
//! goes, an archive is written to a `.partial` file first, and the next start's recovery
//! finishes or rolls back whatever was in flight. The `abort` future (a second signal)
//! drops it at once.
//!
//! The parts, each used only by the ones after it: [`clock`] (where time is read),
//! `state` (what the daemon knows of itself), [`startup`] (the one-daemon lock and the
//! metrics listener), `http` (the endpoints), [`scheduler`] (the loop). This module only
//! re-exports what `tierkeep run` and the tests use.

pub mod clock;
mod http;
pub mod scheduler;
pub mod startup;
mod state;

pub use clock::{Clock, SystemClock};
pub use scheduler::{
    BackupStep, Daemon, Ended, Grace, MAX_IDLE, MIN_PAUSE, RECOVERY_EVERY, backup_step, next_wake,
    recovery_due, sleep_until,
};
pub use startup::{DaemonError, DaemonLock, bind_metrics, claim, running};
pub use state::DaemonState;
