//! SIGTERM of a worker: it stops claiming at once, lets its running containers finish for a
//! grace period (reporting them as usual), then stops the rest and hands their runs back; a
//! handed-back run gets a new attempt without using its retry budget and another worker
//! completes it. Real processes throughout: server, workers, dockerd.

use std::time::{Duration, Instant};

use gyoza_core::client::Client;
use gyoza_core::{EventType, OpRunState};
use gyoza_e2e::{
    Server, Worker, assert_completed_by, assert_handed_back, container_running, deploy_nap,
    docker_or_skip, nap, wait_until_container_runs, wait_until_terminal,
};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The sleep op with a retry budget of one attempt (and a long backoff): any requeue that
/// used the budget would leave the run FAILED.
async fn nap_definition(client: &Client) {
    deploy_nap(client, json!({"max_attempts": 1, "backoff_ms": 600000})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_finishes_within_the_grace_period_completes_and_nothing_new_is_claimed() {
    if !docker_or_skip("a_run_that_finishes_within_the_grace_period") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    nap_definition(&client).await;
    let mut worker = Worker::start(&server, "graceful", &["--shutdown-grace", "30"]);
    let run = nap(&client, 4).await;
    wait_until_container_runs(&client, &run.id, RUN_TIMEOUT).await;

    let signalled = Instant::now();
    worker.sigterm();
    // Created after the signal: a worker that is shutting down must not take it, although it
    // keeps heartbeating (and so stays a candidate for the scheduler) while its run finishes.
    let late = nap(&client, 1).await;
    let exited = tokio::task::block_in_place(|| worker.wait_exit(Duration::from_secs(40)));
    let took = signalled.elapsed();
    assert_eq!(exited, Some(true), "the worker did not exit cleanly");
    assert!(
        took >= Duration::from_secs(2),
        "the worker exited after {took:?}: it did not wait for its run"
    );

    let run = client.get_run(&run.id).await.expect("get run");
    assert_eq!(run.state, OpRunState::Completed, "{:?}", run.attempts);
    assert_eq!(run.current_attempt, 1);
    assert_eq!(run.outputs.get("slept"), Some(&json!(true)));
    assert_eq!(
        run.execution_summary.worker_id.as_deref(),
        Some(worker.id.as_str())
    );
    let late = client.get_run(&late.id).await.expect("get run");
    assert_eq!(
        late.state,
        OpRunState::Pending,
        "claimed while shutting down"
    );
    assert_eq!(late.attempts.len(), 1);
    assert!(
        worker
            .output
            .contains("running runs get the grace period to finish"),
        "{}",
        worker.output.text()
    );
    assert!(
        !worker.output.contains("grace period over"),
        "{}",
        worker.output.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_beyond_the_grace_period_is_handed_back_outside_its_retry_budget_and_completed_elsewhere()
 {
    if !docker_or_skip("a_run_beyond_the_grace_period_is_handed_back") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    nap_definition(&client).await;
    let mut leaving = Worker::start(&server, "leaving", &["--shutdown-grace", "2"]);
    // 8 s: longer than the 2 s grace, short enough for the second worker to finish it.
    let run = nap(&client, 8).await;
    wait_until_container_runs(&client, &run.id, RUN_TIMEOUT).await;

    let signalled = Instant::now();
    leaving.sigterm();
    let exited = tokio::task::block_in_place(|| leaving.wait_exit(Duration::from_secs(30)));
    let took = signalled.elapsed();
    assert_eq!(exited, Some(true), "the worker did not exit cleanly");
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}, before its grace period was over"
    );
    assert!(
        !container_running(&run.id),
        "the container outlived its worker"
    );

    let handed_back = client.get_run(&run.id).await.expect("get run");
    let error = assert_handed_back(&handed_back, &leaving.id, "shutting down");
    assert_eq!(handed_back.current_attempt, 2);
    assert_eq!(
        handed_back.available_at, None,
        "a hand-back must not wait for the retry backoff"
    );
    assert!(error.contains("grace period"), "{error}");
    let budget_used = handed_back
        .attempts
        .iter()
        .filter(|a| !a.worker_lost)
        .count();
    assert_eq!(
        budget_used, 1,
        "only the new attempt counts against max_attempts 1"
    );
    assert_eq!(
        handed_back.events.first().map(|e| e.event_type),
        Some(EventType::Retried)
    );
    assert!(
        leaving.output.contains("grace period over"),
        "{}",
        leaving.output.text()
    );

    let taker = Worker::start(&server, "taker", &[]);
    let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_completed_by(&done, 2, &taker.id);
    assert_eq!(done.outputs.get("slept"), Some(&json!(true)));
}
