//! Run timeouts and queue timeouts, as the server enforces them (`service::timeout`), on
//! both stores: a RUNNING attempt past `constraints.timeout_s` plus the grace (60 s) is
//! failed by the server although its worker — alive but not enforcing, or silent but not yet
//! reaped — did not stop it, and retried per its policy; a PENDING run past
//! `constraints.queue_timeout_s` FAILS for good; runs within their limits are not touched;
//! two replicas checking at once change a run once; limits beyond their bound are a 400.

pub mod common;

use common::{Api, detail};
use serde_json::{Value, json};

const SERVER_TIMEOUT: &str = "timed out after 10 s (enforced by the server)";

on_both_stores! {
    a_running_attempt_past_its_timeout_and_grace_is_failed_by_the_server_and_retried
        => running_past_timeout;
    a_silent_workers_run_past_its_timeout_is_failed_before_it_is_reaped
        => silent_worker_past_timeout;
    two_replicas_checking_at_once_time_a_run_out_once => replicas_time_out_once;
    a_pending_run_past_its_queue_timeout_fails_for_good_and_a_fresh_one_waits
        => queue_timeout;
    a_requeued_attempts_queue_timeout_counts_from_its_requeue
        => requeued_queue_timeout;
}

async fn run(api: &Api, id: &str) -> Value {
    api.ok("GET", &format!("/runs/{id}"), None).await
}

/// A heartbeat of `worker` (8 cores, 8 GB) reporting `running_ops`; the answer.
async fn beat(api: &Api, worker: &str, running_ops: Value) -> Value {
    api.ok(
        "POST",
        "/workers/heartbeat",
        Some(json!({
            "worker_id": worker,
            "resources": {"cpu_cores": 8, "ram_mb": 8192},
            "running_ops": running_ops
        })),
    )
    .await
}

