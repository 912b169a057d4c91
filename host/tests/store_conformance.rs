//! One conformance suite, the same test functions, run against every [`Store`]:
//! the embedded SQLite store and the MongoDB store (on a real MongoDB-wire-protocol server,
//! `GYOZA_TEST_MONGO_URL`, default `mongodb://127.0.0.1:27117`, which `scripts/test.sh`
//! starts). The MongoDB half fails when no server answers: set `GYOZA_TEST_SKIP_MONGO=1` to
//! leave it out knowingly.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use gyoza_core::limits::{MAX_EVENT_BYTES, MAX_EVENTS_PER_ATTEMPT, RUN_VIEW_EVENTS};
use gyoza_core::run::NewRun;
use gyoza_core::time::Timestamp;
use gyoza_core::{
    Constraints, DomainError, EventType, Heartbeat, HeldRun, OpDefinition, OpRun, OpRunState,
    PendingRun, Resources, RunFacts, WorkerOpRun,
};
use gyoza_host::store::{
    CreatedBound, Cursor, EventCursor, EventPage, EventQuery, MongoStore, QueryError, RunQuery,
    SqliteStore, Store, StoreError, StoreRead, list_events,
};

/// A store under test and what keeps it alive (a temp dir, a database to drop).
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("gyoza.db"))
        .await
        .unwrap();
    Some(Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    })
}

async fn mongodb() -> Option<Fixture> {
    if std::env::var("GYOZA_TEST_SKIP_MONGO").is_ok_and(|v| v == "1") {
        eprintln!("GYOZA_TEST_SKIP_MONGO=1: MongoDB conformance left out");
        return None;
    }
    let url = std::env::var("GYOZA_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27117".into());
    // A database per test: tests run in parallel and must not see each other's data.
    let database = format!("gyoza_test_{}", uuid_like());
    let store = MongoStore::connect(&url, &database).await.unwrap_or_else(|e| {
        panic!("no MongoDB-wire server at {url} ({e}); run scripts/setup.d/30-mongo.sh or set GYOZA_TEST_SKIP_MONGO=1")
    });
    Some(Fixture {
        store: Arc::new(store),
        _dir: None,
    })
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        Utc::now().timestamp_micros(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn t(seconds: i64) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(seconds)
}

fn run_at(at: Timestamp, image: &str, priority: i64) -> OpRun {
    OpRun::new(
        NewRun {
            image: image.into(),
            priority,
            ..NewRun::default()
        },
        at,
    )
    .unwrap()
}

fn definition(version: &str, image: &str, at: Timestamp) -> OpDefinition {
    serde_json::from_value(serde_json::json!({
        "id": "op", "version": version, "image": image,
        "created_at": gyoza_core::time::to_wire(&at), "updated_at": gyoza_core::time::to_wire(&at)
    }))
    .unwrap()
}

fn query(limit: usize, cursor: Cursor) -> RunQuery {
    RunQuery {
        limit,
        cursor,
        ..RunQuery::default()
    }
}

fn ids(runs: &[OpRun]) -> Vec<String> {
    runs.iter().map(|r| r.id.clone()).collect()
}

fn window_ids(runs: &[PendingRun]) -> Vec<String> {
    runs.iter().map(|r| r.id.clone()).collect()
}

fn sized(at: Timestamp, cpu: u32, ram_mb: u64, vram_mb: Option<u64>) -> OpRun {
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
        at,
    )
    .unwrap()
}

/// A run RUNNING on worker `w1`, stored.
async fn running_run(store: &dyn Store) -> OpRun {
    started(store, run_at(t(0), "img", 0)).await
}

/// `run` stored, then assigned to worker `w1` and STARTED there.
async fn started(store: &dyn Store, run: OpRun) -> OpRun {
    store.insert_run(&run).await.unwrap();
    store
        .update_run(
            &run.id,
            Box::new(|r| {
                r.assign("w1", t(1))?;
                r.add_event(EventType::Started, "".into(), Default::default(), t(1))
            }),
        )
        .await
        .unwrap()
        .unwrap()
}

/// Appends an INFO event with message `msg` and a payload of `pad` bytes to `id`.
async fn info(store: &dyn Store, id: &str, msg: String, pad: usize) -> Result<OpRun, StoreError> {
    let payload = serde_json::json!({"pad": "x".repeat(pad)});
    let payload = payload.as_object().cloned().unwrap_or_default();
    store
        .update_run(
            id,
            Box::new(move |r| {
                r.add_event(
                    EventType::Info,
                    serde_json::json!(msg.clone()),
                    payload.clone(),
                    t(2),
                )
            }),
        )
        .await
        .map(|run| run.unwrap())
}

/// Every event of the current attempt of `id`, paged forward `limit` at a time.
async fn page_all(store: &dyn Store, id: &str, limit: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    let mut cursor = EventCursor::Start;
    loop {
        let query = EventQuery {
            attempt: None,
            cursor,
            limit,
        };
        let page: EventPage = list_events(store, id, &query).await.unwrap().unwrap();
        assert!(page.events.len() <= limit);
        seen.extend(
            page.events
                .iter()
                .map(|(i, e)| (*i, e.msg.as_str().unwrap_or_default().to_owned())),
        );
        match page.events.last() {
            Some((last, _)) if page.has_more => cursor = EventCursor::After(*last),
            _ => return seen,
        }
    }
}

/// The half-life the stores accrue queue usage with unless told another.
const HALF_LIFE_S: u32 = gyoza_host::store::DEFAULT_HALF_LIFE_S;

/// A run in queue `queue` holding `cpu` cores, `ram_mb` and `vram_mb`, created at `t(-10)`.
fn queued(queue: &str, cpu: u32, ram_mb: u64, vram_mb: Option<u64>) -> OpRun {
    let mut run = sized(t(-10), cpu, ram_mb, vram_mb);
    run.queue = queue.into();
    run
}

/// `run` stored, assigned to worker `w1` at `t(at)` and STARTED there a second later.
async fn held_since(store: &dyn Store, run: &OpRun, at: i64) {
    store.insert_run(run).await.unwrap();
    store
        .update_run(
            &run.id,
            Box::new(move |r| {
                r.assign("w1", t(at))?;
                r.add_event(EventType::Started, "".into(), Default::default(), t(at + 1))
            }),
        )
        .await
        .unwrap()
        .unwrap();
}

/// The usage `amounts` held for `seconds` adds, decayed with half-life `h` to its end:
/// amount × h / ln 2 × (1 − 2^(−seconds / h)).
fn held_usage(amounts: [f64; 3], seconds: f64, h: u32) -> [f64; 3] {
    let h = f64::from(h);
    amounts.map(|a| a * h / std::f64::consts::LN_2 * (1.0 - (-seconds / h).exp2()))
}

/// `usage` decayed by `seconds` with half-life `h`.
fn decayed(usage: [f64; 3], seconds: f64, h: u32) -> [f64; 3] {
    usage.map(|u| u * (-seconds / f64::from(h)).exp2())
}

