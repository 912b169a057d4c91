//! The embedded store: one SQLite file in the data directory.
//!
//! Documents (definitions, runs with their attempts, workers) are stored as JSON next to the
//! columns that queries filter and sort on. The database runs in WAL mode with
//! `synchronous=FULL`, so a write the API acknowledged survives a crash of the process or the
//! machine. Reads run on tokio's blocking pool over a few read-only connections.
//!
//! Writes go to one writer thread, which owns the only write connection (SQLite has one writer
//! anyway) and commits in groups: it takes every write waiting in its queue, runs each inside
//! its own savepoint of one `BEGIN IMMEDIATE` transaction, commits once (one fsync for the
//! group), and only then answers each caller. A write that fails or refuses rolls back its own
//! savepoint and leaves the others in the group alone; a failed commit fails them all. Under
//! load this turns N fsyncs into one without weakening durability: no write is acknowledged
//! before its group is on disk. `BEGIN IMMEDIATE` also serialises writers across processes
//! that share the file.
//!
//! SQLite may roll the whole transaction back on its own when a statement fails with
//! `SQLITE_FULL` or an I/O error. The writes of the group done before that are then lost and
//! are answered so; the rest of the group runs in a new transaction. Nothing commits but the
//! group's own `COMMIT`: a commit hook refuses every other commit (a statement run after such
//! a rollback would otherwise start and commit a transaction of its own, and a write answered
//! with an error would be stored). A full database answers [`StoreError::Full`] (the API's
//! 507), and the store serves again as soon as there is space.
//!
//! Committed pages are copied from the WAL into the database file by a checkpointer thread
//! with its own connection (a PASSIVE checkpoint, at most 100 ms after a commit), not by the
//! writer: with SQLite's default the writer checkpointed every 1,000 WAL pages, every few
//! groups under `gyoza-bench claims`, and its next group waited for that copy (moving it
//! out gave about 8% more placements/s, BENCHMARKS.md). The writer
//! still checkpoints past 16,384 WAL pages, should the checkpointer fall behind; the WAL
//! file is cut back to 64 MB once it starts over. A checkpoint changes no committed data:
//! durability is the WAL's fsync at each commit.
//!
//! A claim's [`Store::assign_runs`] is one such write: it reads the worker and the runs it
//! holds, and assigns what still fits, inside its savepoint of the writer's transaction.
//! Since every writer (of this process or another on the same file) is serialised there, the
//! capacity it reads is the capacity it writes against. The reaper's
//! [`Store::update_run_if_silent`] checks the worker's last heartbeat in the same way.
//!
//! A claim's pending window is kept in memory per process and read again only when the
//! database's triggers say the PENDING runs changed (see [`window`]).
//!
//! Queue usage (see the store's module docs) lives in `queue_usage`, one row per queue: the
//! three decayed sums and their reference time (`as_of_us`, microseconds since the epoch).
//! Every run write goes through one function that reads the run, applies the change and
//! writes it back; when the change ends a held attempt, the same function adds the attempt's
//! usage to its queue's row, in the same savepoint: the usage commits with the run's change
//! or not at all, and the writer's serialisation (across processes too) keeps two writes from
//! combining one row's sums at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gyoza_core::definition::compare_versions;
use gyoza_core::run::EventEntry;
use gyoza_core::sync::lock;
use gyoza_core::time::{Timestamp, from_micros, to_micros};
use gyoza_core::{
    Capacity, Constraints, Heartbeat, HeldRun, OpDefinition, OpRun, OpRunState, PendingRun, Worker,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, TransactionBehavior, params, params_from_iter,
};

use super::{
    Accrual, ClaimFloor, ClaimView, CreatedBound, Cursor, DecayedSums, DeliveryLease,
    DeliveryProgress, Floor, LogTail, Placement, QueryError, RunMutation, RunPage, RunQuery,
    SharedRunMutation, Store, StoreError, StoreRead, UsageHalfLife, answer_each, assign_if_fits,
    delivers, from_json, held_attempt, loaded_events, replace_definition, run_from_json, to_json,
    unknown_worker, worker_not_silent,
};

mod window;

/// Parallel read connections.
const READERS: usize = 4;

/// The most writes one group commit takes.
const MAX_GROUP: usize = 256;

/// WAL pages past which the writer checkpoints the WAL itself, should the checkpointer
/// thread fall behind. SQLite's default, 1,000 pages, had the writer copy pages back into the
/// database every few group commits under load, with its group waiting.
const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// How long the checkpointer lets commits gather before it copies them into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The size the WAL file is cut back to once a checkpoint let it start over, in bytes.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// A write for the writer thread: runs against the connection inside its savepoint, says
/// whether it succeeded (else why; its savepoint is then rolled back) and hands back how to
/// answer its caller once the group's commit outcome is known.
type WriteJob = Box<dyn FnOnce(&Connection) -> (Result<(), StoreError>, WriteReply) + Send>;
type WriteReply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The schema; `user_version` says which of these statements a database has seen.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE definitions (
    id         TEXT NOT NULL,
    version    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    doc        TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE TABLE runs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    available_at  INTEGER,
    op_definition TEXT,
    image         TEXT NOT NULL,
    worker_id     TEXT,
    doc           TEXT NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at, seq);
CREATE INDEX runs_by_state ON runs (state, priority DESC, created_at, seq);
CREATE INDEX runs_by_worker ON runs (worker_id, state);
CREATE INDEX runs_by_definition ON runs (op_definition, created_at, seq);
CREATE INDEX runs_by_image ON runs (image, created_at, seq);
CREATE TABLE workers (
    id                TEXT PRIMARY KEY,
    last_heartbeat_at INTEGER NOT NULL,
    doc               TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE run_logs (
    run_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL,
    text        TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt)
);
"#,
    // What scheduling reads of a run, as columns, and two partial covering indexes: a claim
    // reads its pending window and the held runs from these indexes alone, without touching
    // (or decoding) the run documents.
    r#"
ALTER TABLE runs ADD COLUMN cpu INTEGER;
ALTER TABLE runs ADD COLUMN ram_mb INTEGER;
ALTER TABLE runs ADD COLUMN vram_mb INTEGER;
ALTER TABLE runs ADD COLUMN gpu_id INTEGER;
UPDATE runs SET
    cpu = json_extract(doc, '$.constraints.cpu'),
    ram_mb = json_extract(doc, '$.constraints.ram_mb'),
    vram_mb = json_extract(doc, '$.constraints.vram_mb'),
    gpu_id = json_extract(doc, '$.attempts[#-1].execution_summary.gpu_id');
CREATE INDEX runs_pending ON runs (priority DESC, created_at, seq, available_at, id, cpu, ram_mb, vram_mb)
    WHERE state = 'PENDING';
CREATE INDEX runs_held ON runs (worker_id, state, id, cpu, ram_mb, vram_mb, gpu_id)
    WHERE state IN ('ASSIGNED', 'RUNNING');
DROP INDEX runs_by_state;
CREATE INDEX runs_by_state ON runs (state, created_at, seq);
"#,
    // Events apart from the run (see the store's module docs); `migrate` then moves the
    // events of existing runs here, in the same transaction.
    r#"
CREATE TABLE IF NOT EXISTS events (
    run_id  TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    doc     TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt, seq)
);
"#,
    // The delivery outbox (see the store's module docs): the mark on the run, due at
    // `deliver_at` (microseconds since the epoch), and each run's progress and lease.
    r#"
ALTER TABLE runs ADD COLUMN deliver_at INTEGER;
CREATE INDEX runs_to_deliver ON runs (deliver_at, id) WHERE deliver_at IS NOT NULL;
CREATE TABLE deliveries (
    run_id   TEXT PRIMARY KEY,
    owner    TEXT,
    until_us INTEGER NOT NULL DEFAULT 0,
    doc      TEXT NOT NULL
);
"#,
    // What strategies see of a run beyond its figures (`RunFacts` and the required tags), as
    // columns — labels and tags as JSON, NULL when empty — in the two covering indexes too,
    // so that a claim decodes no JSON for a run without labels or tags; `migrate` then fills
    // them in for the live runs, in the same transaction.
    r#"
ALTER TABLE runs ADD COLUMN queue TEXT;
ALTER TABLE runs ADD COLUMN attempt INTEGER;
ALTER TABLE runs ADD COLUMN preemptible INTEGER;
ALTER TABLE runs ADD COLUMN preemptions INTEGER;
ALTER TABLE runs ADD COLUMN labels TEXT;
ALTER TABLE runs ADD COLUMN tags TEXT;
ALTER TABLE runs ADD COLUMN assigned_at INTEGER;
DROP INDEX runs_pending;
CREATE INDEX runs_pending ON runs (priority DESC, created_at, seq, available_at, id, cpu, ram_mb, vram_mb,
    queue, op_definition, image, attempt, preemptible, preemptions, labels, tags, assigned_at)
    WHERE state = 'PENDING';
DROP INDEX runs_held;
CREATE INDEX runs_held ON runs (worker_id, state, id, cpu, ram_mb, vram_mb, gpu_id, priority,
    queue, op_definition, image, attempt, preemptible, preemptions, labels, tags, assigned_at)
    WHERE state IN ('ASSIGNED', 'RUNNING');
"#,
    // Per queue, the decayed usage of its ended attempts (see the store's module docs), as of
    // `as_of_us` (microseconds since the epoch). Attempts that ended before this schema add
    // nothing.
    r#"
CREATE TABLE IF NOT EXISTS queue_usage (
    queue    TEXT PRIMARY KEY,
    cpu      REAL NOT NULL,
    ram_mb   REAL NOT NULL,
    vram_mb  REAL NOT NULL,
    as_of_us INTEGER NOT NULL
);
"#,
    // The least CPU and RAM a PENDING run needs, each one index step away: a claim by a
    // worker that cannot fit even those is answered without reading the window (see
    // `Store::claim_floor`).
    r#"
