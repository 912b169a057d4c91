//! Watching runs: the live event stream (SSE), logs, event delivery to a real HTTP receiver,
//! and Prometheus metrics.

pub mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use common::Api;
use serde_json::{Value, json};
use tower::ServiceExt;

/// `id:` values of an SSE body, in order.
fn sse_ids(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_a_run_to_its_end_and_resumes() {
    let api = Api::new().await;
    let id = api
        .claimed_run(json!({"image": "x", "retry_policy": {"max_attempts": 2}}))
        .await;
    let stream = api.collect_stream(&format!("/runs/{id}/events/stream"), &[]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.event_ok(
        &id,
        json!({"type": "STARTED", "msg": "up", "payload": {"worker_id": "w1"}}),
    )
    .await;
    api.event_ok(&id, json!({"type": "PROGRESS", "msg": 50}))
        .await;
    api.event_ok(&id, json!({"type": "FAILED", "msg": "boom"}))
        .await;
    api.ok("POST", "/workers/w1/claim", None).await;
    api.event_ok(
        &id,
        json!({"type": "COMPLETED", "msg": "done", "payload": {"outputs": {"ok": true}}}),
    )
    .await;

    let (status, body) = tokio::time::timeout(Duration::from_secs(20), stream)
        .await
        .expect("the stream ends once the run is terminal")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sse_ids(&body),
        vec!["1.0", "1.1", "1.2", "2.0", "2.1"],
        "{body}"
    );
    assert!(body.contains("\"type\":\"PROGRESS\""), "{body}");
    assert!(body.contains("event: end"), "{body}");

    let resumed = api.collect_stream(
        &format!("/runs/{id}/events/stream"),
        &[("last-event-id", "1.2")],
    );
    let (_, body) = tokio::time::timeout(Duration::from_secs(20), resumed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sse_ids(&body), vec!["2.0", "2.1"], "{body}");

    let (status, _) = api.text("GET", "/runs/nope/events/stream", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_kept_per_attempt_and_can_be_followed() {
    let api = Api::new().await;
    let id = api.claimed_run(json!({"image": "x"})).await;
    let follow = api.collect_stream(&format!("/runs/{id}/logs?follow=true"), &[]);
    for line in ["first line\n", "second line\n"] {
        let (status, _) = api
            .text(
                "POST",
                &format!("/runs/{id}/logs"),
                Some(json!({"text": line})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, text) = api.text("GET", &format!("/runs/{id}/logs"), None).await;
    assert_eq!(text, "first line\nsecond line\n");
    api.event_ok(&id, json!({"type": "COMPLETED", "msg": "done"}))
        .await;
    let (status, followed) = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("following ends with the run")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(followed, "first line\nsecond line\n");

    let (_, text) = api
        .text("GET", &format!("/runs/{id}/logs?attempt=1"), None)
        .await;
    assert_eq!(text, "first line\nsecond line\n");
    let cases = [
        (
            "POST",
            format!("/runs/{id}/logs"),
            Some(json!({"attempt": 7, "text": "x"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/runs/nope/logs".to_owned(),
            Some(json!({"text": "x"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            format!("/runs/{id}/logs"),
            Some(json!({"lines": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "GET",
            format!("/runs/{id}/logs?attempt=3"),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("/runs/{id}/logs?follow=maybe"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "GET",
            "/runs/nope/logs".to_owned(),
            None,
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, uri, body, expected) in cases {
        let (status, text) = api.text(method, &uri, body).await;
        assert_eq!(status, expected, "{method} {uri}: {text}");
        assert!(text.contains("detail"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_to_a_webhook_with_retries() {
    // A real HTTP receiver that refuses its first delivery.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let refusals = Arc::new(Mutex::new(1));
    let receiver = {
        let (received, refusals) = (received.clone(), refusals.clone());
        Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<Value>| {
                let (received, refusals) = (received.clone(), refusals.clone());
                async move {
                    let mut left = refusals.lock().unwrap();
                    if *left > 0 {
                        *left -= 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    received.lock().unwrap().push(body);
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    // Loopback is refused unless the operator allows it.
    let api = Api::with_delivery_allow("127.0.0.1").await;
    let id = api
        .claimed_run(
            json!({"image": "x", "event_delivery": {"topic": hook, "attributes": {"team": "img"}}}),
        )
        .await;
    api.event_ok(
        &id,
        json!({"type": "STARTED", "msg": "up", "payload": {"worker_id": "w1"}}),
    )
    .await;
    api.event_ok(&id, json!({"type": "PROGRESS", "msg": 30}))
        .await;
    api.event_ok(
        &id,
        json!({"type": "COMPLETED", "msg": "done", "payload": {"outputs": {"n": 1}}}),
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if received.lock().unwrap().len() == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries: {:?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // In order, each with the attempt's state after it.
    let got = received.lock().unwrap().clone();
    let types: Vec<&str> = got
        .iter()
        .map(|m| m["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["STARTED", "PROGRESS", "COMPLETED"]);
    let states: Vec<&str> = got.iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["RUNNING", "RUNNING", "COMPLETED"]);
    assert_eq!(got[0]["run_id"], id.as_str());
    assert_eq!(got[0]["attempt"], 1);
    assert_eq!(got[0]["attributes"], json!({"team": "img"}));
    assert_eq!(
        *refusals.lock().unwrap(),
        0,
        "the refused delivery was retried"
    );

    let metrics = api.text("GET", "/metrics", None).await.1;
    assert!(
        metrics.contains("gyoza_event_deliveries_total{result=\"ok\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_runs_claims_workers_and_requests() {
    let api = Api::new().await;
    let id = api
        .claimed_run(json!({"image": "x", "constraints": {"cpu": 2}}))
        .await;
    api.ok("POST", "/runs", Some(json!({"image": "y"}))).await;
    api.text("GET", &format!("/runs/{id}"), None).await;
    api.text("GET", "/runs/missing", None).await;

    let (status, text) = api.text("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "gyoza_runs{state=\"PENDING\"} 1",
        "gyoza_runs{state=\"ASSIGNED\"} 1",
        "gyoza_runs{state=\"COMPLETED\"} 0",
        "gyoza_run_creations_total 2",
        "gyoza_claims_total 1",
        "gyoza_placements_total 1",
        "gyoza_claim_duration_seconds_count 1",
        // The claim's one round: read, turn, decided, assigned.
        "gyoza_claim_phase_seconds_count{phase=\"view\"} 1",
        "gyoza_claim_phase_seconds_count{phase=\"turn\"} 1",
        "gyoza_claim_phase_seconds_count{phase=\"decide\"} 1",
        "gyoza_claim_phase_seconds_count{phase=\"assign\"} 1",
        "gyoza_workers_active 1",
        "gyoza_worker_cpu_cores{worker=\"w1\"} 8",
        "gyoza_http_requests_total{method=\"GET\",route=\"/runs/{id}\",status=\"200\"} 1",
        "gyoza_http_requests_total{method=\"GET\",route=\"/runs/{id}\",status=\"404\"} 1",
        "gyoza_http_requests_total{method=\"POST\",route=\"/runs\",status=\"201\"} 2",
        "gyoza_strategy_active{strategy=\"priority\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // The claim above called the active (wasm) strategy.
    let calls = text
        .lines()
        .find_map(|l| l.strip_prefix("gyoza_strategy_calls{strategy=\"priority\"} "))
        .unwrap_or_else(|| panic!("no strategy call count in:\n{text}"));
    assert!(calls.parse::<f64>().unwrap() >= 1.0, "{calls}");
    assert!(
        text.contains("gyoza_strategy_latency_p99_seconds{strategy=\"priority\"}"),
        "{text}"
    );
    let (status, _) = api
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "metrics need the key");
}

#[tokio::test]
async fn junk_methods_without_a_key_do_not_grow_the_metrics() {
    let api = Api::new().await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("gyoza_http_requests_total{"))
            .count()
    };
    let junk =
        |i: usize| Api::request(&format!("JUNK{i}"), &format!("/runs/r{i}"), None, None, &[]);
    // Warm up: the same shapes once, so that only new series would count.
    api.send(junk(0)).await;
    api.text("GET", "/metrics", None).await;
    let (_, before) = api.text("GET", "/metrics", None).await;
    for i in 1..=300 {
        let (status, _) = api.send(junk(i)).await;
        assert!(status.is_client_error(), "{status}");
    }
    let (_, after) = api.text("GET", "/metrics", None).await;
    assert_eq!(series(&after), series(&before), "{after}");
    assert!(
        after.contains("method=\"other\""),
        "made-up methods are counted as other: {after}"
    );
    assert!(!after.contains("JUNK"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_aimed_inward_gets_nothing_and_redirects_are_not_followed() {
    // An inner service on loopback, and a public-looking hook that redirects to it.
    let hits: Arc<Mutex<Vec<String>>> = Arc::default();
    let inner = {
        let hits = hits.clone();
        Router::new()
            .route(
                "/inner",
                post(move || {
                    let hits = hits.clone();
                    async move {
                        hits.lock().unwrap().push("inner".into());
                        StatusCode::OK
                    }
                }),
            )
            .route(
                "/redirect",
                post(|| async {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(axum::http::header::LOCATION, "/inner")],
                    )
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://user:s3cret@{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, inner).await.unwrap() });

    // Default policy: the loopback topic is refused, nothing reaches it.
    let api = Api::new().await;
    let topic = format!("{base}/inner");
    let id = api
        .claimed_run(json!({"image": "x", "event_delivery": {"topic": topic}}))
        .await;
    api.event_ok(&id, json!({"type": "INFO", "msg": "one"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = api.text("GET", "/metrics", None).await.1;
        if metrics.contains("gyoza_event_deliveries_total{result=\"failed\"} 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hits.lock().unwrap().is_empty(),
        "an inward topic was reached"
    );

    // Allowed host, but a redirect is not followed to the inner path.
    let api = Api::with_delivery_allow("127.0.0.1").await;
    let topic = format!("{base}/redirect");
    let id = api
        .claimed_run(json!({"image": "x", "event_delivery": {"topic": topic}}))
        .await;
    api.event_ok(&id, json!({"type": "INFO", "msg": "one"}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(hits.lock().unwrap().is_empty(), "a redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_never_answers_does_not_starve_other_topics() {
    // A receiver that accepts connections and never answers: every delivery to it holds its
    // slot until the delivery timeout (10 s), then is tried again later.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_hook = format!("http://{}/hook", stuck.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for connection in stuck.incoming().flatten() {
                held.lock().unwrap().push(connection);
            }
        });
    }
    // A receiver that answers at once, on another port (another destination).
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let receiver = {
        let received = received.clone();
        Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<Value>| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().push(body);
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good_hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let api = Api::with_delivery_allow("127.0.0.1").await;
    // More runs with events for the stuck topic than there are delivery slots in all (16);
    // a run's events go one after the other, so each run wants one slot.
    for n in 0..24 {
        let stuck = api
            .claimed_run(json!({"image": "x", "event_delivery": {"topic": stuck_hook}}))
            .await;
        api.event_ok(&stuck, json!({"type": "INFO", "msg": format!("stuck {n}")}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while held.lock().unwrap().len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck receiver got no connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another run's events reach their receiver well before the stuck deliveries time out.
    let other = api
        .claimed_run(json!({"image": "x", "event_delivery": {"topic": good_hook}}))
        .await;
    for n in 0..3 {
        api.event_ok(&other, json!({"type": "INFO", "msg": format!("good {n}")}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while received.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "another topic's events waited behind a topic that never answers ({} delivered)",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        held.lock().unwrap().len() <= 4,
        "one destination held more than its share of the delivery slots: {} connections",
        held.lock().unwrap().len()
    );
}
