//! One run, from claim to cleanup: the seed's pipeline, in its order.
//!
//! ```text
//! pull image → prepare inputs → [steps before] → STARTED → run container
//!   (stream logs, GYOZA_EVENT lines → events) → [steps after] → COMPLETED | FAILED → cleanup
//! ```
//!
//! Whatever goes wrong with the run becomes a FAILED event whose message tells the op's author
//! what to do; nothing here brings the worker down. A 400/409 answer to STARTED, COMPLETED or
//! FAILED means the server moved on (the run was cancelled, retried or reclaimed): it is
//! logged, not treated as a failure. A run cancelled on the server has its container stopped
//! and reports nothing (the server already says CANCELLED).
//!
//! A run this worker cannot finish through no fault of the op is *handed back*
//! (`POST /runs/{id}/release`): the server requeues it as a new attempt without using its
//! retry budget. That happens when the worker shuts down (a run whose container has not
//! started yet is handed back at once, a running one once the shutdown grace period is over
//! and its container stopped) and when the Docker engine cannot be reached.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gyoza_core::api::{AddEventRequest, OpRunView, ReleaseRequest};
use gyoza_core::client::{Client, ClientError};
use gyoza_core::{Constraints, OutputSpec, WorkerOpRun};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::agent::Shared;
use crate::docker::{ContainerSpec, RUN_LABEL, RunFailure, Stream, WORKER_LABEL};
use crate::events::{LogTail, parse_event_line, payload};
use crate::outputs::{check_outputs, read_outputs};

/// Where the run directory is mounted in the container.
pub const MOUNT_POINT: &str = "/gyoza";
/// How many trailing log lines a failure message quotes.
const TAIL_LINES: usize = 20;
/// Most log text kept in the context for steps.
const MAX_LOG_BYTES: usize = 1024 * 1024;

/// Everything the steps of one run share (the seed's `ExecutionContext`). This is also what
/// a wasm step receives and returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionContext {
    /// The run.
    pub run_id: String,
    /// The image to run.
    pub image: String,
    /// Hardware limits.
    pub constraints: Constraints,
    /// Inputs (written to inputs.json).
    pub inputs: Map<String, Value>,
    /// Outputs (read from outputs.json).
    pub outputs: Map<String, Value>,
    /// The container's environment.
    pub env_vars: BTreeMap<String, String>,
    /// Bind mounts, host path → container path.
    pub volumes: BTreeMap<String, String>,
    /// The container's output (the first MiB).
    pub logs: String,
    /// The container's exit code, once it ran.
    pub exit_code: Option<i64>,
    /// Free-form values steps pass to each other.
    pub extras: Map<String, Value>,
}

/// A pipeline step besides the built-in ones (a wasm step).
pub trait Step: Send + Sync {
    /// Its name, for logs and failure messages.
    fn name(&self) -> &str;
    /// Changes the context, or refuses with a message (which fails the run).
    fn run(&self, context: ExecutionContext) -> Result<ExecutionContext, String>;
}

/// Steps around the container run.
#[derive(Clone, Default)]
pub struct Steps {
    /// Run after inputs are prepared, before STARTED.
    pub before: Vec<Arc<dyn Step>>,
    /// Run after the container, before COMPLETED/FAILED.
    pub after: Vec<Arc<dyn Step>>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |steps: &[Arc<dyn Step>]| {
            steps
                .iter()
                .map(|s| s.name().to_owned())
                .collect::<Vec<_>>()
        };
        f.debug_struct("Steps")
            .field("before", &names(&self.before))
            .field("after", &names(&self.after))
            .finish()
    }
}

/// How a run ended on this worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Reported COMPLETED with these outputs.
    Completed(Map<String, Value>),
    /// Reported FAILED with this message.
    Failed(String),
    /// Handed back to the server for another attempt, for this reason.
    Released(String),
    /// Cancelled or reclaimed on the server; the container was stopped, nothing reported.
    Abandoned(String),
}

/// Why the pipeline did not reach a normal end.
enum Stop {
    /// Fail the run with this message.
    Fail(String),
    /// Hand the run back for another attempt, for this reason (not the op's fault).
    Release(String),
    /// The server moved on; report nothing.
    Abandon(String),
}

impl From<RunFailure> for Stop {
    fn from(failure: RunFailure) -> Self {
        if failure.engine_unreachable {
            Self::Release(failure.message)
        } else {
            Self::Fail(failure.message)
        }
    }
}