/// The element-wise sum of `a` and `b`.
fn plus(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

/// Fails unless `got` has exactly the queues of `want`, each within 1e-6 relative.
fn assert_usage(got: &[(String, [f64; 3])], want: &[(&str, [f64; 3])]) {
    let names: Vec<&str> = got.iter().map(|(q, _)| q.as_str()).collect();
    let wanted: Vec<&str> = want.iter().map(|(q, _)| *q).collect();
    assert_eq!(names, wanted, "{got:?}");
    for ((queue, got), (_, want)) in got.iter().zip(want) {
        for (g, w) in got.iter().zip(want) {
            let tolerance = 1e-6 * w.abs().max(1e-9);
            assert!(
                (g - w).abs() <= tolerance,
                "queue {queue}: {got:?}, expected {want:?}"
            );
        }
    }
}

/// Ends run `id`'s attempt held since `t(0)` at `t(100)` (COMPLETED), in queue "q": what
/// [`cases::queue_usage_is_kept_per_queue_and_decays`] and the reopening tests build on.
async fn complete_at_100(store: &dyn Store, run: &OpRun) {
    held_since(store, run, 0).await;
    store
        .update_run(
            &run.id,
            Box::new(|r| {
                r.add_event(
                    EventType::Completed,
                    "ok".into(),
                    Default::default(),
                    t(100),
                )
            }),
        )
        .await
        .unwrap()
        .unwrap();
}

mod cases {
    use super::*;

    pub async fn queue_usage_is_kept_per_queue_and_decays(store: Arc<dyn Store>) {
        let h = HALF_LIFE_S;
        assert!(store.queue_usage(t(0), h).await.unwrap().is_empty());
        // Held t(0)..t(100), COMPLETED.
        let completed = queued("q", 2, 1024, None);
        complete_at_100(&*store, &completed).await;
        // Held t(0).. and still RUNNING: adds nothing (the host counts held runs itself).
        let held = queued("q", 8, 8192, Some(8192));
        held_since(&*store, &held, 0).await;
        // Held t(10)..t(60), requeued after its worker was lost (the reaper's write): written
        // after the completion, so it ends before the queue's reference time.
        let lost = queued("q", 1, 512, Some(2048));
        held_since(&*store, &lost, 10).await;
        let requeued = store
            .update_run_if_silent(
                &lost.id,
                "w1",
                t(1_000),
                Box::new(|r| r.worker_lost("w1", 30, 3, t(60))),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (requeued.state, requeued.current_attempt()),
            (OpRunState::Pending, 2)
        );
        // Another queue: held t(50)..t(80), FAILED (several runs' write).
        let other = queued("other", 4, 0, None);
        held_since(&*store, &other, 50).await;
        let answers = store
            .update_runs(
                vec![other.id.clone()],
                Arc::new(|r| {
                    r.add_event(EventType::Failed, "boom".into(), Default::default(), t(80))
                }),
            )
            .await;
        assert!(matches!(answers[0], Ok(Some(_))), "{:?}", answers[0]);
        // Changes that end no held attempt add nothing: an ended run changed again, a
        // pending one, a held one.
        for id in [&completed.id, &lost.id, &held.id] {
            store
                .update_run(id, Box::new(|r| r.set_priority(3, t(90))))
                .await
                .unwrap()
                .unwrap();
        }

        let q = plus(
            held_usage([2.0, 1024.0, 0.0], 100.0, h),
            decayed(held_usage([1.0, 512.0, 2048.0], 50.0, h), 40.0, h),
        );
        // As of its end, t(80), the queue's reference time.
        let other_at_80 = held_usage([4.0, 0.0, 0.0], 30.0, h);
        let other_usage = decayed(other_at_80, 20.0, h);
        let at_100 = store.queue_usage(t(100), h).await.unwrap();
        assert_usage(&at_100, &[("other", other_usage), ("q", q)]);
        // One half-life later, half of it.
        let later = store.queue_usage(t(100 + i64::from(h)), h).await.unwrap();
        assert_usage(
            &later,
            &[
                ("other", decayed(other_usage, f64::from(h), h)),
                ("q", decayed(q, f64::from(h), h)),
            ],
        );
        // Read with another half-life, the sums decay with that one from their reference
        // times, t(80) and t(100).
        let quick = store.queue_usage(t(160), 60).await.unwrap();
        assert_usage(
            &quick,
            &[
                ("other", decayed(other_at_80, 80.0, 60)),
                ("q", decayed(q, 60.0, 60)),
            ],
        );
        // Read before the reference times (a replica's clock behind): as stored, not grown.
        let early = store.queue_usage(t(0), h).await.unwrap();
        assert_usage(&early, &[("other", other_at_80), ("q", q)]);
    }

    pub async fn concurrent_ends_in_one_queue_are_each_counted_once(store: Arc<dyn Store>) {
        let runs: Vec<OpRun> = (0..16).map(|_| queued("q", 1, 256, None)).collect();
        for run in &runs {
            held_since(&*store, run, 0).await;
        }
        // Each run ended by two writers at once (a report and a retry of it): one wins.
        let mut tasks = Vec::new();
        for run in runs.iter().chain(runs.iter()) {
            let (store, id) = (store.clone(), run.id.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .update_run(
                        &id,
                        Box::new(|r| {
                            r.add_event(
                                EventType::Completed,
                                "ok".into(),
                                Default::default(),
                                t(100),
                            )
                        }),
                    )
                    .await
                    .is_ok()
            }));
        }
        let mut ended = 0;
        for task in tasks {
            ended += usize::from(task.await.unwrap());
        }
        assert_eq!(ended, 16, "exactly one end per run");
        let one = held_usage([1.0, 256.0, 0.0], 100.0, HALF_LIFE_S);
        let usage = store.queue_usage(t(100), HALF_LIFE_S).await.unwrap();
        assert_usage(&usage, &[("q", one.map(|u| u * 16.0))]);
    }

    pub async fn events_are_stored_apart_and_paged_in_order(store: Arc<dyn Store>) {
        let run = running_run(&*store).await;
        // 4 appenders at once; a reader pages meanwhile.
        let appenders: Vec<_> = (0..4)
            .map(|task| {
                let (store, id) = (store.clone(), run.id.clone());
                tokio::spawn(async move {
                    for i in 0..40 {
                        info(&*store, &id, format!("{task}-{i:03}"), 2_000)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let early = store.stored_run_bytes(&run.id).await.unwrap().unwrap();
        let pager = {
            let (store, id) = (store.clone(), run.id.clone());
            tokio::spawn(async move { page_all(&*store, &id, 7).await })
        };
        let during = pager.await.unwrap();
        for appender in appenders {
            appender.await.unwrap();
        }
        // What a reader saw during the appends is a prefix of the timeline, in index order.
        let all = page_all(&*store, &run.id, 9).await;
        assert_eq!(all.len(), 161, "STARTED and 160 INFO events, each once");
        assert_eq!(&all[..during.len()], &during[..]);
        let indexes: Vec<u64> = all.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, (0..161).collect::<Vec<_>>());
        for task in 0..4 {
            let mine: Vec<&String> = all
                .iter()
                .map(|(_, m)| m)
                .filter(|m| m.starts_with(&format!("{task}-")))
                .collect();
            let expected: Vec<String> = (0..40).map(|i| format!("{task}-{i:03}")).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "task {task}");
        }
        // The run itself does not grow with its history (at most one change's events inline).
        let late = store.stored_run_bytes(&run.id).await.unwrap().unwrap();
        assert!(
            late < early + 8_000,
            "run stored in {early} bytes after 1 event, {late} after 161"
        );
        // The view shows the end of the timeline and says how long it is.
        let view = store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(view.current().events_total, 161);
        assert_eq!(view.current().events.len(), RUN_VIEW_EVENTS);
        let shown: Vec<String> = view
            .current()
            .events
            .iter()
            .map(|e| e.msg.as_str().unwrap_or_default().to_owned())
            .collect();
        let last: Vec<String> = all[61..].iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(shown, last);
        // Backwards from the end, and bounds.
        let before = list_events(
            &*store,
            &run.id,
            &EventQuery {
                attempt: Some(1),
                cursor: EventCursor::Before(10),
                limit: 4,
            },
        )
        .await
        .unwrap()
        .unwrap();
        let indexes: Vec<u64> = before.events.iter().map(|(i, _)| *i).collect();
        assert_eq!((indexes, before.has_more), (vec![6, 7, 8, 9], true));
        let past_end = list_events(
            &*store,
            &run.id,
            &EventQuery {
                attempt: None,
                cursor: EventCursor::After(u64::MAX),
                limit: 100,
            },
        )
        .await
        .unwrap()
        .unwrap();
        assert!(past_end.events.is_empty() && !past_end.has_more);
        let unknown = list_events(
            &*store,
            &run.id,
            &EventQuery {
                attempt: Some(2),
                cursor: EventCursor::Start,
                limit: 1,
            },
        )
        .await;
        assert!(matches!(unknown, Err(QueryError::UnknownAttempt { .. })));
        assert!(
            list_events(
                &*store,
                "missing",
                &EventQuery {
                    attempt: None,
                    cursor: EventCursor::Start,
                    limit: 1
                }
            )
            .await
            .unwrap()
            .is_none()
        );
    }

    pub async fn event_caps_refuse_and_state_events_pass(store: Arc<dyn Store>) {
        let mut run = run_at(t(0), "img", 0);
        run.assign("w1", t(1)).unwrap();
        store.insert_run(&run).await.unwrap();
        // Too large: refused, nothing written.
        let refused = info(&*store, &run.id, String::new(), MAX_EVENT_BYTES).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::Rule(DomainError::EventTooLarge { bytes, limit }))
                    if bytes > limit && limit == MAX_EVENT_BYTES
            ),
            "{refused:?}"
        );
        assert_eq!(
            store
                .get_run(&run.id)
                .await
                .unwrap()
                .unwrap()
                .current()
                .events_total,
            0
        );
        // An attempt one event short of the count cap (as if it had recorded them).
        let mut full = run_at(t(0), "img", 0);
        full.assign("w1", t(1)).unwrap();
        full.attempts[0].events_total = MAX_EVENTS_PER_ATTEMPT - 1;
        store.insert_run(&full).await.unwrap();
        info(&*store, &full.id, "last".into(), 0).await.unwrap();
        let refused = info(&*store, &full.id, "one too many".into(), 0).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::Rule(DomainError::TooManyEvents { .. }))
            ),
            "{refused:?}"
        );
        // State events still pass: the run completes.
        let done = store
            .update_run(
                &full.id,
                Box::new(|r| {
                    r.add_event(EventType::Started, "".into(), Default::default(), t(3))?;
                    r.add_event(EventType::Completed, "".into(), Default::default(), t(4))
                }),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.state, OpRunState::Completed);
        let page = list_events(
            &*store,
            &full.id,
            &EventQuery {
                attempt: None,
                cursor: EventCursor::After(MAX_EVENTS_PER_ATTEMPT - 2),
                limit: 10,
            },
        )
        .await
        .unwrap()
        .unwrap();
        let kinds: Vec<(u64, EventType)> = page
            .events
            .iter()
            .map(|(i, e)| (*i, e.event_type))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (MAX_EVENTS_PER_ATTEMPT - 1, EventType::Info),
                (MAX_EVENTS_PER_ATTEMPT, EventType::Started),
                (MAX_EVENTS_PER_ATTEMPT + 1, EventType::Completed),
            ]
        );
    }

    pub async fn attempts_keep_one_copy_of_the_inputs(store: Arc<dyn Store>) {
        let mut run = run_at(t(0), "img", 0);
        run.inputs
            .insert("blob".into(), serde_json::json!("y".repeat(50_000)));
        run.attempts[0].inputs = run.inputs.clone();
        store.insert_run(&run).await.unwrap();
        let one = store.stored_run_bytes(&run.id).await.unwrap().unwrap();
        for i in 0..5 {
            store
                .update_run(
                    &run.id,
                    Box::new(move |r| {
                        r.assign("w1", t(1 + i))?;
                        r.retry(true, "again".into(), Default::default(), t(1 + i))
                    }),
                )
                .await
                .unwrap();
        }
        let six = store.stored_run_bytes(&run.id).await.unwrap().unwrap();
        assert!(
            six < one + 20_000,
            "1 attempt: {one} bytes; 6 attempts: {six}"
        );
        let back = store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(back.attempts.len(), 6);
        assert!(back.attempts.iter().all(|a| a.inputs == run.inputs));
    }

    pub async fn definitions_upsert_and_latest(store: Arc<dyn Store>) {
        let (first, created) = store
            .upsert_definition(definition("1.9.0", "a", t(0)))
            .await
            .unwrap();
        assert!(created);
        let (replaced, created) = store
            .upsert_definition(definition("1.9.0", "b", t(10)))
            .await
            .unwrap();
        assert!(!created, "same id + version replaces");
        assert_eq!(
            replaced.created_at, first.created_at,
            "first creation time is kept"
        );
        assert_eq!(replaced.image, "b");
        store
            .upsert_definition(definition("1.10.0", "c", t(20)))
            .await
            .unwrap();
        store
            .upsert_definition(definition("1.2.0", "d", t(30)))
            .await
            .unwrap();

        let latest = store.get_definition("op", None).await.unwrap().unwrap();
        assert_eq!(latest.version, "1.10.0");
        let pinned = store
            .get_definition("op", Some("1.9.0"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pinned.image, "b");
        assert_eq!(pinned.created_at, t(0));
        assert!(
            store
                .get_definition("op", Some("3"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.get_definition("nope", None).await.unwrap().is_none());
        let versions: Vec<String> = store
            .list_definitions()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.version)
            .collect();
        assert_eq!(
            versions,
            vec!["1.9.0", "1.10.0", "1.2.0"],
            "by id, then creation"
        );
    }

    pub async fn runs_round_trip(store: Arc<dyn Store>) {
        let mut run = run_at(t(0), "img", 3);
        run.inputs.insert("big".into(), serde_json::json!(u64::MAX));
        run.inputs.insert(
            "nested".into(),
            serde_json::json!({"a": [1, 2.5, null, "x"]}),
        );
        // As `OpRun::new` does: an attempt receives the run's inputs (the store keeps one copy).
        run.attempts[0].inputs = run.inputs.clone();
        store.insert_run(&run).await.unwrap();
        assert_eq!(
            store.get_run(&run.id).await.unwrap(),
            Some(run.clone()),
            "every value round-trips"
        );
        assert_eq!(store.get_run("missing").await.unwrap(), None);
        assert!(store.insert_run(&run).await.is_err(), "a run id is unique");
    }

    pub async fn list_runs_pages_both_ways_with_filters(store: Arc<dyn Store>) {
        let mut runs = Vec::new();
        for i in 0..12 {
            let mut run = run_at(t(i), if i % 3 == 0 { "three" } else { "other" }, 1);
            if i % 2 == 0 {
                run.set_state(OpRunState::Cancelled, t(i)).unwrap();
            }
            store.insert_run(&run).await.unwrap();
            runs.push(run);
        }
        let newest: Vec<String> = runs.iter().rev().map(|r| r.id.clone()).collect();

        let page = store.list_runs(&query(5, Cursor::Start)).await.unwrap();
        assert_eq!(
            (ids(&page.runs), page.has_more),
            (newest[0..5].to_vec(), true)
        );
        let page = store
            .list_runs(&query(5, Cursor::StartingAfter(newest[4].clone())))
            .await
            .unwrap();
        assert_eq!(
            (ids(&page.runs), page.has_more),
            (newest[5..10].to_vec(), true)
        );
        let page = store
            .list_runs(&query(5, Cursor::StartingAfter(newest[9].clone())))
            .await
            .unwrap();
        assert_eq!(
            (ids(&page.runs), page.has_more),
            (newest[10..12].to_vec(), false)
        );
        let page = store
            .list_runs(&query(5, Cursor::EndingBefore(newest[10].clone())))
            .await
            .unwrap();
        assert_eq!(
            (ids(&page.runs), page.has_more),
            (newest[5..10].to_vec(), true)
        );
        let page = store
            .list_runs(&query(5, Cursor::EndingBefore(newest[5].clone())))
            .await
            .unwrap();
        assert_eq!(
            (ids(&page.runs), page.has_more),
            (newest[0..5].to_vec(), false)
        );
        let page = store
            .list_runs(&query(5, Cursor::EndingBefore(newest[0].clone())))
            .await
            .unwrap();
        assert_eq!((page.runs.len(), page.has_more), (0, false));

        let mut filtered = query(100, Cursor::Start);
        filtered.state = Some(OpRunState::Cancelled);
        filtered.image = Some("three".into());
        let page = store.list_runs(&filtered).await.unwrap();
        assert_eq!(
            ids(&page.runs),
            vec![runs[6].id.clone(), runs[0].id.clone()]
        );

        let mut window = query(2, Cursor::Start);
        let second = |s: i64| t(s).timestamp_micros();
        window.created = vec![CreatedBound::Gte(second(3)), CreatedBound::Lt(second(7))];
        let page = store.list_runs(&window).await.unwrap();
        assert_eq!(
            (ids(&page.runs), page.has_more),
            (vec![runs[6].id.clone(), runs[5].id.clone()], true)
        );
        window.cursor = Cursor::StartingAfter(runs[5].id.clone());
        let page = store.list_runs(&window).await.unwrap();
        assert_eq!(
            (ids(&page.runs), page.has_more),
            (vec![runs[4].id.clone(), runs[3].id.clone()], false)
        );
        window.created = vec![CreatedBound::Gt(second(3)), CreatedBound::Lte(second(4))];
        window.cursor = Cursor::Start;
        assert_eq!(
            ids(&store.list_runs(&window).await.unwrap().runs),
            vec![runs[4].id.clone()]
        );

        let unknown = store
            .list_runs(&query(5, Cursor::StartingAfter("nope".into())))
            .await;
        assert!(matches!(
            unknown,
            Err(QueryError::UnknownCursor {
                param: "starting_after",
                ..
            })
        ));
    }

    pub async fn runs_created_at_the_same_instant_page_without_loss(store: Arc<dyn Store>) {
        let mut all = Vec::new();
        for _ in 0..15 {
            let run = run_at(t(5), "same", 0);
            store.insert_run(&run).await.unwrap();
            all.push(run.id);
        }
        let mut seen = Vec::new();
        let mut cursor = Cursor::Start;
        loop {
            let page = store.list_runs(&query(4, cursor)).await.unwrap();
            seen.extend(ids(&page.runs));
            if !page.has_more {
                break;
            }
            cursor = Cursor::StartingAfter(seen.last().unwrap().clone());
        }
        let mut walked_back = Vec::new();
        let mut cursor = Cursor::EndingBefore(seen.last().unwrap().clone());
        loop {
            let page = store.list_runs(&query(4, cursor)).await.unwrap();
            let mut page_ids = ids(&page.runs);
            page_ids.append(&mut walked_back);
            walked_back = page_ids;
            if !page.has_more {
                break;
            }
            cursor = Cursor::EndingBefore(walked_back[0].clone());
        }
        assert_eq!(
            walked_back,
            seen[..14].to_vec(),
            "backwards walk sees the same order"
        );
        seen.sort();
        all.sort();
        assert_eq!(seen, all, "every run exactly once");
    }

    pub async fn update_run_is_atomic_and_refusals_write_nothing(store: Arc<dyn Store>) {
        let run = run_at(t(0), "img", 1);
        store.insert_run(&run).await.unwrap();
        let updated = store
            .update_run(&run.id, Box::new(|r| r.assign("w1", t(1))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.state, OpRunState::Assigned);
        let refused = store
            .update_run(&run.id, Box::new(|r| r.assign("w2", t(2))))
            .await;
        assert!(matches!(
            refused,
            Err(StoreError::Rule(DomainError::InvalidTransition { .. }))
        ));
        let stored = store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(stored, updated, "a refused mutation wrote nothing");
        assert!(
            store
                .update_run("missing", Box::new(|_| Ok(())))
                .await
                .unwrap()
                .is_none()
        );
    }

    pub async fn pending_window_orders_by_priority_and_respects_backoff(store: Arc<dyn Store>) {
        let low = run_at(t(0), "img", 1);
        let high_late = run_at(t(2), "img", 9);
        let high_early = run_at(t(1), "img", 9);
        let mut backing_off = run_at(t(0), "img", 50);
        backing_off.available_at = Some(t(100));
        let mut done = run_at(t(0), "img", 99);
        done.set_state(OpRunState::Completed, t(0)).unwrap();
        for run in [&low, &high_late, &high_early, &backing_off, &done] {
            store.insert_run(run).await.unwrap();
        }
        let window = store.pending_window(t(10), 10).await.unwrap();
        assert_eq!(
            window_ids(&window),
            vec![high_early.id.clone(), high_late.id.clone(), low.id.clone()]
        );
        let window = store.pending_window(t(100), 2).await.unwrap();
        assert_eq!(
            window_ids(&window),
            vec![backing_off.id.clone(), high_early.id.clone()]
        );
    }

    pub async fn runs_on_worker_are_its_assigned_and_running_runs(store: Arc<dyn Store>) {
        let mut ids_on_w1 = Vec::new();
        for i in 0..4 {
            let run = run_at(t(i), "img", 1);
            store.insert_run(&run).await.unwrap();
            let worker = if i == 3 { "w2" } else { "w1" };
            store
                .update_run(&run.id, Box::new(move |r| r.assign(worker, t(5))))
                .await
                .unwrap();
            if i < 3 {
                ids_on_w1.push(run.id);
            }
        }
        store
            .update_run(
                &ids_on_w1[1],
                Box::new(|r| r.add_event(EventType::Started, "".into(), Default::default(), t(6))),
            )
            .await
            .unwrap();
        store
            .update_run(
                &ids_on_w1[2],
                Box::new(|r| r.set_state(OpRunState::Completed, t(7))),
            )
            .await
            .unwrap();
        let mut held = ids(&store.runs_on_worker("w1").await.unwrap());
        held.sort();
        let mut expected = ids_on_w1[..2].to_vec();
        expected.sort();
        assert_eq!(held, expected);
        assert!(store.runs_on_worker("nobody").await.unwrap().is_empty());
    }

    pub async fn scheduling_views_carry_constraints_and_gpus(store: Arc<dyn Store>) {
        let mut gpu_run = sized(t(0), 2, 4096, Some(8192));
        // What strategies see beyond the figures travels too (the 1.0 interface).
        gpu_run.queue = "vision".into();
        gpu_run.labels = [("team".to_owned(), "cv".to_owned())].into();
        gpu_run.preemptible = true;
        gpu_run.op_definition = Some("train".into());
        gpu_run.constraints.tags = vec!["a100".into(), "ssd".into()];
        let plain = sized(t(1), 1, 256, None);
        let unconstrained = run_at(t(2), "img", 0);
        for run in [&gpu_run, &plain, &unconstrained] {
            store.insert_run(run).await.unwrap();
        }
        let window = store.pending_window(t(10), 10).await.unwrap();
        assert_eq!(
            window,
            vec![
                PendingRun::from(&gpu_run),
                PendingRun::from(&plain),
                PendingRun::from(&unconstrained)
            ],
            "the window carries id, priority, creation time and constraints as stored"
        );
        // Held: assigned to w1, then RUNNING on GPU 1 (the worker says so in STARTED).
        store
            .update_run(&gpu_run.id, Box::new(|r| r.assign("w1", t(11))))
            .await
            .unwrap();
        store
            .update_run(
                &gpu_run.id,
                Box::new(move |r| {
                    let payload = serde_json::json!({"worker_id": "w1", "gpu_id": 1});
                    let payload = payload.as_object().cloned().unwrap_or_default();
                    r.add_event(EventType::Started, "".into(), payload, t(12))
                }),
            )
            .await
            .unwrap();
        store
            .update_run(&plain.id, Box::new(|r| r.assign("w2", t(11))))
            .await
            .unwrap();
        let mut held = store.held_runs().await.unwrap();
        held.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        assert_eq!(
            held,
            vec![
                HeldRun {
                    id: gpu_run.id.clone(),
                    worker_id: "w1".into(),
                    constraints: gpu_run.constraints.clone(),
                    gpu_id: Some(1),
                    priority: gpu_run.priority,
                    facts: RunFacts {
                        assigned_at: Some(t(11)),
                        ..RunFacts::of(&gpu_run)
                    },
                },
                HeldRun {
                    id: plain.id.clone(),
                    worker_id: "w2".into(),
                    constraints: plain.constraints.clone(),
                    gpu_id: None,
                    priority: plain.priority,
                    facts: RunFacts {
                        assigned_at: Some(t(11)),
                        ..RunFacts::of(&plain)
                    },
                },
            ]
        );
        assert_eq!(
            window_ids(&store.pending_window(t(20), 10).await.unwrap()),
            vec![unconstrained.id.clone()],
            "held runs leave the window"
        );
    }

    pub async fn claim_view_is_the_parts_read_together(store: Arc<dyn Store>) {
        let resources = Resources {
            cpu_cores: 8,
            ram_mb: 8192,
            gpus: vec![],
        };
        assert!(
            store
                .claim_view("w1", t(10), 10, 3600)
                .await
                .unwrap()
                .is_none(),
            "no view for a worker that never sent a heartbeat"
        );
        for id in ["w1", "w2"] {
            let beat = Heartbeat {
                worker_id: id.into(),
                resources: resources.clone(),
                tags: vec![],
                running_ops: None,
                instance: None,
                exclusive_for: None,
            };
            store.heartbeat(beat, t(1)).await.unwrap();
        }
        let held = sized(t(0), 2, 512, None);
        let pending = sized(t(1), 1, 256, None);
        for run in [&held, &pending] {
            store.insert_run(run).await.unwrap();
        }
        store
            .update_run(&held.id, Box::new(|r| r.assign("w2", t(2))))
            .await
            .unwrap();
        let view = store
            .claim_view("w1", t(10), 10, 3600)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.worker.id, "w1");
        assert_eq!(window_ids(&view.pending), vec![pending.id.clone()]);
        assert_eq!(view.held, store.held_runs().await.unwrap());
        assert_eq!(view.held.len(), 1);
        let mut workers: Vec<String> = view.workers.iter().map(|w| w.id.clone()).collect();
        workers.sort();
        assert_eq!(workers, ["w1", "w2"]);
    }

    pub async fn update_runs_applies_each_run_on_its_own(store: Arc<dyn Store>) {
        let free = run_at(t(0), "img", 1);
        let mut taken = run_at(t(1), "img", 1);
        taken.assign("other", t(1)).unwrap();
        for run in [&free, &taken] {
            store.insert_run(run).await.unwrap();
        }
        let answers = store
            .update_runs(
                vec![taken.id.clone(), "missing".into(), free.id.clone()],
                Arc::new(|r| r.assign("w1", t(5))),
            )
            .await;
        assert_eq!(answers.len(), 3);
        assert!(
            matches!(answers[0], Err(StoreError::Rule(_))),
            "{:?}",
            answers[0]
        );
        assert!(matches!(answers[1], Ok(None)), "{:?}", answers[1]);
        let assigned = answers[2].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(assigned.worker_id(), Some("w1"));
        // What the answers say is what is stored: the refusal wrote nothing, the rest did.
        let stored = store.get_run(&taken.id).await.unwrap().unwrap();
        assert_eq!(stored.worker_id(), Some("other"));
        let stored = store.get_run(&free.id).await.unwrap().unwrap();
        assert_eq!(stored.state, OpRunState::Assigned);
        assert_eq!(stored.worker_id(), Some("w1"));
    }

    pub async fn heartbeats_register_and_refresh_workers(store: Arc<dyn Store>) {
        let resources = Resources {
            cpu_cores: 4,
            ram_mb: 1024,
            gpus: vec![],
        };
        let op = WorkerOpRun {
            id: "r1".into(),
            image: "img".into(),
            inputs: Default::default(),
            constraints: Default::default(),
            attempt: None,
            gpu_id: None,
        };
        let beat = |ops: Option<Vec<WorkerOpRun>>, cpu| Heartbeat {
            worker_id: "w1".into(),
            resources: Resources {
                cpu_cores: cpu,
                ..resources.clone()
            },
            tags: vec!["gpu".into()],
            running_ops: ops,
            instance: None,
            exclusive_for: None,
        };
        let first = store
            .heartbeat(beat(Some(vec![op.clone()]), 4), t(0))
            .await
            .unwrap();
        assert_eq!(first.created_at, t(0));
        let second = store.heartbeat(beat(None, 8), t(5)).await.unwrap();
        assert_eq!(second.created_at, t(0), "first heartbeat time is kept");
        assert_eq!(second.last_heartbeat_at, t(5));
        assert_eq!(second.resources.cpu_cores, 8);
        assert_eq!(
            second.running_ops,
            vec![op],
            "no running_ops in a heartbeat keeps the last list"
        );
        store
            .heartbeat(
                Heartbeat {
                    worker_id: "a0".into(),
                    ..beat(Some(vec![]), 1)
                },
                t(6),
            )
            .await
            .unwrap();
        let stored = store.get_worker("w1").await.unwrap().unwrap();
        assert_eq!(stored, second);
        let listed: Vec<String> = store
            .list_workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(listed, vec!["a0", "w1"]);
        assert!(store.get_worker("nobody").await.unwrap().is_none());
    }

    pub async fn a_heartbeat_from_another_live_instance_is_refused_and_changes_nothing(
        store: Arc<dyn Store>,
    ) {
        let beat = |instance: &str, cpu| Heartbeat {
            worker_id: "w1".into(),
            resources: Resources {
                cpu_cores: cpu,
                ram_mb: 1024,
                gpus: vec![],
            },
            tags: vec![],
            running_ops: None,
            instance: Some(instance.into()),
            exclusive_for: Some(Duration::seconds(60)),
        };
        let first = store.heartbeat(beat("a", 4), t(0)).await.unwrap();
        assert_eq!(first.instance.as_deref(), Some("a"));
        let refused = store.heartbeat(beat("b", 8), t(20)).await.unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Rule(DomainError::WorkerIdInUse { ref worker_id, seconds_ago: 20 }) if worker_id == "w1"
            ),
            "{refused:?}"
        );
        assert_eq!(
            store.get_worker("w1").await.unwrap().unwrap(),
            first,
            "a refused heartbeat writes nothing"
        );
        // The same instance again (a restart from the same state directory) is at home.
        let again = store.heartbeat(beat("a", 4), t(30)).await.unwrap();
        assert_eq!(again.last_heartbeat_at, t(30));
        // Once the first has been silent past the window, another instance takes the id.
        let taken = store.heartbeat(beat("b", 8), t(91)).await.unwrap();
        assert_eq!(taken.instance.as_deref(), Some("b"));
        assert_eq!(store.get_worker("w1").await.unwrap().unwrap(), taken);

        // Two instances heartbeating a new id at once: exactly one gets it.
        for round in 0..10 {
            let id = format!("fresh-{round}");
            let fresh = |instance: &str| Heartbeat {
                worker_id: id.clone(),
                ..beat(instance, 1)
            };
            let (a, b) = tokio::join!(
                store.heartbeat(fresh("a"), t(100)),
                store.heartbeat(fresh("b"), t(100))
            );
            assert!(a.is_ok() != b.is_ok(), "round {round}: {a:?} {b:?}");
        }
    }

    pub async fn logs_keep_a_tail_per_attempt(store: Arc<dyn Store>) {
        assert!(store.get_log("r", 1).await.unwrap().is_none());
        store.append_log("r", 1, "one\n", 12).await.unwrap();
        store.append_log("r", 1, "two\nthree\n", 12).await.unwrap();
        store.append_log("r", 2, "other\n", 12).await.unwrap();
        let tail = store.get_log("r", 1).await.unwrap().unwrap();
        assert_eq!((tail.text.as_str(), tail.total_bytes), ("two\nthree\n", 14));
        assert_eq!(
            store.get_log("r", 2).await.unwrap().unwrap().text,
            "other\n"
        );
    }

    /// The timeout check's listing returns the PENDING runs with a queue timeout, all of
    /// them across pages, and no other run: not one without a timeout (or with 0, which
    /// means none), and not a RUNNING one that has one.
    pub async fn the_queue_timeout_listing_is_the_pending_runs_that_have_one(
        store: Arc<dyn Store>,
    ) {
        let mut timed = Vec::new();
        for i in 0..5 {
            let mut run = sized(t(i), 1, 1, None);
            run.constraints.queue_timeout_s = Some(60);
            store.insert_run(&run).await.unwrap();
            timed.push(run.id);
        }
        let untimed = sized(t(10), 1, 1, None);
        let mut zero = sized(t(11), 1, 1, None);
        zero.constraints.queue_timeout_s = Some(0);
        for run in [&untimed, &zero] {
            store.insert_run(run).await.unwrap();
        }
        let mut running = sized(t(12), 1, 1, None);
        running.constraints.queue_timeout_s = Some(60);
        let running = started(store.as_ref(), running).await;
        let mut listed = Vec::new();
        let mut cursor = Cursor::Start;
        loop {
            let query = RunQuery {
                limit: 2,
                cursor: cursor.clone(),
                state: Some(OpRunState::Pending),
                queue_timeout: true,
                ..RunQuery::default()
            };
            let page = store.list_runs(&query).await.unwrap();
            listed.extend(ids(&page.runs));
            match page.runs.last() {
                Some(last) if page.has_more => cursor = Cursor::StartingAfter(last.id.clone()),
                _ => break,
            }
        }
        timed.reverse();
        assert_eq!(listed, timed, "newest first, each once");
        // A RUNNING run with a queue timeout is not what the filter means.
        let query = RunQuery {
            limit: 10,
            state: Some(OpRunState::Running),
            queue_timeout: true,
            ..RunQuery::default()
        };
        assert!(store.list_runs(&query).await.unwrap().runs.is_empty());
        // The run leaves the listing when it leaves PENDING.
        store
            .update_run(
                &timed[0],
                Box::new(|r: &mut OpRun| r.set_state(OpRunState::Cancelled, t(20))),
            )
            .await
            .unwrap();
        let query = RunQuery {
            limit: 10,
            queue_timeout: true,
            ..RunQuery::default()
        };
        let page = store.list_runs(&query).await.unwrap();
        assert_eq!(ids(&page.runs), timed[1..].to_vec());
        let _ = running;
    }

    pub async fn runs_are_counted_by_state(store: Arc<dyn Store>) {
        for i in 0..3 {
            let mut run = run_at(t(i), "img", 1);
            if i == 0 {
                run.set_state(OpRunState::Failed, t(i)).unwrap();
            }
            store.insert_run(&run).await.unwrap();
        }
        let counts: Vec<(OpRunState, u64)> = store
            .count_runs_by_state()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut counts = counts;
        counts.sort_by_key(|(s, _)| s.as_str());
        assert_eq!(
            counts,
            vec![(OpRunState::Failed, 1), (OpRunState::Pending, 2)]
        );
    }

    pub async fn concurrent_assignment_is_exactly_once(store: Arc<dyn Store>) {
        let mut runs = Vec::new();
        for i in 0..20 {
            let run = run_at(t(i), "img", 1);
            store.insert_run(&run).await.unwrap();
            runs.push(run.id);
        }
        let runs = Arc::new(runs);
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (store, runs) = (store.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                let mut won = Vec::new();
                for id in runs.iter() {
                    let worker = format!("w{w}");
                    match store
                        .update_run(id, Box::new(move |r| r.assign(&worker, t(30))))
                        .await
                    {
                        Ok(Some(_)) => won.push(id.clone()),
                        Err(StoreError::Rule(_)) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                won
            }));
        }
        let mut won = Vec::new();
        for task in tasks {
            won.extend(task.await.unwrap());
        }
        won.sort();
        let mut expected = runs.to_vec();
        expected.sort();
        assert_eq!(won, expected, "each run assigned exactly once");
    }
    /// Registers worker `id` with `cpu` cores, `ram_mb` MB and GPUs of these VRAM sizes.
    async fn register(
        store: &Arc<dyn Store>,
        id: &str,
        cpu: u32,
        ram_mb: u64,
        gpus: &[u64],
        at: Timestamp,
    ) {
        let gpus = gpus
            .iter()
            .zip(0u32..)
            .map(|(vram, i)| gyoza_core::resources::Gpu {
                id: i,
                vram_mb: *vram,
                tags: vec![],
            })
            .collect();
        let beat = Heartbeat {
            worker_id: id.into(),
            resources: Resources {
                cpu_cores: cpu,
                ram_mb,
                gpus,
            },
            tags: vec![],
            running_ops: None,
            instance: None,
            exclusive_for: None,
        };
        store.heartbeat(beat, at).await.unwrap();
    }

    /// The CPU cores the runs held by `worker` need, and how many runs they are.
    async fn held_cpu(store: &Arc<dyn Store>, worker: &str) -> (u32, usize) {
        let held: Vec<HeldRun> = store
            .held_runs()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.worker_id == worker)
            .collect();
        let cpu = held.iter().map(|r| r.constraints.cpu.unwrap_or(0)).sum();
        (cpu, held.len())
    }

    pub async fn assign_runs_assigns_only_what_still_fits(store: Arc<dyn Store>) {
        register(&store, "w1", 2, 4096, &[8192], t(0)).await;
        let held = sized(t(1), 1, 1024, None);
        let gpu = sized(t(2), 1, 1024, Some(6144));
        let second_gpu = sized(t(3), 0, 512, Some(4096));
        let too_big = sized(t(4), 1, 4096, None);
        let other = sized(t(5), 1, 512, None);
        for run in [&held, &gpu, &second_gpu, &too_big, &other] {
            store.insert_run(run).await.unwrap();
        }
        store
            .update_run(&held.id, Box::new(|r| r.assign("w1", t(6))))
            .await
            .unwrap();
        let placements = vec![
            (held.id.clone(), None),          // not PENDING any more
            ("nope".to_owned(), None),        // no such run
            (too_big.id.clone(), None),       // RAM: 3072 MB free
            (gpu.id.clone(), Some(0)),        // fits: the last free core, 6 GB of VRAM
            (second_gpu.id.clone(), Some(0)), // VRAM: 2 GB left on GPU 0
            (other.id.clone(), None),         // CPU: none left
        ];
        let answers = store.assign_runs("w1", placements, t(7)).await;
        assert_eq!(answers.len(), 6);
        assert!(
            matches!(answers[0], Err(StoreError::Rule(_))),
            "{:?}",
            answers[0]
        );
        assert!(matches!(answers[1], Ok(None)), "{:?}", answers[1]);
        assert!(
            matches!(answers[2], Err(StoreError::Rule(_))),
            "{:?}",
            answers[2]
        );
        match &answers[3] {
            Ok(Some(run)) => {
                assert_eq!(run.state, OpRunState::Assigned);
                assert_eq!(run.worker_id(), Some("w1"));
            }
            other => panic!("the fitting run is assigned: {other:?}"),
        }
        assert!(
            matches!(answers[4], Err(StoreError::Rule(_))),
            "{:?}",
            answers[4]
        );
        assert!(
            matches!(answers[5], Err(StoreError::Rule(_))),
            "{:?}",
            answers[5]
        );
        for refused in [&too_big, &second_gpu, &other] {
            let run = store.get_run(&refused.id).await.unwrap().unwrap();
            assert_eq!(run.state, OpRunState::Pending, "a refusal writes nothing");
        }
        assert_eq!(held_cpu(&store, "w1").await, (2, 2));
        // A worker the store does not know gets nothing.
        let answers = store
            .assign_runs("ghost", vec![(other.id.clone(), None)], t(8))
            .await;
        assert!(
            matches!(answers[0], Err(StoreError::Rule(_))),
            "{:?}",
            answers[0]
        );
    }

    pub async fn concurrent_assign_runs_never_overcommit_a_worker(store: Arc<dyn Store>) {
        register(&store, "w1", 2, 65536, &[], t(0)).await;
        let mut runs = Vec::new();
        for i in 0..16 {
            let run = sized(t(i), 1, 256, None);
            store.insert_run(&run).await.unwrap();
            runs.push(run.id);
        }
        // Eight claimers that each read 2 free cores and placed two different 1-CPU runs.
        let mut tasks = Vec::new();
        for pair in runs.chunks(2) {
            let store = store.clone();
            let placements: Vec<(String, Option<u32>)> =
                pair.iter().map(|id| (id.clone(), None)).collect();
            tasks.push(tokio::spawn(async move {
                let answers = store.assign_runs("w1", placements, t(30)).await;
                let mut won = 0;
                for answer in answers {
                    match answer {
                        Ok(Some(_)) => won += 1,
                        Err(StoreError::Rule(_)) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                won
            }));
        }
        let mut won = 0;
        for task in tasks {
            won += task.await.unwrap();
        }
        assert_eq!(won, 2, "the worker's two cores were filled once");
        assert_eq!(
            held_cpu(&store, "w1").await,
            (2, 2),
            "never more than 2 CPUs held"
        );
    }

    pub async fn reaping_re_checks_that_the_worker_is_still_silent(store: Arc<dyn Store>) {
        register(&store, "w1", 2, 4096, &[], t(0)).await;
        let run = sized(t(1), 1, 256, None);
        store.insert_run(&run).await.unwrap();
        store
            .update_run(&run.id, Box::new(|r| r.assign("w1", t(2))))
            .await
            .unwrap();
        // The reaper found w1 silent with a cutoff of t(60); w1 heartbeats at t(70) before
        // the reaper writes.
        register(&store, "w1", 2, 4096, &[], t(70)).await;
        let lost = |at| -> gyoza_host::store::RunMutation {
            Box::new(move |r: &mut OpRun| r.worker_lost("w1", 60, 3, at))
        };
        let answer = store
            .update_run_if_silent(&run.id, "w1", t(60), lost(t(120)))
            .await;
        assert!(matches!(answer, Err(StoreError::Rule(_))), "{answer:?}");
        let kept = store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(
            kept.state,
            OpRunState::Assigned,
            "the worker keeps its attempt"
        );
        assert_eq!(kept.attempts.len(), 1);
        // Silent again past a later cutoff: now it is reaped.
        let answer = store
            .update_run_if_silent(&run.id, "w1", t(130), lost(t(190)))
            .await;
        let requeued = answer.unwrap().unwrap();
        assert_eq!(requeued.state, OpRunState::Pending);
        assert_eq!(requeued.attempts.len(), 2);
    }

    /// The outbox: a URL-topic run's events mark it due; one owner at a time holds its lease;
    /// releasing with progress that misses events appended since keeps the mark (and saves
    /// the progress); a failed try postpones it, and an append meanwhile keeps the
    /// postponement; progress covering everything clears it.
    pub async fn the_delivery_mark_is_cleared_only_when_everything_is_delivered(
        store: Arc<dyn Store>,
    ) {
        use gyoza_host::store::{DeliveryLease, DeliveryProgress};
        let mut run = run_at(t(0), "img", 0);
        run.event_delivery.topic = "http://hooks.example/gyoza".into();
        // Another run without a URL topic is never marked.
        let quiet = running_run(store.as_ref()).await;
        let now = Utc::now().timestamp_micros();
        assert!(store.due_deliveries(now, 10).await.unwrap().is_empty());
        let run = started(store.as_ref(), run).await;
        info(store.as_ref(), &quiet.id, "q".into(), 0)
            .await
            .unwrap();
        assert_eq!(
            store.due_deliveries(now, 10).await.unwrap(),
            vec![run.id.clone()]
        );

        let until = now + 60_000_000;
        let taken = store
            .lease_delivery(&run.id, "a", now, until)
            .await
            .unwrap();
        assert_eq!(taken, DeliveryLease::Taken(DeliveryProgress::default()));
        let other = store
            .lease_delivery(&run.id, "b", now, until)
            .await
            .unwrap();
        assert_eq!(other, DeliveryLease::Held, "one owner at a time");
        // "a" sent the STARTED event; an INFO is appended meanwhile.
        let sent_one = DeliveryProgress {
            next: 1,
            state: Some(OpRunState::Running),
            ..DeliveryProgress::default()
        };
        assert!(
            store
                .save_delivery(&run.id, "a", &sent_one, until)
                .await
                .unwrap()
        );
        assert!(
            !store
                .save_delivery(&run.id, "b", &sent_one, until)
                .await
                .unwrap()
        );
        info(store.as_ref(), &run.id, "more".into(), 0)
            .await
            .unwrap();
        let cleared = store
            .release_delivery(&run.id, "a", &sent_one, None)
            .await
            .unwrap();
        assert!(!cleared, "an event appended since keeps the mark");
        assert_eq!(
            store.due_deliveries(now, 10).await.unwrap(),
            vec![run.id.clone()]
        );

        // The next owner resumes from the saved progress.
        let taken = store
            .lease_delivery(&run.id, "b", now, until)
            .await
            .unwrap();
        assert_eq!(taken, DeliveryLease::Taken(sent_one.clone()));
        // A failed try postpones the run by an hour; an append meanwhile keeps that.
        let later = now + 3_600_000_000;
        store
            .release_delivery(&run.id, "b", &sent_one, Some(later))
            .await
            .unwrap();
        info(store.as_ref(), &run.id, "again".into(), 0)
            .await
            .unwrap();
        assert!(store.due_deliveries(now, 10).await.unwrap().is_empty());
        assert_eq!(
            store.due_deliveries(later, 10).await.unwrap(),
            vec![run.id.clone()]
        );

        // Everything sent: the mark goes.
        store
            .lease_delivery(&run.id, "b", now, until)
            .await
            .unwrap();
        let all = DeliveryProgress {
            next: 3,
            ..sent_one
        };
        assert!(
            store
                .release_delivery(&run.id, "b", &all, None)
                .await
                .unwrap()
        );
        assert!(store.due_deliveries(i64::MAX, 10).await.unwrap().is_empty());
        // A lease given back is free for anyone.
        let taken = store
            .lease_delivery(&run.id, "c", now, until)
            .await
            .unwrap();
        assert_eq!(taken, DeliveryLease::Taken(all));
    }
}

macro_rules! conformance {
    ($backend:ident: $($case:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(fixture) = super::$backend().await {
                        super::cases::$case(fixture.store.clone()).await;
                    }
                }
            )+
        }
    };
}