CREATE INDEX IF NOT EXISTS runs_pending_cpu ON runs (cpu) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS runs_pending_ram ON runs (ram_mb) WHERE state = 'PENDING';
"#,
    // What keeps a process's pending window in memory honest (see `window`): a count, bumped
    // in the writing transaction (of any process on the file) whenever the set of PENDING
    // runs or what a window shows of one changes; and the runs backing off, by when they
    // become claimable.
    r#"
CREATE TABLE IF NOT EXISTS pending_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT OR IGNORE INTO pending_changes (id, n) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS runs_pending_inserted AFTER INSERT ON runs
    WHEN NEW.state = 'PENDING'
    BEGIN UPDATE pending_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS runs_pending_deleted AFTER DELETE ON runs
    WHEN OLD.state = 'PENDING'
    BEGIN UPDATE pending_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS runs_pending_changed AFTER UPDATE ON runs
    WHEN (OLD.state = 'PENDING' AND NEW.state IS NOT 'PENDING')
      OR (NEW.state = 'PENDING' AND (OLD.state IS NOT 'PENDING'
          OR OLD.priority IS NOT NEW.priority OR OLD.created_at IS NOT NEW.created_at
          OR OLD.seq IS NOT NEW.seq OR OLD.available_at IS NOT NEW.available_at
          OR OLD.cpu IS NOT NEW.cpu OR OLD.ram_mb IS NOT NEW.ram_mb
          OR OLD.vram_mb IS NOT NEW.vram_mb OR OLD.queue IS NOT NEW.queue
          OR OLD.op_definition IS NOT NEW.op_definition OR OLD.image IS NOT NEW.image
          OR OLD.attempt IS NOT NEW.attempt OR OLD.preemptible IS NOT NEW.preemptible
          OR OLD.preemptions IS NOT NEW.preemptions OR OLD.labels IS NOT NEW.labels
          OR OLD.tags IS NOT NEW.tags OR OLD.assigned_at IS NOT NEW.assigned_at))
    BEGIN UPDATE pending_changes SET n = n + 1 WHERE id = 1; END;
CREATE INDEX IF NOT EXISTS runs_backing_off ON runs (available_at)
    WHERE state = 'PENDING' AND available_at IS NOT NULL;
"#,
    // A run's queue timeout, so that the timeout check reads only the PENDING runs that have
    // one (`RunQuery::queue_timeout`), newest first as every listing, from a partial index.
    // Runs in other states get the column at their next write.
    r#"
ALTER TABLE runs ADD COLUMN queue_timeout_s INTEGER;
UPDATE runs SET queue_timeout_s = json_extract(doc, '$.constraints.queue_timeout_s')
    WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS runs_queue_timed ON runs (created_at, seq)
    WHERE state = 'PENDING' AND queue_timeout_s > 0;
"#,
];

/// The schema version from which runs keep their scheduling facts (`queue` .. `assigned_at`).
const SCHED_FACTS: usize = 6;

/// The schema version from which events live in the `events` table.
const EVENTS_APART: usize = 4;

/// The SQLite [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// Options of [`SqliteStore::open_with`].
#[derive(Debug, Clone, Default)]
pub struct SqliteOptions {
    /// The most pages the database file may have (`PRAGMA max_page_count`); `None` for
    /// SQLite's default (no practical limit). Tests use a small one to fill the "disk".
    pub max_page_count: Option<u32>,
}

/// The writer thread's connection, and whether it is committing a group: the commit hook
/// refuses every commit but that one.
struct Writer {
    conn: Connection,
    committing: Arc<AtomicBool>,
    /// Tells the checkpointer thread that a group committed.
    committed: std::sync::mpsc::SyncSender<()>,
}

impl Writer {
    fn new(conn: Connection, committed: std::sync::mpsc::SyncSender<()>) -> Self {
        let committing = Arc::new(AtomicBool::new(false));
        let allowed = committing.clone();
        // Returning true turns the commit into a rollback.
        conn.commit_hook(Some(move || !allowed.load(Ordering::SeqCst)));
        Self {
            conn,
            committing,
            committed,
        }
    }

    /// Commits the open transaction (the one commit the hook lets through).
    fn commit(&self) -> rusqlite::Result<()> {
        self.committing.store(true, Ordering::SeqCst);
        let committed = self.conn.execute_batch("COMMIT");
        self.committing.store(false, Ordering::SeqCst);
        committed
    }
}

struct Inner {
    path: PathBuf,
    writes: std::sync::mpsc::Sender<WriteJob>,
    /// Read-only connections. A panic while one is locked cannot leave it half-written
    /// (SQLite rolls back an unfinished transaction), so a poisoned one is reused as it is.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// The half-life run writes accrue queue usage with.
    usage_half_life: UsageHalfLife,
    /// The pending window kept in memory (see [`window`]).
    window: window::WindowCache,
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Savepoints (one per write in a group commit) journal in memory, not in a temp file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::backend(format!(
            "database schema version {version} is newer than this gyoza understands ({}); upgrade gyoza",
            MIGRATIONS.len()
        )));
    }
    for migration in &MIGRATIONS[version..] {
        tx.execute_batch(migration)?;
    }
    if version < EVENTS_APART {
        move_events_out(&tx)?;
    }
    if version < SCHED_FACTS {
        fill_sched_facts(&tx)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit().map_err(StoreError::backend)
}

/// Moves the events of every run stored with its timeline inline into the `events` table and
/// rewrites the run without them (and without its attempts' copies of the inputs), inside
/// the caller's transaction: a file is migrated whole or not at all.
fn move_events_out(conn: &Connection) -> Result<(), StoreError> {
    let ids: Vec<String> = {
        let mut stmt = conn.prepare("SELECT id FROM runs ORDER BY seq")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut moved = 0usize;
    for id in &ids {
        if let Some(run) = read_run(conn, id)? {
            moved = moved.saturating_add(loaded_events(&run).count());
            // Not `write_run`: moving a run's history out delivers none of it again.
            write_row(conn, &run, false)?;
        }
    }
    if moved > 0 {
        tracing::info!(
            runs = ids.len(),
            events = moved,
            "moved the runs' events into their own table"
        );
    }
    Ok(())
}

/// Writes the scheduling facts of every live run (pending or held), which a claim reads; the
/// others get theirs when they are next written.
fn fill_sched_facts(conn: &Connection) -> Result<(), StoreError> {
    let ids: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT id FROM runs WHERE state IN ('PENDING', 'ASSIGNED', 'RUNNING') ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut update = conn.prepare(
        "UPDATE runs SET queue = ?2, attempt = ?3, preemptible = ?4, preemptions = ?5,
             labels = ?6, tags = ?7, assigned_at = ?8 WHERE id = ?1",
    )?;
    for id in &ids {
        if let Some(run) = read_run(conn, id)? {
            let f = FactColumns::of(&run)?;
            update.execute(params![
                id,
                f.queue,
                f.attempt,
                f.preemptible,
                f.preemptions,
                f.labels,
                f.tags,
                f.assigned_at
            ])?;
        }
    }
    Ok(())
}

/// A run's scheduling facts as its columns hold them.
struct FactColumns<'a> {
    queue: &'a str,
    attempt: u32,
    preemptible: bool,
    preemptions: u32,
    /// JSON, `None` when there are none.
    labels: Option<String>,
    /// JSON, `None` when there are none.
    tags: Option<String>,
    assigned_at: Option<i64>,
}

impl<'a> FactColumns<'a> {
    fn of(run: &'a OpRun) -> Result<Self, StoreError> {
        Ok(Self {
            queue: &run.queue,
            attempt: run.current_attempt(),
            preemptible: run.preemptible,
            preemptions: run.preemptions(),
            labels: (!run.labels.is_empty())
                .then(|| to_json(&run.labels))
                .transpose()?,
            tags: (!run.constraints.tags.is_empty())
                .then(|| to_json(&run.constraints.tags))
                .transpose()?,
            assigned_at: run.current().assigned_at.as_ref().map(to_micros),
        })
    }
}

/// The strings of one read's fact columns, each distinct queue, definition and image once:
/// a window of runs mostly names a few of them, which then cost a comparison with the row
/// before (or one lookup) instead of an allocation each, and the strategy's string table
/// recognises them by address.
#[derive(Default)]
struct Names {
    seen: HashSet<Arc<str>>,
    /// The last queue, definition and image read.
    last: [Option<Arc<str>>; 3],
}

impl Names {
    /// The shared string of text column `column` (`slot`: 0 queue, 1 definition, 2 image), or
    /// `None` for NULL.
    fn at(
        &mut self,
        row: &rusqlite::Row<'_>,
        column: usize,
        slot: usize,
    ) -> rusqlite::Result<Option<Arc<str>>> {
        let bytes = match row.get_ref(column)? {
            rusqlite::types::ValueRef::Null => return Ok(None),
            rusqlite::types::ValueRef::Text(bytes) => bytes,
            other => {
                return Err(rusqlite::Error::InvalidColumnType(
                    column,
                    String::new(),
                    other.data_type(),
                ));
            }
        };
        if let Some(last) = &self.last[slot]
            && last.as_bytes() == bytes
        {
            return Ok(Some(last.clone()));
        }
        let text = std::str::from_utf8(bytes).map_err(rusqlite::Error::Utf8Error)?;
        let shared = match self.seen.get(text) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(text);
                self.seen.insert(shared.clone());
                shared
            }
        };
        self.last[slot] = Some(shared.clone());
        Ok(Some(shared))
    }
}

