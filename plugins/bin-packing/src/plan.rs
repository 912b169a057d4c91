//! The bin-packing algorithm, in plain Rust over the SDK's types (named by the parent module)
//! so that the host's benchmark compiles this very file natively for comparison.

use super::{Capacity, Claim, Decision, Placement, reason};

/// How many waiting runs get a reason per claim (the host keeps only a few anyway).
const REASONS: usize = 8;

/// How tightly a run fills a worker, lower is tighter: first the VRAM left on the GPU it
/// would use (in MB: best fit among GPUs), then the fractions of the worker's CPU and RAM left
/// free after placing it (summed, so that workers of different sizes compare).
fn leftover(
    claim: &Claim,
    worker: usize,
    free: &Capacity,
    run_index: usize,
    gpu: Placement,
) -> (i64, f64) {
    let run = &claim.pending[run_index];
    let total = &claim.workers[worker];
    let fraction = |left: i64, total: u64| {
        if total == 0 {
            0.0
        } else {
            left as f64 / total as f64
        }
    };
    let vram_left = gpu.map_or(0, |g| free.gpus[g] - run.vram_mb as i64);
    let rest = fraction(free.cpu - i64::from(run.cpu), u64::from(total.cpu_cores))
        + fraction(free.ram_mb - run.ram_mb as i64, total.ram_mb);
    (vram_left, rest)
}

/// Places runs in queue order, each on the active worker it fits most tightly, and hands the
/// requester the runs whose best fit it is. Placements on other workers are simulated too
/// (they are what those workers will be offered when they claim), so the requester is not
/// shown capacity that a tighter worker is already expected to use.
pub fn plan(claim: &Claim) -> Decision {
    let requester = claim.requester as usize;
    let mut free: Vec<Capacity> = (0..claim.workers.len())
        .map(|w| claim.capacity(w))
        .collect();
    let mut decision = Decision::default();
    for (index, run) in claim.pending.iter().enumerate() {
        if decision.assign.len() >= claim.max as usize {
            break;
        }
        let mut best: Option<(usize, Placement, (i64, f64))> = None;
        for (worker, capacity) in free.iter().enumerate() {
            let Some(gpu) = capacity.fit(run) else {
                continue;
            };
            let score = leftover(claim, worker, capacity, index, gpu);
            // Ties go to the requester, so that identical idle workers all get work.
            let better = match best {
                None => true,
                Some((_, _, b)) => score < b || (score == b && worker == requester),
            };
            if better {
                best = Some((worker, gpu, score));
            }
        }
        match best {
            Some((worker, gpu, _)) => {
                free[worker].take(run, gpu);
                if worker == requester {
                    decision.assign.push(index as u32);
                } else if decision.deferred.len() < REASONS {
                    decision.defer(index, "another active worker is a tighter fit");
                }
            }
            None if decision.deferred.len() < REASONS => {
                let why = reason::does_not_fit(run, &free[requester])
                    .unwrap_or_else(|| "does not fit".to_owned());
                decision.defer(index, format!("no active worker fits: {why}"));
            }
            None => {}
        }
    }
    decision
}
