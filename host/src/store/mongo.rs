//! The MongoDB store, for production and for several server replicas on one database.
//!
//! Each run is one document: the columns that queries filter and sort on, a revision number,
//! and the run aggregate (with its attempts, so that an attempt is always loaded with its run
//! and changes with it atomically) as JSON, which round-trips every value exactly.
//! Every change of a run is a compare-and-set on its revision (`replaceOne` with
//! `{_id, rev}` in the filter): a claim that read a PENDING run only succeeds if nobody
//! changed the run since, so across any number of server replicas a run is assigned once.
//!
//! A claim ([`Store::assign_runs`]) must also check the worker's capacity atomically with
//! its assignments, which a compare-and-set on each run cannot: two claimers would each see
//! the same free capacity and fill it twice. Multi-document transactions need a replica set
//! (a standalone `mongod` has none, and the MongoDB-wire test server cannot be assumed to
//! offer them), so a claim
//! takes a lease on the worker instead: a document in `claim_leases` keyed by the worker id,
//! created with `insertOne` (the unique `_id` lets one claimer in; a claim deletes its lease
//! when done, so this one write is the usual cost) or, when that insert meets a lease whose
//! `until_us` passed, taken over by a compare-and-set `updateOne({_id, until_us < now})` (or the
//! owner's own, which for a claim's unique owner never matches).
//! Under the lease the claim reads the worker, the runs it holds and the runs to assign fresh
//! (three `find`s sent together), assigns in memory, in order, what still fits, moves the
//! inline events of those runs in one `insert`, sends each run's compare-and-set at once (a
//! run that changed since it was read is read again and re-checked, as any update), and
//! deletes the lease: at most five round trips whatever the claim assigns. The lease
//! expires after [`CLAIM_LEASE`] (wall clock), so a replica that crashed (or a claim dropped
//! midway) holding one delays that worker's claims by at most that long; claims of other
//! workers never wait. A claim's writes take well under a second (below), far less than the
//! lease, which is what keeps an expired lease from being taken over while its holder still
//! writes.
//!
//! Measured on the MongoDB-wire test server (one write ≈ 20 ms there), when each run was
//! still read and written one after the other: a one-run claim's write went from ≈ 21 ms
//! (the run's compare-and-set alone) to ≈ 90–130 ms with the lease, a five-run claim
//! ≈ 145–200 ms: the lease is paid once per claim, not per run (BENCHMARKS.md has the claim
//! on the faster Rust wire server, before and after the reads and writes went together).
//! That is the price of the guarantee without transactions; claims for one worker are
//! serialised, which is the point, and different workers' claims do not contend.
//!
//! The reaper's [`Store::update_run_if_silent`] uses the trait's default: it re-reads the
//! worker just before the run's compare-and-set, which narrows the window in which a worker
//! that came back loses its attempt to one round trip (a heartbeat does not take the lease).
//!
//! Events live in the `events` collection, one document per event (`_id`
//! `<run>:<attempt>:<index>`, indexed on run, attempt and index); the run document keeps the
//! events of its last change inline until the next update moves them there, just before its
//! compare-and-set (see the store's module docs: the run document is the commit point, and
//! the insert is idempotent). A run document written before events lived apart holds its
//! whole timeline inline: readers see it as it is, and its first update moves it out. Two
//! replicas doing that at once insert the same documents (a duplicate is skipped) and one
//! compare-and-set wins, so nothing is lost or doubled; there is no start-up migration.
//!
//! The delivery outbox (see the store's module docs): a run document carries `deliver_at_us`
//! (null when nothing is left to deliver), set by the compare-and-set that appends the
//! events, so it commits with them. A delivery postpones or clears it with an `updateOne`
//! that leaves `rev` alone (the run's own changes never conflict with delivery); the clearing
//! is a compare-and-set on the `rev` whose timeline the delivery covered, so a change since
//! keeps the mark. An update that read the document before a postponement or a clearing
//! writes its older `deliver_at_us` back: at worst one more look that finds nothing new or
//! a retry not yet due (the progress keeps the retry time, and the look only puts the run
//! off again), never a lost mark. `deliveries` holds each run's progress and lease,
//! taken like a claim lease (insert, or a compare-and-set on an expired or own lease).
//!
//! Queue usage (see the store's module docs) lives in `queue_usage`, one document per queue
//! (`_id` the queue): the three decayed sums, their reference time (`as_of_us`) and a revision.
//! The run's compare-and-set is the commit point of the attempt's end; the update that won it,
//! and only that one, then adds the attempt's usage by a compare-and-set of its own on the
//! queue's document (read, combine, `replaceOne` with `{_id, rev}`; an `insertOne` for a
//! queue's first), retried on conflict like a run update. The combination is not a sum (the
//! stored sums decay to the attempt's end first), so a plain `$inc` cannot do it, and without
//! multi-document transactions the two writes cannot be one: **a crash between them, or a
//! usage write that fails (logged as a warning), loses that attempt's usage**, while the run's
//! change stands. A usage write is never repeated, so nothing is counted twice.
//!
//! Collections: `definitions` (unique on id + version), `runs`, `events`, `workers`,
//! `run_logs`, `claim_leases`, `deliveries`, `queue_usage`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use gyoza_core::backoff::Backoff;
use gyoza_core::definition::compare_versions;
use gyoza_core::run::EventEntry;
use gyoza_core::time::{Timestamp, from_micros, to_micros};
use gyoza_core::{
    Capacity, Constraints, Heartbeat, HeldRun, OpDefinition, OpRun, OpRunState, PendingRun,
    RunFacts, Worker,
};
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{
    Accrual, ClaimFloor, ClaimView, CreatedBound, Cursor, DecayedSums, DeliveryLease,
    DeliveryProgress, Floor, LogTail, Placement, QueryError, RunMutation, RunPage, RunQuery, Store,
    StoreError, StoreRead, UsageHalfLife, answer_each, assign_if_fits, from_json, held_attempt,
    replace_definition, to_json, unknown_worker,
};

/// How often an update retries after losing a compare-and-set to a concurrent writer.
const MAX_CONFLICT_RETRIES: usize = 100;

/// How long a claim lease on a worker lasts (see the module docs).
pub const CLAIM_LEASE: Duration = Duration::from_secs(10);

/// How long a claim waits for another claimer's lease on the same worker before it fails.
const CLAIM_LEASE_WAIT: Duration = Duration::from_secs(15);

