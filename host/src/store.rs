//! Persistence: the [`StoreRead`] and [`Store`] traits and their implementations.
//!
//! A store keeps definitions, runs (with their attempts) and workers. It is the only shared
//! state of the server: several server processes on one database must behave as one, so
//! every read-modify-write of a run goes through [`Store::update_run`], which applies a domain
//! mutation atomically (a transaction in SQLite), and a claim is such an update whose mutation
//! refuses unless the run is still PENDING: two claimers never get the same run.
//!
//! A claim assigns with [`Store::assign_runs`], which also checks the worker's capacity at
//! write time, atomically with the assignments (inside the write transaction on SQLite, under
//! a per-worker claim lease on MongoDB): any number of concurrent claimers for one worker,
//! in one process or on several replicas, never leave it holding more than it has. The reaper
//! requeues with [`Store::update_run_if_silent`], which re-checks that the worker is still
//! silent when it writes.
//!
//! The trait has two sides: [`StoreRead`], the reads claims and listings decide from, and
//! [`Store`], which adds the writes. Code that only looks (a listing, a strategy's view) can
//! take a `StoreRead`; the server holds an `Arc<dyn Store>`.
//!
//! # Events apart from the run
//!
//! An attempt's timeline can be long (an op may log thousands of INFO events) while the run's
//! state machine needs none of it: no rule of `core/src/run.rs` reads past events, only
//! their count (the per-attempt cap). So the run row / document keeps the state and, per
//! attempt, `events_total`; the events themselves live apart, one row or document per event
//! keyed by (run id, attempt, index): the `events` table on SQLite, the `events` collection on
//! MongoDB. An update loads the run without its history, the domain mutation appends to
//! `events` (which [`gyoza_core::OpAttempt::first_event`] numbers from `events_total`), and
//! the store writes back the run and inserts only what was appended: the cost of an event is
//! the same whatever the history.
//!
//! Atomicity: SQLite writes the run row and inserts the new events in one savepoint of the
//! writer's transaction. MongoDB has no multi-document transaction here (see `mongo`), so the
//! run document is the commit point: it keeps the events the last change appended inline
//! (an outbox, at most one change's events), and the next update first inserts those into
//! the collection (idempotent: the `_id` is `<run>:<attempt>:<index>`, and a duplicate is one
//! already there with the same content) and only then replaces them with its own by the
//! run's compare-and-set. A crash between the two leaves the events inline, where readers see
//! them; nothing is ever inserted that a committed run does not contain, so an event without
//! its run change is never visible. A run stored before this design (every event inline, no
//! `events_total`) reads the same way ([`gyoza_core::OpRun::settle`] counts them) and is moved
//! out on its next update (MongoDB) or when the file is opened (SQLite, in one transaction).
//!
//! Reads: [`StoreRead::load_run`] is the stored run with only its inline events;
//! [`StoreRead::get_run`] adds the end of the run's timeline ([`RUN_VIEW_EVENTS`] events,
//! the last attempts' last ones) and [`list_events`] pages through an attempt's timeline by
//! index. Both merge the inline events with those stored apart ([`StoreRead::event_range`])
//! and only show indexes below the loaded `events_total`, so a read never shows an event of a
//! change it does not show.
//!
//! Inputs: every attempt receives the run's inputs when it starts and they never change, so
//! the stored run keeps one copy ([`gyoza_core::OpRun::stored`]); a retried run's row does
//! not grow by its inputs per attempt.
//!
//! Caps (`core/src/limits.rs`): an INFO, PROGRESS or ERROR event is at most
//! `MAX_EVENT_BYTES` (64 KiB) of `msg` and `payload` (413 beyond) and an attempt records at
//! most `MAX_EVENTS_PER_ATTEMPT` (10,000) of them (400 beyond); state events are always
//! accepted.
//!
//! # The delivery outbox
//!
//! Events of a run whose `event_delivery.topic` is a URL are delivered from the store, not
//! from memory, so that a server restart or a second replica loses none (see
//! [`crate::delivery`]). The write that appends such a run's events also marks the run as
//! having events to deliver (`deliver_at`, in the same row or document, so in the same
//! atomic write: SQLite's savepoint, MongoDB's compare-and-set), due at once unless a retry
//! already postponed it. Each run's delivery progress lives apart, in `deliveries` (a table
//! on SQLite, a collection on MongoDB): the next event to send ([`DeliveryProgress`]) and a
//! lease, so that one server process at a time delivers a run's events, in order. A
//! delivery clears the mark only when its progress covers the run's whole timeline as stored
//! at that moment ([`Store::release_delivery`] checks both in one atomic step), so an event
//! appended meanwhile keeps it. A process that dies holding a lease leaves it to expire; the
//! next one resumes from the saved progress (events after the last save are sent again:
//! delivery is at least once).
//!
//! # Queue usage
//!
//! Strategies are shown each queue's usage over a decaying window (the `cpu-seconds`,
//! `ram-mb-seconds` and `vram-mb-seconds` of `gyoza:scheduler@1.0.0`'s `queues`): every second
//! an attempt held its CPU cores, RAM and VRAM, weighted by 2^(−age / h), h the half-life
//! (`GYOZA_QUEUE_USAGE_HALF_LIFE`). The host adds the runs held now; the store keeps the part
//! of the attempts that ended, so that every replica shows the same figures and a restart
//! loses none. A decayed sum needs no history: as of a later time t it is the sum ×
//! 2^(−(t − as_of) / h). So the store keeps, per queue, the three sums decayed as of a
//! reference time and that time (`queue_usage`, a table on SQLite, a collection on MongoDB),
//! and [`StoreRead::queue_usage`] decays them to the time asked (never beyond their reference
//! time: a replica whose clock is behind reads them as they are, not grown).
//!
//! A write that ends a held attempt adds that attempt's usage: its current attempt was
//! ASSIGNED or RUNNING when the store read the run for the change, and after the change it is
//! not (it ended COMPLETED, FAILED or CANCELLED, or the run moved on to a new attempt: a
//! retry, a requeue after its worker went, a preemption, a timeout). Its usage c is the
//! amount the run holds (`constraints.cpu`, `ram_mb`, `vram_mb`) times ∫ 2^(−age / h) over
//! the time it held them, from the attempt's `assigned_at` to its `finished_at` (t1), which
//! at t1 is h / ln 2 × (1 − 2^(−held / h)): the weight the host gives a run held now
//! (`strategy::convert`), so a queue's figure does not jump when one of its runs ends. It is
//! combined with the stored sums V as of `as_of` into V × 2^(−(t1 − as_of) / h) + c as of t1;
//! an attempt that ended before `as_of` (written late: a replica whose clock is behind) is
//! decayed to `as_of` instead, V + c × 2^(−(as_of − t1) / h), and the reference time stays.
//! Since the store reads the run in the same atomic write that changes it, only one write
//! ends a given attempt, and its usage is added once: on SQLite in the same savepoint as the
//! run (both commit or neither); on MongoDB right after the run's compare-and-set succeeded,
//! by a compare-and-set on the queue's document (no multi-document transactions there, see
//! `mongo`), so a crash between the two, or a failed usage write (logged), loses that
//! attempt's usage, and the run's change stands. An attempt without `assigned_at` (stored by
//! a gyoza that did not record it) adds nothing, nor do attempts that ended before the store
//! kept usage.
//!
//! The half-life of a write is the store's ([`SqliteStore::set_usage_half_life`],
//! [`MongoStore::set_usage_half_life`]; [`DEFAULT_HALF_LIFE_S`] until set; the server sets it
//! from `GYOZA_QUEUE_USAGE_HALF_LIFE`). Changing it applies to the usage accrued from then on:
//! the stored sums are kept as they were, decayed with the old half-life up to their reference
//! time. Replicas on one database should share one half-life.
//!
//! # Layout
//! - [`sqlite`]: [`SqliteStore`], the embedded default (one file, WAL, group commits).
//! - [`mongo`]: [`MongoStore`], for production and several server replicas on one database.

