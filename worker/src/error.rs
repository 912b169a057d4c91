//! The worker's error type.
//!
//! Policy: a [`WorkerError`] is something that stops the worker itself — it cannot start
//! (bad configuration, a malformed Docker address) or its machinery failed. Everything that goes wrong
//! with one *run* (image missing, container crashed, bad outputs) is not an error of the worker:
//! the pipeline turns it into a FAILED event with a message for the op's author, and the worker
//! goes on. The server being unreachable is not fatal either: the loop retries with backoff.

use gyoza_core::client::ClientError;

/// Why the worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting is missing or wrong; the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    /// The Docker engine address is unusable (an engine that does not answer is not an error
    /// of the worker: it waits for it, claiming nothing).
    #[error("{context}: {source}")]
    Docker {
        /// What the worker was doing.
        context: String,
        /// Bollard's error.
        source: bollard::errors::Error,
    },
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A file or directory of the worker could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What the worker was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The pipeline file or one of its wasm steps is unusable.
    #[error("pipeline: {0}")]
    Pipeline(String),
}
