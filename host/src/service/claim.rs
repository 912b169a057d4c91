//! Claims: which pending runs a worker gets, and which runs it preempts for them.
//!
//! The [`Scheduler`] decides; [`Service::claim`] checks its answer and makes it so. A
//! decision is never trusted: [`place`] drops unknown or duplicate choices and runs that do
//! not fit the worker's free capacity, and picks the GPU of each run it keeps. The placed runs
//! are then assigned by [`Store::assign_runs`](crate::store::Store::assign_runs), which moves
//! each PENDING → ASSIGNED only if it is still PENDING and still fits the worker's capacity
//! as the store holds it at write time, atomically with the assignment. So concurrent claims,
//! from this process or another server on the same database, never share a run and never
//! overcommit a worker (a retried claim, two processes with one id). The claimed op names the
//! GPU the run was placed on.
//!
//! # Hard requirements
//! A run's required tags (`constraints.tags`) are the host's to enforce: the window a
//! strategy sees holds only the runs the requester meets ([`tag_fit`]; a GPU run may meet
//! them on some of its GPUs, and is then placed on one of those). A run left out gets a
//! `scheduling.reason`: how many active workers meet its tags, or, when none does, the tag
//! that is missing. The window is read before
//! this filter: a requester that meets none of the first [`PENDING_WINDOW`] runs gets nothing
//! from this claim even if a run further back would suit it.
//!
//! # Preemption
//! A strategy may ask to preempt held runs (`evict`). [`check_evictions`] keeps only those
//! the rules allow: held by the requester, preemptible and not preempted
//! [`PreemptionLimits::max_preemptions`] times yet, for a pending run the decision assigned
//! or deferred and of a higher priority; at most [`PreemptionLimits::per_claim`] per claim and
//! [`PreemptionLimits::per_minute`] per minute in this process. Each is then carried out as a
//! compare-and-set on the run ([`gyoza_core::OpRun::preempt`]): its attempt FAILS with
//! "preempted by <run> (priority P) via <strategy>" and it is requeued outside its retry
//! budget; its worker sees the new attempt and stops the container. The capacity freed
//! counts for the assignments of the same claim. Refusals are counted per strategy.
//!
//! With [`PreemptionLimits::across_workers`] (`GYOZA_PREEMPT_ACROSS_WORKERS`), a strategy may
//! also preempt runs on another active worker, for a pending run it deferred (did not
//! assign to the requester) that fits there: all of that run's preemptions must be on that
//! one worker, which must meet the run's tags and have room for it once they are carried
//! out; else they are refused. The capacity freed is then kept for the run
//! ([`Reservations`], [`PreemptionLimits::reservation`], 30 s by default): until then only
//! that worker's claims are shown the run, and they place it first, whatever the strategy
//! chooses; no other worker's claim in this process is shown it. A reservation ends when
//! the worker takes the run or when it expires (`gyoza_reservations_total{outcome}`). It is
//! kept in this process's memory: with several replicas, a claim through another replica
//! does not see it (the run is then placed as any other run; the store's checks still hold).
//!
//! # What a claim costs
//! A claim reads its view (the worker, every held run, the pending window, every worker, the
//! queues' usage) in one read of the store, then asks the strategy. Profiled under
//! `gyoza-bench claims` (BENCHMARKS.md), reading and decoding the 1,000-run window was the
//! largest part of that read and a sixth of a placement's server CPU, and it rarely changes
//! between two claims but for the runs the first one took. So the SQLite store keeps the
//! window in memory per process and answers claims from it while its triggers' count says no
//! run was added to, changed in or taken out of the PENDING set but by assignments
//! (`store::sqlite::window`; the limits of that are written there); MongoDB reads it at
//! every claim. A claim that cannot take anything reads neither ([`Store::claim_floor`]).
//!
//! [`Store::claim_floor`]: crate::store::StoreRead::claim_floor
//!
//! Concurrent claims in one process would otherwise all be shown the same window and race for
//! its best runs, losing most of those races in the store. So a claim reserves the runs it is
//! about to assign ([`InFlight`]) and the others are shown the window without them. For runs
//! and a worker's capacity that is an optimisation only: the store's refusal remains the
//! guarantee. For what only a strategy checks across the cluster — a queue's quota, a spread —
//! it is the guarantee within a process: claims take turns to decide (the strategy's call and
//! the reservation), and each sees the others' runs in flight as held where they go. Without
//! the turn, six claims at once took 8 to 11 runs of a 3-core quota
//! (`host/tests/policies.rs::concurrent_claims_never_take_a_queue_past_its_quota`).
//!
//! The view is read before the turn is taken, so that claims read in parallel and the turn
//! holds no store read: under `gyoza-bench claims` the claims' p50 fell from 38 to 25 ms and
//! their p99 from 93 to 47–58 ms. A view can then be older than a placement another claim
//! made and committed meanwhile; so a claim opens its view ([`InFlight::open`]) before
//! reading it, and [`InFlight`] keeps each reservation released while a view is open. Under
//! the turn, the claim counts as held (and hides from its window) the runs reserved now and
//! those released since its view was opened: every run this process assigned is in the view
//! or among those. Without the released ones, a claim that read its view before another took
//! a queue's whole quota took it again
//! (`host/tests/policies.rs::a_claim_counts_what_was_assigned_after_its_view_was_read`).
//! Claims through different server replicas do not share the turn: there a quota can be
//! passed by what claims on other replicas assign at the same moment.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gyoza_core::placement::{EvictionRefusal, EvictionRules, Placements, place, tag_fit};
use gyoza_core::run::{MAX_PREEMPTIONS, Preemption};
use gyoza_core::sync::lock;
use gyoza_core::time::Timestamp;
use gyoza_core::{Capacity, HeldRun, OpRun, PendingRun, Worker, WorkerOpRun};

