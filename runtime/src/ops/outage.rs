//! The zones' reachability as the engine sees it: the circuit breaker of
//! [`crate::health`] in front of each zone's store, its transitions recorded in the audit
//! trail (`unreachable`, `reachable`) so that `status`, `/healthz` and other processes see
//! the same state.

use time::OffsetDateTime;

use crate::catalog::Catalog;
use crate::domain::{Zone, format_duration, rfc3339};
use crate::health::{Gate, ZoneHealth};
use crate::ops::{OpsError, Tierkeep};
use crate::store::StoreError;

/// The state of `zone` as the audit trail last recorded it.
pub(crate) fn recorded_health(catalog: &Catalog, zone: Zone) -> ZoneHealth {
    match catalog.last_zone_event(zone) {
        Ok(Some(e)) if e.kind == "unreachable" => ZoneHealth::recorded_unreachable(e.at, e.reason),
        Ok(_) => ZoneHealth::Reachable,
        Err(e) => {
            tracing::warn!(%zone, "cannot read the zone's recorded state: {e}");
            ZoneHealth::Reachable
        }
    }
}

/// The text of an error that says the zone itself cannot be reached or used (the server
/// does not answer, refuses the credentials, has no such bucket; a local zone's
/// directory fails), as opposed to a problem with one backup.
fn zone_failure(error: &OpsError, remote: bool) -> Option<String> {
    match error {
        OpsError::Store(e @ StoreError::Remote { op, .. }) if remote && *op != "commit" => {
            Some(e.to_string())
        }
        OpsError::Store(e @ StoreError::Io { .. }) if !remote => Some(e.to_string()),
        _ => None,
    }
}

impl Tierkeep {
    fn with_health<T>(
        &self,
        catalog: &Catalog,
        f: impl FnOnce(&mut ZoneHealth) -> T,
        zone: Zone,
    ) -> T {
        let mut guard = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let all = guard.get_or_insert_with(|| Zone::ALL.map(|z| recorded_health(catalog, z)));
        f(&mut all[zone.index()])
    }

    fn unreachable_error(&self, catalog: &Catalog, zone: Zone) -> OpsError {
        let (since, error) = self.with_health(
            catalog,
            |h| match h {
                ZoneHealth::Unreachable {
                    since, last_error, ..
                } => (rfc3339(*since), last_error.clone()),
                ZoneHealth::Reachable => (String::new(), String::new()),
            },
            zone,
        );
        OpsError::ZoneUnreachable {
            zone,
            url: self.settings.zone(zone).url.to_string(),
            since,
            error,
        }
    }

    /// Whether work that needs `zone` may go ahead at `now`: at once while the zone
    /// answers; after one cheap probe ([`crate::store::ZoneStore::check`]) when it did
    /// not and a probe is due; otherwise not ([`OpsError::ZoneUnreachable`], at once,
    /// without touching the zone).
    pub(crate) async fn zone_available(
        &self,
        catalog: &mut Catalog,
        zone: Zone,
        now: OffsetDateTime,
    ) -> Result<(), OpsError> {
        match self.with_health(catalog, |h| h.gate(now), zone) {
            Gate::Go => Ok(()),
            Gate::Skip => Err(self.unreachable_error(catalog, zone)),
            Gate::Probe => {
                tracing::debug!(%zone, "probing a zone that did not answer");
                let probed = self.store(zone).check().await.map_err(OpsError::from);
                match probed {
                    Ok(()) => {
                        self.zone_outcome(catalog, zone, now, None);
                        Ok(())
                    }
                    Err(e) => {
                        self.zone_outcome(catalog, zone, now, Some(&e));
                        Err(self.unreachable_error(catalog, zone))
                    }
                }
            }
        }
    }

    /// Records the outcome of work on `zone`: an error saying the zone cannot be reached
    /// or used opens its breaker (an `unreachable` event the first time); success closes
    /// it (a `reachable` event, with how long the outage lasted).
    pub(crate) fn zone_outcome(
        &self,
        catalog: &mut Catalog,
        zone: Zone,
        now: OffsetDateTime,
        error: Option<&OpsError>,
    ) {
        let remote = self.store(zone).staging_dir().is_none();
        let transition = match error {
            Some(e) => zone_failure(e, remote).and_then(|text| {
                self.with_health(catalog, |h| h.failed(now, text.clone()), zone)
                    .then_some(("unreachable", text))
            }),
            None => {
                self.with_health(catalog, ZoneHealth::answered, zone)
                    .map(|(since, failures)| {
                        let lasted = (now - since).try_into().unwrap_or_default();
                        (
                            "reachable",
                            format!(
                                "answers again after {} unreachable ({failures} failed attempts)",
                                format_duration(lasted)
                            ),
                        )
                    })
            }
        };
        let Some((kind, reason)) = transition else {
            return;
        };
        if kind == "unreachable" && remote {
            tracing::error!(%zone, "the {zone} zone stopped answering: {reason}");
        } else if kind == "unreachable" {
            // A local folder always answers; it may be full, gone or read-only.
            tracing::error!(%zone, "the {zone} zone's folder cannot be used: {reason}");
        } else {
            tracing::warn!(%zone, "the {zone} zone {reason}");
        }
        if let Err(e) = catalog.note(now, kind, Some(zone), &reason) {
            tracing::warn!(%zone, "cannot record the zone's state in the audit trail: {e}");
        }
    }
}
