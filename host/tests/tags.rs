//! Required tags (`constraints.tags`), on both stores: the server itself keeps a run from a
//! worker that lacks one of its tags, before any strategy sees it; a GPU run may meet a tag
//! on one of its GPUs and is then placed there; a run that no active worker can take says
//! which tag is missing; bad tag lists are refused with a 400.

pub mod common;

use axum::http::StatusCode;
use common::{Api, detail};
use serde_json::{Value, json};

on_both_stores! {
    a_worker_without_a_required_tag_never_gets_the_run => a_worker_without_a_required_tag_never_gets_the_run;
    a_gpu_run_meets_its_tags_on_its_gpu => a_gpu_run_meets_its_tags_on_its_gpu;
    tags_round_trip_and_bad_ones_are_refused => tags_round_trip_and_bad_ones_are_refused;
}

/// A heartbeat of `worker` (4 cores, 8 GB) with `tags` and GPUs of (VRAM, tags).
async fn worker(api: &Api, worker: &str, tags: &[&str], gpus: &[(u64, &[&str])]) {
    let gpus: Vec<Value> = gpus
        .iter()
        .enumerate()
        .map(|(i, (vram, tags))| json!({"id": i, "vram_mb": vram, "tags": tags}))
        .collect();
    api.ok(
        "POST",
        "/workers/heartbeat",
        Some(json!({
            "worker_id": worker,
            "tags": tags,
            "resources": {"cpu_cores": 4, "ram_mb": 8192, "gpus": gpus},
        })),
    )
    .await;
}

async fn run(api: &Api, constraints: Value) -> String {
    let run = api
        .create_run(json!({"image": "x", "constraints": constraints}))
        .await;
    run["id"].as_str().unwrap().to_owned()
}

async fn reason(api: &Api, run: &str) -> Value {
    api.ok("GET", &format!("/runs/{run}"), None).await["scheduling"]["reason"].clone()
}

async fn a_worker_without_a_required_tag_never_gets_the_run(api: Api) {
    worker(&api, "plain", &[], &[]).await;
    let ssd = run(&api, json!({"cpu": 1, "tags": ["ssd"]})).await;
    let both = run(&api, json!({"cpu": 1, "tags": ["ssd", "eu"]})).await;
    let untagged = run(&api, json!({"cpu": 1})).await;
    assert_eq!(
        api.claim("plain", 10).await,
        [untagged],
        "only the run without tags"
    );
    assert_eq!(
        reason(&api, &ssd).await,
        "needs tag 'ssd': no active worker has it"
    );
    assert_eq!(
        reason(&api, &both).await,
        "needs tags 'ssd', 'eu': no active worker has them"
    );

    // Each tag exists, but on different workers.
    worker(&api, "fast", &["ssd"], &[]).await;
    worker(&api, "europe", &["eu"], &[]).await;
    assert!(api.claim("plain", 10).await.is_empty());
    assert_eq!(
        reason(&api, &ssd).await,
        "waits for a worker with its tags ('ssd'): 1 active worker has them"
    );
    assert!(api.claim("europe", 10).await.is_empty());
    assert_eq!(
        reason(&api, &both).await,
        "needs tags 'ssd', 'eu' together: no active worker has them all"
    );
    assert_eq!(
        api.claim("fast", 10).await,
        [ssd],
        "the worker with the tag"
    );
    worker(&api, "both", &["eu", "ssd", "gpu"], &[]).await;
    assert_eq!(api.claim("both", 10).await, [both]);
}

async fn a_gpu_run_meets_its_tags_on_its_gpu(api: Api) {
    worker(&api, "g", &["ssd"], &[(8192, &["t4"]), (8192, &["a100"])]).await;
    // Needs VRAM: the a100 tag may be met by GPU 1, and only there.
    let on_a100 = run(&api, json!({"vram_mb": 2048, "tags": ["ssd", "a100"]})).await;
    // Needs no GPU: a GPU's tag does not count.
    let cpu_only = run(&api, json!({"cpu": 1, "tags": ["a100"]})).await;
    let answer = api.ok("POST", "/workers/g/claim?max=10", None).await;
    let ops = answer["ops"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{answer}");
    assert_eq!(ops[0]["id"], on_a100.as_str());
    assert_eq!(ops[0]["gpu_id"], 1, "placed on the GPU with the tag");
    assert_eq!(
        reason(&api, &cpu_only).await,
        "needs tag 'a100': no active worker has it"
    );
}

async fn tags_round_trip_and_bad_ones_are_refused(api: Api) {
    let id = run(&api, json!({"tags": ["ssd", "eu"]})).await;
    let shown = api.ok("GET", &format!("/runs/{id}"), None).await;
    assert_eq!(shown["constraints"]["tags"], json!(["ssd", "eu"]));
    // A client written for the original server sends no tags and sees none.
    let plain = run(&api, json!({"cpu": 1})).await;
    let shown = api.ok("GET", &format!("/runs/{plain}"), None).await;
    assert!(shown["constraints"].get("tags").is_none(), "{shown}");

    // From a definition: inherited, or replaced by the run's own.
    api.ok(
        "POST",
        "/definitions",
        Some(
            json!({"id": "d", "version": "1.0.0", "image": "x", "constraints": {"tags": ["ssd"]}}),
        ),
    )
    .await;
    let inherited = api.ok("POST", "/definitions/d/runs", Some(json!({}))).await;
    assert_eq!(inherited["constraints"]["tags"], json!(["ssd"]));
    let replaced = api
        .ok(
            "POST",
            "/definitions/d/runs",
            Some(json!({"constraints": {"tags": ["nvme"]}})),
        )
        .await;
    assert_eq!(replaced["constraints"]["tags"], json!(["nvme"]));

    let before = api.ok("GET", "/runs?limit=100", None).await["data"]
        .as_array()
        .unwrap()
        .len();
    let too_many: Vec<String> = (0..=gyoza_core::limits::MAX_TAGS)
        .map(|i| format!("t{i}"))
        .collect();
    let too_long = "t".repeat(gyoza_core::limits::MAX_TAG_BYTES + 1);
    for (tags, says) in [
        (json!(too_many), "constraints.tags (count)"),
        (json!([too_long]), "constraints.tags entry"),
    ] {
        let (status, body) = api
            .call(
                "POST",
                "/runs",
                Some(json!({"image": "x", "constraints": {"tags": tags}})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(detail(&body).contains(says), "{body}");
    }
    let (status, body) = api
        .call(
            "POST",
            "/runs",
            Some(json!({"image": "x", "constraints": {"tags": "ssd"}})),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    let after = api.ok("GET", "/runs?limit=100", None).await["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "nothing stored");
}
