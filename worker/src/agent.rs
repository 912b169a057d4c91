//! The worker's main loop (seed `gyoza.worker.runner`): heartbeat → claim → dispatch.
//!
//! Each tick sends a heartbeat with the runs in progress, then claims as many runs as there
//! are free slots (`--max-concurrent`), and starts each in its own task. An idle worker's
//! claim is a long poll (`?wait_ms=` the heartbeat interval): when nothing is claimable the
//! server holds it until a run the worker can take is submitted, so a run starts within
//! milliseconds of its submission, and an idle worker sends one heartbeat and one claim per
//! interval. A busy worker claims without waiting, right after its engine check (a run that
//! ends because the engine went away must not let a claim made on the earlier check take the
//! next run). A server
//! that does not wait (the original one) answers at once, and the worker asks again after the
//! interval, as before. The worker ticks again at once when it claimed runs and has slots
//! left, or when one of its runs ends. A watcher per run asks
//! the server for the run's state every `--cancel-check-interval`; when the run was cancelled,
//! retried or handed to another worker, its container is stopped (SIGTERM, SIGKILL after
//! `--stop-timeout`). An unreachable server slows the loop down (exponential backoff) but never
//! stops it.
//!
//! The Docker engine is checked before every claim: while it cannot be reached the worker
//! logs why, keeps heartbeating (so it stays visible and keeps its runs) and claims nothing;
//! runs whose engine went away under them are handed back to the server (see [`pipeline`]).
//! When the engine answers again the worker resumes claiming.
//!
//! At start the worker opens and locks its state directory (see [`crate::state`]); its
//! first heartbeat carries the directory's instance token, and a 409 to it (another live
//! worker process has this id) ends the worker with the server's message *before* it removes
//! leftover containers of its id (those are the other worker's). Results a previous life
//! left in the outbox are sent again at once, and reported as held until they are decided.
//!
//! On shutdown (SIGTERM, SIGINT) the worker stops claiming at once and keeps heartbeating
//! while its running runs get `--shutdown-grace` to finish; those that do are reported as
//! usual. Runs whose container had not started are handed back at once; when the grace
//! period is over, the remaining containers are stopped and their runs handed back too
//! (`POST /runs/{id}/release`: a new attempt elsewhere, outside the op's retry budget).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gyoza_core::api::HeartbeatRequest;
use gyoza_core::backoff::Backoff;
use gyoza_core::client::Client;
use gyoza_core::sync::lock;
use gyoza_core::{Capacity, OpRunState, Resources, WorkerOpRun};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::WorkerError;
use crate::config::WorkerConfig;
use crate::docker::Engine;
use crate::outbox::Outbox;
use crate::pipeline;
use crate::resources::{self, Overrides};
use crate::run_context::{RunContext, Signals};
use crate::state::StateDir;
use crate::step::Steps;

/// Longest pause between two heartbeats while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long shutdown waits, after the grace period, for stopped runs to be handed back (on
/// top of the containers' stop timeout).
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The worker's state: what its runs share, what it offers, and which runs it holds.
#[derive(Debug)]
struct Agent {
    /// What every run gets.
    context: RunContext,
    /// Period of the cancellation check of a running run.
    cancel_check_interval: Duration,
    /// Hardware offered.
    resources: Resources,
    running: Mutex<HashMap<String, Running>>,
    /// The token this worker's heartbeats carry (kept in the state directory).
    instance: String,
    /// The state directory, locked for as long as the worker runs.
    _state: StateDir,
}

#[derive(Debug, Clone)]
struct Running {
    op: WorkerOpRun,
    gpu: Option<u32>,
    cancel: CancellationToken,
    /// Cancelled once the run's container is gone and its result is being reported (see
    /// [`pipeline::execute`]): the run is still reported as held, but nothing stops it.
    settled: CancellationToken,
}

impl Agent {
    /// Stops the attempts the server says this worker does not hold (it gave the run to
    /// another worker or attempt, or the run ended): their containers must not run on.
    fn stop_unheld(&self, stop: &[gyoza_core::StopRun]) {
        let running = self.running();
        for unheld in stop {
            if let Some(run) = running.get(&unheld.id) {
                // A settled run's result may be what the server is answering about.
                if run.settled.is_cancelled() {
                    continue;
                }
                if unheld.attempt.is_none() || unheld.attempt == run.op.attempt {
                    // The same line as the run's own watcher: one act, one message.
                    tracing::info!(run_id = %unheld.id, attempt = ?unheld.attempt, reason = "the server does not give this run to this worker (heartbeat answer)", "stopping the run");
                    run.cancel.cancel();
                }
            }
        }
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        // Single inserts and removes: a panicking holder cannot leave the map inconsistent.
        lock(&self.running)
    }

