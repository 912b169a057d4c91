//! The bin-packing algorithm, in plain Rust over the SDK's types (named by the parent module)
//! so that the host's benchmark compiles this very file natively for comparison.
//!
//! Written for the inner loop (every pending run against every worker): free capacity is kept
//! as flat arrays, one entry per worker or per GPU, and the per-worker divisions are done once
//! per claim. No allocation happens per run.

use super::{Capacity, Claim, Decision, reason};

/// How many waiting runs get a reason per claim (the host keeps only a few anyway).
const REASONS: usize = 8;

/// Where a run would go, and how tightly it would fit there.
#[derive(Clone, Copy)]
struct Fit {
    worker: usize,
    /// Index in `claim.gpus` of the GPU it would use, if it needs VRAM.
    gpu: Option<usize>,
    /// VRAM left on that GPU after placing it, in MB (0 without a GPU). Compared first: the
    /// best-fitting GPU.
    vram_left: i64,
    /// Fractions of the worker's CPU and RAM left free after placing it, summed (so that
    /// workers of different sizes compare). Compared second.
    rest: f64,
}

impl Fit {
    /// Whether `self` is a strictly tighter fit than `other`, ties going to `requester`
    /// so that identical idle workers all get work.
    fn beats(&self, other: &Fit, requester: usize) -> bool {
        if self.vram_left != other.vram_left {
            return self.vram_left < other.vram_left;
        }
        if self.rest != other.rest {
            return self.rest < other.rest;
        }
        self.worker == requester
    }
}

fn inverse(total: u64) -> f64 {
    if total == 0 { 0.0 } else { 1.0 / total as f64 }
}

/// Places runs in queue order, each on the active worker it fits most tightly, and hands the
/// requester the runs whose best fit it is. Placements on other workers are simulated too
/// (they are what those workers will be offered when they claim), so the requester is not
/// shown capacity that a tighter worker is already expected to use.
pub fn plan(claim: &Claim) -> Decision {
    let requester = claim.requester as usize;
    let workers = &claim.workers;
    let mut cpu: Vec<i64> = workers.iter().map(|w| w.free_cpu).collect();
    let mut ram: Vec<i64> = workers.iter().map(|w| w.free_ram_mb).collect();
    let mut vram: Vec<i64> = claim.gpus.iter().map(|g| g.free_vram_mb).collect();
    let per_cpu: Vec<f64> = workers
        .iter()
        .map(|w| inverse(u64::from(w.cpu_cores)))
        .collect();
    let per_ram: Vec<f64> = workers.iter().map(|w| inverse(w.ram_mb)).collect();
    let mut decision = Decision::default();
    for (index, run) in claim.pending.iter().enumerate() {
        if decision.assign.len() >= claim.max as usize {
            break;
        }
        let (need_cpu, need_ram, need_vram) =
            (i64::from(run.cpu), run.ram_mb as i64, run.vram_mb as i64);
        let mut best: Option<Fit> = None;
        for (worker, w) in workers.iter().enumerate() {
            if cpu[worker] < need_cpu || ram[worker] < need_ram {
                continue;
            }
            let (mut gpu, mut vram_left) = (None, 0);
            if need_vram > 0 {
                let start = w.gpu_start as usize;
                let end = (start + w.gpu_count as usize).min(vram.len());
                for (g, &free) in vram.iter().enumerate().take(end).skip(start) {
                    if free >= need_vram && (gpu.is_none() || free - need_vram < vram_left) {
                        gpu = Some(g);
                        vram_left = free - need_vram;
                    }
                }
                if gpu.is_none() {
                    continue;
                }
            }
            let fit = Fit {
                worker,
                gpu,
                vram_left,
                rest: (cpu[worker] - need_cpu) as f64 * per_cpu[worker]
                    + (ram[worker] - need_ram) as f64 * per_ram[worker],
            };
            if best.is_none_or(|b| fit.beats(&b, requester)) {
                best = Some(fit);
            }
        }
        match best {
            Some(fit) => {
                cpu[fit.worker] -= need_cpu;
                ram[fit.worker] -= need_ram;
                if let Some(g) = fit.gpu {
                    vram[g] -= need_vram;
                }
                if fit.worker == requester {
                    decision.assign.push(index as u32);
                } else if decision.deferred.len() < REASONS {
                    decision.defer(index, "another active worker is a tighter fit");
                }
            }
            None if decision.deferred.len() < REASONS => {
                let me = &workers[requester];
                let start = (me.gpu_start as usize).min(vram.len());
                let end = (start + me.gpu_count as usize).min(vram.len());
                let free = Capacity {
                    cpu: cpu[requester],
                    ram_mb: ram[requester],
                    gpus: vram[start..end].to_vec(),
                };
                let why =
                    reason::does_not_fit(run, &free).unwrap_or_else(|| "does not fit".to_owned());
                decision.defer(index, format!("no active worker fits: {why}"));
            }
            None => {}
        }
    }
    decision
}
