//! A worker killed with SIGKILL mid-run: the server notices its silence, fails its attempt
//! as "worker … lost" and requeues the run, which another worker then completes.
//! Real processes throughout: server, two workers, dockerd.

use std::time::Duration;

use gyoza_core::OpRunState;
use gyoza_e2e::{
    Server, Worker, attempt_error, deploy_nap, docker_or_skip, nap, wait_for_run,
    wait_until_terminal,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_run_is_requeued_and_completed_by_another_worker() {
    if !docker_or_skip("a_killed_workers_run_is_requeued") {
        return;
    }
    // A 2 s worker timeout so that the test sees the reaper act quickly.
    let server = Server::start_with(&["--worker-timeout", "2"]);
    let client = server.client();
    deploy_nap(&client, json!({"max_attempts": 1})).await;
    let mut doomed = Worker::start(&server, "doomed", &[]);
    let run = nap(&client, 3).await;
    let running = |r: &gyoza_core::api::OpRunView| r.state == OpRunState::Running;
    wait_for_run(
        &client,
        &run.id,
        Duration::from_secs(60),
        "RUNNING",
        running,
    )
    .await;

    doomed.kill();
    let survivor = Worker::start(&server, "survivor", &[]);
    let run = wait_until_terminal(&client, &run.id, Duration::from_secs(90)).await;

    assert_eq!(run.state, OpRunState::Completed, "{:?}", run.attempts);
    assert_eq!(
        run.current_attempt, 2,
        "max_attempts 1, yet the lost attempt did not use it"
    );
    let lost = &run.attempts[0];
    assert!(lost.worker_lost);
    assert_eq!(lost.state, OpRunState::Failed);
    let error = attempt_error(lost);
    assert!(
        error.starts_with(&format!("worker {} lost (no heartbeat for", doomed.id)),
        "{error}"
    );
    assert_eq!(
        run.attempts[1].execution_summary.worker_id.as_deref(),
        Some(survivor.id.as_str())
    );
}
