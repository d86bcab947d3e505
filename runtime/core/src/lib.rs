//! tierkeep's pure core: what the backup runtime decides, with nothing it does. The
//! clock and the state are passed in; a decision or a plan comes back for the engine to
//! carry out. No I/O, no async runtime, no S3, no wasm host, no database.
//!
//! - [`domain`]: zones, backup identities, capacities, admission rules;
//! - [`decision`]: the decision engine — asks a policy ([`decision::Rules`]) and checks
//!   its answers, falling back to the built-in rules on a fault;
//! - [`plan`]: the lifecycle planner — the one place aging, early aging and eviction
//!   are decided, for the engine, the daemon, `policy simulate` and the SDK alike;
//! - [`health`]: whether each zone answers (the circuit breaker in front of the stores);
//! - [`simulate`]: a policy run through the planner on a virtual clock.

pub mod decision;
pub mod domain;
pub mod health;
pub mod plan;
pub mod simulate;
