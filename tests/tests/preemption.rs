//! Preemption on the real Docker engine: a worker full of low-priority preemptible runs gets
//! a high-priority run; the `priority` strategy with `preempt=true` evicts the most recently
//! started of them, the server FAILS its attempt as preempted and requeues it outside its
//! retry budget, the worker stops its container, the high-priority run completes, and the
//! victim completes later in a second attempt. Real processes throughout: server, worker,
//! dockerd.

use std::time::{Duration, Instant};

use gyoza_core::api::OpRunView;
use gyoza_core::client::Client;
use gyoza_core::{Constraints, EventType, OpRunState, RetryPolicy};
use gyoza_e2e::{
    API_KEY, Server, Worker, attempt_error, container_exists, docker_or_skip, image_run,
    wait_for_run, wait_until_container_runs, wait_until_terminal,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the low-priority runs sleep: long enough that the high-priority run, which gets
/// [`HIGH_BOUND`], could not complete in time by waiting for one of them to end.
const LOW_SECONDS: u64 = 30;
/// How long the high-priority run sleeps.
const HIGH_SECONDS: u64 = 2;
/// How soon after its creation the high-priority run must have COMPLETED.
const HIGH_BOUND: Duration = Duration::from_secs(15);

/// A 1-CPU run of the example sleep op that sleeps `seconds`, at `priority`, with one attempt
/// in its retry budget.
async fn sleeper(client: &Client, seconds: u64, priority: i64, preemptible: bool) -> OpRunView {
    let mut run = image_run(
        "gyoza-example/sleep:latest",
        serde_json::from_value(json!({ "seconds": seconds })).expect("inputs"),
    );
    run.priority = priority;
    run.preemptible = Some(preemptible);
    run.constraints = Some(Constraints {
        cpu: Some(1),
        ..Constraints::default()
    });
    run.retry_policy = Some(RetryPolicy {
        max_attempts: 1,
        backoff_ms: 0,
    });
    client.create_run(&run).await.expect("create run")
}

/// `GET /metrics`, as text (the client has no call for it).
async fn metrics(server: &Server) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .expect("connect to the server");
    let request =
        format!("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send GET /metrics");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read GET /metrics");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_high_priority_run_preempts_the_newest_low_priority_run_which_completes_later() {
    if !docker_or_skip("a_high_priority_run_preempts_the_newest_low_priority_run") {
        return;
    }
    let began = Instant::now();
    let server = Server::start_with(&[
        "--strategy",
        "priority",
        "--strategy-config",
        "preempt=true",
    ]);
    let client = server.client();
    // Two cores: two 1-CPU runs fill it (slots remain, so the worker keeps claiming).
    let worker = Worker::start(&server, "preemption", &["--cpu-cores", "2"]);

    // The worker fills up with low-priority preemptible runs, the second started after the
    // first (so that it is the most recently started: the victim).
    let older = sleeper(&client, LOW_SECONDS, 1, true).await;
    wait_until_container_runs(&client, &older.id, Duration::from_secs(30)).await;
    let newer = sleeper(&client, LOW_SECONDS, 1, true).await;
    wait_until_container_runs(&client, &newer.id, Duration::from_secs(30)).await;
    let victim_container = format!("gyoza-{}-1", newer.id);
    assert!(container_exists(&victim_container), "{victim_container}");

    // A high-priority run that needs one of the cores; from then on, when the victim's
    // container goes away.
    let submitted = Instant::now();
    let watched = victim_container.clone();
    let container_gone = tokio::task::spawn_blocking(move || {
        let deadline = submitted + HIGH_BOUND + Duration::from_secs(5);
        while container_exists(&watched) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        submitted.elapsed()
    });
    let high = sleeper(&client, HIGH_SECONDS, 9, false).await;
    let done = wait_for_run(&client, &high.id, HIGH_BOUND, "COMPLETED", |r| {
        r.state.is_terminal()
    })
    .await;
    let high_took = submitted.elapsed();
    assert_eq!(done.state, OpRunState::Completed, "{:?}", done.attempts);
    assert_eq!(done.attempts.len(), 1, "{:?}", done.attempts);
    assert_eq!(
        done.execution_summary.worker_id.as_deref(),
        Some(worker.id.as_str())
    );

    // The newer low-priority run was preempted for it: its first attempt FAILED, saying why,
    // and a second attempt was queued.
    let preempted = client.get_run(&newer.id).await.expect("get run");
    assert!(preempted.current_attempt >= 2, "{:?}", preempted.attempts);
    let attempts = client.get_attempts(&newer.id).await.expect("get attempts");
    let first = &attempts[0];
    assert_eq!(first.state, OpRunState::Failed, "{first:?}");
    assert!(first.preempted, "{first:?}");
    assert!(!first.worker_lost, "{first:?}");
    let why = format!("preempted by {} (priority 9) via priority", high.id);
    assert!(attempt_error(first).starts_with(&why), "{first:?}");
    let failed = first
        .events
        .iter()
        .find(|e| e.event_type == EventType::Failed)
        .unwrap_or_else(|| panic!("no FAILED event: {first:?}"));
    assert_eq!(failed.payload["preempted_by"], json!(high.id), "{failed:?}");
    assert_eq!(failed.payload["strategy"], json!("priority"), "{failed:?}");
    assert!(
        failed.payload["error_message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&why)),
        "{failed:?}"
    );
    let retried = attempts
        .iter()
        .flat_map(|a| &a.events)
        .find(|e| e.event_type == EventType::Retried)
        .unwrap_or_else(|| panic!("no RETRIED event: {attempts:?}"));
    assert_eq!(retried.payload["reason"], json!("preempted"), "{retried:?}");
    assert_eq!(
        retried.msg,
        json!("Requeued after it was preempted (1 of 3)"),
        "{retried:?}"
    );
    let preempted_at = first.finished_at.expect("a preempted attempt has ended");

    // Its container was stopped (and removed) by the worker, long before its sleep was over.
    let stopped_after = container_gone.await.expect("the container watch");
    assert!(
        !container_exists(&victim_container),
        "{victim_container} still exists"
    );
    assert!(
        stopped_after < HIGH_BOUND,
        "{victim_container} was removed only {stopped_after:?} after the high-priority run came"
    );
    let ran = first
        .execution_summary
        .duration_ms
        .expect("a started attempt has a duration");
    assert!(
        ran < (LOW_SECONDS - 5) * 1000,
        "the preempted attempt ran its whole sleep: {ran} ms"
    );
    // (By its watcher, "the run moved on to attempt 2", or by its heartbeat's answer,
    // whichever noticed first.)
    let stopping = |id: &str| {
        worker
            .output
            .text()
            .lines()
            .any(|l| l.contains(id) && l.contains("stopping the run"))
    };
    assert!(
        stopping(&newer.id),
        "the worker never said it stopped the preempted attempt:\n{}",
        worker.output.text()
    );

    // The older one is never preempted: it completes in its only attempt.
    let older_done = wait_until_terminal(&client, &older.id, Duration::from_secs(60)).await;
    assert_eq!(
        older_done.state,
        OpRunState::Completed,
        "{:?}",
        older_done.attempts
    );
    assert_eq!(older_done.attempts.len(), 1, "{:?}", older_done.attempts);
    assert!(!older_done.attempts[0].preempted);
    assert!(!stopping(&older.id) && !stopping(&high.id));

    // The victim completes in its second attempt, though its retry budget is one attempt:
    // the preemption did not use it.
    let victim = wait_until_terminal(&client, &newer.id, Duration::from_secs(90)).await;
    assert_eq!(victim.state, OpRunState::Completed, "{:?}", victim.attempts);
    assert_eq!(victim.retry_policy.max_attempts, 1);
    assert_eq!(victim.current_attempt, 2, "{:?}", victim.attempts);
    assert_eq!(victim.attempts.len(), 2, "{:?}", victim.attempts);
    let (first, second) = (&victim.attempts[0], &victim.attempts[1]);
    // The stale attempt's container did not overwrite what the server decided.
    assert_eq!(first.state, OpRunState::Failed, "{first:?}");
    assert!(first.preempted && attempt_error(first).starts_with(&why));
    assert_eq!(second.state, OpRunState::Completed, "{second:?}");
    assert!(!second.preempted);
    assert_eq!(
        second.outputs.get("slept"),
        Some(&json!(true)),
        "{second:?}"
    );
    let restarted = second.started_at.expect("the second attempt started");
    assert!(restarted > preempted_at);
    assert!(!container_exists(&format!("gyoza-{}-2", newer.id)));

    // One eviction, none refused, in GET /strategies and in /metrics.
    let list = client.strategies().await.expect("GET /strategies");
    assert_eq!(list.active, "priority");
    let priority = list
        .strategies
        .iter()
        .find(|s| s.name == "priority")
        .unwrap_or_else(|| panic!("priority is not listed: {list:?}"));
    assert_eq!(priority.evictions, 1, "{priority:?}");
    assert_eq!(priority.evictions_refused, 0, "{priority:?}");
    let metrics = metrics(&server).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "gyoza_strategy_evictions{strategy=\"priority\"} 1"),
        "{metrics}"
    );

    eprintln!(
        "high-priority run completed {:.1} s after its creation; the victim's container was \
         gone {:.1} s after it; the victim was requeued {:.1} s into its first attempt and \
         restarted {:.1} s later; {:.1} s in all",
        high_took.as_secs_f64(),
        stopped_after.as_secs_f64(),
        ran as f64 / 1000.0,
        (restarted - preempted_at).num_milliseconds() as f64 / 1000.0,
        began.elapsed().as_secs_f64()
    );
}