macro_rules! suite {
    ($($backend:ident),+) => {
        $(
            conformance!($backend:
                definitions_upsert_and_latest,
                runs_round_trip,
                list_runs_pages_both_ways_with_filters,
                runs_created_at_the_same_instant_page_without_loss,
                update_run_is_atomic_and_refusals_write_nothing,
                pending_window_orders_by_priority_and_respects_backoff,
                runs_on_worker_are_its_assigned_and_running_runs,
                scheduling_views_carry_constraints_and_gpus,
                update_runs_applies_each_run_on_its_own,
                claim_view_is_the_parts_read_together,
                heartbeats_register_and_refresh_workers,
                a_heartbeat_from_another_live_instance_is_refused_and_changes_nothing,
                logs_keep_a_tail_per_attempt,
                runs_are_counted_by_state,
                the_queue_timeout_listing_is_the_pending_runs_that_have_one,
                concurrent_assignment_is_exactly_once,
                assign_runs_assigns_only_what_still_fits,
                concurrent_assign_runs_never_overcommit_a_worker,
                reaping_re_checks_that_the_worker_is_still_silent,
                events_are_stored_apart_and_paged_in_order,
                event_caps_refuse_and_state_events_pass,
                attempts_keep_one_copy_of_the_inputs,
                the_delivery_mark_is_cleared_only_when_everything_is_delivered,
                queue_usage_is_kept_per_queue_and_decays,
                concurrent_ends_in_one_queue_are_each_counted_once,
            );
        )+
    };
}

