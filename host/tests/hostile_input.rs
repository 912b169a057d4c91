//! Requests an adversary would send: numbers at their type's limits, absurd strings, and the
//! operator's PATCH used to put a run where only a claim may put it. Each gets a 400 that
//! names what was wrong, nothing is stored, and the server keeps answering.

pub mod common;

use axum::http::StatusCode;
use common::{Api, detail};
use serde_json::json;

async fn run_count(api: &Api) -> usize {
    api.ok("GET", "/runs?limit=100", None).await["data"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn numbers_beyond_their_limits_are_refused_with_the_field_and_its_limit() {
    let api = Api::new().await;
    let cases = [
        (
            json!({"image": "x", "retry_policy": {"max_attempts": 2, "backoff_ms": 9e15 as u64}}),
            "retry_policy.backoff_ms must be at most 2592000000",
        ),
        (
            json!({"image": "x", "constraints": {"ram_mb": (1u64 << 63) + 5}}),
            "constraints.ram_mb must be at most 1073741824",
        ),
        (
            json!({"image": "x", "constraints": {"cpu": u32::MAX}}),
            "constraints.cpu must be at most 4096",
        ),
        (
            json!({"image": "x", "constraints": {"vram_mb": u64::MAX}}),
            "constraints.vram_mb must be at most 16777216",
        ),
        (
            json!({"image": "x", "priority": i64::MAX}),
            "priority must be at most 2147483647",
        ),
        (
            json!({"image": "x", "retry_policy": {"max_attempts": u32::MAX}}),
            "retry_policy.max_attempts must be at most 1000",
        ),
        (
            json!({"image": "x".repeat(200_000)}),
            "image must be at most 1024 bytes, got 200000",
        ),
        (
            json!({"image": "x", "constraints": {"capabilities": ["ALL"]}}),
            "constraints.capabilities: 'ALL' is not a Linux capability",
        ),
        (
            json!({"image": "x", "constraints": {"capabilities": ["NET_ADMIN", "x".repeat(100_000)]}}),
            "is not a Linux capability",
        ),
        (
            json!({"image": "x", "constraints": {"capabilities": vec!["CHOWN"; 100_000]}}),
            "constraints.capabilities (entries) must be at most 41, got 100000",
        ),
    ];
    for (body, fragment) in cases {
        let (status, answer) = api.call("POST", "/runs", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(detail(&answer).contains(fragment), "{fragment}: {answer}");
    }
    // The same limits hold for definitions (all problems at once) and PATCHed priorities.
    let (status, answer) = api
        .call(
            "POST",
            "/definitions",
            Some(json!({"id": "d", "version": "1.0.0", "image": "x",
                        "constraints": {"cpu": 5000, "ram_mb": u64::MAX},
                        "retry_policy": {"backoff_ms": u64::MAX}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    for fragment in [
        "constraints.cpu",
        "constraints.ram_mb",
        "retry_policy.backoff_ms",
    ] {
        assert!(detail(&answer).contains(fragment), "{answer}");
    }
    assert_eq!(run_count(&api).await, 0, "nothing was stored");
    let run = api.create_run(json!({"image": "x"})).await;
    let uri = format!("/runs/{}", run["id"].as_str().unwrap());
    let (status, answer) = api
        .call("PATCH", &uri, Some(json!({"priority": i64::MAX})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        detail(&answer).contains("priority must be at most"),
        "{answer}"
    );
    assert_eq!(api.ok("GET", &uri, None).await["priority"], run["priority"]);
}

#[tokio::test]
async fn a_failed_event_with_the_longest_backoff_requeues_the_run_without_a_500() {
    let api = Api::new().await;
    let id = api
        .running_on(
            "w1",
            json!({"max_attempts": 2, "backoff_ms": gyoza_core::limits::MAX_BACKOFF_MS}),
        )
        .await;
    let (status, run) = api
        .event(
            &id,
            json!({"type": "FAILED", "msg": "boom", "payload": {"error_message": "boom"}, "attempt": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["state"], "PENDING");
    assert_eq!(run["current_attempt"], 2);
    assert!(run["available_at"].is_string(), "{run}");
    // The server still answers, claims included.
    assert!(api.claim("w1", 1).await.is_empty(), "still in its backoff");
}

#[tokio::test]
async fn heartbeats_beyond_the_limits_are_refused() {
    let api = Api::new().await;
    let (status, answer) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(
                json!({"worker_id": "w", "resources": {"cpu_cores": 8, "ram_mb": u64::MAX,
                        "gpus": [{"id": 0, "vram_mb": u64::MAX}]}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(detail(&answer).contains("resources.ram_mb"), "{answer}");
    assert!(detail(&answer).contains("vram_mb"), "{answer}");
    let workers = api.ok("GET", "/workers", None).await;
    assert_eq!(workers.as_array().map(Vec::len), Some(0), "{workers}");
}

#[tokio::test]
async fn patch_cannot_assign_or_start_a_run_and_a_requeue_fences_the_old_worker() {
    let api = Api::new().await;
    // A pending run cannot be put in ASSIGNED or RUNNING by hand: no worker would hold it.
    let pending = api.create_run(json!({"image": "x"})).await;
    let pending_uri = format!("/runs/{}", pending["id"].as_str().unwrap());
    for state in ["ASSIGNED", "RUNNING"] {
        let (status, answer) = api
            .call("PATCH", &pending_uri, Some(json!({"state": state})))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            detail(&answer).contains("only by a worker's claim"),
            "{answer}"
        );
        assert_eq!(api.ok("GET", &pending_uri, None).await["state"], "PENDING");
    }
    api.ok("PATCH", &pending_uri, Some(json!({"state": "CANCELLED"})))
        .await;

    // PATCH back to PENDING on a RUNNING run starts a new attempt.
    let id = api.running_on("w1", json!({"max_attempts": 3})).await;
    let uri = format!("/runs/{id}");
    let run = api
        .ok("PATCH", &uri, Some(json!({"state": "PENDING"})))
        .await;
    assert_eq!(run["state"], "PENDING");
    assert_eq!(run["current_attempt"], 2, "{run}");
    assert_eq!(run["attempts"][0]["state"], "CANCELLED");
    assert_eq!(run["events"][0]["payload"]["manual"], true, "{run}");
    // The first worker's report for attempt 1 is refused: one attempt, one container.
    let (status, answer) = api
        .event(
            &id,
            json!({"type": "COMPLETED", "msg": "late", "attempt": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // A second worker takes attempt 2 and completes it.
    api.heartbeat("w2", 4, 4096).await;
    assert_eq!(api.claim("w2", 1).await, vec![id.clone()]);
    let done = api.start_and_complete(&id, "w2", 2).await;
    assert_eq!(done["state"], "COMPLETED");
    assert_eq!(done["execution_summary"]["worker_id"], "w2");
    // A manual terminal change is on the timeline too.
    let other = api.running_on("w1", json!({})).await;
    let failed = api
        .ok(
            "PATCH",
            &format!("/runs/{other}"),
            Some(json!({"state": "FAILED"})),
        )
        .await;
    let last = failed["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["msg"], "manual: state set to FAILED", "{failed}");
    assert_eq!(last["payload"]["manual"], true);
}
