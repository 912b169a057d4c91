//! `GET /queues` through the router: configured queues without runs show zeros, PENDING
//! counts are exact beyond the claim's 1,000-run window (both stores: one grouped count),
//! held runs count in `running` / `held` and their dominant share is the arithmetic of the
//! active cluster, a silent worker's runs do not count, the key is required, and the decayed
//! usage is what a claim is shown (`/workers/{id}/claim-scenario`).
//!
//! Expected figures are computed here from the numbers the test set up, never by calling
//! the server's functions.

pub mod common;

use axum::http::StatusCode;
use common::{Api, KEY, detail, start_strategies, strategy_cache};
use gyoza_host::queues::QueueSettings;
use gyoza_host::store::DEFAULT_HALF_LIFE_S;
use gyoza_host::strategy::StrategySettings;
use serde_json::{Value, json};

on_both_stores! {
    pending_is_counted_beyond_the_window => pending_is_counted_beyond_the_window;
}

/// A server (SQLite) whose `GYOZA_QUEUES` is `queues`.
async fn with_queues(queues: &str) -> Api {
    let host = start_strategies(StrategySettings {
        cache_dir: Some(strategy_cache()),
        ..StrategySettings::builtin("priority")
    })
    .await;
    let settings = QueueSettings::parse(queues, DEFAULT_HALF_LIFE_S).unwrap();
    Api::configured(host, 10 * 1024 * 1024, move |service| {
        service.queues = settings;
    })
    .await
}

/// `GET /queues`, which must succeed.
async fn queues(api: &Api) -> Value {
    api.ok("GET", "/queues", None).await
}

/// The entry of queue `name` in a `GET /queues` answer (the test fails when it is absent).
fn queue<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {list}"))
}

/// The names listed, in order.
fn names(list: &Value) -> Vec<String> {
    list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect()
}

/// ∫ 2^(−age / h) over `seconds` held, as of its end, with the default half-life.
fn weight(seconds: f64) -> f64 {
    let h = f64::from(DEFAULT_HALF_LIFE_S);
    h / std::f64::consts::LN_2 * (1.0 - (-seconds / h).exp2())
}

/// Fails unless `got` (a JSON number) is `want` within 1e-9 relative.
fn assert_close(got: &Value, want: f64, what: &str) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {got}"));
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: {got}, expected {want}"
    );
}

/// `n` runs of `queue` created through `POST /runs/batch` (at most 1,000 per batch).
async fn batch(api: &Api, queue: &str, n: usize) {
    let mut left = n;
    while left > 0 {
        let size = left.min(1_000);
        let runs: Vec<Value> = (0..size)
            .map(|_| json!({"image": "x", "queue": queue}))
            .collect();
        let answer = api
            .ok("POST", "/runs/batch", Some(json!({"runs": runs})))
            .await;
        assert_eq!(
            answer["results"].as_array().unwrap().len(),
            size,
            "{answer}"
        );
        left -= size;
        // Batches apart in time, so that the oldest run is unambiguous on every store.
        api.advance(1);
    }
}

async fn pending_is_counted_beyond_the_window(api: Api) {
    assert_eq!(
        queues(&api).await,
        json!({"half_life_s": DEFAULT_HALF_LIFE_S, "queues": []}),
        "no configured queue and no run: nothing listed"
    );
    batch(&api, "bulk", 1_200).await;
    batch(&api, "another", 3).await;
    // One run taken: held by w1, no longer pending.
    api.heartbeat("w1", 8, 8192).await;
    assert_eq!(api.claim("w1", 1).await.len(), 1);
    let list = queues(&api).await;
    assert_eq!(names(&list), ["another", "bulk"], "by name");
    let bulk = queue(&list, "bulk");
    let another = queue(&list, "another");
    // The claim took the oldest run of the highest priority: one of `bulk`'s.
    assert_eq!(
        bulk["pending"], 1_199,
        "every PENDING run, not the window's 1,000"
    );
    assert_eq!(bulk["running"], 1);
    assert_eq!(another["pending"], 3);
    assert_eq!(another["running"], 0);
}

