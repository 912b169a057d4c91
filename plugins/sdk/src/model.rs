//! Rows and helpers over the WIT records: plain Rust with no dependency but the record types
//! named by the parent module (`super::{Claim, Decision, ...}`), so that the host's benchmark
//! can compile this file natively against its own copies of the records.
//!
//! The claim comes as columns (one `Vec` per field, see `wit/scheduler@0.2.0`), which is what
//! makes it cheap to receive. A strategy may read the columns directly
//! (`claim.pending.cpu[i]`), or one run, worker or GPU at a time as a row
//! (`claim.pending.run(i)`, `claim.pending.iter()`).

use super::{Claim, Decision, Deferral, Gpus, PendingRuns, Workers};

/// One claimable run (a row of [`PendingRuns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRun {
    /// Scheduling priority (>= 0, higher first).
    pub priority: i64,
    /// CPU cores it needs (0: no requirement).
    pub cpu: u32,
    /// RAM it needs, in megabytes (0: no requirement).
    pub ram_mb: u64,
    /// VRAM it needs on one GPU, in megabytes (0: needs no GPU).
    pub vram_mb: u64,
    /// How long it has been waiting since it was created, in milliseconds.
    pub waited_ms: u64,
}

/// One active worker with its capacity left after the runs it holds (a row of [`Workers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    /// Total CPU cores.
    pub cpu_cores: u32,
    /// Total RAM in megabytes.
    pub ram_mb: u64,
    /// Free CPU cores (negative when over-committed).
    pub free_cpu: i64,
    /// Free RAM in megabytes (negative when over-committed).
    pub free_ram_mb: i64,
    /// Its GPUs are `claim.gpus` entries `gpu_start .. gpu_start + gpu_count`.
    pub gpu_start: u32,
    /// How many GPUs it has.
    pub gpu_count: u32,
    /// How many runs it holds (assigned or running).
    pub running: u32,
}

/// One GPU with its VRAM left after the runs already placed on it (a row of [`Gpus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    /// Device index on its worker.
    pub id: u32,
    /// Total VRAM in megabytes.
    pub vram_mb: u64,
    /// Free VRAM in megabytes (negative when over-committed).
    pub free_vram_mb: i64,
}

impl PendingRuns {
    /// How many runs.
    pub fn len(&self) -> usize {
        self.cpu.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_empty()
    }

    /// Run number `i` (panics if there is no such run, like indexing a slice).
    pub fn run(&self, i: usize) -> PendingRun {
        PendingRun {
            priority: self.priority[i],
            cpu: self.cpu[i],
            ram_mb: self.ram_mb[i],
            vram_mb: self.vram_mb[i],
            waited_ms: self.waited_ms[i],
        }
    }

    /// Run number `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<PendingRun> {
        (i < self.len()).then(|| self.run(i))
    }

    /// The first run, if any.
    pub fn first(&self) -> Option<PendingRun> {
        self.get(0)
    }

    /// Every run, best first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = PendingRun> + '_ {
        (0..self.len()).map(|i| self.run(i))
    }

    /// Whether every column has one entry per run.
    fn consistent(&self) -> bool {
        let n = self.len();
        [
            self.priority.len(),
            self.ram_mb.len(),
            self.vram_mb.len(),
            self.waited_ms.len(),
        ]
        .iter()
        .all(|&len| len == n)
    }
}

impl Workers {
    /// How many workers.
    pub fn len(&self) -> usize {
        self.free_cpu.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.free_cpu.is_empty()
    }

    /// Worker number `i` (panics if there is no such worker, like indexing a slice).
    pub fn worker(&self, i: usize) -> Worker {
        Worker {
            cpu_cores: self.cpu_cores[i],
            ram_mb: self.ram_mb[i],
            free_cpu: self.free_cpu[i],
            free_ram_mb: self.free_ram_mb[i],
            gpu_start: self.gpu_start[i],
            gpu_count: self.gpu_count[i],
            running: self.running[i],
        }
    }

    /// Worker number `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<Worker> {
        (i < self.len()).then(|| self.worker(i))
    }

    /// Every worker.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Worker> + '_ {
        (0..self.len()).map(|i| self.worker(i))
    }

    fn consistent(&self) -> bool {
        let n = self.len();
        [
            self.cpu_cores.len(),
            self.ram_mb.len(),
            self.free_ram_mb.len(),
            self.gpu_start.len(),
            self.gpu_count.len(),
            self.running.len(),
        ]
        .iter()
        .all(|&len| len == n)
    }
}

impl Gpus {
    /// How many GPUs.
    pub fn len(&self) -> usize {
        self.free_vram_mb.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.free_vram_mb.is_empty()
    }

    /// GPU number `i` (panics if there is no such GPU, like indexing a slice).
    pub fn gpu(&self, i: usize) -> Gpu {
        Gpu {
            id: self.id[i],
            vram_mb: self.vram_mb[i],
            free_vram_mb: self.free_vram_mb[i],
        }
    }

    /// Every GPU.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Gpu> + '_ {
        (0..self.len()).map(|i| self.gpu(i))
    }

    fn consistent(&self) -> bool {
        self.id.len() == self.len() && self.vram_mb.len() == self.len()
    }
}

