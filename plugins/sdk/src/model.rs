//! Rows and helpers over the WIT records: plain Rust with no dependency but the record types
//! named by the parent module (`super::{Claim, Decision, ...}`), so that the host's benchmark
//! can compile this file natively against its own copies of the records.
//!
//! The claim comes as columns (one `Vec` per field, see `wit/scheduler@1.0.0`), which is what
//! makes it cheap to receive. A strategy may read the columns directly
//! (`claim.pending.cpu[i]`), or one run, worker, GPU or queue at a time as a row
//! (`claim.pending.run(i)`, `claim.pending.iter()`). Strings (queues, images, tags, labels)
//! are indices into `claim.strings`: [`Claim::string`] and the helpers on [`Claim`] resolve
//! them.

use super::{
    Claim, Decision, Deferral, Eviction, Gpus, Labels, PendingRuns, Queues, RunningRuns, WaitCode,
    Workers,
};

/// `running-runs.gpu` of a run that holds no GPU.
pub const NO_GPU: u32 = u32::MAX;

/// A queue quota (`queues.quota-*`) that is not configured. Being the largest `u64`, it
/// needs no special case in `used + need <= quota` (with `saturating_add`).
pub const NO_QUOTA: u64 = u64::MAX;

/// One claimable run (a row of [`PendingRuns`]). Its tags and labels are
/// [`Claim::run_tags`] and [`Claim::run_labels`].
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
    /// Its queue (index into `claim.strings`).
    pub queue: u32,
    /// The definition it was created from (index into `claim.strings`; 0, "", for none).
    pub definition: u32,
    /// Its Docker image (index into `claim.strings`).
    pub image: u32,
    /// The attempt that would run (1 for a run never tried).
    pub attempt: u32,
    /// Whether it may be preempted once running.
    pub preemptible: bool,
}

/// One active worker with its capacity left after the runs it holds (a row of [`Workers`]).
/// Its tags are [`Claim::worker_tags`].
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

/// One GPU with its VRAM left after the runs already placed on it (a row of [`Gpus`]). Its
/// tags are [`Claim::gpu_tags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    /// Device index on its worker.
    pub id: u32,
    /// Total VRAM in megabytes.
    pub vram_mb: u64,
    /// Free VRAM in megabytes (negative when over-committed).
    pub free_vram_mb: i64,
}

/// One run an active worker holds, assigned or running (a row of [`RunningRuns`]). Its
/// labels are [`Claim::running_labels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningRun {
    /// The worker holding it (index into `claim.workers`).
    pub worker: u32,
    /// The GPU it holds VRAM on (index into `claim.gpus`), or [`NO_GPU`].
    pub gpu: u32,
    /// Scheduling priority.
    pub priority: i64,
    /// CPU cores it holds.
    pub cpu: u32,
    /// RAM it holds, in megabytes.
    pub ram_mb: u64,
    /// VRAM it holds, in megabytes.
    pub vram_mb: u64,
    /// How long since its attempt was assigned, in milliseconds.
    pub ran_ms: u64,
    /// Its queue (index into `claim.strings`).
    pub queue: u32,
    /// Its definition (index into `claim.strings`; 0 for none).
    pub definition: u32,
    /// Its image (index into `claim.strings`).
    pub image: u32,
    /// Whether the host would let a strategy preempt it (preemptible, and not yet preempted
    /// as often as the server allows).
    pub preemptible: bool,
}

impl RunningRun {
    /// The GPU it holds VRAM on, as an index into `claim.gpus`; `None` for [`NO_GPU`].
    pub fn gpu_index(&self) -> Option<usize> {
        (self.gpu != NO_GPU).then_some(self.gpu as usize)
    }
}

