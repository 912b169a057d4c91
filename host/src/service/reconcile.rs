//! Live workers' heartbeats against the runs the store says they hold.
//!
//! A worker that restarted under the same id, or never got a claim's answer, keeps
//! heartbeating while the runs the server gave it go nowhere. Every heartbeat that lists its
//! running ops is therefore compared with the runs held by its worker:
//! - a held run absent from the report, assigned longer ago than the grace
//!   ([`Service::reconcile_grace`]: longer than a claim's answer can take to arrive and show
//!   up in a heartbeat), gets its attempt FAILED with "worker <id> no longer reports this run
//!   (it restarted or lost the claim's answer)" and is requeued like a lost worker's run
//!   (outside the retry budget, sharing the cap of [`MAX_LOST_REQUEUES`]). Each requeue is a
//!   compare-and-set that refuses unless the run is still held by that worker at that attempt.
//! - a reported run the server does not give to that worker (another worker's, another
//!   attempt, finished, unknown) is answered in the heartbeat's `stop` list.
//!
//! A heartbeat without `running_ops` (an older worker's) says nothing and changes nothing.

use gyoza_core::run::MAX_LOST_REQUEUES;
use gyoza_core::{OpRun, StopRun, WorkerOpRun};

use super::Service;
use crate::store::StoreError;

/// Whether `report` names `run`'s current attempt (any attempt when it names none).
fn reports(report: &[WorkerOpRun], run: &OpRun) -> bool {
    report
        .iter()
        .any(|op| op.id == run.id && op.attempt.is_none_or(|a| a == run.current_attempt()))
}

impl Service {
    /// Reconciles the heartbeat of `worker_id` that reported `report`: requeues the held runs
    /// it no longer reports past the grace, and returns the reported runs it must stop.
    pub async fn reconcile(
        &self,
        worker_id: &str,
        report: &[WorkerOpRun],
    ) -> Result<Vec<StopRun>, StoreError> {
        let now = self.clock.now();
        let held = self.store.runs_on_worker(worker_id).await?;
        for run in held.iter().filter(|run| !reports(report, run)) {
            let current = run.current();
            let assigned_at = current.assigned_at.unwrap_or(run.updated_at);
            if now - assigned_at > self.reconcile_grace {
                self.requeue_unreported(worker_id, &run.id, current.attempt)
                    .await?;
            }
        }
        let mut stop = Vec::new();
        for op in report {
            if held
                .iter()
                .any(|run| run.id == op.id && run.is_held_by(worker_id, op.attempt))
            {
                continue;
            }
            // Not held when read above: look again, so that only a run the store still does
            // not give to this worker is stopped.
            let run = self.store.load_run(&op.id).await?;
            if !run.is_some_and(|run| run.is_held_by(worker_id, op.attempt)) {
                stop.push(StopRun {
                    id: op.id.clone(),
                    attempt: op.attempt,
                });
            }
        }
        Ok(stop)
    }

    /// Requeues attempt `attempt` of run `run_id`, unless it is no longer held by `worker_id`.
    async fn requeue_unreported(
        &self,
        worker_id: &str,
        run_id: &str,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let worker = worker_id.to_owned();
        let outcome = self
            .update_run(
                run_id,
                Box::new(move |r| r.not_reported(&worker, attempt, MAX_LOST_REQUEUES, now)),
            )
            .await;
        match outcome {
            Ok(Some(run)) => {
                tracing::warn!(
                    run_id = %run.id,
                    worker_id,
                    attempt,
                    state = %run.state,
                    "worker no longer reports the run: its attempt failed and the run was {}",
                    if run.is_locked() { "failed (requeue cap reached)" } else { "requeued" }
                );
                Ok(())
            }
            // Gone, or changed since it was read (reported, reaped, or reconciled by another
            // replica): nothing to do.
            Ok(None) | Err(StoreError::Rule(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
