//! Claims: which pending runs a worker gets.
//!
//! The [`Scheduler`] seam decides; [`claim`] checks its answer and makes it so. A scheduler's
//! answer is never trusted: unknown or duplicate ids and runs that do not fit the worker's
//! free capacity are dropped (and logged). Each chosen run then moves PENDING → ASSIGNED in
//! an atomic store update that refuses unless the run is still PENDING, so concurrent claims,
//! from this process or another server on the same database, never share a run.

use std::collections::{HashMap, HashSet};

use gyoza_core::time::Timestamp;
use gyoza_core::{Capacity, OpRun, Resources, Worker, WorkerOpRun};

use crate::api::AppState;
use crate::error::ApiError;
use crate::store::StoreError;

/// How many claimable runs a scheduler is shown per claim, best first.
pub const PENDING_WINDOW: usize = 1_000;

/// How often a claim that lost races to other claimers asks the scheduler again.
const CLAIM_ROUNDS: usize = 4;

/// What a scheduler decides from.
#[derive(Debug)]
pub struct ClaimRequest<'a> {
    /// The worker asking for work.
    pub worker: &'a Worker,
    /// Its free capacity, after the runs it already holds.
    pub free: Capacity,
    /// Claimable runs, highest priority first and oldest first within a priority.
    pub pending: &'a [OpRun],
    /// At most this many runs should be chosen.
    pub max: usize,
    /// When the claim was made.
    pub now: Timestamp,
    /// Every active worker (the requester included) with its free capacity, for strategies
    /// that place runs across the cluster.
    pub cluster: &'a [ActiveWorker],
}

/// An active worker as a strategy sees it.
#[derive(Debug, Clone)]
pub struct ActiveWorker {
    /// Worker id.
    pub id: String,
    /// Its hardware.
    pub resources: Resources,
    /// Its free capacity after the runs it holds.
    pub free: Capacity,
    /// How many runs it holds (ASSIGNED or RUNNING).
    pub running: usize,
}

/// Why a strategy left a run pending, kept for `GET /runs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNote {
    /// The strategy that decided.
    pub strategy: String,
    /// Its reason, e.g. "needs 16384 MB VRAM; largest free GPU has 8192 MB".
    pub reason: String,
    /// When it decided.
    pub at: Timestamp,
}

/// A scheduling policy: picks run ids for a claim, best first.
///
/// Async because a strategy is a wasm call that may run up to its deadline: implementations
/// run it on the blocking pool rather than on the server's async threads.
#[async_trait::async_trait]
pub trait Scheduler: Send + Sync + 'static {
    /// Name shown in logs.
    fn name(&self) -> &str;
    /// The ids of the runs the worker should take, in order of preference.
    async fn select(&self, request: &ClaimRequest<'_>) -> Vec<String>;
    /// Why the run `run_id` was last left pending, if the scheduler said.
    fn pending_note(&self, _run_id: &str) -> Option<PendingNote> {
        None
    }
    /// The wasm strategy host behind this scheduler, for the `/strategies` API.
    fn strategies(&self) -> Option<&crate::strategy::StrategyHost> {
        None
    }
}

/// The former native scheduler's name, kept for existing callers: it is now the built-in
/// wasm `priority` strategy with backfill (see [`crate::strategy::PriorityBackfill`]).
pub use crate::strategy::PriorityBackfill as GreedyPriority;

/// Assigns up to `max` pending runs to `worker_id` and returns them.
///
/// An unknown worker (one that never sent a heartbeat) gets no work, as with the original
/// server. If the store fails after some runs were assigned, those are still returned so
/// that they are not stranded in ASSIGNED.
pub async fn claim(
    state: &AppState,
    worker_id: &str,
    max: usize,
) -> Result<Vec<WorkerOpRun>, ApiError> {
    let now = state.clock.now();
    let Some(worker) = state.store.get_worker(worker_id).await? else {
        tracing::warn!(worker_id, "claim from a worker that never sent a heartbeat");
        return Ok(Vec::new());
    };
    let held = state.store.runs_on_worker(worker_id).await?;
    let mut free = Capacity::free(&worker.resources, &held);
    let mut pending = state.store.pending_window(now, PENDING_WINDOW).await?;
    let cluster = active_workers(state, &worker, &free, held.len()).await?;
    let mut claimed = Vec::new();
    // Concurrent claimers see the same window and race for its best runs. A claimer that
    // loses a race asks the scheduler again without the runs it lost, a few times, so that
    // it does not come back empty-handed while work is pending.
    for _round in 0..CLAIM_ROUNDS {
        let wanted = max - claimed.len();
        let chosen = state
            .scheduler
            .select(&ClaimRequest {
                worker: &worker,
                free: free.clone(),
                pending: &pending,
                max: wanted,
                now,
                cluster: &cluster,
            })
            .await;
        let mut candidates: HashMap<&str, &OpRun> =
            pending.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut settled: HashSet<String> = HashSet::new();
        let mut lost_a_race = false;
        for id in &chosen {
            if claimed.len() >= max {
                break;
            }
            let Some(run) = candidates.remove(id.as_str()) else {
                tracing::warn!(scheduler = state.scheduler.name(), run_id = %id, "scheduler chose an unknown or duplicate run; ignored");
                continue;
            };
            let Some(gpu) = free.fit(&run.constraints) else {
                tracing::warn!(scheduler = state.scheduler.name(), run_id = %id, "scheduler chose a run that does not fit the worker; ignored");
                continue;
            };
            let owner = worker_id.to_owned();
            let assigned = state
                .store
                .update_run(id, Box::new(move |run| run.assign(&owner, now)))
                .await;
            settled.insert(id.clone());
            match assigned {
                Ok(Some(run)) => {
                    free.take(&run.constraints, gpu);
                    claimed.push(WorkerOpRun::from_run(&run));
                }
                // Gone, or taken by another claimer since the window was read.
                Ok(None) | Err(StoreError::Rule(_)) => lost_a_race = true,
                Err(e) => {
                    if claimed.is_empty() {
                        return Err(e.into());
                    }
                    tracing::error!(error = %e, "store failed during a claim; returning the runs assigned so far");
                    return Ok(claimed);
                }
            }
        }
        if !lost_a_race || claimed.len() >= max {
            break;
        }
        pending.retain(|run| !settled.contains(&run.id));
    }
    Ok(claimed)
}

/// Every active worker with its free capacity; the requester first-hand (it may be the only
/// one whose heartbeat is fresh enough) and the others from the store.
async fn active_workers(
    state: &AppState,
    requester: &Worker,
    requester_free: &Capacity,
    requester_running: usize,
) -> Result<Vec<ActiveWorker>, ApiError> {
    let now = state.clock.now();
    let mut held: HashMap<String, Vec<OpRun>> = HashMap::new();
    for run in state.store.held_runs().await? {
        if let Some(worker) = run.worker_id() {
            held.entry(worker.to_owned()).or_default().push(run);
        }
    }
    let mut cluster = vec![ActiveWorker {
        id: requester.id.clone(),
        resources: requester.resources.clone(),
        free: requester_free.clone(),
        running: requester_running,
    }];
    for worker in state.store.list_workers().await? {
        if worker.id == requester.id || !worker.is_active(now, state.worker_timeout) {
            continue;
        }
        let runs = held.remove(&worker.id).unwrap_or_default();
        cluster.push(ActiveWorker {
            free: Capacity::free(&worker.resources, &runs),
            running: runs.len(),
            id: worker.id,
            resources: worker.resources,
        });
    }
    Ok(cluster)
}