/// What may interrupt a run.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// The server cancelled or reclaimed the run: stop its container, report nothing.
    pub cancel: CancellationToken,
    /// The worker is shutting down: start no container, hand the run back if it has none yet.
    pub draining: CancellationToken,
    /// The shutdown grace period is over: stop the container and hand the run back.
    pub stopping: CancellationToken,
}

/// Runs `op` to its end and reports the result (COMPLETED, FAILED, or handed back; see
/// [`Signals`]).
pub async fn execute(
    shared: Arc<Shared>,
    op: WorkerOpRun,
    gpu: Option<u32>,
    signals: Signals,
) -> Outcome {
    let attempt = op.attempt.unwrap_or(1);
    let run_dir = shared.work_dir.join(format!("{}-{attempt}", op.id));
    let container = format!("gyoza-{}-{attempt}", op.id);
    let started = std::time::Instant::now();
    let result = stages(&shared, &op, gpu, &run_dir, &container, &signals).await;
    let outcome = match result {
        Ok(outputs) => match report(&shared.client, &op, completed(&outputs)).await {
            Reported::Yes => Outcome::Completed(outputs),
            Reported::Refused(why) => Outcome::Abandoned(why),
        },
        Err(Stop::Fail(message)) => match report(&shared.client, &op, failed(&message)).await {
            Reported::Yes => Outcome::Failed(message),
            Reported::Refused(why) => Outcome::Abandoned(why),
        },
        Err(Stop::Release(reason)) => match release(&shared, &op, &reason).await {
            Reported::Yes => Outcome::Released(reason),
            Reported::Refused(why) => Outcome::Abandoned(why),
        },
        Err(Stop::Abandon(why)) => Outcome::Abandoned(why),
    };
    // Cleanup: the container is already removed by the engine wrapper.
    if let Err(e) = tokio::fs::remove_dir_all(&run_dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(run_id = %op.id, dir = %run_dir.display(), error = %e, "cannot remove the run directory");
        }
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &outcome {
        Outcome::Completed(_) => {
            tracing::info!(run_id = %op.id, attempt, elapsed_ms, "run completed")
        }
        Outcome::Failed(message) => {
            tracing::warn!(run_id = %op.id, attempt, elapsed_ms, error = %message, "run failed")
        }
        Outcome::Released(reason) => {
            tracing::warn!(run_id = %op.id, attempt, elapsed_ms, reason = %reason, "run handed back to the server for another attempt")
        }
        Outcome::Abandoned(why) => {
            tracing::info!(run_id = %op.id, attempt, elapsed_ms, reason = %why, "run abandoned: the server moved on")
        }
    }
    outcome
}

fn completed(outputs: &Map<String, Value>) -> AddEventRequest {
    AddEventRequest {
        event_type: "COMPLETED".into(),
        msg: json!("Completed"),
        payload: Some(payload([("outputs", Value::Object(outputs.clone()))])),
        attempt: None,
    }
}