impl Default for Decision {
    fn default() -> Self {
        Self {
            assign: Vec::new(),
            deferred: Vec::new(),
        }
    }
}

impl Decision {
    /// Records why pending run `run` waits.
    pub fn defer(&mut self, run: usize, reason: impl Into<String>) {
        self.deferred.push(Deferral {
            run: run as u32,
            reason: reason.into(),
        });
    }
}

impl Claim {
    /// The worker asking for work.
    pub fn requester(&self) -> Worker {
        self.workers.worker(self.requester as usize)
    }

    /// Where `worker`'s GPUs are in `self.gpus` (empty when the claim names none).
    pub fn gpu_range(&self, worker: &Worker) -> std::ops::Range<usize> {
        let start = (worker.gpu_start as usize).min(self.gpus.len());
        start..(start + worker.gpu_count as usize).min(self.gpus.len())
    }

    /// The GPUs of `worker`.
    pub fn gpus_of(&self, worker: &Worker) -> impl ExactSizeIterator<Item = Gpu> + '_ {
        self.gpu_range(worker).map(|i| self.gpus.gpu(i))
    }

    /// The free capacity of worker number `index`.
    pub fn capacity(&self, index: usize) -> Capacity {
        let worker = self.workers.worker(index);
        Capacity {
            cpu: worker.free_cpu,
            ram_mb: worker.free_ram_mb,
            gpus: self.gpus.free_vram_mb[self.gpu_range(&worker)].to_vec(),
        }
    }

    /// The free capacity of the requester.
    pub fn requester_capacity(&self) -> Capacity {
        self.capacity(self.requester as usize)
    }

    /// Why the claim cannot be decided: columns of different lengths, or no requester. The
    /// host never sends such a claim; the SDK checks before a strategy sees it.
    pub fn malformed(&self) -> Option<&'static str> {
        if !(self.pending.consistent() && self.workers.consistent() && self.gpus.consistent()) {
            return Some("the claim's columns have different lengths");
        }
        if self.requester as usize >= self.workers.len() {
            return Some("the claim's requester is not one of its workers");
        }
        None
    }
}

/// Free capacity of one worker, for strategies that simulate placements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Free CPU cores.
    pub cpu: i64,
    /// Free RAM in megabytes.
    pub ram_mb: i64,
    /// Free VRAM of each GPU, in the worker's GPU order.
    pub gpus: Vec<i64>,
}

/// Where a run fits: no GPU needed, or the index (in the worker's GPU order) of a GPU.
pub type Placement = Option<usize>;

impl Capacity {
    /// Whether `run` fits; `Some(Some(i))` names the tightest GPU with enough VRAM,
    /// `Some(None)` means the run fits and needs no GPU.
    pub fn fit(&self, run: &PendingRun) -> Option<Placement> {
        if i64::from(run.cpu) > self.cpu || run.ram_mb as i64 > self.ram_mb {
            return None;
        }
        if run.vram_mb == 0 {
            return Some(None);
        }
        let need = run.vram_mb as i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, &free) in self.gpus.iter().enumerate() {
            if free >= need && best.is_none_or(|(_, b)| free < b) {
                best = Some((i, free));
            }
        }
        best.map(|(i, _)| Some(i))
    }

    /// Subtracts `run` at `placement` (as returned by [`Capacity::fit`]).
    pub fn take(&mut self, run: &PendingRun, placement: Placement) {
        self.cpu -= i64::from(run.cpu);
        self.ram_mb -= run.ram_mb as i64;
        if let Some(gpu) = placement.and_then(|i| self.gpus.get_mut(i)) {
            *gpu -= run.vram_mb as i64;
        }
    }

    /// The largest free VRAM on one GPU (0 without GPUs).
    pub fn largest_free_vram(&self) -> i64 {
        self.gpus.iter().copied().max().unwrap_or(0)
    }
}

/// Why a run does not fit: the wording users see as a run's `scheduling.reason`.
pub mod reason {
    use super::{Capacity, PendingRun};

    /// The first requirement of `run` that `free` cannot meet, as a sentence, e.g.
    /// "needs 16384 MB VRAM; largest free GPU has 8192 MB"; `None` when the run fits.
    pub fn does_not_fit(run: &PendingRun, free: &Capacity) -> Option<String> {
        if i64::from(run.cpu) > free.cpu {
            return Some(format!(
                "needs {} CPU cores; {} free",
                run.cpu,
                free.cpu.max(0)
            ));
        }
        if run.ram_mb as i64 > free.ram_mb {
            return Some(format!(
                "needs {} MB RAM; {} MB free",
                run.ram_mb,
                free.ram_mb.max(0)
            ));
        }
        if run.vram_mb > 0 && free.fit(run).is_none() {
            if free.gpus.is_empty() {
                return Some(format!("needs {} MB VRAM; no GPU", run.vram_mb));
            }
            return Some(format!(
                "needs {} MB VRAM; largest free GPU has {} MB",
                run.vram_mb,
                free.largest_free_vram().max(0)
            ));
        }
        None
    }
}
