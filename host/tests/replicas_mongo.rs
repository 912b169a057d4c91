//! Two server replicas on one MongoDB database (the real MongoDB-wire test server, a fresh
//! database per test): what one replica writes the other sees, concurrent claims through both
//! never overcommit a worker, and both reapers reaping the same silent worker requeue each of
//! its runs once. Set `GYOZA_TEST_SKIP_MONGO=1` to leave these out when no server runs.

pub mod common;

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use chrono::Duration;
use common::{Api, skip_mongo};
use futures_util::future::join_all;
use serde_json::json;

/// Two replicas on a fresh database, or `None` when MongoDB is left out.
async fn two_replicas() -> Option<(Api, Api)> {
    if skip_mongo() {
        return None;
    }
    let first = Api::mongodb().await;
    let second = first.replica().await;
    Some((first, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_through_two_mongodb_replicas_never_overcommit_a_worker() {
    let Some((first, second)) = two_replicas().await else {
        return;
    };
    // Four 2-CPU workers, more 1-CPU runs than they can hold.
    for w in 0..4 {
        first.heartbeat(&format!("w{w}"), 2, 8192).await;
    }
    for _ in 0..12 {
        second
            .create_run(json!({"image": "x", "constraints": {"cpu": 1, "ram_mb": 256}}))
            .await;
    }
    // Each worker claims four times at once, alternately through each replica.
    let claims = join_all((0..16).map(|i| {
        let api = if i % 2 == 0 { &first } else { &second };
        let worker = format!("w{}", i % 4);
        async move { (worker.clone(), api.claim(&worker, 8).await) }
    }))
    .await;
    let mut claimed: HashMap<String, Vec<String>> = HashMap::new();
    for (worker, ids) in claims {
        claimed.entry(worker).or_default().extend(ids);
    }
    let every: Vec<&String> = claimed.values().flatten().collect();
    let distinct: HashSet<&String> = every.iter().copied().collect();
    assert_eq!(
        every.len(),
        distinct.len(),
        "no run given twice: {claimed:?}"
    );
    for (worker, ids) in &claimed {
        assert!(
            ids.len() <= 2,
            "{worker} (2 CPUs) was given {} 1-CPU runs: {ids:?}",
            ids.len()
        );
    }
    let held = second.service.store.held_runs().await.unwrap();
    for w in 0..4 {
        let worker = format!("w{w}");
        let cpu: u32 = held
            .iter()
            .filter(|r| r.worker_id == worker)
            .map(|r| r.constraints.cpu.unwrap_or(0))
            .sum();
        assert!(cpu <= 2, "{worker} holds {cpu} CPUs' worth of runs");
    }
    assert_eq!(
        held.len(),
        every.len(),
        "the store holds exactly what the claims answered"
    );
    // Some claims race and leave a little PENDING; a second round fills every worker.
    for w in 0..4 {
        let worker = format!("w{w}");
        let api = if w % 2 == 0 { &second } else { &first };
        api.claim(&worker, 8).await;
    }
    let held = first.service.store.held_runs().await.unwrap();
    assert_eq!(held.len(), 8, "each worker ends with its two runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_changed_through_one_mongodb_replica_is_seen_through_the_other() {
    let Some((first, second)) = two_replicas().await else {
        return;
    };
    let run = first.create_run(json!({"image": "x", "priority": 1})).await;
    let id = run["id"].as_str().unwrap();
    let seen = second.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(seen["state"], "PENDING");

    second
        .ok(
            "PATCH",
            &format!("/runs/{id}"),
            Some(json!({"priority": 7})),
        )
        .await;
    assert_eq!(
        first.ok("GET", &format!("/runs/{id}"), None).await["priority"],
        7
    );

    // Claimed and started through one, completed through the other.
    first.heartbeat("w1", 4, 4096).await;
    let claim = second.ok("POST", "/workers/w1/claim", None).await;
    assert_eq!(claim["ops"][0]["id"], id);
    first.start_and_complete(id, "w1", 1).await;
    let done = second.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(done["state"], "COMPLETED");
    // A stale report through the other replica is fenced like any.
    let (status, _) = second
        .event(
            id,
            json!({"type": "COMPLETED", "msg": "again", "attempt": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a completed run is locked");

    // A cancel through one is what the other lists.
    let other = second.create_run(json!({"image": "x"})).await;
    let other = other["id"].as_str().unwrap();
    first
        .ok("POST", &format!("/runs/{other}/cancel"), None)
        .await;
    let page = second.ok("GET", "/runs?state=CANCELLED", None).await;
    let listed: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(listed, [other]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_mongodb_replicas_reaping_one_silent_worker_requeue_each_run_once() {
    let Some((first, second)) = two_replicas().await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(first.running_on("doomed", json!({"max_attempts": 1})).await);
    }
    first.clock.advance(Duration::seconds(120));
    let (a, b) = tokio::join!(first.service.reap(), second.service.reap());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a + b,
        6,
        "each run requeued by exactly one replica ({a} + {b})"
    );
    for id in &ids {
        let run = second.ok("GET", &format!("/runs/{id}"), None).await;
        let attempts = run["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{id} requeued once: {run}");
        assert_eq!(run["state"], "PENDING");
        assert_eq!(attempts[0]["state"], "FAILED");
    }
    // Reaping again finds nothing more to do, on either replica.
    let (a, b) = tokio::join!(first.service.reap(), second.service.reap());
    assert_eq!(a.unwrap() + b.unwrap(), 0);
}
