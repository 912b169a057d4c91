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
//! logged, not treated as a failure. The result (COMPLETED, FAILED, a hand-back) is kept in
//! the worker's outbox until the server decides on it (see [`crate::report`]). A run cancelled on the server has its container stopped
//! and reports nothing (the server already says CANCELLED).
//!
//! A run with a `constraints.timeout_s` has its container stopped once it has run that long
//! (counted from the container's start; the usual stop, SIGTERM then SIGKILL after the stop
//! timeout) and FAILS with `timed out after N s`, an ordinary failure the server retries per
//! the run's retry policy. The limit is the claim's (`op.constraints`), never a step's
//! changed constraints: the server enforces the same figure, plus a grace, as a backstop.
//!
//! A run this worker cannot finish through no fault of the op is *handed back*
//! (`POST /runs/{id}/release`): the server requeues it as a new attempt without using its
//! retry budget. That happens when the worker shuts down (a run whose container has not
//! started yet is handed back at once, a running one once the shutdown grace period is over
//! and its container stopped) and when the Docker engine cannot be reached.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gyoza_core::api::AddEventRequest;
use gyoza_core::client::Client;
use gyoza_core::{OutputSpec, WorkerOpRun};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::{self, Sender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerExit, ContainerSpec, RUN_LABEL, RunFailure, Stream, WORKER_LABEL};
use crate::events::{LogTail, parse_event_line};
use crate::outputs::{check_outputs, read_outputs, write_new_file};
use crate::report::{
    self, Reported, completed, deliver_result, failed, forward_events, release_entry, result_entry,
    ship_logs,
};
use crate::run_context::{RunContext, Signals};
use crate::step::{ExecutionContext, Step};

/// Where the run directory is mounted in the container.
pub const MOUNT_POINT: &str = "/gyoza";
/// How many trailing log lines a failure message quotes.
const TAIL_LINES: usize = 20;
/// Most log text kept in the context for steps.
const MAX_LOG_BYTES: usize = 1024 * 1024;

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

/// Runs `op` to its end and reports the result (COMPLETED, FAILED, or handed back; see
/// [`Signals`]). `settled` is cancelled when the run's container is gone and its result is
/// about to be reported: from then on there is nothing left to stop, and a server that has
/// taken the result (and so no longer gives the run to this worker) is no reason to stop it.
pub async fn execute(
    worker: &RunContext,
    op: WorkerOpRun,
    gpu: Option<u32>,
    signals: Signals,
    settled: &CancellationToken,
) -> Outcome {
    let attempt = Attempt::new(worker, &op, gpu, &signals);
    let started = Instant::now();
    let result = attempt.stages().await;
    settled.cancel();
    let outcome = report_outcome(worker, &op, result).await;
    cleanup(&op, &attempt.dir).await;
    log_outcome(&op, started.elapsed(), &outcome);
    outcome
}

/// The report stage: tells the server how the run ended (or hands it back).
async fn report_outcome(
    worker: &RunContext,
    op: &WorkerOpRun,
    result: Result<Map<String, Value>, Stop>,
) -> Outcome {
    let (entry, outcome) = match result {
        Ok(outputs) => (
            result_entry(op, completed(&outputs)),
            Outcome::Completed(outputs),
        ),
        Err(Stop::Fail(message)) => (result_entry(op, failed(&message)), Outcome::Failed(message)),
        Err(Stop::Release(reason)) => (
            release_entry(&worker.worker_id, op, &reason),
            Outcome::Released(reason),
        ),
        Err(Stop::Abandon(why)) => return Outcome::Abandoned(why),
    };
    // Kept in the outbox and retried until the server decides: never given up.
    match deliver_result(&worker.client, &worker.outbox, entry).await {
        Reported::Refused(why) => Outcome::Abandoned(why),
        Reported::Delivered | Reported::GaveUp => outcome,
    }
}

