//! Reporting decisions: their policy faults logged and counted ([`report_fault`]), and
//! [`Measured`], which times every answer of a policy.

use crate::decision::{PolicyContext, PolicyFault, Room, Rules};
use crate::domain::BackupView;

/// Logs and counts a decision's fault (with the policy's name), if it had one. Its time
/// is measured by [`Measured`].
pub fn report_fault(policy: &str, what: &'static str, fault: Option<&PolicyFault>) {
    let Some(f) = fault else { return };
    let fault = match f {
        PolicyFault::Trap(_) => "trap",
        PolicyFault::OutOfFuel => "out_of_fuel",
        PolicyFault::OutOfMemory => "out_of_memory",
        PolicyFault::BadAnswer(_) => "bad_answer",
        PolicyFault::Unavailable(_) => "unavailable",
    };
    crate::metrics::inc(
        "tierkeep_policy_faults_total",
        &[("decision", what), ("fault", fault)],
    );
    tracing::warn!(
        policy,
        decision = what,
        "policy {policy}: {f}; the built-in rules decided instead"
    );
}

/// A policy whose every answer is timed into `tierkeep_policy_decision_seconds`: what
/// the engine hands the planner.
#[derive(Clone, Copy)]
pub struct Measured<'a>(pub &'a dyn Rules);

impl std::fmt::Debug for Measured<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Measured").field(&self.0.name()).finish()
    }
}

impl Measured<'_> {
    fn timed<T>(&self, what: &'static str, ask: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let answer = ask();
        crate::metrics::observe(
            "tierkeep_policy_decision_seconds",
            &[("decision", what)],
            started.elapsed(),
        );
        answer
    }
}

impl Rules for Measured<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn interval(&self, ctx: &PolicyContext) -> Result<u64, PolicyFault> {
        self.timed("interval", || self.0.interval(ctx))
    }

    fn aging(
        &self,
        ctx: &PolicyContext,
        black_box: &[BackupView],
    ) -> Result<Vec<String>, PolicyFault> {
        self.timed("aging", || self.0.aging(ctx, black_box))
    }

    fn eviction(
        &self,
        ctx: &PolicyContext,
        deletion: &[BackupView],
        room: Room,
    ) -> Result<Vec<String>, PolicyFault> {
        self.timed("eviction", || self.0.eviction(ctx, deletion, room))
    }
}