/// One queue with its configuration and usage (a row of [`Queues`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Queue {
    /// Its name (index into `claim.strings`; [`Claim::queue_name`] resolves it).
    pub name: u32,
    /// Its weight in the server's configuration (1 when not configured).
    pub weight: u32,
    /// CPU quota in cores, or [`NO_QUOTA`].
    pub quota_cpu: u64,
    /// RAM quota in megabytes, or [`NO_QUOTA`].
    pub quota_ram_mb: u64,
    /// VRAM quota in megabytes, or [`NO_QUOTA`].
    pub quota_vram_mb: u64,
    /// Quota of runs held at once, or [`NO_QUOTA`].
    pub quota_runs: u64,
    /// Runs of the queue that active workers hold.
    pub running: u32,
    /// CPU cores those hold.
    pub cpu: u64,
    /// RAM they hold, in megabytes.
    pub ram_mb: u64,
    /// VRAM they hold, in megabytes.
    pub vram_mb: u64,
    /// Runs of the queue in `claim.pending`.
    pub pending: u32,
    /// Decayed CPU-core-seconds (see `claim.usage_half_life_s`).
    pub cpu_seconds: f64,
    /// Decayed RAM-megabyte-seconds.
    pub ram_mb_seconds: f64,
    /// Decayed VRAM-megabyte-seconds.
    pub vram_mb_seconds: f64,
}

/// Whether every length in `lengths` is `n`.
fn all_are(n: usize, lengths: &[usize]) -> bool {
    lengths.iter().all(|&len| len == n)
}

/// Entries `start .. start + count` of a list of `len` entries, cut to the list (so that a
/// bad range reads as fewer entries, never as a panic).
fn span(start: u32, count: u32, len: usize) -> std::ops::Range<usize> {
    let start = (start as usize).min(len);
    start..start.saturating_add(count as usize).min(len)
}

/// Whether entries `start .. start + count` all exist in a list of `len` entries.
fn within(start: u32, count: u32, len: usize) -> bool {
    u64::from(start) + u64::from(count) <= len as u64
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
            queue: self.queue[i],
            definition: self.definition[i],
            image: self.image[i],
            attempt: self.attempt[i],
            preemptible: self.preemptible[i],
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
        all_are(
            self.len(),
            &[
                self.priority.len(),
                self.ram_mb.len(),
                self.vram_mb.len(),
                self.waited_ms.len(),
                self.queue.len(),
                self.definition.len(),
                self.image.len(),
                self.attempt.len(),
                self.preemptible.len(),
                self.tag_start.len(),
                self.tag_count.len(),
                self.label_start.len(),
                self.label_count.len(),
            ],
        )
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
        all_are(
            self.len(),
            &[
                self.cpu_cores.len(),
                self.ram_mb.len(),
                self.free_ram_mb.len(),
                self.gpu_start.len(),
                self.gpu_count.len(),
                self.running.len(),
                self.tag_start.len(),
                self.tag_count.len(),
            ],
        )
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

    /// GPU number `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<Gpu> {
        (i < self.len()).then(|| self.gpu(i))
    }

    /// Every GPU.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Gpu> + '_ {
        (0..self.len()).map(|i| self.gpu(i))
    }

    fn consistent(&self) -> bool {
        all_are(
            self.len(),
            &[
                self.id.len(),
                self.vram_mb.len(),
                self.tag_start.len(),
                self.tag_count.len(),
            ],
        )
    }
}

impl RunningRuns {
    /// How many runs active workers hold.
    pub fn len(&self) -> usize {
        self.worker.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.worker.is_empty()
    }

    /// Running run number `i` (panics if there is no such run, like indexing a slice).
    pub fn run(&self, i: usize) -> RunningRun {
        RunningRun {
            worker: self.worker[i],
            gpu: self.gpu[i],
            priority: self.priority[i],
            cpu: self.cpu[i],
            ram_mb: self.ram_mb[i],
            vram_mb: self.vram_mb[i],
            ran_ms: self.ran_ms[i],
            queue: self.queue[i],
            definition: self.definition[i],
            image: self.image[i],
            preemptible: self.preemptible[i],
        }
    }

