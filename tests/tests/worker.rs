//! End-to-end: the real server, a real worker, real containers on a real Docker engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gyoza_core::api::{OpDefinitionCreate, OpRunCreate, OpRunCreateFromDefinition};
use gyoza_core::{Constraints, EventType, OpRunState, RetryPolicy};
use gyoza_e2e::{
    Server, Worker, attempt_error, container_running, docker_or_skip, image_run, wait_for_run,
    wait_until_container_runs, wait_until_terminal,
};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn definition(id: &str, image: &str, extra: Value) -> OpDefinitionCreate {
    let mut body = json!({"id": id, "version": "1.0.0", "image": image});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    serde_json::from_value(body).expect("definition")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_from_a_definition_completes_with_the_outputs_its_container_wrote() {
    if !docker_or_skip("a_run_from_a_definition_completes") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let worker = Worker::start(&server, "complete", &[]);
    client
        .upsert_definition(&definition(
            "progress",
            "gyoza-example/progress:latest",
            json!({
                "input_specs": {"name": {"type": "string"}, "size": {"type": "int", "required": false, "default": 3}},
                "output_specs": {"steps": {"type": "int"}, "echo": {"type": "object"}},
            }),
        ))
        .await
        .expect("upsert");
    let run = client
        .create_run_from_definition(
            "progress",
            None,
            &OpRunCreateFromDefinition {
                inputs: object(json!({"name": "gyoza"})),
                priority: 5,
                ..Default::default()
            },
        )
        .await
        .expect("create run");

    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(
        run.state,
        OpRunState::Completed,
        "{:?}",
        run.execution_summary
    );
    assert_eq!(run.outputs["steps"], json!(4));
    // The container saw the inputs with the definition's default applied.
    assert_eq!(run.outputs["echo"], json!({"name": "gyoza", "size": 3}));
    assert_eq!(run.progress, 100);
    let types: Vec<EventType> = run.events.iter().map(|e| e.event_type).collect();
    assert_eq!(types.first(), Some(&EventType::Started), "{types:?}");
    assert_eq!(types.last(), Some(&EventType::Completed), "{types:?}");
    assert!(types.contains(&EventType::Info), "{types:?}");
    let progress: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e.event_type == EventType::Progress)
        .map(|e| &e.msg)
        .collect();
    assert_eq!(progress, [&json!(10), &json!(40), &json!(70), &json!(100)]);
    assert!(
        run.events
            .iter()
            .any(|e| e.event_type == EventType::Info && e.msg == json!("warming up"))
    );
    assert_eq!(
        run.execution_summary.worker_id.as_deref(),
        Some(worker.id.as_str())
    );
    assert!(run.execution_summary.duration_ms.is_some());
    let started = &run.events[0];
    assert_eq!(started.payload["worker_id"], json!(worker.id));
    // The worker shipped the container's output to the server.
    let logs = client.logs(&run.id, None).await.expect("logs");
    assert!(logs.contains("progress: starting"), "{logs}");
    assert!(
        logs.contains("GYOZA_EVENT"),
        "event lines are part of the log too: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_op_is_retried_and_ends_failed_with_its_exit_code() {
    if !docker_or_skip("a_failing_op_is_retried") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "fail", &[]);
    client
        .upsert_definition(&definition(
            "fail",
            "gyoza-example/fail:latest",
            json!({"retry_policy": {"max_attempts": 2, "backoff_ms": 0}}),
        ))
        .await
        .expect("upsert");
    let run = client
        .create_run_from_definition(
            "fail",
            None,
            &OpRunCreateFromDefinition {
                inputs: object(json!({"exit_code": 3})),
                priority: 5,
                ..Default::default()
            },
        )
        .await
        .expect("create run");

    let run = wait_for_run(&client, &run.id, RUN_TIMEOUT, "FAILED", |r| {
        r.state == OpRunState::Failed
    })
    .await;
    assert_eq!(run.attempts.len(), 2, "two attempts, then FAILED");
    for attempt in &run.attempts {
        assert_eq!(attempt.state, OpRunState::Failed);
        let error = attempt
            .execution_summary
            .error_message
            .as_deref()
            .unwrap_or_default();
        assert!(error.contains("exited with code 3"), "{error}");
        // The last log lines, stdout and stderr, are quoted.
        assert!(error.contains("fail: about to fail"), "{error}");
        assert!(error.contains("the input file was unusable"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_run_stops_its_container_and_it_stays_cancelled() {
    if !docker_or_skip("cancelling_a_running_run") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let worker = Worker::start(&server, "cancel", &[]);
    let run = client
        .create_run(&image_run(
            "gyoza-example/sleep:latest",
            object(json!({"seconds": 300})),
        ))
        .await
        .expect("create run");
    wait_until_container_runs(&client, &run.id, RUN_TIMEOUT).await;

    let cancelled_at = Instant::now();
    let answer = client.cancel_run(&run.id).await.expect("cancel");
    assert_eq!(answer.state, OpRunState::Cancelled);
    while container_running(&run.id) {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(5),
            "the container still runs 5 s after the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_after = cancelled_at.elapsed();
    // Give the worker time to (wrongly) report anything, then check nothing changed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = client.get_run(&run.id).await.expect("get run");
    assert_eq!(run.state, OpRunState::Cancelled);
    assert_eq!(
        run.events.last().map(|e| e.event_type),
        Some(EventType::Cancelled)
    );
    assert!(
        worker.output.contains("stopping the run"),
        "the worker said nothing about stopping (stopped after {stopped_after:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_exceeds_its_memory_limit_fails_as_oom_killed() {
    if !docker_or_skip("a_run_that_exceeds_its_memory_limit") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "oom", &[]);
    let run = client
        .create_run(&OpRunCreate {
            image: "gyoza-example/memhog:latest".into(),
            priority: 5,
            inputs: object(json!({"mb": 256})),
            constraints: Some(Constraints {
                ram_mb: Some(32),
                ..Constraints::default()
            }),
            retry_policy: Some(RetryPolicy::default()),
            event_delivery: None,
            queue: None,
            labels: None,
            preemptible: None,
        })
        .await
        .expect("create run");
    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(run.state, OpRunState::Failed);
    let error = run.execution_summary.error_message.unwrap_or_default();
    assert!(error.contains("OOM-killed"), "{error}");
    assert!(error.contains("32 MB"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_that_break_the_output_specs_fail_the_run() {
    if !docker_or_skip("outputs_that_break_the_output_specs") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "specs", &[]);
    client
        .upsert_definition(&definition(
            "echo",
            "gyoza-example/echo:latest",
            json!({"output_specs": {"echo": {"type": "object"}, "count": {"type": "int"}, "run_id": {"type": "int"}}}),
        ))
        .await
        .expect("upsert");
    let run = client
        .create_run_from_definition("echo", None, &OpRunCreateFromDefinition::default())
        .await
        .expect("create run");
    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(run.state, OpRunState::Failed);
    let error = run.execution_summary.error_message.unwrap_or_default();
    assert!(error.contains("echo@1.0.0"), "{error}");
    assert!(error.contains("missing output 'count' (int)"), "{error}");
    assert!(
        error.contains("output 'run_id' must be int, got string"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_that_may_not_be_pulled_fails_with_a_hint() {
    if !docker_or_skip("a_missing_image") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "noimage", &["--pull", "never"]);
    let run = client
        .create_run(&image_run("gyoza-example/no-such-op:1", Map::new()))
        .await
        .expect("create run");
    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(run.state, OpRunState::Failed);
    let error = run.execution_summary.error_message.unwrap_or_default();
    assert!(
        error.contains("'gyoza-example/no-such-op:1' is not present on this worker"),
        "{error}"
    );
    assert!(error.contains("--pull"), "{error}");
    // Nothing was started: the failure happened before STARTED.
    assert!(
        !run.events
            .iter()
            .any(|e| e.event_type == EventType::Started)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_offers_its_overridden_resources_and_stops_on_sigterm() {
    if !docker_or_skip("the_worker_offers_its_overridden_resources") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let mut worker = Worker::start(
        &server,
        "resources",
        &[
            "--cpu-cores",
            "3",
            "--ram-mb",
            "2048",
            "--gpu",
            "0:8192:cuda,fake",
            "--tags",
            "e2e,docker",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let workers = client.list_workers().await.expect("list workers");
        if let Some(view) = workers.into_iter().find(|w| w.worker.id == worker.id) {
            break view;
        }
        assert!(Instant::now() < deadline, "the worker never heartbeated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(view.active);
    assert_eq!(view.worker.resources.cpu_cores, 3);
    assert_eq!(view.worker.resources.ram_mb, 2048);
    assert_eq!(view.worker.resources.gpus.len(), 1);
    assert_eq!(view.worker.resources.gpus[0].vram_mb, 8192);
    assert_eq!(view.worker.resources.gpus[0].tags, ["cuda", "fake"]);
    assert_eq!(view.worker.tags, ["e2e", "docker"]);
    assert!(worker.stop(), "the worker did not exit cleanly on SIGTERM");
    assert!(worker.output.contains("gyoza worker stopped"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_keeps_going_while_the_server_is_unreachable() {
    if !docker_or_skip("the_worker_keeps_going") {
        return;
    }
    // A port where nothing listens: every heartbeat fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let server = Server::start();
    let mut worker = {
        let mut unreachable = Worker::start(
            &server,
            "offline",
            &["--server-url", &format!("http://127.0.0.1:{port}")],
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !unreachable.has_exited(),
            "the worker gave up:\n{}",
            unreachable.output.text()
        );
        assert!(
            unreachable.output.contains(&format!(
                "cannot reach the gyoza server at http://127.0.0.1:{port}"
            )),
            "{}",
            unreachable.output.text()
        );
        unreachable
    };
    assert!(worker.stop());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_op_that_links_its_outputs_to_a_host_file_fails_and_gets_nothing_of_it() {
    if !docker_or_skip("an_op_that_links_its_outputs") {
        return;
    }
    // A JSON file on the worker's host, outside any run directory.
    let host = tempfile::tempdir().expect("tempdir");
    let secret = host.path().join("registry-credentials.json");
    std::fs::write(&secret, r#"{"token": "s3cr3t-host-token"}"#).expect("write secret");
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "link", &[]);
    let target = secret.display().to_string();
    let run = client
        .create_run(&image_run(
            "gyoza-example/link:latest",
            object(json!({ "target": target })),
        ))
        .await
        .expect("create run");
    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(run.state, OpRunState::Failed, "{run:?}");
    let error = run.attempts[0]
        .execution_summary
        .error_message
        .clone()
        .unwrap_or_default();
    assert!(error.contains("symbolic link"), "{error}");
    let everything = serde_json::to_string(&run).expect("encode");
    assert!(
        !everything.contains("s3cr3t-host-token"),
        "host content leaked: {everything}"
    );
    assert!(run.outputs.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_op_cannot_fork_past_the_workers_pids_limit() {
    if !docker_or_skip("an_op_cannot_fork_past_the_pids_limit") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "fork", &["--pids-limit", "32"]);
    let run = client
        .create_run(&image_run(
            "gyoza-example/fork:latest",
            object(json!({"count": 100})),
        ))
        .await
        .expect("create run");
    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(run.state, OpRunState::Completed, "{run:?}");
    let started = run.outputs["started"].as_u64().expect("started");
    assert!(
        (1..32).contains(&started),
        "the op started {started} processes under a limit of 32"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capability_is_given_back_only_when_the_run_asks_and_the_worker_allows() {
    if !docker_or_skip("a_capability_is_given_back_only_when_the_run_asks_and_the_worker_allows") {
        return;
    }
    let server = Server::start();
    let client = server.client();
    let chown = |capabilities: &[&str]| {
        let mut run = image_run("gyoza-example/chown:latest", Map::new());
        run.constraints = Some(Constraints {
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            ..Constraints::default()
        });
        run
    };

    // A worker that allows none: a run asking for CHOWN FAILS, naming it, before any container.
    let mut strict = Worker::start(&server, "caps-strict", &[]);
    let asked = client
        .create_run(&chown(&["CAP_CHOWN"]))
        .await
        .expect("create");
    let asked = wait_until_terminal(&client, &asked.id, RUN_TIMEOUT).await;
    assert_eq!(asked.state, OpRunState::Failed, "{asked:?}");
    let error = attempt_error(asked.attempts.last().expect("an attempt"));
    assert!(
        error.contains("does not grant: CHOWN") && error.contains("--allow-capabilities"),
        "{error}"
    );
    strict.stop();

    // A worker that allows CHOWN: the run that asks gets it; one that does not ask still has
    // every capability dropped.
    let _lenient = Worker::start(&server, "caps-lenient", &["--allow-capabilities", "chown"]);
    let granted = client.create_run(&chown(&["CHOWN"])).await.expect("create");
    let granted = wait_until_terminal(&client, &granted.id, RUN_TIMEOUT).await;
    assert_eq!(granted.state, OpRunState::Completed, "{granted:?}");
    assert_eq!(granted.outputs["chowned"], json!(true), "{granted:?}");
    let plain = client.create_run(&chown(&[])).await.expect("create");
    let plain = wait_until_terminal(&client, &plain.id, RUN_TIMEOUT).await;
    assert_eq!(plain.state, OpRunState::Completed, "{plain:?}");
    assert_eq!(
        plain.outputs["chowned"],
        json!(false),
        "a run that asked for nothing could chown: capabilities were not dropped"
    );
}

/// A TCP proxy in front of the server that holds the answer to every COMPLETED event for
/// [`LATE_ANSWER`] after the server sent it: the server has taken the result, the worker does
/// not know yet. Counts the answers it held.
async fn late_completion_proxy(server_port: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    let held = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await
            else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            // Set when the request on this connection is a COMPLETED event: one HTTP/1.1
            // connection carries one request at a time, so the next bytes back answer it.
            let completing = Arc::new(AtomicBool::new(false));
            let seen = Arc::clone(&completing);
            tokio::spawn(async move {
                let (mut buffer, mut tail) = (vec![0u8; 64 * 1024], Vec::new());
                while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                    // The marker may straddle two reads: search what this read adds to the
                    // end of the previous one.
                    tail.extend_from_slice(&buffer[..n]);
                    if tail.windows(MARKER.len()).any(|w| w == MARKER) {
                        seen.store(true, Ordering::SeqCst);
                        tail.clear();
                    }
                    let keep = tail.len().saturating_sub(32);
                    tail.drain(..keep);
                    if to_server.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
                    if completing.swap(false, Ordering::SeqCst) {
                        counter.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(LATE_ANSWER).await;
                    }
                    if to_client.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, held)
}

/// What a COMPLETED event's body holds (compact JSON, as the worker sends it).
const MARKER: &[u8] = br#""type":"COMPLETED""#;

/// How long [`late_completion_proxy`] holds the answer to a COMPLETED event: several of the
/// worker's heartbeats and cancellation checks.
const LATE_ANSWER: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_result_the_server_took_before_the_worker_heard_so_is_not_stopped() {
    if !docker_or_skip("a_run_whose_result_the_server_took") {
        return;
    }
    let server = Server::start();
    let (port, held) = late_completion_proxy(server.port()).await;
    let client = server.client();
    let run = client
        .create_run(&image_run(
            "gyoza-example/sleep:latest",
            object(json!({"seconds": 1})),
        ))
        .await
        .expect("create run");
    // Heartbeats and cancellation checks every 0.3 s: about ten of each see the run COMPLETED
    // on the server while the worker still waits for the answer to its COMPLETED event.
    let state = tempfile::tempdir().expect("state dir");
    let mut worker = Worker::start_at(
        &format!("http://127.0.0.1:{port}"),
        &gyoza_e2e::worker_id("late-answer"),
        state.path(),
        &[],
    );
    let done = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, OpRunState::Completed, "{done:?}");
    // Until the worker heard the answer and logged the run's end.
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !worker.output.contains("run completed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = worker.output.text();
    assert_eq!(
        held.load(Ordering::SeqCst),
        1,
        "the proxy held no answer:\n{log}"
    );
    assert!(log.contains("run completed"), "{log}");
    // The server answered every heartbeat in between with "stop this run" (it no longer
    // gives it to the worker) and every cancellation check with COMPLETED; a run whose
    // container is gone and whose result is on its way has nothing to stop.
    assert!(!log.contains("stopping the run"), "{log}");
    assert_eq!(done.attempts.len(), 1, "{done:?}");
    assert!(worker.stop());
}
