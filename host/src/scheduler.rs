//! The scheduling seam: what a strategy decides a claim from, and what it answers.
//!
//! A [`Scheduler`] (the wasm strategy host in a server) is shown a [`ClaimRequest`] and
//! answers with a raw [`Decision`]: indices into the request's pending window, best first.
//! The answer is not trusted here: the claim ([`crate::service`]) checks it with
//! [`gyoza_core::placement::place`], the one check of a decision, and reports what it dropped
//! back with [`Scheduler::record_dropped`].

use gyoza_core::placement::{
    EvictionRequest, EvictionRules, Evictions, Placements, check_evictions,
};
use gyoza_core::time::Timestamp;
use gyoza_core::{Capacity, HeldRun, PendingRun, Resources, Worker};

use crate::queues::QueueSettings;

/// What a scheduler decides from.
#[derive(Debug)]
pub struct ClaimRequest<'a> {
    /// The worker asking for work.
    pub worker: &'a Worker,
    /// Its free capacity, after the runs it already holds.
    pub free: Capacity,
    /// Claimable runs, highest priority first and oldest first within a priority.
    pub pending: &'a [PendingRun],
    /// At most this many runs should be chosen.
    pub max: usize,
    /// When the claim was made.
    pub now: Timestamp,
    /// Every active worker (the requester included) with its free capacity, for strategies
    /// that place runs across the cluster.
    pub cluster: &'a [ActiveWorker],
    /// Every run the active workers hold, for strategies that preempt or balance queues.
    pub running: &'a [HeldRun],
    /// The queues' weights and quotas, from the server's configuration.
    pub queues: &'a QueueSettings,
    /// Per queue, the usage of its ended attempts over the decaying window (CPU-core-,
    /// RAM-megabyte- and VRAM-megabyte-seconds, decayed to `now`), as the store keeps it.
    pub usage: &'a [(String, [f64; 3])],
    /// A run preempted this often may not be preempted again.
    pub max_preemptions: u32,
    /// The most preemptions the claim carries out (per-claim and per-minute caps).
    pub max_evictions: usize,
}

/// An active worker as a strategy sees it.
#[derive(Debug, Clone)]
pub struct ActiveWorker {
    /// Worker id.
    pub id: String,
    /// Its hardware.
    pub resources: Resources,
    /// Its free capacity after the runs it holds.
    pub free: Capacity,
    /// How many runs it holds (ASSIGNED or RUNNING).
    pub running: usize,
    /// Its capability tags.
    pub tags: Vec<String>,
}

/// Why a strategy left a run pending, kept for `GET /runs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNote {
    /// The strategy that decided.
    pub strategy: String,
    /// Its reason, e.g. "needs 16384 MB VRAM; largest free GPU has 8192 MB".
    pub reason: String,
    /// When it decided.
    pub at: Timestamp,
}

/// A strategy's raw answer: indices into `ClaimRequest::pending`, best first, unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The runs the requester should take, best first (may name unknown, repeated or
    /// unfitting runs: the claim drops those).
    pub chosen: Vec<usize>,
    /// (index, reason) for runs the strategy left pending and explained.
    pub reasons: Vec<(usize, String)>,
    /// Every run the strategy deferred, explained or not (sorted, each once).
    pub deferred: Vec<usize>,
    /// The strategy that decided (for messages), if the scheduler names one.
    pub strategy: Option<String>,
    /// Held runs to preempt (indices into `ClaimRequest::running` and `pending`), unchecked:
    /// the claim checks them with [`gyoza_core::placement::check_evictions`].
    pub evictions: Vec<EvictionRequest>,
}

impl Decision {
    /// The preemptions of this decision on `request` that the host's `rules` allow
    /// ([`check_evictions`]): for a run the decision chose or deferred.
    pub fn checked_evictions(&self, request: &ClaimRequest<'_>, rules: EvictionRules) -> Evictions {
        let decided =
            |i: usize| self.chosen.contains(&i) || self.deferred.binary_search(&i).is_ok();
        check_evictions(
            &request.worker.id,
            request.running,
            request.pending,
            &self.evictions,
            decided,
            rules,
        )
    }
}

/// A scheduling policy: decides which pending runs a claiming worker should take.
///
/// Async because a strategy is a wasm call that may run up to its deadline: implementations
/// run it on the blocking pool rather than on the server's async threads.
#[async_trait::async_trait]
pub trait Scheduler: Send + Sync + 'static {
    /// Name shown in logs.
    fn name(&self) -> &str;
    /// The runs the worker should take, in order of preference (unchecked).
    async fn decide(&self, request: &ClaimRequest<'_>) -> Decision;
    /// Why the run `run_id` was last left pending, if the scheduler said.
    fn pending_note(&self, _run_id: &str) -> Option<PendingNote> {
        None
    }
    /// What the claim's check dropped of this scheduler's last decision (for its stats).
    fn record_dropped(&self, _strategy: &str, _placements: &Placements) {}
    /// How many preemptions of this scheduler's last decision the claim carried out and how
    /// many it refused (for its stats).
    fn record_evictions(&self, _strategy: &str, _carried_out: usize, _refused: usize) {}
    /// Records `reason` as why the host itself (not a strategy) left `run_id` pending, e.g.
    /// a required tag no active worker has.
    fn note_pending(&self, _run_id: &str, _reason: String, _at: Timestamp) {}
}