fn failed(message: &str) -> AddEventRequest {
    AddEventRequest {
        event_type: "FAILED".into(),
        msg: json!(first_line(message)),
        payload: Some(payload([("error_message", json!(message))])),
        attempt: None,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

async fn stages(
    shared: &Arc<Shared>,
    op: &WorkerOpRun,
    gpu: Option<u32>,
    run_dir: &std::path::Path,
    container: &str,
    signals: &Signals,
) -> Result<Map<String, Value>, Stop> {
    let cancel = &signals.cancel;
    // 1. Pull image.
    shared.engine.ensure_image(&op.image, shared.pull).await?;

    // 2. Prepare inputs: a directory of its own, mounted at /gyoza.
    let mut context = ExecutionContext {
        run_id: op.id.clone(),
        image: op.image.clone(),
        constraints: op.constraints.clone(),
        inputs: op.inputs.clone(),
        ..ExecutionContext::default()
    };
    tokio::fs::create_dir_all(run_dir).await.map_err(|e| {
        Stop::Fail(format!(
            "worker error: cannot create the run directory {}: {e}",
            run_dir.display()
        ))
    })?;
    let host_dir = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    context
        .volumes
        .insert(host_dir.display().to_string(), MOUNT_POINT.to_owned());
    context.env_vars.extend([
        (
            "GYOZA_INPUT_PATH".to_owned(),
            format!("{MOUNT_POINT}/inputs.json"),
        ),
        (
            "GYOZA_OUTPUT_PATH".to_owned(),
            format!("{MOUNT_POINT}/outputs.json"),
        ),
        ("GYOZA_RUN_ID".to_owned(), op.id.clone()),
    ]);
    context
        .extras
        .insert("gyoza_dir".into(), json!(host_dir.display().to_string()));

    // 3. Steps before the container; they may change inputs, environment, mounts, image.
    context = run_steps(&shared.steps.before, context).await?;
    write_inputs(run_dir, &context.inputs).await?;
    if context.image != op.image {
        shared
            .engine
            .ensure_image(&context.image, shared.pull)
            .await?;
    }
    let output_specs = output_specs(&shared.client, &op.id).await;
    if signals.draining.is_cancelled() {
        return Err(Stop::Release(
            "shutting down (the run's container had not started)".into(),
        ));
    }

    // 4. STARTED.
    let mut started = payload([("worker_id", json!(shared.worker_id))]);
    if let Some(gpu) = gpu {
        started.insert("gpu_id".into(), json!(gpu));
    }
    let event = AddEventRequest {
        event_type: "STARTED".into(),
        msg: json!(format!("Started on worker {}", shared.worker_id)),
        payload: Some(started),
        attempt: None,
    };
    if let Reported::Refused(why) = report(&shared.client, op, event).await {
        return Err(Stop::Abandon(why));
    }
    if cancel.is_cancelled() {
        return Err(Stop::Abandon(
            "cancelled before its container started".into(),
        ));
    }

    // 5. Run the container, forwarding event lines in order as they come.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel::<AddEventRequest>(1024);
    let forwarder = tokio::spawn(forward_events(
        shared.client.clone(),
        op.id.clone(),
        op.attempt,
        events_rx,
    ));
    // The container's output also goes to the server, in batches, while the run goes.
    let (log_tx, log_rx) = tokio::sync::mpsc::channel::<String>(4096);
    let shipper = tokio::spawn(ship_logs(
        shared.client.clone(),
        op.id.clone(),
        op.attempt,
        log_rx,
    ));
    let mut tail = LogTail::new(TAIL_LINES);
    let mut logs = String::new();
    let run_id = op.id.clone();
    let mut on_line = |stream: Stream, line: String| {
        tail.push(&line);
        if log_tx.try_send(format!("{line}\n")).is_err() {
            tracing::warn!(run_id = %run_id, "log shipping is behind; a line was not sent to the server");
        }
        if logs.len() + line.len() < MAX_LOG_BYTES {
            logs.push_str(&line);
            logs.push('\n');
        }
        if stream == Stream::Stdout {
            match parse_event_line(&line) {
                Ok(Some(event)) => {
                    if events_tx.try_send(event).is_err() {
                        tracing::warn!(run_id = %run_id, "too many events queued; one dropped");
                    }
                    return;
                }
                Ok(None) => {}
                Err(why) => tracing::warn!(run_id = %run_id, line = %line, "{why}"),
            }
        }
        tracing::info!(target: "gyoza_worker::container", run_id = %run_id, stream = ?stream, "{line}");
    };
    let spec = ContainerSpec {
        name: container.to_owned(),
        image: context.image.clone(),
        env: context
            .env_vars
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        binds: context
            .volumes
            .iter()
            .map(|(host, target)| format!("{host}:{target}"))
            .collect(),
        memory_mb: context.constraints.ram_mb,
        cpus: context.constraints.cpu,
        gpu,
        labels: HashMap::from([
            (RUN_LABEL.to_owned(), op.id.clone()),
            (WORKER_LABEL.to_owned(), shared.worker_id.clone()),
        ]),
    };
    let stop = async {
        tokio::select! {
            () = cancel.cancelled() => {},
            () = signals.stopping.cancelled() => {},
        }
    };
    let exit = shared
        .engine
        .run(&spec, shared.stop_timeout, &mut on_line, stop)
        .await;
    // Closing the channels ends the forwarder and the shipper once they have sent what the
    // container printed.
    drop(events_tx);
    drop(log_tx);
    if forwarder.await.is_err() {
        tracing::warn!(run_id = %op.id, "event forwarder ended abnormally");
    }
    if shipper.await.is_err() {
        tracing::warn!(run_id = %op.id, "log shipper ended abnormally");
    }
    let exit = exit?;
    if cancel.is_cancelled() {
        return Err(Stop::Abandon(
            "cancelled on the server; container stopped".into(),
        ));
    }
    if exit.stopped {
        return Err(Stop::Release(format!(
            "shutting down (the run did not finish within the {:?} shutdown grace period; its container was stopped)",
            shared.shutdown_grace
        )));
    }
    context.exit_code = Some(exit.exit_code);
    context.logs = logs;

    // The outcome of the container, before steps see it.
    let mut container_error = None;
    if exit.oom_killed {
        container_error = Some(match context.constraints.ram_mb {
            Some(mb) if mb > 0 => format!(
                "the container was OOM-killed: it exceeded its memory limit of {mb} MB \
                 (constraints.ram_mb); raise ram_mb or make the op use less memory"
            ),
            _ => "the container was OOM-killed by the kernel: the worker ran out of memory \
                  (the run had no memory limit; set constraints.ram_mb)"
                .to_owned(),
        });
    } else if exit.exit_code != 0 {
        let signal = if exit.exit_code > 128 && exit.exit_code < 160 {
            format!(" (killed by signal {})", exit.exit_code - 128)
        } else {
            String::new()
        };
        let lines = if tail.is_empty() {
            "(the container printed nothing)".to_owned()
        } else {
            tail.text()
        };
        container_error = Some(format!(
            "the container exited with code {}{signal}; last log lines:\n{lines}",
            exit.exit_code
        ));
    } else {
        match read_outputs(&run_dir.join("outputs.json")) {
            Ok(outputs) => context.outputs = outputs,
            Err(message) => container_error = Some(message),
        }
    }

    // 6. Steps after the container.
    context = run_steps(&shared.steps.after, context).await?;
    if let Some(message) = container_error {
        return Err(Stop::Fail(message));
    }
    if let Some((definition, specs)) = output_specs {
        if let Err(problems) = check_outputs(&specs, &context.outputs) {
            return Err(Stop::Fail(format!(
                "the outputs do not match the output specs of definition {definition}: {}",
                problems.join("; ")
            )));
        }
    }
    Ok(context.outputs)
}

async fn write_inputs(run_dir: &std::path::Path, inputs: &Map<String, Value>) -> Result<(), Stop> {
    let text = serde_json::to_vec_pretty(inputs)
        .map_err(|e| Stop::Fail(format!("worker error: cannot encode the inputs: {e}")))?;
    tokio::fs::write(run_dir.join("inputs.json"), text)
        .await
        .map_err(|e| Stop::Fail(format!("worker error: cannot write inputs.json: {e}")))
}

/// Runs `steps` in order on a blocking thread each (a wasm step computes, it does not await).
async fn run_steps(
    steps: &[Arc<dyn Step>],
    mut context: ExecutionContext,
) -> Result<ExecutionContext, Stop> {
    for step in steps {
        let step = Arc::clone(step);
        let name = step.name().to_owned();
        let result = tokio::task::spawn_blocking(move || step.run(context)).await;
        context = match result {
            Ok(Ok(context)) => context,
            Ok(Err(message)) => {
                return Err(Stop::Fail(format!(
                    "pipeline step '{name}' failed: {message}"
                )));
            }
            Err(_) => {
                return Err(Stop::Fail(format!("pipeline step '{name}' crashed")));
            }
        };
    }
    Ok(context)
}

/// The output specs of the run's definition, if it has one. Best effort: when the server
/// cannot say, the outputs go unchecked rather than a good run failing.
async fn output_specs(
    client: &Client,
    run_id: &str,
) -> Option<(String, BTreeMap<String, OutputSpec>)> {
    let run = match client.get_run(run_id).await {
        Ok(run) => run,
        Err(e) => {
            tracing::warn!(run_id, error = %e, "cannot read the run; its outputs will not be checked");
            return None;
        }
    };
    let name = run.op_definition?;
    match client
        .get_definition(&name, run.op_definition_version.as_deref())
        .await
    {
        Ok(definition) if definition.output_specs.is_empty() => None,
        Ok(definition) => Some((
            format!("{}@{}", definition.id, definition.version),
            definition.output_specs,
        )),
        Err(e) => {
            tracing::warn!(run_id, definition = %name, error = %e, "cannot read the definition; outputs will not be checked");
            None
        }
    }
}

/// Whether the server took an event.
enum Reported {
    /// Recorded (or, after every retry, not deliverable: logged, nothing more to do).
    Yes,
    /// Refused with 400/404/409: the run is no longer ours to report on.
    Refused(String),
}

/// Delivers an event for `op`'s attempt (see [`deliver`]).
async fn report(client: &Client, op: &WorkerOpRun, mut event: AddEventRequest) -> Reported {
    event.attempt = op.attempt;
    let what = event.event_type.clone();
    deliver(&op.id, &what, || client.add_event(&op.id, &event)).await
}

/// Hands `op`'s attempt back to the server for another attempt (see [`deliver`]). A server
/// that does not number attempts has no release endpoint either: the run is reported FAILED
/// with the same message instead.
async fn release(shared: &Shared, op: &WorkerOpRun, reason: &str) -> Reported {
    let Some(attempt) = op.attempt else {
        let message = format!("worker {} handed the run back: {reason}", shared.worker_id);
        return report(&shared.client, op, failed(&message)).await;
    };
    let request = ReleaseRequest {
        worker_id: shared.worker_id.clone(),
        attempt,
        reason: Some(reason.to_owned()),
    };
    deliver(&op.id, "release", || {
        shared.client.release_run(&op.id, &request)
    })
    .await
}

/// Makes a call about run `run_id`, retrying with backoff while the server is unreachable (a
/// run's result must not be lost to a short outage). Refusals are returned, not retried: 409
/// means the attempt is no longer current (fencing).
async fn deliver<F, Fut>(run_id: &str, what: &str, mut call: F) -> Reported
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<OpRunView, ClientError>>,
{
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=10 {
        match call().await {
            Ok(_) => return Reported::Yes,
            Err(e) if refused(&e) => {
                let detail = e.detail().unwrap_or_default().to_owned();
                tracing::info!(run_id, what, detail = %detail, "the server refused: the run was cancelled, retried or reclaimed meanwhile");
                return Reported::Refused(detail);
            }
            Err(e) if e.is_transient() && attempt < 10 => {
                tracing::warn!(run_id, what, attempt, error = %e, "cannot report; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                tracing::error!(run_id, what, error = %e, "cannot report; giving up");
                return Reported::Yes;
            }
        }
    }
    Reported::Yes
}

fn refused(e: &ClientError) -> bool {
    e.status()
        .is_some_and(|s| matches!(s.as_u16(), 400 | 404 | 409))
}

/// Bytes of output sent in one batch at most.
const LOG_BATCH_BYTES: usize = 64 * 1024;

/// Sends the container's output to the server (`POST /runs/{id}/logs`) in batches: whatever
/// arrived within half a second, or 64 KiB. A batch that cannot be delivered after a few
/// tries is dropped with a warning: the run must not wait on its log.
async fn ship_logs(
    client: Client,
    run_id: String,
    attempt: Option<u32>,
    mut lines: tokio::sync::mpsc::Receiver<String>,
) {
    let mut open = true;
    while open {
        let Some(first) = lines.recv().await else {
            break;
        };
        let mut batch = first;
        let deadline = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(deadline);
        while batch.len() < LOG_BATCH_BYTES {
            tokio::select! {
                () = &mut deadline => break,
                line = lines.recv() => match line {
                    Some(line) => batch.push_str(&line),
                    None => { open = false; break }
                },
            }
        }
        let mut delay = Duration::from_millis(200);
        for attempt_no in 1..=3 {
            match client.append_log(&run_id, attempt, &batch).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt_no < 3 => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::warn!(run_id = %run_id, error = %e, bytes = batch.len(), "container output not sent to the server");
                    break;
                }
            }
        }
    }
}

/// Sends the container's events in order; a refused or undeliverable one is logged and
/// skipped (an op's progress report is not worth stalling its run for).
async fn forward_events(
    client: Client,
    run_id: String,
    attempt: Option<u32>,
    mut events: tokio::sync::mpsc::Receiver<AddEventRequest>,
) {
    while let Some(mut event) = events.recv().await {
        event.attempt = attempt;
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=3 {
            match client.add_event(&run_id, &event).await {
                Ok(_) => break,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::warn!(run_id = %run_id, event = %event.event_type, error = %e, "container event not recorded");
                    break;
                }
            }
        }
    }
}