use super::Service;
use super::wait::Seen;
use crate::scheduler::{ActiveWorker, ClaimRequest, Decision};
use crate::store::{ClaimFloor, ClaimView, Placement, StoreError};

/// How many claimable runs a scheduler is shown per claim, best first.
pub const PENDING_WINDOW: usize = 1_000;

/// How often a claim that lost races to other claimers asks the scheduler again.
const CLAIM_ROUNDS: usize = 4;

/// Runs per claim that get a reason for a required tag no active worker has.
const TAG_REASONS: usize = 16;

/// A run placed on the claiming worker: its id and the GPU picked for it.
type Placed = Placement;

/// The host's limits on preemption (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreemptionLimits {
    /// The most preemptions one claim carries out (`GYOZA_MAX_EVICTIONS_PER_CLAIM`).
    pub per_claim: usize,
    /// The most preemptions this process carries out per minute
    /// (`GYOZA_MAX_EVICTIONS_PER_MINUTE`).
    pub per_minute: usize,
    /// A run preempted this often is no longer preempted (`GYOZA_MAX_PREEMPTIONS`).
    pub max_preemptions: u32,
    /// Whether a strategy may preempt runs on another worker than the requester, for a
    /// pending run that would fit there (`GYOZA_PREEMPT_ACROSS_WORKERS`; see the module docs).
    pub across_workers: bool,
    /// How long the capacity freed so is kept for that run (`GYOZA_RESERVATION_S`).
    pub reservation: chrono::Duration,
}

impl Default for PreemptionLimits {
    fn default() -> Self {
        Self {
            per_claim: 4,
            per_minute: 60,
            max_preemptions: MAX_PREEMPTIONS,
            across_workers: false,
            reservation: chrono::Duration::seconds(DEFAULT_RESERVATION_S),
        }
    }
}

/// Default of [`PreemptionLimits::reservation`], in seconds.
pub const DEFAULT_RESERVATION_S: i64 = 30;

/// Pending runs kept for one worker: a claim preempted runs on that worker (not the
/// requester) to make room for them. Until a reservation expires, only that worker's claims
/// are shown the run, and they take it first, before the strategy's choices; a claim by any
/// other worker in this process is not shown it. Kept in this process's memory.
#[derive(Debug, Default)]
pub(super) struct Reservations(Mutex<std::collections::HashMap<String, (String, Timestamp)>>);

impl Reservations {
    /// Keeps run `run` for worker `worker` until `until`.
    fn make(&self, run: &str, worker: &str, until: Timestamp) {
        lock(&self.0).insert(run.to_owned(), (worker.to_owned(), until));
    }

    /// Drops the reservations expired at `now` (how many), takes the runs kept for other
    /// workers out of `pending`, and returns the ids of those kept for `worker` that are
    /// still in it, in `pending`'s order.
    fn sort_out(
        &self,
        worker: &str,
        pending: &mut Vec<PendingRun>,
        now: Timestamp,
    ) -> (Vec<String>, usize) {
        let mut kept = lock(&self.0);
        if kept.is_empty() {
            return (Vec::new(), 0);
        }
        let before = kept.len();
        kept.retain(|_, (_, until)| *until > now);
        let expired = before - kept.len();
        pending.retain(|run| kept.get(&run.id).is_none_or(|(w, _)| w == worker));
        let mine = pending
            .iter()
            .filter(|run| kept.contains_key(&run.id))
            .map(|run| run.id.clone())
            .collect();
        (mine, expired)
    }

    /// Ends the reservation of `run` (it was assigned); whether there was one.
    fn used(&self, run: &str) -> bool {
        lock(&self.0).remove(run).is_some()
    }
}

/// When this process carried out its preemptions of the last minute.
#[derive(Debug, Default)]
pub(super) struct PreemptionClock(Mutex<VecDeque<Instant>>);

impl PreemptionClock {
    /// How many more preemptions `per_minute` allows now.
    fn budget(&self, per_minute: usize) -> usize {
        let mut recent = lock(&self.0);
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            recent.pop_front();
        }
        per_minute.saturating_sub(recent.len())
    }

    /// Counts `n` preemptions carried out now.
    fn record(&self, n: usize) {
        let now = Instant::now();
        lock(&self.0).extend(std::iter::repeat_n(now, n));
    }
}

/// A worker that cannot take anything is still asked the full way this often, so that the
/// reasons pending runs show (`scheduling.reason`, from the strategy) stay current.
const REASONS_REFRESH: Duration = Duration::from_secs(10);

/// When each worker's claim last went the full way (read the window, asked the strategy), and
/// the [`PendingGeneration`] it saw.
#[derive(Debug, Default)]
pub(super) struct FullClaims(Mutex<std::collections::HashMap<String, (Instant, u64)>>);

impl FullClaims {
    /// Whether `worker_id`'s claim went the full way within [`REASONS_REFRESH`] and no run
    /// became PENDING in this process since (`generation` is the count now).
    fn saw_the_same(&self, worker_id: &str, generation: u64) -> bool {
        lock(&self.0)
            .get(worker_id)
            .is_some_and(|(at, seen)| *seen == generation && at.elapsed() < REASONS_REFRESH)
    }