suite!(sqlite, mongodb);

/// A MongoDB store on a database of its own, with its URL and database name (for tests
/// that reach behind it); `None` when MongoDB is left out.
async fn mongodb_alone() -> Option<(MongoStore, String, String)> {
    if std::env::var("GYOZA_TEST_SKIP_MONGO").is_ok_and(|v| v == "1") {
        return None;
    }
    let url = std::env::var("GYOZA_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27117".into());
    let database = format!("gyoza_test_{}", uuid_like());
    let store = MongoStore::connect(&url, &database)
        .await
        .unwrap_or_else(|e| panic!("no MongoDB-wire server at {url} ({e})"));
    Some((store, url, database))
}

/// Run documents written before the `sched` subdocument existed are still scheduled: the
/// window and the held runs fall back to reading them whole.
#[tokio::test]
async fn mongodb_documents_without_sched_fields_are_still_scheduled() {
    let Some((store, url, database)) = mongodb_alone().await else {
        return;
    };
    let pending = sized(t(0), 2, 1024, Some(4096));
    let mut held = sized(t(1), 1, 512, None);
    held.assign("w1", t(2)).unwrap();
    for run in [&pending, &held] {
        store.insert_run(run).await.unwrap();
    }
    // Make them look like documents of an older gyoza.
    let runs = raw_runs(&url, &database).await;
    let unset = runs
        .update_many(
            ::mongodb::bson::doc! {},
            ::mongodb::bson::doc! {"$unset": {"sched": ""}},
        )
        .await
        .unwrap();
    assert_eq!(unset.modified_count, 2);
    let window = store.pending_window(t(10), 10).await.unwrap();
    assert_eq!(window, vec![PendingRun::from(&pending)]);
    let held_now = store.held_runs().await.unwrap();
    assert_eq!(held_now, vec![HeldRun::of(&held).unwrap()]);
}