pub mod mongo;
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use gyoza_core::limits::RUN_VIEW_EVENTS;
use gyoza_core::run::EventEntry;
use gyoza_core::time::{self, Timestamp};
use gyoza_core::{
    Capacity, Constraints, DomainError, Heartbeat, HeldRun, OpDefinition, OpRun, OpRunState,
    PendingRun, RunFacts, Worker,
};

pub use crate::queues::DEFAULT_HALF_LIFE_S;
pub use mongo::MongoStore;
pub use sqlite::{SqliteOptions, SqliteStore};

/// The error of a database driver (or of the store's own machinery around it), kept whole as
/// the source of [`StoreError::Backend`]. Shared, so that one failed group commit can answer
/// every write of the group with the same error.
pub type BackendError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A domain rule refused the mutation passed to [`Store::update_run`]; nothing was written.
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// The database failed (I/O, locking, a lost connection); the message is for the log
    /// only, and the driver's error is the source.
    #[error("database error: {0}")]
    Backend(#[source] BackendError),
    /// The database has no space left (a full disk, or its size limit): nothing of the write
    /// was stored. The message is for the log; the API answers 507 with a fixed detail.
    #[error("storage full: {0}")]
    Full(String),
    /// A stored document could not be decoded.
    #[error("stored document for '{id}' is unreadable: {reason}")]
    Corrupt {
        /// Key of the document.
        id: String,
        /// Decoder message.
        reason: String,
    },
}

/// A backend failure and what the store was doing when it happened ("cannot open …").
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
struct Failed {
    context: String,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl StoreError {
    /// A failure of the database (a driver error, or a message for the store's own faults).
    fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Backend(Arc::from(e.into()))
    }

    /// A failure of the database while doing `context`.
    fn backend_while(
        context: impl Into<String>,
        e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Backend(Arc::new(Failed {
            context: context.into(),
            source: e.into(),
        }))
    }

    /// A stored document (or column) `id` that does not decode.
    fn corrupt(id: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            id: id.into(),
            reason: reason.to_string(),
        }
    }
}

/// A document as both stores keep it: JSON, which round-trips every value exactly.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::backend)
}

/// The value of document `id` from its JSON.
fn from_json<T: serde::de::DeserializeOwned>(id: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(id, e))
}

/// The queues' usage as read, or nothing (logged) when it could not be: a claim goes on
/// showing strategies only what the runs held now.
fn usage_or_nothing(usage: Result<Vec<(String, [f64; 3])>, StoreError>) -> Vec<(String, [f64; 3])> {
    usage.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the queues' usage; this claim shows strategies only the runs held");
        Vec::new()
    })
}

/// The scheduling facts of `run` as stores keep them beside the run document: what a claim
/// reads of a run beyond its figures, its [`RunFacts`] and required tags, as one small JSON
/// array `[facts, tags]` (not an object with the tags flattened in: serde's flattening
/// buffers every field, and this is decoded for every run of every claim's window), so that
/// a claim decodes neither run documents nor anything it does not hand to strategies.
fn sched_json(run: &OpRun) -> Result<String, StoreError> {
    to_json(&(RunFacts::of(run), &run.constraints.tags))
}

/// The facts and required tags kept for run `id` by [`sched_json`]; the defaults for a run
/// stored before they were kept (`None`).
fn sched_facts(id: &str, json: Option<&str>) -> Result<(RunFacts, Vec<String>), StoreError> {
    let Some(json) = json else {
        return Ok((RunFacts::default(), Vec::new()));
    };
    from_json(id, json)
}

/// A run from its stored JSON, made whole ([`OpRun::settle`]).
fn run_from_json(id: &str, json: &str) -> Result<OpRun, StoreError> {
    let mut run: OpRun = from_json(id, json)?;
    run.settle();
    Ok(run)
}

/// The events loaded in `run` (those a change appended, or the inline ones of a stored run),
/// each with its attempt and index.
fn loaded_events(run: &OpRun) -> impl Iterator<Item = (u32, u64, &EventEntry)> {
    run.attempts.iter().flat_map(|attempt| {
        let first = attempt.first_event();
        (first..)
            .zip(&attempt.events)
            .map(move |(index, event)| (attempt.attempt, index, event))
    })
}

