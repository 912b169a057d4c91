//! Long-polling claims: `POST /workers/{id}/claim?wait_ms=N`.
//!
//! A claim that finds nothing for its worker may wait up to N ms for something to claim
//! instead of answering empty at once, so that a worker is handed a run within milliseconds
//! of its submission and an idle cluster sends no stream of empty claims.
//!
//! A waiting claim holds a slot in [`Waiters`] (registration order: the longest-waiting claim
//! is woken first), with what its last attempt saw of its worker: free capacity, tags and
//! GPUs. It claims again when woken, when [`Service::claim_recheck`] passes (changes made by
//! other replicas on the same database are only seen by looking, so they are seen within that
//! bound), or at its deadline, when it answers empty. What wakes it, in this process:
//! - a run that became claimable (created, requeued) wakes **one** waiting claim whose worker
//!   fits it (free CPU, RAM and VRAM, required tags), not all of them: no thundering herd;
//! - capacity freed on a worker (a run of it ended or was requeued) wakes that worker's
//!   claims;
//! - the server stopping wakes every claim, which answers what it has.
//!
//! A slot is released when its claim answers or its request is dropped (the client went
//! away), and `gyoza_claims_waiting` in `/metrics` counts the claims waiting (those whose
//! first attempt found nothing). At most
//! [`MAX_WAITING`] claims wait at once per process; one beyond that answers at once, as a
//! plain claim. The wake-up is a hint, never a promise: the claim itself goes through the
//! scheduler and the store's atomic assignment as any other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gyoza_core::placement::tag_fit;
use gyoza_core::resources::Gpu;
use gyoza_core::sync::lock;
use gyoza_core::{Capacity, Constraints, HeldRun, OpRun, OpRunState, Worker, WorkerOpRun};
use tokio::sync::Notify;

use super::Service;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// The most claims that wait at once in one process.
pub const MAX_WAITING: usize = 10_000;

/// The default of [`Service::claim_recheck`] (`GYOZA_CLAIM_RECHECK_MS`).
pub const DEFAULT_CLAIM_RECHECK: Duration = Duration::from_secs(1);

/// What a claim saw of its worker: what a run must fit to be worth waking it for.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    /// Its free capacity after the claim.
    pub free: Capacity,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its GPUs, with their tags.
    pub gpus: Vec<Gpu>,
}

impl Seen {
    /// `worker` holding `held`.
    pub(super) fn of(worker: &Worker, held: &[HeldRun]) -> Self {
        Self {
            free: Capacity::free(&worker.resources, held),
            tags: worker.tags.clone(),
            gpus: worker.resources.gpus.clone(),
        }
    }

    /// Whether a run with `constraints` may be claimable by this worker.
    fn fits(&self, constraints: &Constraints) -> bool {
        let needs_gpu = constraints.vram_mb.is_some_and(|v| v > 0);
        self.free.fit(constraints).is_some()
            && tag_fit(&constraints.tags, &self.tags, &self.gpus, needs_gpu).is_ok()
    }
}

struct Entry {
    key: u64,
    worker_id: String,
    /// `None` until its first attempt answered: any run may fit.
    seen: Option<Seen>,
    /// Woken and not yet claimed again: a second run wakes another claim.
    woken: bool,
    wake: Arc<Notify>,
}

/// The claims waiting in this process (see the module docs).
pub(super) struct Waiters {
    entries: Mutex<Vec<Entry>>,
    next_key: AtomicU64,
    closing: AtomicBool,
    metrics: Arc<Metrics>,
}

/// A waiting claim's slot; released when dropped.
pub(super) struct Slot<'a> {
    waiters: &'a Waiters,
    key: u64,
    wake: Arc<Notify>,
}

