//! tierkeep: full, independently restorable backups of a host's business data, kept in
//! three zones — a local SSD **black box** for the newest backups, a **deletion zone**
//! they age into and are evicted from, and a **reserved zone** for manual backups that
//! are never deleted automatically.
//!
//! The crate is layered. The pure core is the `tierkeep-core` crate, re-exported here:
//! [`domain`] (zones, ids, capacities, admission rules; the clock is passed in),
//! [`decision`] (policy answers checked, the built-in rules as fallback), [`plan`] (the
//! lifecycle planner: the one place aging, early aging and eviction are decided),
//! [`health`] (whether each zone answers) and [`simulate`]. Around it: [`archive`]
//! writes and reads the tar + zstd archives; [`store`] keeps them in zones behind one
//! async trait; [`catalog`] records every backup and its history; [`config`] loads and
//! validates configuration; [`policy`] runs wasm policies behind the decision engine;
//! [`ops`] is the engine (one module per job, carrying out the planner's steps);
//! [`daemon`] schedules it (`tierkeep run`) and serves [`metrics`].
//!
//! ```
//! use tierkeep::domain::{admit_new_backup, Admission, BackupKind, Capacity, Usage, Zone};
//!
//! let reserved = Capacity { max_backups: 2, max_bytes: None };
//! let full = Usage { backups: 2, bytes: 4096 };
//! match admit_new_backup(BackupKind::Manual, reserved, full) {
//!     Admission::Refuse { zone, .. } => assert_eq!(zone, Zone::Reserved),
//!     Admission::Admit { .. } => unreachable!("a full reserved zone never takes more"),
//! }
//! ```

pub mod archive;
pub mod catalog;
pub mod config;
pub mod crypt;
pub mod daemon;
pub mod faults;
pub mod hooks;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod progress;
pub mod store;

// The pure core, under the paths the engine has always used.
pub use tierkeep_core::{decision, domain, health, plan, simulate};
// The engine's lifecycle and zone-health parts, under their old paths.
pub use ops::lifecycle;
pub(crate) use ops::outage;