/// The waits between tries to take a held lease.
const LEASE_RETRY: Backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));

/// The MongoDB [`Store`].
#[derive(Clone)]
pub struct MongoStore {
    database: Database,
    definitions: Collection<Document>,
    runs: Collection<Document>,
    events: Collection<Document>,
    workers: Collection<Document>,
    logs: Collection<Document>,
    leases: Collection<Document>,
    deliveries: Collection<Document>,
    queue_usage: Collection<Document>,
    /// The half-life run updates accrue queue usage with (shared by the clones).
    usage_half_life: UsageHalfLife,
}

/// How [`try_lease`] went.
#[derive(Debug, PartialEq, Eq)]
enum Took {
    /// There was no lease: `fresh` is it now.
    Fresh,
    /// The lease had expired or was the owner's own: the owner has it now.
    Over,
    /// Another owner holds it.
    No,
}

/// Tries once to take a lease in `leases` for `owner`: inserts `fresh` (the lease document,
/// with its `_id` and `owner`'s `until_us`) when there is none, else takes the stored one
/// over, with the same `until_us`, if it expired before `now_us` or `owner` has it already.
async fn try_lease(
    leases: &Collection<Document>,
    owner: &str,
    now_us: i64,
    fresh: Document,
) -> Result<Took, StoreError> {
    let id = fresh.get("_id").cloned().unwrap_or(Bson::Null);
    let until_us = fresh.get_i64("until_us").map_err(StoreError::backend)?;
    match leases.insert_one(fresh).await {
        Ok(_) => return Ok(Took::Fresh),
        Err(e) if is_duplicate_key(&e) => {}
        Err(e) => return Err(e.into()),
    }
    let free = doc! {"_id": id, "$or": [{"owner": owner}, {"until_us": {"$lt": now_us}}]};
    let take = doc! {"$set": {"owner": owner, "until_us": until_us}};
    if leases.update_one(free, take).await?.matched_count == 1 {
        Ok(Took::Over)
    } else {
        Ok(Took::No)
    }
}

/// Whether `e` is a write refused for a duplicate key (code 11000).
fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    matches!(
        e.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000
    )
}

/// Whether `e` failed only for duplicate keys: an `insert_many` of documents some of which
/// are already there.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == 11000))
        }
        _ => is_duplicate_key(e),
    }
}

/// The URL without credentials, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The value a document keeps as JSON in its `doc` field.
fn decode<T: serde::de::DeserializeOwned>(document: &Document) -> Result<T, StoreError> {
    let id = document
        .get("_id")
        .map(ToString::to_string)
        .unwrap_or_default();
    let json = document
        .get_str("doc")
        .map_err(|e| StoreError::corrupt(&id, e))?;
    from_json(&id, json)
}

fn optional(value: Option<impl Into<Bson>>) -> Bson {
    value.map_or(Bson::Null, Into::into)
}

/// The document of `run` at revision `rev`, due for delivery at `deliver_at_us` (`None`:
/// nothing to deliver).
fn run_document(run: &OpRun, rev: i64, deliver_at_us: Option<i64>) -> Result<Document, StoreError> {
    Ok(doc! {
        "_id": &run.id,
        "state": run.state.as_str(),
        "priority": run.priority,
        "created_us": to_micros(&run.created_at),
        "available_us": optional(run.available_at.as_ref().map(to_micros)),
        "op_definition": optional(run.op_definition.clone()),
        "image": &run.image,
        "queue": &run.queue,
        // Labels as `key:value` strings (a key holds no `:`): a label filter is one equality
        // on an array, whatever characters the key holds (a `.` would nest a field path).
        "label_pairs": run.labels.iter().map(|(k, v)| label_pair(k, v)).collect::<Vec<_>>(),
        "worker_id": optional(run.worker_id().map(str::to_owned)),
        "rev": rev,
        "deliver_at_us": optional(deliver_at_us),
        // 0 for none, never null: a document written before the field has none, and the
        // timeout check's filter reads those as "may have one" (see `run_filter`).
        "queue_timeout_s": run
            .constraints
            .queue_timeout()
            .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX)),
        "sched": {
            "cpu": optional(run.constraints.cpu.map(i64::from)),
            "ram_mb": optional(run.constraints.ram_mb.map(|v| v as i64)),
            "vram_mb": optional(run.constraints.vram_mb.map(|v| v as i64)),
            "gpu_id": optional(run.current().execution_summary.gpu_id.map(i64::from)),
            "facts": super::sched_json(run)?,
        },
        // The events loaded in `run` stay inline (those its last change appended).
        "doc": to_json(&run.stored(true))?,
    })
}

/// The documents of the events `run` keeps inline, for the `events` collection.
fn event_documents(run: &OpRun) -> Result<Vec<Document>, StoreError> {
    let mut documents = Vec::new();
    for (attempt, index, event) in super::loaded_events(run) {
        let index = i64::try_from(index).map_err(StoreError::backend)?;
        documents.push(doc! {
            "_id": format!("{}:{attempt}:{index}", run.id),
            "run_id": &run.id,
            "attempt": i64::from(attempt),
            "seq": index,
            "doc": to_json(event)?,
        });
    }
    Ok(documents)
}

/// A run document as read for a change: the run, its revision and its delivery mark.
struct Read {
    run: OpRun,
    rev: i64,
    deliver_at: Option<i64>,
}

/// A change made in memory, ready for its compare-and-set.
struct Change {
    /// The run as the change left it, without the events its last change left inline
    /// (moved to the `events` collection before the write).
    run: OpRun,
    rev: i64,
    deliver_at: Option<i64>,
}

impl Read {
    fn of(document: &Document) -> Result<Self, StoreError> {
        Ok(Self {
            rev: document.get_i64("rev").map_err(StoreError::backend)?,
            deliver_at: document.get_i64("deliver_at_us").ok(),
            run: decode_run(document)?,
        })
    }

    /// `mutation` applied to the run, its inline events dropped first: the caller has moved
    /// them to the `events` collection, or does before the write.
    fn changed(
        self,
        mutation: &mut dyn FnMut(&mut OpRun) -> Result<(), gyoza_core::DomainError>,
    ) -> Result<Change, StoreError> {
        let mut run = self.run;
        for attempt in &mut run.attempts {
            attempt.events.clear();
        }
        mutation(&mut run)?;
        // Due at once when this change appends events to deliver, unless a failed try
        // already said when.
        let deliver_at = self.deliver_at.or(super::delivers(&run).then_some(0));
        Ok(Change {
            run,
            rev: self.rev,
            deliver_at,
        })
    }
}