/// Keeps the first `created_at` of `existing`, the stored definition of the same id and
/// version that `definition` replaces; returns whether `definition` is a new entry.
fn replace_definition(definition: &mut OpDefinition, existing: Option<OpDefinition>) -> bool {
    match existing {
        Some(old) => {
            definition.created_at = old.created_at;
            false
        }
        None => true,
    }
}

/// A mutation of a run, applied inside the store's atomic update. It may be called more than
/// once (optimistic stores retry on conflict), so it must not have side effects.
pub type RunMutation = Box<dyn FnMut(&mut OpRun) -> Result<(), DomainError> + Send + 'static>;

/// A run a claim placed on a worker: its id and the GPU picked for it (see
/// [`Store::assign_runs`]).
pub type Placement = (String, Option<u32>);

/// Whether `constraints` fit `free`, on GPU `gpu` when one was picked.
fn fits(free: &Capacity, constraints: &Constraints, gpu: Option<u32>) -> bool {
    if free.fit(constraints).is_none() {
        return false;
    }
    match (gpu, constraints.vram_mb.filter(|v| *v > 0)) {
        (Some(gpu), Some(vram)) => {
            let vram = i64::try_from(vram).unwrap_or(i64::MAX);
            free.gpus
                .iter()
                .any(|(id, left)| *id == gpu && *left >= vram)
        }
        _ => true,
    }
}

/// Assigns `run` to `worker_id` at `now` if it still fits `free` (the worker's capacity read
/// in the same atomic write), on GPU `gpu` when one was picked. A run that no longer fits is
/// refused like one another claimer took: a rule, so that nothing is written.
fn assign_if_fits(
    run: &mut OpRun,
    worker_id: &str,
    gpu: Option<u32>,
    free: &Capacity,
    now: Timestamp,
) -> Result<(), DomainError> {
    if !fits(free, &run.constraints, gpu) {
        return Err(DomainError::InvalidEvent(format!(
            "OpRun '{}' no longer fits the free capacity of worker '{worker_id}'",
            run.id
        )));
    }
    run.assign(worker_id, now)
}

/// The refusal of a reap whose worker heartbeated since it was found silent.
fn worker_not_silent(worker_id: &str) -> DomainError {
    DomainError::InvalidEvent(format!(
        "worker '{worker_id}' heartbeated since it was found silent; its runs are kept"
    ))
}

/// The answers of a write of `count` runs: each its own, or the write's failure for all.
fn answer_each(
    answers: Result<Vec<Result<Option<OpRun>, StoreError>>, StoreError>,
    count: usize,
) -> Vec<Result<Option<OpRun>, StoreError>> {
    match answers {
        Ok(answers) => answers,
        Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
    }
}

/// The answer to every placement of a claim by a worker the store does not know.
fn unknown_worker(worker_id: &str, count: usize) -> Vec<Result<Option<OpRun>, StoreError>> {
    let refusal = DomainError::InvalidEvent(format!("worker '{worker_id}' is not registered"));
    answer_each(Err(refusal.into()), count)
}

/// What a claim decides from (see [`StoreRead::claim_view`]).
#[derive(Debug, Clone)]
pub struct ClaimView {
    /// The claiming worker.
    pub worker: Worker,
    /// Every run held by any worker.
    pub held: Vec<HeldRun>,
    /// The pending window, best first.
    pub pending: Vec<PendingRun>,
    /// Every known worker, active or not.
    pub workers: Vec<Worker>,
    /// Per queue, the decayed usage of its ended attempts at `now` (see
    /// [`StoreRead::queue_usage`]); empty when it could not be read (a claim goes on without).
    pub usage: Vec<(String, [f64; 3])>,
}

/// What a claim can be refused from without reading the pending window (see
/// [`StoreRead::claim_floor`]).
#[derive(Debug, Clone)]
pub struct ClaimFloor {
    /// The claiming worker.
    pub worker: Worker,
    /// The runs it holds.
    pub held: Vec<HeldRun>,
    /// The least each resource any PENDING run needs; `None` when no run is PENDING.
    pub least: Option<Floor>,
}

/// The least CPU cores and RAM megabytes that some PENDING run needs (not necessarily the
/// same run; runs waiting out a retry backoff included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// CPU cores.
    pub cpu: u64,
    /// RAM megabytes.
    pub ram_mb: u64,
}

/// A mutation applied to several runs (see [`Store::update_runs`]).
pub type SharedRunMutation =
    std::sync::Arc<dyn Fn(&mut OpRun) -> Result<(), DomainError> + Send + Sync + 'static>;

/// A `created_at` bound of a run listing, in microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedBound {
    /// `>=`
    Gte(i64),
    /// `<=`
    Lte(i64),
    /// `>`
    Gt(i64),
    /// `<`
    Lt(i64),
}

/// Which way a run listing pages from its cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cursor {
    /// The first page (newest runs).
    #[default]
    Start,
    /// Runs older than this run id (the next page).
    StartingAfter(String),
    /// Runs newer than this run id (the previous page).
    EndingBefore(String),
}

/// Filters and paging of `GET /runs` (and of the server's own scans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Page size (1–100, checked by the API).
    pub limit: usize,
    /// Where the page starts.
    pub cursor: Cursor,
    /// Only runs in this state.
    pub state: Option<OpRunState>,
    /// Only runs of this definition.
    pub op_definition: Option<String>,
    /// Only runs of this image.
    pub image: Option<String>,
    /// Only runs in this queue.
    pub queue: Option<String>,
    /// Only runs with this label (key, value).
    pub label: Option<(String, String)>,
    /// Creation-time bounds, all of which must hold.
    pub created: Vec<CreatedBound>,
    /// Only PENDING runs whose constraints have a queue timeout (`queue_timeout_s` above 0):
    /// what the timeout check reads, from an index, so that its cost follows the runs that
    /// have a deadline and not the length of the queue. A store may also return PENDING runs
    /// it cannot tell about without reading them (MongoDB documents written before the
    /// field existed); the caller checks each run it gets. Not a `GET /runs` parameter.
    pub queue_timeout: bool,
}