    /// Notes a full claim of `worker_id` now, which saw `generation` (forgetting stale
    /// entries once there are many).
    fn record(&self, worker_id: &str, generation: u64) {
        let mut last = lock(&self.0);
        if last.len() >= 10_000 {
            last.retain(|_, (at, _)| at.elapsed() < REASONS_REFRESH);
        }
        last.insert(worker_id.to_owned(), (Instant::now(), generation));
    }
}

/// How many runs became PENDING in this process (created or requeued): a full worker's claim
/// is answered early only when none did since its last full claim, so that each new run gets
/// its reason from the strategy at the next claim of every worker.
#[derive(Debug, Default)]
pub(super) struct PendingGeneration(AtomicU64);

impl PendingGeneration {
    pub(super) fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// The runs that claims in this process are assigning at the moment, each as it will be
/// held (on its worker, with its figures and facts), those assigned since a view still being
/// decided on was read, and the turn claims take to decide.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    book: Mutex<Book>,
    /// Held from counting the runs in flight, through the strategy's call, to reserving what
    /// it placed: so every claim in this process decides knowing every other one's
    /// placements (see [`Service::claim`]). The view is read before the turn is taken.
    turn: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Book {
    /// The runs being assigned, by id.
    reserved: HashMap<String, HeldRun>,
    /// Reservations released while a view was open, each with its number: the run may have
    /// been committed after that view was read, so the view may not show it held.
    released: VecDeque<(u64, HeldRun)>,
    /// The number of the last release.
    releases: u64,
    /// Views read and not decided on yet: the number of the last release before each view
    /// was read, and how many views share it.
    open: BTreeMap<u64, usize>,
}

impl Book {
    /// Forgets the releases every open view was read after.
    fn prune(&mut self) {
        match self.open.keys().next() {
            None => self.released.clear(),
            Some(&oldest) => {
                while self.released.front().is_some_and(|(n, _)| *n <= oldest) {
                    self.released.pop_front();
                }
            }
        }
    }
}

impl InFlight {
    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    /// Opens a view: call it before the view's store read begins. Until the guard is
    /// dropped, [`InFlight::since`] names every run this process reserved since.
    fn open(&self) -> Opened<'_> {
        let mut book = self.book();
        let after = book.releases;
        *book.open.entry(after).or_default() += 1;
        Opened {
            in_flight: self,
            after,
        }
    }

    /// The runs `view` may not show as held though they are, or may be: those being
    /// assigned now, and those released since the view was opened (each once).
    fn since(&self, view: &Opened<'_>) -> Vec<HeldRun> {
        let book = self.book();
        let mut seen = HashSet::new();
        book.reserved
            .values()
            .chain(
                book.released
                    .iter()
                    .filter(|(n, _)| *n > view.after)
                    .map(|(_, run)| run),
            )
            .filter(|run| seen.insert(run.id.as_str()))
            .cloned()
            .collect()
    }

    /// Reserves for `worker_id` those of `placed` nobody else has reserved (each as held
    /// there, from its entry in `pending`); returns them and a guard that releases them.
    fn reserve(
        &self,
        placed: Vec<Placed>,
        pending: &[PendingRun],
        worker_id: &str,
    ) -> (Vec<Placed>, Reserved<'_>) {
        let mut book = self.book();
        let mine: Vec<_> = placed
            .into_iter()
            .filter(|(id, gpu)| {
                if book.reserved.contains_key(id) {
                    return false;
                }
                // Placed runs come from the window; one that does not still blocks others.
                let run = pending.iter().find(|run| &run.id == id);
                book.reserved.insert(
                    id.clone(),
                    HeldRun {
                        id: id.clone(),
                        worker_id: worker_id.to_owned(),
                        constraints: run.map(|r| r.constraints.clone()).unwrap_or_default(),
                        gpu_id: *gpu,
                        priority: run.map_or(0, |r| r.priority),
                        facts: run.map(|r| r.facts.clone()).unwrap_or_default(),
                    },
                );
                true
            })
            .collect();
        let guard = Reserved {
            in_flight: self,
            ids: mine.iter().map(|(id, _)| id.clone()).collect(),
        };
        (mine, guard)
    }
}

/// An open view (see [`InFlight::open`]); closes it when dropped.
struct Opened<'a> {
    in_flight: &'a InFlight,
    /// The number of the last release before the view was opened.
    after: u64,
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        let mut book = self.in_flight.book();
        if let Some(count) = book.open.get_mut(&self.after) {
            *count -= 1;
            if *count == 0 {
                book.open.remove(&self.after);
            }
        }
        book.prune();
    }
}

/// Releases reserved runs when dropped (also when a claim's future is dropped midway),
/// keeping them as released while a view is open. A run whose assignment failed is kept so
/// too: it is then counted as held, and hidden, for the claims deciding at that moment only.
struct Reserved<'a> {
    in_flight: &'a InFlight,
    ids: Vec<String>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut book = self.in_flight.book();
        let keep = !book.open.is_empty();
        for id in &self.ids {
            if let Some(run) = book.reserved.remove(id)
                && keep
            {
                book.releases += 1;
                let n = book.releases;
                book.released.push_back((n, run));
            }
        }
        book.prune();
    }
}

/// The runs of `running` that `worker_id` holds.
fn held_by(running: &[HeldRun], worker_id: &str) -> Vec<HeldRun> {
    running
        .iter()
        .filter(|r| r.worker_id == worker_id)
        .cloned()
        .collect()
}

/// What one round's store write did.
#[derive(Default)]
struct Round {
    /// Runs now ASSIGNED to the claimer, with their GPU.
    assigned: Vec<(OpRun, Option<u32>)>,
    /// Runs of the round, assigned or not: not offered again.
    settled: HashSet<String>,
    /// Some run went to another claimer (here or on another replica).
    lost_a_race: bool,
    /// The store failed.
    failure: Option<StoreError>,
}

