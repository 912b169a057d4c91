//! Dead workers lose their runs.
//!
//! A worker silent for longer than the worker timeout is presumed dead: each run it held
//! (ASSIGNED or RUNNING) gets its attempt FAILED with "worker <id> lost (no heartbeat for
//! Ns)" and is requeued as a new attempt. Such requeues do not use the op's retry budget
//! (the op did not fail) but are capped at [`MAX_LOST_REQUEUES`] per run, after which the run
//! FAILS: an op that kills its workers must not loop forever.
//!
//! Every server replica reaps. Each requeue is a compare-and-set store update
//! ([`Store::update_run_if_silent`](crate::store::Store::update_run_if_silent)) whose mutation
//! refuses unless the run is still held by that worker, and which re-checks at write time that
//! the worker is still silent: two replicas reaping the same worker requeue each run once, and
//! a worker that heartbeated between the reaper's read and its write keeps its attempt. A
//! worker that comes back after the requeue is fenced: its calls for the old attempt get 409.
//!
//! Silence is counted from the later of a worker's last heartbeat and this process's start
//! ([`Service::started_at`]): while the server was down, its workers could not heartbeat, so
//! a restarted server gives every worker a full worker timeout to reach it before reaping.

use gyoza_core::run::MAX_LOST_REQUEUES;

use gyoza_core::OpRun;

use super::Service;
use crate::store::{RunMutation, StoreError};

impl Service {
    /// Requeues the runs of every worker silent for longer than the worker timeout; returns
    /// how many runs it changed.
    pub async fn reap(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut changed = 0;
        let cutoff = now - self.worker_timeout;
        if self.started_at > cutoff {
            // Up for less than a worker timeout: nobody has been silent towards this process
            // for that long yet.
            return Ok(0);
        }
        for worker in self.store.stale_workers(cutoff).await? {
            let silent = (now - worker.last_heartbeat_at).num_seconds();
            for run in self.store.runs_on_worker(&worker.id).await? {
                let worker_id = worker.id.clone();
                let lost = Box::new(move |r: &mut OpRun| {
                    r.worker_lost(&worker_id, silent, MAX_LOST_REQUEUES, now)
                });
                let outcome = self.requeue_lost(&run.id, &worker.id, cutoff, lost).await;
                match outcome {
                    Ok(Some(run)) => {
                        changed += 1;
                        tracing::warn!(
                            run_id = %run.id,
                            worker_id = %worker.id,
                            silent_s = silent,
                            state = %run.state,
                            "worker lost: run's attempt failed and the run was {}",
                            if run.is_locked() { "failed (requeue cap reached)" } else { "requeued" }
                        );
                    }
                    // Gone, or changed since it was read (another replica reaped it, or the
                    // worker reported or heartbeated at the last moment): nothing to do.
                    Ok(None) | Err(StoreError::Rule(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(changed)
    }

    /// Applies `lost` to run `id` if `worker_id` is still silent (no heartbeat since
    /// `cutoff`) when the store writes, then delivers its events.
    async fn requeue_lost(
        &self,
        id: &str,
        worker_id: &str,
        cutoff: gyoza_core::time::Timestamp,
        lost: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        let Some(run) = self
            .store
            .update_run_if_silent(id, worker_id, cutoff, lost)
            .await?
        else {
            return Ok(None);
        };
        self.announce(&run);
        Ok(Some(run))
    }
}
