//! The `fair-share` and `affinity` built-ins through the server: real components built from
//! `plugins/` by `host/build.rs`, the server's queue configuration (`GYOZA_QUEUES`), its
//! claims, preemptions and pending reasons. Their rules in detail are unit-tested natively
//! in `plugins/fair-share` and `plugins/affinity` (the SDK's test kit); here, that the host
//! hands them what they decide from and carries out what they answer.

pub mod common;

use common::{Api, start_strategies, strategy_cache};
use gyoza_host::queues::QueueSettings;
use gyoza_host::store::DEFAULT_HALF_LIFE_S;
use gyoza_host::strategy::StrategySettings;
use serde_json::{Value, json};

/// A server whose active strategy is the built-in `strategy` with `config`, and whose
/// `GYOZA_QUEUES` is `queues`.
async fn server(strategy: &str, config: &str, queues: &str) -> Api {
    let host = start_strategies(StrategySettings {
        cache_dir: Some(strategy_cache()),
        active: strategy.into(),
        config: config.into(),
        ..StrategySettings::builtin("priority")
    })
    .await;
    let settings = QueueSettings::parse(queues, DEFAULT_HALF_LIFE_S).unwrap();
    Api::configured(host, 1 << 20, move |service| service.queues = settings).await
}

/// A run; `extra` is merged into the body (queue, priority, labels, image...).
async fn run(api: &Api, cpu: u32, extra: Value) -> String {
    let mut body = json!({"image": "x", "constraints": {"cpu": cpu}});
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let run = api.create_run(body).await;
    run["id"].as_str().unwrap().to_owned()
}

async fn get(api: &Api, id: &str) -> Value {
    api.ok("GET", &format!("/runs/{id}"), None).await
}

async fn reason(api: &Api, id: &str) -> Value {
    get(api, id).await["scheduling"]["reason"].clone()
}

/// How many of `claimed` are among `of`.
fn count_of(claimed: &[String], of: &[String]) -> usize {
    claimed.iter().filter(|id| of.contains(id)).count()
}

async fn runs_in(api: &Api, queue: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(run(api, 1, json!({"queue": queue})).await);
    }
    ids
}

#[tokio::test]
async fn fair_share_splits_a_worker_by_the_queues_weights_whoever_came_first() {
    let api = server("fair-share", "", "a:weight=1; b:weight=2").await;
    api.heartbeat("w", 6, 8192).await;
    // All of a's runs are older: priority would hand a all six cores.
    let a = runs_in(&api, "a", 6).await;
    let b = runs_in(&api, "b", 6).await;
    let claimed = api.claim("w", 10).await;
    assert_eq!(claimed.len(), 6);
    assert_eq!(
        (count_of(&claimed, &a), count_of(&claimed, &b)),
        (2, 4),
        "{claimed:?}"
    );
    // GET /queues shows the shares the claim evened out: 2/6 / 1 and 4/6 / 2.
    let queues = api.ok("GET", "/queues", None).await;
    let share = |name: &str| {
        queues["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap()["share"]
            .as_f64()
            .unwrap()
    };
    assert!((share("a") - 1.0 / 3.0).abs() < 1e-9, "{queues}");
    assert!((share("b") - 1.0 / 3.0).abs() < 1e-9, "{queues}");
}

#[tokio::test]
async fn fair_share_holds_a_quota_across_workers_and_says_so() {
    let api = server("fair-share", "", "a:weight=1; b:weight=100,cpu=3").await;
    api.heartbeat("w1", 2, 8192).await;
    api.heartbeat("w2", 4, 8192).await;
    let b = runs_in(&api, "b", 5).await;
    let a = runs_in(&api, "a", 5).await;
    // Both hold nothing: b's older run first, then a (holding nothing, below b).
    assert_eq!(api.claim("w1", 10).await, [b[0].clone(), a[0].clone()]);
    // b's weight keeps it below a until its quota, counted with what it holds on w1.
    let claimed = api.claim("w2", 10).await;
    assert_eq!(claimed, [&b[1..3], &a[1..3]].concat());
    assert_eq!(
        reason(&api, &b[3]).await,
        "queue b is at its CPU quota: 3 of 3 cores held; the run needs 1"
    );
}

/// Six workers claiming at once (on a runtime with threads to race on) never take a queue
/// past its quota: each claim decides knowing the runs the others are assigning. Before,
/// concurrent claims each counted b's held runs from their own view and together took 4 or
/// more of a 3-core quota (a real cluster caught it: `tests/tests/policies.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_take_a_queue_past_its_quota() {
    let api = std::sync::Arc::new(server("fair-share", "", "b:weight=1,cpu=3").await);
    let workers: Vec<String> = (0..6).map(|w| format!("w{w}")).collect();
    for worker in &workers {
        api.heartbeat(worker, 2, 8192).await;
    }
    runs_in(&api, "b", 24).await;
    for round in 0..8 {
        let claims: Vec<_> = workers
            .iter()
            .map(|worker| {
                let (api, worker) = (api.clone(), worker.clone());
                tokio::spawn(async move { api.claim(&worker, 2).await })
            })
            .collect();
        let mut taken = Vec::new();
        for claim in claims {
            taken.extend(claim.await.unwrap());
        }
        assert_eq!(
            taken.len(),
            3,
            "round {round}: b's quota is 3 cores: {taken:?}"
        );
        // Hand them back, so that the next round races again.
        for id in &taken {
            api.ok("POST", &format!("/runs/{id}/cancel"), None).await;
        }
    }
}

