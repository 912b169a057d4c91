//! Between the host's view of a claim and the WIT records: building the compact `claim` (as
//! 0.2.0 columns, and as 0.1.0 records for older plugins), and checking the strategy's answer
//! before anything acts on it.

use std::collections::HashSet;

use gyoza_core::{Capacity, Resources};

use super::wit::v0_1::gyoza::scheduler::types as v0_1;
use super::wit::v0_2::gyoza::scheduler::types::{Gpus, PendingRuns, Workers};
use super::wit::{Claim, Decision};
use crate::scheduler::ClaimRequest;

/// Reasons kept per claim: strategies should only explain the first few runs they defer, and
/// the host never stores more than this many from one answer.
pub(super) const REASONS_KEPT: usize = 16;

/// Longest reason kept, in characters.
const REASON_CHARS: usize = 300;

fn push_worker(
    workers: &mut Workers,
    gpus: &mut Gpus,
    resources: &Resources,
    free: &Capacity,
    running: usize,
) {
    let gpu_start = gpus.id.len() as u32;
    for &(id, free_vram) in &free.gpus {
        let total = resources
            .gpus
            .iter()
            .find(|g| g.id == id)
            .map_or(0, |g| g.vram_mb);
        gpus.id.push(id);
        gpus.vram_mb.push(total);
        gpus.free_vram_mb.push(free_vram);
    }
    workers.cpu_cores.push(resources.cpu_cores);
    workers.ram_mb.push(resources.ram_mb);
    workers.free_cpu.push(free.cpu);
    workers.free_ram_mb.push(free.ram_mb);
    workers.gpu_start.push(gpu_start);
    workers.gpu_count.push(gpus.id.len() as u32 - gpu_start);
    workers.running.push(running as u32);
}

fn workers_with_capacity(n: usize) -> Workers {
    Workers {
        cpu_cores: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        free_cpu: Vec::with_capacity(n),
        free_ram_mb: Vec::with_capacity(n),
        gpu_start: Vec::with_capacity(n),
        gpu_count: Vec::with_capacity(n),
        running: Vec::with_capacity(n),
    }
}

/// The WIT claim for `request`, as columns (`gyoza:scheduler@0.2.0`). The requester's
/// capacity is the request's own (read for this claim), whether or not the cluster listing
/// has it.
pub(super) fn claim(request: &ClaimRequest<'_>) -> Claim {
    let mut workers = workers_with_capacity(request.cluster.len() + 1);
    let mut gpus = Gpus {
        id: Vec::new(),
        vram_mb: Vec::new(),
        free_vram_mb: Vec::new(),
    };
    let mut requester = None;
    for worker in request.cluster {
        let free = if worker.id == request.worker.id {
            requester = Some(workers.free_cpu.len());
            &request.free
        } else {
            &worker.free
        };
        push_worker(
            &mut workers,
            &mut gpus,
            &worker.resources,
            free,
            worker.running,
        );
    }
    let requester = requester.unwrap_or_else(|| {
        push_worker(
            &mut workers,
            &mut gpus,
            &request.worker.resources,
            &request.free,
            0,
        );
        workers.free_cpu.len() - 1
    });
    let n = request.pending.len();
    let mut pending = PendingRuns {
        priority: Vec::with_capacity(n),
        cpu: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        vram_mb: Vec::with_capacity(n),
        waited_ms: Vec::with_capacity(n),
    };
    for run in request.pending {
        pending.priority.push(run.priority);
        pending.cpu.push(run.constraints.cpu.unwrap_or(0));
        pending.ram_mb.push(run.constraints.ram_mb.unwrap_or(0));
        pending.vram_mb.push(run.constraints.vram_mb.unwrap_or(0));
        pending
            .waited_ms
            .push((request.now - run.created_at).num_milliseconds().max(0) as u64);
    }
    Claim {
        requester: requester as u32,
        max: request.max.min(u32::MAX as usize) as u32,
        workers,
        gpus,
        pending,
    }
}

/// `claim` as a `gyoza:scheduler@0.1.0` plugin takes it: lists of records.
pub(super) fn to_v0_1(claim: &Claim) -> v0_1::Claim {
    let (w, g, p) = (&claim.workers, &claim.gpus, &claim.pending);
    v0_1::Claim {
        requester: claim.requester,
        max: claim.max,
        workers: (0..w.free_cpu.len())
            .map(|i| v0_1::Worker {
                cpu_cores: w.cpu_cores[i],
                ram_mb: w.ram_mb[i],
                free_cpu: w.free_cpu[i],
                free_ram_mb: w.free_ram_mb[i],
                gpu_start: w.gpu_start[i],
                gpu_count: w.gpu_count[i],
                running: w.running[i],
            })
            .collect(),
        gpus: (0..g.id.len())
            .map(|i| v0_1::Gpu {
                id: g.id[i],
                vram_mb: g.vram_mb[i],
                free_vram_mb: g.free_vram_mb[i],
            })
            .collect(),
        pending: (0..p.cpu.len())
            .map(|i| v0_1::PendingRun {
                priority: p.priority[i],
                cpu: p.cpu[i],
                ram_mb: p.ram_mb[i],
                vram_mb: p.vram_mb[i],
                waited_ms: p.waited_ms[i],
            })
            .collect(),
    }
}

/// A `gyoza:scheduler@0.1.0` plugin's answer, as the host's (0.2.0) type: the same fields.
pub(super) fn from_v0_1(decision: v0_1::Decision) -> Decision {
    Decision {
        assign: decision.assign,
        deferred: decision
            .deferred
            .into_iter()
            .map(|d| super::wit::v0_2::gyoza::scheduler::types::Deferral {
                run: d.run,
                reason: d.reason,
            })
            .collect(),
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
