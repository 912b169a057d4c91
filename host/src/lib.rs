//! gyoza-host: the gyoza server.
//!
//! An axum REST API over a [`store::Store`] of definitions, runs and workers, with API-key
//! authentication and a [`scheduler::Scheduler`] that decides which pending runs a claiming
//! worker gets. The API's paths, fields and status codes are those of the original (Python)
//! gyoza server; `GET /openapi.json` describes them.
//!
//! # Layout
//! - [`config`]: every setting with its flag, environment variable and default.
//! - [`server`]: building the state from a config, serving with graceful shutdown.
//! - [`api`]: the router ([`api::app`]), handlers per resource, request extractors, OpenAPI.
//! - [`auth`]: the `X-API-Key` check.
//! - [`error`]: [`error::ApiError`] and the error policy of the API.
//! - [`store`]: the [`store::Store`] trait and the embedded SQLite store.
//! - [`scheduler`]: the scheduling seam and the claim protocol (atomic PENDING → ASSIGNED).
//! - [`metrics`]: Prometheus counters and histograms (`GET /metrics`).
//! - [`delivery`]: POSTing run events to their topic URLs, with retries.
//! - [`reaper`]: runs of workers that stopped heartbeating are requeued.
//! - [`strategy`]: scheduling strategies as WebAssembly components on `gyoza-wasm` (its `wit`
//!   module holds the only wasmtime code of the server): plugin loading and hot reload, fail
//!   policy, stats, pending notes.
//! - [`clock`]: the time source, replaceable in tests.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod error;
pub mod metrics;
pub mod reaper;
pub mod scheduler;
pub mod server;
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