/// A 4-core worker `w` full of `batch`'s preemptible runs (priority 0), and an
/// `interactive` run of priority 1 needing 2 cores: the runs, and the interactive run.
async fn borrowed(api: &Api) -> (Vec<String>, String) {
    api.heartbeat("w", 4, 8192).await;
    let mut batch = Vec::new();
    for _ in 0..4 {
        batch.push(
            run(
                api,
                1,
                json!({"queue": "batch", "priority": 0, "preemptible": true,
                       "retry_policy": {"max_attempts": 1}}),
            )
            .await,
        );
    }
    assert_eq!(api.claim("w", 10).await.len(), 4, "batch borrows it all");
    let interactive = run(api, 2, json!({"queue": "interactive", "priority": 1})).await;
    (batch, interactive)
}

#[tokio::test]
async fn fair_share_with_reclaim_takes_borrowed_capacity_back() {
    let api = server("fair-share", "reclaim=true", "").await;
    let (batch, interactive) = borrowed(&api).await;
    assert_eq!(api.claim("w", 10).await, std::slice::from_ref(&interactive));
    let mut preempted = Vec::new();
    for id in &batch {
        let shown = get(&api, id).await;
        let first = &shown["attempts"][0];
        if first["preempted"] == true {
            assert_eq!(shown["state"], "PENDING", "{shown}");
            assert_eq!(
                first["execution_summary"]["error_message"],
                format!("preempted by {interactive} (priority 1) via fair-share").as_str()
            );
            preempted.push(id);
        } else {
            assert_eq!(shown["state"], "ASSIGNED", "{shown}");
        }
    }
    assert_eq!(preempted.len(), 2, "two cores freed by two runs, no more");

    // Without reclaim, the same cluster keeps its borrowed runs.
    let api = server("fair-share", "", "").await;
    let (_, interactive) = borrowed(&api).await;
    assert!(api.claim("w", 10).await.is_empty());
    assert_eq!(
        reason(&api, &interactive).await,
        "needs 2 CPU cores; 0 free"
    );
}

#[tokio::test]
async fn affinity_waits_for_the_worker_holding_its_image_and_spreads_a_label() {
    let api = server("affinity", "spread=shard", "").await;
    api.heartbeat("w1", 4, 8192).await;
    api.heartbeat("w2", 4, 8192).await;
    let first = run(&api, 1, json!({"image": "img-b:1"})).await;
    assert_eq!(api.claim("w2", 1).await, [first]);

    let second = run(&api, 1, json!({"image": "img-b:1"})).await;
    assert!(api.claim("w1", 10).await.is_empty());
    assert_eq!(
        reason(&api, &second).await,
        "prefers a worker with image img-b:1 cached; 1 such worker has room"
    );
    assert_eq!(api.claim("w2", 10).await, [second]);

    let shard: Vec<String> = [
        run(&api, 1, json!({"labels": {"shard": "7"}})).await,
        run(&api, 1, json!({"labels": {"shard": "7"}})).await,
    ]
    .into();
    assert_eq!(api.claim("w1", 10).await, shard[..1]);
    assert_eq!(
        reason(&api, &shard[1]).await,
        "spreads shard=7: this worker holds 1 such run; 1 worker with room holds fewer"
    );
    assert_eq!(api.claim("w2", 10).await, shard[1..]);
}

/// Holds the first claim view read for worker `late` until told to go on, and says when it
/// was read.
#[derive(Default)]
struct HoldLateView {
    read: tokio::sync::Notify,
    go: tokio::sync::Notify,
    held: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl common::hooked::Hook for HoldLateView {
    async fn view_read(&self, worker_id: &str) {
        use std::sync::atomic::Ordering;
        if worker_id == "late" && !self.held.swap(true, Ordering::SeqCst) {
            self.read.notify_one();
            self.go.notified().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_counts_what_was_assigned_after_its_view_was_read() {
    // A claim reads its view before it takes the turn to decide. Here `late` reads its view,
    // then `early` claims b's whole 3-core quota and commits, and only then does `late`
    // decide: from a view in which b holds nothing. The runs `early` took need a tag `late`
    // lacks, so that `late` is not stopped by losing them: only counting what was assigned
    // since its view was read keeps b within its quota.
    let host = start_strategies(StrategySettings {
        cache_dir: Some(strategy_cache()),
        active: "fair-share".into(),
        ..StrategySettings::builtin("priority")
    })
    .await;
    let settings = QueueSettings::parse("b:weight=1,cpu=3", DEFAULT_HALF_LIFE_S).unwrap();
    let (api, store) = Api::hooked(host, HoldLateView::default(), move |service| {
        service.queues = settings
    })
    .await;
    let api = std::sync::Arc::new(api);
    let beat = |worker: &str, tags: Value| json!({"worker_id": worker, "resources": {"cpu_cores": 4, "ram_mb": 8192, "gpus": []}, "tags": tags});
    api.ok(
        "POST",
        "/workers/heartbeat",
        Some(beat("early", json!(["t"]))),
    )
    .await;
    api.ok("POST", "/workers/heartbeat", Some(beat("late", json!([]))))
        .await;
    let mut tagged = Vec::new();
    for _ in 0..3 {
        let extra = json!({"queue": "b", "priority": 5, "constraints": {"cpu": 1, "tags": ["t"]}});
        tagged.push(run(&api, 1, extra).await);
    }
    for _ in 0..3 {
        run(&api, 1, json!({"queue": "b"})).await;
    }
    let late = {
        let api = api.clone();
        tokio::spawn(async move { api.claim("late", 3).await })
    };
    store.hook.read.notified().await;
    let mut early = api.claim("early", 3).await;
    early.sort();
    tagged.sort();
    assert_eq!(early, tagged, "early takes the quota with the tagged runs");
    store.hook.go.notify_one();
    let late = late.await.unwrap();
    assert_eq!(late, Vec::<String>::new(), "b's quota of 3 cores is taken");
}
