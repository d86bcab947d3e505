//! The lifecycle between zones: the demotion module (aging: black box → deletion zone)
//! and the purge module (eviction from the deletion zone). What to do is decided by the planner ([`crate::plan`]: the policy asked through
//! the decision engine, which checks every answer and falls back to the built-in rules);
//! this module carries the plan's steps out, stopping at the first that fails, so that a
//! crash at any step leaves every backup restorable:
//!
//! - a move uploads, verifies, commits (manifest last) and records the move in the
//!   catalog *before* it removes the black-box copy;
//! - an eviction records its intent in the catalog before it deletes;
//! - recovery ([`super::recovery`]) finishes moves that were committed (removing the
//!   black-box copy), drops uploads that were not (the black-box copy stays), completes
//!   interrupted evictions in the catalog and re-reads everything else from the zones.
//!
//! Every step passes a named fault point ([`crate::faults`]).

use std::collections::HashSet;

use serde::Serialize;
use time::OffsetDateTime;

use super::RecoveryReport;
use crate::archive::{ArchiveError, Manifest};
use crate::catalog::{Catalog, Event, Record, State as Held};
use crate::decision::{Attempt, Decider, PolicyContext, Rules};
use crate::domain::{BackupId, BackupView, Zone};
use crate::faults;
use crate::ops::{OpsError, Tierkeep};
use crate::plan::{Action, Plan, State, plan_room, plan_tick};
use crate::policy::Measured;
use crate::progress::Progress;
use crate::store::{BackupKey, StoreError};

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
    /// The planner's view of the zones, from the catalog at `now`.
    pub fn plan_state(&self, catalog: &Catalog, now: OffsetDateTime) -> Result<State, OpsError> {
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
        Ok(State {
            now,
            schedule: self.settings.schedule,
            capacities: Zone::ALL.map(|z| self.settings.zone(z).capacity),
            black_box: views(&catalog.list(Some(Zone::BlackBox))?),
            deletion: views(&catalog.list(Some(Zone::Deletion))?),
            reserved: catalog.usage(Zone::Reserved)?,
            damaged: damaged_ids(catalog)?,
            recent,
            settings: self.policy.settings().to_owned(),
        })
    }

    /// What a policy decision may depend on, from the catalog at `now`.
    pub fn policy_context(
        &self,
        catalog: &Catalog,
        now: OffsetDateTime,
    ) -> Result<PolicyContext, OpsError> {
        Ok(self.plan_state(catalog, now)?.context())
    }

    /// The policy's interval for `ctx` (checked; the built-in rules' on a fault).
    pub fn decide_interval(&self, ctx: &PolicyContext) -> std::time::Duration {
        let rules = self.policy.rules();
        let d = Decider {
            rules: &Measured(&*rules),
        }
        .interval(ctx);
        crate::policy::report_fault(rules.name(), "interval", d.fault.as_ref());
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

    /// Evicts a deletion-zone backup: intent recorded, object deleted, state recorded.
    pub(crate) async fn evict(
        &self,
        catalog: &mut Catalog,
        rec: &Record,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<(), OpsError> {
        if rec.zone != Zone::Deletion || rec.state != Held::Present {
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
        catalog.mark_removed(&rec.id, Zone::Deletion, Held::Evicted, now, reason)?;
        crate::metrics::inc(
            "tierkeep_evictions_total",
            &[("zone", Zone::Deletion.as_str())],
        );
        tracing::info!(id = %rec.id, "evicted from the deletion zone: {reason}");
        Ok(())
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
            .local_archive(&key, rec.manifest.archive_name())
            .ok_or_else(|| OpsError::Internal("the black box must be a local zone".into()))?;
        let result: Result<Manifest, OpsError> = async {
            dst.check().await?;
            faults::point("move.before_upload")?;
            progress.phase("aging", rec.size_bytes);
            // Encrypted on the way when the deletion zone's archives are.
            let stored = self
                .store_archive(
                    dst.as_ref(),
                    Zone::Deletion,
                    &key,
                    &local,
                    &rec.manifest,
                    progress,
                )
                .await?;
            faults::point("move.after_upload")?;
            self.verify_copy(&stored, &key, progress).await?;
            faults::point("move.after_verify")?;
            dst.put_manifest(&stored).await?;
            Ok(stored)
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
        let stored = match result {
            Ok(stored) => stored,
            Err(e) => {
                // Not committed: drop the partial upload; the black-box copy is untouched.
                if let Err(clean) = dst.remove_incomplete(&key).await
                    && !matches!(clean, StoreError::NotFound { .. })
                {
                    tracing::warn!("could not remove the incomplete upload of {key}: {clean}");
                }
                return Err(e);
            }
        };
        faults::point("move.after_commit")?;
        catalog.mark_moved(
            &rec.id,
            Zone::BlackBox,
            Zone::Deletion,
            &stored,
            now,
            reason,
        )?;
        faults::point("move.after_catalog")?;
        self.remove_copy(rec, Zone::BlackBox).await?;
        faults::point("move.after_remove")?;
        tracing::info!(id = %rec.id, "aged into the deletion zone: {reason}");
        Ok(())
    }

    /// Re-reads the uploaded copy in the deletion zone and compares it with its
    /// manifest `stored` (an encrypted copy's ciphertext hash needs no key). Read and
    /// hashed as it arrives: nothing is written locally.
    async fn verify_copy(
        &self,
        stored: &Manifest,
        key: &BackupKey,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let dst = self.store(Zone::Deletion);
        progress.phase("verify", stored.archive_bytes);
        let actual = dst
            .digest_archive(key, stored.archive_name(), progress.callback())
            .await?;
        let expected = (stored.archive_bytes, stored.archive_sha256.clone());
        Ok(crate::archive::check_digest(&expected, actual)?)
    }

    /// Carries out `plan`'s steps in order, stopping at the first that fails. The
    /// policy faults met while planning are reported first.
    async fn carry_out(
        &self,
        catalog: &mut Catalog,
        plan: &Plan,
        now: OffsetDateTime,
        progress: &Progress,
        done: &mut Done,
    ) -> Result<(), OpsError> {
        let rules = self.policy.rules();
        for asked in &plan.asked {
            crate::policy::report_fault(rules.name(), asked.decision, asked.fault.as_ref());
        }
        for step in &plan.steps {
            let (Action::Age { id, .. } | Action::Evict { id }) = &step.action;
            let Some(rec) = catalog.get(id)? else {
                return Err(OpsError::Internal(format!(
                    "the plan names {id}, which is not in the catalog"
                )));
            };
            match &step.action {
                Action::Evict { .. } => {
                    self.evict(catalog, &rec, now, &step.reason).await?;
                    done.evicted.push(id.to_string());
                }
                Action::Age { .. } => {
                    self.move_to_deletion(catalog, &rec, now, &step.reason, progress)
                        .await?;
                    done.aged.push(id.to_string());
                }
            }
        }
        Ok(())
    }

    /// Plans with `make` and carries the plan out; a move that finds its backup damaged
    /// (marked so by the move) has the plan made again without it, so that one bad
    /// backup never blocks the others. Returns the last plan.
    async fn plan_and_carry_out(
        &self,
        catalog: &mut Catalog,
        now: OffsetDateTime,
        progress: &Progress,
        done: &mut Done,
        make: impl Fn(State, &dyn Rules) -> Plan,
    ) -> Result<Plan, OpsError> {
        loop {
            let rules = self.policy.rules();
            let plan = make(self.plan_state(catalog, now)?, &Measured(&*rules));
            match self.carry_out(catalog, &plan, now, progress, done).await {
                Ok(()) => return Ok(plan),
                // Marked damaged by the move: planned again, it is passed over. (Found
                // twice, it was not marked: stop rather than plan it again and again.)
                Err(OpsError::Damaged { id, .. }) if !done.damaged.contains(&id) => {
                    done.damaged.push(id)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ages black-box backups out early until `incoming` more fit in the black box.
    pub(crate) async fn make_room_in_black_box(
        &self,
        catalog: &mut Catalog,
        incoming: u64,
        incoming_bytes: u64,
        now: OffsetDateTime,
        progress: &Progress,
    ) -> Result<(), OpsError> {
        let mut done = Done::default();
        let plan = self
            .plan_and_carry_out(catalog, now, progress, &mut done, |state, rules| {
                plan_room(state, rules, incoming, incoming_bytes)
            })
            .await?;
        if !plan.stuck.is_empty() {
            return Err(stuck(&plan));
        }
        Ok(())
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
        let recovery = self
            .recover_if_needed(catalog, now)
            .await?
            .unwrap_or_default();
        let mut done = Done::default();
        let plan = self
            .plan_and_carry_out(catalog, now, progress, &mut done, plan_tick)
            .await?;
        if !plan.stuck.is_empty() && done.damaged.is_empty() {
            // Over capacity with only damaged backups left to move: shown in `status`.
            tracing::warn!(ids = %stuck_ids(&plan), "the black box stays over its capacity: damaged backups never move");
        }
        Ok(TickReport {
            recovery,
            aged: done.aged,
            evicted: done.evicted,
            damaged: done.damaged,
        })
    }
}

/// What carrying out plans did.
#[derive(Debug, Default)]
pub(crate) struct Done {
    /// Backups moved to the deletion zone.
    pub aged: Vec<String>,
    /// Backups evicted.
    pub evicted: Vec<String>,
    /// Backups whose move found their black-box copy damaged.
    pub damaged: Vec<String>,
}

fn stuck_ids(plan: &Plan) -> String {
    plan.stuck
        .iter()
        .map(BackupId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error of a black box that cannot make room: only damaged backups are left.
fn stuck(plan: &Plan) -> OpsError {
    OpsError::Damaged {
        id: stuck_ids(plan),
        zone: Zone::BlackBox,
        reason: "the black box cannot make room: its other backups have aged out, and damaged \
                 copies never move"
            .into(),
    }
}
