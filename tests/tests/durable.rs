//! End-to-end: a worker never drops a run's result, and one worker process holds an id.
//!
//! Real server processes (stopped and restarted on the same port and data, some with a
//! rotated key), real workers (killed with SIGKILL, restarted on their state directory, two
//! started on one id or one directory), real containers on the real Docker engine.

use std::path::Path;
use std::time::{Duration, Instant};

use gyoza_core::OpRunState;
use gyoza_core::api::OpRunView;
use gyoza_e2e::{
    API_KEY, Server, Worker, container_running, deploy_nap, docker_or_skip, free_port, image_run,
    nap, wait_for_run, wait_until_container_runs, wait_until_terminal, worker_id,
};
use serde_json::{Map, Value, json};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// A server restartable on `data` at `port`, with the worker timeout the tests use: longer
/// than a worker's longest pause between heartbeats (30 s), shorter than the outages.
fn server_at(data: &Path, port: u16, key: &str, extra: &[&str]) -> Server {
    let mut flags = vec!["--worker-timeout", "35"];
    flags.extend_from_slice(extra);
    Server::start_at(data, port, key, &flags)
}

/// Waits until `done` holds, or panics after `timeout` saying `what`.
async fn eventually(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (within {timeout:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The run completed in its first and only attempt, by `worker`.
fn completed_once(run: &OpRunView, worker: &str) {
    assert_eq!(run.state, OpRunState::Completed, "{:#?}", run.attempts);
    assert_eq!(
        (run.current_attempt, run.attempts.len()),
        (1, 1),
        "the result was lost and the op ran again: {:#?}",
        run.attempts
    );
    assert_eq!(run.execution_summary.worker_id.as_deref(), Some(worker));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_outlives_a_server_outage_and_a_rotated_key_and_arrives_once() {
    if !docker_or_skip("a_result_outlives_a_server_outage") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let server = server_at(data.path(), port, API_KEY, &[]);
    let client = server.client();
    deploy_nap(&client, json!({"max_attempts": 1})).await;
    let worker = Worker::start(&server, "outage", &[]);
    let run = nap(&client, 4).await;
    wait_until_container_runs(&client, &run.id, RUN_TIMEOUT).await;

    // The server goes away while the op runs; the op finishes meanwhile.
    drop(server);
    let outage = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the op's container never ended",
        || !container_running(&run.id),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the worker never said it keeps the result",
        || worker.output.contains("cannot deliver the result yet"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Back with a rotated key: every call of the worker gets 401 (a worker that took 401 for
    // a decision dropped its result here at once, whatever its retry budget).
    let rotated = server_at(data.path(), port, "rotated-key", &[]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    drop(rotated);
    // Back with the worker's key, more than a worker timeout after the worker's last
    // heartbeat: a server that counted silence from there would reap the run at once.
    tokio::time::sleep(Duration::from_secs(40).saturating_sub(outage.elapsed())).await;
    let server = server_at(data.path(), port, API_KEY, &[]);
    let client = server.client();
    let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    completed_once(&done, &worker.id);
    assert_eq!(
        done.outputs.get("slept"),
        Some(&json!(true)),
        "{:?}",
        done.outputs
    );
    let output = worker.output.text();
    assert_eq!(
        output.matches("claimed run").count(),
        1,
        "the op ran once:\n{output}"
    );
    assert!(!output.contains("gave up"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_before_its_result_was_delivered_sends_it_after_a_restart() {
    if !docker_or_skip("a_worker_killed_before_its_result_was_delivered") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let state = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let server = server_at(data.path(), port, API_KEY, &[]);
    let client = server.client();
    deploy_nap(&client, json!({"max_attempts": 1})).await;
    let id = worker_id("killed");
    let mut worker = Worker::start_on(&server, &id, state.path(), &[]);
    let run = nap(&client, 3).await;
    wait_until_container_runs(&client, &run.id, RUN_TIMEOUT).await;
    drop(server);
    eventually(
        Duration::from_secs(30),
        "the worker never kept the result",
        || worker.output.contains("cannot deliver the result yet"),
    )
    .await;
    // Killed with the result on its way: it is in the outbox, nowhere else.
    worker.kill();
    let outbox: Vec<_> = std::fs::read_dir(state.path().join("outbox"))
        .expect("outbox")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(outbox.len(), 1, "{outbox:?}");

    let server = server_at(data.path(), port, API_KEY, &[]);
    let client = server.client();
    let restarted = Worker::start_on(&server, &id, state.path(), &[]);
    let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    completed_once(&done, &id);
    assert!(
        restarted.output.contains("sending again a result"),
        "{}",
        restarted.output.text()
    );
    // Through the batch endpoint, which decided it: nothing was left to send on its own.
    assert!(
        restarted
            .output
            .contains("left undelivered in one request decided=1 left=0"),
        "{}",
        restarted.output.text()
    );
    eventually(
        Duration::from_secs(10),
        "the outbox was not emptied",
        || {
            std::fs::read_dir(state.path().join("outbox"))
                .map(|d| d.flatten().count() == 0)
                .unwrap_or(false)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_over_the_servers_body_limit_fail_the_run_with_their_size() {
    if !docker_or_skip("outputs_over_the_servers_body_limit") {
        return;
    }
    let server = Server::start_with(&["--max-body-bytes", "65536"]);
    let client = server.client();
    let _worker = Worker::start(&server, "bigout", &[]);
    let run = client
        .create_run(&image_run(
            "gyoza-example/bigout:latest",
            object(json!({"bytes": 200_000})),
        ))
        .await
        .expect("create run");
    let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, OpRunState::Failed, "{:#?}", done.attempts);
    let error = done.attempts[0]
        .execution_summary
        .error_message
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("the outputs were 200011 bytes and the server refused them as too large"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_worker_with_a_live_workers_id_refuses_to_start_and_touches_nothing() {
    if !docker_or_skip("a_second_worker_with_a_live_workers_id") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    deploy_nap(&client, json!({"max_attempts": 1})).await;
    let first = Worker::start(&server, "twin", &[]);
    let runs = [nap(&client, 6).await, nap(&client, 6).await];
    for run in &runs {
        wait_until_container_runs(&client, &run.id, RUN_TIMEOUT).await;
    }
    // Same id, its own state directory (another instance token): refused, exits non-zero.
    let other_state = tempfile::tempdir().expect("temp dir");
    let mut second = Worker::start_on(&server, &first.id, other_state.path(), &[]);
    let exited = second.wait_exit(Duration::from_secs(20));
    assert_eq!(exited, Some(false), "{}", second.output.text());
    let said = second.output.text();
    assert!(
        said.contains(&format!(
            "worker id '{}' is in use by another live worker process",
            first.id
        )) && said.contains("s ago"),
        "{said}"
    );
    assert!(!said.contains("removing a container"), "{said}");
    for run in &runs {
        assert!(
            container_running(&run.id),
            "the first worker's container of {} was removed",
            run.id
        );
    }
    for run in &runs {
        let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
        completed_once(&done, &first.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_worker_on_a_state_directory_in_use_exits_at_once() {
    let server = Server::start();
    let state = tempfile::tempdir().expect("temp dir");
    let first = Worker::start_on(&server, &worker_id("dir-a"), state.path(), &[]);
    eventually(
        Duration::from_secs(20),
        "the first worker never started",
        || first.output.contains("gyoza worker started"),
    )
    .await;
    let mut second = Worker::start_on(&server, &worker_id("dir-b"), state.path(), &[]);
    let exited = second.wait_exit(Duration::from_secs(20));
    assert_eq!(exited, Some(false), "{}", second.output.text());
    let said = second.output.text();
    assert!(
        said.contains(&format!(
            "another gyoza worker is running on the state directory {}",
            state.path().display()
        )),
        "{said}"
    );
    let workers = server.client().list_workers().await.expect("workers");
    assert!(
        workers.iter().all(|w| w.worker.id != worker_id("dir-b")),
        "the second worker heartbeated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_with_6_mib_inputs_keep_their_worker_active() {
    if !docker_or_skip("two_runs_with_6_mib_inputs") {
        return;
    }
    let server = Server::start_with(&["--worker-timeout", "10"]);
    let client = server.client();
    let worker = Worker::start(&server, "big-inputs", &[]);
    let blob = "x".repeat(6 * 1024 * 1024);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut create = image_run(
            "gyoza-example/sleep:latest",
            object(json!({"seconds": 12, "blob": blob})),
        );
        create.retry_policy = Some(gyoza_core::RetryPolicy {
            max_attempts: 1,
            backoff_ms: 0,
        });
        runs.push(client.create_run(&create).await.expect("create run"));
    }
    for run in &runs {
        wait_for_run(&client, &run.id, RUN_TIMEOUT, "RUNNING", |r| {
            r.state == OpRunState::Running
        })
        .await;
    }
    // Longer than the worker timeout while both run: the worker stays active.
    for _ in 0..12 {
        let workers = client.list_workers().await.expect("workers");
        let me = workers
            .iter()
            .find(|w| w.worker.id == worker.id)
            .expect("the worker is listed");
        assert!(
            me.active,
            "the worker went inactive:\n{}",
            worker.output.text()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for run in &runs {
        let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
        completed_once(&done, &worker.id);
    }
    assert!(
        !worker.output.contains("too large"),
        "{}",
        worker.output.text()
    );
}
