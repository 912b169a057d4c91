//! A worker's events in one request (`POST /workers/{id}/events`).
//!
//! Each event means what `POST /runs/{run_id}/events` of it alone means, with one more rule:
//! the worker must hold the run (its current attempt ASSIGNED to or RUNNING on the worker,
//! and the event's `attempt`, when given, that attempt). The events of one run are applied in
//! the request's order, each to the run as the one before left it, in **one** read and one
//! write of the run: an event that is refused leaves the run as it was before that event and
//! the run's next events still apply. Different runs are written concurrently, so the store's
//! group commit takes them in together. A run none of whose events applies is not written.
//!
//! A reply lost after the write leaves the worker where a lost reply to single events leaves
//! it: sent again, STARTED and the final events are refused (the run moved on), INFO and
//! PROGRESS are recorded twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gyoza_core::api::AddEventRequest;
use gyoza_core::sync::lock;
use gyoza_core::{DomainError, OpRun, OpRunState};

use super::Service;
use crate::store::StoreError;

/// What became of one event of a batch.
pub type EventOutcome = Result<OpRunState, StoreError>;

impl Service {
    /// Applies `events` (run id, event) of worker `worker_id`; the outcomes are in the
    /// order of `events`. `Ok(None)` for an event whose run does not exist.
    pub async fn worker_events(
        &self,
        worker_id: &str,
        events: Vec<(String, AddEventRequest)>,
    ) -> Vec<Option<EventOutcome>> {
        let total = events.len();
        // Each run's events, with their indexes in the request, in order.
        let mut by_run: Vec<(String, Vec<(usize, AddEventRequest)>)> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        for (index, (run_id, event)) in events.into_iter().enumerate() {
            let at = *slot.entry(run_id.clone()).or_insert_with(|| {
                by_run.push((run_id, Vec::new()));
                by_run.len() - 1
            });
            by_run[at].1.push((index, event));
        }
        let writes = by_run
            .into_iter()
            .map(|(run_id, events)| self.run_events(worker_id, run_id, events));
        let mut outcomes: Vec<Option<EventOutcome>> = (0..total).map(|_| None).collect();
        for answers in futures_util::future::join_all(writes).await {
            for (index, outcome) in answers {
                outcomes[index] = outcome;
            }
        }
        outcomes
    }

    /// Applies one run's `events` (with their indexes) in one write.
    async fn run_events(
        &self,
        worker_id: &str,
        run_id: String,
        events: Vec<(usize, AddEventRequest)>,
    ) -> Vec<(usize, Option<EventOutcome>)> {
        let indexes: Vec<usize> = events.iter().map(|(i, _)| *i).collect();
        // The mutation may be called more than once (a store retries a conflicting write):
        // each call starts the outcomes afresh.
        let decided: Arc<Mutex<Vec<Result<OpRunState, DomainError>>>> = Arc::default();
        let kept = decided.clone();
        let now = self.clock.now();
        let worker = worker_id.to_owned();
        let written = self
            .update_run(
                &run_id,
                Box::new(move |run: &mut OpRun| {
                    let outcomes: Vec<_> = events
                        .iter()
                        .map(|(_, event)| apply_held(run, &worker, event.clone(), now))
                        .collect();
                    // Every event refused: nothing changed, and the run is not written.
                    let refused = match outcomes.first() {
                        Some(Err(first)) if outcomes.iter().all(Result::is_err) => {
                            Some(first.clone())
                        }
                        _ => None,
                    };
                    *lock(&kept) = outcomes;
                    refused.map_or(Ok(()), Err)
                }),
            )
            .await;
        let decided = std::mem::take(&mut *lock(&decided));
        match written {
            // Written, or refused whole by the mutation: each event's own outcome.
            Ok(Some(_)) | Err(StoreError::Rule(_)) if decided.len() == indexes.len() => indexes
                .into_iter()
                .zip(decided)
                .map(|(i, outcome)| (i, Some(outcome.map_err(StoreError::Rule))))
                .collect(),
            // No such run, or the store failed: the same for every event of the run.
            other => {
                let outcome = match other {
                    Ok(None) => None,
                    Ok(Some(run)) => Some(Ok(run.state)),
                    Err(e) => Some(Err(e)),
                };
                indexes.into_iter().map(|i| (i, outcome.clone())).collect()
            }
        }
    }
}

/// Applies `event` to `run`, which worker `worker_id` must hold; the run's state after it. A
/// refused event leaves `run` as it was: the domain checks an event before it changes
/// anything (`core/tests/state_machine.rs` asserts it for any event on any run), so no copy
/// is taken, and a batch of many events for one run costs each event once.
fn apply_held(
    run: &mut OpRun,
    worker_id: &str,
    event: AddEventRequest,
    now: gyoza_core::time::Timestamp,
) -> Result<OpRunState, DomainError> {
    if !run.is_held_by(worker_id, None) {
        return Err(DomainError::NotHeld {
            run_id: run.id.clone(),
            worker_id: worker_id.to_owned(),
        });
    }
    event.apply(run, now)?;
    Ok(run.state)
}
