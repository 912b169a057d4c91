//! One live worker process per worker id: a heartbeat under a live worker's id from another
//! instance (another state directory, another host) is refused with 409; the same instance
//! after a restart, a worker gone silent past the worker timeout, and workers that send no
//! instance token (the seed's) are accepted as before.

pub mod common;

use axum::http::StatusCode;
use common::{Api, detail};
use serde_json::{Value, json};

fn beat(worker: &str, instance: Option<&str>, cpu: u32) -> Value {
    let mut body = json!({"worker_id": worker, "resources": {"cpu_cores": cpu, "ram_mb": 4096}, "running_ops": []});
    if let Some(instance) = instance {
        body["instance"] = json!(instance);
    }
    body
}

async fn worker(api: &Api, id: &str) -> Value {
    let workers = api.ok("GET", "/workers", None).await;
    workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no worker {id} in {workers}"))
}

#[tokio::test]
async fn a_second_live_instance_under_one_id_gets_409_naming_the_id_and_the_age() {
    let api = Api::new().await;
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("w1", Some("first"), 4)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.advance(7);
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("w1", Some("second"), 64)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let why = detail(&body);
    assert!(
        why.contains("'w1'") && why.contains("7 s ago"),
        "names the id and how long ago the other one heartbeated: {why}"
    );
    let stored = worker(&api, "w1").await;
    assert_eq!(
        stored["resources"]["cpu_cores"], 4,
        "the refused heartbeat changed nothing: {stored}"
    );

    // The first instance, restarted from its state directory (same token), is at home at once.
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("w1", Some("first"), 4)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Silent for longer than the worker timeout (60 s): the id is free for another instance.
    api.advance(60);
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("w1", Some("first"), 4)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.advance(61);
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("w1", Some("second"), 64)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(worker(&api, "w1").await["resources"]["cpu_cores"], 64);
    // ... and the old one is now the intruder.
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("w1", Some("first"), 4)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn two_instances_heartbeating_a_new_id_at_once_get_one_200_and_one_409() {
    let api = Api::new().await;
    for round in 0..20 {
        let id = format!("fresh-{round}");
        let (a, b) = tokio::join!(
            api.call("POST", "/workers/heartbeat", Some(beat(&id, Some("a"), 1))),
            api.call("POST", "/workers/heartbeat", Some(beat(&id, Some("b"), 2))),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}: {a:?} {b:?}"
        );
    }
}

#[tokio::test]
async fn workers_without_an_instance_token_are_never_refused() {
    let api = Api::new().await;
    // A seed worker, twice from "two processes": nothing tells them apart, so nothing refuses.
    api.heartbeat("seed", 2, 2048).await;
    api.heartbeat("seed", 2, 2048).await;
    // A tokened worker next to a seed one under the same id, either way round.
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("seed", Some("t"), 2)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.heartbeat("seed", 2, 2048).await;
    // A token longer than an id is refused with a 400 that names it.
    let long = "x".repeat(gyoza_core::limits::MAX_ID_BYTES + 1);
    let (status, body) = api
        .call(
            "POST",
            "/workers/heartbeat",
            Some(beat("seed", Some(&long), 2)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("instance"), "{body}");
}
