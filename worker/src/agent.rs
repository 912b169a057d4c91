//! The worker's main loop (seed `gyoza.worker.runner`): heartbeat → claim → dispatch.
//!
//! Each tick sends a heartbeat with the runs in progress, then claims as many runs as there
//! are free slots (`--max-concurrent`), and starts each in its own task. A watcher per run asks
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
//! On shutdown (SIGTERM, SIGINT) the worker stops claiming at once and keeps heartbeating
//! while its running runs get `--shutdown-grace` to finish; those that do are reported as
//! usual. Runs whose container had not started are handed back at once; when the grace
//! period is over, the remaining containers are stopped and their runs handed back too
//! (`POST /runs/{id}/release`: a new attempt elsewhere, outside the op's retry budget).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gyoza_core::api::HeartbeatRequest;
use gyoza_core::client::Client;
use gyoza_core::{Capacity, OpRunState, Resources, WorkerOpRun};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::WorkerError;
use crate::config::{PullPolicy, WorkerConfig};
use crate::docker::Engine;
use crate::pipeline::{self, Signals, Steps};
use crate::resources::{self, Overrides};

/// Longest pause between two heartbeats while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long shutdown waits, after the grace period, for stopped runs to be handed back (on
/// top of the containers' stop timeout).
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What every run task of the worker shares.
#[derive(Debug)]
pub struct Shared {
    /// The worker's name.
    pub worker_id: String,
    /// The server.
    pub client: Client,
    /// The Docker engine.
    pub engine: Engine,
    /// Parent of the per-run directories.
    pub work_dir: PathBuf,
    /// When to pull images.
    pub pull: PullPolicy,
    /// SIGTERM → SIGKILL delay when stopping a container.
    pub stop_timeout: u32,
    /// How long running runs may go on once the worker is shutting down.
    pub shutdown_grace: Duration,
    /// Period of the cancellation check of a running run.
    pub cancel_check_interval: Duration,
    /// Extra pipeline steps.
    pub steps: Steps,
    /// Hardware offered.
    pub resources: Resources,
    running: Mutex<HashMap<String, Running>>,
}

#[derive(Debug, Clone)]
struct Running {
    op: WorkerOpRun,
    gpu: Option<u32>,
    cancel: CancellationToken,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes): keep going with it.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let worker_id = config.resolve_worker_id()?;
    let work_dir = config.resolve_work_dir();
    tokio::fs::create_dir_all(&work_dir)
        .await
        .map_err(|source| WorkerError::Io {
            context: format!("cannot create the work directory {}", work_dir.display()),
            source,
        })?;
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
    let shared = Arc::new(Shared {
        worker_id,
        client,
        engine,
        work_dir,
        pull: config.pull,
        stop_timeout: config.stop_timeout,
        shutdown_grace: config.shutdown_grace,
        cancel_check_interval: config.cancel_check_interval,
        steps,
        resources,
        running: Mutex::new(HashMap::new()),
    });
    // Every run gets clones of these two (and a cancellation token of its own).
    let shutdown_signals = Signals::default();
    let (draining, stopping) = (
        shutdown_signals.draining.clone(),
        shutdown_signals.stopping.clone(),
    );
    let mut tasks = JoinSet::new();
    let mut failures: u32 = 0;
    let mut engine_state = EngineState::Unknown;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a run task ended abnormally");
            }
        }
        let ticked = tick(
            &shared,
            &config,
            &mut engine_state,
            &shutdown_signals,
            &mut tasks,
        )
        .await;
        let delay = match ticked {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("the server answers again");
                }
                failures = 0;
                config.heartbeat_interval
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(config.heartbeat_interval, failures);
                tracing::warn!(error = %e, failures, retry_in = ?delay, "heartbeat or claim failed; will retry");
                delay
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(delay) => {}
        }
    }

    draining.cancel();
    let in_flight = shared.running().len();
    tracing::info!(
        in_flight,
        grace = ?config.shutdown_grace,
        "stopping: no more claims; running runs get the grace period to finish"
    );
    if !drain(&shared, &config, &mut tasks, config.shutdown_grace).await {
        tracing::warn!(
            remaining = shared.running().len(),
            "grace period over: stopping the remaining containers and handing their runs back"
        );
        stopping.cancel();
        let patience = Duration::from_secs(u64::from(shared.stop_timeout)) + HAND_BACK_TIMEOUT;
        if !drain(&shared, &config, &mut tasks, patience).await {
            tracing::warn!("some runs did not finish stopping in time; leaving them");
            tasks.abort_all();
        }
    }
    tracing::info!("gyoza worker stopped");
    Ok(())
}