/// The sums a `queue_usage` document holds.
fn decode_sums(document: &Document) -> Result<DecayedSums, StoreError> {
    let id = document.get_str("_id").unwrap_or_default();
    let number = |key: &str| match document.get(key) {
        Some(Bson::Double(v)) => Ok(*v),
        Some(Bson::Int64(v)) => Ok(*v as f64),
        Some(Bson::Int32(v)) => Ok(f64::from(*v)),
        _ => Err(StoreError::corrupt(
            id,
            format!("queue usage without a number '{key}'"),
        )),
    };
    Ok(DecayedSums {
        sums: [number("cpu")?, number("ram_mb")?, number("vram_mb")?],
        as_of_us: document
            .get_i64("as_of_us")
            .map_err(|e| StoreError::corrupt(id, e))?,
    })
}

/// The `queue_usage` document of queue `queue` holding `sums`, at revision `rev`.
fn usage_document(queue: &str, sums: &DecayedSums, rev: i64) -> Document {
    doc! {
        "_id": queue,
        "cpu": sums.sums[0],
        "ram_mb": sums.sums[1],
        "vram_mb": sums.sums[2],
        "as_of_us": sums.as_of_us,
        "rev": rev,
    }
}

/// The run a run document holds, made whole ([`OpRun::settle`]).
fn decode_run(document: &Document) -> Result<OpRun, StoreError> {
    let id = document.get_str("_id").unwrap_or_default();
    let json = document
        .get_str("doc")
        .map_err(|e| StoreError::corrupt(id, e))?;
    super::run_from_json(id, json)
}

/// What scheduling reads of a run: its `sched` fields, so that a claim does not decode run
/// documents. `None` for a document written before those fields existed (or before they held
/// the run's facts), which must be read whole.
fn sched_fields(document: &Document) -> Option<(Constraints, Option<u32>, RunFacts)> {
    let sched = document.get_document("sched").ok()?;
    let id = document.get_str("_id").ok()?;
    let (facts, tags) = super::sched_facts(id, Some(sched.get_str("facts").ok()?)).ok()?;
    let number = |key: &str| match sched.get(key) {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        _ => None,
    };
    Some((
        Constraints {
            cpu: number("cpu").map(|v| v as u32),
            ram_mb: number("ram_mb").map(|v| v as u64),
            vram_mb: number("vram_mb").map(|v| v as u64),
            tags,
            ..Constraints::default()
        },
        number("gpu_id").map(|v| v as u32),
        facts,
    ))
}

/// The pending view of a run document from its columns; `None` for a document written
/// before the `sched` fields existed, which must be read whole.
fn pending_run(document: &Document) -> Option<PendingRun> {
    let (constraints, _, facts) = sched_fields(document)?;
    Some(PendingRun {
        id: document.get_str("_id").ok()?.to_owned(),
        priority: document.get_i64("priority").ok()?,
        created_at: from_micros(document.get_i64("created_us").ok()?),
        constraints,
        facts,
        only_gpus: None,
    })
}

/// The held view of a run document from its columns; `None` as for [`pending_run`].
fn held_run(document: &Document) -> Option<HeldRun> {
    let (constraints, gpu_id, facts) = sched_fields(document)?;
    Some(HeldRun {
        id: document.get_str("_id").ok()?.to_owned(),
        worker_id: document.get_str("worker_id").ok()?.to_owned(),
        constraints,
        gpu_id,
        priority: document.get_i64("priority").ok()?,
        facts,
    })
}

async fn collect(cursor: mongodb::Cursor<Document>) -> Result<Vec<Document>, StoreError> {
    cursor.try_collect().await.map_err(StoreError::backend)
}

/// The value of the one document of `collection` that `filter` selects, if any.
async fn find_value<T: serde::de::DeserializeOwned>(
    collection: &Collection<Document>,
    filter: Document,
) -> Result<Option<T>, StoreError> {
    let found = collection.find_one(filter).await?;
    found.as_ref().map(decode).transpose()
}

/// The values of every document of `collection` that `filter` selects, in `sort` order.
async fn find_values<T: serde::de::DeserializeOwned>(
    collection: &Collection<Document>,
    filter: Document,
    sort: Option<Document>,
) -> Result<Vec<T>, StoreError> {
    let mut find = collection.find(filter);
    if let Some(sort) = sort {
        find = find.sort(sort);
    }
    let cursor = find.await?;
    collect(cursor).await?.iter().map(decode).collect()
}

impl From<mongodb::error::Error> for StoreError {
    /// A failure of the MongoDB driver, kept as the source.
    fn from(e: mongodb::error::Error) -> Self {
        Self::backend(e)
    }
}

impl From<mongodb::error::Error> for QueryError {
    fn from(e: mongodb::error::Error) -> Self {
        Self::Store(e.into())
    }
}

impl MongoStore {
    /// Connects to `url`, uses database `database`, checks that the server answers and
    /// creates the indexes the queries need.
    pub async fn connect(url: &str, database: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let options = ClientOptions::parse(url)
            .await
            .map_err(|e| StoreError::backend_while(format!("invalid MongoDB URL {shown}"), e))?;
        Self::connect_with(options, &shown, database).await
    }

