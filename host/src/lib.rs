//! gyoza-host: the gyoza server.
//!
//! An axum REST API over a domain [`service::Service`], over a [`store::Store`] of
//! definitions, runs and workers (embedded SQLite, or MongoDB for several replicas) and a
//! [`scheduler::Scheduler`] (the wasm strategies) that decides which pending runs a claiming
//! worker gets. The API's paths, fields and status codes are those of the original (Python)
//! gyoza server; `GET /openapi.json` describes them.
//!
//! Dependencies run one way: `server` → `api` (with `auth`, `error`) → `service` →
//! {`scheduler`, `strategy`, `store`, `delivery`} → `gyoza_core`; HTTP types stay in `api`.
//!
//! # Layout
//! - [`config`]: every setting with its flag, environment variable and default.
//! - [`server`]: building the service and the API state from a config, serving with graceful
//!   shutdown, the reaper beside it.
//! - [`api`]: the router ([`api::app`]), handlers per resource, request extractors, OpenAPI.
//! - [`auth`]: the `X-API-Key` check.
//! - [`error`]: [`error::ApiError`] and the error policy of the API (store errors to statuses).
//! - [`service`]: the domain service apart from HTTP: run updates with delivery and change
//!   notifications, the claim protocol (the one check of a decision, atomic PENDING →
//!   ASSIGNED), requeueing the runs of dead workers, reconciling heartbeats with the runs
//!   their workers hold.
//! - [`reaper`]: the periodic task that runs the service's dead-worker check.
//! - [`queues`]: queue weights and quotas (`GYOZA_QUEUES`), and each queue's rows (held,
//!   pending, decayed usage) and dominant share as claims and `GET /queues` show them.
//! - [`scheduler`]: the scheduling seam: what a strategy decides from and its raw decision.
//! - [`store`]: the [`store::StoreRead`] (reads) and [`store::Store`] (writes) traits; the
//!   embedded SQLite store and the MongoDB store.
//! - [`strategy`]: scheduling strategies as WebAssembly components on `gyoza-wasm` (its `wit`
//!   module holds the only wasmtime code of the server): plugin loading and hot reload, fail
//!   policy, stats, pending notes.
//! - [`delivery`]: POSTing run events to their topic URLs, with retries.
//! - [`destination`]: which topic URLs deliveries may reach (no loopback, private or
//!   link-local address unless allowed), credentials redacted in logs.
//! - [`metrics`]: Prometheus counters and histograms (`GET /metrics`).
//! - [`clock`]: the time source, replaceable in tests.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod destination;
pub mod error;
pub mod metrics;
pub mod queues;
pub mod reaper;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod strategy;

pub use config::ServerConfig;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A setting is missing or wrong; the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// The scheduling strategies could not be loaded.
    #[error("strategies: {0}")]
    Strategy(#[from] strategy::StrategyError),
    /// A socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}
