//! Claims: which pending runs a worker gets.
//!
//! The [`Scheduler`] seam decides; [`claim`] checks its answer and makes it so. A scheduler's
//! answer is never trusted: unknown or duplicate ids and runs that do not fit the worker's
//! free capacity are dropped (and logged). Each chosen run then moves PENDING → ASSIGNED in
//! an atomic store update that refuses unless the run is still PENDING, so concurrent claims,
//! from this process or another server on the same database, never share a run.
//!
//! Concurrent claims in one process would otherwise all be shown the same window and race for
//! its best runs, losing most of those races in the store. So a claim reserves the runs it is
//! about to assign ([`InFlight`]) and the others are shown the window without them; the store's
//! refusal remains the guarantee (and resolves races with other replicas).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use gyoza_core::time::Timestamp;
use gyoza_core::{Capacity, HeldRun, PendingRun, Resources, Worker, WorkerOpRun};

use crate::api::AppState;
use crate::error::ApiError;
use crate::store::{ClaimView, StoreError};

/// How many claimable runs a scheduler is shown per claim, best first.
pub const PENDING_WINDOW: usize = 1_000;

/// How often a claim that lost races to other claimers asks the scheduler again.
const CLAIM_ROUNDS: usize = 4;

/// The runs that claims in this process are assigning at the moment.
#[derive(Debug, Default)]
pub struct InFlight(std::sync::Mutex<HashSet<String>>);

impl InFlight {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops from `pending` the runs other claims are assigning.
    fn hide_taken(&self, pending: &mut Vec<PendingRun>) {
        let set = self.set();
        if !set.is_empty() {
            pending.retain(|run| !set.contains(&run.id));
        }
    }

    /// Reserves those of `ids` nobody else has reserved; returns them and a guard that
    /// releases them.
    fn reserve(
        &self,
        ids: Vec<(String, Option<u32>)>,
    ) -> (Vec<(String, Option<u32>)>, Reserved<'_>) {
        let mut set = self.set();
        let mine: Vec<_> = ids
            .into_iter()
            .filter(|(id, _)| set.insert(id.clone()))
            .collect();
        let guard = Reserved {
            in_flight: self,
            ids: mine.iter().map(|(id, _)| id.clone()).collect(),
        };
        (mine, guard)
    }
}

/// Releases reserved runs when dropped (also when a claim's future is dropped midway).
struct Reserved<'a> {
    in_flight: &'a InFlight,
    ids: Vec<String>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut set = self.in_flight.set();
        for id in &self.ids {
            set.remove(id);
        }
    }
}

/// What a scheduler decides from.
#[derive(Debug)]
pub struct ClaimRequest<'a> {
    /// The worker asking for work.
    pub worker: &'a Worker,
    /// Its free capacity, after the runs it already holds.
    pub free: Capacity,
    /// Claimable runs, highest priority first and oldest first within a priority.
    pub pending: &'a [PendingRun],
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

/// A strategy's raw answer: indices into `ClaimRequest::pending`, best first, unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The runs the strategy would have the requester take, best first.
    pub chosen: Vec<usize>,
    /// (index, reason) for runs it left pending.
    pub reasons: Vec<(usize, String)>,
}