    /// [`MongoStore::connect`] with driver options of the caller's (tests watch the commands
    /// a store sends through `command_event_handler`); `shown` names the server in errors.
    pub async fn connect_with(
        mut options: ClientOptions,
        shown: &str,
        database: &str,
    ) -> Result<Self, StoreError> {
        options.app_name.get_or_insert_with(|| "gyoza".to_owned());
        // Fail start-up within seconds, not the driver's default 30 s, when nothing answers.
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(10));
        let client = Client::with_options(options)?;
        let database = client.database(database);
        database.run_command(doc! {"ping": 1}).await.map_err(|e| {
            StoreError::backend_while(format!("cannot reach MongoDB at {shown}"), e)
        })?;
        let store = Self {
            definitions: database.collection("definitions"),
            runs: database.collection("runs"),
            events: database.collection("events"),
            workers: database.collection("workers"),
            logs: database.collection("run_logs"),
            leases: database.collection("claim_leases"),
            deliveries: database.collection("deliveries"),
            queue_usage: database.collection("queue_usage"),
            usage_half_life: UsageHalfLife::default(),
            database,
        };
        store.create_indexes().await?;
        Ok(store)
    }

    /// The database in use.
    pub fn database_name(&self) -> &str {
        self.database.name()
    }

    /// Sets the half-life, in seconds (at least 1), with which run updates from now on accrue
    /// queue usage (see the store's module docs; [`super::DEFAULT_HALF_LIFE_S`] until set).
    /// The usage stored so far is kept as it is. Every clone of this store shares it.
    pub fn set_usage_half_life(&self, seconds: u32) {
        self.usage_half_life.set(seconds);
    }

    /// The half-life, in seconds, with which run updates accrue queue usage.
    pub fn usage_half_life(&self) -> u32 {
        self.usage_half_life.get()
    }

    /// Adds `accrual` to its queue's `queue_usage` document, decayed with half-life
    /// `half_life_s`, by a compare-and-set on the document's revision (see the module docs).
    async fn accrue(&self, accrual: &Accrual, half_life_s: u32) -> Result<(), StoreError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let key = doc! {"_id": &accrual.queue};
            match self.queue_usage.find_one(key.clone()).await? {
                None => {
                    let sums = DecayedSums::plus(None, accrual, half_life_s);
                    match self
                        .queue_usage
                        .insert_one(usage_document(&accrual.queue, &sums, 0))
                        .await
                    {
                        Ok(_) => return Ok(()),
                        // Another writer added the queue's first: combine with it.
                        Err(e) if is_duplicate_key(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(document) => {
                    let rev = document.get_i64("rev").map_err(StoreError::backend)?;
                    let sums =
                        DecayedSums::plus(Some(decode_sums(&document)?), accrual, half_life_s);
                    let mut filter = key;
                    filter.insert("rev", rev);
                    let replaced = self
                        .queue_usage
                        .replace_one(filter, usage_document(&accrual.queue, &sums, rev + 1))
                        .await?;
                    if replaced.matched_count == 1 {
                        return Ok(());
                    }
                }
            }
            // Someone changed the queue's usage since we read it: read it again.
        }
        Err(StoreError::backend(format!(
            "the usage of queue '{}' changed concurrently {MAX_CONFLICT_RETRIES} times in a row; giving up",
            accrual.queue
        )))
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        self.definitions
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"id": 1, "version": 1})
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        self.runs
            .create_indexes([
                // The pending window: claimable runs by priority, oldest first.
                index(doc! {"state": 1, "priority": -1, "created_us": 1, "_id": 1}),
                // Pagination, newest first, alone and with each filter.
                index(doc! {"created_us": -1, "_id": -1}),
                index(doc! {"state": 1, "created_us": -1, "_id": -1}),
                index(doc! {"op_definition": 1, "created_us": -1, "_id": -1}),
                index(doc! {"image": 1, "created_us": -1, "_id": -1}),
                // Free capacity of a worker.
                index(doc! {"worker_id": 1, "state": 1}),
                // The least CPU and RAM a PENDING run needs (a claim's floor).
                index(doc! {"state": 1, "sched.cpu": 1}),
                index(doc! {"state": 1, "sched.ram_mb": 1}),
                // PENDING runs with a queue timeout, for the timeout check.
                index(doc! {"state": 1, "queue_timeout_s": 1, "created_us": -1, "_id": -1}),
                // Runs with events to deliver, longest due first.
                index(doc! {"deliver_at_us": 1, "_id": 1}),
            ])
            .await?;
        self.events
            .create_index(index(doc! {"run_id": 1, "attempt": 1, "seq": 1}))
            .await?;
        Ok(())
    }

    /// The held runs among the run documents `filter` selects, from their `sched` fields (a
    /// document written before those existed is read whole).
    async fn held_matching(&self, filter: Document) -> Result<Vec<HeldRun>, StoreError> {
        let cursor = self.runs.find(filter).projection(doc! {"doc": 0}).await?;
        let mut held = Vec::new();
        for document in collect(cursor).await? {
            match held_run(&document) {
                Some(run) => held.push(run),
                None => held.extend(HeldRun::of(&self.whole_run(&document).await?)),
            }
        }
        Ok(held)
    }

    /// Takes the claim lease on `worker_id`, waiting while another claim holds it; returns
    /// the lease's owner name, which [`MongoStore::release_lease`] needs.
    async fn take_lease(&self, worker_id: &str) -> Result<String, StoreError> {
        let owner = super::lease_owner();
        let lease_us = i64::try_from(CLAIM_LEASE.as_micros()).unwrap_or(i64::MAX);
        let started = std::time::Instant::now();
        let mut failures = 0;
        loop {
            let now_us = to_micros(&chrono::Utc::now());
            let until_us = now_us.saturating_add(lease_us);
            // Usually nobody holds it (a claim deletes its lease): one insert takes it.
            // Else someone holds it, or a crashed claimer left it: taken over once expired.
            let fresh = doc! {"_id": worker_id, "owner": &owner, "until_us": until_us};
            if try_lease(&self.leases, &owner, now_us, fresh).await? != Took::No {
                return Ok(owner);
            }
            if started.elapsed() > CLAIM_LEASE_WAIT {
                return Err(StoreError::backend(format!(
                    "the claim lease on worker '{worker_id}' stayed taken for {CLAIM_LEASE_WAIT:?}"
                )));
            }
            failures += 1;
            tokio::time::sleep(LEASE_RETRY.delay(failures)).await;
        }
    }

    /// Gives the claim lease on `worker_id` back (if `owner` still has it).
    async fn release_lease(&self, worker_id: &str, owner: &str) {
        let mine = doc! {"_id": worker_id, "owner": owner};
        if let Err(e) = self.leases.delete_one(mine).await {
            tracing::warn!(worker_id, error = %e, "cannot release a claim lease; it expires on its own");
        }
    }

    /// The body of [`Store::assign_runs`], under the worker's claim lease.
    async fn assign_under_lease(
        &self,
        worker_id: &str,
        placements: Vec<Placement>,
        now: Timestamp,
    ) -> Result<Vec<Result<Option<OpRun>, StoreError>>, StoreError> {
        let ids: Vec<&str> = placements.iter().map(|(id, _)| id.as_str()).collect();
        // One round trip for the three reads.
        let (worker, held, documents) = tokio::try_join!(
            self.get_worker(worker_id),
            self.held_matching(held_on(worker_id)),
            async {
                let cursor = self.runs.find(doc! {"_id": {"$in": &ids}}).await?;
                collect(cursor).await
            },
        )?;
        let Some(worker) = worker else {
            return Ok(unknown_worker(worker_id, placements.len()));
        };
        let mut read: HashMap<String, Document> = documents
            .into_iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_owned(), d)))
            .collect();
        // Each run assigned in memory, in order, against what the ones before it took.
        let mut free = Capacity::free(&worker.resources, &held);
        let mut answers: Vec<Option<Result<Option<OpRun>, StoreError>>> = Vec::new();
        let (mut writes, mut to_move) = (Vec::new(), Vec::new());
        for (index, (id, gpu)) in placements.into_iter().enumerate() {
            answers.push(None);
            let Some(document) = read.remove(&id) else {
                answers[index] = Some(Ok(None));
                continue;
            };
            let snapshot = free.clone();
            let owner = worker_id.to_owned();
            let mut mutation =
                move |run: &mut OpRun| assign_if_fits(run, &owner, gpu, &snapshot, now);
            let changed = Read::of(&document).and_then(|read| {
                let events = event_documents(&read.run)?;
                Ok((events, read.changed(&mut mutation)?))
            });
            match changed {
                Ok((events, change)) => {
                    free.take(&change.run.constraints, gpu);
                    to_move.extend(events);
                    writes.push((index, id, change, mutation));
                }
                Err(e) => answers[index] = Some(Err(e)),
            }
        }
        // One insert of the events the runs' last changes left inline, then every
        // compare-and-set at once.
        self.insert_events(to_move).await?;
        let replaced = futures_util::future::join_all(writes.into_iter().map(
            |(index, id, change, mutation)| async move {
                let answer = match self.replace(&id, &change).await {
                    Ok(true) => Ok(Some(change.run)),
                    // Changed since it was read: read again and re-apply, as any update.
                    Ok(false) => {
                        self.update_run(&id, Box::new(move |run| mutation(run)))
                            .await
                    }
                    Err(e) => Err(e),
                };
                (index, answer)
            },
        ))
        .await;
        for (index, answer) in replaced {
            answers[index] = Some(answer);
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Ok(None)))
            .collect())
    }

    /// The compare-and-set of `change` on run `id`: whether it was written (false: the run
    /// changed since it was read). An assignment ends no attempt: no usage to accrue.
    async fn replace(&self, id: &str, change: &Change) -> Result<bool, StoreError> {
        let replaced = self
            .runs
            .replace_one(
                doc! {"_id": id, "rev": change.rev},
                run_document(&change.run, change.rev + 1, change.deliver_at)?,
            )
            .await?;
        Ok(replaced.matched_count == 1)
    }

    /// The run behind a document listed without its `doc` field, read whole.
    async fn whole_run(&self, listed: &Document) -> Result<OpRun, StoreError> {
        let id = listed
            .get_str("_id")
            .map_err(|e| StoreError::corrupt("runs._id", e))?;
        self.load_run(id)
            .await?
            .ok_or_else(|| StoreError::backend(format!("run '{id}' vanished while listed")))
    }

    /// Inserts the events `run` keeps inline into the `events` collection; those already there
    /// (the same event, inserted by an earlier try or another replica) are skipped.
    async fn flush_events(&self, run: &OpRun) -> Result<(), StoreError> {
        self.insert_events(event_documents(run)?).await
    }

    /// Inserts event documents, skipping those already there.
    async fn insert_events(&self, documents: Vec<Document>) -> Result<(), StoreError> {
        if documents.is_empty() {
            return Ok(());
        }
        match self.events.insert_many(documents).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn run_key(&self, param: &'static str, id: &str) -> Result<(i64, String), QueryError> {
        let found = self
            .runs
            .find_one(doc! {"_id": id})
            .projection(doc! {"created_us": 1})
            .await?
            .ok_or_else(|| QueryError::UnknownCursor {
                param,
                id: id.to_owned(),
            })?;
        let created = found
            .get_i64("created_us")
            .map_err(|e| StoreError::corrupt(id, e))?;
        Ok((created, id.to_owned()))
    }
}