/// Waits up to `limit` for every run task to end, heartbeating meanwhile (so that the server
/// does not take the worker for lost while its runs finish); whether they all ended.
async fn drain(
    shared: &Arc<Shared>,
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
                if let Err(e) = heartbeat(shared, config).await {
                    tracing::debug!(error = %e, "heartbeat failed while stopping");
                }
            }
            () = &mut deadline => return tasks.is_empty(),
        }
    }
}

/// The pause after `failures` consecutive failed ticks: doubling from the heartbeat interval.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// Tells the server the worker is alive, with its resources and the runs in progress.
async fn heartbeat(shared: &Shared, config: &WorkerConfig) -> Result<usize, WorkerError> {
    let running_ops: Vec<WorkerOpRun> = shared.running().values().map(|r| r.op.clone()).collect();
    let busy = running_ops.len();
    shared
        .client
        .heartbeat(&HeartbeatRequest {
            worker_id: shared.worker_id.clone(),
            resources: shared.resources.clone(),
            tags: config.tags.clone(),
            running_ops: Some(running_ops),
        })
        .await?;
    Ok(busy)
}

/// Checks the Docker engine, logging when it stops or starts answering; whether it answers.
async fn engine_answers(shared: &Shared, state: &mut EngineState) -> bool {
    match shared.engine.check().await {
        Ok(()) => {
            match *state {
                EngineState::Up => {}
                EngineState::Unknown => {
                    shared.engine.remove_leftovers(&shared.worker_id).await;
                }
                EngineState::Down => {
                    tracing::info!(docker = %shared.engine.address(), "the Docker engine answers again; claiming runs again");
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

/// One heartbeat, then, if the Docker engine answers, a claim for the free slots.
async fn tick(
    shared: &Arc<Shared>,
    config: &WorkerConfig,
    engine_state: &mut EngineState,
    shutdown_signals: &Signals,
    tasks: &mut JoinSet<()>,
) -> Result<(), WorkerError> {
    let busy = heartbeat(shared, config).await?;
    let free = (config.max_concurrent as usize).saturating_sub(busy);
    if free == 0 || !engine_answers(shared, engine_state).await {
        return Ok(());
    }
    let claimed = shared
        .client
        .claim(&shared.worker_id, free.min(100) as u32)
        .await?;
    for op in claimed {
        let signals = Signals {
            cancel: CancellationToken::new(),
            ..shutdown_signals.clone()
        };
        dispatch(shared, op, signals, tasks);
    }
    Ok(())
}

fn dispatch(shared: &Arc<Shared>, op: WorkerOpRun, signals: Signals, tasks: &mut JoinSet<()>) {
    let gpu = shared.pick_gpu(&op);
    let cancel = signals.cancel.clone();
    {
        let mut running = shared.running();
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
            },
        );
    }
    tracing::info!(run_id = %op.id, image = %op.image, attempt = ?op.attempt, gpu = ?gpu, "claimed run");
    let shared = Arc::clone(shared);
    tasks.spawn(async move {
        let watcher = tokio::spawn(watch(Arc::clone(&shared), op.clone(), cancel));
        let id = op.id.clone();
        let attempt = op.attempt;
        pipeline::execute(Arc::clone(&shared), op, gpu, signals).await;
        watcher.abort();
        let mut running = shared.running();
        if running.get(&id).is_some_and(|r| r.op.attempt == attempt) {
            running.remove(&id);
        }
    });
}

/// Polls the run's state until it is no longer this worker's to run, then cancels it.
async fn watch(shared: Arc<Shared>, op: WorkerOpRun, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(shared.cancel_check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let reason = match shared.client.get_run(&op.id).await {
            Ok(run) => {
                let ours =
                    run.execution_summary.worker_id.as_deref() == Some(shared.worker_id.as_str());
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
        assert_eq!(backoff(second, 1), second);
        assert_eq!(backoff(second, 2), 2 * second);
        assert_eq!(backoff(second, 4), 8 * second);
        assert_eq!(backoff(second, 50), MAX_BACKOFF);
        // An interval longer than the cap is never shortened.
        assert_eq!(backoff(Duration::from_secs(60), 3), Duration::from_secs(60));
    }
}
