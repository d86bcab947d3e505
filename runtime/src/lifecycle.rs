//! The lifecycle between zones: the demotion module (aging: black box → deletion zone),
//! the purge module (eviction from the deletion zone) and recovery after an interrupted
//! run. Decisions come from the policy through the decision engine
//! ([`crate::decision`], which checks every answer and falls back to the built-in rules);
//! this module executes them so that a crash at any step leaves every backup restorable:
//!
//! - a move uploads, verifies, commits (manifest last) and records the move in the
//!   catalog *before* it removes the black-box copy;
//! - an eviction records its intent in the catalog before it deletes;
//! - [`Tierkeep::recover`] finishes moves that were committed (removing the black-box
//!   copy), drops uploads that were not (the black-box copy stays), completes
//!   interrupted evictions in the catalog and re-reads everything else from the zones.
//!
//! Every step passes a named fault point ([`crate::faults`]).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use time::OffsetDateTime;

use crate::archive::ArchiveError;
use crate::catalog::{Catalog, Event, ReconcileReport, Record, State};
use crate::decision::{Attempt, BuiltinRules, Decider, PolicyContext, Room, Rules, ZoneSnapshot};
use crate::domain::{BackupId, BackupView, Zone, format_duration, plan_room_around};
use crate::faults;
use crate::ops::{OpsError, Tierkeep};
use crate::progress::Progress;
use crate::store::{self, BackupKey, ListedState, StoreError};

/// What recovery found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// Moves committed in the deletion zone whose black-box copy was then removed.
    pub finished_moves: Vec<String>,
    /// Incomplete uploads and stale staging files removed.
    pub removed_incomplete: Vec<String>,
    /// Manifests that could not be read (left alone).
    pub unreadable: Vec<String>,
    /// Zones that could not be listed (left as the catalog has them).
    pub unreachable: Vec<String>,
    /// Committed backups found in the zones.
    pub backups: usize,
    /// How the catalog was brought in line.
    #[serde(flatten)]
    pub catalog: ReconcileReport,
}

/// What one pass of aging and eviction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TickReport {
    /// Recovery at the start of the pass.
    pub recovery: RecoveryReport,
    /// Backups moved from the black box to the deletion zone.
    pub aged: Vec<String>,
    /// Backups evicted from the deletion zone.
    pub evicted: Vec<String>,
    /// Black-box backups this pass found damaged (their copy does not match the
    /// manifest): left in place, marked damaged, never moved; the pass went on.
    pub damaged: Vec<String>,
}

fn views(records: &[Record]) -> Vec<BackupView> {
    records
        .iter()
        .map(|r| BackupView {
            id: r.id.clone(),
            created_at: r.created_at,
            size_bytes: r.size_bytes,
            kind: r.kind,
        })
        .collect()
}

/// The backups whose copy is marked damaged.
fn damaged_ids(catalog: &Catalog) -> Result<HashSet<BackupId>, OpsError> {
    Ok(catalog.damaged()?.into_iter().map(|(r, _)| r.id).collect())
}

/// The recent scheduled backup attempts, newest first: the `created`, `failed` and
/// `refused` events into the black box among the last 200 events.
pub(crate) fn scheduled_attempts(catalog: &Catalog) -> Result<Vec<Event>, OpsError> {
    Ok(catalog
        .events(None, 200)?
        .into_iter()
        .filter(|e| {
            // Backup attempts only: a failed move or eviction names its backup.
            (e.kind == "created"
                || (e.backup_id.is_none() && matches!(e.kind.as_str(), "failed" | "refused")))
                && e.zone_to.or(e.zone_from) == Some(Zone::BlackBox)
        })
        .collect())
}