impl Waiters {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            next_key: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            metrics,
        }
    }

    /// A slot for a claim by `worker_id`, or `None` when [`MAX_WAITING`] claims wait already
    /// or the server is stopping.
    fn enter(&self, worker_id: &str) -> Option<Slot<'_>> {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_WAITING || self.closing.load(Ordering::Acquire) {
            return None;
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        entries.push(Entry {
            key,
            worker_id: worker_id.to_owned(),
            seen: None,
            woken: false,
            wake: wake.clone(),
        });
        Some(Slot {
            waiters: self,
            key,
            wake,
        })
    }

    /// Wakes the longest-waiting claim, not woken yet, whose worker may fit `constraints`.
    fn run_claimable(&self, constraints: &Constraints) {
        let mut entries = lock(&self.entries);
        let fitting = entries
            .iter_mut()
            .find(|e| !e.woken && e.seen.as_ref().is_none_or(|seen| seen.fits(constraints)));
        if let Some(entry) = fitting {
            entry.woken = true;
            entry.wake.notify_one();
            self.metrics.claim_wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wakes the claims of `worker_id`: capacity was freed there.
    fn capacity_freed(&self, worker_id: &str) {
        let mut entries = lock(&self.entries);
        for entry in entries.iter_mut().filter(|e| e.worker_id == worker_id) {
            entry.woken = true;
            entry.wake.notify_one();
            self.metrics.claim_wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wakes every claim and lets no new one wait: the server is stopping.
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        for entry in lock(&self.entries).iter() {
            entry.wake.notify_one();
        }
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

impl Slot<'_> {
    /// Notes what the claim's last attempt saw; it is no longer woken.
    fn saw(&self, seen: Seen) {
        let mut entries = lock(&self.waiters.entries);
        if let Some(entry) = entries.iter_mut().find(|e| e.key == self.key) {
            if entry.seen.is_none() {
                // Waiting from now on (counted once its first claim found nothing).
                self.waiters
                    .metrics
                    .claims_waiting
                    .fetch_add(1, Ordering::Relaxed);
            }
            entry.seen = Some(seen);
            entry.woken = false;
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut entries = lock(&self.waiters.entries);
        if let Some(at) = entries.iter().position(|e| e.key == self.key) {
            // `remove`, not `swap_remove`: the others keep their order.
            if entries.remove(at).seen.is_some() {
                self.waiters
                    .metrics
                    .claims_waiting
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Service {
    /// [`Service::claim`], waiting up to `wait` for something to claim when there is nothing
    /// now (see the module docs). An empty answer means nothing came within `wait`, or the
    /// server is stopping.
    pub async fn claim_waiting(
        &self,
        worker_id: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<WorkerOpRun>, StoreError> {
        let slot = match wait.is_zero() {
            true => None,
            false => self.waiters.enter(worker_id),
        };
        let Some(slot) = slot else {
            return self.claim(worker_id, max).await;
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // The slot is held before the claim reads: a run created meanwhile wakes it.
            let (ops, seen) = self.claim_seeing(worker_id, max).await?;
            let Some(seen) = seen.filter(|_| ops.is_empty()) else {
                // Runs claimed, or a worker that never sent a heartbeat: answered now.
                return Ok(ops);
            };
            slot.saw(seen);
            let now = tokio::time::Instant::now();
            if now >= deadline || self.waiters.closing() {
                return Ok(ops);
            }
            let recheck = deadline.min(now + self.claim_recheck);
            tokio::select! {
                () = slot.wake.notified() => {}
                () = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// Wakes the waiting claims `run`'s change (or creation) concerns: one that may claim it if
    /// it is PENDING now, and those of the worker whose capacity it freed.
    pub(super) fn wake_claims(&self, run: &OpRun) {
        if run.state == OpRunState::Pending {
            self.pending_generation.bump();
            self.waiters.run_claimable(&run.constraints);
        }
        if let Some(worker_id) = freed_worker(run) {
            self.waiters.capacity_freed(worker_id);
        }
    }
}

/// The worker whose capacity a change that left `run` as it is freed: its current attempt's
/// when it ended, its previous attempt's when it was requeued.
fn freed_worker(run: &OpRun) -> Option<&str> {
    let previous = match run.state {
        OpRunState::Completed | OpRunState::Failed | OpRunState::Cancelled => run.attempts.last(),
        OpRunState::Pending => run.attempts.iter().rev().nth(1),
        OpRunState::Assigned | OpRunState::Running => None,
    };
    previous.and_then(|attempt| attempt.execution_summary.worker_id.as_deref())
}
