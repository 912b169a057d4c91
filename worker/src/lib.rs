//! gyoza-worker: the process that runs users' work.
//!
//! A worker offers its hardware to a gyoza server, claims runs that fit, and executes each one
//! as a Docker container through a pipeline of steps (seed `gyoza.worker`): pull the image,
//! prepare the inputs in a per-run directory mounted at `/gyoza`, report STARTED, run the
//! container while turning its `GYOZA_EVENT` lines into events, then report COMPLETED with
//! the outputs it wrote or FAILED with a message that says what to fix, and clean up. Wasm
//! steps from a pipeline file can run before and after the container.
//!
//! [`run`] is the whole worker; `gyoza worker start` calls it with a [`WorkerConfig`].
//!
//! # Layout
//! - [`config`]: every setting with its flag, environment variable and default.
//! - [`resources`]: CPU/RAM (sysinfo) and GPUs (NVML) offered, with overrides.
//! - [`agent`]: the heartbeat → claim → dispatch loop, cancellation watchers, shutdown with
//!   its grace period.
//! - [`run_context`]: what a run needs from the worker ([`RunContext`]: server, engine,
//!   settings, steps) and what may interrupt it ([`Signals`]).
//! - [`pipeline`]: one run from claim to cleanup, as named stages (pull, prepare inputs,
//!   before-steps, start, run container, after-steps, report, cleanup).
//! - [`report`]: what a run tells the server (its events, its log, handing it back), with
//!   retries under one backoff rule; results through the [`outbox`], never given up.
//! - [`step`]: the step interface: [`ExecutionContext`], the [`Step`] trait, the [`Steps`]
//!   around the container.
//! - [`docker`]: the Docker engine (bollard): reachability, images, running one container,
//!   stopping it, and telling the engine's errors from its absence.
//! - [`events`]: the container protocol's lines: `GYOZA_EVENT` parsing, line reassembly.
//! - [`outputs`]: reading `outputs.json` and checking it against output specs.
//! - [`state`]: the state directory (locked for one process): default id, instance token.
//! - [`outbox`]: results kept on disk until the server decides on them.
//! - [`steps`]: the pipeline file: which wasm steps run where, with what limits.
//!
//! Imports run one way: `agent` → `pipeline` → `report` → `run_context` → {`docker`,
//! `config`, `step`}; `steps` loads the wasm steps of [`wasm`], which implement [`Step`].
//! - [`wasm`]: wasm steps on the shared runtime (`gyoza-wasm`); its `wit` module holds the WIT
//!   bindings, the only wasmtime code of the worker.
//! - [`error`]: [`WorkerError`] and the error policy.

pub mod agent;
pub mod config;
pub mod docker;
pub mod error;
pub mod events;
pub mod outbox;
pub mod outputs;
pub mod pipeline;
pub mod report;
pub mod resources;
pub mod run_context;
pub mod state;
pub mod step;
pub mod steps;
pub mod wasm;

pub use agent::run;
pub use config::{PullPolicy, WorkerConfig};
pub use error::WorkerError;
pub use run_context::{RunContext, Signals};
pub use step::{ExecutionContext, Step, Steps};