/// A scheduling policy: picks runs for a claim, best first.
///
/// Async because a strategy is a wasm call that may run up to its deadline: implementations
/// run it on the blocking pool rather than on the server's async threads.
#[async_trait::async_trait]
pub trait Scheduler: Send + Sync + 'static {
    /// Name shown in logs.
    fn name(&self) -> &str;
    /// The runs the worker should take, in order of preference.
    async fn decide(&self, request: &ClaimRequest<'_>) -> Decision;
    /// Why the run `run_id` was last left pending, if the scheduler said.
    fn pending_note(&self, _run_id: &str) -> Option<PendingNote> {
        None
    }
    /// What the claim's check dropped of this scheduler's last decision (for its stats).
    fn record_dropped(&self, _strategy: &str, _placements: &gyoza_core::placement::Placements) {}
}

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
    let Some(view) = state
        .store
        .claim_view(worker_id, now, PENDING_WINDOW)
        .await?
    else {
        tracing::warn!(worker_id, "claim from a worker that never sent a heartbeat");
        return Ok(Vec::new());
    };
    let ClaimView {
        worker,
        held,
        mut pending,
        workers,
    } = view;
    let mut held_by: HashMap<String, Vec<HeldRun>> = HashMap::new();
    for run in held {
        held_by.entry(run.worker_id.clone()).or_default().push(run);
    }
    let mine = held_by.remove(worker_id).unwrap_or_default();
    let mut free = Capacity::free(&worker.resources, &mine);
    let cluster = active_workers(state, &worker, &free, mine.len(), held_by, workers);
    let mut claimed = Vec::new();
    // Concurrent claimers see the same window and race for its best runs. A claimer that
    // loses a race asks the scheduler again without the runs it lost, a few times, so that
    // it does not come back empty-handed while work is pending.
    for _round in 0..CLAIM_ROUNDS {
        state.claims_in_flight.hide_taken(&mut pending);
        let wanted = max - claimed.len();
        let request = ClaimRequest {
            worker: &worker,
            free: free.clone(),
            pending: &pending,
            max: wanted,
            now,
            cluster: &cluster,
        };
        let decision = state.scheduler.decide(&request).await;
        // The one check of the answer: against the window and the worker's free capacity.
        let placements =
            gyoza_core::placement::place(&free, &pending, decision.chosen.iter().copied(), wanted);
        state
            .scheduler
            .record_dropped(state.scheduler.name(), &placements);
        let picked: Vec<(String, Option<u32>)> = placements
            .placed
            .iter()
            .map(|p| (pending[p.index].id.clone(), p.gpu))
            .collect();
        if picked.is_empty() {
            break;
        }
        let chosen_count = picked.len();
        let (picked, _reserved) = state.claims_in_flight.reserve(picked);
        let reserved_all = picked.len() == chosen_count;
        let owner = worker_id.to_owned();
        let ids: Vec<String> = picked.iter().map(|(id, _)| id.clone()).collect();
        let answers = state
            .store
            .update_runs(ids, Arc::new(move |run| run.assign(&owner, now)))
            .await;
        let mut settled: HashSet<String> = HashSet::new();
        // Runs another claim reserved first count as lost races.
        let mut lost_a_race = !reserved_all;
        let mut failure = None;
        for ((id, gpu), answer) in picked.into_iter().zip(answers) {
            match answer {
                Ok(Some(run)) => {
                    free.take(&run.constraints, gpu);
                    claimed.push(WorkerOpRun::from_run(&run));
                }
                // Gone, or taken by another claimer since the window was read.
                Ok(None) | Err(StoreError::Rule(_)) => lost_a_race = true,
                Err(e) => failure = Some(e),
            }
            settled.insert(id);
        }
        if let Some(e) = failure {
            if claimed.is_empty() {
                return Err(e.into());
            }
            tracing::error!(error = %e, "store failed during a claim; returning the runs assigned so far");
            return Ok(claimed);
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
fn active_workers(
    state: &AppState,
    requester: &Worker,
    requester_free: &Capacity,
    requester_running: usize,
    mut held: HashMap<String, Vec<HeldRun>>,
    workers: Vec<Worker>,
) -> Vec<ActiveWorker> {
    let now = state.clock.now();
    let mut cluster = vec![ActiveWorker {
        id: requester.id.clone(),
        resources: requester.resources.clone(),
        free: requester_free.clone(),
        running: requester_running,
    }];
    for worker in workers {
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
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ids: &[&str]) -> Vec<PendingRun> {
        ids.iter()
            .map(|id| PendingRun {
                id: (*id).to_owned(),
                priority: 0,
                created_at: chrono::Utc::now(),
                constraints: Default::default(),
            })
            .collect()
    }

    #[test]
    fn a_reserved_run_is_hidden_from_other_claims_until_released() {
        let in_flight = InFlight::default();
        let (mine, guard) = in_flight.reserve(vec![("a".into(), None), ("b".into(), Some(0))]);
        assert_eq!(mine.len(), 2);
        // A second claim cannot reserve them, and does not see them.
        let (theirs, _) = in_flight.reserve(vec![("b".into(), None), ("c".into(), None)]);
        assert_eq!(theirs, vec![("c".to_owned(), None)]);
        let mut pending = window(&["a", "b", "d"]);
        in_flight.hide_taken(&mut pending);
        let ids: Vec<&str> = pending.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["d"]);
        drop(guard);
        let mut pending = window(&["a", "b", "d"]);
        in_flight.hide_taken(&mut pending);
        assert_eq!(pending.len(), 3, "released with the claim");
    }
}