/// The `runs` collection of `database`, read and written behind the store's back.
async fn raw_runs(url: &str, database: &str) -> ::mongodb::Collection<::mongodb::bson::Document> {
    let client = ::mongodb::Client::with_uri_str(url).await.unwrap();
    client.database(database).collection("runs")
}

/// A MongoDB store whose driver reports each command it starts, by name, into the list.
async fn mongodb_watched() -> Option<(MongoStore, Arc<std::sync::Mutex<Vec<String>>>)> {
    let (_, url, database) = mongodb_alone().await?;
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let mut options = ::mongodb::options::ClientOptions::parse(&url)
        .await
        .unwrap();
    options.command_event_handler = Some(::mongodb::event::EventHandler::callback(
        move |event: ::mongodb::event::command::CommandEvent| {
            if let ::mongodb::event::command::CommandEvent::Started(started) = event {
                sink.lock().unwrap().push(started.command_name);
            }
        },
    ));
    let store = MongoStore::connect_with(options, &url, &database)
        .await
        .unwrap();
    Some((store, seen))
}

/// A claim on MongoDB is a bounded number of round trips, whatever it assigns and however
/// long the queue: the claim's reads go out together, and assigning eight runs reads them
/// in one `find` and moves their inline events in one `insert`, then sends the eight
/// compare-and-sets at once.
#[tokio::test]
async fn mongodb_a_claim_is_a_bounded_number_of_commands() {
    let Some((store, seen)) = mongodb_watched().await else {
        return;
    };
    let heartbeat = |id: &str| gyoza_core::Heartbeat {
        worker_id: id.into(),
        resources: gyoza_core::Resources {
            cpu_cores: 64,
            ram_mb: 65_536,
            gpus: vec![],
        },
        tags: vec![],
        running_ops: None,
        instance: None,
        exclusive_for: None,
    };
    store.heartbeat(heartbeat("w1"), t(0)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..200 {
        let run = sized(t(i), 1, 1, None);
        store.insert_run(&run).await.unwrap();
        ids.push(run.id);
    }
    let commands =
        |seen: &Arc<std::sync::Mutex<Vec<String>>>| std::mem::take(&mut *seen.lock().unwrap());
    commands(&seen);
    let view = store
        .claim_view("w1", t(300), 1_000, 3_600)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.pending.len(), 200);
    let read = commands(&seen);
    // worker, held runs, window, workers, usage: five finds (and a cursor's next batches).
    assert_eq!(read.iter().filter(|c| *c == "find").count(), 5, "{read:?}");
    assert!(
        read.iter().all(|c| c == "find" || c == "getMore"),
        "{read:?}"
    );

    let placements: Vec<(String, Option<u32>)> =
        ids[..8].iter().map(|id| (id.clone(), None)).collect();
    let answers = store.assign_runs("w1", placements, t(300)).await;
    assert!(
        answers.iter().all(|a| matches!(a, Ok(Some(_)))),
        "{answers:?}"
    );
    let wrote = commands(&seen);
    let count = |name: &str| wrote.iter().filter(|c| *c == name).count();
    // Lease taken and given back; worker, held runs and the eight runs in three finds; the
    // events in at most one insert; one compare-and-set per run.
    assert_eq!(count("find"), 3, "{wrote:?}");
    assert_eq!(count("update"), 8, "{wrote:?}");
    assert_eq!(count("delete"), 1, "{wrote:?}");
    assert!(count("insert") <= 2, "{wrote:?}");
    assert_eq!(
        wrote.len(),
        count("find") + count("update") + count("delete") + count("insert")
    );
    let held = store.held_runs().await.unwrap();
    assert_eq!(held.len(), 8);
}