/// One page of runs, newest first.
#[derive(Debug, Clone)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<OpRun>,
    /// Whether more runs match beyond the page, in the direction of travel.
    pub has_more: bool,
}

/// Where a page of an attempt's events starts (indexes in its timeline, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCursor {
    /// The first page: the oldest events.
    Start,
    /// Events with an index above this one, oldest first.
    After(u64),
    /// Events with an index below this one: the page just before it, shown oldest first.
    Before(u64),
}

/// Which events of a run `GET /runs/{id}/events` wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// The attempt; `None` for the current one.
    pub attempt: Option<u32>,
    /// Where the page starts.
    pub cursor: EventCursor,
    /// Page size (1–`MAX_EVENT_PAGE`, checked by the API).
    pub limit: usize,
}

/// One page of an attempt's events, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The run's state.
    pub state: OpRunState,
    /// The attempt.
    pub attempt: u32,
    /// The run's current attempt.
    pub current_attempt: u32,
    /// Events in the attempt's whole timeline.
    pub events_total: u64,
    /// The events with their indexes.
    pub events: Vec<(u64, EventEntry)>,
    /// Whether more lie beyond the page in the direction of travel.
    pub has_more: bool,
}

/// Why a listing could not be answered although the store works.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The run has no such attempt.
    #[error("OpRun '{run_id}' has no attempt {attempt} (its attempts are 1 to {current})")]
    UnknownAttempt {
        /// The run.
        run_id: String,
        /// The attempt asked for.
        attempt: u32,
        /// Its current attempt.
        current: u32,
    },
    /// The cursor names a run that does not exist.
    #[error("{param}: no OpRun with id '{id}'")]
    UnknownCursor {
        /// `starting_after` or `ending_before`.
        param: &'static str,
        /// The id given.
        id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the delivery of a run's events stands (see the module docs): the next event to
/// send and what its receiver has seen so far. Kept in `deliveries` per run, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryProgress {
    /// The attempt of the next event to send (from 1).
    pub attempt: u32,
    /// That event's index in the attempt's timeline.
    pub next: u64,
    /// The attempt's state after the last event sent (each message says the state after its
    /// event); `None` before the attempt's first.
    #[serde(default)]
    pub state: Option<OpRunState>,
    /// Failed tries of the next event so far.
    #[serde(default)]
    pub failures: u32,
    /// When its first failed try was (microseconds since the epoch), for giving up.
    #[serde(default)]
    pub failing_since_us: Option<i64>,
    /// When the next event is to be tried again (microseconds since the epoch), while it is
    /// failing. The run's due time says the same but is not its only keeper: on MongoDB a
    /// run write that loaded the run before the retry was scheduled puts the older due time
    /// back, and the schedule kept here holds the retry off all the same.
    #[serde(default)]
    pub retry_at_us: Option<i64>,
}

impl Default for DeliveryProgress {
    fn default() -> Self {
        Self {
            attempt: 1,
            next: 0,
            state: None,
            failures: 0,
            failing_since_us: None,
            retry_at_us: None,
        }
    }
}

impl DeliveryProgress {
    /// Whether every event of `run` (as loaded: its attempts' `events_total`) lies before
    /// this progress: nothing is left to deliver.
    pub fn covers(&self, run: &OpRun) -> bool {
        run.attempts.iter().all(|attempt| {
            attempt.attempt < self.attempt
                || attempt.events_total == 0
                || (attempt.attempt == self.attempt && attempt.events_total <= self.next)
        })
    }
}

