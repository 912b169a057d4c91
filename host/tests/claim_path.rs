//! The claim path's shortcuts: a claim that cannot get anything is answered without reading
//! the pending window, and `wait_ms` is checked like `max`. On both stores.

pub mod common;

use axum::http::StatusCode;
use common::{Api, detail, skip_mongo};
use serde_json::json;

/// `gyoza_claims_answered_early_total` now.
async fn answered_early(api: &Api) -> u64 {
    let metrics = api.text("GET", "/metrics", None).await.1;
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("gyoza_claims_answered_early_total ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no early-answer counter in {metrics}"))
}

async fn a_full_worker_is_answered_early_but_never_wrongly(api: &Api) {
    // Nothing pending: answered early.
    api.heartbeat("full", 1, 1).await;
    assert!(api.claim("full", 5).await.is_empty());
    assert_eq!(answered_early(api).await, 1);

    // Runs that need more RAM than the worker has: the first claim goes the full way (the
    // strategy gives the runs their reasons), the next ones are answered early; nothing is
    // assigned.
    let mut heavy = Vec::new();
    for _ in 0..3 {
        heavy.push(
            api.create_run(json!({"image": "x", "constraints": {"cpu": 1, "ram_mb": 512}}))
                .await,
        );
    }
    assert!(api.claim("full", 5).await.is_empty());
    assert_eq!(answered_early(api).await, 1);
    let run = api
        .ok(
            "GET",
            &format!("/runs/{}", heavy[0]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(
        run["scheduling"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("RAM")),
        "{run}"
    );
    assert!(api.claim("full", 5).await.is_empty());
    assert_eq!(answered_early(api).await, 2);

    // A run with no figures needs nothing: the least a pending run needs is zero now, so the
    // same worker is not refused, and gets it.
    let light = api.create_run(json!({"image": "x"})).await;
    assert_eq!(api.claim("full", 5).await, [light["id"].as_str().unwrap()]);
    assert_eq!(answered_early(api).await, 2);

    // A run that needs CPU and RAM but no more than a roomy worker has: not answered early.
    api.heartbeat("roomy", 4, 4096).await;
    assert_eq!(api.claim("roomy", 5).await.len(), 3);
    assert_eq!(answered_early(api).await, 2);
}

#[tokio::test]
async fn a_full_worker_is_answered_early_but_never_wrongly_on_sqlite() {
    a_full_worker_is_answered_early_but_never_wrongly(&Api::new().await).await;
}

#[tokio::test]
async fn a_full_worker_is_answered_early_but_never_wrongly_on_mongodb() {
    if skip_mongo() {
        return;
    }
    a_full_worker_is_answered_early_but_never_wrongly(&Api::mongodb().await).await;
}

#[tokio::test]
async fn a_worker_holding_a_preemptible_run_is_not_answered_early() {
    let api = Api::new().await;
    api.heartbeat("w1", 1, 1024).await;
    let held = api
        .create_run(json!({"image": "x", "constraints": {"cpu": 1}, "preemptible": true}))
        .await;
    assert_eq!(api.claim("w1", 1).await, [held["id"].as_str().unwrap()]);
    api.create_run(json!({"image": "x", "constraints": {"cpu": 1}}))
        .await;
    // Full, but a strategy may preempt the held run for the pending one: the strategy is
    // asked (this one does not preempt, so nothing is claimed).
    let before = answered_early(&api).await;
    assert!(api.claim("w1", 1).await.is_empty());
    assert_eq!(answered_early(&api).await, before);
}

#[tokio::test]
async fn wait_ms_is_checked_like_max() {
    let api = Api::new().await;
    api.heartbeat("w1", 1, 1024).await;
    for (value, expected) in [
        ("-1", "between 0 and 60000, got -1"),
        ("60001", "between 0 and 60000, got 60001"),
        ("soon", "must be an integer, got 'soon'"),
        ("99999999999999999999", "must be an integer"),
    ] {
        let (status, body) = api
            .call("POST", &format!("/workers/w1/claim?wait_ms={value}"), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{value}: {body}");
        assert!(detail(&body).contains("'wait_ms'"), "{body}");
        assert!(detail(&body).contains(expected), "{body}");
    }
    // 0 is a plain claim; an unknown worker's waiting claim answers at once, empty.
    let answer = api.ok("POST", "/workers/w1/claim?wait_ms=0", None).await;
    assert_eq!(answer["ops"], json!([]));
    let answer = api
        .ok("POST", "/workers/nobody/claim?wait_ms=60000", None)
        .await;
    assert_eq!(answer["ops"], json!([]));
}

#[tokio::test]
async fn a_batch_creates_its_valid_runs_in_order_and_answers_each_on_sqlite() {
    a_batch_creates_its_valid_runs_in_order_and_answers_each(&Api::new().await).await;
}

#[tokio::test]
async fn a_batch_creates_its_valid_runs_in_order_and_answers_each_on_mongodb() {
    if skip_mongo() {
        return;
    }
    a_batch_creates_its_valid_runs_in_order_and_answers_each(&Api::mongodb().await).await;
}

async fn a_batch_creates_its_valid_runs_in_order_and_answers_each(api: &Api) {
    let (status, answer) = api
        .call(
            "POST",
            "/runs/batch",
            Some(json!({"runs": [
                {"image": "a", "priority": 3},
                {"image": "b", "priority": -1},
                {"priority": 3},
                {"image": "c", "priority": 3, "constraints": {"cpu": 99999}},
                {"image": "d", "priority": 3},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["created"].as_u64(), answer["failed"].as_u64()),
        (Some(2), Some(3))
    );
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 400, 422, 400, 201]);
    assert!(
        results[2]["detail"].as_str().unwrap().contains("image"),
        "{answer}"
    );
    assert!(
        results[3]["detail"]
            .as_str()
            .unwrap()
            .contains("constraints.cpu"),
        "{answer}"
    );
    // Stored, and in the batch's order: the first is claimed first.
    let a = results[0]["run"]["id"].as_str().unwrap();
    let d = results[4]["run"]["id"].as_str().unwrap();
    api.heartbeat("w1", 4, 4096).await;
    assert_eq!(api.claim("w1", 1).await, [a]);
    assert_eq!(api.claim("w1", 1).await, [d]);
    let listed = api.ok("GET", "/runs", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);

    // Over the limit: refused whole, nothing stored.
    let runs: Vec<_> = (0..=1_000).map(|_| json!({"image": "x"})).collect();
    let (status, body) = api
        .call("POST", "/runs/batch", Some(json!({"runs": runs})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(detail(&body), "A batch holds at most 1000 runs, got 1001");
    let (status, body) = api
        .call("POST", "/runs/batch", Some(json!({"runs": {"image": "x"}})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let listed = api.ok("GET", "/runs", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_waiting_claim_sees_a_run_submitted_to_another_replica_at_its_recheck() {
    let host = common::start_strategies(gyoza_host::strategy::StrategySettings {
        cache_dir: Some(common::strategy_cache()),
        ..gyoza_host::strategy::StrategySettings::builtin("priority")
    })
    .await;
    let a = Api::configured(host, 10 * 1024 * 1024, |service| {
        service.claim_recheck = std::time::Duration::from_millis(200);
    })
    .await;
    // Same database, another process's service: its runs wake nothing in `a`.
    let b = a.replica().await;
    a.heartbeat("w1", 4, 4096).await;
    let waiting = {
        let app = a.app.clone();
        tokio::spawn(async move {
            let request = Api::request(
                "POST",
                "/workers/w1/claim?wait_ms=60000",
                Some(common::KEY),
                None,
                &[],
            );
            let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the claim did not wait");
    let run = b.create_run(json!({"image": "x"})).await;
    // Within the recheck (200 ms), not the minute of the wait.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("the waiting claim never saw the other replica's run")
        .unwrap();
    assert_eq!(answer["ops"][0]["id"], run["id"], "{answer}");
}
