//! The bin-packing algorithm, in plain Rust over the SDK's types (named by the parent module)
//! so that the host's benchmark compiles this very file natively for comparison.
//!
//! Written for the inner loop (every pending run against every worker), which is nearly all
//! of a claim's cost, and for the compiler that turns the component into machine code
//! (Cranelift, in the server) as much as for LLVM:
//! - the claim's columns are read in place (`claim.pending.cpu[i]`, ...);
//! - each worker's free capacity, the reciprocals of its size and its largest free GPU sit
//!   together in one small array, so that most workers are ruled out by one to three
//!   compares, without bounds checks;
//! - a run that needs more CPU or RAM than any worker has left is ruled out before any scan
//!   (behind a long queue, the simulated cluster is soon full);
//! - the scans are functions of their own, with few live values (Cranelift allocates
//!   registers per function, and spills whatever a loop keeps alive across the deadline
//!   check that the server's engine puts at the top of every loop turn);
//! - they look at eight workers per turn of the loop, so that this check and its spills come
//!   once per eight workers.
//!
//! No allocation happens per run. `BENCHMARKS.md` has the profile behind each of these.

use super::{Capacity, Claim, Decision, WaitCode, reason};

/// How many waiting runs get a reason per claim (the host keeps only a few anyway).
const REASONS: usize = 8;

/// One worker's free capacity while the plan places runs.
#[derive(Clone, Copy)]
struct Free {
    cpu: i64,
    ram: i64,
    /// The most free VRAM on one of its GPUs (`i64::MIN` without GPUs): a run that needs more
    /// cannot go there.
    largest_vram: i64,
    /// 1 / total CPU cores (0 without cores): free CPU as a fraction of the worker.
    per_cpu: f64,
    /// 1 / total RAM (0 without RAM).
    per_ram: f64,
    /// Its GPUs' free VRAM is `vram[gpu_start..gpu_end]`.
    gpu_start: usize,
    gpu_end: usize,
}

impl Free {
    /// Fractions of the worker's CPU and RAM left free after placing (cpu, ram), summed so
    /// that workers of different sizes compare. Always finite.
    #[inline(always)]
    fn rest(&self, cpu: i64, ram: i64) -> f64 {
        (self.cpu - cpu) as f64 * self.per_cpu + (self.ram - ram) as f64 * self.per_ram
    }
}

/// Where a run would go.
#[derive(Clone, Copy)]
struct Fit {
    worker: usize,
    /// Index in `claim.gpus` of the GPU it would use, if it needs VRAM.
    gpu: Option<usize>,
}

fn inverse(total: u64) -> f64 {
    if total == 0 { 0.0 } else { 1.0 / total as f64 }
}

fn largest(vram: &[i64]) -> i64 {
    vram.iter().copied().max().unwrap_or(i64::MIN)
}

/// The most free CPU and RAM any worker has (recomputed when a placement lowers the free
/// capacity of a worker that had the most). A run that needs more fits nowhere: behind a long queue the cluster is soon full (in the plan's
/// simulation), and most runs are then ruled out here rather than by every worker in turn.
struct Most {
    cpu: i64,
    ram: i64,
}

impl Most {
    #[inline(never)]
    fn of(free: &[Free]) -> Self {
        let mut most = Self {
            cpu: i64::MIN,
            ram: i64::MIN,
        };
        for w in free {
            most.cpu = most.cpu.max(w.cpu);
            most.ram = most.ram.max(w.ram);
        }
        most
    }
}

/// Calls `f(index, worker)` for every worker in order, eight per turn of the loop.
#[inline(always)]
fn each_worker(free: &[Free], mut f: impl FnMut(usize, &Free)) {
    let chunks = free.chunks_exact(8);
    let tail = chunks.remainder();
    for (turn, chunk) in chunks.enumerate() {
        let first = turn * 8;
        for (k, w) in chunk.iter().enumerate() {
            f(first + k, w);
        }
    }
    let done = free.len() - tail.len();
    for (k, w) in tail.iter().enumerate() {
        f(done + k, w);
    }
}

/// The tightest worker for a run that needs no GPU: the least CPU and RAM left free (as
/// fractions), ties going to `requester` so that identical idle workers all get work.
#[inline(never)]
fn tightest(free: &[Free], cpu: i64, ram: i64, requester: usize) -> Option<usize> {
    // `rest` is finite, so the first worker that fits beats the initial infinity.
    let (mut best, mut best_rest) = (usize::MAX, f64::INFINITY);
    each_worker(free, |worker, w| {
        if w.cpu < cpu || w.ram < ram {
            return;
        }
        let rest = w.rest(cpu, ram);
        if rest < best_rest || (rest == best_rest && worker == requester) {
            (best, best_rest) = (worker, rest);
        }
    });
    (best != usize::MAX).then_some(best)
}

