//! Prometheus metrics: a process-wide registry of counters and histograms that the
//! operations feed as they work, rendered in the Prometheus text format (0.0.4) together
//! with gauges read from the catalog at scrape time (zone usage, capacity and
//! reachability, damaged backups, last success, next backup, black-box pressure). The
//! daemon ([`crate::daemon`]) serves them on `/metrics`.
//!
//! Zone gauges come from the catalog, the same source `tierkeep status` and `list` read,
//! so the three always agree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use time::OffsetDateTime;

/// Every metric the registry may hold: name, type, help.
const METRICS: &[(&str, &str, &str)] = &[
    (
        "tierkeep_backups_total",
        "counter",
        "Backup attempts by zone and outcome (created, failed, refused).",
    ),
    (
        "tierkeep_backup_bytes_total",
        "counter",
        "Archive bytes of the backups created, by zone.",
    ),
    (
        "tierkeep_backup_duration_seconds",
        "histogram",
        "Duration of backup attempts, by zone and outcome.",
    ),
    (
        "tierkeep_moves_total",
        "counter",
        "Moves between zones (aging), by source, destination and outcome (moved, failed).",
    ),
    (
        "tierkeep_move_duration_seconds",
        "histogram",
        "Duration of moves between zones, by outcome.",
    ),
    (
        "tierkeep_moved_bytes_total",
        "counter",
        "Archive bytes moved between zones.",
    ),
    (
        "tierkeep_evictions_total",
        "counter",
        "Backups evicted from the deletion zone.",
    ),
    (
        "tierkeep_policy_decision_seconds",
        "histogram",
        "Time to take one policy decision (including any fallback), by decision.",
    ),
    (
        "tierkeep_policy_faults_total",
        "counter",
        "Policy answers replaced by the built-in rules, by decision and fault.",
    ),
    (
        "tierkeep_s3_errors_total",
        "counter",
        "Failed S3 requests (each attempt), by operation and class (temporary, permanent).",
    ),
    (
        "tierkeep_hook_failures_total",
        "counter",
        "Source consistency hooks that failed or timed out, by hook.",
    ),
    (
        "tierkeep_black_box_pressure_events_total",
        "counter",
        "Scheduled backups that found the black box full with aging impossible, by outcome \
         (over_capacity: taken beyond max_backups; refused: not taken, disk reserve).",
    ),
    (
        "tierkeep_daemon_passes_total",
        "counter",
        "Daemon work passes, by outcome (ok, failed).",
    ),
    (
        "tierkeep_damaged_found_total",
        "counter",
        "Backup copies found damaged (not matching their manifest), by zone.",
    ),
];

/// Histogram bucket bounds in seconds (policy decisions are sub-millisecond, backups
/// minutes).
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
];

type Key = (&'static str, Vec<(&'static str, String)>);

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// The process-wide registry.
#[derive(Debug, Default)]
pub struct Registry {
    counters: Mutex<BTreeMap<Key, f64>>,
    histograms: Mutex<BTreeMap<Key, Histogram>>,
}

/// The registry of this process.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    debug_assert!(METRICS.iter().any(|m| m.0 == name), "unknown metric {name}");
    (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    )
}

/// Adds `by` to a counter.
pub fn add(name: &'static str, labels: &[(&'static str, &str)], by: f64) {
    let mut c = registry()
        .counters
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    *c.entry(key(name, labels)).or_insert(0.0) += by;
}

/// Adds one to a counter.
pub fn inc(name: &'static str, labels: &[(&'static str, &str)]) {
    add(name, labels, 1.0);
}

/// Records one observation in a histogram.
pub fn observe(name: &'static str, labels: &[(&'static str, &str)], took: Duration) {
    let secs = took.as_secs_f64();
    let mut h = registry()
        .histograms
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let e = h.entry(key(name, labels)).or_insert_with(|| Histogram {
        counts: vec![0; BUCKETS.len()],
        ..Histogram::default()
    });
    for (i, b) in BUCKETS.iter().enumerate() {
        if secs <= *b {
            e.counts[i] += 1;
        }
    }
    e.sum += secs;
    e.count += 1;
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels_text(labels: &[(&str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// A gauge value read at scrape time.
#[derive(Debug, Clone)]
pub struct Gauge {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Labelled values.
    pub values: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Renders the registry and `gauges` in the Prometheus text format.
pub fn render(gauges: &[Gauge]) -> String {
    let mut out = String::new();
    for g in gauges {
        let _ = writeln!(out, "# HELP {} {}", g.name, g.help);
        let _ = writeln!(out, "# TYPE {} gauge", g.name);
        for (labels, v) in &g.values {
            let _ = writeln!(
                out,
                "{}{} {}",
                g.name,
                labels_text(labels, None),
                number(*v)
            );
        }
    }
    let counters = registry()
        .counters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let histograms = registry()
        .histograms
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (name, kind, help) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        if *kind == "histogram" {
            for ((n, labels), h) in histograms.iter().filter(|(k, _)| k.0 == *name) {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{n}_bucket{} {}",
                        labels_text(labels, Some(("le", number(*b)))),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{n}_bucket{} {}",
                    labels_text(labels, Some(("le", "+Inf".into()))),
                    h.count
                );
                let _ = writeln!(out, "{n}_sum{} {}", labels_text(labels, None), h.sum);
                let _ = writeln!(out, "{n}_count{} {}", labels_text(labels, None), h.count);
            }
        } else {
            for ((n, labels), v) in counters.iter().filter(|(k, _)| k.0 == *name) {
                let _ = writeln!(out, "{n}{} {}", labels_text(labels, None), number(*v));
            }
        }
    }
    out
}

/// Seconds since the epoch, for timestamp gauges.
pub fn unix(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        inc("tierkeep_evictions_total", &[("zone", "deletion")]);
        add(
            "tierkeep_backup_bytes_total",
            &[("zone", "black-box")],
            42.0,
        );
        observe(
            "tierkeep_policy_decision_seconds",
            &[("decision", "test-\"x\"")],
            Duration::from_micros(300),
        );
        let text = render(&[Gauge {
            name: "tierkeep_zone_backups",
            help: "Backups in the zone.",
            values: vec![(vec![("zone", "reserved".into())], 3.0)],
        }]);
        assert!(text.contains("# TYPE tierkeep_zone_backups gauge\n"));
        assert!(text.contains("tierkeep_zone_backups{zone=\"reserved\"} 3\n"));
        assert!(text.contains("tierkeep_evictions_total{zone=\"deletion\"} "));
        assert!(text.contains("tierkeep_backup_bytes_total{zone=\"black-box\"} "));
        // 300 µs falls in the 0.0005 bucket and every larger one, not in 0.0001.
        assert!(text.contains(
            "tierkeep_policy_decision_seconds_bucket{decision=\"test-\\\"x\\\"\",le=\"0.0001\"} 0\n"
        ));
        assert!(text.contains(
            "tierkeep_policy_decision_seconds_bucket{decision=\"test-\\\"x\\\"\",le=\"0.0005\"} 1\n"
        ));
        assert!(
            text.contains(
                "tierkeep_policy_decision_seconds_count{decision=\"test-\\\"x\\\"\"} 1\n"
            )
        );
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{line} has no TYPE line"
            );
        }
    }
}