/// The cleanup stage: the run directory goes (the engine wrapper already removed the
/// container).
async fn cleanup(op: &WorkerOpRun, run_dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(run_dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(run_id = %op.id, dir = %run_dir.display(), error = %e, "cannot remove the run directory");
        }
    }
}

fn log_outcome(op: &WorkerOpRun, elapsed: Duration, outcome: &Outcome) {
    let attempt = op.attempt.unwrap_or(1);
    let elapsed_ms = elapsed.as_millis() as u64;
    match outcome {
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
}

/// One attempt of a run on this worker: what its stages share.
struct Attempt<'a> {
    /// What the worker gives every run.
    worker: &'a RunContext,
    op: &'a WorkerOpRun,
    /// The GPU the run was placed on, if it needs one.
    gpu: Option<u32>,
    /// Its directory, mounted at [`MOUNT_POINT`].
    dir: PathBuf,
    /// Its container's name.
    container: String,
    signals: &'a Signals,
}

impl<'a> Attempt<'a> {
    fn new(
        worker: &'a RunContext,
        op: &'a WorkerOpRun,
        gpu: Option<u32>,
        signals: &'a Signals,
    ) -> Self {
        let attempt = op.attempt.unwrap_or(1);
        Self {
            worker,
            op,
            gpu,
            dir: worker.work_dir.join(format!("{}-{attempt}", op.id)),
            container: format!("gyoza-{}-{attempt}", op.id),
            signals,
        }
    }

    /// The stages up to the report, in the seed's order; the outputs to report COMPLETED with.
    async fn stages(&self) -> Result<Map<String, Value>, Stop> {
        if let Some(refusal) = self
            .worker
            .sandbox
            .refusal(&self.op.constraints.capability_names())
        {
            return Err(Stop::Fail(refusal));
        }
        self.pull(&self.op.image).await?;
        let context = self.prepare_inputs().await?;
        let context = self.before_steps(context).await?;
        let output_specs = output_specs(&self.worker.client, &self.op.id).await;
        self.start().await?;
        let (context, container_error) = self.run_container(context).await?;
        self.after_steps(context, container_error, output_specs)
            .await
    }

    /// The pull stage: `image` present as the pull policy says.
    async fn pull(&self, image: &str) -> Result<(), Stop> {
        Ok(self
            .worker
            .engine
            .ensure_image(image, self.worker.pull)
            .await?)
    }

