//! Run timeouts on the real Docker engine: a worker stops an attempt's container once it has
//! run its `constraints.timeout_s`, the attempt FAILS `timed out after N s` and is retried per
//! the retry policy. Real processes throughout: server, worker, dockerd.

use std::time::Duration;

use gyoza_core::OpRunState;
use gyoza_core::api::OpRunCreateFromDefinition;
use gyoza_core::{Constraints, EventType};
use gyoza_e2e::{
    Server, Worker, attempt_error, container_exists, container_running, deploy_nap, docker_or_skip,
    wait_until_terminal,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_op_is_stopped_at_its_timeout_and_retried_until_its_attempts_run_out() {
    if !docker_or_skip("a_sleeping_op_is_stopped_at_its_timeout") {
        return;
    }
    // The server's own backstop waits ten minutes past the limit: what stops the container
    // here is the worker.
    let server = Server::start_with(&["--timeout-grace", "600"]);
    let client = server.client();
    deploy_nap(&client, json!({"max_attempts": 2, "backoff_ms": 0})).await;
    let _worker = Worker::start(&server, "timeouts", &[]);

    // A run of the definition may set its own timeout (the definition has none).
    let run = client
        .create_run_from_definition(
            "nap",
            None,
            &OpRunCreateFromDefinition {
                inputs: serde_json::from_value(json!({"seconds": 600})).expect("inputs"),
                priority: 5,
                constraints: Some(Constraints {
                    timeout_s: Some(2),
                    ..Constraints::default()
                }),
                ..OpRunCreateFromDefinition::default()
            },
        )
        .await
        .expect("create run");
    assert_eq!(run.constraints.timeout_s, Some(2));

    // Two attempts of at least 2 s each, stopped within seconds of their limit: far less
    // than the op's 600 s sleep and than the server's 600 s grace.
    let ended = wait_until_terminal(&client, &run.id, Duration::from_secs(90)).await;
    assert_eq!(ended.state, OpRunState::Failed, "{:?}", ended.attempts);
    assert_eq!(ended.attempts.len(), 2, "retried once, per its policy");
    for attempt in &ended.attempts {
        assert_eq!(attempt.state, OpRunState::Failed);
        assert_eq!(attempt_error(attempt), "timed out after 2 s", "{attempt:?}");
        assert!(!attempt.worker_lost, "a timeout is the op's failure");
        let ran = attempt
            .execution_summary
            .duration_ms
            .expect("a started attempt has a duration");
        assert!(ran >= 2_000, "stopped before its limit: {ran} ms");
        assert!(
            attempt
                .events
                .iter()
                .any(|e| e.event_type == EventType::Started),
            "{attempt:?}"
        );
    }
    // No container of either attempt is left, running or stopped.
    assert!(!container_running(&run.id));
    for attempt in 1..=2 {
        let name = format!("gyoza-{}-{attempt}", run.id);
        assert!(!container_exists(&name), "{name} was left behind");
    }
}
