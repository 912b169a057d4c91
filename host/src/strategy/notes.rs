//! Why a strategy left runs pending: the latest reason per run, kept in this process's memory
//! (a bounded number) and joined into `GET /runs` as `scheduling`.
//!
//! They are hints that every claim refreshes, so writing them to the store on each claim would
//! cost far more than they are worth. With several replicas, a run shows the reason of the
//! replica that last decided about it, if the request reaches that replica.

use std::collections::HashMap;
use std::sync::Mutex;

use gyoza_core::sync::lock;

use crate::scheduler::{ClaimRequest, Decision, PendingNote};

/// Most pending-run reasons kept in memory; beyond, the oldest half of the map is dropped
/// (cheaply: all of it). Reasons are hints that the next claim refreshes.
const NOTES_KEPT: usize = 10_000;

/// The latest reason per pending run.
#[derive(Debug, Default)]
pub(super) struct Notes(Mutex<HashMap<String, PendingNote>>);

impl Notes {
    /// Records what `strategy` decided for `request`: the runs it chose lose their old reason,
    /// the runs it explained get the new one.
    pub fn record(&self, strategy: &str, request: &ClaimRequest<'_>, decision: &Decision) {
        if decision.reasons.is_empty() && decision.chosen.is_empty() {
            return;
        }
        let mut notes = lock(&self.0);
        for run in decision
            .chosen
            .iter()
            .filter_map(|&i| request.pending.get(i))
        {
            notes.remove(&run.id);
        }
        if notes.len() + decision.reasons.len() > NOTES_KEPT {
            notes.clear();
        }
        for (index, reason) in &decision.reasons {
            let Some(run) = request.pending.get(*index) else {
                continue;
            };
            notes.insert(
                run.id.clone(),
                PendingNote {
                    strategy: strategy.to_owned(),
                    reason: reason.clone(),
                    at: request.now,
                },
            );
        }
    }

    /// Records `reason`, given by `by` (the server itself), for `run_id`.
    pub fn note(&self, run_id: &str, by: &str, reason: String, at: gyoza_core::time::Timestamp) {
        let mut notes = lock(&self.0);
        if notes.len() >= NOTES_KEPT {
            notes.clear();
        }
        notes.insert(
            run_id.to_owned(),
            PendingNote {
                strategy: by.to_owned(),
                reason,
                at,
            },
        );
    }

    /// The latest reason for `run_id`.
    pub fn get(&self, run_id: &str) -> Option<PendingNote> {
        lock(&self.0).get(run_id).cloned()
    }
}
