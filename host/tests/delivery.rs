//! Event delivery from the store's outbox, on both stores, to real HTTP receivers: every
//! committed event arrives although the receiver was down across a server restart, in order
//! per run, once per event when two replicas deliver, and a lease left by a dead process
//! only delays its run.

pub mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use common::Api;
use gyoza_host::store::DeliveryLease;
use serde_json::{Value, json};

/// What a receiver got, in arrival order.
type Received = Arc<Mutex<Vec<Value>>>;

/// A real receiver on `listener` that answers 503 to every `fail_every`-th request (never
/// when 0) and records the others.
fn serve(listener: std::net::TcpListener, fail_every: usize) -> Received {
    let received: Received = Arc::default();
    let seen = Arc::new(Mutex::new(0usize));
    let router = {
        let received = received.clone();
        Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<Value>| {
                let (received, seen) = (received.clone(), seen.clone());
                async move {
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        *seen += 1;
                        *seen
                    };
                    if fail_every > 0 && n % fail_every == 0 {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    received.lock().unwrap().push(body);
                    StatusCode::OK
                }
            }),
        )
    };
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    received
}

/// A port nothing listens on now (connections to it are refused).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until `received` holds `count` messages (the test fails after `seconds`).
async fn wait_for(received: &Received, count: usize, seconds: u64) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let got = received.lock().unwrap().clone();
        if got.len() >= count {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} events delivered within {seconds} s: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The counter `series` (its name and labels) in `/metrics` now (0 when absent).
async fn count(api: &Api, series: &str) -> u64 {
    let metrics = api.text("GET", "/metrics", None).await.1;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Waits until the counter `series` (its name and labels) is above 0.
async fn wait_for_count(api: &Api, series: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(api, series).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{series} stayed 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RETRIED: &str = "gyoza_event_deliveries_total{result=\"retried\"}";

on_both_stores! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    Api::with_delivery_allow("127.0.0.1"), Api::mongodb_with_delivery_allow("127.0.0.1");
    a_receiver_down_across_a_restart_gets_every_event_in_order => a_receiver_down_across_a_restart_gets_every_event_in_order;
    two_replicas_deliver_each_event_once_in_order => two_replicas_deliver_each_event_once_in_order;
    a_lease_left_by_a_dead_process_only_delays_its_run => a_lease_left_by_a_dead_process_only_delays_its_run;
    a_busy_run_is_retried_on_its_backoff_schedule => a_busy_run_is_retried_on_its_backoff_schedule;
}

/// `(attempt, index)` of each message, in arrival order.
fn positions(messages: &[Value], run: &str) -> Vec<(u64, u64)> {
    messages
        .iter()
        .filter(|m| m["run_id"] == run)
        .map(|m| (m["attempt"].as_u64().unwrap(), m["index"].as_u64().unwrap()))
        .collect()
}

/// A run claimed by `w1` with `events` INFO events between STARTED and COMPLETED, its topic
/// `hook`; returns its id.
async fn chatty_run(api: &Api, hook: &str, events: usize) -> String {
    let id = api
        .claimed_run(json!({"image": "x", "event_delivery": {"topic": hook}}))
        .await;
    api.event_ok(
        &id,
        json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w1"}}),
    )
    .await;
    for n in 0..events {
        api.event_ok(&id, json!({"type": "INFO", "msg": format!("info {n}")}))
            .await;
    }
    api.event_ok(&id, json!({"type": "COMPLETED", "msg": "done"}))
        .await;
    id
}

async fn a_receiver_down_across_a_restart_gets_every_event_in_order(api: Api) {
    let port = closed_port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let id = chatty_run(&api, &hook, 20).await;
    // The server tried and failed: the receiver is down.
    wait_for_count(&api, RETRIED).await;
    let api = api.restart().await;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let received = serve(listener, 0);
    let got = wait_for(&received, 22, 60).await;
    let expected: Vec<(u64, u64)> = (0..22).map(|i| (1, i)).collect();
    assert_eq!(positions(&got, &id), expected, "every event once, in order");
    let states: Vec<&str> = got.iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states[0], "RUNNING");
    assert_eq!(states[21], "COMPLETED");
    assert_eq!(got[21]["event"]["type"], "COMPLETED");
    // Nothing more comes, and the run is no longer marked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.lock().unwrap().len(), 22);
    let due = api
        .service
        .store
        .due_deliveries(i64::MAX, 10)
        .await
        .unwrap();
    assert!(due.is_empty(), "still marked: {due:?}");
}

async fn two_replicas_deliver_each_event_once_in_order(first: Api) {
    let second = first.replica().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    // Every 7th request fails: retried, in order.
    let received = serve(listener, 7);
    let mut runs = Vec::new();
    for n in 0..6 {
        // Events written through both replicas, so that both are woken.
        let api = if n % 2 == 0 { &first } else { &second };
        runs.push(chatty_run(api, &hook, 8).await);
    }
    let got = wait_for(&received, 6 * 10, 60).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_now = received.lock().unwrap().clone();
    assert_eq!(got_now.len(), got.len(), "more arrived: duplicates");
    let expected: Vec<(u64, u64)> = (0..10).map(|i| (1, i)).collect();
    for run in &runs {
        assert_eq!(positions(&got_now, run), expected, "run {run}");
    }
}

async fn a_lease_left_by_a_dead_process_only_delays_its_run(api: Api) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = serve(listener, 0);
    let id = api
        .claimed_run(json!({"image": "x", "event_delivery": {"topic": hook}}))
        .await;
    // A process that took the run's lease for 3 s and died.
    let now = chrono::Utc::now().timestamp_micros();
    let store = api.service.store.clone();
    let taken = store
        .lease_delivery(&id, "dead", now, now + 3_000_000)
        .await
        .unwrap();
    assert!(matches!(taken, DeliveryLease::Taken(_)), "{taken:?}");
    api.event_ok(
        &id,
        json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w1"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        received.lock().unwrap().is_empty(),
        "delivered under another process's lease"
    );
    let got = wait_for(&received, 1, 15).await;
    assert_eq!(positions(&got, &id), vec![(1, 0)]);
    // The dead process's lease is gone: it can save nothing.
    let progress = gyoza_host::store::DeliveryProgress::default();
    assert!(
        !store
            .save_delivery(&id, "dead", &progress, i64::MAX)
            .await
            .unwrap()
    );
}

/// A run whose receiver is down and which keeps getting events: its own writes never make
/// the failing event be tried before its backoff is over (on MongoDB a write that read the
/// run before a retry was scheduled puts the older due time back; each early try doubled the
/// backoff, and a busy run's receiver, down for seconds, waited the full minute).
async fn a_busy_run_is_retried_on_its_backoff_schedule(api: Api) {
    let hook = format!("http://127.0.0.1:{}/hook", closed_port());
    let id = api
        .claimed_run(json!({"image": "x", "event_delivery": {"topic": hook}}))
        .await;
    api.event_ok(
        &id,
        json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w1"}}),
    )
    .await;
    wait_for_count(&api, RETRIED).await;
    let start = tokio::time::Instant::now();
    let mut written = 0;
    while start.elapsed() < Duration::from_secs(3) {
        api.event_ok(
            &id,
            json!({"type": "INFO", "msg": format!("info {written}")}),
        )
        .await;
        written += 1;
    }
    // Tries 0.5, 1 and 2 s apart after the first: at most 4 within the 3 s of writes (one
    // more for a try under way when they ended).
    let retried = count(&api, RETRIED).await;
    assert!(
        retried <= 5,
        "{retried} tries in 3 s while {written} events were written"
    );
}
