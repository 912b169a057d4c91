//! End-to-end: long-polling claims (`POST /workers/{id}/claim?wait_ms=N`) against the real
//! server process over real HTTP (no Docker needed).
//!
//! The servers here re-check a waiting claim only once a minute (`--claim-recheck-ms 60000`)
//! and the claims wait up to a minute: a claim answered within the tests' bounds was woken,
//! not re-checked or timed out.

use std::time::Duration;

use gyoza_core::api::{HeartbeatRequest, OpRunCreate};
use gyoza_core::client::Client;
use gyoza_core::resources::Constraints;
use gyoza_core::{Resources, WorkerOpRun};
use gyoza_e2e::{Server, Worker, docker_or_skip, image_run, wait_until_terminal};
use serde_json::Map;
use tokio::task::JoinHandle;

/// Longer than any bound below: only a wake-up answers a claim before it.
const WAIT: Duration = Duration::from_secs(60);

fn server() -> Server {
    Server::start_with(&["--claim-recheck-ms", "60000"])
}

async fn heartbeat(client: &Client, worker: &str, cpu: u32, ram_mb: u64) {
    client
        .heartbeat(&HeartbeatRequest {
            worker_id: worker.into(),
            resources: Resources {
                cpu_cores: cpu,
                ram_mb,
                gpus: Vec::new(),
            },
            tags: Vec::new(),
            running_ops: None,
            instance: None,
        })
        .await
        .expect("heartbeat");
}

fn run_needing(cpu: u32) -> OpRunCreate {
    OpRunCreate {
        constraints: Some(Constraints {
            cpu: Some(cpu),
            ..Constraints::default()
        }),
        ..image_run("busybox", Map::new())
    }
}

fn claim_in_background(client: &Client, worker: &str) -> JoinHandle<Vec<WorkerOpRun>> {
    let (client, worker) = (client.clone(), worker.to_owned());
    tokio::spawn(async move { client.claim_waiting(&worker, 1, WAIT).await.expect("claim") })
}

/// A metric's value in the server's `/metrics` text.
async fn metric(client: &Client, name: &str) -> u64 {
    let text = client.metrics().await.expect("metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Waits (at most 20 s) until `gyoza_claims_waiting` is `n`.
async fn until_waiting(client: &Client, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting = metric(client, "gyoza_claims_waiting").await;
        if waiting == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} claims waiting, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn answered(claim: JoinHandle<Vec<WorkerOpRun>>) -> Vec<WorkerOpRun> {
    tokio::time::timeout(Duration::from_secs(20), claim)
        .await
        .expect("the waiting claim was not woken")
        .expect("claim task")
}

#[tokio::test]
async fn a_waiting_claim_gets_the_run_submitted_for_it() {
    let server = server();
    let client = server.client();
    heartbeat(&client, "w1", 4, 4096).await;
    let claim = claim_in_background(&client, "w1");
    until_waiting(&client, 1).await;
    let run = client.create_run(&run_needing(1)).await.expect("create");
    let ops = answered(claim).await;
    assert_eq!(
        ops.iter().map(|op| op.id.as_str()).collect::<Vec<_>>(),
        [run.id.as_str()]
    );
    until_waiting(&client, 0).await;
}

#[tokio::test]
async fn one_run_wakes_one_waiting_claim_and_only_one_it_fits() {
    let server = server();
    let client = server.client();
    heartbeat(&client, "small", 1, 4096).await;
    heartbeat(&client, "big-a", 4, 4096).await;
    heartbeat(&client, "big-b", 4, 4096).await;
    // The small worker waits longest: it would be woken first if fitting were not checked.
    let small = claim_in_background(&client, "small");
    until_waiting(&client, 1).await;
    let big_a = claim_in_background(&client, "big-a");
    let big_b = claim_in_background(&client, "big-b");
    until_waiting(&client, 3).await;

    let run = client.create_run(&run_needing(2)).await.expect("create");
    // One of the big workers gets it; the other two go on waiting, not woken for nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !big_a.is_finished() && !big_b.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "no claim was woken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (winner, other) = match big_a.is_finished() {
        true => (big_a, big_b),
        false => (big_b, big_a),
    };
    let ops = answered(winner).await;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].id, run.id);
    until_waiting(&client, 2).await;
    assert_eq!(metric(&client, "gyoza_claim_wakeups_total").await, 1);
    assert!(!small.is_finished() && !other.is_finished());
    small.abort();
    other.abort();
}

#[tokio::test]
async fn a_claim_whose_client_went_away_releases_its_slot() {
    let server = server();
    let client = server.client();
    heartbeat(&client, "w1", 4, 4096).await;
    let claim = claim_in_background(&client, "w1");
    until_waiting(&client, 1).await;
    // The client gives up: its connection closes, the server drops the waiting request.
    claim.abort();
    until_waiting(&client, 0).await;
    // And a run submitted afterwards stays for the next claim.
    let run = client.create_run(&run_needing(1)).await.expect("create");
    let ops = client.claim("w1", 1).await.expect("claim");
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].id, run.id);
}

#[tokio::test]
async fn a_plain_claim_answers_at_once_as_before() {
    let server = server();
    let client = server.client();
    heartbeat(&client, "w1", 4, 4096).await;
    // Without `wait_ms` nothing waits: the answer is empty, and no claim is left waiting.
    let ops = tokio::time::timeout(Duration::from_secs(20), client.claim("w1", 1))
        .await
        .expect("a plain claim waited")
        .expect("claim");
    assert!(ops.is_empty());
    assert_eq!(metric(&client, "gyoza_claims_waiting").await, 0);
}

#[tokio::test]
async fn stopping_the_server_answers_its_waiting_claims() {
    let mut server = server();
    let client = server.client();
    heartbeat(&client, "w1", 4, 4096).await;
    let claim = claim_in_background(&client, "w1");
    until_waiting(&client, 1).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid()])
        .status()
        .expect("kill");
    assert!(status.success());
    // Answered (empty) at the shutdown, not after its minute; and the server then exits.
    let ops = answered(claim).await;
    assert!(ops.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.try_wait().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_starts_a_submitted_run_without_waiting_for_its_next_heartbeat() {
    if !docker_or_skip("an_idle_worker_starts_a_submitted_run") {
        return;
    }
    let server = server();
    let client = server.client();
    // Heartbeats (and claims) every 30 s: a worker that polled would leave the run pending
    // until its next tick.
    let worker = Worker::start(&server, "long-poll", &["--heartbeat-interval", "30"]);
    until_waiting(&client, 1).await;
    let run = client
        .create_run(&image_run("gyoza-example/echo:latest", Map::new()))
        .await
        .expect("create");
    let done = wait_until_terminal(&client, &run.id, Duration::from_secs(25)).await;
    assert_eq!(
        done.state,
        gyoza_core::OpRunState::Completed,
        "{}",
        worker.output.text()
    );
}
