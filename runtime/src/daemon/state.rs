//! What the daemon knows of itself: written by the scheduler, read by the HTTP
//! endpoints.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use time::OffsetDateTime;

/// What the daemon knows of itself, shared with the HTTP endpoints (the `daemon` object
/// of `/healthz`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct DaemonState {
    /// When it started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started: Option<OffsetDateTime>,
    /// When the next scheduled backup is due.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_backup: Option<OffsetDateTime>,
    /// When the last pass ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_pass: Option<OffsetDateTime>,
    /// Why the last pass failed, if it did.
    pub last_error: Option<String>,
    /// Passes that failed in a row.
    pub failures: u32,
    /// Whether it is shutting down.
    pub stopping: bool,
}

/// The [`DaemonState`] shared between the scheduler and the endpoints.
#[derive(Debug, Default, Clone)]
pub(super) struct Shared(Arc<Mutex<DaemonState>>);

impl Shared {
    /// The state, for reading or changing it (a poisoned lock is taken over: the state
    /// is plain data, always consistent field by field).
    pub(super) fn lock(&self) -> MutexGuard<'_, DaemonState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the state as it is now.
    pub(super) fn snapshot(&self) -> DaemonState {
        self.lock().clone()
    }
}