/// A run of `constraints` with two attempts, claimed by and STARTED on `worker`.
async fn started(api: &Api, worker: &str, constraints: Value) -> String {
    beat(api, worker, json!([])).await;
    let created = api
        .create_run(json!({
            "image": "x", "constraints": constraints,
            "retry_policy": {"max_attempts": 2}
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(api.claim(worker, 1).await, std::slice::from_ref(&id));
    api.event_ok(
        &id,
        json!({"type": "STARTED", "msg": "", "payload": {"worker_id": worker}, "attempt": 1}),
    )
    .await;
    id
}

async fn running_past_timeout(api: Api) {
    let limited = started(&api, "w1", json!({"cpu": 1, "timeout_s": 10})).await;
    let roomy = started(&api, "w1", json!({"cpu": 1, "timeout_s": 1000})).await;
    let unlimited = started(&api, "w1", json!({"cpu": 1})).await;
    let zero = started(&api, "w1", json!({"cpu": 1, "timeout_s": 0})).await;
    let all = json!([
        {"id": limited, "attempt": 1}, {"id": roomy, "attempt": 1},
        {"id": unlimited, "attempt": 1}, {"id": zero, "attempt": 1}
    ]);

    // Past the limit but within the grace: the worker has time to stop it and report.
    api.advance(70);
    beat(&api, "w1", all.clone()).await;
    assert_eq!(api.service.enforce_timeouts().await.unwrap(), 0);
    assert_eq!(run(&api, &limited).await["state"], "RUNNING");

    // Past the limit and the grace, its live worker still reporting it: the server fails it.
    api.advance(1);
    beat(&api, "w1", all.clone()).await;
    assert_eq!(api.service.enforce_timeouts().await.unwrap(), 1);
    let after = run(&api, &limited).await;
    assert_eq!(after["state"], "PENDING", "retried per its policy: {after}");
    assert_eq!(after["current_attempt"], 2);
    let first = &after["attempts"][0];
    assert_eq!(first["state"], "FAILED");
    assert_eq!(first["execution_summary"]["error_message"], SERVER_TIMEOUT);
    assert_eq!(first["worker_lost"], false, "a timeout is the op's failure");
    let events = &first["events"];
    let failed = &events[events.as_array().unwrap().len() - 1];
    assert_eq!(failed["type"], "FAILED");
    assert_eq!(failed["payload"]["timed_out"], true);
    for other in [&roomy, &unlimited, &zero] {
        let untouched = run(&api, other).await;
        assert_eq!(untouched["state"], "RUNNING", "{untouched}");
        assert_eq!(untouched["current_attempt"], 1);
    }

    // The worker is told to stop the timed-out attempt, and its late report is fenced.
    let answer = beat(&api, "w1", all).await;
    assert_eq!(
        answer["stop"],
        json!([{"id": limited, "attempt": 1}]),
        "{answer}"
    );
    let (status, late) = api
        .event(
            &limited,
            json!({"type": "COMPLETED", "msg": "late", "attempt": 1}),
        )
        .await;
    assert_eq!(status, 409, "{late}");
    assert_eq!(
        api.service.enforce_timeouts().await.unwrap(),
        0,
        "once only"
    );

    // The second attempt times out too: no attempts left, the run ends FAILED.
    assert_eq!(api.claim("w1", 1).await, std::slice::from_ref(&limited));
    api.event_ok(
        &limited,
        json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w1"}, "attempt": 2}),
    )
    .await;
    api.advance(71);
    assert_eq!(api.service.enforce_timeouts().await.unwrap(), 1);
    let ended = run(&api, &limited).await;
    assert_eq!(ended["state"], "FAILED", "{ended}");
    assert_eq!(ended["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(ended["execution_summary"]["error_message"], SERVER_TIMEOUT);
    // 141 s in: the roomy run (1000 s) is still within its limit.
    assert_eq!(run(&api, &roomy).await["state"], "RUNNING");
}

async fn silent_worker_past_timeout(api: Api) {
    let id = started(&api, "w1", json!({"timeout_s": 10})).await;
    // Silent since the start, not yet reaped (the worker timeout is 60 s; no reap ran).
    api.advance(71);
    assert_eq!(api.service.enforce_timeouts().await.unwrap(), 1);
    let after = run(&api, &id).await;
    assert_eq!(after["state"], "PENDING");
    assert_eq!(
        after["attempts"][0]["execution_summary"]["error_message"],
        SERVER_TIMEOUT
    );
    // The reaper then finds nothing of that worker's to requeue.
    assert_eq!(api.service.reap().await.unwrap(), 0);
    assert_eq!(run(&api, &id).await["current_attempt"], 2);
}

async fn replicas_time_out_once(api: Api) {
    let replica = api.replica().await;
    let id = started(&api, "w1", json!({"timeout_s": 10})).await;
    let queued = api
        .create_run(json!({"image": "x", "constraints": {"queue_timeout_s": 5, "cpu": 64}}))
        .await;
    api.advance(71);
    let (a, b) = tokio::join!(
        api.service.enforce_timeouts(),
        replica.service.enforce_timeouts()
    );
    assert_eq!(a.unwrap() + b.unwrap(), 2, "each run changed once");
    let after = run(&api, &id).await;
    assert_eq!(after["attempts"].as_array().unwrap().len(), 2, "{after}");
    let queued = run(&api, queued["id"].as_str().unwrap()).await;
    assert_eq!(queued["state"], "FAILED");
    let events = queued["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "one FAILED event: {queued}");
}

async fn queue_timeout(api: Api) {
    // Needs more than any worker has: nobody claims it.
    let stale = api
        .create_run(json!({"image": "x", "constraints": {"queue_timeout_s": 30, "cpu": 64}}))
        .await;
    let stale = stale["id"].as_str().unwrap().to_owned();
    api.advance(20);
    let fresh = api
        .create_run(json!({"image": "x", "constraints": {"queue_timeout_s": 30}}))
        .await;
    let fresh = fresh["id"].as_str().unwrap().to_owned();
    let unlimited = api.create_run(json!({"image": "x"})).await;

    api.advance(10);
    assert_eq!(
        api.service.enforce_timeouts().await.unwrap(),
        0,
        "30 s is not past 30 s"
    );
    api.advance(1);
    assert_eq!(api.service.enforce_timeouts().await.unwrap(), 1);
    let failed = run(&api, &stale).await;
    assert_eq!(failed["state"], "FAILED", "{failed}");
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 1, "no retry");
    assert_eq!(
        failed["execution_summary"]["error_message"],
        "not started within 30 s"
    );
    let timeline = api.ok("GET", &format!("/runs/{stale}/events"), None).await;
    let events = timeline["events"].as_array().unwrap();
    let last = &events[events.len() - 1];
    assert_eq!(last["type"], "FAILED", "{timeline}");
    assert_eq!(last["msg"], "not started within 30 s");
    assert_eq!(run(&api, &fresh).await["state"], "PENDING");
    assert_eq!(
        run(&api, unlimited["id"].as_str().unwrap()).await["state"],
        "PENDING"
    );

    // The fresh run is claimed in time and is no longer subject to its queue timeout.
    beat(&api, "w1", json!([])).await;
    let claimed = api.claim("w1", 5).await;
    assert!(claimed.contains(&fresh), "{claimed:?}");
    assert!(!claimed.contains(&stale), "a FAILED run is not claimed");
    api.advance(3_600);
    api.heartbeat("w1", 8, 8192).await;
    api.service.enforce_timeouts().await.unwrap();
    assert_eq!(run(&api, &fresh).await["state"], "ASSIGNED");
}

/// The queue timeout of a retried attempt counts from the retry, on a run read back from the
/// store (whose RETRIED event is stored apart, not loaded with the run).
async fn requeued_queue_timeout(api: Api) {
    let id = started(&api, "w1", json!({"queue_timeout_s": 60})).await;
    // Ran for 100 s, past the queue timeout counted from creation, then failed: retried.
    api.advance(100);
    beat(&api, "w1", json!([{"id": id, "attempt": 1}])).await;
    api.event_ok(
        &id,
        json!({"type": "FAILED", "msg": "boom", "payload": {"error_message": "boom"}, "attempt": 1}),
    )
    .await;
    let retried = run(&api, &id).await;
    assert_eq!(retried["state"], "PENDING", "{retried}");
    assert_eq!(retried["current_attempt"], 2);
    // Another change, so that no store keeps the RETRIED event with the run (MongoDB keeps
    // the last change's events inline).
    api.ok(
        "PATCH",
        &format!("/runs/{id}"),
        Some(json!({"priority": 7})),
    )
    .await;
    api.advance(30);
    assert_eq!(
        api.service.enforce_timeouts().await.unwrap(),
        0,
        "30 s after its requeue, 130 s after its creation: within its 60 s"
    );
    assert_eq!(run(&api, &id).await["state"], "PENDING");
    api.advance(31);
    assert_eq!(api.service.enforce_timeouts().await.unwrap(), 1);
    let failed = run(&api, &id).await;
    assert_eq!(failed["state"], "FAILED", "{failed}");
    assert_eq!(
        failed["execution_summary"]["error_message"],
        "not started within 60 s"
    );
}

#[tokio::test]
async fn a_run_inherits_its_definitions_timeouts_and_may_override_them() {
    let api = Api::new().await;
    api.ok(
        "POST",
        "/definitions",
        Some(json!({
            "id": "slow", "version": "1.0.0", "image": "x",
            "constraints": {"cpu": 2, "timeout_s": 60, "queue_timeout_s": 600}
        })),
    )
    .await;
    let inherited = api
        .ok("POST", "/definitions/slow/runs", Some(json!({})))
        .await;
    assert_eq!(
        inherited["constraints"],
        json!({"cpu": 2, "ram_mb": null, "vram_mb": null, "timeout_s": 60, "queue_timeout_s": 600})
    );
    let overridden = api
        .ok(
            "POST",
            "/definitions/slow/runs",
            Some(json!({"constraints": {"timeout_s": 5, "queue_timeout_s": 0}})),
        )
        .await;
    assert_eq!(
        overridden["constraints"],
        json!({"cpu": 2, "ram_mb": null, "vram_mb": null, "timeout_s": 5, "queue_timeout_s": 0})
    );
    let plain = api.create_run(json!({"image": "x"})).await;
    assert_eq!(
        plain["constraints"],
        json!({"cpu": null, "ram_mb": null, "vram_mb": null}),
        "a run without timeouts answers as before"
    );
}

#[tokio::test]
async fn timeouts_beyond_their_limit_are_refused_naming_the_field() {
    let api = Api::new().await;
    let max = u64::MAX;
    let (status, answer) = api
        .call(
            "POST",
            "/runs",
            Some(json!({"image": "x", "constraints": {"timeout_s": max, "queue_timeout_s": max}})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let text = detail(&answer);
    assert!(
        text.contains(&format!(
            "constraints.timeout_s must be at most 31622400, got {max}"
        )),
        "{text}"
    );
    assert!(
        text.contains("constraints.queue_timeout_s must be at most 31622400"),
        "{text}"
    );
    let (status, answer) = api
        .call(
            "POST",
            "/definitions",
            Some(
                json!({"id": "d", "version": "1", "image": "x", "constraints": {"timeout_s": max}}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        detail(&answer).contains("constraints.timeout_s"),
        "{answer}"
    );
    api.ok(
        "POST",
        "/definitions",
        Some(json!({"id": "d", "version": "1", "image": "x", "constraints": {"timeout_s": 31622400}})),
    )
    .await;
    let (status, answer) = api
        .call(
            "POST",
            "/definitions/d/runs",
            Some(json!({"constraints": {"queue_timeout_s": 31622401}})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        detail(&answer).contains("constraints.queue_timeout_s must be at most 31622400"),
        "{answer}"
    );
    let (status, answer) = api
        .call(
            "POST",
            "/runs",
            Some(json!({"image": "x", "constraints": {"timeout_s": -1}})),
        )
        .await;
    assert!(
        status == 400 || status == 422,
        "a negative timeout is refused: {status} {answer}"
    );
    assert!(detail(&answer).contains("timeout_s"), "{answer}");
    let listed = api.ok("GET", "/runs", None).await;
    assert_eq!(listed["data"], json!([]), "nothing was stored");
}