#[tokio::test]
async fn a_configured_queue_without_runs_shows_zeros() {
    let api = with_queues("interactive:weight=2; batch:weight=1,cpu=16,ram_mb=65536,runs=20").await;
    let zeros = |name: &str, weight: u32, quota: Value| {
        json!({
            "name": name, "weight": weight, "quota": quota, "pending": 0, "running": 0,
            "held": {"cpu": 0, "ram_mb": 0, "vram_mb": 0},
            "usage": {"cpu_seconds": 0.0, "ram_mb_seconds": 0.0, "vram_mb_seconds": 0.0},
            "share": 0.0
        })
    };
    assert_eq!(
        queues(&api).await,
        json!({
            "half_life_s": DEFAULT_HALF_LIFE_S,
            "queues": [
                zeros("batch", 1, json!({"cpu": 16, "ram_mb": 65536, "vram_mb": null, "runs": 20})),
                zeros("interactive", 2, json!({"cpu": null, "ram_mb": null, "vram_mb": null, "runs": null})),
            ]
        })
    );
}

#[tokio::test]
async fn held_runs_count_and_their_share_is_the_arithmetic_until_their_worker_goes_silent() {
    let api = with_queues("gpu:weight=2").await;
    // The active cluster: 16 cores, 32768 MB RAM, 8192 + 16384 MB VRAM.
    api.heartbeat_with_gpus("w1", 8, 16_384, &[8_192]).await;
    api.heartbeat_with_gpus("w2", 8, 16_384, &[16_384]).await;
    let cpu_run = api
        .create_run(
            json!({"image": "x", "queue": "cpu", "constraints": {"cpu": 4, "ram_mb": 2048}}),
        )
        .await;
    assert_eq!(api.claim("w1", 1).await, [cpu_run["id"].as_str().unwrap()]);
    // Only w2's GPU has 12288 MB.
    let gpu_run = api
        .create_run(json!({"image": "x", "queue": "gpu", "constraints": {"cpu": 2, "ram_mb": 4096, "vram_mb": 12_288}}))
        .await;
    let vision_run = api
        .create_run(json!({"image": "x", "queue": "vision", "constraints": {"cpu": 1}}))
        .await;
    let mut claimed = api.claim("w2", 10).await;
    claimed.sort();
    let mut expected = vec![
        gpu_run["id"].as_str().unwrap().to_owned(),
        vision_run["id"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(claimed, expected);
    // Waiting: no worker has 2 TB of RAM.
    api.create_run(json!({"image": "x", "queue": "gpu", "constraints": {"ram_mb": 2_000_000}}))
        .await;

    let list = queues(&api).await;
    assert_eq!(names(&list), ["cpu", "gpu", "vision"]);
    let gpu = queue(&list, "gpu");
    assert_eq!(gpu["pending"], 1);
    assert_eq!(gpu["running"], 1);
    assert_eq!(
        gpu["held"],
        json!({"cpu": 2, "ram_mb": 4096, "vram_mb": 12_288})
    );
    // CPU 2/16, RAM 4096/32768, VRAM 12288/24576: VRAM dominates, halved by weight 2.
    let dominant = (2.0_f64 / 16.0)
        .max(4096.0 / 32_768.0)
        .max(12_288.0 / 24_576.0);
    assert_close(&gpu["share"], dominant / 2.0, "gpu share");
    assert_close(&gpu["share"], 0.25, "gpu share");
    let cpu = queue(&list, "cpu");
    assert_eq!(cpu["weight"], 1);
    assert_eq!(cpu["running"], 1);
    assert_eq!(cpu["held"], json!({"cpu": 4, "ram_mb": 2048, "vram_mb": 0}));
    assert_close(&cpu["share"], 4.0 / 16.0, "cpu share (CPU dominates)");
    assert_close(&queue(&list, "vision")["share"], 1.0 / 16.0, "vision share");
    // Assigned just now: no usage yet.
    assert_close(&cpu["usage"]["cpu_seconds"], 0.0, "cpu usage at 0 s");

    // 61 s on, past the 60 s worker timeout: w1 heartbeats, w2 is silent.
    api.advance(61);
    api.heartbeat_with_gpus("w1", 8, 16_384, &[8_192]).await;
    let list = queues(&api).await;
    assert_eq!(
        names(&list),
        ["cpu", "gpu"],
        "vision's only run is on the silent worker; gpu is configured"
    );
    let gpu = queue(&list, "gpu");
    assert_eq!(gpu["running"], 0, "{gpu}");
    assert_eq!(gpu["held"], json!({"cpu": 0, "ram_mb": 0, "vram_mb": 0}));
    assert_close(&gpu["share"], 0.0, "gpu share without a held run");
    assert_eq!(gpu["pending"], 1);
    // The cluster is w1 alone now: 8 cores, 16384 MB, 8192 MB VRAM.
    let cpu = queue(&list, "cpu");
    assert_eq!(cpu["running"], 1);
    assert_close(
        &cpu["share"],
        (4.0_f64 / 8.0).max(2048.0 / 16_384.0),
        "cpu share",
    );
    // Held 61 s.
    assert_close(
        &cpu["usage"]["cpu_seconds"],
        4.0 * weight(61.0),
        "cpu-seconds",
    );
    assert_close(
        &cpu["usage"]["ram_mb_seconds"],
        2048.0 * weight(61.0),
        "ram-seconds",
    );
    assert_close(&cpu["usage"]["vram_mb_seconds"], 0.0, "vram-seconds");
}

#[tokio::test]
async fn the_key_is_required() {
    let api = with_queues("q:weight=3").await;
    for key in [None, Some("wrong-key")] {
        let (status, answer) = api.raw("GET", "/queues", key, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}: {answer}");
        assert!(detail(&answer).contains("API key"), "{answer}");
    }
    let (status, _) = api.raw("GET", "/queues", Some(KEY), None).await;
    assert_eq!(status, StatusCode::OK);
    // Declared in the OpenAPI document like the other routes, with its schema.
    let document = api.ok("GET", "/openapi.json", None).await;
    let path = &document["paths"]["/queues"]["get"];
    assert_eq!(
        path["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/QueueList",
        "{path}"
    );
    let view = &document["components"]["schemas"]["QueueView"]["properties"];
    for field in [
        "name", "weight", "quota", "pending", "running", "held", "usage", "share",
    ] {
        assert!(view.get(field).is_some(), "QueueView.{field}: {view}");
    }
}

#[tokio::test]
async fn decayed_usage_is_what_a_claim_is_shown() {
    let api = with_queues("").await;
    api.heartbeat("w1", 8, 8192).await;
    let body = |cpu: u32, ram: u64| json!({"image": "x", "queue": "q", "constraints": {"cpu": cpu, "ram_mb": ram}});
    let first = api.create_run(body(2, 1024)).await;
    let first = first["id"].as_str().unwrap();
    assert_eq!(api.claim("w1", 1).await, [first]);
    api.advance(100);
    api.heartbeat("w1", 8, 8192).await;
    let ended = api.start_and_complete(first, "w1", 1).await;
    assert_eq!(ended["state"], "COMPLETED");
    api.advance(50);
    api.heartbeat("w1", 8, 8192).await;
    let second = api.create_run(body(1, 512)).await;
    let second = second["id"].as_str().unwrap();
    assert_eq!(api.claim("w1", 1).await, [second]);
    api.advance(30);
    api.heartbeat("w1", 8, 8192).await;

    let list = queues(&api).await;
    let q = queue(&list, "q");
    // The first attempt held 2 cores and 1024 MB for 100 s and ended 80 s ago; the second
    // holds 1 core and 512 MB since 30 s.
    let decay = (-80.0 / f64::from(DEFAULT_HALF_LIFE_S)).exp2();
    let want = [
        2.0 * weight(100.0) * decay + weight(30.0),
        1024.0 * weight(100.0) * decay + 512.0 * weight(30.0),
    ];
    assert!(want[0] > 0.0);
    assert_close(&q["usage"]["cpu_seconds"], want[0], "cpu-seconds");
    assert_close(&q["usage"]["ram_mb_seconds"], want[1], "ram-seconds");
    assert_close(&q["usage"]["vram_mb_seconds"], 0.0, "vram-seconds");

    // What a claim by w1 decides from now: the store's usage of ended attempts and the
    // held runs with how long they ran; the claim's `queues` is their sum, as is ours.
    let scenario = api.ok("GET", "/workers/w1/claim-scenario", None).await;
    let usage = scenario["usage"].as_array().unwrap();
    assert_eq!(usage.len(), 1, "{scenario}");
    assert_eq!(usage[0][0], "q");
    let held = &scenario["workers"][0]["running"];
    assert_eq!(held.as_array().unwrap().len(), 1, "{scenario}");
    assert_eq!(held[0]["ran_ms"], 30_000);
    let ran = held[0]["ran_ms"].as_f64().unwrap() / 1000.0;
    let ended = |i: usize| usage[0][1][i].as_f64().unwrap();
    let claim_cpu = ended(0) + held[0]["cpu"].as_f64().unwrap() * weight(ran);
    let claim_ram = ended(1) + held[0]["ram_mb"].as_f64().unwrap() * weight(ran);
    assert_close(
        &q["usage"]["cpu_seconds"],
        claim_cpu,
        "cpu-seconds as a claim",
    );
    assert_close(
        &q["usage"]["ram_mb_seconds"],
        claim_ram,
        "ram-seconds as a claim",
    );
    assert_close(
        &q["usage"]["vram_mb_seconds"],
        ended(2),
        "vram-seconds as a claim",
    );
}
