//! The embedded store: one SQLite file in the data directory.
//!
//! Documents (definitions, runs with their attempts, workers) are stored as JSON next to the
//! columns that queries filter and sort on. The database runs in WAL mode with
//! `synchronous=FULL`, so a write the API acknowledged survives a crash of the process or the
//! machine. One connection writes (SQLite has one writer anyway); a few more read in parallel.
//! Every call runs on tokio's blocking pool.
//!
//! A run update is a `BEGIN IMMEDIATE` transaction (read, mutate, write back), which also
//! serialises writers across processes that share the file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use gyoza_core::api::HeartbeatRequest;
use gyoza_core::definition::compare_versions;
use gyoza_core::time::{Timestamp, to_micros};
use gyoza_core::{OpDefinition, OpRun, OpRunState, Worker};
use rusqlite::types::Value as SqlValue;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, TransactionBehavior, params, params_from_iter,
};

use super::{
    CreatedBound, Cursor, LogTail, QueryError, RunMutation, RunPage, RunQuery, Store, StoreError,
};

/// Parallel read connections.
const READERS: usize = 4;

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
];

/// The SQLite [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave a connection half-written: SQLite rolls
    // back an unfinished transaction, so the poisoned guard is safe to reuse.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let version: usize = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this gyoza understands ({}); upgrade gyoza",
            MIGRATIONS.len()
        )));
    }
    for migration in &MIGRATIONS[version..] {
        tx.execute_batch(migration).map_err(backend)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

fn decode<T: serde::de::DeserializeOwned>(id: &str, doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(backend)
}

fn write_run(conn: &Connection, run: &OpRun, insert: bool) -> Result<(), StoreError> {
    let doc = encode(run)?;
    let sql = if insert {
        "INSERT INTO runs (id, state, priority, created_at, available_at, op_definition, image, worker_id, doc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    } else {
        "UPDATE runs SET state = ?2, priority = ?3, created_at = ?4, available_at = ?5,
         op_definition = ?6, image = ?7, worker_id = ?8, doc = ?9 WHERE id = ?1"
    };
    conn.execute(
        sql,
        params![
            run.id,
            run.state.as_str(),
            run.priority,
            to_micros(&run.created_at),
            run.available_at.as_ref().map(to_micros),
            run.op_definition,
            run.image,
            run.worker_id(),
            doc
        ],
    )
    .map_err(backend)?;
    Ok(())
}

/// Decodes the documents a query selects as `(key, doc)` rows.
fn read_docs<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: &[SqlValue],
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params_from_iter(params.iter()), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(backend)?;
    let mut docs = Vec::new();
    for row in rows {
        let (id, doc) = row.map_err(backend)?;
        docs.push(decode(&id, &doc)?);
    }
    Ok(docs)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(backend)?
    }

    fn open_blocking(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Backend(format!(
                    "cannot create data directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let mut writer = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        configure(&writer)?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(backend)?;
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(backend)?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(backend)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            let n = inner.readers.len();
            // Take the first idle reader, else wait for the one whose turn it is.
            for i in 0..n {
                if let Ok(mut conn) = inner.readers[(start + i) % n].try_lock() {
                    return f(&mut conn);
                }
            }
            f(&mut lock(&inner.readers[start % n]))
        })
        .await
        .map_err(backend)?
    }
}