/// The facts and required tags in the nine columns `queue, op_definition, image, attempt,
/// preemptible, preemptions, labels, tags, assigned_at` from `first` on (NULLs, as in a row
/// written before they were kept, read as the defaults).
fn facts_at(
    row: &rusqlite::Row<'_>,
    first: usize,
    names: &mut Names,
) -> rusqlite::Result<(gyoza_core::RunFacts, Vec<String>)> {
    fn json<T: serde::de::DeserializeOwned + Default>(
        row: &rusqlite::Row<'_>,
        column: usize,
    ) -> rusqlite::Result<T> {
        match row.get_ref(column)?.as_str_or_null()? {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    column,
                    rusqlite::types::Type::Text,
                    e.into(),
                )
            }),
            None => Ok(T::default()),
        }
    }
    let labels = json(row, first + 6)?;
    let tags = json(row, first + 7)?;
    let facts = gyoza_core::RunFacts {
        queue: names
            .at(row, first, 0)?
            .unwrap_or_else(|| gyoza_core::resources::DEFAULT_QUEUE.into()),
        definition: names.at(row, first + 1, 1)?,
        image: names.at(row, first + 2, 2)?.unwrap_or_else(|| "".into()),
        attempt: row.get::<_, Option<u32>>(first + 3)?.unwrap_or(1),
        preemptible: row.get::<_, Option<bool>>(first + 4)?.unwrap_or(false),
        preemptions: row.get::<_, Option<u32>>(first + 5)?.unwrap_or(0),
        labels,
        assigned_at: row.get::<_, Option<i64>>(first + 8)?.map(from_micros),
    };
    Ok((facts, tags))
}

/// Inserts the events loaded in `run` (those a change appended) into the `events` table.
fn insert_events(conn: &Connection, run: &OpRun) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached("INSERT INTO events (run_id, attempt, seq, doc) VALUES (?1, ?2, ?3, ?4)")?;
    for (attempt, index, event) in loaded_events(run) {
        let index = i64::try_from(index).map_err(StoreError::backend)?;
        insert.execute(params![run.id, attempt, index, to_json(event)?])?;
    }
    Ok(())
}

/// Writes `run` (inserted new, or over its stored row) and inserts the events it has loaded:
/// all a change appended, since a run is loaded for a change without its history. Marks the
/// run for delivery when they are to be delivered (due at once unless a failed try already
/// set when), in the same savepoint.
fn write_run(conn: &Connection, run: &OpRun, insert: bool) -> Result<(), StoreError> {
    write_row(conn, run, insert)?;
    if delivers(run) {
        conn.prepare_cached("UPDATE runs SET deliver_at = COALESCE(deliver_at, 0) WHERE id = ?1")?
            .execute([&run.id])?;
    }
    Ok(())
}

/// [`write_run`] without the delivery mark.
fn write_row(conn: &Connection, run: &OpRun, insert: bool) -> Result<(), StoreError> {
    insert_events(conn, run)?;
    let doc = to_json(&run.stored(false))?;
    let sql = if insert {
        "INSERT INTO runs (id, state, priority, created_at, available_at, op_definition, image, worker_id, doc,
                          cpu, ram_mb, vram_mb, gpu_id,
                          queue, attempt, preemptible, preemptions, labels, tags, assigned_at,
                          queue_timeout_s)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
                 ?21)"
    } else {
        // Only what a run's life changes: SQLite then leaves the indexes on creation time,
        // definition and image alone.
        "UPDATE runs SET state = ?2, priority = ?3, available_at = ?5, worker_id = ?8, doc = ?9,
         cpu = ?10, ram_mb = ?11, vram_mb = ?12, gpu_id = ?13, queue = ?14, attempt = ?15,
         preemptible = ?16, preemptions = ?17, labels = ?18, tags = ?19, assigned_at = ?20,
         queue_timeout_s = ?21
         WHERE id = ?1"
    };
    let constraints = &run.constraints;
    let f = FactColumns::of(run)?;
    conn.prepare_cached(sql)?.execute(params![
        run.id,
        run.state.as_str(),
        run.priority,
        to_micros(&run.created_at),
        run.available_at.as_ref().map(to_micros),
        run.op_definition,
        run.image,
        run.worker_id(),
        doc,
        constraints.cpu,
        constraints.ram_mb.map(|v| v as i64),
        constraints.vram_mb.map(|v| v as i64),
        run.current().execution_summary.gpu_id,
        f.queue,
        f.attempt,
        f.preemptible,
        f.preemptions,
        f.labels,
        f.tags,
        f.assigned_at,
        constraints
            .queue_timeout()
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
    ])?;
    Ok(())
}

/// Applies `mutation` to run `id` inside the current transaction; when the change ends the
/// run's held attempt, adds that attempt's usage to its queue, decayed with half-life
/// `half_life_s` (see the store's module docs), in the same transaction.
fn update_run_blocking(
    conn: &Connection,
    id: &str,
    half_life_s: u32,
    mutation: &mut dyn FnMut(&mut OpRun) -> Result<(), gyoza_core::DomainError>,
) -> Result<Option<OpRun>, StoreError> {
    let Some(mut run) = read_run(conn, id)? else {
        return Ok(None);
    };
    let held = held_attempt(&run);
    mutation(&mut run)?;
    write_run(conn, &run, false)?;
    if let Some(accrual) = held.and_then(|held| held.ended_in(&run, half_life_s)) {
        accrue_blocking(conn, &accrual, half_life_s)?;
    }
    Ok(Some(run))
}

/// Adds `accrual` to its queue's row of `queue_usage`, decayed with half-life `half_life_s`,
/// inside the current transaction.
fn accrue_blocking(
    conn: &Connection,
    accrual: &Accrual,
    half_life_s: u32,
) -> Result<(), StoreError> {
    let stored = conn
        .prepare_cached("SELECT cpu, ram_mb, vram_mb, as_of_us FROM queue_usage WHERE queue = ?1")?
        .query_row([&accrual.queue], |r| {
            Ok(DecayedSums {
                sums: [r.get(0)?, r.get(1)?, r.get(2)?],
                as_of_us: r.get(3)?,
            })
        })
        .optional()?;
    let DecayedSums { sums, as_of_us } = DecayedSums::plus(stored, accrual, half_life_s);
    conn.prepare_cached(
        "INSERT INTO queue_usage (queue, cpu, ram_mb, vram_mb, as_of_us) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (queue) DO UPDATE SET cpu = excluded.cpu, ram_mb = excluded.ram_mb,
             vram_mb = excluded.vram_mb, as_of_us = excluded.as_of_us",
    )?
    .execute(params![accrual.queue, sums[0], sums[1], sums[2], as_of_us])?;
    Ok(())
}

/// Every queue's decayed usage of ended attempts at `now` (see the store's module docs).
fn queue_usage_blocking(
    conn: &Connection,
    now: Timestamp,
    half_life_s: u32,
) -> Result<Vec<(String, [f64; 3])>, StoreError> {
    let now_us = to_micros(&now);
    let mut stmt = conn.prepare_cached(
        "SELECT queue, cpu, ram_mb, vram_mb, as_of_us FROM queue_usage ORDER BY queue",
    )?;
    let rows = stmt.query_map([], |r| {
        let sums = DecayedSums {
            sums: [r.get(1)?, r.get(2)?, r.get(3)?],
            as_of_us: r.get(4)?,
        };
        Ok((r.get::<_, String>(0)?, sums))
    })?;
    let mut usage = Vec::new();
    for row in rows {
        let (queue, sums) = row?;
        usage.push((queue, sums.at(now_us, half_life_s)));
    }
    Ok(usage)
}

