//! Named fault-injection points for crash-safety tests.
//!
//! Every step of a move between zones (and of an eviction) passes a named point, and a
//! restore passes `restore.before_rename` after writing each file under its partial
//! name, before renaming it into place. Setting
//! `TIERKEEP_FAULTS=name=kill` makes the process abort (SIGABRT, no clean-up, like a
//! crash or `kill -9`) when it reaches `name`; `name=error` makes that step fail with an
//! error instead, as a lost connection would; `name=pause:MS` (at points passed through
//! [`checkpoint`], such as `s3.part_uploaded` after each part of a multipart upload and
//! `s3.range_downloaded` after each ranged part of a download)
//! sleeps there, so that a test can stop a real server mid-transfer. Several points are
//! separated by commas.
//! Unset, every point is a no-op costing one lookup in an empty list.

use std::sync::OnceLock;

/// The points a move passes, in order; tests iterate over them.
pub const MOVE_POINTS: &[&str] = &[
    "move.before_upload",
    "move.after_upload",
    "move.after_verify",
    "move.after_commit",
    "move.after_catalog",
    "move.after_remove",
];

/// The points an eviction passes, in order.
pub const EVICT_POINTS: &[&str] = &["evict.after_intent", "evict.after_delete"];

/// An injected failure.
#[derive(Debug, thiserror::Error)]
#[error("injected fault at {0} (TIERKEEP_FAULTS)")]
pub struct InjectedFault(pub String);

fn configured() -> &'static Vec<(String, String)> {
    static FAULTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        std::env::var("TIERKEEP_FAULTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, a)| (n.trim().to_owned(), a.trim().to_owned()))
            .collect()
    })
}

/// Passes the point `name`: aborts, fails, or does nothing, as `TIERKEEP_FAULTS` says.
pub fn point(name: &str) -> Result<(), InjectedFault> {
    for (n, action) in configured() {
        if n == name {
            match action.as_str() {
                "kill" => {
                    eprintln!("tierkeep: fault injection: killing the process at {name}");
                    std::process::abort();
                }
                a if a.starts_with("pause:") => {}
                _ => return Err(InjectedFault(name.to_owned())),
            }
        }
    }
    Ok(())
}

/// Like [`point`], and also understands `pause:MS` (sleep that long at the point, after
/// saying so on stderr) so that a test can stop a real server while work is in flight.
pub async fn checkpoint(name: &str) -> Result<(), InjectedFault> {
    for (n, action) in configured() {
        if n == name
            && let Some(ms) = action.strip_prefix("pause:")
        {
            let ms: u64 = ms.parse().unwrap_or(1000);
            eprintln!("tierkeep: fault injection: pausing {ms} ms at {name}");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }
    point(name)
}