    /// The GPU for a claimed run: the one the server placed it on, else (a server that does
    /// not say) [`Agent::pick_gpu`].
    fn gpu_for(&self, op: &WorkerOpRun) -> Option<u32> {
        op.gpu_id.or_else(|| self.pick_gpu(op))
    }

    /// The GPU for a run that needs VRAM: the tightest fit among what the running runs leave.
    fn pick_gpu(&self, op: &WorkerOpRun) -> Option<u32> {
        op.constraints.vram_mb.filter(|v| *v > 0)?;
        let mut free = Capacity {
            cpu: i64::MAX,
            ram_mb: i64::MAX,
            gpus: self
                .resources
                .gpus
                .iter()
                .map(|g| (g.id, g.vram_mb as i64))
                .collect(),
        };
        for running in self.running().values() {
            free.take(&running.op.constraints, running.gpu);
        }
        free.fit(&op.constraints).flatten().or_else(|| {
            // The server thought it fits; trust it with the GPU that has the most room.
            free.gpus.iter().max_by_key(|(_, f)| *f).map(|(id, _)| *id)
        })
    }
}

/// Whether the Docker engine answered the last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineState {
    /// Not checked yet.
    Unknown,
    /// It answered.
    Up,
    /// It did not.
    Down,
}

/// Runs the worker until `shutdown` completes.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let agent = Arc::new(start(&config).await?);
    resend_outbox(&agent);
    // Every run gets clones of these two (and a cancellation token of its own).
    let shutdown_signals = Signals::default();
    let mut tasks = JoinSet::new();
    // An error is a refusal before anything was claimed or cleaned up: nothing to hand back.
    claim_until(&agent, &config, &shutdown_signals, &mut tasks, shutdown).await?;
    shut_down(&agent, &config, &shutdown_signals, &mut tasks).await;
    tracing::info!("gyoza worker stopped");
    Ok(())
}

/// Sends again the results a previous life of this worker had not delivered (they are
/// reported as held meanwhile): the events in one request first, then what that did not
/// settle each in a task of its own.
fn resend_outbox(agent: &Arc<Agent>) {
    let entries = agent.context.outbox.entries();
    if entries.is_empty() {
        return;
    }
    for entry in &entries {
        tracing::info!(run_id = %entry.run_id, attempt = ?entry.attempt, what = entry.what(), "sending again a result not delivered before the worker stopped");
    }
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        let context = &agent.context;
        let left = crate::report::deliver_results(
            &context.client,
            &context.outbox,
            &context.worker_id,
            entries,
        )
        .await;
        for entry in left {
            let agent = Arc::clone(&agent);
            tokio::spawn(async move {
                let context = &agent.context;
                crate::report::deliver_result(&context.client, &context.outbox, entry).await;
            });
        }
    });
}

