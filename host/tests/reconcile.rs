//! Every heartbeat is reconciled against the runs the server says its worker holds: a held
//! run the worker no longer reports is requeued once the grace has passed, and a reported run
//! the server does not give to that worker is answered in `stop`.

pub mod common;

use common::Api;
use serde_json::{Value, json};

/// What the requeue of an unreported run says.
const NOT_REPORTED: &str =
    "worker w1 no longer reports this run (it restarted or lost the claim's answer)";

/// A heartbeat of `worker` (4 cores, 4 GB) reporting `running_ops`; the answer.
async fn beat(api: &Api, worker: &str, running_ops: Value) -> Value {
    api.ok(
        "POST",
        "/workers/heartbeat",
        Some(json!({
            "worker_id": worker,
            "resources": {"cpu_cores": 4, "ram_mb": 4096},
            "running_ops": running_ops
        })),
    )
    .await
}

async fn run(api: &Api, id: &str) -> Value {
    api.ok("GET", &format!("/runs/{id}"), None).await
}

#[tokio::test]
async fn a_held_run_its_worker_no_longer_reports_is_requeued_after_the_grace() {
    let api = Api::new().await;
    let id = api.claimed_run(json!({"image": "x"})).await;

    api.advance(20);
    let answer = beat(&api, "w1", json!([])).await;
    assert!(answer.get("stop").is_none(), "{answer}");
    let within = run(&api, &id).await;
    assert_eq!(within["state"], "ASSIGNED", "within the grace");
    assert_eq!(within["current_attempt"], 1);

    api.advance(11);
    beat(&api, "w1", json!([])).await;
    let after = run(&api, &id).await;
    assert_eq!(after["state"], "PENDING", "requeued past the grace");
    assert_eq!(after["current_attempt"], 2);
    assert_eq!(after["attempts"][0]["state"], "FAILED");
    assert_eq!(after["attempts"][0]["worker_lost"], true);
    assert_eq!(
        after["attempts"][0]["execution_summary"]["error_message"],
        NOT_REPORTED
    );

    // The next heartbeat changes nothing more.
    beat(&api, "w1", json!([])).await;
    assert_eq!(run(&api, &id).await["current_attempt"], 2);
}

#[tokio::test]
async fn a_heartbeat_that_does_not_list_its_runs_reconciles_nothing() {
    let api = Api::new().await;
    let id = api.claimed_run(json!({"image": "x"})).await;
    api.advance(45);
    api.heartbeat("w1", 8, 8192).await;
    assert_eq!(run(&api, &id).await["state"], "ASSIGNED");
}

#[tokio::test]
async fn a_heartbeat_of_ids_and_attempts_only_is_accepted_and_keeps_the_run_held() {
    let api = Api::new().await;
    let id = api.claimed_run(json!({"image": "x", "inputs": {}})).await;
    for _ in 0..3 {
        api.advance(20);
        let answer = beat(&api, "w1", json!([{"id": id, "attempt": 1}])).await;
        assert!(answer.get("stop").is_none(), "{answer}");
        assert_eq!(answer["running_ops"][0]["id"], id.as_str());
    }
    let held = run(&api, &id).await;
    assert_eq!(held["state"], "ASSIGNED", "reported, so still held");
    assert_eq!(held["current_attempt"], 1);
    // A seed worker's full report is still accepted.
    let answer = beat(
        &api,
        "w1",
        json!([{"id": id, "image": "x", "inputs": {}, "constraints": {}, "attempt": 1}]),
    )
    .await;
    assert!(answer.get("stop").is_none(), "{answer}");
}

#[tokio::test]
async fn a_reported_run_the_server_does_not_give_to_that_worker_is_answered_with_stop() {
    let api = Api::new().await;
    let held = api.claimed_run(json!({"image": "x"})).await;

    // Held by w1: w2 reporting it is told to stop it, and so is a run that does not exist.
    let answer = beat(
        &api,
        "w2",
        json!([{"id": held, "attempt": 1}, {"id": "no-such-run", "attempt": 3}]),
    )
    .await;
    assert_eq!(
        answer["stop"],
        json!([{"id": held, "attempt": 1}, {"id": "no-such-run", "attempt": 3}])
    );
    assert_eq!(run(&api, &held).await["state"], "ASSIGNED", "w1 keeps it");

    // w1 reporting an attempt that is not the current one is told to stop that attempt.
    let answer = beat(
        &api,
        "w1",
        json!([{"id": held, "attempt": 1}, {"id": held, "attempt": 0}]),
    )
    .await;
    assert_eq!(answer["stop"], json!([{"id": held, "attempt": 0}]));

    // A finished run is stopped too.
    api.start_and_complete(&held, "w1", 1).await;
    let answer = beat(&api, "w1", json!([{"id": held, "attempt": 1}])).await;
    assert_eq!(answer["stop"], json!([{"id": held, "attempt": 1}]));
}

#[tokio::test]
async fn a_worker_that_lost_a_run_to_a_requeue_is_told_to_stop_the_old_attempt() {
    let api = Api::new().await;
    let id = api.claimed_run(json!({"image": "x"})).await;
    api.advance(31);
    // w1 restarted: it reports nothing, and the run is requeued and claimed by w2.
    beat(&api, "w1", json!([])).await;
    beat(&api, "w2", json!([])).await;
    assert_eq!(api.claim("w2", 1).await, vec![id.clone()]);
    // An old w1 process still reporting attempt 1 is told to stop it; w2 is not.
    let answer = beat(&api, "w1", json!([{"id": id, "attempt": 1}])).await;
    assert_eq!(answer["stop"], json!([{"id": id, "attempt": 1}]));
    let answer = beat(&api, "w2", json!([{"id": id, "attempt": 2}])).await;
    assert!(answer.get("stop").is_none(), "{answer}");
}

#[tokio::test]
async fn unreported_runs_share_the_requeue_cap_of_lost_workers() {
    let api = Api::new().await;
    let id = api.running_on("w0", json!({"max_attempts": 5})).await;
    // First requeue: w0 is lost.
    api.advance(61);
    assert_eq!(api.service.reap().await.unwrap(), 1);
    // Then three workers in turn claim it and stop reporting it.
    for round in 1..=3 {
        let worker = format!("w{round}");
        beat(&api, &worker, json!([])).await;
        assert_eq!(api.claim(&worker, 1).await, vec![id.clone()], "{round}");
        api.advance(31);
        beat(&api, &worker, json!([])).await;
        let after = run(&api, &id).await;
        if round < 3 {
            assert_eq!(after["state"], "PENDING", "round {round}");
        } else {
            assert_eq!(after["state"], "FAILED", "the fourth requeue ends the run");
            assert_eq!(after["attempts"].as_array().unwrap().len(), 4);
            assert_eq!(
                after["attempts"][3]["execution_summary"]["error_message"],
                "worker w3 no longer reports this run (it restarted or lost the claim's answer)"
            );
        }
    }
}

#[tokio::test]
async fn the_api_document_says_a_reported_op_needs_only_its_id() {
    let api = Api::new().await;
    let doc = api.ok("GET", "/openapi.json", None).await;
    let reported = &doc["components"]["schemas"]["ReportedOp"];
    assert_eq!(reported["required"], json!(["id"]), "{reported}");
    let view = doc["components"]["schemas"]["WorkerView"].to_string();
    assert!(
        view.contains("\"stop\""),
        "the heartbeat answer's stop list is described: {view}"
    );
}