    /// The prepare-inputs stage: a directory of its own, mounted at /gyoza, and the context
    /// the steps and the container start from.
    async fn prepare_inputs(&self) -> Result<ExecutionContext, Stop> {
        let op = self.op;
        let run_dir = &self.dir;
        let mut context = ExecutionContext {
            run_id: op.id.clone(),
            image: op.image.clone(),
            constraints: op.constraints.clone(),
            inputs: op.inputs.clone(),
            ..ExecutionContext::default()
        };
        let made = async {
            tokio::fs::create_dir_all(run_dir).await?;
            // Owner-only: other users of the host do not read a run's inputs and outputs.
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).await
        };
        made.await.map_err(|e: std::io::Error| {
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
        Ok(context)
    }

    /// The before-steps stage: the steps may change inputs, environment, mounts and image;
    /// then inputs.json is written and a changed image pulled.
    async fn before_steps(&self, context: ExecutionContext) -> Result<ExecutionContext, Stop> {
        let context = run_steps(&self.worker.steps.before, context).await?;
        write_inputs(&self.dir, &context.inputs).await?;
        if context.image != self.op.image {
            self.pull(&context.image).await?;
        }
        Ok(context)
    }

    /// The start stage: STARTED, unless the worker is draining or the server moved on.
    async fn start(&self) -> Result<(), Stop> {
        if self.signals.draining.is_cancelled() {
            return Err(Stop::Release(
                "shutting down (the run's container had not started)".into(),
            ));
        }
        let event = report::started(&self.worker.worker_id, self.gpu);
        if let Reported::Refused(why) = report::report(&self.worker.client, self.op, event).await {
            return Err(Stop::Abandon(why));
        }
        if self.signals.cancel.is_cancelled() {
            return Err(Stop::Abandon(
                "cancelled before its container started".into(),
            ));
        }
        Ok(())
    }

    /// The run-container stage: the container runs, its event lines forwarded in order as
    /// they come and its output shipped in batches; the context gets its exit code and logs,
    /// and the container's failure (if it failed) is returned for after the steps.
    async fn run_container(
        &self,
        mut context: ExecutionContext,
    ) -> Result<(ExecutionContext, Option<String>), Stop> {
        let (mut lines, forwarding) = Lines::forward(&self.worker.client, self.op);
        let spec = self.container_spec(&context);
        let timeout = self.op.constraints.timeout();
        let timed_out = AtomicBool::new(false);
        // Polled first once the container has started, so the timeout's clock starts there
        // (the sleep is created at that first poll, not here).
        let stop = async {
            let limit = async {
                match timeout {
                    Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.signals.cancel.cancelled() => {},
                () = self.signals.stopping.cancelled() => {},
                () = limit => {
                    tracing::warn!(run_id = %self.op.id, timeout_s = timeout, "the run reached its timeout; stopping its container");
                    timed_out.store(true, Ordering::SeqCst);
                }
            }
        };
        let mut on_line = |stream: Stream, line: String| lines.take(stream, line);
        let exit = self
            .worker
            .engine
            .run(&spec, self.worker.stop_timeout, &mut on_line, stop)
            .await;
        let (tail, logs) = lines.finish();
        forwarding.join(&self.op.id).await;
        let exit = exit?;
        if self.signals.cancel.is_cancelled() {
            return Err(Stop::Abandon(
                "cancelled on the server; container stopped".into(),
            ));
        }
        if exit.stopped && timed_out.load(Ordering::SeqCst) {
            return Err(Stop::Fail(format!(
                "timed out after {} s",
                timeout.unwrap_or_default()
            )));
        }
        if exit.stopped {
            return Err(Stop::Release(format!(
                "shutting down (the run did not finish within the {:?} shutdown grace period; its container was stopped)",
                self.worker.shutdown_grace
            )));
        }
        context.exit_code = Some(exit.exit_code);
        context.logs = logs;
        let container_error = self.container_error(&exit, &mut context, &tail);
        Ok((context, container_error))
    }

    fn container_spec(&self, context: &ExecutionContext) -> ContainerSpec {
        ContainerSpec {
            name: self.container.clone(),
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
            gpu: self.gpu,
            labels: HashMap::from([
                (RUN_LABEL.to_owned(), self.op.id.clone()),
                (WORKER_LABEL.to_owned(), self.worker.worker_id.clone()),
            ]),
            sandbox: self.worker.sandbox.clone(),
            capabilities: self.op.constraints.capability_names(),
        }
    }

    /// The outcome of the container, before steps see it: why it failed, or (exit code 0)
    /// nothing, with its outputs read into `context`.
    fn container_error(
        &self,
        exit: &ContainerExit,
        context: &mut ExecutionContext,
        tail: &LogTail,
    ) -> Option<String> {
        if exit.oom_killed {
            return Some(match context.constraints.ram_mb {
                Some(mb) if mb > 0 => format!(
                    "the container was OOM-killed: it exceeded its memory limit of {mb} MB \
                     (constraints.ram_mb); raise ram_mb or make the op use less memory"
                ),
                _ => "the container was OOM-killed by the kernel: the worker ran out of memory \
                      (the run had no memory limit; set constraints.ram_mb)"
                    .to_owned(),
            });
        }
        if exit.exit_code != 0 {
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
            return Some(format!(
                "the container exited with code {}{signal}; last log lines:\n{lines}",
                exit.exit_code
            ));
        }
        match read_outputs(&self.dir.join("outputs.json"), self.worker.max_output_bytes) {
            Ok(outputs) => {
                context.outputs = outputs;
                None
            }
            Err(message) => Some(message),
        }
    }

    /// The after-steps stage: the steps see the container's outcome; then a failed container
    /// fails the run, and the outputs are checked against the definition's specs.
    async fn after_steps(
        &self,
        context: ExecutionContext,
        container_error: Option<String>,
        output_specs: Option<(String, BTreeMap<String, OutputSpec>)>,
    ) -> Result<Map<String, Value>, Stop> {
        let context = run_steps(&self.worker.steps.after, context).await?;
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
}

/// Where the container's lines go while it runs: the server's log and events (through the
/// forwarding tasks), the tail a failure message quotes, and the copy the steps see.
struct Lines {
    run_id: String,
    tail: LogTail,
    logs: String,
    log_tx: Sender<String>,
    events_tx: Sender<AddEventRequest>,
}

/// The tasks that send a running container's events and output to the server.
struct Forwarding {
    forwarder: JoinHandle<()>,
    shipper: JoinHandle<()>,
}

impl Lines {
    /// Lines for `op`'s container, with the tasks that forward them.
    fn forward(client: &Client, op: &WorkerOpRun) -> (Self, Forwarding) {
        let (events_tx, events_rx) = mpsc::channel::<AddEventRequest>(1024);
        let forwarder = tokio::spawn(forward_events(
            client.clone(),
            op.id.clone(),
            op.attempt,
            events_rx,
        ));
        let (log_tx, log_rx) = mpsc::channel::<String>(4096);
        let shipper = tokio::spawn(ship_logs(client.clone(), op.id.clone(), op.attempt, log_rx));
        let lines = Self {
            run_id: op.id.clone(),
            tail: LogTail::new(TAIL_LINES),
            logs: String::new(),
            log_tx,
            events_tx,
        };
        (lines, Forwarding { forwarder, shipper })
    }

    /// One line of the container's output.
    fn take(&mut self, stream: Stream, line: String) {
        let run_id = &self.run_id;
        self.tail.push(&line);
        if self.log_tx.try_send(format!("{line}\n")).is_err() {
            tracing::warn!(run_id = %run_id, "log shipping is behind; a line was not sent to the server");
        }
        if self.logs.len() + line.len() < MAX_LOG_BYTES {
            self.logs.push_str(&line);
            self.logs.push('\n');
        }
        if stream == Stream::Stdout {
            match parse_event_line(&line) {
                Ok(Some(event)) => {
                    if self.events_tx.try_send(event).is_err() {
                        tracing::warn!(run_id = %run_id, "too many events queued; one dropped");
                    }
                    return;
                }
                Ok(None) => {}
                Err(why) => tracing::warn!(run_id = %run_id, line = %line, "{why}"),
            }
        }
        tracing::info!(target: "gyoza_worker::container", run_id = %run_id, stream = ?stream, "{line}");
    }

    /// The end of the output: the tail and the kept logs. Closing the channels ends the
    /// forwarding tasks once they have sent what the container printed.
    fn finish(self) -> (LogTail, String) {
        (self.tail, self.logs)
    }
}

impl Forwarding {
    /// Waits until everything the container printed has been sent (or given up on).
    async fn join(self, run_id: &str) {
        if self.forwarder.await.is_err() {
            tracing::warn!(run_id, "event forwarder ended abnormally");
        }
        if self.shipper.await.is_err() {
            tracing::warn!(run_id, "log shipper ended abnormally");
        }
    }
}

async fn write_inputs(run_dir: &Path, inputs: &Map<String, Value>) -> Result<(), Stop> {
    let text = serde_json::to_vec_pretty(inputs)
        .map_err(|e| Stop::Fail(format!("worker error: cannot encode the inputs: {e}")))?;
    // Never through a link or over a file left in the directory.
    let dir = run_dir.to_path_buf();
    tokio::task::spawn_blocking(move || write_new_file(&dir, "inputs.json", &text))
        .await
        .map_err(|e| Stop::Fail(format!("worker error: cannot write inputs.json: {e}")))?
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