/// Sets the worker up from `config`: its state directory (locked), id, instance token,
/// outbox, work directory, server client, Docker engine, pipeline steps and resources.
async fn start(config: &WorkerConfig) -> Result<Agent, WorkerError> {
    let state_path = config.resolve_state_dir()?;
    let state = tokio::task::spawn_blocking(move || StateDir::open(&state_path))
        .await
        .map_err(|e| WorkerError::Config(format!("cannot open the state directory: {e}")))??;
    let worker_id = config.resolve_worker_id(&state)?;
    let instance = state.instance()?;
    let outbox = Arc::new(Outbox::open(&state.path().join("outbox"))?);
    let work_dir = config.resolve_work_dir(&state);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work_dir)
            .map_err(|source| WorkerError::Io {
                context: format!("cannot create the work directory {}", work_dir.display()),
                source,
            })?;
    }
    let client = Client::builder(config.server_url.clone())
        .api_key(config.api_key.clone())
        .timeout(Duration::from_secs(15))
        .build()?;
    // Only a malformed address is fatal: an engine that does not answer yet is waited for.
    let engine = Engine::new(config.docker_host.as_deref())?;
    let steps = match &config.pipeline {
        Some(path) => crate::steps::load_pipeline(path)?,
        None => Steps::default(),
    };
    let resources = resources::detect(&Overrides {
        cpu_cores: config.cpu_cores,
        ram_mb: config.ram_mb,
        gpus: config.gpus.clone(),
    });
    tracing::info!(
        worker_id = %worker_id,
        state_dir = %state.path().display(),
        undelivered = outbox.entries().len(),
        server = %client.base_url(),
        docker = %engine.address(),
        cpu_cores = resources.cpu_cores,
        ram_mb = resources.ram_mb,
        gpus = resources.gpus.len(),
        max_concurrent = config.max_concurrent,
        shutdown_grace = ?config.shutdown_grace,
        steps = ?steps,
        "gyoza worker started"
    );
    Ok(Agent {
        context: RunContext {
            worker_id,
            client,
            engine,
            work_dir,
            outbox,
            pull: config.pull,
            stop_timeout: config.stop_timeout,
            max_output_bytes: config.max_output_bytes,
            sandbox: crate::docker::Sandbox {
                pids_limit: config.pids_limit,
                network: config.container_network.clone(),
                default_memory_mb: config.default_memory_mb,
                allowed_capabilities: config.allowed_capabilities(),
            },
            shutdown_grace: config.shutdown_grace,
            steps,
        },
        cancel_check_interval: config.cancel_check_interval,
        resources,
        running: Mutex::new(HashMap::new()),
        instance,
        _state: state,
    })
}

/// Ticks (heartbeat, claim, dispatch) until `shutdown` completes, slowing down while the
/// server does not answer. Fails only on a 409 to a heartbeat before any tick of this
/// process went through: another live worker has its id (nothing was claimed or cleaned up
/// yet, so that worker's containers are untouched).
async fn claim_until(
    agent: &Arc<Agent>,
    config: &WorkerConfig,
    shutdown_signals: &Signals,
    tasks: &mut JoinSet<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let pause = heartbeat_backoff(config.heartbeat_interval);
    let mut failures: u32 = 0;
    let mut engine_state = EngineState::Unknown;
    // Whether a tick went through: then a 409 is another process's intrusion, not ours.
    let mut accepted = false;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while let Some(done) = tasks.try_join_next() {
            log_abnormal_end(done);
        }
        let started = tokio::time::Instant::now();
        // A claim waiting on the server is dropped on shutdown: claiming stops at once. (Runs
        // the server assigned as the request was dropped are requeued by its reconcile.)
        let ticked = tokio::select! {
            ticked = tick(agent, config, &mut engine_state, shutdown_signals, tasks) => ticked,
            () = &mut shutdown => return Ok(()),
        };
        let delay = match ticked {
            Ok(again) => {
                if failures > 0 {
                    tracing::info!("the server answers again");
                }
                failures = 0;
                accepted = true;
                match again {
                    true => Duration::ZERO,
                    false => config.heartbeat_interval.saturating_sub(started.elapsed()),
                }
            }
            Err(e) if id_in_use(&e) && !accepted => {
                // Never accepted: this process is the intruder.
                return Err(WorkerError::Config(format!(
                    "the server refused this worker: {}",
                    refusal_detail(&e)
                )));
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = pause.delay(failures);
                if id_in_use(&e) {
                    tracing::error!(detail = %refusal_detail(&e), "the server refuses this worker's heartbeats: another live worker process uses its id; will retry");
                } else {
                    tracing::warn!(error = %e, failures, retry_in = ?delay, "heartbeat or claim failed; will retry");
                }
                delay
            }
        };
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(delay) => {}
            // A run ended: its slot is free now.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_abnormal_end(done),
        }
    }
}

fn log_abnormal_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a run task ended abnormally");
    }
}

/// Stops claiming, lets the running runs finish within the grace period, then stops the
/// remaining containers and waits for their runs to be handed back.
async fn shut_down(
    agent: &Arc<Agent>,
    config: &WorkerConfig,
    shutdown_signals: &Signals,
    tasks: &mut JoinSet<()>,
) {
    shutdown_signals.draining.cancel();
    let in_flight = agent.running().len();
    tracing::info!(
        in_flight,
        grace = ?config.shutdown_grace,
        "stopping: no more claims; running runs get the grace period to finish"
    );
    if drain(agent, config, tasks, config.shutdown_grace).await {
        return;
    }
    tracing::warn!(
        remaining = agent.running().len(),
        "grace period over: stopping the remaining containers and handing their runs back"
    );
    shutdown_signals.stopping.cancel();
    let patience = Duration::from_secs(u64::from(agent.context.stop_timeout)) + HAND_BACK_TIMEOUT;
    if !drain(agent, config, tasks, patience).await {
        tracing::warn!("some runs did not finish stopping in time; leaving them");
        tasks.abort_all();
    }
}