/// A round's checked decision: what to place, and which held runs to preempt first.
struct Checked {
    placed: Vec<Placed>,
    /// (held run, the pending run it makes room for, the strategy's reason).
    evict: Vec<(HeldRun, PendingRun, String)>,
    /// (pending run, worker): runs the preemptions make room for on another worker, to be
    /// kept for it once they are carried out.
    reserve: Vec<(String, String)>,
    strategy: String,
    refused: usize,
}

/// What a claim by one worker would be shown now (see [`Service::claim_preview`]).
#[derive(Debug, Clone)]
pub struct ClaimPreview {
    /// The worker.
    pub worker: Worker,
    /// Every active worker, the requester first, with its free capacity.
    pub cluster: Vec<ActiveWorker>,
    /// The runs they hold.
    pub running: Vec<HeldRun>,
    /// The pending window, best first, before the requester's tag filter.
    pub pending: Vec<PendingRun>,
    /// Per queue, the decayed usage of its ended attempts.
    pub usage: Vec<(String, [f64; 3])>,
    /// When it was read.
    pub now: Timestamp,
}

impl Service {
    /// What a claim by `worker_id` would decide from now, read as a claim reads it, without
    /// claiming anything: for `gyoza plugins simulate --from-server`. `None` for a worker
    /// that never sent a heartbeat.
    pub async fn claim_preview(&self, worker_id: &str) -> Result<Option<ClaimPreview>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .read_view(worker_id, now)
            .await?
            .map(|view| self.preview_of(view, Vec::new(), now)))
    }

    /// The store's view for a claim by `worker_id` at `now`.
    async fn read_view(
        &self,
        worker_id: &str,
        now: Timestamp,
    ) -> Result<Option<ClaimView>, StoreError> {
        self.store
            .claim_view(worker_id, now, PENDING_WINDOW, self.queues.half_life_s)
            .await
    }

    /// `view` read at `now` as a claim is shown it, with `in_flight` (runs other claims are
    /// assigning, or assigned since the view was read) counted as held where the view does
    /// not hold them, and left out of its window.
    fn preview_of(
        &self,
        mut view: ClaimView,
        in_flight: Vec<HeldRun>,
        now: Timestamp,
    ) -> ClaimPreview {
        if !in_flight.is_empty() {
            let taken: HashSet<&str> = in_flight.iter().map(|run| run.id.as_str()).collect();
            view.pending.retain(|run| !taken.contains(run.id.as_str()));
            let held: HashSet<String> = view.held.iter().map(|run| run.id.clone()).collect();
            view.held
                .extend(in_flight.into_iter().filter(|run| !held.contains(&run.id)));
        }
        let (cluster, running) = self.active_workers(&view.worker, view.held, view.workers);
        ClaimPreview {
            worker: view.worker,
            cluster,
            running,
            pending: view.pending,
            usage: view.usage,
            now,
        }
    }

    /// Assigns up to `max` pending runs to `worker_id` and returns them, each naming its GPU.
    ///
    /// An unknown worker (one that never sent a heartbeat) gets no work, as with the original
    /// server. If the store fails after some runs were assigned, those are still returned so
    /// that they are not stranded in ASSIGNED.
    pub async fn claim(&self, worker_id: &str, max: usize) -> Result<Vec<WorkerOpRun>, StoreError> {
        Ok(self.claim_seeing(worker_id, max).await?.0)
    }

    /// [`Service::claim`], and what it saw of the worker: `None` for an unknown worker.
    pub(super) async fn claim_seeing(
        &self,
        worker_id: &str,
        max: usize,
    ) -> Result<(Vec<WorkerOpRun>, Option<Seen>), StoreError> {
        let Some(floor) = self.store.claim_floor(worker_id, self.clock.now()).await? else {
            tracing::warn!(worker_id, "claim from a worker that never sent a heartbeat");
            return Ok((Vec::new(), None));
        };
        if let Some(seen) = self.refused_early(worker_id, &floor) {
            self.metrics
                .claims_answered_early
                .fetch_add(1, Ordering::Relaxed);
            return Ok((Vec::new(), Some(seen)));
        }
        // Read before the window: a run made PENDING meanwhile counts as not seen.
        self.full_claims
            .record(worker_id, self.pending_generation.now());
        let mut claimed = Vec::new();
        let mut settled: HashSet<String> = HashSet::new();
        let mut last: Option<(Worker, Vec<HeldRun>)> = None;
        // Concurrent claimers see the same window and race for its best runs. A claimer that
        // loses a race asks the scheduler again without the runs it lost, a few times, so that
        // it does not come back empty-handed while work is pending.
        for _round in 0..CLAIM_ROUNDS {
            // One claim at a time decides in this process (see the module docs); the view is
            // read before the turn, opened first. Each run this process assigns is then
            // either committed before the read began (and so in the view), or reserved or
            // released since the view was opened (and so named by `since` under the turn),
            // or reserved by a claim that takes the turn after this one.
            let phases = &self.metrics.claim_phases;
            let opened = self.claims_in_flight.open();
            let now = self.clock.now();
            let reading = Instant::now();
            let Some(view) = self.read_view(worker_id, now).await? else {
                break;
            };
            phases.view.observe(reading.elapsed());
            let waiting = Instant::now();
            let turn = self.claims_in_flight.turn.lock().await;
            let deciding = Instant::now();
            phases.turn.observe(deciding - waiting);
            let in_flight = self.claims_in_flight.since(&opened);
            drop(opened);
            let ClaimPreview {
                worker,
                mut cluster,
                mut running,
                pending,
                usage,
                now,
            } = self.preview_of(view, in_flight, now);
            let mut pending = self.meeting_tags(&worker, pending, &cluster, now);
            let (mut kept_for_me, expired) =
                self.reservations.sort_out(worker_id, &mut pending, now);
            self.metrics
                .reservations_expired
                .fetch_add(expired as u64, Ordering::Relaxed);
            pending.retain(|run| !settled.contains(&run.id));
            let mine = held_by(&running, worker_id);
            let free = Capacity::free(&worker.resources, &mine);
            cluster[0].free = free.clone();
            cluster[0].running = mine.len();
            let request = ClaimRequest {
                worker: &worker,
                free,
                pending: &pending,
                max: max - claimed.len(),
                now,
                cluster: &cluster,
                running: &running,
                queues: &self.queues,
                usage: &usage,
                max_preemptions: self.preemption.max_preemptions,
                max_evictions: self
                    .preemption
                    .per_claim
                    .min(self.preemption_clock.budget(self.preemption.per_minute)),
            };
            let checked = self.decide(&request, &mine, &kept_for_me).await;
            if checked.placed.is_empty() && checked.evict.is_empty() {
                phases.decide.observe(deciding.elapsed());
                // Refused preemptions still count against the strategy.
                if checked.refused > 0 {
                    self.scheduler
                        .record_evictions(&checked.strategy, 0, checked.refused);
                }
                break;
            }
            let (placed, _reserved) =
                self.claims_in_flight
                    .reserve(checked.placed.clone(), &pending, worker_id);
            drop(turn);
            phases.decide.observe(deciding.elapsed());
            let preempted = self.preempt(&checked, now).await;
            running.retain(|run| !preempted.contains(&run.id));
            for (run, worker) in &checked.reserve {
                let carried_out = checked
                    .evict
                    .iter()
                    .filter(|(_, beneficiary, _)| &beneficiary.id == run)
                    .all(|(victim, ..)| preempted.contains(&victim.id));
                if carried_out {
                    self.reservations
                        .make(run, worker, now + self.preemption.reservation);
                    self.metrics
                        .reservations_made
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(run_id = %run, worker_id = %worker, "capacity freed on another worker kept for a run");
                }
                pending.retain(|pending| &pending.id != run);
            }
            let assigning = Instant::now();
            let round = self
                .assign(worker_id, placed, checked.placed.len(), now)
                .await;
            phases.assign.observe(assigning.elapsed());
            for (run, gpu) in round.assigned {
                if self.reservations.used(&run.id) {
                    self.metrics
                        .reservations_used
                        .fetch_add(1, Ordering::Relaxed);
                    kept_for_me.retain(|id| id != &run.id);
                }
                let mut held = HeldRun::of(&run).unwrap_or_else(|| HeldRun {
                    id: run.id.clone(),
                    worker_id: worker_id.to_owned(),
                    constraints: run.constraints.clone(),
                    gpu_id: None,
                    priority: run.priority,
                    facts: gyoza_core::RunFacts::of(&run),
                });
                held.gpu_id = gpu;
                running.push(held);
                claimed.push(WorkerOpRun {
                    gpu_id: gpu,
                    ..WorkerOpRun::from_run(&run)
                });
            }
            if let Some(e) = round.failure {
                if claimed.is_empty() {
                    return Err(e);
                }
                tracing::error!(error = %e, "store failed during a claim; returning the runs assigned so far");
                break;
            }
            let done = !round.lost_a_race || claimed.len() >= max;
            settled.extend(round.settled);
            last = Some((worker, running));
            if done {
                break;
            }
        }
        for op in &claimed {
            self.notify(&op.id);
        }
        let seen = last.map(|(worker, running)| Seen::of(&worker, &held_by(&running, worker_id)));
        Ok((claimed, seen))
    }

    /// What the worker of `floor` was seen as when its claim can be answered without
    /// reading the window: nothing is PENDING; or its free CPU or RAM is below the least a
    /// PENDING run needs, it holds no run a strategy could preempt to make room, and one of
    /// its claims went the full way within [`REASONS_REFRESH`] with no run made PENDING in
    /// this process since (which keeps the pending runs' reasons current).
    fn refused_early(&self, worker_id: &str, floor: &ClaimFloor) -> Option<Seen> {
        let Some(least) = floor.least else {
            return Some(Seen::of(&floor.worker, &floor.held));
        };
        if !self
            .full_claims
            .saw_the_same(worker_id, self.pending_generation.now())
        {
            return None;
        }
        let seen = Seen::of(&floor.worker, &floor.held);
        let below = |free: i64, least: u64| u64::try_from(free).map_or(true, |free| free < least);
        let full = below(seen.free.cpu, least.cpu) || below(seen.free.ram_mb, least.ram_mb);
        let max = self.preemption.max_preemptions;
        let preemptible = floor
            .held
            .iter()
            .any(|run| run.facts.preemptible && run.facts.preemptions < max);
        (full && !preemptible).then_some(seen)
    }

    /// [`meeting_tags`] for this claim, noting why the runs no active worker meets wait.
    fn meeting_tags(
        &self,
        worker: &Worker,
        pending: Vec<PendingRun>,
        cluster: &[ActiveWorker],
        now: Timestamp,
    ) -> Vec<PendingRun> {
        let (kept, unmet) = meeting_tags(worker, pending, cluster);
        for (run_id, reason) in unmet {
            self.scheduler.note_pending(&run_id, reason, now);
        }
        kept
    }

    /// The scheduler's decision on `request`, checked: the runs to assign and their GPUs on
    /// the capacity left once the allowed preemptions are carried out, and those preemptions.
    /// The runs of `kept` (ids of runs reserved for the requester) are placed first, whatever
    /// the strategy chose.
    async fn decide(
        &self,
        request: &ClaimRequest<'_>,
        mine: &[HeldRun],
        kept: &[String],
    ) -> Checked {
        let decision = self.scheduler.decide(request).await;
        let strategy = decision
            .strategy
            .clone()
            .unwrap_or_else(|| self.scheduler.name().to_owned());
        let (evict, reserve, refused) = self.allowed_evictions(request, &decision, &strategy);
        let free = if evict.is_empty() {
            request.free.clone()
        } else {
            let left: Vec<HeldRun> = mine
                .iter()
                .filter(|run| !evict.iter().any(|(victim, ..)| victim.id == run.id))
                .cloned()
                .collect();
            Capacity::free(&request.worker.resources, &left)
        };
        let first: Vec<usize> = request
            .pending
            .iter()
            .enumerate()
            .filter(|(_, run)| kept.contains(&run.id))
            .map(|(i, _)| i)
            .collect();
        let chosen = decision
            .chosen
            .iter()
            .copied()
            .filter(|i| !first.contains(i));
        let placements = place(
            &free,
            request.pending,
            first.iter().copied().chain(chosen),
            request.max,
        );
        self.report_dropped(&placements);
        let placed = placements
            .placed
            .iter()
            .map(|p| (request.pending[p.index].id.clone(), p.gpu))
            .collect();
        Checked {
            placed,
            evict,
            reserve,
            strategy,
            refused,
        }
    }

    /// The preemptions of `decision` the host's rules allow, the runs they make room for on
    /// another worker (with that worker), and how many it refused.
    #[allow(clippy::type_complexity)]
    fn allowed_evictions(
        &self,
        request: &ClaimRequest<'_>,
        decision: &Decision,
        strategy: &str,
    ) -> (
        Vec<(HeldRun, PendingRun, String)>,
        Vec<(String, String)>,
        usize,
    ) {
        if decision.evictions.is_empty() {
            return (Vec::new(), Vec::new(), 0);
        }
        let rules = EvictionRules {
            per_claim: request.max_evictions,
            budget: self.preemption_clock.budget(self.preemption.per_minute),
            max_preemptions: self.preemption.max_preemptions,
            elsewhere: self.preemption.across_workers,
        };
        let mut checked = decision.checked_evictions(request, rules);
        let reserve = self.elsewhere(request, decision, &mut checked);
        if !checked.refused.is_empty() {
            let count = |kind: EvictionRefusal| {
                checked
                    .refused
                    .iter()
                    .filter(|(_, why)| *why == kind)
                    .count()
            };
            tracing::warn!(
                strategy,
                refused = checked.refused.len(),
                unknown = count(EvictionRefusal::Unknown),
                duplicate = count(EvictionRefusal::Duplicate),
                elsewhere = count(EvictionRefusal::Elsewhere),
                not_preemptible = count(EvictionRefusal::NotPreemptible),
                not_decided = count(EvictionRefusal::NotDecided),
                not_lower_priority = count(EvictionRefusal::NotLowerPriority),
                over_cap = count(EvictionRefusal::OverCap),
                "strategy asked for preemptions the host's rules refuse; ignored"
            );
        }
        let allowed = checked
            .accepted
            .iter()
            .map(|&i| {
                let request_ = &decision.evictions[i];
                (
                    request.running[request_.run].clone(),
                    request.pending[request_.for_run].clone(),
                    request_.reason.clone(),
                )
            })
            .collect();
        (allowed, reserve, checked.refused.len())
    }

    /// Of `checked`'s accepted preemptions, those on another worker than the requester stand
    /// only if, for each pending run they are for: the decision did not assign it to the
    /// requester, they are all on one active worker, that worker meets the run's tags, and
    /// the run fits what that worker has free once they are carried out. The others are
    /// moved to `checked.refused` (as [`EvictionRefusal::Elsewhere`]). Returns (pending run,
    /// worker) for each that stands.
    fn elsewhere(
        &self,
        request: &ClaimRequest<'_>,
        decision: &Decision,
        checked: &mut gyoza_core::placement::Evictions,
    ) -> Vec<(String, String)> {
        let requester = &request.worker.id;
        let mut by_run: Vec<(usize, Vec<usize>)> = Vec::new();
        for &i in &checked.accepted {
            let for_run = decision.evictions[i].for_run;
            match by_run.iter_mut().find(|(run, _)| *run == for_run) {
                Some((_, group)) => group.push(i),
                None => by_run.push((for_run, vec![i])),
            }
        }
        let mut reserve = Vec::new();
        for (for_run, group) in by_run {
            let victims: Vec<&HeldRun> = group
                .iter()
                .map(|&i| &request.running[decision.evictions[i].run])
                .collect();
            if victims.iter().all(|victim| &victim.worker_id == requester) {
                continue;
            }
            let target = &victims[0].worker_id;
            let run = &request.pending[for_run];
            let stands = !decision.chosen.contains(&for_run)
                && victims.iter().all(|victim| &victim.worker_id == target)
                && request
                    .cluster
                    .iter()
                    .find(|w| &w.id == target)
                    .is_some_and(|worker| {
                        let needs_gpu = run.constraints.vram_mb.unwrap_or(0) > 0;
                        let Ok(only_gpus) = tag_fit(
                            &run.constraints.tags,
                            &worker.tags,
                            &worker.resources.gpus,
                            needs_gpu,
                        ) else {
                            return false;
                        };
                        let left: Vec<HeldRun> = request
                            .running
                            .iter()
                            .filter(|held| &held.worker_id == target)
                            .filter(|held| !victims.iter().any(|victim| victim.id == held.id))
                            .cloned()
                            .collect();
                        let there = PendingRun {
                            only_gpus,
                            ..run.clone()
                        };
                        let free = Capacity::free(&worker.resources, &left);
                        !place(&free, std::slice::from_ref(&there), [0], 1)
                            .placed
                            .is_empty()
                    });
            if stands {
                reserve.push((run.id.clone(), target.clone()));
            } else {
                checked.accepted.retain(|i| !group.contains(i));
                checked
                    .refused
                    .extend(group.iter().map(|&i| (i, EvictionRefusal::Elsewhere)));
            }
        }
        checked.refused.sort_unstable_by_key(|(i, _)| *i);
        reserve
    }

    /// Carries out the preemptions of `checked` (each a compare-and-set on its run) and
    /// counts them against the strategy; returns the ids of the runs preempted.
    async fn preempt(&self, checked: &Checked, now: Timestamp) -> Vec<String> {
        let mut preempted = Vec::new();
        let mut stale = 0;
        for (victim, beneficiary, reason) in &checked.evict {
            let (worker, by, strategy, reason) = (
                victim.worker_id.clone(),
                beneficiary.id.clone(),
                checked.strategy.clone(),
                reason.clone(),
            );
            let (attempt, by_priority, max) = (
                victim.facts.attempt,
                beneficiary.priority,
                self.preemption.max_preemptions,
            );
            let outcome = self
                .update_run(
                    &victim.id,
                    Box::new(move |run| {
                        let preemption = Preemption {
                            by: &by,
                            by_priority,
                            strategy: &strategy,
                            reason: &reason,
                        };
                        run.preempt(&worker, attempt, &preemption, max, now)
                    }),
                )
                .await;
            match outcome {
                Ok(Some(_)) => {
                    tracing::info!(
                        run_id = %victim.id,
                        by = %beneficiary.id,
                        strategy = %checked.strategy,
                        "run preempted"
                    );
                    preempted.push(victim.id.clone());
                }
                // It moved since the view was read (finished, cancelled, preempted by
                // another claim): nothing to preempt.
                Ok(None) | Err(StoreError::Rule(_)) => stale += 1,
                Err(e) => {
                    stale += 1;
                    tracing::error!(run_id = %victim.id, error = %e, "preemption failed");
                }
            }
        }
        self.preemption_clock.record(preempted.len());
        self.scheduler.record_evictions(
            &checked.strategy,
            preempted.len(),
            checked.refused + stale,
        );
        preempted
    }

    /// Logs what the check dropped of a decision and tells the scheduler (for its stats).
    fn report_dropped(&self, placements: &Placements) {
        let strategy = self.scheduler.name();
        if placements.dropped() > 0 {
            tracing::warn!(
                scheduler = strategy,
                unknown = placements.unknown,
                duplicate = placements.duplicate,
                over_capacity = placements.over_capacity,
                "scheduler chose unknown, duplicate or unfitting runs; ignored"
            );
        }
        self.scheduler.record_dropped(strategy, placements);
    }

    /// Assigns the reserved `placed` runs that still fit to `worker_id` in one store write;
    /// `chosen` placed runs were to be reserved (those another claim reserved first count
    /// as lost races).
    async fn assign(
        &self,
        worker_id: &str,
        placed: Vec<Placed>,
        chosen: usize,
        now: Timestamp,
    ) -> Round {
        let mut round = Round {
            lost_a_race: placed.len() != chosen,
            ..Round::default()
        };
        if placed.is_empty() {
            return round;
        }
        let answers = self.store.assign_runs(worker_id, placed.clone(), now).await;
        for ((id, gpu), answer) in placed.into_iter().zip(answers) {
            match answer {
                Ok(Some(run)) => round.assigned.push((run, gpu)),
                // Gone, taken by another claimer since the window was read, or no longer
                // fitting because another claimer filled the worker.
                Ok(None) | Err(StoreError::Rule(_)) => round.lost_a_race = true,
                Err(e) => round.failure = Some(e),
            }
            round.settled.insert(id);
        }
        round
    }

    /// Every active worker with its free capacity, the requester first (first-hand: it may
    /// be the only one whose heartbeat is fresh enough), and the runs they hold.
    fn active_workers(
        &self,
        requester: &Worker,
        mut held: Vec<HeldRun>,
        workers: Vec<Worker>,
    ) -> (Vec<ActiveWorker>, Vec<HeldRun>) {
        let now = self.clock.now();
        // Grouped by worker: each worker's runs are one slice, without copies.
        held.sort_unstable_by(|a, b| a.worker_id.cmp(&b.worker_id));
        let runs_of = |id: &str| {
            let start = held.partition_point(|run| run.worker_id.as_str() < id);
            let end = held.partition_point(|run| run.worker_id.as_str() <= id);
            &held[start..end]
        };
        let active = |worker: &Worker| {
            let runs = runs_of(&worker.id);
            ActiveWorker {
                id: worker.id.clone(),
                resources: worker.resources.clone(),
                free: Capacity::free(&worker.resources, runs),
                running: runs.len(),
                tags: worker.tags.clone(),
            }
        };
        let mut cluster = vec![active(requester)];
        for worker in &workers {
            if worker.id != requester.id && worker.is_active(now, self.worker_timeout) {
                cluster.push(active(worker));
            }
        }
        let ids: HashSet<&str> = cluster.iter().map(|w| w.id.as_str()).collect();
        let keep: Vec<bool> = held
            .iter()
            .map(|run| ids.contains(run.worker_id.as_str()))
            .collect();
        let mut keep = keep.into_iter();
        held.retain(|_| keep.next().unwrap_or(false));
        (cluster, held)
    }
}