impl Tierkeep {
    /// What a policy decision may depend on, from the catalog at `now`.
    pub fn policy_context(
        &self,
        catalog: &Catalog,
        now: OffsetDateTime,
    ) -> Result<PolicyContext, OpsError> {
        let snap = |zone: Zone| -> Result<ZoneSnapshot, OpsError> {
            Ok(ZoneSnapshot {
                zone,
                capacity: self.settings.zone(zone).capacity,
                usage: catalog.usage(zone)?,
            })
        };
        let recent = scheduled_attempts(catalog)?
            .into_iter()
            // A refusal wrote nothing: not an attempt a policy backs off from.
            .filter(|e| e.kind != "refused")
            .take(32)
            .map(|e| Attempt {
                at: e.at,
                succeeded: e.kind == "created",
            })
            .collect();
        Ok(PolicyContext {
            now,
            schedule: self.settings.schedule,
            zones: [
                snap(Zone::BlackBox)?,
                snap(Zone::Deletion)?,
                snap(Zone::Reserved)?,
            ],
            recent,
            settings: self.policy.settings().to_owned(),
        })
    }

    /// The policy's interval for `ctx` (checked; the built-in rules' on a fault).
    pub fn decide_interval(&self, ctx: &PolicyContext) -> std::time::Duration {
        let rules = self.policy.rules();
        let started = std::time::Instant::now();
        let d = Decider { rules: &*rules }.interval(ctx);
        crate::policy::report_fault(rules.name(), "interval", started, &d);
        d.value
    }

    /// When the next scheduled backup is due: the last scheduled attempt (or backup) plus
    /// the policy's interval, or `now` if that is past or there has been none.
    pub fn next_backup_due(
        &self,
        catalog: &Catalog,
        now: OffsetDateTime,
    ) -> Result<OffsetDateTime, OpsError> {
        let ctx = self.policy_context(catalog, now)?;
        let newest = catalog
            .list(None)?
            .into_iter()
            .filter(|r| r.kind == crate::domain::BackupKind::Scheduled)
            .map(|r| r.created_at)
            .max();
        let last = ctx.recent.first().map(|a| a.at).max(newest);
        if last.is_none() {
            return Ok(now);
        }
        Ok(crate::domain::next_scheduled(
            self.decide_interval(&ctx),
            last,
            now,
        ))
    }

    fn key_of(&self, rec: &Record) -> BackupKey {
        BackupKey {
            host: rec.host_id.clone(),
            id: rec.id.clone(),
        }
    }

