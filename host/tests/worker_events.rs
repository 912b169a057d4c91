//! `POST /workers/{id}/events`: a worker's events of many runs in one request. Each event is
//! answered as its own `POST /runs/{id}/events` would be, one run's events apply in order in
//! one write, a refused event changes nothing and does not stop the others, and the worker
//! must hold the run. On both stores.

pub mod common;

use axum::http::StatusCode;
use common::{Api, detail, skip_mongo};
use serde_json::{Value, json};

fn statuses(answer: &Value) -> Vec<u64> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

fn types(run: &Value) -> Vec<String> {
    run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn batch(api: &Api, worker: &str, events: Value) -> Value {
    let (status, answer) = api
        .call(
            "POST",
            &format!("/workers/{worker}/events"),
            Some(json!({ "events": events })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

async fn each_event_is_answered_as_alone_and_runs_apply_in_order(api: &Api) {
    api.heartbeat("w1", 8, 8192).await;
    api.heartbeat("w2", 8, 8192).await;
    let a = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut mine = api.claim("w1", 2).await;
    mine.sort();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(mine, both);
    let other = api.create_run(json!({"image": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(api.claim("w2", 1).await, [other.as_str()]);

    let answer = batch(
        api,
        "w1",
        json!([
            {"run_id": a, "type": "STARTED", "payload": {"worker_id": "w1"}, "attempt": 1},
            {"run_id": b, "type": "STARTED", "payload": {"worker_id": "w1"}},
            {"run_id": a, "type": "STARTED", "payload": {"worker_id": "w1"}},
            {"run_id": a, "type": "PROGRESS", "msg": 50},
            {"run_id": other, "type": "STARTED", "payload": {"worker_id": "w1"}},
            {"run_id": "no-such-run", "type": "INFO", "msg": "?"},
            {"run_id": a, "type": "NOT-A-TYPE"},
            {"type": "INFO"},
            {"run_id": b, "type": "INFO", "msg": "x".repeat(70 * 1024)},
            {"run_id": b, "type": "INFO", "msg": "stale", "attempt": 7},
            {"run_id": a, "type": "COMPLETED", "msg": "done", "attempt": 1},
            {"run_id": a, "type": "INFO", "msg": "after the end"},
        ]),
    )
    .await;
    assert_eq!(
        statuses(&answer),
        [200, 200, 400, 200, 409, 404, 400, 422, 413, 409, 200, 409],
        "{answer}"
    );
    assert_eq!(
        (answer["applied"].as_u64(), answer["failed"].as_u64()),
        (Some(4), Some(8))
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["state"], "RUNNING");
    assert_eq!(results[10]["state"], "COMPLETED");
    assert!(
        detail(&results[4]).contains("not held by worker 'w1'"),
        "{answer}"
    );
    assert!(detail(&results[7]).contains("run_id"), "{answer}");

    // Run a: its events in the request's order, the refused ones absent.
    let run_a = api.ok("GET", &format!("/runs/{a}"), None).await;
    assert_eq!(run_a["state"], "COMPLETED");
    assert_eq!(run_a["progress"], 50.0);
    let a_types = types(&run_a);
    assert_eq!(
        a_types[a_types.len() - 3..],
        ["STARTED", "PROGRESS", "COMPLETED"]
    );
    assert_eq!(a_types.iter().filter(|t| *t == "STARTED").count(), 1);
    // Run b: started, nothing else; another worker's run: untouched.
    let run_b = api.ok("GET", &format!("/runs/{b}"), None).await;
    assert_eq!(run_b["state"], "RUNNING");
    assert_eq!(types(&run_b).last().unwrap(), "STARTED");
    let run_other = api.ok("GET", &format!("/runs/{other}"), None).await;
    assert_eq!(run_other["state"], "ASSIGNED");
}

#[tokio::test]
async fn each_event_is_answered_as_alone_and_runs_apply_in_order_on_sqlite() {
    each_event_is_answered_as_alone_and_runs_apply_in_order(&Api::new().await).await;
}

#[tokio::test]
async fn each_event_is_answered_as_alone_and_runs_apply_in_order_on_mongodb() {
    if skip_mongo() {
        return;
    }
    each_event_is_answered_as_alone_and_runs_apply_in_order(&Api::mongodb().await).await;
}

/// A run all of whose events are refused is left as it was: its `updated_at` and timeline.
#[tokio::test]
async fn a_run_whose_events_are_all_refused_is_left_as_it_was() {
    let api = Api::new().await;
    let id = api.running_on("w1", json!({})).await;
    let before = api.ok("GET", &format!("/runs/{id}"), None).await;
    api.advance(5);
    let answer = batch(
        &api,
        "w1",
        json!([
            {"run_id": id, "type": "STARTED"},
            {"run_id": id, "type": "INFO", "msg": "old", "attempt": 2},
        ]),
    )
    .await;
    assert_eq!(statuses(&answer), [400, 409], "{answer}");
    let after = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(after["updated_at"], before["updated_at"]);
    assert_eq!(after["events_total"], before["events_total"]);
}

/// The same batch sent twice at once (a worker that retried before its first reply came):
/// each event's state change happens once; the copy's state events are refused.
#[tokio::test]
async fn the_same_batch_twice_at_once_moves_each_run_once() {
    let api = Api::new().await;
    api.heartbeat("w1", 8, 8192).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            api.create_run(json!({"image": "x", "constraints": {"cpu": 1}}))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(api.claim("w1", 8).await.len(), 8);
    let events: Vec<Value> = ids
        .iter()
        .flat_map(|id| {
            [
                json!({"run_id": id, "type": "STARTED", "payload": {"worker_id": "w1"}, "attempt": 1}),
                json!({"run_id": id, "type": "COMPLETED", "msg": "ok", "attempt": 1}),
            ]
        })
        .collect();
    let events = Value::Array(events);
    let (one, two) = tokio::join!(batch(&api, "w1", events.clone()), batch(&api, "w1", events));
    let applied = one["applied"].as_u64().unwrap() + two["applied"].as_u64().unwrap();
    assert_eq!(applied, 16, "{one} {two}");
    for id in &ids {
        let run = api.ok("GET", &format!("/runs/{id}"), None).await;
        assert_eq!(run["state"], "COMPLETED");
        let t = types(&run);
        assert_eq!(t.iter().filter(|t| *t == "STARTED").count(), 1, "{t:?}");
        assert_eq!(t.iter().filter(|t| *t == "COMPLETED").count(), 1, "{t:?}");
    }
}

/// More than 1,000 events, or a body of the wrong shape, is refused whole: nothing applies.
#[tokio::test]
async fn a_batch_over_the_limit_is_refused_whole() {
    let api = Api::new().await;
    let id = api.running_on("w1", json!({})).await;
    let events: Vec<Value> = (0..=1_000)
        .map(|i| json!({"run_id": id, "type": "INFO", "msg": format!("{i}")}))
        .collect();
    let before = api.ok("GET", &format!("/runs/{id}"), None).await["events_total"].clone();
    let (status, body) = api
        .call(
            "POST",
            "/workers/w1/events",
            Some(json!({ "events": events })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(detail(&body), "A batch holds at most 1000 events, got 1001");
    let (status, body) = api
        .call(
            "POST",
            "/workers/w1/events",
            Some(json!({"events": {"run_id": id}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let after = api.ok("GET", &format!("/runs/{id}"), None).await["events_total"].clone();
    assert_eq!(before, after);
}

/// A refused event in the middle of a run's events leaves no trace for the next ones: a
/// RETRIED with the retries used up is refused, and the INFO after it finds the attempt
/// RUNNING as it was (an earlier domain finished the attempt before refusing the retry).
#[tokio::test]
async fn a_refused_retry_in_a_batch_leaves_the_attempt_running() {
    let api = Api::new().await;
    let id = api.running_on("w1", json!({"max_attempts": 1})).await;
    let answer = batch(
        &api,
        "w1",
        json!([
            {"run_id": id, "type": "RETRIED", "msg": "again?", "attempt": 1},
            {"run_id": id, "type": "INFO", "msg": "still here", "attempt": 1},
        ]),
    )
    .await;
    assert_eq!(statuses(&answer), [400, 200], "{answer}");
    let run = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(run["state"], "RUNNING");
    assert_eq!(run["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(run["attempts"][0]["state"], "RUNNING", "{run}");
    assert_eq!(types(&run).last().unwrap(), "INFO");
}

/// A thousand events of one run in one batch each apply, in order.
#[tokio::test]
async fn a_thousand_events_of_one_run_apply_in_order() {
    let api = Api::new().await;
    let id = api.running_on("w1", json!({})).await;
    let before = api.ok("GET", &format!("/runs/{id}"), None).await["events_total"]
        .as_u64()
        .unwrap();
    let mut events: Vec<Value> = (0..999)
        .map(|i| json!({"run_id": id, "type": "PROGRESS", "msg": i % 100, "attempt": 1}))
        .collect();
    events.push(json!({"run_id": id, "type": "COMPLETED", "msg": "done", "attempt": 1}));
    let answer = batch(&api, "w1", Value::Array(events)).await;
    assert_eq!(answer["applied"], 1000, "{}", answer["results"][0]);
    let run = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(run["state"], "COMPLETED");
    assert_eq!(run["events_total"].as_u64().unwrap(), before + 1000);
    assert_eq!(run["progress"], 98.0);
}
