//! End-to-end: the `fair-share` and `affinity` strategies on a real cluster: a real server
//! process, `gyoza worker start` processes (2 cores each, by override) running real
//! containers on the Docker engine.
//!
//! The fair-share figures (the share of busy core-seconds against the weights, the time to
//! reclaim) are measured by `gyoza-bench fair-share` (BENCHMARKS.md); this asserts what must
//! hold on any machine: a quota is never exceeded at any instant, and the queue with the
//! larger weight gets the larger part of the cluster although it came second. For affinity:
//! a run goes to the worker already running its image, and runs sharing a spread label go
//! to different workers.

use std::time::{Duration, Instant};

use gyoza_core::OpRunState;
use gyoza_core::api::{OpDefinitionCreate, OpRunCreate, OpRunCreateFromDefinition, OpRunView};
use gyoza_core::client::Client;
use gyoza_e2e::held::{busy, holds, last_assigned, now_us, peak};
use gyoza_e2e::{Server, Worker, docker_or_skip, wait_for_run, wait_until_terminal};
use serde_json::{Value, json};

const RUNS: usize = 12;

/// A server with `flags`, the "nap" definition (the example sleep image, 1 core, 256 MB),
/// and `workers` workers of 2 cores each, registered, named `{name}0`, `{name}1`, …: the
/// tests of this file run at once against one Docker daemon, and a worker starting under
/// an id stops the containers a worker of that id left, so each test names its own.
async fn cluster(name: &str, flags: &[&str], workers: usize) -> (Server, Client, Vec<Worker>) {
    let server = Server::start_with(flags);
    let client = server.client();
    let definition: OpDefinitionCreate = serde_json::from_value(json!({
        "id": "nap", "version": "1", "image": "gyoza-example/sleep:latest",
        "input_specs": {"seconds": {"type": "int"}},
        "constraints": {"cpu": 1, "ram_mb": 256},
        "retry_policy": {"max_attempts": 1}
    }))
    .unwrap();
    client.upsert_definition(&definition).await.unwrap();
    let started: Vec<Worker> = (0..workers)
        .map(|i| {
            Worker::start(
                &server,
                &format!("{name}{i}"),
                &[
                    "--cpu-cores",
                    "2",
                    "--ram-mb",
                    "4096",
                    "--max-concurrent",
                    "8",
                ],
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.list_workers().await.unwrap().len() < workers {
        assert!(Instant::now() < deadline, "the workers did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (server, client, started)
}

async fn submit(client: &Client, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        let run = OpRunCreateFromDefinition {
            inputs: serde_json::from_value(json!({"seconds": 2})).unwrap(),
            priority: 5,
            queue: Some(queue.into()),
            ..Default::default()
        };
        ids.push(
            client
                .create_run_from_definition("nap", None, &run)
                .await
                .expect("create run")
                .id,
        );
    }
    ids
}

/// Each of `ids` once ended, which must be COMPLETED, all within 180 s.
async fn finished(client: &Client, ids: &[String]) -> Vec<OpRunView> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut runs = Vec::new();
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let run = wait_until_terminal(client, id, left).await;
        assert_eq!(run.state, OpRunState::Completed, "{run:?}");
        runs.push(run);
    }
    runs
}

#[tokio::test]
async fn fair_share_on_three_real_workers_gives_the_heavier_queue_more_and_holds_a_quota() {
    if !docker_or_skip("fair_share_on_three_real_workers") {
        return;
    }
    let (_server, client, _workers) = cluster(
        "fair",
        &[
            "--strategy",
            "fair-share",
            "--queues",
            "a:weight=2; b:weight=1,cpu=3",
        ],
        3,
    )
    .await;

    // All of b first, then all of a: by age alone b would take every core.
    let b = submit(&client, "b").await;
    let from = now_us();
    let a = submit(&client, "a").await;
    let (a, b) = (finished(&client, &a).await, finished(&client, &b).await);

    let (held_a, held_b) = (holds(&a), holds(&b));
    // b's quota held at every instant, and bound (alone, b would have taken all six).
    assert_eq!(peak(&held_b), 3, "{held_b:?}");
    // While both had runs to start, a (weight 2) held more than b (its fair part would be
    // twice b's; the measured ratio is in BENCHMARKS.md).
    let to = last_assigned(&a).min(last_assigned(&b));
    let (busy_a, busy_b) = (busy(&held_a, from, to), busy(&held_b, from, to));
    assert!(
        busy_a > 1.3 * busy_b,
        "busy core-seconds while contended: a {busy_a:.1}, b {busy_b:.1}"
    );
}

/// A run of the "nap" definition, or of `image` in its place, sleeping `seconds`.
async fn nap_run(client: &Client, image: Option<&str>, seconds: u64, labels: Value) -> String {
    let mut body = json!({"inputs": {"seconds": seconds}, "priority": 5, "labels": labels});
    if let Some(image) = image {
        // An ad-hoc run of the same script under another image name.
        body = json!({"image": image, "inputs": {"seconds": seconds}, "priority": 5,
                      "labels": labels, "constraints": {"cpu": 1, "ram_mb": 256}});
        let run: OpRunCreate = serde_json::from_value(body).unwrap();
        return client.create_run(&run).await.expect("create run").id;
    }
    let run: OpRunCreateFromDefinition = serde_json::from_value(body).unwrap();
    client
        .create_run_from_definition("nap", None, &run)
        .await
        .expect("create run")
        .id
}

/// The worker run `id`'s current attempt went to, once it is RUNNING or ended.
async fn worker_of(client: &Client, id: &str) -> String {
    let run = wait_for_run(client, id, Duration::from_secs(60), "started", |run| {
        run.state == OpRunState::Running || run.state.is_terminal()
    })
    .await;
    run.execution_summary.worker_id.expect("a worker")
}

#[tokio::test]
async fn affinity_on_four_real_workers_keeps_an_image_where_it_runs_and_spreads_a_label() {
    if !docker_or_skip("affinity_on_four_real_workers") {
        return;
    }
    // A second image: the same sleep script under another name.
    let tagged = std::process::Command::new("docker")
        .args([
            "tag",
            "gyoza-example/sleep:latest",
            "gyoza-example/sleep-b:latest",
        ])
        .status()
        .expect("docker tag");
    assert!(tagged.success());
    let (_server, client, _workers) = cluster(
        "affinity",
        &[
            "--strategy",
            "affinity",
            "--strategy-config",
            "spread=shard",
        ],
        4,
    )
    .await;

    // Each image running somewhere, on one of the two cores of its worker.
    let a = nap_run(&client, None, 30, json!({})).await;
    let worker_a = worker_of(&client, &a).await;
    let b = nap_run(&client, Some("gyoza-example/sleep-b:latest"), 30, json!({})).await;
    let worker_b = worker_of(&client, &b).await;
    // A worker holding nothing was as free as these for the first runs; not for the next.
    for _ in 0..2 {
        let again_a = nap_run(&client, None, 1, json!({})).await;
        assert_eq!(worker_of(&client, &again_a).await, worker_a, "image a");
        let again_b = nap_run(&client, Some("gyoza-example/sleep-b:latest"), 1, json!({})).await;
        assert_eq!(worker_of(&client, &again_b).await, worker_b, "image b");
        for id in [again_a, again_b] {
            wait_until_terminal(&client, &id, Duration::from_secs(60)).await;
        }
    }
    for id in [&a, &b] {
        client.cancel_run(id).await.expect("cancel");
    }

    // Four runs of one shard, submitted at once (the first claim sees them all): four
    // workers, although each has room for two.
    let run: OpRunCreate = serde_json::from_value(json!({
        "image": "gyoza-example/sleep:latest", "inputs": {"seconds": 3}, "priority": 5,
        "labels": {"shard": "s1"}, "constraints": {"cpu": 1, "ram_mb": 256}
    }))
    .unwrap();
    let answer = client
        .create_runs(&vec![run; 4])
        .await
        .expect("create runs");
    let mut workers = Vec::new();
    for item in &answer.results {
        let id = &item.run.as_ref().expect("created").id;
        workers.push(worker_of(&client, id).await);
    }
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), 4, "{workers:?}");
}
