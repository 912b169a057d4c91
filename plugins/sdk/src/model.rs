//! Helpers over the WIT records: plain Rust with no dependency but the record types named
//! by the parent module (`super::{Claim, Decision, ...}`), so that the host's benchmark can
//! compile this file natively against its own copies of the records.

use super::{Claim, Decision, Deferral, Gpu, PendingRun, Worker};

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
    pub fn requester(&self) -> &Worker {
        &self.workers[self.requester as usize]
    }

    /// The GPUs of `worker`.
    pub fn gpus_of(&self, worker: &Worker) -> &[Gpu] {
        let start = worker.gpu_start as usize;
        let end = start + worker.gpu_count as usize;
        self.gpus.get(start..end).unwrap_or(&[])
    }

    /// The free capacity of worker number `index`.
    pub fn capacity(&self, index: usize) -> Capacity {
        let worker = &self.workers[index];
        Capacity {
            cpu: worker.free_cpu,
            ram_mb: worker.free_ram_mb,
            gpus: self
                .gpus_of(worker)
                .iter()
                .map(|g| g.free_vram_mb)
                .collect(),
        }
    }

    /// The free capacity of the requester.
    pub fn requester_capacity(&self) -> Capacity {
        self.capacity(self.requester as usize)
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