fn run_filter(query: &RunQuery) -> Document {
    let mut filter = Document::new();
    if query.queue_timeout {
        match query.state {
            Some(state) if state != OpRunState::Pending => {
                filter.insert("state", doc! {"$in": []});
            }
            _ => {
                filter.insert("state", OpRunState::Pending.as_str());
            }
        }
        // `null` matches a document without the field (written before it existed), which
        // the caller then checks; new documents hold 0 for none.
        filter.insert(
            "$or",
            vec![
                Bson::from(doc! {"queue_timeout_s": {"$gt": 0}}),
                Bson::from(doc! {"queue_timeout_s": Bson::Null}),
            ],
        );
    } else if let Some(state) = query.state {
        filter.insert("state", state.as_str());
    }
    if let Some(definition) = &query.op_definition {
        filter.insert("op_definition", definition);
    }
    if let Some(image) = &query.image {
        filter.insert("image", image);
    }
    if let Some(queue) = &query.queue {
        if queue == gyoza_core::resources::DEFAULT_QUEUE {
            // A run stored before queues has none: it is in the default one.
            filter.insert("queue", doc! {"$in": [queue, Bson::Null]});
        } else {
            filter.insert("queue", queue);
        }
    }
    if let Some((key, value)) = &query.label {
        filter.insert("label_pairs", label_pair(key, value));
    }
    if !query.created.is_empty() {
        let mut range = Document::new();
        for bound in &query.created {
            let (op, micros) = match *bound {
                CreatedBound::Gte(m) => ("$gte", m),
                CreatedBound::Lte(m) => ("$lte", m),
                CreatedBound::Gt(m) => ("$gt", m),
                CreatedBound::Lt(m) => ("$lt", m),
            };
            range.insert(op, micros);
        }
        filter.insert("created_us", range);
    }
    filter
}

/// The run documents worker `worker_id` holds (ASSIGNED or RUNNING there).
fn held_on(worker_id: &str) -> Document {
    doc! {"worker_id": worker_id, "state": {"$in": ["ASSIGNED", "RUNNING"]}}
}

/// A label as the run document's `label_pairs` holds it.
fn label_pair(key: &str, value: &str) -> String {
    format!("{key}:{value}")
}