/// The tightest (worker, GPU) for a run that needs `need` MB of VRAM on one GPU: on each
/// worker the GPU with the least VRAM left after it (the first of equals), then across
/// workers the least VRAM left, then as [`tightest`].
#[inline(never)]
fn tightest_gpu(
    free: &[Free],
    vram: &[i64],
    need: Need,
    requester: usize,
    candidates: &mut [u32],
) -> Option<Fit> {
    // First the workers that can take it at all (few: VRAM first rules out every worker
    // without a GPU), then the tightest of them, in two plain loops rather than a call per
    // candidate from the unrolled scan.
    let mut found = 0;
    each_worker(free, |worker, w| {
        if w.largest_vram >= need.vram
            && w.cpu >= need.cpu
            && w.ram >= need.ram
            && let Some(slot) = candidates.get_mut(found)
        {
            *slot = worker as u32;
            found += 1;
        }
    });
    let mut best: Option<Fit> = None;
    let (mut best_left, mut best_rest) = (i64::MAX, f64::INFINITY);
    for &worker in &candidates[..found] {
        let worker = worker as usize;
        let w = &free[worker];
        // At least one of its GPUs has room (`largest_vram`): the tightest, first of equals.
        let (mut gpu, mut left) = (w.gpu_start, i64::MAX);
        for (k, &free_vram) in vram[w.gpu_start..w.gpu_end].iter().enumerate() {
            if free_vram >= need.vram && free_vram - need.vram < left {
                (gpu, left) = (w.gpu_start + k, free_vram - need.vram);
            }
        }
        let rest = w.rest(need.cpu, need.ram);
        let beats = if left != best_left {
            left < best_left
        } else if rest != best_rest {
            rest < best_rest
        } else {
            worker == requester
        };
        if beats || best.is_none() {
            best = Some(Fit {
                worker,
                gpu: Some(gpu),
            });
            (best_left, best_rest) = (left, rest);
        }
    }
    best
}

/// What a run needs.
#[derive(Clone, Copy)]
struct Need {
    cpu: i64,
    ram: i64,
    vram: i64,
}

/// Places runs in queue order, each on the active worker it fits most tightly, and hands the
/// requester the runs whose best fit it is. Placements on other workers are simulated too
/// (they are what those workers will be offered when they claim), so the requester is not
/// shown capacity that a tighter worker is already expected to use.
pub fn plan(claim: &Claim) -> Decision {
    let requester = claim.requester as usize;
    let (workers, pending) = (&claim.workers, &claim.pending);
    let mut vram: Vec<i64> = claim.gpus.free_vram_mb.clone();
    let mut free: Vec<Free> = (0..workers.len())
        .map(|w| {
            let gpu_start = (workers.gpu_start[w] as usize).min(vram.len());
            let gpu_end = (gpu_start + workers.gpu_count[w] as usize).min(vram.len());
            Free {
                cpu: workers.free_cpu[w],
                ram: workers.free_ram_mb[w],
                largest_vram: largest(&vram[gpu_start..gpu_end]),
                per_cpu: inverse(u64::from(workers.cpu_cores[w])),
                per_ram: inverse(workers.ram_mb[w]),
                gpu_start,
                gpu_end,
            }
        })
        .collect();
    let mut most = Most::of(&free);
    // Scratch for tightest_gpu: at most every worker is a candidate.
    let mut candidates = vec![0u32; free.len()];
    let mut decision = Decision::default();
    for index in 0..pending.len() {
        if decision.assign.len() >= claim.max as usize {
            break;
        }
        let (need_cpu, need_ram, need_vram) = (
            i64::from(pending.cpu[index]),
            pending.ram_mb[index] as i64,
            pending.vram_mb[index] as i64,
        );
        let best = if need_cpu > most.cpu || need_ram > most.ram {
            None
        } else if need_vram > 0 {
            let need = Need {
                cpu: need_cpu,
                ram: need_ram,
                vram: need_vram,
            };
            tightest_gpu(&free, &vram, need, requester, &mut candidates)
        } else {
            tightest(&free, need_cpu, need_ram, requester).map(|worker| Fit { worker, gpu: None })
        };
        match best {
            Some(fit) => {
                let w = &mut free[fit.worker];
                let held_most = w.cpu == most.cpu || w.ram == most.ram;
                w.cpu -= need_cpu;
                w.ram -= need_ram;
                if let Some(g) = fit.gpu {
                    vram[g] -= need_vram;
                    w.largest_vram = largest(&vram[w.gpu_start..w.gpu_end]);
                }
                if held_most {
                    most = Most::of(&free);
                }
                if fit.worker == requester {
                    decision.assign.push(index as u32);
                } else if decision.deferred.len() < REASONS {
                    let why = "another active worker is a tighter fit";
                    decision.wait(index, WaitCode::Placement, why);
                }
            }
            None if decision.deferred.len() < REASONS => {
                let me = free[requester];
                let free = Capacity {
                    cpu: me.cpu,
                    ram_mb: me.ram,
                    gpus: vram[me.gpu_start..me.gpu_end].to_vec(),
                };
                let why = reason::does_not_fit(&pending.run(index), &free)
                    .unwrap_or_else(|| "does not fit".to_owned());
                let why = format!("no active worker fits: {why}");
                decision.wait(index, WaitCode::Capacity, why);
            }
            None => {}
        }
    }
    decision
}