    /// Brings zones and catalog back to a consistent state after an interrupted run.
    /// Call under the host lock.
    pub async fn recover(
        &self,
        catalog: &mut Catalog,
        now: OffsetDateTime,
    ) -> Result<RecoveryReport, OpsError> {
        let mut report = RecoveryReport::default();
        let mut committed: HashMap<Zone, Vec<crate::archive::Manifest>> = HashMap::new();
        let mut listed_zones = Vec::new();
        for zone in Zone::ALL {
            let store = self.store(zone);
            // An unreachable zone is left as the catalog has it: nothing in it is marked
            // missing, and no move into it is finished now. One that is known to be down
            // is not even asked until its next probe.
            // A remote zone gets a quick probe first: a server that is down or hangs costs
            // its few seconds, not a listing's retries.
            let remote = store.staging_dir().is_none();
            let listing = match self.zone_available(catalog, zone, now).await {
                Ok(()) if remote => match store.check().await {
                    Ok(()) => store.list().await.map_err(OpsError::from),
                    Err(e) => Err(OpsError::from(e)),
                },
                Ok(()) => store.list().await.map_err(OpsError::from),
                Err(e) => Err(e),
            };
            let listing = match listing {
                Ok(l) => {
                    self.zone_outcome(catalog, zone, now, None);
                    l
                }
                Err(e) => {
                    self.zone_outcome(catalog, zone, now, Some(&e));
                    tracing::warn!(zone = %zone, "zone unreachable, recovery skips it: {e}");
                    report.unreachable.push(format!("{zone}: {e}"));
                    continue;
                }
            };
            listed_zones.push(zone);
            // Multipart uploads an interrupted or failed transfer left on the server (their
            // abort could not reach it then): nothing of this host uploads now.
            match store.abort_stale_uploads(&self.settings.host_id).await {
                Ok(aborted) => report
                    .removed_incomplete
                    .extend(aborted.into_iter().map(|o| format!("{zone}: upload {o}"))),
                Err(e) => {
                    tracing::warn!(%zone, "cannot abort stale multipart uploads (retried by the next recovery): {e}")
                }
            }
            if let Some(staging) = store.staging_dir() {
                crate::ops::remove_partials(
                    &staging,
                    &self.settings.host_id,
                    &mut report.removed_incomplete,
                );
            }
            for listed in listing {
                if listed.key.host != self.settings.host_id {
                    continue;
                }
                match listed.state {
                    ListedState::Committed(m) => committed.entry(zone).or_default().push(*m),
                    ListedState::Incomplete => {
                        store.remove_incomplete(&listed.key).await?;
                        report
                            .removed_incomplete
                            .push(format!("{zone}: {}", listed.key));
                    }
                    ListedState::Unreadable(reason) => {
                        tracing::warn!(key = %listed.key, zone = %zone, "unreadable manifest left alone: {reason}");
                        report
                            .unreadable
                            .push(format!("{zone}: {}: {reason}", listed.key));
                    }
                }
            }
        }
        crate::ops::remove_partials(
            &self.settings.data_dir.join("staging"),
            &self.settings.host_id,
            &mut report.removed_incomplete,
        );
        // A backup committed in both the black box and the deletion zone is a move
        // interrupted after its commit: the deletion copy was verified before it was
        // committed, so the black-box copy goes now.
        let in_deletion: std::collections::HashSet<_> = committed
            .get(&Zone::Deletion)
            .map(|v| v.iter().map(|m| m.id.clone()).collect())
            .unwrap_or_default();
        if let Some(bb) = committed.get_mut(&Zone::BlackBox) {
            let mut kept = Vec::new();
            for m in bb.drain(..) {
                if in_deletion.contains(&m.id) {
                    let key = BackupKey {
                        host: m.host_id.clone(),
                        id: m.id.clone(),
                    };
                    match self.store(Zone::BlackBox).delete(&key).await {
                        Ok(()) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    tracing::info!(id = %m.id, "finished an interrupted move: removed the black-box copy");
                    report.finished_moves.push(m.id.to_string());
                } else {
                    kept.push(m);
                }
            }
            *bb = kept;
        }
        let found: Vec<(Zone, crate::archive::Manifest)> = committed
            .into_iter()
            .flat_map(|(z, ms)| ms.into_iter().map(move |m| (z, m)))
            .collect();
        report.backups = found.len();
        report.catalog = catalog.reconcile(&self.settings.host_id, &found, &listed_zones, now)?;
        for id in &report.catalog.missing {
            tracing::error!(id = %id, "a backup recorded in the catalog is in no zone");
        }
        for id in &report.catalog.discovered {
            tracing::warn!(id = %id, "found a committed backup missing from the catalog; added it");
        }
        for r in &report.removed_incomplete {
            tracing::info!("removed what an interrupted run left: {r}");
        }
        Ok(report)
    }

    /// Evicts a deletion-zone backup: intent recorded, object deleted, state recorded.
    pub(crate) async fn evict(
        &self,
        catalog: &mut Catalog,
        rec: &Record,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<(), OpsError> {
        if rec.zone != Zone::Deletion || rec.state != State::Present {
            return Err(OpsError::Internal(format!(
                "refusing to evict {} from the {} zone: eviction only removes deletion-zone backups",
                rec.id, rec.zone
            )));
        }
        self.zone_available(catalog, Zone::Deletion, now).await?;
        catalog.note_backup(&rec.id, now, "evicting", Some(Zone::Deletion), reason)?;
        faults::point("evict.after_intent")?;
        let removed = self.remove_copy(rec, Zone::Deletion).await;
        self.zone_outcome(catalog, Zone::Deletion, now, removed.as_ref().err());
        if let Err(e) = removed {
            // The intent stays: the next recovery completes the eviction if the delete
            // did reach the zone.
            catalog.note_backup(
                &rec.id,
                now,
                "failed",
                Some(Zone::Deletion),
                &format!("eviction failed: {e}"),
            )?;
            return Err(e);
        }
        faults::point("evict.after_delete")?;
        catalog.mark_removed(&rec.id, Zone::Deletion, State::Evicted, now, reason)?;
        crate::metrics::inc(
            "tierkeep_evictions_total",
            &[("zone", Zone::Deletion.as_str())],
        );
        tracing::info!(id = %rec.id, "evicted from the deletion zone: {reason}");
        Ok(())
    }

    /// Evicts the earliest deletion-zone backups until `incoming` more (of
    /// `incoming_bytes`) fit. Returns the evicted ids.
    pub(crate) async fn make_room_in_deletion(
        &self,
        catalog: &mut Catalog,
        incoming: u64,
        incoming_bytes: u64,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, OpsError> {
        let present = catalog.list(Some(Zone::Deletion))?;
        let cap = self.settings.zone(Zone::Deletion).capacity;
        let ctx = self.policy_context(catalog, now)?;
        let rules = self.policy.rules();
        let started = std::time::Instant::now();
        let decision = Decider { rules: &*rules }.eviction(
            &ctx,
            &views(&present),
            Room {
                backups: incoming,
                bytes: incoming_bytes,
            },
        );
        crate::policy::report_fault(rules.name(), "eviction", started, &decision);
        let order = match &decision.fault {
            None if decision.by == BuiltinRules.name() => {
                "the earliest is evicted first (built-in default rules)".to_owned()
            }
            None => format!("evicted in the order of policy {}", decision.by),
            Some(f) => format!(
                "the earliest is evicted first (built-in rules; policy {} failed: {f})",
                rules.name()
            ),
        };
        let mut out = Vec::new();
        for id in decision.value {
            let Some(rec) = present.iter().find(|r| r.id == id) else {
                continue;
            };
            let reason = format!(
                "deletion zone full ({} of {} backups): {order}",
                present.len(),
                cap.max_backups,
            );
            self.evict(catalog, rec, now, &reason).await?;
            out.push(id.to_string());
        }
        Ok(out)
    }

    /// Moves a black-box backup to the deletion zone: upload, verify, commit, record in
    /// the catalog, then remove the local copy.
    pub(crate) async fn move_to_deletion(
        &self,
        catalog: &mut Catalog,
        rec: &Record,
        now: OffsetDateTime,
        reason: &str,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let started = std::time::Instant::now();
        self.zone_available(catalog, Zone::Deletion, now).await?;
        let result = self.move_steps(catalog, rec, now, reason, progress).await;
        if let Err(e) = &result {
            // Every move that was tried and failed is in the audit trail, with its reason
            // (one skipped because the zone is known to be down is not: the zone's
            // `unreachable` event says why nothing moves).
            let text = format!("move to the deletion zone failed: {e}");
            if let Err(note) = catalog.note_moved_failed(&rec.id, now, &text) {
                tracing::warn!(id = %rec.id, "cannot record the failed move: {note}");
            }
            if let OpsError::Damaged { reason, .. } = e {
                catalog.note_backup(&rec.id, now, "damaged", Some(Zone::BlackBox), reason)?;
                crate::metrics::inc(
                    "tierkeep_damaged_found_total",
                    &[("zone", Zone::BlackBox.as_str())],
                );
                tracing::error!(id = %rec.id, "{e}");
            }
        }
        let outcome = if result.is_ok() { "moved" } else { "failed" };
        let labels = [
            ("from", Zone::BlackBox.as_str()),
            ("to", Zone::Deletion.as_str()),
            ("outcome", outcome),
        ];
        crate::metrics::inc("tierkeep_moves_total", &labels);
        crate::metrics::observe(
            "tierkeep_move_duration_seconds",
            &[("outcome", outcome)],
            started.elapsed(),
        );
        if result.is_ok() {
            crate::metrics::add("tierkeep_moved_bytes_total", &[], rec.size_bytes as f64);
        }
        result
    }

    async fn move_steps(
        &self,
        catalog: &mut Catalog,
        rec: &Record,
        now: OffsetDateTime,
        reason: &str,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let key = self.key_of(rec);
        let src = self.store(Zone::BlackBox).clone();
        let dst = self.store(Zone::Deletion).clone();
        let local = src
            .local_archive(&key)
            .ok_or_else(|| OpsError::Internal("the black box must be a local zone".into()))?;
        let result: Result<(), OpsError> = async {
            dst.check().await?;
            faults::point("move.before_upload")?;
            progress.phase("aging", rec.size_bytes);
            dst.put_archive(&key, &local, progress.callback()).await?;
            faults::point("move.after_upload")?;
            self.verify_copy(rec, &key, progress).await?;
            faults::point("move.after_verify")?;
            dst.put_manifest(&rec.manifest).await?;
            Ok(())
        }
        .await;
        self.zone_outcome(catalog, Zone::Deletion, now, result.as_ref().err());
        // The uploaded copy does not match the manifest: the transfer, or the black-box
        // copy it was read from? Only the latter makes the backup damaged.
        let mismatch = matches!(
            result,
            Err(OpsError::Archive(ArchiveError::Mismatch { .. })
                | OpsError::Store(StoreError::Remote { op: "commit", .. }))
        );
        let result = if mismatch
            && let Err(local) = self.verify_copy_of(rec, &local, &Progress::hidden()).await
        {
            Err(OpsError::Damaged {
                id: rec.id.to_string(),
                zone: Zone::BlackBox,
                reason: local.to_string(),
            })
        } else {
            result
        };
        if let Err(e) = result {
            // Not committed: drop the partial upload; the black-box copy is untouched.
            if let Err(clean) = dst.remove_incomplete(&key).await
                && !matches!(clean, StoreError::NotFound { .. })
            {
                tracing::warn!("could not remove the incomplete upload of {key}: {clean}");
            }
            return Err(e);
        }
        faults::point("move.after_commit")?;
        catalog.mark_moved(&rec.id, Zone::BlackBox, Zone::Deletion, now, reason)?;
        faults::point("move.after_catalog")?;
        self.remove_copy(rec, Zone::BlackBox).await?;
        faults::point("move.after_remove")?;
        tracing::info!(id = %rec.id, "aged into the deletion zone: {reason}");
        Ok(())
    }

    /// Re-reads the uploaded copy in the deletion zone and compares it with the manifest.
    async fn verify_copy(
        &self,
        rec: &Record,
        key: &BackupKey,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let dst = self.store(Zone::Deletion);
        let dest = self.staging()?.join(format!(
            "{}-{}.verify.partial",
            self.settings.host_id, rec.id
        ));
        let copy = store::readable_copy(dst.as_ref(), key, &dest, progress.callback()).await?;
        self.verify_copy_of(rec, copy.path(), &Progress::hidden())
            .await
    }

    /// Ages black-box backups out early until `incoming` more fit in the black box.
    pub(crate) async fn make_room_in_black_box(
        &self,
        catalog: &mut Catalog,
        incoming: u64,
        incoming_bytes: u64,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<(Vec<String>, Vec<String>), OpsError> {
        let cap = self.settings.zone(Zone::BlackBox).capacity;
        let mut aged = Vec::new();
        let mut evicted = Vec::new();
        // Planned again whenever a move finds its backup damaged: that one stays, and
        // another ages in its place.
        'plan: loop {
            let present = catalog.list(Some(Zone::BlackBox))?;
            let damaged = damaged_ids(catalog)?;
            let (plan, enough) = plan_room_around(
                cap,
                &views(&present),
                &|id| damaged.contains(id),
                incoming,
                incoming_bytes,
            );
            for id in plan {
                let Some(rec) = present.iter().find(|r| r.id == id) else {
                    continue;
                };
                evicted.extend(
                    self.make_room_in_deletion(catalog, 1, rec.size_bytes, now)
                        .await?,
                );
                let reason = if incoming == 0 {
                    format!(
                        "black box over its capacity ({} of {} backups, taken under pressure): \
                         aged to bring it back within capacity",
                        present.len(),
                        cap.max_backups
                    )
                } else {
                    format!(
                        "black box full ({} of {} backups): aged early to make room for a new \
                         backup",
                        present.len(),
                        cap.max_backups
                    )
                };
                match self
                    .move_to_deletion(catalog, rec, now, &reason, progress)
                    .await
                {
                    Ok(()) => aged.push(id.to_string()),
                    Err(OpsError::Damaged { .. }) => continue 'plan,
                    Err(e) => return Err(e),
                }
            }
            if !enough {
                let stuck: Vec<&str> = present
                    .iter()
                    .filter(|r| damaged.contains(&r.id))
                    .map(|r| r.id.as_str())
                    .collect();
                return Err(OpsError::Damaged {
                    id: stuck.join(", "),
                    zone: Zone::BlackBox,
                    reason: "the black box cannot make room: its other backups have aged out, \
                             and damaged copies never move"
                        .into(),
                });
            }
            break;
        }
        Ok((aged, evicted))
    }

    /// One pass of the lifecycle: recovery, aging of what has been in the black box for
    /// T2, and eviction of what no longer fits in the deletion zone.
    pub async fn tick(
        &self,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<TickReport, OpsError> {
        let _lock = self.lock().await?;
        let mut catalog = self.catalog()?;
        let result = self.tick_locked(&mut catalog, now, progress).await;
        progress.finish();
        self.end_work(result.is_ok());
        result
    }

    async fn tick_locked(
        &self,
        catalog: &mut Catalog,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<TickReport, OpsError> {
        let mut report = TickReport {
            recovery: self
                .recover_if_needed(catalog, now)
                .await?
                .unwrap_or_default(),
            ..TickReport::default()
        };
        let bb = catalog.list(Some(Zone::BlackBox))?;
        let damaged = damaged_ids(catalog)?;
        let schedule = self.settings.schedule;
        let ctx = self.policy_context(catalog, now)?;
        let rules = self.policy.rules();
        let started = std::time::Instant::now();
        let decision = Decider { rules: &*rules }.aging(&ctx, &views(&bb));
        crate::policy::report_fault(rules.name(), "aging", started, &decision);
        for id in decision.value {
            let Some(rec) = bb.iter().find(|r| r.id == id) else {
                continue;
            };
            if damaged.contains(&id) {
                tracing::debug!(%id, "not aged: its black-box copy is damaged");
                continue;
            }
            report.evicted.extend(
                self.make_room_in_deletion(catalog, 1, rec.size_bytes, now)
                    .await?,
            );
            let reason = format!(
                "policy {} aged it after {} in the black box (T2 = {})",
                decision.by,
                format_duration(
                    (now - rec.created_at)
                        .try_into()
                        .unwrap_or(std::time::Duration::ZERO)
                ),
                format_duration(schedule.aging)
            );
            match self
                .move_to_deletion(catalog, rec, now, &reason, progress)
                .await
            {
                Ok(()) => report.aged.push(id.to_string()),
                // One bad backup never blocks the rest: it stays (marked damaged) and the
                // next one moves.
                Err(OpsError::Damaged { .. }) => report.damaged.push(id.to_string()),
                Err(e) => return Err(e),
            }
        }
        // A black box over its capacity (taken beyond it under pressure) is brought back
        // within it, oldest first, as soon as aging works again.
        match self
            .make_room_in_black_box(catalog, 0, 0, now, progress)
            .await
        {
            Ok((aged, evicted)) => {
                report.aged.extend(aged);
                report.evicted.extend(evicted);
            }
            // Over capacity with only damaged backups left to move: shown in `status`.
            Err(OpsError::Damaged { id, .. }) if report.damaged.is_empty() => {
                tracing::warn!(ids = %id, "the black box stays over its capacity: damaged backups never move");
            }
            Err(OpsError::Damaged { .. }) => {}
            Err(e) => return Err(e),
        }
        report
            .evicted
            .extend(self.make_room_in_deletion(catalog, 0, 0, now).await?);
        Ok(report)
    }
}