/// A name for one lease (a claim's, or a server process's on run deliveries), unique across
/// processes and leases.
pub(crate) fn lease_owner() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}:{}:{}",
        std::process::id(),
        gyoza_core::time::to_micros(&chrono::Utc::now()),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the write of `run` (loaded for a change, so holding only the events the change
/// appended) leaves events to deliver: its topic is a URL and it appended some.
fn delivers(run: &OpRun) -> bool {
    crate::delivery::is_url(&run.event_delivery.topic) && loaded_events(run).next().is_some()
}

/// The half-life a store accrues queue usage with (see the module docs), in seconds: shared
/// by a store's clones, settable while it serves.
#[derive(Debug, Clone)]
struct UsageHalfLife(Arc<AtomicU32>);

impl Default for UsageHalfLife {
    fn default() -> Self {
        Self(Arc::new(AtomicU32::new(DEFAULT_HALF_LIFE_S)))
    }
}

impl UsageHalfLife {
    /// The half-life now.
    fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets it to `seconds` (at least 1, as the configuration allows).
    fn set(&self, seconds: u32) {
        self.0.store(seconds.max(1), Ordering::Relaxed);
    }
}

/// 2^(−seconds / h): the weight of usage `seconds` old (none is younger than 0).
fn decay(seconds: f64, half_life_s: u32) -> f64 {
    (-seconds.max(0.0) / f64::from(half_life_s.max(1))).exp2()
}

/// Seconds from `from_us` to `to_us` (microseconds since the epoch).
fn seconds_between(from_us: i64, to_us: i64) -> f64 {
    to_us.saturating_sub(from_us) as f64 / 1e6
}

/// A queue's usage as a store keeps it (see the module docs): CPU-core-, RAM-megabyte- and
/// VRAM-megabyte-seconds of its ended attempts, decayed as of `as_of_us` (microseconds since
/// the epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
struct DecayedSums {
    sums: [f64; 3],
    as_of_us: i64,
}

impl DecayedSums {
    /// The sums decayed to `now_us` with half-life `half_life_s`; as they are when `now_us`
    /// is before their reference time (they are not grown).
    fn at(&self, now_us: i64, half_life_s: u32) -> [f64; 3] {
        let weight = decay(seconds_between(self.as_of_us, now_us), half_life_s);
        self.sums.map(|sum| sum * weight)
    }

    /// `stored` (`None`: the queue has none yet) with `accrual` added, decayed with
    /// half-life `half_life_s`: as of the accrual's time, or of the stored reference time
    /// when that is later.
    fn plus(stored: Option<Self>, accrual: &Accrual, half_life_s: u32) -> Self {
        let Some(stored) = stored else {
            return Self {
                sums: accrual.usage,
                as_of_us: accrual.at_us,
            };
        };
        let mut sums = stored.sums;
        if accrual.at_us >= stored.as_of_us {
            let weight = decay(seconds_between(stored.as_of_us, accrual.at_us), half_life_s);
            for (sum, add) in sums.iter_mut().zip(accrual.usage) {
                *sum = *sum * weight + add;
            }
            Self {
                sums,
                as_of_us: accrual.at_us,
            }
        } else {
            let weight = decay(seconds_between(accrual.at_us, stored.as_of_us), half_life_s);
            for (sum, add) in sums.iter_mut().zip(accrual.usage) {
                *sum += add * weight;
            }
            Self {
                sums,
                as_of_us: stored.as_of_us,
            }
        }
    }
}

/// The usage one ended attempt adds to its queue: decayed as of `at_us`, its end.
#[derive(Debug, Clone, PartialEq)]
struct Accrual {
    queue: String,
    usage: [f64; 3],
    at_us: i64,
}

/// What a store notes of a run's held attempt when it reads the run for a change, to tell
/// whether the change ends it (see [`held_attempt`]).
#[derive(Debug, Clone)]
struct HeldAttempt {
    number: u32,
    queue: String,
    /// CPU cores, RAM and VRAM megabytes held.
    amounts: [f64; 3],
    assigned_at: Option<Timestamp>,
}

/// The current attempt of `run` when it is ASSIGNED or RUNNING (held), as a store reads the run
/// before a change.
fn held_attempt(run: &OpRun) -> Option<HeldAttempt> {
    if !matches!(run.state, OpRunState::Assigned | OpRunState::Running) {
        return None;
    }
    let c = &run.constraints;
    Some(HeldAttempt {
        number: run.current_attempt(),
        queue: run.queue.clone(),
        amounts: [
            f64::from(c.cpu.unwrap_or(0)),
            c.ram_mb.unwrap_or(0) as f64,
            c.vram_mb.unwrap_or(0) as f64,
        ],
        assigned_at: run.current().assigned_at,
    })
}

impl HeldAttempt {
    /// The usage this attempt adds to its queue, decayed with half-life `half_life_s`, if
    /// `after` (the run as the change left it) no longer holds it: it is not the current
    /// attempt any more, or is no longer ASSIGNED or RUNNING. Held from its `assigned_at` to
    /// its `finished_at` (or to the run's `updated_at`, the change's time, for an attempt
    /// ended without one). `None` while it is held, and for an attempt without `assigned_at`
    /// or that held nothing.
    fn ended_in(&self, after: &OpRun, half_life_s: u32) -> Option<Accrual> {
        let attempt = after.attempts.iter().find(|a| a.attempt == self.number);
        let still_held = after.current_attempt() == self.number
            && matches!(after.state, OpRunState::Assigned | OpRunState::Running);
        if still_held {
            return None;
        }
        let from = self.assigned_at?;
        let to = attempt
            .and_then(|a| a.finished_at)
            .unwrap_or(after.updated_at);
        let (from_us, to_us) = (time::to_micros(&from), time::to_micros(&to));
        // ∫ 2^(-age / h) over the time held, as of its end.
        let weight = crate::queues::held_weight(seconds_between(from_us, to_us), half_life_s);
        let usage = self.amounts.map(|amount| amount * weight);
        if usage.iter().all(|u| *u <= 0.0) {
            return None;
        }
        Some(Accrual {
            queue: self.queue.clone(),
            usage,
            at_us: to_us,
        })
    }
}

/// The answer of [`Store::lease_delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryLease {
    /// This owner now holds the lease; delivery resumes from the progress.
    Taken(DeliveryProgress),
    /// Another owner holds an unexpired lease.
    Held,
}