/// Waits up to `limit` for every run task to end, heartbeating meanwhile (so that the server
/// does not take the worker for lost while its runs finish); whether they all ended.
async fn drain(
    agent: &Arc<Agent>,
    config: &WorkerConfig,
    tasks: &mut JoinSet<()>,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut beat = tokio::time::interval(config.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => return true,
                Some(Err(e)) => tracing::error!(error = %e, "a run task ended abnormally"),
                Some(Ok(())) => {}
            },
            _ = beat.tick() => {
                if let Err(e) = heartbeat(agent, config).await {
                    tracing::debug!(error = %e, "heartbeat failed while stopping");
                }
            }
            () = &mut deadline => return tasks.is_empty(),
        }
    }
}

/// The pause after failed ticks: doubling from the heartbeat interval up to [`MAX_BACKOFF`]
/// (an interval longer than that is never shortened).
fn heartbeat_backoff(interval: Duration) -> Backoff {
    Backoff::new(interval, MAX_BACKOFF)
}

/// Whether `e` is the server's 409 to a heartbeat: another live instance has this worker id.
fn id_in_use(e: &WorkerError) -> bool {
    matches!(e, WorkerError::Client(c) if c.status().is_some_and(|s| s.as_u16() == 409))
}

fn refusal_detail(e: &WorkerError) -> String {
    match e {
        WorkerError::Client(c) => c.detail().map_or_else(|| c.to_string(), str::to_owned),
        other => other.to_string(),
    }
}

/// Tells the server the worker is alive, with its resources and the runs it holds: those in
/// progress and those whose result is still in the outbox (so that the server does not
/// requeue a finished run whose result is on its way). Returns how many runs are in progress.
async fn heartbeat(agent: &Agent, config: &WorkerConfig) -> Result<usize, WorkerError> {
    // Ids and attempts, not inputs: a heartbeat stays small whatever the runs carry.
    let mut running_ops: Vec<WorkerOpRun> = agent
        .running()
        .values()
        .map(|r| r.op.as_reported())
        .collect();
    let busy = running_ops.len();
    for held in agent.context.outbox.held() {
        if !running_ops
            .iter()
            .any(|r| r.id == held.id && r.attempt == held.attempt)
        {
            running_ops.push(held);
        }
    }
    let answer = agent
        .context
        .client
        .heartbeat(&HeartbeatRequest {
            worker_id: agent.context.worker_id.clone(),
            resources: agent.resources.clone(),
            tags: config.tags.clone(),
            running_ops: Some(running_ops),
            instance: Some(agent.instance.clone()),
        })
        .await?;
    agent.stop_unheld(&answer.stop);
    Ok(busy)
}

/// Checks the Docker engine, logging when it stops or starts answering; whether it answers.
async fn engine_answers(agent: &Agent, state: &mut EngineState) -> bool {
    match agent.context.engine.check().await {
        Ok(()) => {
            match *state {
                EngineState::Up => {}
                EngineState::Unknown => {
                    agent
                        .context
                        .engine
                        .remove_leftovers(&agent.context.worker_id)
                        .await;
                }
                EngineState::Down => {
                    tracing::info!(docker = %agent.context.engine.address(), "the Docker engine answers again; claiming runs again");
                }
            }
            *state = EngineState::Up;
            true
        }
        Err(message) => {
            if *state != EngineState::Down {
                tracing::error!(
                    "{message}; claiming no runs until it answers (checked at every heartbeat)"
                );
            }
            *state = EngineState::Down;
            false
        }
    }
}

