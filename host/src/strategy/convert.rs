//! Between the host's view of a claim and the WIT records: the compact `claim` (0.2.0
//! columns) a plugin decides from, and its answer as the raw [`Decision`] the claim checks
//! (indices into the pending window, in the plugin's order, and the reasons it gave).

use std::collections::HashSet;

use gyoza_core::{Capacity, Resources};

use super::wit::{self, Claim, Gpus, PendingRuns, Workers};
use crate::scheduler::{ClaimRequest, Decision};

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

/// The plugin's `answer` as a [`Decision`] on a window of `pending` runs: its choices as they
/// are (the claim checks them), and at most [`REASONS_KEPT`] reasons, trimmed to
/// [`REASON_CHARS`], for runs of the window it did not choose.
pub(super) fn decision(pending: usize, answer: &wit::Decision) -> Decision {
    let chosen: Vec<usize> = answer.assign.iter().map(|&i| i as usize).collect();
    let picked: HashSet<usize> = chosen.iter().copied().collect();
    let reasons = answer
        .deferred
        .iter()
        .map(|deferral| (deferral.run as usize, deferral.reason.trim()))
        .filter(|(run, reason)| *run < pending && !picked.contains(run) && !reason.is_empty())
        .take(REASONS_KEPT)
        .map(|(run, reason)| (run, reason.chars().take(REASON_CHARS).collect()))
        .collect();
    Decision { chosen, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::Deferral;

    #[test]
    fn choices_pass_as_they_are_and_reasons_are_bounded() {
        let deferral = |run: u32, reason: &str| Deferral {
            run,
            reason: reason.into(),
        };
        let mut deferred = vec![
            deferral(0, "chosen after all"),
            deferral(9, "not in the window"),
            deferral(2, "  "),
            deferral(1, &format!("  {}  ", "x".repeat(500))),
        ];
        deferred.extend((0..40).map(|_| deferral(3, "waits")));
        let answer = wit::Decision {
            assign: vec![0, 7, 0],
            deferred,
        };
        let decision = decision(4, &answer);
        assert_eq!(decision.chosen, [0, 7, 0], "the claim checks the choices");
        assert_eq!(decision.reasons.len(), REASONS_KEPT);
        assert_eq!(decision.reasons[0], (1, "x".repeat(REASON_CHARS)));
        assert!(
            decision.reasons[1..]
                .iter()
                .all(|(run, r)| *run == 3 && r == "waits")
        );
    }
}