/// Claimable runs at `now`, best first, from the partial index `runs_pending` alone (see the
/// migrations).
fn pending_window_blocking(
    conn: &Connection,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<PendingRun>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, priority, created_at, cpu, ram_mb, vram_mb, queue, op_definition, image, attempt, preemptible, preemptions, labels, tags, assigned_at
             FROM runs INDEXED BY runs_pending
             WHERE state = 'PENDING' AND (available_at IS NULL OR available_at <= ?1)
             ORDER BY priority DESC, created_at ASC, seq ASC LIMIT ?2",
    )?;
    let mut names = Names::default();
    let rows = stmt.query_map(params![to_micros(&now), limit as i64], |r| {
        let (facts, tags) = facts_at(r, 6, &mut names)?;
        let mut constraints = constraints(r, 3)?;
        constraints.tags = tags;
        Ok(PendingRun {
            id: r.get(0)?,
            priority: r.get(1)?,
            created_at: from_micros(r.get(2)?),
            constraints,
            facts,
            only_gpus: None,
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(StoreError::backend)
}

/// Every held run, from the partial index `runs_held` alone.
fn held_runs_blocking(conn: &Connection) -> Result<Vec<HeldRun>, StoreError> {
    let stmt = conn.prepare_cached(
        "SELECT id, worker_id, cpu, ram_mb, vram_mb, gpu_id, priority, queue, op_definition, image, attempt, preemptible, preemptions, labels, tags, assigned_at
             FROM runs INDEXED BY runs_held
             WHERE state IN ('ASSIGNED', 'RUNNING') AND worker_id IS NOT NULL",
    )?;
    held_rows(stmt, &[])
}

/// The runs `worker_id` holds, from the partial index `runs_held` alone.
fn held_on_worker_blocking(conn: &Connection, worker_id: &str) -> Result<Vec<HeldRun>, StoreError> {
    let stmt = conn.prepare_cached(
        "SELECT id, worker_id, cpu, ram_mb, vram_mb, gpu_id, priority, queue, op_definition, image, attempt, preemptible, preemptions, labels, tags, assigned_at
             FROM runs INDEXED BY runs_held
             WHERE state IN ('ASSIGNED', 'RUNNING') AND worker_id = ?1",
    )?;
    held_rows(stmt, &[SqlValue::Text(worker_id.to_owned())])
}

/// The held runs a `SELECT id, worker_id, cpu, ram_mb, vram_mb, gpu_id, priority` and the
/// nine fact columns (see [`facts_at`]) answers.
fn held_rows(
    mut stmt: rusqlite::CachedStatement<'_>,
    values: &[SqlValue],
) -> Result<Vec<HeldRun>, StoreError> {
    let mut names = Names::default();
    let rows = stmt.query_map(params_from_iter(values), |r| {
        let (facts, tags) = facts_at(r, 7, &mut names)?;
        let mut constraints = constraints(r, 2)?;
        constraints.tags = tags;
        Ok(HeldRun {
            id: r.get(0)?,
            worker_id: r.get(1)?,
            constraints,
            gpu_id: r.get(5)?,
            priority: r.get(6)?,
            facts,
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(StoreError::backend)
}

/// Assigns each of `placements` to `worker_id` if it is PENDING and fits the capacity the
/// worker has in this transaction, each run in its own savepoint (see [`Store::assign_runs`]).
fn assign_runs_blocking(
    conn: &Connection,
    worker_id: &str,
    placements: &[Placement],
    now: Timestamp,
    half_life_s: u32,
) -> Result<Vec<Result<Option<OpRun>, StoreError>>, StoreError> {
    let Some(worker) = get_worker_blocking(conn, worker_id)? else {
        return Ok(unknown_worker(worker_id, placements.len()));
    };
    let held = held_on_worker_blocking(conn, worker_id)?;
    let mut free = Capacity::free(&worker.resources, &held);
    let mut answers = Vec::with_capacity(placements.len());
    for (id, gpu) in placements {
        conn.execute_batch("SAVEPOINT run")?;
        let answer = update_run_blocking(conn, id, half_life_s, &mut |run| {
            assign_if_fits(run, worker_id, *gpu, &free, now)
        });
        close_savepoint(conn, "run", answer.is_ok())?;
        if let Ok(Some(run)) = &answer {
            free.take(&run.constraints, *gpu);
        }
        answers.push(answer);
    }
    Ok(answers)
}

/// Run `id` as stored (see [`StoreRead::load_run`]).
fn read_run(conn: &Connection, id: &str) -> Result<Option<OpRun>, StoreError> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM runs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    doc.map(|doc| run_from_json(id, &doc)).transpose()
}

/// Events of a run's attempt stored apart, with an index in `from..to` (see
/// [`StoreRead::event_range`]).
fn event_range_blocking(
    conn: &Connection,
    run_id: &str,
    attempt: u32,
    (from, to): (u64, u64),
    limit: usize,
    descending: bool,
) -> Result<Vec<(u64, EventEntry)>, StoreError> {
    let order = if descending { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT seq, doc FROM events WHERE run_id = ?1 AND attempt = ?2 AND seq >= ?3 AND seq < ?4
         ORDER BY seq {order} LIMIT ?5"
    );
    let bound = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![run_id, attempt, bound(from), bound(to), limit],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, doc) = row?;
        let seq = u64::try_from(seq).map_err(|e| StoreError::corrupt(run_id, e))?;
        events.push((seq, from_json(run_id, &doc)?));
    }
    Ok(events)
}

fn get_worker_blocking(conn: &Connection, id: &str) -> Result<Option<Worker>, StoreError> {
    read_doc(conn, "SELECT doc FROM workers WHERE id = ?1", id)
}

/// The document `sql` selects for key `id` (its one parameter), if there is one.
fn read_doc<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    let doc: Option<String> = conn
        .prepare_cached(sql)?
        .query_row([id], |r| r.get(0))
        .optional()?;
    doc.map(|doc| from_json(id, &doc)).transpose()
}

/// The kept tail of attempt `attempt`'s log of run `run_id`.
fn get_log_blocking(
    conn: &Connection,
    run_id: &str,
    attempt: u32,
) -> Result<Option<LogTail>, StoreError> {
    conn.prepare_cached(
        "SELECT text, total_bytes FROM run_logs WHERE run_id = ?1 AND attempt = ?2",
    )?
    .query_row(params![run_id, attempt], |r| {
        Ok(LogTail {
            text: r.get(0)?,
            total_bytes: r.get::<_, i64>(1)? as u64,
        })
    })
    .optional()
    .map_err(StoreError::backend)
}

/// The constraints in columns `first..first + 3` (cpu, ram_mb, vram_mb) of a row.
fn constraints(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Constraints> {
    Ok(Constraints {
        cpu: row.get(first)?,
        ram_mb: row.get::<_, Option<i64>>(first + 1)?.map(|v| v as u64),
        vram_mb: row.get::<_, Option<i64>>(first + 2)?.map(|v| v as u64),
        ..Constraints::default()
    })
}

/// Decodes the documents a query selects as `(key, doc)` rows.
fn read_docs<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: &[SqlValue],
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params_from_iter(params.iter()), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut docs = Vec::new();
    for row in rows {
        let (id, doc) = row?;
        docs.push(from_json(&id, &doc)?);
    }
    Ok(docs)
}

/// The writer thread: group commits until every [`SqliteStore`] handle is gone.
fn write_loop(writer: Writer, queue: std::sync::mpsc::Receiver<WriteJob>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&writer, group);
    }
}

/// Ends savepoint `name`, keeping its changes or rolling them back.
fn close_savepoint(conn: &Connection, name: &str, keep: bool) -> rusqlite::Result<()> {
    if keep {
        conn.execute_batch(&format!("RELEASE {name}"))
    } else {
        conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))
    }
}

/// Why the writes of a transaction SQLite rolled back on its own were lost: the failure of
/// the write during which it happened, if that says (a full database stays [`StoreError::Full`]).
fn rolled_back(cause: Option<StoreError>) -> StoreError {
    match cause {
        Some(full @ StoreError::Full(_)) => full,
        Some(e) => StoreError::backend(format!(
            "SQLite rolled back the group's transaction after a write of it failed ({e}); nothing of this write was stored"
        )),
        None => StoreError::backend(
            "SQLite rolled back the group's transaction on its own; nothing of this write was stored",
        ),
    }
}

fn commit_group(writer: &Writer, group: Vec<WriteJob>) {
    let conn = &writer.conn;
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let reason = format!("cannot begin a write transaction: {e}");
        tracing::error!("{reason}; {} writes dropped", group.len());
        // Dropping a job unblocks its caller with an error.
        return;
    }
    // The replies of the writes done in the open transaction.
    let mut replies = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    while let Some(job) = jobs.next() {
        if let Err(e) = conn.execute_batch("SAVEPOINT write") {
            tracing::error!(error = %e, "cannot open a savepoint; the write is dropped");
            continue;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)));
        let (keep, failure) = match outcome {
            Ok((result, reply)) => {
                replies.push(reply);
                (result.is_ok(), result.err())
            }
            Err(_) => {
                tracing::error!("a store write panicked; its changes are rolled back");
                (false, None)
            }
        };
        // After SQLite's own rollback there is no savepoint left to close.
        if !conn.is_autocommit()
            && let Err(e) = close_savepoint(conn, "write", keep)
        {
            tracing::error!(error = %e, "cannot close a savepoint");
        }
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (SQLITE_FULL, an I/O error): what the
            // group wrote so far is gone. Answer those writes so, and run the rest of the
            // group in a new transaction.
            let lost = rolled_back(failure);
            tracing::error!(error = %lost, writes = replies.len(), "SQLite rolled back a group commit; the rest of the group is redone");
            for reply in replies.drain(..) {
                reply(Err(lost.clone()));
            }
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                tracing::error!(error = %e, "cannot begin a write transaction; {} writes dropped", jobs.len());
                return;
            }
        }
    }
    let committed = writer.commit().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::from(e)
        } else {
            StoreError::backend_while("commit failed", e)
        }
    });
    if committed.is_ok() {
        // A full channel means the checkpointer is already due to run: nothing to add.
        let _ = writer.committed.try_send(());
    }
    for reply in replies {
        reply(committed.clone());
    }
}

/// The checkpointer thread: copies committed WAL pages into the database file (a PASSIVE
/// checkpoint: it waits for no reader and no writer) at most [`CHECKPOINT_EVERY`] after a
/// group commit, until the writer thread is gone. The writer's own groups then never wait
/// for that copy (see the module docs).
fn checkpoint_loop(conn: Connection, commits: std::sync::mpsc::Receiver<()>) {
    while commits.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_EVERY);
        while commits.try_recv().is_ok() {}
        let checkpoint = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = checkpoint {
            // Busy with another process's checkpoint, or failing: the writer checkpoints
            // itself past WRITER_CHECKPOINT_PAGES.
            tracing::debug!(error = %e, "background checkpoint did not run");
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// A failure of the SQLite driver, kept as the source.
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            Self::Full(e.to_string())
        } else {
            Self::backend(e)
        }
    }
}

