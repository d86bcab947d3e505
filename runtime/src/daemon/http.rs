//! The daemon's HTTP endpoints: `GET /metrics` (the Prometheus text of
//! [`crate::metrics`], with gauges read from the catalog at scrape time) and
//! `GET /healthz` (a JSON body: `ok`, `degraded`, `stopping` or `failing`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpListener;

use super::clock::Clock;
use super::state::{DaemonState, Shared};
use crate::domain::Zone;
use crate::metrics::{self, Gauge};
use crate::ops::Tierkeep;

/// What the HTTP endpoints read: the operations (for the catalog), the daemon's clock
/// and its state.
#[derive(Debug, Clone)]
pub(super) struct View {
    pub(super) tk: Arc<Tierkeep>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) state: Shared,
}

impl View {
    fn state(&self) -> DaemonState {
        self.state.snapshot()
    }

    /// The Prometheus text: gauges read now from the catalog and the daemon's state,
    /// then the process-wide counters and histograms.
    pub(super) fn metrics(&self) -> String {
        let st = self.state();
        let mut gauges = Vec::new();
        let g = |name, help, values| Gauge { name, help, values };
        gauges.push(g(
            "tierkeep_build_info",
            "Version of the running tierkeep.",
            vec![(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        ));
        match self.tk.status(self.clock.now()) {
            Ok(s) => {
                let zl = |z: Zone| vec![("zone", z.as_str().to_owned())];
                gauges.push(g(
                    "tierkeep_zone_backups",
                    "Backups present in the zone (from the catalog).",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), z.backups as f64))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_bytes",
                    "Archive bytes present in the zone.",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), z.bytes as f64))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_capacity_backups",
                    "The zone's capacity in backups (max_backups).",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), z.max_backups as f64))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_capacity_bytes",
                    "The zone's capacity in bytes (max_bytes), where set.",
                    s.zones
                        .iter()
                        .filter_map(|z| z.max_bytes.map(|b| (zl(z.zone), b as f64)))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_zone_up",
                    "1 when the zone answered the last work that needed it, 0 while it is \
                     unreachable (see `tierkeep status`).",
                    s.zones
                        .iter()
                        .map(|z| (zl(z.zone), f64::from(u8::from(z.reachable))))
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_damaged_backups",
                    "Backups whose copy does not match its manifest, by zone (never moved; \
                     see `tierkeep status`).",
                    Zone::ALL
                        .iter()
                        .map(|&zone| {
                            let n = s.damaged.iter().filter(|d| d.zone == zone).count();
                            (zl(zone), n as f64)
                        })
                        .collect(),
                ));
                gauges.push(g(
                    "tierkeep_black_box_pressure",
                    "1 when the black box is over capacity or its last scheduled backup was \
                     refused (see `tierkeep status`).",
                    vec![(vec![], f64::from(u8::from(s.black_box_pressure.is_some())))],
                ));
                gauges.push(g(
                    "tierkeep_policy_error",
                    "1 when the configured policy file is not running (built-in rules or the \
                     previous version decide).",
                    vec![(vec![], f64::from(u8::from(s.policy_error.is_some())))],
                ));
                if let Ok(catalog) = self.tk.catalog() {
                    let mut last = Vec::new();
                    for zone in [Zone::BlackBox, Zone::Reserved] {
                        if let Ok(Some(t)) = catalog.last_created_in(zone) {
                            last.push((zl(zone), metrics::unix(t)));
                        }
                    }
                    gauges.push(g(
                        "tierkeep_last_success_timestamp_seconds",
                        "When the last backup into the zone was created (black-box: scheduled, \
                         reserved: manual).",
                        last,
                    ));
                }
                gauges.push(g(
                    "tierkeep_catalog_up",
                    "1 when the catalog could be read for this scrape.",
                    vec![(vec![], 1.0)],
                ));
            }
            Err(e) => {
                tracing::warn!("metrics: cannot read the catalog: {e}");
                gauges.push(g(
                    "tierkeep_catalog_up",
                    "1 when the catalog could be read for this scrape.",
                    vec![(vec![], 0.0)],
                ));
            }
        }
        if let Some(t) = st.next_backup {
            gauges.push(g(
                "tierkeep_next_backup_timestamp_seconds",
                "When the next scheduled backup is due.",
                vec![(vec![], metrics::unix(t))],
            ));
        }
        if let Some(t) = st.last_pass {
            gauges.push(g(
                "tierkeep_daemon_last_pass_timestamp_seconds",
                "When the daemon's last pass of work ended.",
                vec![(vec![], metrics::unix(t))],
            ));
        }
        gauges.push(g(
            "tierkeep_daemon_failing_passes",
            "Passes of work that failed in a row (0 when the last one succeeded).",
            vec![(vec![], f64::from(st.failures))],
        ));
        metrics::render(&gauges)
    }

    /// `/healthz`: 200 `ok`; 200 `degraded` while a zone is unreachable or the last
    /// passes failed (the daemon works, but something needs attention); 503 while
    /// stopping or when the catalog cannot be read.
    fn health(&self) -> (u16, String) {
        let st = self.state();
        let zones: Vec<serde_json::Value> = match self.tk.catalog() {
            Ok(catalog) => Zone::ALL
                .iter()
                .map(|&zone| {
                    serde_json::json!({
                        "zone": zone,
                        "health": crate::outage::recorded_health(&catalog, zone),
                    })
                })
                .collect(),
            Err(e) => {
                let body = serde_json::json!({
                    "status": "failing",
                    "error": e.to_string(),
                    "daemon": st,
                });
                return (503, format!("{body}\n"));
            }
        };
        let unreachable = zones.iter().any(|z| z["health"]["state"] != "reachable");
        let (code, status) = if st.stopping {
            (503, "stopping")
        } else if unreachable || st.failures > 0 {
            (200, "degraded")
        } else {
            (200, "ok")
        };
        let body = serde_json::json!({
            "status": status,
            "zones": zones,
            "daemon": st,
        });
        (code, format!("{body}\n"))
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is aborted (HTTP/1; a
/// client that goes away only ends its own connection).
pub(super) async fn serve(listener: TcpListener, view: View) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let view = view.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let view = view.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&view, &req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

async fn respond<B>(view: &View, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let (code, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let v = view.clone();
            let text = tokio::task::spawn_blocking(move || v.metrics())
                .await
                .unwrap_or_else(|e| format!("# metrics failed: {e}\n"));
            (200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        (&hyper::Method::GET, "/healthz") => {
            let (c, b) = view.health();
            (c, "application/json", b)
        }
        (&hyper::Method::GET, _) => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
        _ => (405, "text/plain", "only GET\n".into()),
    };
    hyper::Response::builder()
        .status(code)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}
