//! Claims: which pending runs a worker gets.
//!
//! The [`Scheduler`] decides; [`Service::claim`] checks its answer and makes it so. A
//! decision is never trusted: [`place`] drops unknown or duplicate choices and runs that do
//! not fit the worker's free capacity, and picks the GPU of each run it keeps. The placed runs
//! are then assigned by [`Store::assign_runs`](crate::store::Store::assign_runs), which moves
//! each PENDING → ASSIGNED only if it is still PENDING and still fits the worker's capacity
//! as the store holds it at write time, atomically with the assignment. So concurrent claims,
//! from this process or another server on the same database, never share a run and never
//! overcommit a worker (a retried claim, two processes with one id). The claimed op names the
//! GPU the run was placed on.
//!
//! Concurrent claims in one process would otherwise all be shown the same window and race for
//! its best runs, losing most of those races in the store. So a claim reserves the runs it is
//! about to assign ([`InFlight`]) and the others are shown the window without them. That is
//! an optimisation only: the store's refusal remains the guarantee, for runs and capacity.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use gyoza_core::placement::{Placements, place};
use gyoza_core::sync::lock;
use gyoza_core::time::Timestamp;
use gyoza_core::{Capacity, HeldRun, OpRun, PendingRun, Worker, WorkerOpRun};

use super::Service;
use crate::scheduler::{ActiveWorker, ClaimRequest};
use crate::store::{ClaimView, Placement, StoreError};

/// How many claimable runs a scheduler is shown per claim, best first.
pub const PENDING_WINDOW: usize = 1_000;

/// How often a claim that lost races to other claimers asks the scheduler again.
const CLAIM_ROUNDS: usize = 4;

/// A run placed on the claiming worker: its id and the GPU picked for it.
type Placed = Placement;

/// The runs that claims in this process are assigning at the moment.
#[derive(Debug, Default)]
pub(super) struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    fn set(&self) -> MutexGuard<'_, HashSet<String>> {
        lock(&self.0)
    }

    /// Drops from `pending` the runs other claims are assigning.
    fn hide_taken(&self, pending: &mut Vec<PendingRun>) {
        let set = self.set();
        if !set.is_empty() {
            pending.retain(|run| !set.contains(&run.id));
        }
    }

    /// Reserves those of `placed` nobody else has reserved; returns them and a guard that
    /// releases them.
    fn reserve(&self, placed: Vec<Placed>) -> (Vec<Placed>, Reserved<'_>) {
        let mut set = self.set();
        let mine: Vec<_> = placed
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

/// What one round's store write did.
#[derive(Default)]
struct Round {
    /// Runs now ASSIGNED to the claimer, with their GPU.
    assigned: Vec<(OpRun, Option<u32>)>,
    /// Runs of the round, assigned or not: not offered again.
    settled: HashSet<String>,
    /// Some run went to another claimer (here or on another replica).
    lost_a_race: bool,
    /// The store failed.
    failure: Option<StoreError>,
}

impl Service {
    /// Assigns up to `max` pending runs to `worker_id` and returns them, each naming its GPU.
    ///
    /// An unknown worker (one that never sent a heartbeat) gets no work, as with the original
    /// server. If the store fails after some runs were assigned, those are still returned so
    /// that they are not stranded in ASSIGNED.
    pub async fn claim(&self, worker_id: &str, max: usize) -> Result<Vec<WorkerOpRun>, StoreError> {
        let now = self.clock.now();
        let Some(view) = self
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
        let cluster = self.active_workers(&worker, &free, mine.len(), held_by, workers);
        let mut claimed = Vec::new();
        // Concurrent claimers see the same window and race for its best runs. A claimer that
        // loses a race asks the scheduler again without the runs it lost, a few times, so that
        // it does not come back empty-handed while work is pending.
        for _round in 0..CLAIM_ROUNDS {
            self.claims_in_flight.hide_taken(&mut pending);
            let request = ClaimRequest {
                worker: &worker,
                free: free.clone(),
                pending: &pending,
                max: max - claimed.len(),
                now,
                cluster: &cluster,
            };
            let placed = self.decide(&request).await;
            if placed.is_empty() {
                break;
            }
            let round = self.assign(worker_id, placed, now).await;
            for (run, gpu) in round.assigned {
                free.take(&run.constraints, gpu);
                claimed.push(WorkerOpRun {
                    gpu_id: gpu,
                    ..WorkerOpRun::from_run(&run)
                });
            }
            if let Some(e) = round.failure {
                if claimed.is_empty() {
                    return Err(e);
                }
                tracing::error!(error = %e, "store failed during a claim; returning the runs assigned so far");
                break;
            }
            if !round.lost_a_race || claimed.len() >= max {
                break;
            }
            pending.retain(|run| !round.settled.contains(&run.id));
        }
        for op in &claimed {
            self.notify(&op.id);
        }
        Ok(claimed)
    }

    /// The scheduler's decision on `request`, checked: the runs to assign and their GPUs.
    async fn decide(&self, request: &ClaimRequest<'_>) -> Vec<Placed> {
        let decision = self.scheduler.decide(request).await;
        let placements = place(&request.free, request.pending, decision.chosen, request.max);
        self.report_dropped(&placements);
        placements
            .placed
            .iter()
            .map(|p| (request.pending[p.index].id.clone(), p.gpu))
            .collect()
    }

    /// Logs what the check dropped of a decision and tells the scheduler (for its stats).
    fn report_dropped(&self, placements: &Placements) {
        let strategy = self.scheduler.name();
        if placements.dropped() > 0 {
            tracing::warn!(
                scheduler = strategy,
                unknown = placements.unknown,
                duplicate = placements.duplicate,
                over_capacity = placements.over_capacity,
                "scheduler chose unknown, duplicate or unfitting runs; ignored"
            );
        }
        self.scheduler.record_dropped(strategy, placements);
    }

    /// Reserves the placed runs and assigns those that still fit to `worker_id` in one
    /// store write.
    async fn assign(&self, worker_id: &str, placed: Vec<Placed>, now: Timestamp) -> Round {
        let chosen = placed.len();
        let (placed, _reserved) = self.claims_in_flight.reserve(placed);
        // Runs another claim reserved first count as lost races.
        let mut round = Round {
            lost_a_race: placed.len() != chosen,
            ..Round::default()
        };
        let answers = self.store.assign_runs(worker_id, placed.clone(), now).await;
        for ((id, gpu), answer) in placed.into_iter().zip(answers) {
            match answer {
                Ok(Some(run)) => round.assigned.push((run, gpu)),
                // Gone, taken by another claimer since the window was read, or no longer
                // fitting because another claimer filled the worker.
                Ok(None) | Err(StoreError::Rule(_)) => round.lost_a_race = true,
                Err(e) => round.failure = Some(e),
            }
            round.settled.insert(id);
        }
        round
    }

    /// Every active worker with its free capacity; the requester first-hand (it may be the
    /// only one whose heartbeat is fresh enough) and the others from the store.
    fn active_workers(
        &self,
        requester: &Worker,
        requester_free: &Capacity,
        requester_running: usize,
        mut held: HashMap<String, Vec<HeldRun>>,
        workers: Vec<Worker>,
    ) -> Vec<ActiveWorker> {
        let now = self.clock.now();
        let mut cluster = vec![ActiveWorker {
            id: requester.id.clone(),
            resources: requester.resources.clone(),
            free: requester_free.clone(),
            running: requester_running,
        }];
        for worker in workers {
            if worker.id == requester.id || !worker.is_active(now, self.worker_timeout) {
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
