//! Dead workers lose their runs.
//!
//! A worker silent for longer than the worker timeout is presumed dead: each run it held
//! (ASSIGNED or RUNNING) gets its attempt FAILED with "worker <id> lost (no heartbeat for
//! Ns)" and is requeued as a new attempt. Such requeues do not use the op's retry budget
//! (the op did not fail) but are capped at [`MAX_LOST_REQUEUES`] per run, after which the run
//! FAILS: an op that kills its workers must not loop forever.
//!
//! Every server replica runs the reaper. Each requeue is a compare-and-set store update whose
//! mutation refuses unless the run is still held by that worker, so two replicas reaping the
//! same worker requeue each run once. A worker that comes back later is fenced: its calls for
//! the old attempt get 409.

use std::time::Duration;

use crate::api::AppState;
use crate::store::StoreError;

/// Requeues per run after its worker went away (lost, or handed the run back with
/// `POST /runs/{id}/release`) before the run FAILS.
pub const MAX_LOST_REQUEUES: usize = 3;

/// Requeues the runs of every worker silent for longer than the worker timeout; returns
/// how many runs it changed.
pub async fn reap_lost_workers(state: &AppState) -> Result<usize, StoreError> {
    let now = state.clock.now();
    let mut changed = 0;
    for worker in state
        .store
        .stale_workers(now - state.worker_timeout)
        .await?
    {
        let silent = (now - worker.last_heartbeat_at).num_seconds();
        for run in state.store.runs_on_worker(&worker.id).await? {
            let worker_id = worker.id.clone();
            let outcome = state
                .update_run(
                    &run.id,
                    Box::new(move |r| r.worker_lost(&worker_id, silent, MAX_LOST_REQUEUES, now)),
                )
                .await;
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
                // worker reported at the last moment): nothing to do.
                Ok(None) | Err(StoreError::Rule(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(changed)
}

/// Runs [`reap_lost_workers`] every quarter of the worker timeout (at least every second)
/// until the returned task is aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    let period = (state.worker_timeout / 4)
        .to_std()
        .unwrap_or(Duration::from_secs(15))
        .max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = reap_lost_workers(&state).await {
                tracing::error!(error = %e, "lost-worker check failed; will try again");
            }
        }
    })
}
