//! Dead workers lose their runs, exactly once, and a worker that comes back is fenced.

pub mod common;

use axum::http::StatusCode;
use chrono::Duration;
use common::{Api, KEY, detail};
use serde_json::{Value, json};

#[tokio::test]
async fn a_silent_worker_loses_its_runs_and_is_fenced_when_it_returns() {
    let api = Api::new().await;
    let id = api.running_on("w1", json!({"max_attempts": 1})).await;
    api.clock.advance(Duration::seconds(30));
    api.heartbeat("w2", 4, 4096).await;
    assert_eq!(
        api.service.reap().await.unwrap(),
        0,
        "w1 is within its timeout"
    );

    api.clock.advance(Duration::seconds(45));
    api.heartbeat("w2", 4, 4096).await;
    assert_eq!(api.service.reap().await.unwrap(), 1);
    let run = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(
        run["state"], "PENDING",
        "requeued although max_attempts is 1"
    );
    assert_eq!(run["current_attempt"], 2);
    assert_eq!(run["attempts"][0]["state"], "FAILED");
    assert_eq!(run["attempts"][0]["worker_lost"], true);
    assert_eq!(
        run["attempts"][0]["execution_summary"]["error_message"],
        "worker w1 lost (no heartbeat for 75s)"
    );
    assert_eq!(
        api.service.reap().await.unwrap(),
        0,
        "reaping twice is harmless"
    );

    // w1 comes back and reports on its old attempt: refused, nothing changes.
    let (status, body) = api
        .call(
            "POST",
            &format!("/runs/{id}/events"),
            Some(json!({"type": "COMPLETED", "msg": "late", "payload": {"outputs": {"x": 1}}, "attempt": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no longer current"),
        "{body}"
    );
    let after = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(after["state"], "PENDING");
    assert_eq!(after["events"], run["events"]);

    // Another worker takes the new attempt and finishes it.
    let claim = api.ok("POST", "/workers/w2/claim", None).await;
    assert_eq!(
        (
            claim["ops"][0]["id"].as_str(),
            claim["ops"][0]["attempt"].as_u64()
        ),
        (Some(id.as_str()), Some(2))
    );
    let done = api.start_and_complete(&id, "w2", 2).await;
    assert_eq!(done["state"], "COMPLETED");
}

#[tokio::test]
async fn requeues_after_lost_workers_are_capped() {
    let api = Api::new().await;
    let id = api.running_on("w0", json!({"max_attempts": 5})).await;
    for round in 1..=4 {
        api.clock.advance(Duration::seconds(61));
        assert_eq!(api.service.reap().await.unwrap(), 1);
        let run = api.ok("GET", &format!("/runs/{id}"), None).await;
        if round < 4 {
            assert_eq!(run["state"], "PENDING", "round {round}");
            let worker = format!("w{round}");
            api.heartbeat(&worker, 4, 4096).await;
            api.ok("POST", &format!("/workers/{worker}/claim"), None)
                .await;
        } else {
            assert_eq!(run["state"], "FAILED", "the fourth loss ends the run");
            assert_eq!(run["attempts"].as_array().unwrap().len(), 4);
        }
    }
}

#[tokio::test]
async fn two_replicas_reaping_at_once_requeue_a_run_once() {
    let first = Api::new().await;
    let second = first.replica().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(first.running_on("doomed", json!({"max_attempts": 1})).await);
    }
    first.clock.advance(Duration::seconds(120));
    let (a, b) = tokio::join!(first.service.reap(), second.service.reap());
    assert_eq!(
        a.unwrap() + b.unwrap(),
        10,
        "each run requeued by exactly one replica"
    );
    for id in &ids {
        let run = second.ok("GET", &format!("/runs/{id}"), None).await;
        assert_eq!(
            run["attempts"].as_array().unwrap().len(),
            2,
            "{id} requeued once"
        );
    }
}

#[tokio::test]
async fn events_for_the_current_attempt_pass_the_fence() {
    let api = Api::new().await;
    let id = api.running_on("w1", json!({"max_attempts": 3})).await;
    api.ok(
        "POST",
        &format!("/runs/{id}/events"),
        Some(json!({"type": "PROGRESS", "msg": 10, "attempt": 1})),
    )
    .await;
    api.ok(
        "POST",
        &format!("/runs/{id}/events"),
        Some(json!({"type": "FAILED", "msg": "x", "attempt": 1})),
    )
    .await;
    let (status, _) = api
        .call(
            "POST",
            &format!("/runs/{id}/events"),
            Some(json!({"type": "PROGRESS", "msg": 20, "attempt": 1})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "attempt 1 ended with its failure"
    );
    api.ok(
        "POST",
        &format!("/runs/{id}/events"),
        Some(json!({"type": "INFO", "msg": "hi", "attempt": 2})),
    )
    .await;
}

#[tokio::test]
async fn a_released_run_is_requeued_outside_the_retry_budget_and_completed_elsewhere() {
    let api = Api::new().await;
    // max_attempts 1 and a long backoff: a hand-back must use neither.
    let id = api
        .running_on("w1", json!({"max_attempts": 1, "backoff_ms": 600000}))
        .await;
    let run = api
        .ok(
            "POST",
            &format!("/runs/{id}/release"),
            Some(json!({"worker_id": "w1", "attempt": 1, "reason": "shutting down"})),
        )
        .await;
    assert_eq!(run["state"], "PENDING", "{run}");
    assert_eq!(run["current_attempt"], 2);
    assert_eq!(run["available_at"], Value::Null, "no retry backoff: {run}");
    let first = &run["attempts"][0];
    assert_eq!(first["state"], "FAILED");
    assert_eq!(first["worker_lost"], true);
    assert_eq!(
        first["execution_summary"]["error_message"],
        "worker w1 handed the run back: shutting down"
    );
    assert_eq!(run["events"][0]["type"], "RETRIED");
    assert_eq!(run["events"][0]["payload"]["reason"], "worker_released");

    // The old attempt is fenced: a second hand-back or a late report is refused.
    for (uri, body) in [
        (
            format!("/runs/{id}/release"),
            json!({"worker_id": "w1", "attempt": 1}),
        ),
        (
            format!("/runs/{id}/events"),
            json!({"type": "COMPLETED", "msg": "late", "attempt": 1}),
        ),
    ] {
        let (status, body) = api.call("POST", &uri, Some(body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{uri}: {body}");
        assert!(detail(&body).contains("no longer current"), "{body}");
    }

    // Another worker claims the new attempt at once and completes it.
    api.heartbeat("w2", 4, 4096).await;
    let claim = api.ok("POST", "/workers/w2/claim", None).await;
    assert_eq!(claim["ops"][0]["id"], id.as_str());
    assert_eq!(claim["ops"][0]["attempt"], 2);
    let done = api.start_and_complete(&id, "w2", 2).await;
    assert_eq!(done["state"], "COMPLETED");
}

#[tokio::test]
async fn a_release_that_does_not_fit_is_refused_with_a_detail_and_changes_nothing() {
    let api = Api::new().await;
    let (status, body) = api
        .call(
            "POST",
            "/runs/no-such-run/release",
            Some(json!({"worker_id": "w1", "attempt": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(detail(&body).contains("no-such-run"), "{body}");

    let id = api.running_on("w1", json!({"max_attempts": 2})).await;
    let before = api.ok("GET", &format!("/runs/{id}"), None).await;
    let uri = format!("/runs/{id}/release");
    let refusals = [
        // Not the worker holding the run.
        (
            json!({"worker_id": "w2", "attempt": 1}),
            StatusCode::BAD_REQUEST,
            "not held by worker 'w2'",
        ),
        // An attempt that is not (or no longer) the current one.
        (
            json!({"worker_id": "w1", "attempt": 3}),
            StatusCode::CONFLICT,
            "no longer current",
        ),
        (
            json!({"worker_id": "w1", "attempt": 1, "reason": "x".repeat(1001)}),
            StatusCode::BAD_REQUEST,
            "longer than 1000 characters",
        ),
        // Wrong shapes.
        (
            json!({"worker_id": "w1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "attempt",
        ),
        (
            json!({"worker_id": "w1", "attempt": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "attempt",
        ),
        (
            json!({"attempt": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "worker_id",
        ),
    ];
    for (body, expected, needle) in refusals {
        let (status, answer) = api.call("POST", &uri, Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(detail(&answer).contains(needle), "{body}: {answer}");
    }
    let (status, answer) = api
        .raw("POST", &uri, Some(KEY), Some("{not json".into()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(!detail(&answer).is_empty());
    let after = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(after, before, "refused releases change nothing");

    // A PENDING run (not held by anyone) and a COMPLETED one (locked) cannot be handed back.
    let pending = api.ok("POST", "/runs", Some(json!({"image": "x"}))).await;
    let pending = pending["id"].as_str().unwrap();
    let (status, body) = api
        .call(
            "POST",
            &format!("/runs/{pending}/release"),
            Some(json!({"worker_id": "w1", "attempt": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        detail(&body).contains("requires state ASSIGNED or RUNNING"),
        "{body}"
    );
    api.ok(
        "POST",
        &format!("/runs/{id}/events"),
        Some(json!({"type": "COMPLETED", "msg": "ok", "attempt": 1})),
    )
    .await;
    let (status, body) = api
        .call("POST", &uri, Some(json!({"worker_id": "w1", "attempt": 1})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("locked"), "{body}");
}

#[tokio::test]
async fn releases_share_the_requeue_cap_of_lost_workers() {
    let api = Api::new().await;
    let id = api.running_on("w0", json!({"max_attempts": 5})).await;
    api.clock.advance(Duration::seconds(61));
    assert_eq!(api.service.reap().await.unwrap(), 1);
    for attempt in 2..=4 {
        let worker = format!("w{attempt}");
        api.heartbeat(&worker, 4, 4096).await;
        api.ok("POST", &format!("/workers/{worker}/claim"), None)
            .await;
        let run = api
            .ok(
                "POST",
                &format!("/runs/{id}/release"),
                Some(json!({"worker_id": worker, "attempt": attempt})),
            )
            .await;
        let expected = if attempt < 4 { "PENDING" } else { "FAILED" };
        assert_eq!(run["state"], expected, "attempt {attempt}: {run}");
    }
}

#[tokio::test]
async fn the_release_endpoint_is_in_the_openapi_document() {
    let api = Api::new().await;
    let doc = api.ok("GET", "/openapi.json", None).await;
    let release = &doc["paths"]["/runs/{id}/release"]["post"];
    assert!(release.is_object(), "missing from /openapi.json");
    for status in ["200", "400", "404", "409", "422"] {
        assert!(
            release["responses"][status].is_object(),
            "{status} undocumented"
        );
    }
    let schema = &doc["components"]["schemas"]["ReleaseRequest"];
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(required, ["worker_id", "attempt"], "{schema}");
}

#[tokio::test]
async fn a_restarted_server_gives_its_workers_a_full_timeout_before_reaping() {
    let before = Api::new().await;
    let id = before.running_on("w1", json!({"max_attempts": 1})).await;
    // The server is down for ten minutes (the worker keeps trying, nobody hears it); then a
    // new server process starts on the same database.
    before.clock.advance(Duration::minutes(10));
    let after = before.replica().await;
    assert_eq!(
        after.service.reap().await.unwrap(),
        0,
        "the worker's silence counts from the restart, not from its last heartbeat"
    );
    after.clock.advance(Duration::seconds(59));
    assert_eq!(after.service.reap().await.unwrap(), 0);
    let run = after.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(
        (run["state"].as_str(), run["current_attempt"].as_u64()),
        (Some("RUNNING"), Some(1))
    );

    // The worker reaches the restarted server in time: it keeps its run and completes it.
    after.heartbeat("w1", 4, 4096).await;
    after.clock.advance(Duration::seconds(30));
    assert_eq!(after.service.reap().await.unwrap(), 0);
    let done = after
        .event_ok(
            &id,
            json!({"type": "COMPLETED", "msg": "", "payload": {"outputs": {}}, "attempt": 1}),
        )
        .await;
    assert_eq!(done["state"], "COMPLETED");

    // A worker that never comes back is still reaped, a worker timeout after the restart.
    let lost = after.running_on("w2", json!({"max_attempts": 1})).await;
    after.clock.advance(Duration::minutes(10));
    let again = after.replica().await;
    assert_eq!(again.service.reap().await.unwrap(), 0);
    again.clock.advance(Duration::seconds(61));
    assert_eq!(again.service.reap().await.unwrap(), 1);
    let run = again.ok("GET", &format!("/runs/{lost}"), None).await;
    assert_eq!(
        (run["state"].as_str(), run["current_attempt"].as_u64()),
        (Some("PENDING"), Some(2))
    );
}