/// The runs of `pending` whose required tags `worker` meets (a GPU run that meets them on
/// some of its GPUs only is kept to those), and for the first few dropped runs (run id, why
/// it waits: how many active workers of `cluster` meet its tags, or which tag none has).
pub(crate) fn meeting_tags(
    worker: &Worker,
    pending: Vec<PendingRun>,
    cluster: &[ActiveWorker],
) -> (Vec<PendingRun>, Vec<(String, String)>) {
    let mut unmet = Vec::new();
    let mut looked = 0;
    let mut kept = Vec::with_capacity(pending.len());
    for mut run in pending {
        let tags = &run.constraints.tags;
        if tags.is_empty() {
            kept.push(run);
            continue;
        }
        let needs_gpu = run.constraints.vram_mb.unwrap_or(0) > 0;
        match tag_fit(tags, &worker.tags, &worker.resources.gpus, needs_gpu) {
            Ok(only) => {
                run.only_gpus = only;
                kept.push(run);
            }
            Err(_) if looked < TAG_REASONS => {
                looked += 1;
                let reason = unmet_tags(&run, cluster);
                unmet.push((run.id, reason));
            }
            Err(_) => {}
        }
    }
    (kept, unmet)
}

/// Why `run` waits for its required tags: how many active workers of `cluster` meet them,
/// or, when none does, which tag is missing.
fn unmet_tags(run: &PendingRun, cluster: &[ActiveWorker]) -> String {
    let tags = &run.constraints.tags;
    let needs_gpu = run.constraints.vram_mb.unwrap_or(0) > 0;
    let quoted = |tags: &mut dyn Iterator<Item = &String>| {
        tags.map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let meeting = cluster
        .iter()
        .filter(|w| tag_fit(tags, &w.tags, &w.resources.gpus, needs_gpu).is_ok())
        .count();
    if meeting > 0 {
        return format!(
            "waits for a worker with its tags ({}): {meeting} active worker{} {} them",
            quoted(&mut tags.iter()),
            if meeting == 1 { "" } else { "s" },
            if meeting == 1 { "has" } else { "have" },
        );
    }
    let has = |w: &ActiveWorker, tag: &String| {
        w.tags.contains(tag) || (needs_gpu && w.resources.gpus.iter().any(|g| g.tags.contains(tag)))
    };
    let nowhere: Vec<&String> = tags
        .iter()
        .filter(|tag| !cluster.iter().any(|w| has(w, tag)))
        .collect();
    match nowhere.as_slice() {
        [] => format!(
            "needs tags {} together: no active worker has them all",
            quoted(&mut tags.iter())
        ),
        [one] => format!("needs tag '{one}': no active worker has it"),
        many => format!(
            "needs tags {}: no active worker has them",
            quoted(&mut many.iter().copied())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ids: &[&str]) -> Vec<PendingRun> {
        ids.iter()
            .map(|id| PendingRun {
                id: (*id).to_owned(),
                priority: 0,
                created_at: chrono::Utc::now(),
                constraints: Default::default(),
                facts: Default::default(),
                only_gpus: None,
            })
            .collect()
    }

    fn ids(runs: &[HeldRun]) -> Vec<(String, String, Option<u32>)> {
        let mut ids: Vec<_> = runs
            .iter()
            .map(|run| (run.id.clone(), run.worker_id.clone(), run.gpu_id))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_reserved_run_is_named_to_other_claims_until_released() {
        let in_flight = InFlight::default();
        let shown = window(&["a", "b", "c", "d"]);
        let (mine, guard) = in_flight.reserve(
            vec![("a".into(), None), ("b".into(), Some(0))],
            &shown,
            "w1",
        );
        assert_eq!(mine.len(), 2);
        // A second claim cannot reserve them.
        let (theirs, _their_guard) =
            in_flight.reserve(vec![("b".into(), None), ("c".into(), None)], &shown, "w2");
        assert_eq!(theirs, vec![("c".to_owned(), None)]);
        // Each is named as held where it goes, with its GPU.
        let view = in_flight.open();
        let w = |id: &str, worker: &str, gpu| (id.to_owned(), worker.to_owned(), gpu);
        assert_eq!(
            ids(&in_flight.since(&view)),
            [
                w("a", "w1", None),
                w("b", "w1", Some(0)),
                w("c", "w2", None)
            ]
        );
        drop(view);
        drop(guard);
        let view = in_flight.open();
        assert_eq!(
            ids(&in_flight.since(&view)),
            [w("c", "w2", None)],
            "released with the claim, before this view was opened"
        );
    }

    #[test]
    fn a_run_released_while_a_view_is_open_is_named_to_that_view_only() {
        let in_flight = InFlight::default();
        let shown = window(&["a", "b"]);
        let early = in_flight.open();
        let (_, guard) = in_flight.reserve(vec![("a".into(), None)], &shown, "w1");
        drop(guard);
        // Its assignment may have been committed after `early`'s read: `early` is told.
        let late = in_flight.open();
        assert_eq!(ids(&in_flight.since(&early)).len(), 1);
        // A view opened after the release reads the commit itself.
        assert!(in_flight.since(&late).is_empty());
        drop(early);
        assert!(in_flight.since(&late).is_empty());
        drop(late);
        assert!(
            in_flight.book().released.is_empty(),
            "forgotten once no view needs it"
        );
    }
}