/// Runs strictly before (`$lt`) or after (`$gt`) `(created, id)` in (created_us, _id) order.
fn beyond(op: &str, created: i64, id: &str) -> Document {
    doc! {"$or": [
        {"created_us": {op: created}},
        {"created_us": created, "_id": {op: id}},
    ]}
}

fn and(a: Document, b: Document) -> Document {
    doc! {"$and": [a, b]}
}

#[async_trait]
impl StoreRead for MongoStore {
    async fn get_definition(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<OpDefinition>, StoreError> {
        if let Some(version) = version {
            return find_value(&self.definitions, doc! {"id": id, "version": version}).await;
        }
        let all: Vec<OpDefinition> = find_values(&self.definitions, doc! {"id": id}, None).await?;
        let mut latest: Option<OpDefinition> = None;
        for definition in all {
            if latest
                .as_ref()
                .is_none_or(|best| compare_versions(&definition.version, &best.version).is_gt())
            {
                latest = Some(definition);
            }
        }
        Ok(latest)
    }

    async fn list_definitions(&self) -> Result<Vec<OpDefinition>, StoreError> {
        let sort = doc! {"id": 1, "created_us": 1, "version": 1};
        find_values(&self.definitions, doc! {}, Some(sort)).await
    }

    async fn load_run(&self, id: &str) -> Result<Option<OpRun>, StoreError> {
        let found = self.runs.find_one(doc! {"_id": id}).await?;
        found.as_ref().map(decode_run).transpose()
    }

    async fn event_range(
        &self,
        run_id: &str,
        attempt: u32,
        from: u64,
        to: u64,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<(u64, EventEntry)>, StoreError> {
        let bound = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let filter = doc! {
            "run_id": run_id,
            "attempt": i64::from(attempt),
            "seq": {"$gte": bound(from), "$lt": bound(to)},
        };
        let cursor = self
            .events
            .find(filter)
            .sort(doc! {"seq": if descending { -1 } else { 1 }})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?;
        let mut events = Vec::new();
        for document in collect(cursor).await? {
            let seq = document
                .get_i64("seq")
                .ok()
                .and_then(|s| u64::try_from(s).ok())
                .ok_or_else(|| StoreError::corrupt(run_id, "event without a valid seq"))?;
            let json = document
                .get_str("doc")
                .map_err(|e| StoreError::corrupt(run_id, e))?;
            events.push((seq, from_json(run_id, json)?));
        }
        Ok(events)
    }

    async fn stored_run_bytes(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let Some(document) = self.runs.find_one(doc! {"_id": id}).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        document
            .to_writer(&mut bytes)
            .map_err(StoreError::backend)?;
        Ok(Some(u64::try_from(bytes.len()).unwrap_or(u64::MAX)))
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, QueryError> {
        let filters = run_filter(query);
        let (filter, ascending) = match &query.cursor {
            Cursor::Start => (filters.clone(), false),
            Cursor::StartingAfter(id) => {
                let (created, id) = self.run_key("starting_after", id).await?;
                (and(filters.clone(), beyond("$lt", created, &id)), false)
            }
            Cursor::EndingBefore(id) => {
                let (created, id) = self.run_key("ending_before", id).await?;
                (and(filters.clone(), beyond("$gt", created, &id)), true)
            }
        };
        let direction = if ascending { 1 } else { -1 };
        let cursor = self
            .runs
            .find(filter)
            .sort(doc! {"created_us": direction, "_id": direction})
            .limit(query.limit as i64)
            .await?;
        let mut documents = collect(cursor).await?;
        if ascending {
            documents.reverse();
        }
        let boundary = if ascending {
            documents.first()
        } else {
            documents.last()
        };
        let has_more = match boundary {
            None => false,
            Some(document) => {
                let created = document
                    .get_i64("created_us")
                    .map_err(StoreError::backend)?;
                let id = document.get_str("_id").map_err(StoreError::backend)?;
                let op = if ascending { "$gt" } else { "$lt" };
                self.runs
                    .find_one(and(filters, beyond(op, created, id)))
                    .projection(doc! {"_id": 1})
                    .await?
                    .is_some()
            }
        };
        let runs = documents.iter().map(decode_run).collect::<Result<_, _>>()?;
        Ok(RunPage { runs, has_more })
    }

    async fn pending_window(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRun>, StoreError> {
        let filter = doc! {
            "state": "PENDING",
            "$or": [{"available_us": Bson::Null}, {"available_us": {"$lte": to_micros(&now)}}],
        };
        let cursor = self
            .runs
            .find(filter)
            .sort(doc! {"priority": -1, "created_us": 1, "_id": 1})
            .limit(limit as i64)
            .projection(doc! {"doc": 0})
            .await?;
        let documents = collect(cursor).await?;
        let mut window = Vec::with_capacity(documents.len());
        for document in documents {
            window.push(match pending_run(&document) {
                Some(run) => run,
                None => PendingRun::from(&self.whole_run(&document).await?),
            });
        }
        Ok(window)
    }

    async fn runs_on_worker(&self, worker_id: &str) -> Result<Vec<OpRun>, StoreError> {
        let cursor = self.runs.find(held_on(worker_id)).await?;
        collect(cursor).await?.iter().map(decode_run).collect()
    }

    async fn held_runs(&self) -> Result<Vec<HeldRun>, StoreError> {
        self.held_matching(doc! {"state": {"$in": ["ASSIGNED", "RUNNING"]}})
            .await
    }

    /// The parts read at once: one round trip, not five.
    async fn claim_view(
        &self,
        worker_id: &str,
        now: Timestamp,
        window: usize,
        half_life_s: u32,
    ) -> Result<Option<ClaimView>, StoreError> {
        let (worker, held, pending, workers, usage) = tokio::join!(
            self.get_worker(worker_id),
            self.held_runs(),
            self.pending_window(now, window),
            self.list_workers(),
            self.queue_usage(now, half_life_s),
        );
        let Some(worker) = worker? else {
            return Ok(None);
        };
        Ok(Some(ClaimView {
            worker,
            held: held?,
            pending: pending?,
            workers: workers?,
            usage: super::usage_or_nothing(usage),
        }))
    }

    /// Its four reads at once: one round trip.
    async fn claim_floor(
        &self,
        worker_id: &str,
        _now: Timestamp,
    ) -> Result<Option<ClaimFloor>, StoreError> {
        // Runs waiting out a backoff count too: a lower bound is enough. A missing figure
        // (needs nothing, or a document written before `sched`) sorts first and counts as 0.
        let least = |field: &'static str| async move {
            let found = self
                .runs
                .find_one(doc! {"state": "PENDING"})
                .sort(doc! {"state": 1, (field): 1})
                .projection(doc! {(field): 1, "_id": 0})
                .await?;
            Ok::<_, StoreError>(found.map(|d| {
                let sched = d.get_document("sched").ok();
                let value = sched.and_then(|s| s.get(field.trim_start_matches("sched.")));
                match value {
                    Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
                    Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
                    _ => 0,
                }
            }))
        };
        let (worker, cpu, ram_mb, held) = tokio::try_join!(
            self.get_worker(worker_id),
            least("sched.cpu"),
            least("sched.ram_mb"),
            self.held_matching(held_on(worker_id)),
        )?;
        let Some(worker) = worker else {
            return Ok(None);
        };
        let least = match (cpu, ram_mb) {
            (Some(cpu), Some(ram_mb)) => Some(Floor { cpu, ram_mb }),
            _ => None,
        };
        Ok(Some(ClaimFloor {
            worker,
            held,
            least,
        }))
    }

    async fn get_worker(&self, id: &str) -> Result<Option<Worker>, StoreError> {
        find_value(&self.workers, doc! {"_id": id}).await
    }

    async fn list_workers(&self) -> Result<Vec<Worker>, StoreError> {
        find_values(&self.workers, doc! {}, Some(doc! {"_id": 1})).await
    }

    async fn stale_workers(&self, cutoff: Timestamp) -> Result<Vec<Worker>, StoreError> {
        let filter = doc! {"last_heartbeat_us": {"$lt": to_micros(&cutoff)}};
        find_values(&self.workers, filter, Some(doc! {"_id": 1})).await
    }

    async fn count_runs_by_state(&self) -> Result<Vec<(OpRunState, u64)>, StoreError> {
        let mut counts = Vec::new();
        for state in OpRunState::ALL {
            let n = self
                .runs
                .count_documents(doc! {"state": state.as_str()})
                .await?;
            counts.push((state, n));
        }
        Ok(counts)
    }

    async fn count_pending_by_queue(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let pipeline = [
            doc! {"$match": {"state": OpRunState::Pending.as_str()}},
            doc! {"$group": {"_id": "$queue", "n": {"$sum": 1}}},
        ];
        let cursor = self.runs.aggregate(pipeline).await?;
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for document in collect(cursor).await? {
            // A run stored before queues has none: it is in the default one.
            let queue = match document.get("_id") {
                Some(Bson::String(queue)) => queue.clone(),
                None | Some(Bson::Null) => gyoza_core::resources::DEFAULT_QUEUE.to_owned(),
                Some(other) => {
                    return Err(StoreError::corrupt(
                        "runs.queue",
                        format!("not a string: {other}"),
                    ));
                }
            };
            let n = match document.get("n") {
                Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                Some(Bson::Double(n)) => *n as u64,
                other => {
                    return Err(StoreError::corrupt(
                        "pending count",
                        format!("not a number: {other:?}"),
                    ));
                }
            };
            *counts.entry(queue).or_default() += n;
        }
        Ok(counts.into_iter().collect())
    }

    async fn get_log(&self, run_id: &str, attempt: u32) -> Result<Option<LogTail>, StoreError> {
        let key = format!("{run_id}:{attempt}");
        let Some(document) = self.logs.find_one(doc! {"_id": &key}).await? else {
            return Ok(None);
        };
        Ok(Some(LogTail {
            text: document
                .get_str("text")
                .map_err(StoreError::backend)?
                .to_owned(),
            total_bytes: document
                .get_i64("total_bytes")
                .map_err(StoreError::backend)? as u64,
        }))
    }

    async fn due_deliveries(&self, now_us: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let cursor = self
            .runs
            .find(doc! {"deliver_at_us": {"$lte": now_us}})
            .sort(doc! {"deliver_at_us": 1, "_id": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .projection(doc! {"_id": 1})
            .await?;
        collect(cursor)
            .await?
            .iter()
            .map(|d| {
                d.get_str("_id")
                    .map(str::to_owned)
                    .map_err(|e| StoreError::corrupt("runs._id", e))
            })
            .collect()
    }

    async fn queue_usage(
        &self,
        now: Timestamp,
        half_life_s: u32,
    ) -> Result<Vec<(String, [f64; 3])>, StoreError> {
        let now_us = to_micros(&now);
        let cursor = self.queue_usage.find(doc! {}).sort(doc! {"_id": 1}).await?;
        let mut usage = Vec::new();
        for document in collect(cursor).await? {
            let queue = document
                .get_str("_id")
                .map_err(|e| StoreError::corrupt("queue_usage._id", e))?
                .to_owned();
            usage.push((queue, decode_sums(&document)?.at(now_us, half_life_s)));
        }
        Ok(usage)
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn upsert_definition(
        &self,
        mut definition: OpDefinition,
    ) -> Result<(OpDefinition, bool), StoreError> {
        let key = doc! {"id": &definition.id, "version": &definition.version};
        let existing = find_value(&self.definitions, key.clone()).await?;
        let created = replace_definition(&mut definition, existing);
        let document = doc! {
            "id": &definition.id,
            "version": &definition.version,
            "created_us": to_micros(&definition.created_at),
            "doc": to_json(&definition)?,
        };
        self.definitions
            .replace_one(key, document)
            .upsert(true)
            .await?;
        Ok((definition, created))
    }

    async fn delete_run(&self, id: &str) -> Result<(), StoreError> {
        self.events.delete_many(doc! {"run_id": id}).await?;
        self.runs.delete_one(doc! {"_id": id}).await?;
        Ok(())
    }

    async fn insert_run(&self, run: &OpRun) -> Result<(), StoreError> {
        let deliver_at = super::delivers(run).then_some(0);
        self.runs
            .insert_one(run_document(run, 0, deliver_at)?)
            .await?;
        Ok(())
    }

    async fn update_run(
        &self,
        id: &str,
        mut mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let Some(document) = self.runs.find_one(doc! {"_id": id}).await? else {
                return Ok(None);
            };
            let read = Read::of(&document)?;
            // The events the last change left inline go to the collection before this change
            // replaces them (see the module docs); the run keeps counting them.
            self.flush_events(&read.run).await?;
            let held = held_attempt(&read.run);
            let change = read.changed(&mut mutation)?;
            if self.replace(id, &change).await? {
                let run = change.run;
                // This change ended the attempt (see the module docs): its usage, after the
                // commit point. A failure loses that usage, not the run's change.
                let half_life_s = self.usage_half_life();
                if let Some(accrual) = held.and_then(|held| held.ended_in(&run, half_life_s))
                    && let Err(e) = self.accrue(&accrual, half_life_s).await
                {
                    tracing::warn!(
                        run_id = id,
                        queue = accrual.queue,
                        error = %e,
                        "the usage of an ended attempt was not added to its queue; it is lost"
                    );
                }
                return Ok(Some(run));
            }
            // Someone changed the run since we read it: read it again and re-apply.
        }
        Err(StoreError::backend(format!(
            "run '{id}' changed concurrently {MAX_CONFLICT_RETRIES} times in a row; giving up"
        )))
    }

    async fn assign_runs(
        &self,
        worker_id: &str,
        placements: Vec<Placement>,
        now: Timestamp,
    ) -> Vec<Result<Option<OpRun>, StoreError>> {
        let count = placements.len();
        let answers = match self.take_lease(worker_id).await {
            Ok(owner) => {
                let answers = self.assign_under_lease(worker_id, placements, now).await;
                self.release_lease(worker_id, &owner).await;
                answers
            }
            Err(e) => Err(e),
        };
        answer_each(answers, count)
    }

    async fn heartbeat(&self, heartbeat: Heartbeat, now: Timestamp) -> Result<Worker, StoreError> {
        // A compare-and-set on the stored heartbeat time (an insert for a new worker), so
        // that the instance check of `from_heartbeat` holds against a concurrent heartbeat:
        // the write that lost re-reads and is checked again.
        let id = heartbeat.worker_id.clone();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let stored = self.workers.find_one(doc! {"_id": &id}).await?;
            let existing = stored.as_ref().map(decode::<Worker>).transpose()?;
            let worker = Worker::from_heartbeat(existing, heartbeat.clone(), now)?;
            let document = doc! {
                "_id": &worker.id,
                "last_heartbeat_us": to_micros(&now),
                "doc": to_json(&worker)?,
            };
            let written = match &stored {
                Some(read) => {
                    let mut filter = doc! {"_id": &id};
                    if let Some(seen) = read.get("last_heartbeat_us") {
                        filter.insert("last_heartbeat_us", seen.clone());
                    }
                    self.workers
                        .replace_one(filter, document)
                        .await?
                        .matched_count
                        == 1
                }
                None => match self.workers.insert_one(document).await {
                    Ok(_) => true,
                    Err(e) if is_duplicate_key(&e) => false,
                    Err(e) => return Err(e.into()),
                },
            };
            if written {
                return Ok(worker);
            }
            // Another heartbeat of this id was written since the read: check against it.
        }
        Err(StoreError::backend(format!(
            "worker '{id}' heartbeated concurrently {MAX_CONFLICT_RETRIES} times in a row; giving up"
        )))
    }

    async fn append_log(
        &self,
        run_id: &str,
        attempt: u32,
        text: &str,
        cap: usize,
    ) -> Result<(), StoreError> {
        // One worker ships an attempt's log, in order: a read-modify-write is enough.
        let key = format!("{run_id}:{attempt}");
        let mut tail = self.get_log(run_id, attempt).await?.unwrap_or_default();
        tail.append(text, cap);
        self.logs
            .replace_one(
                doc! {"_id": &key},
                doc! {"_id": &key, "total_bytes": tail.total_bytes as i64, "text": tail.text},
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn lease_delivery(
        &self,
        run_id: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
    ) -> Result<DeliveryLease, StoreError> {
        let start = DeliveryProgress::default();
        let fresh =
            doc! {"_id": run_id, "owner": owner, "until_us": until_us, "doc": to_json(&start)?};
        // Released leases have `until_us` 0, so "expired" covers them.
        match try_lease(&self.deliveries, owner, now_us, fresh).await? {
            Took::Fresh => return Ok(DeliveryLease::Taken(start)),
            Took::No => return Ok(DeliveryLease::Held),
            Took::Over => {}
        }
        let held = self
            .deliveries
            .find_one(doc! {"_id": run_id, "owner": owner})
            .await?;
        match held {
            Some(document) => {
                let json = document
                    .get_str("doc")
                    .map_err(|e| StoreError::corrupt(run_id, e))?;
                Ok(DeliveryLease::Taken(from_json(run_id, json)?))
            }
            // Taken over between the two (our lease expired at once): not ours.
            None => Ok(DeliveryLease::Held),
        }
    }

    async fn save_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        until_us: i64,
    ) -> Result<bool, StoreError> {
        let saved = self
            .deliveries
            .update_one(
                doc! {"_id": run_id, "owner": owner},
                doc! {"$set": {"doc": to_json(progress)?, "until_us": until_us}},
            )
            .await?;
        Ok(saved.matched_count == 1)
    }

    async fn release_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        retry_at_us: Option<i64>,
    ) -> Result<bool, StoreError> {
        let released = self
            .deliveries
            .update_one(
                doc! {"_id": run_id, "owner": owner},
                doc! {"$set": {"doc": to_json(progress)?, "owner": Bson::Null, "until_us": 0_i64}},
            )
            .await?;
        if released.matched_count != 1 {
            return Ok(false);
        }
        if let Some(retry_at) = retry_at_us {
            self.runs
                .update_one(
                    doc! {"_id": run_id, "deliver_at_us": {"$gte": 0_i64}},
                    doc! {"$set": {"deliver_at_us": retry_at}},
                )
                .await?;
            return Ok(false);
        }
        for _ in 0..MAX_CONFLICT_RETRIES {
            let Some(document) = self.runs.find_one(doc! {"_id": run_id}).await? else {
                return Ok(true);
            };
            if !progress.covers(&decode_run(&document)?) {
                return Ok(false);
            }
            let rev = document.get_i64("rev").map_err(StoreError::backend)?;
            let cleared = self
                .runs
                .update_one(
                    doc! {"_id": run_id, "rev": rev},
                    doc! {"$set": {"deliver_at_us": Bson::Null}},
                )
                .await?;
            if cleared.matched_count == 1 {
                return Ok(true);
            }
        }
        // The run keeps changing: leave the mark, the next look delivers what is new.
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(
            redact("mongodb://user:pw@db:27017/x"),
            "mongodb://***@db:27017/x"
        );
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
    }
}
