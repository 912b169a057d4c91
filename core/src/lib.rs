//! gyoza-core: the domain of the gyoza job scheduler, without I/O.
//!
//! Everything the server, the worker and the CLI agree on lives here: the versioned
//! [`OpDefinition`] with its typed input specs, the [`OpRun`] aggregate with its attempts and
//! its state machine, workers and their resources, and the JSON shapes of the REST API. The
//! field names on the wire are the original (Python) gyoza's snake_case, so that a client
//! written for it works against the Rust server unchanged.
//!
//! Nothing here touches a socket, a file or a clock: functions that need the time take a
//! `now` argument, which keeps the state machine deterministic under test.
//!
//! # Layout
//! - [`error`]: [`DomainError`], the one error type of the domain rules.
//! - [`limits`]: the largest value every number and string of the API may take.
//! - [`time`]: timestamps as the wire shows them (ISO 8601, `+00:00`) and as stores keep them.
//! - [`resources`]: constraints, retry policy, event delivery, worker resources and GPUs.
//! - [`definition`]: [`OpDefinition`], input/output specs, input validation, version order.
//! - [`state`]: [`OpRunState`], the states of a run.
//! - [`run`]: [`OpRun`], [`OpAttempt`], states, events and the rules that connect them.
//! - [`worker`]: [`Worker`], the [`Heartbeat`] merged into it, [`WorkerOpRun`], the runs a
//!   worker must stop ([`StopRun`]) and the free capacity of a worker.
//! - [`placement`]: the one check of a strategy's decision ([`placement::place`]).
//! - [`api`]: request and response bodies of the REST API.
//! - [`backoff`]: the one doubling-delay rule of every retry loop.
//! - [`sync`]: poison-tolerant lock helpers.
//! - `client` (feature `client`): the typed async HTTP client of that API.

pub mod api;
pub mod backoff;
#[cfg(feature = "client")]
pub mod client;
pub mod definition;
pub mod error;
pub mod limits;
pub mod placement;
pub mod resources;
pub mod run;
pub mod state;
pub mod sync;
pub mod time;
pub mod worker;

pub use definition::{InputSpec, OpDefinition, OutputSpec, ValueType};
pub use error::DomainError;
pub use resources::{Constraints, EventDelivery, Gpu, Resources, RetryPolicy};
pub use run::{EventEntry, EventType, ExecutionSummary, OpAttempt, OpRun, OpRunState};
pub use worker::{
    Capacity, Heartbeat, HeldRun, PendingRun, RunFacts, StopRun, Worker, WorkerOpRun,
};