    /// Running run number `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<RunningRun> {
        (i < self.len()).then(|| self.run(i))
    }

    /// Every running run.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RunningRun> + '_ {
        (0..self.len()).map(|i| self.run(i))
    }

    fn consistent(&self) -> bool {
        all_are(
            self.len(),
            &[
                self.gpu.len(),
                self.priority.len(),
                self.cpu.len(),
                self.ram_mb.len(),
                self.vram_mb.len(),
                self.ran_ms.len(),
                self.queue.len(),
                self.definition.len(),
                self.image.len(),
                self.preemptible.len(),
                self.label_start.len(),
                self.label_count.len(),
            ],
        )
    }
}

impl Labels {
    /// How many labels (of all runs together).
    pub fn len(&self) -> usize {
        self.key.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }
}

impl Queues {
    /// How many queues.
    pub fn len(&self) -> usize {
        self.name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.name.is_empty()
    }

    /// Queue number `i` (panics if there is no such queue, like indexing a slice).
    pub fn queue(&self, i: usize) -> Queue {
        Queue {
            name: self.name[i],
            weight: self.weight[i],
            quota_cpu: self.quota_cpu[i],
            quota_ram_mb: self.quota_ram_mb[i],
            quota_vram_mb: self.quota_vram_mb[i],
            quota_runs: self.quota_runs[i],
            running: self.running[i],
            cpu: self.cpu[i],
            ram_mb: self.ram_mb[i],
            vram_mb: self.vram_mb[i],
            pending: self.pending[i],
            cpu_seconds: self.cpu_seconds[i],
            ram_mb_seconds: self.ram_mb_seconds[i],
            vram_mb_seconds: self.vram_mb_seconds[i],
        }
    }

    /// Queue number `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<Queue> {
        (i < self.len()).then(|| self.queue(i))
    }

    /// Every queue.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Queue> + '_ {
        (0..self.len()).map(|i| self.queue(i))
    }

    fn consistent(&self) -> bool {
        all_are(
            self.len(),
            &[
                self.weight.len(),
                self.quota_cpu.len(),
                self.quota_ram_mb.len(),
                self.quota_vram_mb.len(),
                self.quota_runs.len(),
                self.running.len(),
                self.cpu.len(),
                self.ram_mb.len(),
                self.vram_mb.len(),
                self.pending.len(),
                self.cpu_seconds.len(),
                self.ram_mb_seconds.len(),
                self.vram_mb_seconds.len(),
            ],
        )
    }
}

// The record is generated (by wit-bindgen, or by hand in the host's benchmark), so it cannot
// derive `Default` where it is defined.
#[allow(clippy::derivable_impls)]
impl Default for Decision {
    fn default() -> Self {
        Self {
            assign: Vec::new(),
            deferred: Vec::new(),
            evict: Vec::new(),
        }
    }
}

impl Decision {
    /// Records why pending run `run` waits, with the code [`WaitCode::Other`] ("the reason
    /// says"); [`Decision::wait`] gives a more precise code.
    pub fn defer(&mut self, run: usize, reason: impl Into<String>) {
        self.wait(run, WaitCode::Other, reason);
    }

    /// Records why pending run `run` waits, with its code (e.g. [`WaitCode::Capacity`] for a
    /// run that does not fit).
    pub fn wait(&mut self, run: usize, code: WaitCode, reason: impl Into<String>) {
        self.deferred.push(Deferral {
            run: run as u32,
            code,
            reason: reason.into(),
        });
    }

    /// Asks the host to preempt running run `running` (an index into `claim.running`) to
    /// make room for pending run `for_run`, which must be in `assign` or `deferred`. The
    /// host refuses an eviction unless the run is held by the requester and preemptible and
    /// `for_run` has a higher priority, and caps how many it carries out.
    pub fn evict(&mut self, running: usize, for_run: usize, reason: impl Into<String>) {
        self.evict.push(Eviction {
            run: running as u32,
            for_run: for_run as u32,
            reason: reason.into(),
        });
    }
}

impl Claim {
    /// String number `i` of the claim's table; "" when there is no such entry.
    pub fn string(&self, i: u32) -> &str {
        self.strings.get(i as usize).map_or("", String::as_str)
    }