/// A PENDING run document written before `queue_timeout_s` existed is still read by the
/// timeout check's listing (the check then reads its constraints), so its deadline is kept.
#[tokio::test]
async fn mongodb_documents_without_the_queue_timeout_field_are_still_checked() {
    let Some((store, url, database)) = mongodb_alone().await else {
        return;
    };
    let mut old = sized(t(0), 1, 1, None);
    old.constraints.queue_timeout_s = Some(60);
    let untimed = sized(t(1), 1, 1, None);
    for run in [&old, &untimed] {
        store.insert_run(run).await.unwrap();
    }
    let runs = raw_runs(&url, &database).await;
    let unset = runs
        .update_one(
            ::mongodb::bson::doc! {"_id": &old.id},
            ::mongodb::bson::doc! {"$unset": {"queue_timeout_s": ""}},
        )
        .await
        .unwrap();
    assert_eq!(unset.modified_count, 1);
    let query = RunQuery {
        limit: 10,
        queue_timeout: true,
        ..RunQuery::default()
    };
    let page = store.list_runs(&query).await.unwrap();
    assert_eq!(ids(&page.runs), vec![old.id.clone()]);
}

/// A claim on MongoDB leaves no claim lease behind, and a lease left by a claimer that
/// crashed blocks the worker's claims only until it expires.
#[tokio::test]
async fn mongodb_claim_leases_are_released_and_expire() {
    let Some((store, url, database)) = mongodb_alone().await else {
        return;
    };
    let beat = Heartbeat {
        worker_id: "w1".into(),
        resources: Resources {
            cpu_cores: 4,
            ram_mb: 4096,
            gpus: vec![],
        },
        tags: vec![],
        running_ops: None,
        instance: None,
        exclusive_for: None,
    };
    store.heartbeat(beat, t(0)).await.unwrap();
    let (first, second) = (sized(t(1), 1, 256, None), sized(t(2), 1, 256, None));
    for run in [&first, &second] {
        store.insert_run(run).await.unwrap();
    }
    let client = ::mongodb::Client::with_uri_str(&url).await.unwrap();
    let leases = client
        .database(&database)
        .collection::<::mongodb::bson::Document>("claim_leases");
    let answers = store
        .assign_runs("w1", vec![(first.id.clone(), None)], t(3))
        .await;
    assert!(matches!(answers[0], Ok(Some(_))), "{:?}", answers[0]);
    assert_eq!(
        leases
            .count_documents(::mongodb::bson::doc! {})
            .await
            .unwrap(),
        0,
        "the claim released its lease"
    );
    // A claimer crashed holding the lease; it expired a second ago.
    let expired = Utc::now().timestamp_micros() - 1_000_000;
    leases
        .insert_one(::mongodb::bson::doc! {"_id": "w1", "owner": "crashed", "until_us": expired})
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answers = store
        .assign_runs("w1", vec![(second.id.clone(), None)], t(4))
        .await;
    assert!(matches!(answers[0], Ok(Some(_))), "{:?}", answers[0]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "an expired lease is taken over at once"
    );
    assert_eq!(
        leases
            .count_documents(::mongodb::bson::doc! {})
            .await
            .unwrap(),
        0
    );
}

