//! Between the host's view of a claim and the WIT records: building the compact `claim`, and
//! checking the strategy's answer before anything acts on it.

use std::collections::HashSet;

use gyoza_core::{Capacity, Resources};

use super::wit::gyoza::scheduler::types::{Claim, Decision, Gpu, PendingRun, Worker};
use crate::scheduler::ClaimRequest;

/// Reasons kept per claim: strategies should only explain the first few runs they defer, and
/// the host never stores more than this many from one answer.
pub(super) const REASONS_KEPT: usize = 16;

/// Longest reason kept, in characters.
const REASON_CHARS: usize = 300;

fn worker_record(
    resources: &Resources,
    free: &Capacity,
    running: usize,
    gpus: &mut Vec<Gpu>,
) -> Worker {
    let gpu_start = gpus.len() as u32;
    for &(id, free_vram) in &free.gpus {
        let total = resources
            .gpus
            .iter()
            .find(|g| g.id == id)
            .map_or(0, |g| g.vram_mb);
        gpus.push(Gpu {
            id,
            vram_mb: total,
            free_vram_mb: free_vram,
        });
    }
    Worker {
        cpu_cores: resources.cpu_cores,
        ram_mb: resources.ram_mb,
        free_cpu: free.cpu,
        free_ram_mb: free.ram_mb,
        gpu_start,
        gpu_count: gpus.len() as u32 - gpu_start,
        running: running as u32,
    }
}

/// The WIT claim for `request`. The requester's capacity is the request's own (read for this
/// claim), whether or not the cluster listing has it.
pub(super) fn claim(request: &ClaimRequest<'_>) -> Claim {
    let mut workers = Vec::with_capacity(request.cluster.len() + 1);
    let mut gpus = Vec::new();
    let mut requester = None;
    for worker in request.cluster {
        if worker.id == request.worker.id {
            requester = Some(workers.len());
            workers.push(worker_record(
                &worker.resources,
                &request.free,
                worker.running,
                &mut gpus,
            ));
        } else {
            workers.push(worker_record(
                &worker.resources,
                &worker.free,
                worker.running,
                &mut gpus,
            ));
        }
    }
    let requester = requester.unwrap_or_else(|| {
        workers.push(worker_record(
            &request.worker.resources,
            &request.free,
            0,
            &mut gpus,
        ));
        workers.len() - 1
    });
    let pending = request
        .pending
        .iter()
        .map(|run| PendingRun {
            priority: run.priority,
            cpu: run.constraints.cpu.unwrap_or(0),
            ram_mb: run.constraints.ram_mb.unwrap_or(0),
            vram_mb: run.constraints.vram_mb.unwrap_or(0),
            waited_ms: (request.now - run.created_at).num_milliseconds().max(0) as u64,
        })
        .collect();
    Claim {
        requester: requester as u32,
        max: request.max.min(u32::MAX as usize) as u32,
        workers,
        gpus,
        pending,
    }
}

/// A strategy's answer after the host's checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Run ids to assign, best first: each exists, appears once, and fits the requester
    /// together with those before it.
    pub ids: Vec<String>,
    /// (run id, reason) for runs the strategy explained, at most [`REASONS_KEPT`].
    pub reasons: Vec<(String, String)>,
    /// Indices that name no pending run.
    pub unknown: usize,
    /// Indices given more than once.
    pub duplicate: usize,
    /// Runs that do not fit the requester's free capacity, or beyond the claim's `max`.
    pub over_capacity: usize,
}

impl Checked {
    /// How many entries of the answer were dropped.
    pub fn dropped(&self) -> usize {
        self.unknown + self.duplicate + self.over_capacity
    }
}

/// Checks `decision` against `request`: never trust a plugin.
pub(super) fn check(request: &ClaimRequest<'_>, decision: &Decision) -> Checked {
    let mut checked = Checked::default();
    let mut free = request.free.clone();
    let mut seen = HashSet::new();
    for &index in &decision.assign {
        let Some(run) = request.pending.get(index as usize) else {
            checked.unknown += 1;
            continue;
        };
        if !seen.insert(index) {
            checked.duplicate += 1;
            continue;
        }
        if checked.ids.len() >= request.max {
            checked.over_capacity += 1;
            continue;
        }
        match free.fit(&run.constraints) {
            Some(gpu) => {
                free.take(&run.constraints, gpu);
                checked.ids.push(run.id.clone());
            }
            None => checked.over_capacity += 1,
        }
    }
    for deferral in &decision.deferred {
        if checked.reasons.len() >= REASONS_KEPT {
            break;
        }
        let Some(run) = request.pending.get(deferral.run as usize) else {
            continue;
        };
        if seen.contains(&deferral.run) {
            continue;
        }
        let reason: String = deferral.reason.trim().chars().take(REASON_CHARS).collect();
        if !reason.is_empty() {
            checked.reasons.push((run.id.clone(), reason));
        }
    }
    checked
}