/// One heartbeat, then, if the Docker engine answers, a claim for the free slots, waiting up
/// to the heartbeat interval for a run; `true` when it claimed runs and slots are left (the
/// next tick should come at once).
async fn tick(
    agent: &Arc<Agent>,
    config: &WorkerConfig,
    engine_state: &mut EngineState,
    shutdown_signals: &Signals,
    tasks: &mut JoinSet<()>,
) -> Result<bool, WorkerError> {
    let busy = heartbeat(agent, config).await?;
    let free = (config.max_concurrent as usize).saturating_sub(busy);
    if free == 0 || !engine_answers(agent, engine_state).await {
        return Ok(false);
    }
    let max = free.min(100);
    // Only an idle worker waits: the engine check above must still hold when runs are
    // handed out, and a run of a busy worker that ends because the engine went away must not
    // let a waiting claim take the next one on that check.
    let wait = match busy {
        0 => config.heartbeat_interval,
        _ => Duration::ZERO,
    };
    let claimed = agent
        .context
        .client
        .claim_waiting(&agent.context.worker_id, max as u32, wait)
        .await?;
    let again = !claimed.is_empty() && claimed.len() < free;
    for op in claimed {
        let signals = Signals {
            cancel: CancellationToken::new(),
            ..shutdown_signals.clone()
        };
        dispatch(agent, op, signals, tasks);
    }
    Ok(again)
}

fn dispatch(agent: &Arc<Agent>, op: WorkerOpRun, signals: Signals, tasks: &mut JoinSet<()>) {
    let gpu = agent.gpu_for(&op);
    let cancel = signals.cancel.clone();
    let settled = CancellationToken::new();
    {
        let mut running = agent.running();
        if let Some(old) = running.get(&op.id) {
            // The server handed back a run this worker is still executing (a new attempt of
            // it, after a retry): the old attempt is superseded.
            tracing::warn!(run_id = %op.id, "claimed a new attempt of a run still running here; stopping the old attempt");
            old.cancel.cancel();
        }
        running.insert(
            op.id.clone(),
            Running {
                op: op.clone(),
                gpu,
                cancel: cancel.clone(),
                settled: settled.clone(),
            },
        );
    }
    tracing::info!(run_id = %op.id, image = %op.image, attempt = ?op.attempt, gpu = ?gpu, "claimed run");
    let agent = Arc::clone(agent);
    tasks.spawn(async move {
        let watcher = tokio::spawn(watch(
            Arc::clone(&agent),
            op.clone(),
            cancel,
            settled.clone(),
        ));
        let id = op.id.clone();
        let attempt = op.attempt;
        pipeline::execute(&agent.context, op, gpu, signals, &settled).await;
        watcher.abort();
        let mut running = agent.running();
        if running.get(&id).is_some_and(|r| r.op.attempt == attempt) {
            running.remove(&id);
        }
    });
}

/// Polls the run's state until it is no longer this worker's to run, then cancels it; ends
/// when the run settles (its result is being reported: the server's state may be that result).
async fn watch(
    agent: Arc<Agent>,
    op: WorkerOpRun,
    cancel: CancellationToken,
    settled: CancellationToken,
) {
    let mut ticker = tokio::time::interval(agent.cancel_check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = settled.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let answer = agent.context.client.get_run(&op.id).await;
        // Settled while the answer was on its way: the answer may be the run's own result.
        if settled.is_cancelled() {
            return;
        }
        let reason = match answer {
            Ok(run) => {
                let ours = run.execution_summary.worker_id.as_deref()
                    == Some(agent.context.worker_id.as_str());
                if run.state == OpRunState::Cancelled {
                    Some("the run was cancelled".to_owned())
                } else if op.attempt.is_some_and(|a| a != run.current_attempt) {
                    Some(format!(
                        "the run moved on to attempt {}",
                        run.current_attempt
                    ))
                } else if run.state.is_terminal() {
                    Some(format!("the run is already {}", run.state))
                } else if !ours && matches!(run.state, OpRunState::Assigned | OpRunState::Running) {
                    Some("the run was reassigned to another worker".to_owned())
                } else {
                    None
                }
            }
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
                Some("the run no longer exists".to_owned())
            }
            // Unreachable server: keep running; the check is repeated.
            Err(_) => None,
        };
        if let Some(reason) = reason {
            tracing::info!(run_id = %op.id, reason = %reason, "stopping the run");
            cancel.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let second = Duration::from_secs(1);
        let backoff = |interval, failures| heartbeat_backoff(interval).delay(failures);
        assert_eq!(backoff(second, 1), second);
        assert_eq!(backoff(second, 2), 2 * second);
        assert_eq!(backoff(second, 4), 8 * second);
        assert_eq!(backoff(second, 50), MAX_BACKOFF);
        // An interval longer than the cap is never shortened.
        assert_eq!(backoff(Duration::from_secs(60), 3), Duration::from_secs(60));
    }
}