    /// The strings that `claim.tags` entries `start .. start + count` name.
    fn tag_span(&self, start: u32, count: u32) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.tags[span(start, count, self.tags.len())]
            .iter()
            .map(|&tag| self.string(tag))
    }

    /// The (key, value) pairs of `claim.labels` entries `start .. start + count`.
    fn label_span(
        &self,
        start: u32,
        count: u32,
    ) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        // `key` and `value` may differ in length only in a malformed claim.
        let range = span(
            start,
            count,
            self.labels.key.len().min(self.labels.value.len()),
        );
        range.map(|i| {
            (
                self.string(self.labels.key[i]),
                self.string(self.labels.value[i]),
            )
        })
    }

    /// The worker tags pending run `i` requires (panics if there is no such run).
    pub fn run_tags(&self, i: usize) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.tag_span(self.pending.tag_start[i], self.pending.tag_count[i])
    }

    /// The tags of worker `i` (panics if there is no such worker).
    pub fn worker_tags(&self, i: usize) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.tag_span(self.workers.tag_start[i], self.workers.tag_count[i])
    }

    /// The tags of GPU `i` (an index into `claim.gpus`; panics if there is no such GPU).
    pub fn gpu_tags(&self, i: usize) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.tag_span(self.gpus.tag_start[i], self.gpus.tag_count[i])
    }

    /// The labels of pending run `i`, as (key, value) pairs (panics if there is no such run).
    pub fn run_labels(&self, i: usize) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.label_span(self.pending.label_start[i], self.pending.label_count[i])
    }

    /// The value of label `key` of pending run `i`, if it has one.
    pub fn run_label(&self, i: usize, key: &str) -> Option<&str> {
        self.run_labels(i).find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// The labels of running run `i`, as (key, value) pairs (panics if there is no such run).
    pub fn running_labels(&self, i: usize) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.label_span(self.running.label_start[i], self.running.label_count[i])
    }

    /// The value of label `key` of running run `i`, if it has one.
    pub fn running_label(&self, i: usize, key: &str) -> Option<&str> {
        self.running_labels(i)
            .find(|&(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The name of queue `i` (an index into `claim.queues`; panics if there is none).
    pub fn queue_name(&self, i: usize) -> &str {
        self.string(self.queues.name[i])
    }

    /// The index in `claim.queues` of the queue named `name`, if the claim has it (every
    /// queue of a pending or running run is there).
    pub fn queue_index(&self, name: &str) -> Option<usize> {
        (0..self.queues.len()).find(|&i| self.queue_name(i) == name)
    }

    /// The indices in `claim.running` of the runs worker `worker` holds.
    pub fn running_on(&self, worker: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.running.len()).filter(move |&i| self.running.worker[i] as usize == worker)
    }

    /// The worker asking for work.
    pub fn requester(&self) -> Worker {
        self.workers.worker(self.requester as usize)
    }

    /// Where `worker`'s GPUs are in `self.gpus` (empty when the claim names none).
    pub fn gpu_range(&self, worker: &Worker) -> std::ops::Range<usize> {
        span(worker.gpu_start, worker.gpu_count, self.gpus.len())
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

    /// Adds what running run `running` holds back to `capacity`, which must be the capacity
    /// of the worker holding it (from [`Claim::capacity`]): what evicting it would free.
    pub fn free_up(&self, capacity: &mut Capacity, running: usize) {
        let run = self.running.run(running);
        capacity.cpu += i64::from(run.cpu);
        capacity.ram_mb += run.ram_mb as i64;
        let gpus = match self.workers.get(run.worker as usize) {
            Some(worker) => self.gpu_range(&worker),
            None => 0..0,
        };
        if let Some(gpu) = run.gpu_index().filter(|gpu| gpus.contains(gpu))
            && let Some(free) = capacity.gpus.get_mut(gpu - gpus.start)
        {
            *free += run.vram_mb as i64;
        }
    }

    /// The fewest of `candidates` (indices into `claim.running`, held by the requester,
    /// in the order they should be evicted) whose eviction makes `run` fit `free` (the
    /// requester's capacity), or `None` if evicting all of them is not enough or would take
    /// more than the host carries out for this claim (`claim.max_evictions`). Candidates are
    /// taken in order until the run fits; then each but the last (which was needed) is
    /// spared if the run still fits without it, from the last taken back, so that no run is
    /// evicted for nothing. Which runs may be candidates (preemptible, of a lower priority
    /// than `run`: the host's rules) is the caller's choice.
    pub fn fewest_to_evict(
        &self,
        free: &Capacity,
        run: &PendingRun,
        candidates: &[usize],
    ) -> Option<Vec<usize>> {
        let fits_evicting = |victims: &[usize]| {
            let mut room = free.clone();
            for &victim in victims {
                self.free_up(&mut room, victim);
            }
            room.fit(run).is_some()
        };
        let needed = (1..=candidates.len()).find(|&n| fits_evicting(&candidates[..n]))?;
        let mut chosen = candidates[..needed].to_vec();
        for k in (0..needed - 1).rev() {
            let spared: Vec<usize> = [&chosen[..k], &chosen[k + 1..]].concat();
            if fits_evicting(&spared) {
                chosen = spared;
            }
        }
        (chosen.len() <= self.max_evictions as usize).then_some(chosen)
    }

    /// Why the claim cannot be decided: columns of different lengths, no requester, or an
    /// index or range that leaves its list. The host never sends such a claim; the SDK
    /// checks before a strategy sees it, so that the helpers above never read past a list.
    pub fn malformed(&self) -> Option<&'static str> {
        let labels_consistent = self.labels.key.len() == self.labels.value.len();
        if !(self.pending.consistent()
            && self.workers.consistent()
            && self.gpus.consistent()
            && self.running.consistent()
            && labels_consistent
            && self.queues.consistent())
        {
            return Some("the claim's columns have different lengths");
        }
        if self.requester as usize >= self.workers.len() {
            return Some("the claim's requester is not one of its workers");
        }
        if self.strings.first().is_none_or(|first| !first.is_empty()) {
            return Some("the claim's string table does not start with the empty string");
        }
        let strings = self.strings.len();
        let is_string = |i: &u32| (*i as usize) < strings;
        let string_columns = [
            &self.tags,
            &self.labels.key,
            &self.labels.value,
            &self.pending.queue,
            &self.pending.definition,
            &self.pending.image,
            &self.running.queue,
            &self.running.definition,
            &self.running.image,
            &self.queues.name,
        ];
        if !string_columns
            .iter()
            .all(|column| column.iter().all(is_string))
        {
            return Some("a string index of the claim is out of range");
        }
        let (tags, labels) = (self.tags.len(), self.labels.len());
        let ranges_fit = |starts: &[u32], counts: &[u32], len: usize| {
            starts
                .iter()
                .zip(counts)
                .all(|(&start, &count)| within(start, count, len))
        };
        if !(ranges_fit(&self.pending.tag_start, &self.pending.tag_count, tags)
            && ranges_fit(&self.workers.tag_start, &self.workers.tag_count, tags)
            && ranges_fit(&self.gpus.tag_start, &self.gpus.tag_count, tags)
            && ranges_fit(&self.pending.label_start, &self.pending.label_count, labels)
            && ranges_fit(&self.running.label_start, &self.running.label_count, labels))
        {
            return Some("a tag or label range of the claim is out of range");
        }
        if !ranges_fit(
            &self.workers.gpu_start,
            &self.workers.gpu_count,
            self.gpus.len(),
        ) {
            return Some("a worker's GPU range is out of range");
        }
        for run in self.running.iter() {
            let Some(worker) = self.workers.get(run.worker as usize) else {
                return Some("a running run's worker is out of range");
            };
            if run
                .gpu_index()
                .is_some_and(|gpu| !self.gpu_range(&worker).contains(&gpu))
            {
                return Some("a running run's GPU is not one of its worker's");
            }
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
