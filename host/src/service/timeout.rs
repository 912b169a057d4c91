//! Runs that ran or waited too long.
//!
//! Two limits of a run's constraints, both enforced here by every server replica, on the
//! reaper's tick (`crate::reaper`):
//! - **Run timeout** (`constraints.timeout_s`). The worker stops an attempt's container at the
//!   limit and reports FAILED `timed out after N s` itself; this is the backstop for a worker
//!   that is gone or does not enforce it (an older worker). A RUNNING attempt whose STARTED
//!   is older than the limit plus [`Service::timeout_grace`] gets FAILED
//!   `timed out after N s (enforced by the server)` and is retried per its retry policy, as
//!   any failure. Its worker, if alive, then finds the run in its heartbeat's `stop` list
//!   (`reconcile`) and stops the container. The grace is longer than the worker's own stop
//!   (SIGTERM, then SIGKILL after its stop timeout) and its report, so a worker that enforces
//!   the limit is never overtaken. ASSIGNED attempts are left alone: until STARTED nothing
//!   runs, and a held run that never starts is the lost-worker and unreported-run rules'
//!   business (`reap`, `reconcile`).
//! - **Queue timeout** (`constraints.queue_timeout_s`). A PENDING attempt that became
//!   claimable longer ago than the limit (the run's creation, or its last requeue once any
//!   retry backoff is over: [`OpRun::queued_since`]) FAILS the run for good with
//!   `not started within N s`, without a retry.
//!
//! Each change is a compare-and-set through [`Service::update_run`]: the domain method
//! ([`OpRun::time_out`], [`OpRun::queue_time_out`]) re-checks the attempt, the state and the
//! deadline against the run as the store holds it at write time and refuses when the run
//! moved on (reported, claimed, reaped, or changed by another replica's check), so two
//! replicas checking at once change each run once and a run that finished at the last
//! moment keeps its result.
//!
//! The check reads, a page at a time through the ordinary listing
//! ([`StoreRead::list_runs`](crate::store::StoreRead::list_runs)), every RUNNING run (as many
//! as the cluster holds) and only those PENDING runs that have a queue timeout
//! ([`RunQuery::queue_timeout`], an index on each store). So a queue of a million runs
//! without one costs the check nothing: before that filter, each tick read every PENDING run
//! as a whole document, and a server at rest with 1,000,000 runs pending spent 39% of a core
//! on it (BENCHMARKS.md, "Scale").

use gyoza_core::time::Timestamp;
use gyoza_core::{OpRun, OpRunState};

use super::Service;
use crate::store::{Cursor, QueryError, RunQuery, StoreError};

/// Runs read per page of the check.
const PAGE: usize = 100;

/// The server-side check on one run: which deadline it is past, if any.
enum Overdue {
    /// RUNNING past its run timeout and the grace.
    Running { attempt: u32 },
    /// PENDING past its queue timeout.
    Queued { attempt: u32 },
}

impl Service {
    /// Fails every RUNNING attempt past its run timeout plus the grace and every PENDING run
    /// past its queue timeout; returns how many runs it changed.
    pub async fn enforce_timeouts(&self) -> Result<usize, StoreError> {
        let mut changed = 0;
        for state in [OpRunState::Running, OpRunState::Pending] {
            let mut cursor = Cursor::Start;
            loop {
                let query = RunQuery {
                    limit: PAGE,
                    cursor: cursor.clone(),
                    state: Some(state),
                    queue_timeout: state == OpRunState::Pending,
                    ..RunQuery::default()
                };
                let page = match self.store.list_runs(&query).await {
                    Ok(page) => page,
                    Err(QueryError::Store(e)) => return Err(e),
                    // The cursor is a run this listing returned, and runs are never deleted;
                    // a run listing names no attempt.
                    Err(QueryError::UnknownCursor { .. } | QueryError::UnknownAttempt { .. }) => {
                        break;
                    }
                };
                let now = self.clock.now();
                for run in &page.runs {
                    if let Some(overdue) = self.overdue(run, now) {
                        changed += usize::from(self.fail_overdue(&run.id, overdue).await?);
                    }
                }
                match page.runs.last() {
                    Some(last) if page.has_more => {
                        cursor = Cursor::StartingAfter(last.id.clone());
                    }
                    _ => break,
                }
            }
        }
        Ok(changed)
    }

    /// Which of its deadlines `run` is past at `now`, as read (the write re-checks).
    fn overdue(&self, run: &OpRun, now: Timestamp) -> Option<Overdue> {
        let attempt = run.current_attempt();
        if run
            .timeout_deadline(self.timeout_grace)
            .is_some_and(|deadline| now > deadline)
        {
            return Some(Overdue::Running { attempt });
        }
        if run.queue_deadline().is_some_and(|deadline| now > deadline) {
            return Some(Overdue::Queued { attempt });
        }
        None
    }

    /// Applies the timeout `overdue` to run `id` unless it moved on; whether it changed.
    async fn fail_overdue(&self, id: &str, overdue: Overdue) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let grace = self.timeout_grace;
        let outcome = match overdue {
            Overdue::Running { attempt } => {
                self.update_run(id, Box::new(move |r| r.time_out(attempt, grace, now)))
                    .await
            }
            Overdue::Queued { attempt } => {
                self.update_run(id, Box::new(move |r| r.queue_time_out(attempt, now)))
                    .await
            }
        };
        match outcome {
            Ok(Some(run)) => {
                let message = run
                    .attempts
                    .iter()
                    .rev()
                    .find_map(|a| a.execution_summary.error_message.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                tracing::warn!(
                    run_id = %run.id,
                    state = %run.state,
                    error = %message,
                    "run timed out: its attempt failed and the run is {}",
                    if run.is_locked() { "failed" } else { "retried" }
                );
                Ok(true)
            }
            // Gone, or changed since it was read (finished, claimed, reaped, or timed out by
            // another replica): nothing to do.
            Ok(None) | Err(StoreError::Rule(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
