//! What a run's pipeline needs from the worker: the server, the Docker engine, the settings
//! that shape a run ([`RunContext`]), and what may interrupt it ([`Signals`]).
//!
//! The agent builds one [`RunContext`] at start and hands it to every run; the pipeline reads
//! it and never reaches back into the agent.

use std::path::PathBuf;
use std::time::Duration;

use gyoza_core::client::Client;
use tokio_util::sync::CancellationToken;

use crate::config::PullPolicy;
use crate::docker::Engine;
use crate::step::Steps;

/// What every run of the worker shares.
#[derive(Debug)]
pub struct RunContext {
    /// The worker's name.
    pub worker_id: String,
    /// The server.
    pub client: Client,
    /// The Docker engine.
    pub engine: Engine,
    /// Parent of the per-run directories.
    pub work_dir: PathBuf,
    /// Results not yet decided by the server.
    pub outbox: std::sync::Arc<crate::outbox::Outbox>,
    /// When to pull images.
    pub pull: PullPolicy,
    /// SIGTERM → SIGKILL delay when stopping a container.
    pub stop_timeout: u32,
    /// What every op container is confined to.
    pub sandbox: crate::docker::Sandbox,
    /// Largest outputs.json read.
    pub max_output_bytes: u64,
    /// How long running runs may go on once the worker is shutting down.
    pub shutdown_grace: Duration,
    /// Extra pipeline steps.
    pub steps: Steps,
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