/// Builds the WHERE clause of a run listing's filters.
fn run_filters(query: &RunQuery) -> (Vec<String>, Vec<SqlValue>) {
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    if let Some(state) = query.state {
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

fn where_sql(clauses: &[String]) -> String {
    if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    }
}

fn list_runs_blocking(conn: &mut Connection, query: &RunQuery) -> Result<RunPage, QueryError> {
    let tx = conn.transaction().map_err(backend)?;
    let (mut clauses, mut params) = run_filters(query);
    let base_clauses = clauses.clone();
    let base_params = params.clone();
    let cursor_key = |param: &'static str, id: &str| -> Result<(i64, i64), QueryError> {
        tx.query_row(
            "SELECT created_at, seq FROM runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?
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
    let order = if ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT seq, created_at, id, doc FROM runs {} ORDER BY created_at {order}, seq {order} LIMIT {}",
        where_sql(&clauses),
        query.limit
    );
    let mut rows: Vec<(i64, i64, OpRun)> = {
        let mut stmt = tx.prepare(&sql).map_err(backend)?;
        let mapped = stmt
            .query_map(params_from_iter(params.iter()), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(backend)?;
        let mut rows = Vec::new();
        for row in mapped {
            let (seq, created, id, doc) = row.map_err(backend)?;
            rows.push((seq, created, decode(&id, &doc)?));
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
            let sql = format!("SELECT EXISTS (SELECT 1 FROM runs {})", where_sql(&clauses));
            tx.query_row(&sql, params_from_iter(params.iter()), |r| {
                r.get::<_, bool>(0)
            })
            .map_err(backend)?
        }
    };
    Ok(RunPage {
        runs: rows.into_iter().map(|(_, _, run)| run).collect(),
        has_more,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn upsert_definition(
        &self,
        mut definition: OpDefinition,
    ) -> Result<(OpDefinition, bool), StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT doc FROM definitions WHERE id = ?1 AND version = ?2",
                    params![definition.id, definition.version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let created = match existing {
                Some(doc) => {
                    let old: OpDefinition = decode(&definition.id, &doc)?;
                    definition.created_at = old.created_at;
                    false
                }
                None => true,
            };
            tx.execute(
                "INSERT OR REPLACE INTO definitions (id, version, created_at, doc) VALUES (?1, ?2, ?3, ?4)",
                params![definition.id, definition.version, to_micros(&definition.created_at), encode(&definition)?],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok((definition, created))
        })
        .await
    }

    async fn get_definition(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<OpDefinition>, StoreError> {
        let id = id.to_owned();
        let version = version.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT version, doc FROM definitions WHERE id = ?1")
                .map_err(backend)?;
            let rows = stmt
                .query_map([&id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(backend)?;
            let mut best: Option<(String, String)> = None;
            for row in rows {
                let (v, doc) = row.map_err(backend)?;
                let better = match (&version, &best) {
                    (Some(wanted), _) => *wanted == v,
                    (None, None) => true,
                    (None, Some((best_v, _))) => compare_versions(&v, best_v).is_gt(),
                };
                if better {
                    best = Some((v, doc));
                }
            }
            best.map(|(_, doc)| decode(&id, &doc)).transpose()
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

    async fn insert_run(&self, run: &OpRun) -> Result<(), StoreError> {
        let run = run.clone();
        self.write(move |conn| write_run(conn, &run, true)).await
    }

    async fn get_run(&self, id: &str) -> Result<Option<OpRun>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached("SELECT doc FROM runs WHERE id = ?1")
                .map_err(backend)?
                .query_row([&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            doc.map(|doc| decode(&id, &doc)).transpose()
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
        .map_err(|e| QueryError::Store(backend(e)))?
    }

    async fn update_run(
        &self,
        id: &str,
        mut mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let doc: Option<String> = tx
                .prepare_cached("SELECT doc FROM runs WHERE id = ?1")
                .map_err(backend)?
                .query_row([&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let Some(doc) = doc else { return Ok(None) };
            let mut run: OpRun = decode(&id, &doc)?;
            mutation(&mut run)?;
            write_run(&tx, &run, false)?;
            tx.commit().map_err(backend)?;
            Ok(Some(run))
        })
        .await
    }

    async fn pending_window(&self, now: Timestamp, limit: usize) -> Result<Vec<OpRun>, StoreError> {
        let now = to_micros(&now);
        self.read(move |conn| {
            read_docs(
                conn,
                "SELECT id, doc FROM runs
                 WHERE state = 'PENDING' AND (available_at IS NULL OR available_at <= ?1)
                 ORDER BY priority DESC, created_at ASC, seq ASC LIMIT ?2",
                &[SqlValue::Integer(now), SqlValue::Integer(limit as i64)],
            )
        })
        .await
    }

    async fn runs_on_worker(&self, worker_id: &str) -> Result<Vec<OpRun>, StoreError> {
        let worker_id = worker_id.to_owned();
        self.read(move |conn| {
            read_docs(
                conn,
                "SELECT id, doc FROM runs WHERE worker_id = ?1 AND state IN ('ASSIGNED', 'RUNNING')",
                &[SqlValue::Text(worker_id)],
            )
        })
        .await
    }

    async fn held_runs(&self) -> Result<Vec<OpRun>, StoreError> {
        self.read(|conn| {
            read_docs(
                conn,
                "SELECT id, doc FROM runs WHERE state IN ('ASSIGNED', 'RUNNING')",
                &[],
            )
        })
        .await
    }

    async fn heartbeat(
        &self,
        heartbeat: HeartbeatRequest,
        now: Timestamp,
    ) -> Result<Worker, StoreError> {
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT doc FROM workers WHERE id = ?1",
                    [&heartbeat.worker_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let existing: Option<Worker> = existing
                .map(|doc| decode(&heartbeat.worker_id, &doc))
                .transpose()?;
            let worker = Worker::from_heartbeat(existing, heartbeat, now);
            tx.execute(
                "INSERT OR REPLACE INTO workers (id, last_heartbeat_at, doc) VALUES (?1, ?2, ?3)",
                params![worker.id, to_micros(&now), encode(&worker)?],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(worker)
        })
        .await
    }

    async fn get_worker(&self, id: &str) -> Result<Option<Worker>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let doc: Option<String> = conn
                .query_row("SELECT doc FROM workers WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            doc.map(|doc| decode(&id, &doc)).transpose()
        })
        .await
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
            let mut stmt = conn
                .prepare_cached("SELECT state, COUNT(*) FROM runs GROUP BY state")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            let mut counts = Vec::new();
            for row in rows {
                let (state, count) = row.map_err(backend)?;
                let state = state
                    .parse::<OpRunState>()
                    .map_err(|e| StoreError::Corrupt {
                        id: "runs.state".into(),
                        reason: e.to_string(),
                    })?;
                counts.push((state, count as u64));
            }
            Ok(counts)
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
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let mut tail = tx
                .query_row(
                    "SELECT text, total_bytes FROM run_logs WHERE run_id = ?1 AND attempt = ?2",
                    params![run_id, attempt],
                    |r| Ok(LogTail { text: r.get(0)?, total_bytes: r.get::<_, i64>(1)? as u64 }),
                )
                .optional()
                .map_err(backend)?
                .unwrap_or_default();
            tail.append(&text, cap);
            tx.execute(
                "INSERT OR REPLACE INTO run_logs (run_id, attempt, total_bytes, text) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, attempt, tail.total_bytes as i64, tail.text],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_log(&self, run_id: &str, attempt: u32) -> Result<Option<LogTail>, StoreError> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT text, total_bytes FROM run_logs WHERE run_id = ?1 AND attempt = ?2",
                params![run_id, attempt],
                |r| {
                    Ok(LogTail {
                        text: r.get(0)?,
                        total_bytes: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }
}
