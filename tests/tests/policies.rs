//! End-to-end: the `fair-share` strategy on a real cluster: a real server process, three
//! `gyoza worker start` processes (2 cores each, by override) running real containers on the
//! Docker engine. The figures (the share of busy core-seconds against the weights, the time
//! to reclaim) are measured by `gyoza-bench fair-share` (BENCHMARKS.md); this asserts what
//! must hold on any machine: a quota is never exceeded at any instant, and the queue with the
//! larger weight gets the larger part of the cluster although it came second.

use std::time::{Duration, Instant};

use gyoza_core::OpRunState;
use gyoza_core::api::{OpDefinitionCreate, OpRunCreateFromDefinition, OpRunView};
use gyoza_core::client::Client;
use gyoza_e2e::held::{busy, holds, last_assigned, now_us, peak};
use gyoza_e2e::{Server, Worker, docker_or_skip};
use serde_json::json;

const RUNS: usize = 12;

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

async fn finished(client: &Client, ids: &[String]) -> Vec<OpRunView> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut runs = Vec::new();
    for id in ids {
        loop {
            let run = client.get_run(id).await.expect("get run");
            if run.state.is_terminal() {
                assert_eq!(run.state, OpRunState::Completed, "{run:?}");
                runs.push(run);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not finish: {run:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    runs
}

#[tokio::test]
async fn fair_share_on_three_real_workers_gives_the_heavier_queue_more_and_holds_a_quota() {
    if !docker_or_skip("fair_share_on_three_real_workers") {
        return;
    }
    let server = Server::start_with(&[
        "--strategy",
        "fair-share",
        "--queues",
        "a:weight=2; b:weight=1,cpu=3",
    ]);
    let client = server.client();
    let definition: OpDefinitionCreate = serde_json::from_value(json!({
        "id": "nap", "version": "1", "image": "gyoza-example/sleep:latest",
        "input_specs": {"seconds": {"type": "int"}},
        "constraints": {"cpu": 1, "ram_mb": 256},
        "retry_policy": {"max_attempts": 1}
    }))
    .unwrap();
    client.upsert_definition(&definition).await.unwrap();
    let _workers: Vec<Worker> = (0..3)
        .map(|i| {
            Worker::start(
                &server,
                &format!("fs{i}"),
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
    while client.list_workers().await.unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the workers did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
