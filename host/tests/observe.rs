//! Watching runs: the live event stream (SSE), logs, event delivery to a real HTTP receiver,
//! and Prometheus metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use gyoza_host::api::{AppState, app};
use gyoza_host::clock::SystemClock;
use gyoza_host::store::SqliteStore;
use gyoza_host::strategy::PriorityBackfill;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "observe-key";

struct Api {
    app: Router,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("gyoza.db"))
            .await
            .unwrap();
        let strategies = PriorityBackfill::start().unwrap();
        let mut state = AppState::new(
            Arc::new(store),
            Arc::new(strategies.clone()),
            Arc::new(SystemClock),
            KEY,
        );
        state.strategies = Some(strategies); // TEMP (service)
        Self {
            app: app(state),
            _dir: dir,
        }
    }

    fn request(
        method: &str,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Request<Body> {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-api-key", KEY);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap()
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, String) {
        let response = self
            .app
            .clone()
            .oneshot(Self::request(method, uri, body, &[]))
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn json(&self, method: &str, uri: &str, body: Option<Value>) -> Value {
        let (status, text) = self.call(method, uri, body).await;
        assert!(status.is_success(), "{method} {uri}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// Sends a request whose body streams, and collects that body in the background.
    fn collect_stream(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<(StatusCode, String)> {
        let request = Self::request("GET", uri, None, headers);
        let app = self.app.clone();
        tokio::spawn(async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    async fn claimed_run(&self, body: Value) -> String {
        self.json(
            "POST",
            "/workers/heartbeat",
            Some(json!({"worker_id": "w1", "resources": {"cpu_cores": 8, "ram_mb": 8192}})),
        )
        .await;
        let run = self.json("POST", "/runs", Some(body)).await;
        let id = run["id"].as_str().unwrap().to_owned();
        let claim = self.json("POST", "/workers/w1/claim", None).await;
        assert_eq!(claim["ops"][0]["id"], id.as_str());
        id
    }

    async fn event(&self, id: &str, body: Value) {
        self.json("POST", &format!("/runs/{id}/events"), Some(body))
            .await;
    }
}

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
    api.event(
        &id,
        json!({"type": "STARTED", "msg": "up", "payload": {"worker_id": "w1"}}),
    )
    .await;
    api.event(&id, json!({"type": "PROGRESS", "msg": 50})).await;
    api.event(&id, json!({"type": "FAILED", "msg": "boom"}))
        .await;
    api.json("POST", "/workers/w1/claim", None).await;
    api.event(
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

    let (status, _) = api.call("GET", "/runs/nope/events/stream", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_kept_per_attempt_and_can_be_followed() {
    let api = Api::new().await;
    let id = api.claimed_run(json!({"image": "x"})).await;
    let follow = api.collect_stream(&format!("/runs/{id}/logs?follow=true"), &[]);
    for line in ["first line\n", "second line\n"] {
        let (status, _) = api
            .call(
                "POST",
                &format!("/runs/{id}/logs"),
                Some(json!({"text": line})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, text) = api.call("GET", &format!("/runs/{id}/logs"), None).await;
    assert_eq!(text, "first line\nsecond line\n");
    api.event(&id, json!({"type": "COMPLETED", "msg": "done"}))
        .await;
    let (status, followed) = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("following ends with the run")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(followed, "first line\nsecond line\n");

    let (_, text) = api
        .call("GET", &format!("/runs/{id}/logs?attempt=1"), None)
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
        let (status, text) = api.call(method, &uri, body).await;
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

    let api = Api::new().await;
    let id = api
        .claimed_run(
            json!({"image": "x", "event_delivery": {"topic": hook, "attributes": {"team": "img"}}}),
        )
        .await;
    api.event(
        &id,
        json!({"type": "STARTED", "msg": "up", "payload": {"worker_id": "w1"}}),
    )
    .await;
    api.event(&id, json!({"type": "PROGRESS", "msg": 30})).await;
    api.event(
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
    let mut got = received.lock().unwrap().clone();
    got.sort_by_key(|m| m["index"].as_u64());
    let types: Vec<&str> = got
        .iter()
        .map(|m| m["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["STARTED", "PROGRESS", "COMPLETED"]);
    assert_eq!(got[0]["run_id"], id.as_str());
    assert_eq!(got[0]["attempt"], 1);
    assert_eq!(got[0]["attributes"], json!({"team": "img"}));
    assert_eq!(
        *refusals.lock().unwrap(),
        0,
        "the refused delivery was retried"
    );

    let metrics = api.call("GET", "/metrics", None).await.1;
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
    api.json("POST", "/runs", Some(json!({"image": "y"}))).await;
    api.call("GET", &format!("/runs/{id}"), None).await;
    api.call("GET", "/runs/missing", None).await;

    let (status, text) = api.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "gyoza_runs{state=\"PENDING\"} 1",
        "gyoza_runs{state=\"ASSIGNED\"} 1",
        "gyoza_runs{state=\"COMPLETED\"} 0",
        "gyoza_run_creations_total 2",
        "gyoza_claims_total 1",
        "gyoza_placements_total 1",
        "gyoza_claim_duration_seconds_count 1",
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