/// What the server reads: definitions, runs, the views a claim decides from, workers,
/// counts and logs.
///
/// # Snapshots
/// Every method is one consistent read on its own except where said here:
/// - [`StoreRead::claim_view`]: one read transaction on SQLite, so its four parts see one
///   state of the database. MongoDB uses the default, four queries one after the other with
///   no snapshot between them: a run can move between the held and the pending read. A claim
///   stays correct either way, because each assignment is a compare-and-set on the run
///   (PENDING → ASSIGNED) and refuses when the run moved; the view only steers the strategy.
/// - [`StoreRead::list_runs`]: one read transaction on SQLite (the page and its `has_more`
///   agree); on MongoDB the cursor lookup, the page and `has_more` are separate queries.
/// - [`StoreRead::pending_window`] and [`StoreRead::held_runs`] on MongoDB: one query, but a
///   document written before the scheduling fields existed is read again whole, separately.
/// - The defaults of [`StoreRead::held_runs`] and [`StoreRead::claim_view`] read part by part,
///   never in one snapshot (both stores override `held_runs` with one query).
#[async_trait]
pub trait StoreRead: Send + Sync + 'static {
    /// One version of a definition, or the latest (highest version) when `version` is `None`.
    async fn get_definition(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<OpDefinition>, StoreError>;

    /// Every version of every definition, by id then creation.
    async fn list_definitions(&self) -> Result<Vec<OpDefinition>, StoreError>;

    /// A run with all its attempts, as stored: each attempt with its `events_total` and
    /// only the events the store keeps inline (see the module docs).
    async fn load_run(&self, id: &str) -> Result<Option<OpRun>, StoreError>;

    /// A run with all its attempts and the end of its timeline: the last
    /// [`RUN_VIEW_EVENTS`] events across its attempts (see [`with_recent_events`]).
    async fn get_run(&self, id: &str) -> Result<Option<OpRun>, StoreError> {
        let Some(mut run) = self.load_run(id).await? else {
            return Ok(None);
        };
        with_recent_events(self, &mut run, RUN_VIEW_EVENTS).await?;
        Ok(Some(run))
    }

    /// The events of attempt `attempt` of run `run_id` stored apart from the run, with an
    /// index in `from..to`: the first `limit` of them in index order, or the last `limit`
    /// when `descending` (then in descending order). Events kept inline in the run are not
    /// included (see [`list_events`]).
    async fn event_range(
        &self,
        run_id: &str,
        attempt: u32,
        from: u64,
        to: u64,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<(u64, EventEntry)>, StoreError>;

    /// Bytes the store keeps for the run itself, without the events stored apart: what each
    /// update of it reads and rewrites.
    async fn stored_run_bytes(&self, id: &str) -> Result<Option<u64>, StoreError>;

    /// A page of runs, newest first.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, QueryError>;

    /// Up to `limit` runs claimable at `now`, highest priority first, oldest first within a
    /// priority: only what scheduling needs of them.
    async fn pending_window(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRun>, StoreError>;

    /// The runs whose current attempt is ASSIGNED to or RUNNING on `worker_id`.
    async fn runs_on_worker(&self, worker_id: &str) -> Result<Vec<OpRun>, StoreError>;

    /// Every run ASSIGNED or RUNNING on any worker (what the cluster holds, for strategies
    /// that place runs across workers). The default asks worker by worker; stores override it
    /// with one query.
    async fn held_runs(&self) -> Result<Vec<HeldRun>, StoreError> {
        let mut runs = Vec::new();
        for worker in self.list_workers().await? {
            let held = self.runs_on_worker(&worker.id).await?;
            runs.extend(held.iter().filter_map(HeldRun::of));
        }
        Ok(runs)
    }

    /// What a claim by `worker_id` decides from, the queues' usage decayed with
    /// `half_life_s`: `None` for a worker that never sent a heartbeat. The default reads the
    /// parts one by one (see the trait's snapshot notes); a store may read them in one
    /// snapshot.
    async fn claim_view(
        &self,
        worker_id: &str,
        now: Timestamp,
        window: usize,
        half_life_s: u32,
    ) -> Result<Option<ClaimView>, StoreError> {
        let Some(worker) = self.get_worker(worker_id).await? else {
            return Ok(None);
        };
        Ok(Some(ClaimView {
            worker,
            held: self.held_runs().await?,
            pending: self.pending_window(now, window).await?,
            workers: self.list_workers().await?,
            usage: usage_or_nothing(self.queue_usage(now, half_life_s).await),
        }))
    }

    /// The claiming worker, the runs it holds and the least CPU and RAM a run claimable at
    /// `now` needs: `None` for a worker that never sent a heartbeat. A lower bound is enough (a claim
    /// refused from it would have found nothing); the default reads no bound (every PENDING
    /// run might need nothing), so that only "nothing is PENDING" refuses a claim.
    async fn claim_floor(
        &self,
        worker_id: &str,
        now: Timestamp,
    ) -> Result<Option<ClaimFloor>, StoreError> {
        let Some(worker) = self.get_worker(worker_id).await? else {
            return Ok(None);
        };
        let held = self.runs_on_worker(worker_id).await?;
        let least =
            (!self.pending_window(now, 1).await?.is_empty()).then_some(Floor { cpu: 0, ram_mb: 0 });
        Ok(Some(ClaimFloor {
            worker,
            held: held.iter().filter_map(HeldRun::of).collect(),
            least,
        }))
    }

    /// A worker by id.
    async fn get_worker(&self, id: &str) -> Result<Option<Worker>, StoreError>;

    /// Every worker, active or not, by id.
    async fn list_workers(&self) -> Result<Vec<Worker>, StoreError>;

    /// Workers whose last heartbeat is older than `cutoff`.
    async fn stale_workers(&self, cutoff: Timestamp) -> Result<Vec<Worker>, StoreError>;

    /// How many runs are in each state (states without runs may be left out).
    async fn count_runs_by_state(&self) -> Result<Vec<(OpRunState, u64)>, StoreError>;

    /// How many runs are PENDING in each queue (runs waiting out a retry backoff included;
    /// a run stored before queues counts in the default one), by queue name; queues without
    /// a PENDING run are left out. One grouped count, not a read of the runs: `GET /queues`
    /// shows every queue's count, beyond the claim's window.
    async fn count_pending_by_queue(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// The kept tail of an attempt's log, and how many bytes were ever appended to it.
    async fn get_log(&self, run_id: &str, attempt: u32) -> Result<Option<LogTail>, StoreError>;

    /// Up to `limit` runs with events to deliver that are due at `now_us` (microseconds since
    /// the epoch, wall-clock time), the longest due first.
    async fn due_deliveries(&self, now_us: i64, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Per queue, the usage of its ended attempts over the decaying window, decayed to `now`
    /// with half-life `half_life_s`: CPU-core-, RAM-megabyte- and VRAM-megabyte-seconds (see
    /// the module docs), by queue name. Queues none of whose attempts ended (holding
    /// anything) are left out. The default keeps none and answers none: a store that keeps
    /// usage overrides it (both stores do; a wrapper in tests may not).
    async fn queue_usage(
        &self,
        now: Timestamp,
        half_life_s: u32,
    ) -> Result<Vec<(String, [f64; 3])>, StoreError> {
        let _ = (now, half_life_s);
        Ok(Vec::new())
    }
}

/// Gives each attempt of `run` (loaded by [`StoreRead::load_run`]) the events before its
/// loaded ones, newest attempts first, until the run shows its last `limit` events or all of
/// them (an attempt that already holds more inline keeps them).
pub async fn with_recent_events<S: StoreRead + ?Sized>(
    store: &S,
    run: &mut OpRun,
    limit: usize,
) -> Result<(), StoreError> {
    let mut shown = 0usize;
    for attempt in run.attempts.iter_mut().rev() {
        shown = shown.saturating_add(attempt.events.len());
        if shown >= limit {
            break;
        }
        let first = attempt.first_event();
        if first == 0 {
            continue;
        }
        let mut older = store
            .event_range(&run.id, attempt.attempt, 0, first, limit - shown, true)
            .await?;
        shown = shown.saturating_add(older.len());
        older.reverse();
        let mut events: Vec<EventEntry> = older.into_iter().map(|(_, e)| e).collect();
        events.append(&mut attempt.events);
        attempt.events = events;
    }
    Ok(())
}

/// One page of a run's events ([`EventQuery`]): the events stored apart and those kept inline
/// in the run, by index, only below the `events_total` of the run as loaded. `Ok(None)` for
/// an unknown run.
pub async fn list_events<S: StoreRead + ?Sized>(
    store: &S,
    run_id: &str,
    query: &EventQuery,
) -> Result<Option<EventPage>, QueryError> {
    let Some(run) = store.load_run(run_id).await? else {
        return Ok(None);
    };
    let current = run.current_attempt();
    let number = query.attempt.unwrap_or(current);
    let Some(attempt) = run.attempts.iter().find(|a| a.attempt == number) else {
        return Err(QueryError::UnknownAttempt {
            run_id: run_id.to_owned(),
            attempt: number,
            current,
        });
    };
    let (total, first) = (attempt.events_total, attempt.first_event());
    let inline = (first..).zip(attempt.events.iter().cloned());
    // One more than the page, to tell whether there is more.
    let want = query.limit.saturating_add(1);
    let mut events: Vec<(u64, EventEntry)> = match query.cursor {
        EventCursor::Start | EventCursor::After(_) => {
            let from = match query.cursor {
                EventCursor::After(after) => after.saturating_add(1),
                _ => 0,
            };
            let mut events = if from < first {
                store
                    .event_range(run_id, number, from, first, want, false)
                    .await?
            } else {
                Vec::new()
            };
            let left = want.saturating_sub(events.len());
            events.extend(inline.filter(|(i, _)| *i >= from).take(left));
            events
        }
        EventCursor::Before(before) => {
            let to = before.min(total);
            let mut events: Vec<(u64, EventEntry)> =
                inline.filter(|(i, _)| *i < to).collect::<Vec<_>>();
            events.reverse();
            events.truncate(want);
            let left = want.saturating_sub(events.len());
            if left > 0 && first > 0 {
                let end = to.min(first);
                events.extend(
                    store
                        .event_range(run_id, number, 0, end, left, true)
                        .await?,
                );
            }
            events
        }
    };
    let has_more = events.len() > query.limit;
    events.truncate(query.limit);
    if matches!(query.cursor, EventCursor::Before(_)) {
        events.reverse();
    }
    Ok(Some(EventPage {
        state: run.state,
        attempt: number,
        current_attempt: current,
        events_total: total,
        events,
        has_more,
    }))
}

/// Everything the server persists: the reads of [`StoreRead`] and the writes.
#[async_trait]
pub trait Store: StoreRead {
    /// Stores a definition; same id + version replaces (keeping the first `created_at`), a new
    /// version is a new entry. Returns the stored definition and whether it is new.
    async fn upsert_definition(
        &self,
        definition: OpDefinition,
    ) -> Result<(OpDefinition, bool), StoreError>;

    /// Stores a new run.
    async fn insert_run(&self, run: &OpRun) -> Result<(), StoreError>;

    /// Stores new runs, in order, all or none: on an error none of them is stored. The
    /// default inserts them one by one and deletes those it stored when one fails.
    async fn insert_runs(&self, runs: &[OpRun]) -> Result<(), StoreError> {
        for (stored, run) in runs.iter().enumerate() {
            if let Err(e) = self.insert_run(run).await {
                for earlier in &runs[..stored] {
                    if let Err(undo) = self.delete_run(&earlier.id).await {
                        tracing::error!(run_id = %earlier.id, error = %undo, "cannot take back a run of a failed batch");
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes a run that nothing else has seen yet (a failed batch's); `Ok` when absent.
    async fn delete_run(&self, id: &str) -> Result<(), StoreError>;

    /// Applies `mutation` to a run atomically and returns the result; `Ok(None)` when there is
    /// no such run, `Err(StoreError::Rule)` when the mutation refused (nothing is written).
    async fn update_run(
        &self,
        id: &str,
        mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError>;

    /// Applies `mutation` to each of `ids`, each run atomically on its own (one refusal does
    /// not stop the others); the answers are in the order of `ids`. The default updates them
    /// one by one; a store may write them in one transaction.
    async fn update_runs(
        &self,
        ids: Vec<String>,
        mutation: SharedRunMutation,
    ) -> Vec<Result<Option<OpRun>, StoreError>> {
        let mut answers = Vec::with_capacity(ids.len());
        for id in ids {
            let mutation = mutation.clone();
            answers.push(
                self.update_run(&id, Box::new(move |run| mutation(run)))
                    .await,
            );
        }
        answers
    }

    /// Assigns each placed run to `worker_id` at `now`, in order, if it is still PENDING and
    /// still fits the worker's capacity as the store holds it at write time (its resources
    /// less every run it holds then, including those assigned just before in this call).
    /// The capacity check is atomic with the assignments, so concurrent claims for one worker
    /// (from this process or another replica) never overcommit it. A run that is gone answers
    /// `Ok(None)`; one that moved or no longer fits answers `Err(StoreError::Rule)` (a lost
    /// race); the answers are in the order of `placements`.
    async fn assign_runs(
        &self,
        worker_id: &str,
        placements: Vec<Placement>,
        now: Timestamp,
    ) -> Vec<Result<Option<OpRun>, StoreError>>;

    /// Applies `mutation` to run `id` only if worker `worker_id` is still silent (its last
    /// heartbeat older than `cutoff`) when the run is written: the reaper's compare-and-set,
    /// so that a worker that heartbeated after the reaper read it keeps its runs. Answers
    /// `Err(StoreError::Rule)` when the worker is no longer silent. The default re-reads the
    /// worker just before the run's own atomic update; a store may check both in one write.
    async fn update_run_if_silent(
        &self,
        id: &str,
        worker_id: &str,
        cutoff: Timestamp,
        mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        if let Some(worker) = self.get_worker(worker_id).await? {
            if worker.last_heartbeat_at >= cutoff {
                return Err(worker_not_silent(worker_id).into());
            }
        }
        self.update_run(id, mutation).await
    }

    /// Registers or refreshes a worker from a heartbeat received at `now`, merged into the
    /// stored worker by [`Worker::from_heartbeat`].
    async fn heartbeat(&self, heartbeat: Heartbeat, now: Timestamp) -> Result<Worker, StoreError>;

    /// Appends `text` to the log of attempt `attempt` of run `run_id`, keeping only the last
    /// `cap` bytes (cut at a line start where possible).
    async fn append_log(
        &self,
        run_id: &str,
        attempt: u32,
        text: &str,
        cap: usize,
    ) -> Result<(), StoreError>;

    /// Takes the lease on run `run_id`'s delivery for `owner` until `until_us` if nobody
    /// holds it, it expired (before `now_us`) or `owner` has it already; answers the saved
    /// progress (the start for a run never delivered).
    async fn lease_delivery(
        &self,
        run_id: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
    ) -> Result<DeliveryLease, StoreError>;

    /// Saves `progress` of run `run_id`'s delivery and renews `owner`'s lease until
    /// `until_us`; `false` when `owner` no longer holds it (then nothing is saved).
    async fn save_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        until_us: i64,
    ) -> Result<bool, StoreError>;

    /// Saves `progress` and gives `owner`'s lease back. With `retry_at_us`, the run's
    /// delivery is due again then (a failed try). Without, the run's mark is cleared if
    /// `progress` covers its whole timeline as stored now, checked in one atomic step with
    /// the clearing; answers whether it was cleared (`false`: events were appended since,
    /// deliver again). A lease `owner` lost saves nothing and answers `false`.
    async fn release_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        retry_at_us: Option<i64>,
    ) -> Result<bool, StoreError>;
}

/// The kept end of an attempt's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTail {
    /// The last bytes of the log.
    pub text: String,
    /// Bytes ever appended (so a follower can tell what is new and what was dropped).
    pub total_bytes: u64,
}

impl LogTail {
    /// Appends `more` and drops the oldest bytes beyond `cap`, at a line start when there is
    /// one in the part kept, else at a character boundary.
    pub fn append(&mut self, more: &str, cap: usize) {
        self.text.push_str(more);
        self.total_bytes += more.len() as u64;
        if self.text.len() > cap {
            let mut cut = self.text.len() - cap;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            if let Some(newline) = self.text[cut..].find('\n') {
                if newline + 1 < self.text.len() - cut {
                    cut += newline + 1;
                }
            }
            self.text.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Accrual, DecayedSums, LogTail, held_attempt};
    use gyoza_core::run::NewRun;
    use gyoza_core::time::{from_micros, to_micros};
    use gyoza_core::{Constraints, EventType, OpRun};

    /// `a` and `b` agree to 1e-9 relative.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn decayed_sums_combine_in_either_order() {
        let h = 100;
        let accrual = |usage: f64, at_s: i64| Accrual {
            queue: "q".into(),
            usage: [usage, 0.0, 2.0 * usage],
            at_us: at_s * 1_000_000,
        };
        let first = DecayedSums::plus(None, &accrual(8.0, 1_000), h);
        assert_eq!(first.as_of_us, 1_000_000_000);
        // Later: the stored sums decay to it (one half-life), and it becomes the reference.
        let later = DecayedSums::plus(Some(first), &accrual(1.0, 1_100), h);
        assert_eq!(later.as_of_us, 1_100_000_000);
        assert!(close(later.sums[0], 8.0 / 2.0 + 1.0), "{later:?}");
        assert!(close(later.sums[2], 16.0 / 2.0 + 2.0), "{later:?}");
        // Earlier than the reference: the accrual decays to it instead; the same sums as in
        // the other order.
        let late_write = DecayedSums::plus(
            Some(DecayedSums::plus(None, &accrual(1.0, 1_100), h)),
            &accrual(8.0, 1_000),
            h,
        );
        assert_eq!(late_write.as_of_us, later.as_of_us);
        for (a, b) in late_write.sums.iter().zip(later.sums) {
            assert!(close(*a, b), "{late_write:?} {later:?}");
        }
        // Read later, decayed; read before the reference, not grown.
        let read = later.at(1_300_000_000, h);
        assert!(close(read[0], 5.0 / 4.0), "{read:?}");
        assert_eq!(later.at(0, h), later.sums);
    }

    #[test]
    fn only_a_change_that_ends_a_held_attempt_accrues() {
        let t = |s: i64| from_micros(1_767_225_600_000_000 + s * 1_000_000);
        let mut run = OpRun::new(
            NewRun {
                image: "img".into(),
                queue: "q".into(),
                constraints: Constraints {
                    cpu: Some(2),
                    ram_mb: Some(1024),
                    ..Constraints::default()
                },
                ..NewRun::default()
            },
            t(0),
        )
        .unwrap();
        assert!(held_attempt(&run).is_none(), "a pending run holds nothing");
        run.assign("w1", t(0)).unwrap();
        let held = held_attempt(&run).unwrap();
        run.add_event(EventType::Started, "".into(), Default::default(), t(1))
            .unwrap();
        assert_eq!(held.ended_in(&run, 3_600), None, "still held");
        run.add_event(EventType::Completed, "".into(), Default::default(), t(100))
            .unwrap();
        let ended = held.ended_in(&run, 3_600).unwrap();
        let weight = 3_600.0 / std::f64::consts::LN_2 * (1.0 - (-100.0_f64 / 3_600.0).exp2());
        assert_eq!(ended.queue, "q");
        assert_eq!(ended.at_us, to_micros(&t(100)));
        assert!(close(ended.usage[0], 2.0 * weight));
        assert!(close(ended.usage[1], 1024.0 * weight));
        assert_eq!(ended.usage[2], 0.0);
    }

    #[test]
    fn a_log_tail_keeps_the_last_bytes_from_a_line_start() {
        let mut tail = LogTail::default();
        tail.append("alpha\nbravo\n", 100);
        tail.append("charlie\ndelta\n", 16);
        assert_eq!(tail.text, "charlie\ndelta\n");
        assert_eq!(tail.total_bytes, 26);
        // No line start in the kept part: cut at a character boundary instead.
        let mut tail = LogTail::default();
        tail.append("ééééé", 5);
        assert_eq!(tail.text, "éé");
        assert_eq!(tail.total_bytes, 10);
    }
}
