//! Docker faults: a worker whose engine is unreachable — from its start, or from the middle of
//! a run — says so, keeps heartbeating, claims nothing it cannot start, hands back the run it
//! lost, and resumes when the engine answers again.
//!
//! The worker reaches the real dockerd through a [`DockerProxy`] the test closes and reopens:
//! the machine's engine keeps running (other tests use it at the same time).

use std::time::{Duration, Instant};

use gyoza_core::OpRunState;
use gyoza_core::api::OpRunView;
use gyoza_core::client::Client;
use gyoza_e2e::{
    DockerProxy, Server, Worker, assert_completed_by, assert_handed_back, container_exists,
    deploy_nap, docker_or_skip, wait_for_run, wait_until_container_runs, wait_until_terminal,
};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Deploys "nap" with one attempt and starts a run of it.
async fn nap(client: &Client, seconds: u64) -> OpRunView {
    deploy_nap(client, json!({"max_attempts": 1})).await;
    gyoza_e2e::nap(client, seconds).await
}

/// Waits until `worker` shows in `GET /workers` as active.
async fn heartbeating(client: &Client, worker: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers = client.list_workers().await.expect("list workers");
        if workers.iter().any(|w| w.worker.id == worker.id && w.active) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "worker {} never heartbeated:\n{}",
            worker.id,
            worker.output.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For `period`, checks that run `id` stays PENDING with `attempts` attempts (nobody claims
/// it) while `worker` keeps heartbeating (its last heartbeat stays recent).
async fn stays_pending_while_heartbeating(
    client: &Client,
    id: &str,
    attempts: usize,
    worker: &mut Worker,
    period: Duration,
) {
    let until = Instant::now() + period;
    let mut first_beat = None;
    while Instant::now() < until {
        let run = client.get_run(id).await.expect("get run");
        assert_eq!(run.state, OpRunState::Pending, "{:?}", run.attempts);
        assert_eq!(run.attempts.len(), attempts, "{:?}", run.attempts);
        let view = client
            .list_workers()
            .await
            .expect("list workers")
            .into_iter()
            .find(|w| w.worker.id == worker.id)
            .expect("the worker is listed");
        assert!(view.active, "the worker stopped heartbeating");
        first_beat = first_beat.or(Some(view.worker.last_heartbeat_at));
        assert!(!worker.has_exited(), "{}", worker.output.text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = client
        .list_workers()
        .await
        .expect("list workers")
        .into_iter()
        .find(|w| w.worker.id == worker.id)
        .map(|w| w.worker.last_heartbeat_at);
    // Compared with the first look of the period, not the last: a heartbeat every 0.3 s may
    // well not land in the last 0.3 s on a loaded machine (seen in CI), but a worker that
    // heartbeats at all does so within the period.
    assert!(
        seen > first_beat,
        "no heartbeat arrived in {period:?} while the engine was away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_unreachable_at_start_is_reported_and_waited_for_without_claiming() {
    if !docker_or_skip("an_engine_unreachable_at_start") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    // Nothing listens at the proxy's path yet: the socket file does not exist.
    let mut proxy = DockerProxy::new();
    let host = proxy.docker_host();
    let mut worker = Worker::start(&server, "no-engine", &["--docker-host", &host]);
    heartbeating(&client, &worker).await;
    let run = nap(&client, 1).await;
    stays_pending_while_heartbeating(&client, &run.id, 1, &mut worker, Duration::from_secs(3))
        .await;
    let expected = format!("cannot reach the Docker engine at {host}");
    assert!(
        worker.output.contains(&expected),
        "no clear error naming the engine:\n{}",
        worker.output.text()
    );
    assert!(
        worker.output.contains("claiming no runs until it answers"),
        "{}",
        worker.output.text()
    );

    // The engine appears: the worker takes the run and completes it.
    proxy.open();
    let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_completed_by(&done, 1, &worker.id);
    assert!(
        worker.output.contains("the Docker engine answers again"),
        "{}",
        worker.output.text()
    );
    proxy.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_lost_mid_run_hands_the_run_back_and_the_worker_resumes_when_it_returns() {
    if !docker_or_skip("an_engine_lost_mid_run") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let mut proxy = DockerProxy::new();
    proxy.open();
    let mut worker = Worker::start(
        &server,
        "flaky-engine",
        &["--docker-host", &proxy.docker_host()],
    );
    // Long enough to be seen running and lost, short enough to be run again.
    let run = nap(&client, 6).await;
    wait_until_container_runs(&client, &run.id, RUN_TIMEOUT).await;

    proxy.close().await;
    let handed_back = wait_for_run(
        &client,
        &run.id,
        Duration::from_secs(30),
        "handed back",
        |r| r.current_attempt == 2 || r.state.is_terminal(),
    )
    .await;
    assert_handed_back(
        &handed_back,
        &worker.id,
        "the Docker engine became unreachable",
    );
    // Without its engine the worker keeps heartbeating and claims nothing.
    stays_pending_while_heartbeating(&client, &run.id, 2, &mut worker, Duration::from_secs(2))
        .await;

    // The engine returns: the worker removes the container it could not stop, then runs the
    // new attempt to completion.
    proxy.open();
    let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_completed_by(&done, 2, &worker.id);
    assert!(
        !container_exists(&format!("gyoza-{}-1", run.id)),
        "the first attempt's container was left behind"
    );
    assert!(
        worker.output.contains("the Docker engine answers again"),
        "{}",
        worker.output.text()
    );
    proxy.close().await;
}