/// A run document written before events lived apart (every event inline, no `events_total`)
/// shows all its events, in order; two replicas updating it at once move them out once,
/// and its document shrinks.
#[tokio::test]
async fn mongodb_documents_with_inline_events_are_moved_out_by_their_first_update() {
    let Some((store, url, database)) = mongodb_alone().await else {
        return;
    };
    let mut run = run_at(t(0), "img", 0);
    run.assign("w1", t(1)).unwrap();
    for i in 0..50 {
        let payload = serde_json::json!({"pad": "z".repeat(1_000)});
        let payload = payload.as_object().cloned().unwrap_or_default();
        run.add_event(
            EventType::Info,
            serde_json::json!(format!("old-{i:02}")),
            payload,
            t(2),
        )
        .unwrap();
    }
    store.insert_run(&run).await.unwrap();
    // The old shape: the timeline inline, no count.
    let mut old = serde_json::to_value(&run).unwrap();
    old["attempts"][0]
        .as_object_mut()
        .unwrap()
        .remove("events_total");
    assert_eq!(old["attempts"][0]["events"].as_array().unwrap().len(), 50);
    let runs = raw_runs(&url, &database).await;
    runs.update_one(
        ::mongodb::bson::doc! {"_id": &run.id},
        ::mongodb::bson::doc! {"$set": {"doc": old.to_string()}},
    )
    .await
    .unwrap();
    let before = store.stored_run_bytes(&run.id).await.unwrap().unwrap();
    let expected: Vec<String> = (0..50).map(|i| format!("old-{i:02}")).collect();
    let msgs = |events: Vec<(u64, String)>| -> Vec<String> {
        events.into_iter().map(|(_, m)| m).collect()
    };
    assert_eq!(msgs(page_all(&store, &run.id, 8).await), expected);
    // Two replicas append at once.
    let other = MongoStore::connect(&url, &database).await.unwrap();
    let (a, b) = tokio::join!(
        info(&store, &run.id, "new-a".into(), 0),
        info(&other, &run.id, "new-b".into(), 0)
    );
    a.unwrap();
    b.unwrap();
    let after = msgs(page_all(&store, &run.id, 8).await);
    assert_eq!(after.len(), 52);
    assert_eq!(&after[..50], &expected[..]);
    let mut new = after[50..].to_vec();
    new.sort();
    assert_eq!(new, ["new-a", "new-b"]);
    let shrunk = store.stored_run_bytes(&run.id).await.unwrap().unwrap();
    assert!(
        shrunk < before / 10,
        "{before} bytes before, {shrunk} after"
    );
}