impl From<rusqlite::Error> for QueryError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open`] with `options`.
    pub async fn open_with(
        path: impl Into<PathBuf>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, &options))
            .await
            .map_err(StoreError::backend)?
    }

    /// Sets the most pages the database file may have from now on (`PRAGMA max_page_count`,
    /// as [`SqliteOptions::max_page_count`]): tests fill the "disk" and free it again.
    pub async fn set_max_page_count(&self, pages: u32) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.pragma_update(None, "max_page_count", pages)?;
            Ok(())
        })
        .await
    }

    fn open_blocking(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::backend_while(
                    format!("cannot create data directory {}", parent.display()),
                    e,
                )
            })?;
        }
        let mut writer = Connection::open(path)
            .map_err(|e| StoreError::backend_while(format!("cannot open {}", path.display()), e))?;
        configure(&writer)?;
        migrate(&mut writer)?;
        if let Some(pages) = options.max_page_count {
            writer.pragma_update(None, "max_page_count", pages)?;
        }
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // The writer's settings: `synchronous=FULL` makes a checkpoint fsync the database
        // file before the WAL is reused.
        let checkpointer = Connection::open(path)?;
        configure(&checkpointer)?;
        let (committed, commits) = std::sync::mpsc::sync_channel(1);
        let writer = Writer::new(writer, committed);
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(10))?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (writes, queue) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("gyoza-sqlite-writer".into())
            .spawn(move || write_loop(writer, queue))
            .map_err(|e| StoreError::backend_while("cannot start the writer thread", e))?;
        std::thread::Builder::new()
            .name("gyoza-sqlite-checkpointer".into())
            .spawn(move || checkpoint_loop(checkpointer, commits))
            .map_err(|e| StoreError::backend_while("cannot start the checkpointer thread", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writes,
                readers,
                next_reader: AtomicUsize::new(0),
                usage_half_life: UsageHalfLife::default(),
                window: window::WindowCache::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Sets the half-life, in seconds (at least 1), with which run writes from now on accrue
    /// queue usage (see the store's module docs; [`super::DEFAULT_HALF_LIFE_S`] until set).
    /// The usage stored so far is kept as it is. Every clone of this store shares it.
    pub fn set_usage_half_life(&self, seconds: u32) {
        self.inner.usage_half_life.set(seconds);
    }

    /// The half-life, in seconds, with which run writes accrue queue usage.
    pub fn usage_half_life(&self) -> u32 {
        self.inner.usage_half_life.get()
    }

    /// Runs `f` in the next group commit and answers once that group is durable.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// [`SqliteStore::write`], and `committed` called with `f`'s answer on the writer thread
    /// as soon as the group committed, before any answer is sent: what this process keeps in
    /// memory of the database then moves with the commit, not when the caller's task next
    /// runs (under load, milliseconds later).
    async fn write_then<T, F, C>(&self, f: F, committed: C) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        C: FnOnce(&T) + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let result = f(conn);
            let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
            let reply: WriteReply = Box::new(move |commit| {
                let _ = answer.send(match (result, commit) {
                    (Err(e), _) => Err(e),
                    (Ok(value), Ok(())) => {
                        committed(&value);
                        Ok(value)
                    }
                    (Ok(_), Err(e)) => Err(e),
                });
            });
            (outcome, reply)
        });
        self.inner
            .writes
            .send(job)
            .map_err(|_| StoreError::backend("the store's writer thread has stopped"))?;
        answered.await.map_err(|_| {
            StoreError::backend(
                "the store dropped the write (its transaction could not start, or it panicked); see the server log",
            )
        })?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Take the first idle reader, else wait for the one whose turn it is.
            let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            match inner.idle_reader(start) {
                Some(mut conn) => f(&mut conn),
                None => f(&mut lock(&inner.readers[start % inner.readers.len()])),
            }
        })
        .await
        .map_err(StoreError::backend)?
    }

    /// [`SqliteStore::read`] for a read of a few index steps (tens of microseconds): on the
    /// calling thread when a reader is idle, since handing it to the blocking pool and back
    /// costs more than the read (a profile of full workers' claims put the hand-off at about
    /// as much CPU as the read itself); through the pool when every reader is busy. A WAL
    /// reader does not wait for the writer, so this does not hold up the runtime.
    async fn read_small<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match self.read_here(f) {
            Ok(answer) => answer,
            Err(f) => self.read(f).await,
        }
    }

    /// `f` on an idle reader, on this thread; `f` back when every reader is busy.
    fn read_here<T, F>(&self, f: F) -> Result<Result<T, StoreError>, F>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError>,
    {
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        match self.inner.idle_reader(start) {
            Some(mut conn) => Ok(f(&mut conn)),
            None => Err(f),
        }
    }
}

impl Inner {
    /// The first idle reader from the `start`th on, if any is idle.
    fn idle_reader(&self, start: usize) -> Option<std::sync::MutexGuard<'_, Connection>> {
        let n = self.readers.len();
        (0..n).find_map(|i| self.readers[(start + i) % n].try_lock().ok())
    }
}

/// Builds the WHERE clause of a run listing's filters.
fn run_filters(query: &RunQuery) -> (Vec<String>, Vec<SqlValue>) {
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    if query.queue_timeout {
        // Written out, not bound: the partial index `runs_queue_timed` (see `runs_source`)
        // holds exactly these rows.
        clauses.push("state = 'PENDING' AND queue_timeout_s > 0".to_owned());
    }
    if let Some(state) = query.state
        && !reads_queue_timed(query)
    {
        clauses.push("state = ?".to_owned());
        params.push(SqlValue::Text(state.as_str().to_owned()));
    }
    if let Some(definition) = &query.op_definition {
        clauses.push("op_definition = ?".to_owned());
        params.push(SqlValue::Text(definition.clone()));
    }
    if let Some(image) = &query.image {
        clauses.push("image = ?".to_owned());
        params.push(SqlValue::Text(image.clone()));
    }
    // Queue and labels live only in the document (a run stored before queues is in the
    // default one); these filters read it, without an index of their own.
    if let Some(queue) = &query.queue {
        clauses.push(format!(
            "COALESCE(json_extract(doc, '$.queue'), '{}') = ?",
            gyoza_core::resources::DEFAULT_QUEUE
        ));
        params.push(SqlValue::Text(queue.clone()));
    }
    if let Some((key, value)) = &query.label {
        // The key goes in as a parameter of the path: any text is safe.
        clauses.push("json_extract(doc, '$.labels.' || json_quote(?)) = ?".to_owned());
        params.push(SqlValue::Text(key.clone()));
        params.push(SqlValue::Text(value.clone()));
    }
    for bound in &query.created {
        let (op, micros) = match *bound {
            CreatedBound::Gte(m) => (">=", m),
            CreatedBound::Lte(m) => ("<=", m),
            CreatedBound::Gt(m) => (">", m),
            CreatedBound::Lt(m) => ("<", m),
        };
        clauses.push(format!("created_at {op} ?"));
        params.push(SqlValue::Integer(micros));
    }
    (clauses, params)
}

/// Whether a listing is the queue-timeout one that the partial index serves (asked with
/// another state than PENDING, it matches nothing and is left to the planner).
fn reads_queue_timed(query: &RunQuery) -> bool {
    query.queue_timeout && query.state.is_none_or(|state| state == OpRunState::Pending)
}

/// The table a run listing reads, with the index it must use when the planner would pick
/// another: left to itself, it takes `runs_by_state` for the queue-timeout listing and reads
/// every PENDING row to find the few with a timeout.
fn runs_source(query: &RunQuery) -> &'static str {
    if reads_queue_timed(query) {
        "runs INDEXED BY runs_queue_timed"
    } else {
        "runs"
    }
}

/// The SELECT of one page of a run listing, with `clauses` (filters and cursor), newest
/// first unless `ascending`.
fn listing_sql(query: &RunQuery, clauses: &[String], ascending: bool) -> String {
    let order = if ascending { "ASC" } else { "DESC" };
    format!(
        "SELECT seq, created_at, id, doc FROM {} {} ORDER BY created_at {order}, seq {order} LIMIT {}",
        runs_source(query),
        where_sql(clauses),
        query.limit
    )
}

fn where_sql(clauses: &[String]) -> String {
    if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    }
}

fn list_runs_blocking(conn: &mut Connection, query: &RunQuery) -> Result<RunPage, QueryError> {
    let tx = conn.transaction()?;
    let (mut clauses, mut params) = run_filters(query);
    let base_clauses = clauses.clone();
    let base_params = params.clone();
    let cursor_key = |param: &'static str, id: &str| -> Result<(i64, i64), QueryError> {
        tx.query_row(
            "SELECT created_at, seq FROM runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| QueryError::UnknownCursor {
            param,
            id: id.to_owned(),
        })
    };
    let ascending = match &query.cursor {
        Cursor::Start => false,
        Cursor::StartingAfter(id) => {
            let (created, seq) = cursor_key("starting_after", id)?;
            clauses.push("(created_at, seq) < (?, ?)".to_owned());
            params.extend([SqlValue::Integer(created), SqlValue::Integer(seq)]);
            false
        }
        Cursor::EndingBefore(id) => {
            let (created, seq) = cursor_key("ending_before", id)?;
            clauses.push("(created_at, seq) > (?, ?)".to_owned());
            params.extend([SqlValue::Integer(created), SqlValue::Integer(seq)]);
            true
        }
    };
    let sql = listing_sql(query, &clauses, ascending);
    let mut rows: Vec<(i64, i64, OpRun)> = {
        let mut stmt = tx.prepare(&sql)?;
        let mapped = stmt.query_map(params_from_iter(params.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut rows = Vec::new();
        for row in mapped {
            let (seq, created, id, doc) = row?;
            rows.push((seq, created, run_from_json(&id, &doc)?));
        }
        rows
    };
    if ascending {
        rows.reverse();
    }
    // As the original server: "before" pages look for newer runs than the page's first,
    // every other page for older runs than its last.
    let boundary = if ascending { rows.first() } else { rows.last() };
    let has_more = match boundary {
        None => false,
        Some((seq, created, _)) => {
            let mut clauses = base_clauses;
            let mut params = base_params;
            let op = if ascending { ">" } else { "<" };
            clauses.push(format!("(created_at, seq) {op} (?, ?)"));
            params.extend([SqlValue::Integer(*created), SqlValue::Integer(*seq)]);
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {} {})",
                runs_source(query),
                where_sql(&clauses)
            );
            tx.query_row(&sql, params_from_iter(params.iter()), |r| {
                r.get::<_, bool>(0)
            })?
        }
    };
    Ok(RunPage {
        runs: rows.into_iter().map(|(_, _, run)| run).collect(),
        has_more,
    })
}

#[async_trait]
impl StoreRead for SqliteStore {
    async fn get_definition(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<OpDefinition>, StoreError> {
        let id = id.to_owned();
        let version = version.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT version, doc FROM definitions WHERE id = ?1")?;
            let rows = stmt.query_map([&id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut best: Option<(String, String)> = None;
            for row in rows {
                let (v, doc) = row?;
                let better = match (&version, &best) {
                    (Some(wanted), _) => *wanted == v,
                    (None, None) => true,
                    (None, Some((best_v, _))) => compare_versions(&v, best_v).is_gt(),
                };
                if better {
                    best = Some((v, doc));
                }
            }
            best.map(|(_, doc)| from_json(&id, &doc)).transpose()
        })
        .await
    }

    async fn list_definitions(&self) -> Result<Vec<OpDefinition>, StoreError> {
        self.read(|conn| {
            read_docs(
                conn,
                "SELECT id, doc FROM definitions ORDER BY id, created_at, version",
                &[],
            )
        })
        .await
    }

    async fn load_run(&self, id: &str) -> Result<Option<OpRun>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| read_run(conn, &id)).await
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
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            event_range_blocking(conn, &run_id, attempt, (from, to), limit, descending)
        })
        .await
    }

    async fn stored_run_bytes(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let bytes: Option<i64> = conn
                .prepare_cached("SELECT length(CAST(doc AS BLOB)) FROM runs WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            Ok(bytes.map(|b| u64::try_from(b).unwrap_or(0)))
        })
        .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, QueryError> {
        let query = query.clone();
        let inner = self.inner.clone();
        // Not through `read`: the closure returns a QueryError, not a StoreError.
        tokio::task::spawn_blocking(move || {
            let n = inner.readers.len();
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % n;
            list_runs_blocking(&mut lock(&inner.readers[i]), &query)
        })
        .await
        .map_err(|e| QueryError::Store(StoreError::backend(e)))?
    }

    async fn pending_window(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRun>, StoreError> {
        let inner = self.inner.clone();
        self.read(move |conn| inner.window.window(conn, now, limit))
            .await
    }

    async fn runs_on_worker(&self, worker_id: &str) -> Result<Vec<OpRun>, StoreError> {
        let worker_id = worker_id.to_owned();
        self.read(move |conn| {
            let mut runs: Vec<OpRun> = read_docs(
                conn,
                "SELECT id, doc FROM runs WHERE worker_id = ?1 AND state IN ('ASSIGNED', 'RUNNING')",
                &[SqlValue::Text(worker_id)],
            )?;
            runs.iter_mut().for_each(OpRun::settle);
            Ok(runs)
        })
        .await
    }

    async fn held_runs(&self) -> Result<Vec<HeldRun>, StoreError> {
        self.read(|conn| held_runs_blocking(conn)).await
    }

    async fn claim_view(
        &self,
        worker_id: &str,
        now: Timestamp,
        window: usize,
        half_life_s: u32,
    ) -> Result<Option<ClaimView>, StoreError> {
        let (worker_id, inner) = (worker_id.to_owned(), self.inner.clone());
        self.read(move |conn| {
            // One read transaction: the five reads see one state of the database.
            let tx = conn.transaction()?;
            let Some(worker) = get_worker_blocking(&tx, &worker_id)? else {
                return Ok(None);
            };
            Ok(Some(ClaimView {
                held: held_runs_blocking(&tx)?,
                pending: inner.window.window(&tx, now, window)?,
                workers: read_docs(&tx, "SELECT id, doc FROM workers ORDER BY id", &[])?,
                usage: super::usage_or_nothing(queue_usage_blocking(&tx, now, half_life_s)),
                worker,
            }))
        })
        .await
    }

    async fn claim_floor(
        &self,
        worker_id: &str,
        _now: Timestamp,
    ) -> Result<Option<ClaimFloor>, StoreError> {
        // Runs waiting out a backoff count too: a lower bound is enough.
        let worker_id = worker_id.to_owned();
        self.read_small(move |conn| {
            let tx = conn.transaction()?;
            let Some(worker) = get_worker_blocking(&tx, &worker_id)? else {
                return Ok(None);
            };
            let least = |index: &str, column: &str| -> Result<Option<u64>, StoreError> {
                // NULL (no figure: needs nothing) sorts first; no row: nothing is PENDING.
                let sql = format!(
                    "SELECT IFNULL({column}, 0) FROM runs INDEXED BY {index}
                         WHERE state = 'PENDING' ORDER BY {column} LIMIT 1"
                );
                let least: Option<i64> = tx
                    .prepare_cached(&sql)?
                    .query_row([], |r| r.get(0))
                    .optional()?;
                Ok(least.map(|v| u64::try_from(v).unwrap_or(0)))
            };
            let least = match (
                least("runs_pending_cpu", "cpu")?,
                least("runs_pending_ram", "ram_mb")?,
            ) {
                (Some(cpu), Some(ram_mb)) => Some(Floor { cpu, ram_mb }),
                _ => None,
            };
            Ok(Some(ClaimFloor {
                held: held_on_worker_blocking(&tx, &worker_id)?,
                worker,
                least,
            }))
        })
        .await
    }

    async fn get_worker(&self, id: &str) -> Result<Option<Worker>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| get_worker_blocking(conn, &id)).await
    }

    async fn list_workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.read(|conn| read_docs(conn, "SELECT id, doc FROM workers ORDER BY id", &[]))
            .await
    }

    async fn stale_workers(&self, cutoff: Timestamp) -> Result<Vec<Worker>, StoreError> {
        let cutoff = SqlValue::Integer(to_micros(&cutoff));
        self.read(move |conn| {
            read_docs(
                conn,
                "SELECT id, doc FROM workers WHERE last_heartbeat_at < ?1 ORDER BY id",
                &[cutoff],
            )
        })
        .await
    }

    async fn count_runs_by_state(&self) -> Result<Vec<(OpRunState, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM runs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut counts = Vec::new();
            for row in rows {
                let (state, count) = row?;
                let state = state
                    .parse::<OpRunState>()
                    .map_err(|e| StoreError::corrupt("runs.state", e))?;
                counts.push((state, count as u64));
            }
            Ok(counts)
        })
        .await
    }

    async fn count_pending_by_queue(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|conn| {
            // From the partial index `runs_pending`, which holds the queue: no document read.
            let mut stmt = conn.prepare_cached(
                "SELECT COALESCE(queue, ?1), COUNT(*) FROM runs WHERE state = 'PENDING'
                 GROUP BY 1 ORDER BY 1",
            )?;
            let rows = stmt.query_map([gyoza_core::resources::DEFAULT_QUEUE], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_log(&self, run_id: &str, attempt: u32) -> Result<Option<LogTail>, StoreError> {
        let run_id = run_id.to_owned();
        self.read(move |conn| get_log_blocking(conn, &run_id, attempt))
            .await
    }

    async fn due_deliveries(&self, now_us: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM runs WHERE deliver_at IS NOT NULL AND deliver_at <= ?1
                 ORDER BY deliver_at, id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_us, limit], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn queue_usage(
        &self,
        now: Timestamp,
        half_life_s: u32,
    ) -> Result<Vec<(String, [f64; 3])>, StoreError> {
        self.read(move |conn| queue_usage_blocking(conn, now, half_life_s))
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn upsert_definition(
        &self,
        mut definition: OpDefinition,
    ) -> Result<(OpDefinition, bool), StoreError> {
        self.write(move |conn| {
            let existing: Option<String> = conn
                .query_row(
                    "SELECT doc FROM definitions WHERE id = ?1 AND version = ?2",
                    params![definition.id, definition.version],
                    |r| r.get(0),
                )
                .optional()?;
            let existing = existing
                .map(|doc| from_json(&definition.id, &doc))
                .transpose()?;
            let created = replace_definition(&mut definition, existing);
            conn.execute(
                "INSERT OR REPLACE INTO definitions (id, version, created_at, doc) VALUES (?1, ?2, ?3, ?4)",
                params![definition.id, definition.version, to_micros(&definition.created_at), to_json(&definition)?],
            )?;
            Ok((definition, created))
        })
        .await
    }

    async fn insert_run(&self, run: &OpRun) -> Result<(), StoreError> {
        let run = run.clone();
        self.write(move |conn| write_run(conn, &run, true)).await
    }

    async fn insert_runs(&self, runs: &[OpRun]) -> Result<(), StoreError> {
        let runs = runs.to_vec();
        // One write: one savepoint, kept whole or rolled back whole.
        self.write(move |conn| runs.iter().try_for_each(|run| write_run(conn, run, true)))
            .await
    }

    async fn delete_run(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM events WHERE run_id = ?1", [&id])?;
            conn.execute("DELETE FROM runs WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    async fn update_run(
        &self,
        id: &str,
        mut mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        let (id, half_life_s) = (id.to_owned(), self.usage_half_life());
        self.write(move |conn| update_run_blocking(conn, &id, half_life_s, &mut *mutation))
            .await
    }

    async fn update_runs(
        &self,
        ids: Vec<String>,
        mutation: SharedRunMutation,
    ) -> Vec<Result<Option<OpRun>, StoreError>> {
        let (count, half_life_s) = (ids.len(), self.usage_half_life());
        // One write for all: each run in its own savepoint, so that one refusal (or failure)
        // leaves the others' changes in place.
        let answers = self
            .write(move |conn| {
                let mut answers = Vec::with_capacity(ids.len());
                for id in &ids {
                    let savepoint = conn.execute_batch("SAVEPOINT run");
                    let answer = savepoint.map_err(StoreError::backend).and_then(|()| {
                        update_run_blocking(conn, id, half_life_s, &mut |run| mutation(run))
                    });
                    close_savepoint(conn, "run", answer.is_ok())?;
                    answers.push(answer);
                }
                Ok(answers)
            })
            .await;
        answer_each(answers, count)
    }

    async fn assign_runs(
        &self,
        worker_id: &str,
        placements: Vec<Placement>,
        now: Timestamp,
    ) -> Vec<Result<Option<OpRun>, StoreError>> {
        let (count, half_life_s) = (placements.len(), self.usage_half_life());
        let worker_id = worker_id.to_owned();
        let inner = self.inner.clone();
        let written = self
            .write_then(
                move |conn| {
                    let before = window::changes(conn)?;
                    let answers =
                        assign_runs_blocking(conn, &worker_id, &placements, now, half_life_s)?;
                    Ok((answers, before, window::changes(conn)?))
                },
                // Committed: the count moved by these assignments alone, between the two
                // reads. Taken in on the writer thread, in commit order, before the claims
                // that read next can miss it and read the window again.
                move |(answers, before, after)| inner.window.assigned(answers, *before, *after),
            )
            .await;
        answer_each(written.map(|(answers, _, _)| answers), count)
    }

    async fn update_run_if_silent(
        &self,
        id: &str,
        worker_id: &str,
        cutoff: Timestamp,
        mut mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        let (id, worker_id) = (id.to_owned(), worker_id.to_owned());
        let half_life_s = self.usage_half_life();
        self.write(move |conn| {
            let worker = get_worker_blocking(conn, &worker_id)?;
            if worker.is_some_and(|w| w.last_heartbeat_at >= cutoff) {
                return Err(worker_not_silent(&worker_id).into());
            }
            update_run_blocking(conn, &id, half_life_s, &mut *mutation)
        })
        .await
    }

    async fn heartbeat(&self, heartbeat: Heartbeat, now: Timestamp) -> Result<Worker, StoreError> {
        self.write(move |conn| {
            let existing = get_worker_blocking(conn, &heartbeat.worker_id)?;
            let worker = Worker::from_heartbeat(existing, heartbeat, now)?;
            conn.prepare_cached(
                "INSERT OR REPLACE INTO workers (id, last_heartbeat_at, doc) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![worker.id, to_micros(&now), to_json(&worker)?])?;
            Ok(worker)
        })
        .await
    }

    async fn append_log(
        &self,
        run_id: &str,
        attempt: u32,
        text: &str,
        cap: usize,
    ) -> Result<(), StoreError> {
        let (run_id, text) = (run_id.to_owned(), text.to_owned());
        self.write(move |conn| {
            let mut tail = get_log_blocking(conn, &run_id, attempt)?.unwrap_or_default();
            tail.append(&text, cap);
            conn.execute(
                "INSERT OR REPLACE INTO run_logs (run_id, attempt, total_bytes, text) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, attempt, tail.total_bytes as i64, tail.text],
            )?;
            Ok(())
        })
        .await
    }

    async fn lease_delivery(
        &self,
        run_id: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
    ) -> Result<DeliveryLease, StoreError> {
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        let start = to_json(&DeliveryProgress::default())?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO deliveries (run_id, owner, until_us, doc) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, until_us = excluded.until_us
                 WHERE deliveries.owner IS NULL OR deliveries.owner = excluded.owner
                    OR deliveries.until_us < ?5",
            )?
            .execute(params![run_id, owner, until_us, start, now_us])?;
            let (holder, doc): (Option<String>, String) = conn
                .prepare_cached("SELECT owner, doc FROM deliveries WHERE run_id = ?1")?
                .query_row([&run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if holder.as_deref() != Some(owner.as_str()) {
                return Ok(DeliveryLease::Held);
            }
            Ok(DeliveryLease::Taken(from_json(&run_id, &doc)?))
        })
        .await
    }

    async fn save_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        until_us: i64,
    ) -> Result<bool, StoreError> {
        let (run_id, owner, doc) = (run_id.to_owned(), owner.to_owned(), to_json(progress)?);
        self.write(move |conn| {
            let saved = conn
                .prepare_cached(
                    "UPDATE deliveries SET doc = ?3, until_us = ?4 WHERE run_id = ?1 AND owner = ?2",
                )?
                .execute(params![run_id, owner, doc, until_us])?;
            Ok(saved == 1)
        })
        .await
    }

    async fn release_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        retry_at_us: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        let (progress, doc) = (progress.clone(), to_json(progress)?);
        self.write(move |conn| {
            let released = conn
                .prepare_cached(
                    "UPDATE deliveries SET doc = ?3, owner = NULL, until_us = 0
                     WHERE run_id = ?1 AND owner = ?2",
                )?
                .execute(params![run_id, owner, doc])?;
            if released != 1 {
                return Ok(false);
            }
            if let Some(retry_at) = retry_at_us {
                conn.prepare_cached(
                    "UPDATE runs SET deliver_at = ?2 WHERE id = ?1 AND deliver_at IS NOT NULL",
                )?
                .execute(params![run_id, retry_at])?;
                return Ok(false);
            }
            // In the writer's transaction: no change of the run falls between the look and
            // the clearing.
            let done = read_run(conn, &run_id)?.is_none_or(|run| progress.covers(&run));
            if done {
                conn.prepare_cached("UPDATE runs SET deliver_at = NULL WHERE id = ?1")?
                    .execute([&run_id])?;
            }
            Ok(done)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gyoza_core::EventType;
    use gyoza_core::run::NewRun;

    /// What takes a database back before the kept window's triggers (schema 9), which name
    /// the columns older schemas lack, and before the queue-timeout column (schema 10).
    const WINDOW_TRIGGERS_GONE: &str = "DROP TRIGGER runs_pending_inserted;
        DROP TRIGGER runs_pending_deleted; DROP TRIGGER runs_pending_changed;
        DROP INDEX runs_queue_timed; ALTER TABLE runs DROP COLUMN queue_timeout_s;";

    fn sized(cpu: u32, ram_mb: u64, vram_mb: Option<u64>) -> OpRun {
        OpRun::new(
            NewRun {
                image: "img".into(),
                constraints: Constraints {
                    cpu: Some(cpu),
                    ram_mb: Some(ram_mb),
                    vram_mb,
                    ..Constraints::default()
                },
                ..NewRun::default()
            },
            // Stored to the microsecond.
            from_micros(to_micros(&chrono::Utc::now())),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_scheduling_columns_are_backfilled_for_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gyoza.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let pending = sized(2, 1024, Some(4096));
        let held = sized(1, 512, Some(2048));
        for run in [&pending, &held] {
            store.insert_run(run).await.unwrap();
        }
        // Stored to the microsecond.
        let now = from_micros(to_micros(&chrono::Utc::now()));
        store
            .update_run(
                &held.id,
                Box::new(move |r| {
                    r.assign("w1", now)?;
                    let payload = serde_json::json!({"worker_id": "w1", "gpu_id": 3});
                    let payload = payload.as_object().cloned().unwrap_or_default();
                    r.add_event(EventType::Started, "".into(), payload, now)
                }),
            )
            .await
            .unwrap();
        drop(store);
        // Turn the file back into a schema-2 database, as an older gyoza left it.
        let conn = Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute_batch(WINDOW_TRIGGERS_GONE).unwrap();
        conn.execute_batch(
            "DROP INDEX runs_pending; DROP INDEX runs_held;
             DROP INDEX runs_pending_cpu; DROP INDEX runs_pending_ram;
             ALTER TABLE runs DROP COLUMN queue; ALTER TABLE runs DROP COLUMN attempt;
             ALTER TABLE runs DROP COLUMN preemptible; ALTER TABLE runs DROP COLUMN preemptions;
             ALTER TABLE runs DROP COLUMN labels; ALTER TABLE runs DROP COLUMN tags;
             ALTER TABLE runs DROP COLUMN assigned_at;
             DROP INDEX runs_to_deliver; ALTER TABLE runs DROP COLUMN deliver_at;
             DROP TABLE deliveries;
             ALTER TABLE runs DROP COLUMN cpu; ALTER TABLE runs DROP COLUMN ram_mb;
             ALTER TABLE runs DROP COLUMN vram_mb; ALTER TABLE runs DROP COLUMN gpu_id;
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path).await.unwrap();
        let window = store.pending_window(chrono::Utc::now(), 10).await.unwrap();
        assert_eq!(window, vec![PendingRun::from(&pending)]);
        let held_now = store.held_runs().await.unwrap();
        assert_eq!(
            held_now,
            vec![HeldRun {
                id: held.id.clone(),
                worker_id: "w1".into(),
                constraints: held.constraints.clone(),
                gpu_id: Some(3),
                priority: held.priority,
                facts: gyoza_core::RunFacts {
                    assigned_at: Some(now),
                    ..gyoza_core::RunFacts::of(&held)
                },
            }]
        );
    }

    /// A PENDING run stored with a queue timeout before the store kept it in a column of its
    /// own is found by the timeout check's listing after the migration; one without a timeout
    /// is not read at all.
    #[tokio::test]
    async fn a_pending_run_stored_before_the_queue_timeout_column_is_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gyoza.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let mut timed = sized(1, 1, None);
        timed.constraints.queue_timeout_s = Some(60);
        store.insert_run(&timed).await.unwrap();
        let untimed = sized(1, 1, None);
        store.insert_run(&untimed).await.unwrap();
        drop(store);
        // Back to schema 9, as the gyoza before the column left the file.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX runs_queue_timed; ALTER TABLE runs DROP COLUMN queue_timeout_s;
             PRAGMA user_version = 9;",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).await.unwrap();
        let query = RunQuery {
            limit: 10,
            state: Some(OpRunState::Pending),
            queue_timeout: true,
            ..RunQuery::default()
        };
        let page = store.list_runs(&query).await.unwrap();
        let ids: Vec<_> = page.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec![timed.id.as_str()]);
        // The listing reads the partial index, not every PENDING run.
        let (clauses, params) = run_filters(&query);
        let conn = Connection::open(&path).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                listing_sql(&query, &clauses, false)
            ))
            .unwrap()
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("runs_queue_timed"))
                && !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "the listing should read the partial index in its order: {plan:?}"
        );
    }

    #[tokio::test]
    async fn a_run_stored_before_queues_is_listed_in_the_default_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gyoza.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let old = sized(1, 1, None);
        store.insert_run(&old).await.unwrap();
        let mut queued = sized(1, 1, None);
        queued.queue = "gpu".into();
        store.insert_run(&queued).await.unwrap();
        drop(store);
        // As an older gyoza stored it: no queue in the document.
        let conn = Connection::open(&path).unwrap();
        let changed = conn
            .execute(
                "UPDATE runs SET doc = json_remove(doc, '$.queue') WHERE id = ?1",
                [&old.id],
            )
            .unwrap();
        assert_eq!(changed, 1);
        drop(conn);
        let store = SqliteStore::open(&path).await.unwrap();
        let listed = |queue: &str| {
            let query = RunQuery {
                limit: 10,
                queue: Some(queue.to_owned()),
                ..RunQuery::default()
            };
            let store = &store;
            async move {
                let page = store.list_runs(&query).await.unwrap();
                page.runs.into_iter().map(|r| r.id).collect::<Vec<_>>()
            }
        };
        assert_eq!(listed("default").await, vec![old.id.clone()]);
        assert_eq!(listed("gpu").await, vec![queued.id.clone()]);
        assert_eq!(
            store.load_run(&old.id).await.unwrap().unwrap().queue,
            "default"
        );
    }

    #[tokio::test]
    async fn an_older_file_has_its_events_moved_out_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gyoza.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let now = from_micros(to_micros(&chrono::Utc::now()));
        // A run with two attempts and their timelines, as an older gyoza stored it: inline.
        let mut run = sized(1, 256, None);
        run.inputs.insert("k".into(), serde_json::json!("v"));
        run.attempts[0].inputs = run.inputs.clone();
        run.assign("w1", now).unwrap();
        for i in 0..30 {
            run.add_event(
                EventType::Info,
                serde_json::json!(format!("a1-{i}")),
                Default::default(),
                now,
            )
            .unwrap();
        }
        run.retry(true, "again".into(), Default::default(), now)
            .unwrap();
        run.assign("w1", now).unwrap();
        for i in 0..20 {
            run.add_event(
                EventType::Info,
                serde_json::json!(format!("a2-{i}")),
                Default::default(),
                now,
            )
            .unwrap();
        }
        let mut old = serde_json::to_value(&run).unwrap();
        for attempt in old["attempts"].as_array_mut().unwrap() {
            attempt.as_object_mut().unwrap().remove("events_total");
        }
        store.insert_run(&sized(1, 1, None)).await.unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute_batch(WINDOW_TRIGGERS_GONE).unwrap();
        conn.execute_batch(
            "DROP TABLE events; DROP INDEX runs_to_deliver; ALTER TABLE runs DROP COLUMN deliver_at;
             DROP TABLE deliveries;
             DROP INDEX runs_pending; DROP INDEX runs_held;
             ALTER TABLE runs DROP COLUMN queue; ALTER TABLE runs DROP COLUMN attempt;
             ALTER TABLE runs DROP COLUMN preemptible; ALTER TABLE runs DROP COLUMN preemptions;
             ALTER TABLE runs DROP COLUMN labels; ALTER TABLE runs DROP COLUMN tags;
             ALTER TABLE runs DROP COLUMN assigned_at;
             CREATE INDEX runs_pending ON runs (priority DESC, created_at, seq, available_at, id, cpu, ram_mb, vram_mb)
                 WHERE state = 'PENDING';
             CREATE INDEX runs_held ON runs (worker_id, state, id, cpu, ram_mb, vram_mb, gpu_id)
                 WHERE state IN ('ASSIGNED', 'RUNNING');
             PRAGMA user_version = 3;",
        )
            .unwrap();
        conn.execute(
            "INSERT INTO runs (id, state, priority, created_at, image, worker_id, doc)
             VALUES (?1, ?2, 0, ?3, 'img', 'w1', ?4)",
            params![
                run.id,
                run.state.as_str(),
                to_micros(&run.created_at),
                old.to_string()
            ],
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        let doc: String = conn
            .query_row("SELECT doc FROM runs WHERE id = ?1", [&run.id], |r| {
                r.get(0)
            })
            .unwrap();
        // The messages as JSON strings: a bare `a1-` also occurs in some run ids (UUIDs).
        assert!(
            !doc.contains("\"a1-") && !doc.contains("\"a2-"),
            "no event left in the row"
        );
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        // Attempt 1: 30 INFO (the forced retry ends it without an event); attempt 2: RETRIED
        // then 20 INFO.
        for (attempt, prefix, count, infos) in [(1, "a1", 30, 30), (2, "a2", 21, 20)] {
            let query = crate::store::EventQuery {
                attempt: Some(attempt),
                cursor: crate::store::EventCursor::Start,
                limit: 100,
            };
            let page = crate::store::list_events(&store, &run.id, &query)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(page.events_total, count);
            let indexes: Vec<u64> = page.events.iter().map(|(i, _)| *i).collect();
            assert_eq!(indexes, (0..count).collect::<Vec<_>>());
            let shown: Vec<String> = page
                .events
                .iter()
                .filter(|(_, e)| e.event_type == EventType::Info)
                .map(|(_, e)| e.msg.as_str().unwrap().to_owned())
                .collect();
            let expected: Vec<String> = (0..infos).map(|i| format!("{prefix}-{i}")).collect();
            assert_eq!(shown, expected);
        }
        let back = store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(back, run, "the run reads back as it was");
    }

    #[tokio::test]
    async fn the_plans_read_the_covering_indexes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gyoza.db");
        let _store = SqliteStore::open(&path).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            rows.join("; ")
        };
        let window = plan(
            "SELECT id, priority, created_at, cpu, ram_mb, vram_mb, queue, op_definition, image, attempt, preemptible, preemptions, labels, tags, assigned_at FROM runs INDEXED BY runs_pending
             WHERE state = 'PENDING' AND (available_at IS NULL OR available_at <= 5)
             ORDER BY priority DESC, created_at ASC, seq ASC LIMIT 1000",
        );
        assert_eq!(
            window, "SCAN runs USING COVERING INDEX runs_pending",
            "no table access, no sort"
        );
        let held = plan(
            "SELECT id, worker_id, cpu, ram_mb, vram_mb, gpu_id, priority, queue, op_definition, image, attempt, preemptible, preemptions, labels, tags, assigned_at FROM runs INDEXED BY runs_held
             WHERE state IN ('ASSIGNED', 'RUNNING') AND worker_id IS NOT NULL",
        );
        assert!(
            held.contains("COVERING INDEX runs_held"),
            "held runs plan: {held}"
        );
    }

    #[tokio::test]
    async fn a_backend_error_says_what_failed_and_keeps_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let Err(e) = SqliteStore::open(file.join("data").join("gyoza.db")).await else {
            panic!("a data directory below a file cannot be created");
        };
        let message = e.to_string();
        assert!(
            message.starts_with("database error: cannot create data directory"),
            "{message}"
        );
        let cause = std::error::Error::source(&e)
            .and_then(std::error::Error::source)
            .and_then(|cause| cause.downcast_ref::<std::io::Error>());
        assert!(cause.is_some(), "the io::Error is kept: {e:?}");
    }

    #[tokio::test]
    async fn committed_pages_are_copied_into_the_database_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gyoza.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        // Far fewer WAL pages than the writer's own threshold: only the checkpointer copies
        // them into the file while the store is open.
        let before = size();
        let runs: Vec<OpRun> = (0..500).map(|i| sized(1 + i % 4, 256, None)).collect();
        store.insert_runs(&runs).await.unwrap();
        let wal = std::fs::metadata(dir.path().join("gyoza.db-wal"))
            .unwrap()
            .len();
        assert!(wal < u64::from(WRITER_CHECKPOINT_PAGES) * 4096, "{wal}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() <= before && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            size() > before,
            "the database file stayed at {before} bytes with {wal} bytes of WAL"
        );
        for run in &runs {
            assert_eq!(store.get_run(&run.id).await.unwrap().as_ref(), Some(run));
        }
    }

    #[tokio::test]
    async fn a_failing_write_leaves_the_rest_of_its_group_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("gyoza.db"))
            .await
            .unwrap();
        let runs: Vec<OpRun> = (0..100).map(|i| sized(1 + i % 4, 256, None)).collect();
        // Every run twice, concurrently: the second insert of an id must fail alone.
        let mut tasks = Vec::new();
        for run in runs.iter().chain(runs.iter()) {
            let (store, run) = (store.clone(), run.clone());
            tasks.push(tokio::spawn(async move { store.insert_run(&run).await }));
        }
        let mut failed = 0;
        for task in tasks {
            if task.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 100, "exactly the duplicate inserts fail");
        for run in &runs {
            assert_eq!(store.get_run(&run.id).await.unwrap().as_ref(), Some(run));
        }
    }

    #[tokio::test]
    async fn runs_read_together_share_one_copy_of_each_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("gyoza.db"))
            .await
            .unwrap();
        let mut runs = Vec::new();
        for queue in ["a", "b", "a", "a"] {
            let mut run = sized(1, 1, None);
            run.queue = queue.into();
            store.insert_run(&run).await.unwrap();
            runs.push(run);
        }
        let window = store.pending_window(chrono::Utc::now(), 10).await.unwrap();
        let facts = |id: &str| &window.iter().find(|r| r.id == id).unwrap().facts;
        let [first, second, third, fourth] = [0, 1, 2, 3].map(|i| facts(&runs[i].id));
        assert_eq!(&*first.queue, "a");
        assert_eq!(&*second.queue, "b");
        // "a" after "b": shared through the read's set, not only the row before.
        assert!(Arc::ptr_eq(&first.queue, &third.queue));
        assert!(Arc::ptr_eq(&first.queue, &fourth.queue));
        assert!(!Arc::ptr_eq(&first.queue, &second.queue));
        assert!(Arc::ptr_eq(&first.image, &fourth.image));
    }
}