/// The usage of queue "q" after one attempt held 2 cores and 1 GB over `t(0)..t(100)`,
/// accrued with half-life `h`, read at `t(100)`.
fn usage_of_one_at_100(h: u32) -> [(&'static str, [f64; 3]); 1] {
    [("q", held_usage([2.0, 1024.0, 0.0], 100.0, h))]
}

/// The queues' usage is in the file: a store opened on it again reads the same, and accrues
/// with the half-life it was told.
#[tokio::test]
async fn sqlite_queue_usage_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gyoza.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.set_usage_half_life(600);
    complete_at_100(&store, &queued("q", 2, 1024, None)).await;
    let before = store.queue_usage(t(100), 600).await.unwrap();
    assert_usage(&before, &usage_of_one_at_100(600));
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.queue_usage(t(100), 600).await.unwrap(), before);
    assert_usage(
        &store.queue_usage(t(700), 600).await.unwrap(),
        &[("q", decayed(before[0].1, 600.0, 600))],
    );
}

/// The queues' usage is in the database: another connection (a restarted or second server)
/// reads the same.
#[tokio::test]
async fn mongodb_queue_usage_survives_reconnecting() {
    let Some((store, url, database)) = mongodb_alone().await else {
        return;
    };
    store.set_usage_half_life(600);
    complete_at_100(&store, &queued("q", 2, 1024, None)).await;
    let before = store.queue_usage(t(100), 600).await.unwrap();
    assert_usage(&before, &usage_of_one_at_100(600));
    drop(store);
    let store = MongoStore::connect(&url, &database).await.unwrap();
    assert_eq!(store.queue_usage(t(100), 600).await.unwrap(), before);
}
