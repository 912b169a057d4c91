//! Server configuration: every setting, its flag, its environment variable and its default.
//!
//! | flag | environment | default | meaning |
//! |---|---|---|---|
//! | `--host` | `GYOZA_HOST` | `127.0.0.1` | address to listen on |
//! | `--port` | `GYOZA_PORT` | `5555` | port to listen on (0 picks a free one) |
//! | `--api-key` | `GYOZA_API_KEY` | none, required | key every request but `/health` must send as `X-API-Key` |
//! | `--data-dir` | `GYOZA_DATA_DIR` | `./.gyoza` | where the embedded store (`gyoza.db`) lives |
//! | `--store` | `GYOZA_MONGO_URL` | `sqlite` | `sqlite` (embedded), or a `mongodb://` / `mongodb+srv://` URL |
//! | `--mongo-db` | `GYOZA_MONGO_DB` | `gyoza` | database name on a MongoDB store |
//! | `--worker-timeout` | `GYOZA_WORKER_TIMEOUT` | `60` | seconds without a heartbeat after which a worker is inactive |
//! | `--max-body-bytes` | `GYOZA_MAX_BODY_BYTES` | `10485760` | largest request body accepted (413 beyond) |
//!
//! `GYOZA_LOG_LEVEL` (default `info`) is read by the `gyoza` binary, which sets up logging.
//! Prefer the environment variable to `--api-key`: a flag is visible in the process list.

use std::path::PathBuf;

use crate::HostError;

/// The store a configuration selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A MongoDB deployment.
    Mongo {
        /// Connection URL (may hold credentials: never log it unredacted).
        url: String,
        /// Database name.
        database: String,
    },
}

/// Settings of `gyoza server start`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "GYOZA_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free port and logs it).
    #[arg(long, env = "GYOZA_PORT", default_value_t = 5555)]
    pub port: u16,
    /// API key that every request but /health must send as X-API-Key.
    #[arg(long, env = "GYOZA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Directory of the embedded store.
    #[arg(long, env = "GYOZA_DATA_DIR", default_value = ".gyoza")]
    pub data_dir: PathBuf,
    /// Store: `sqlite` (the embedded default) or a `mongodb://` / `mongodb+srv://` URL.
    #[arg(
        long = "store",
        env = "GYOZA_MONGO_URL",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub store: String,
    /// Database name on a MongoDB store.
    #[arg(long, env = "GYOZA_MONGO_DB", default_value = "gyoza")]
    pub mongo_db: String,
    /// Seconds without a heartbeat after which a worker counts as inactive.
    #[arg(
        long,
        env = "GYOZA_WORKER_TIMEOUT",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub worker_timeout: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "GYOZA_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl ServerConfig {
    /// The API key, or an error that says how to set one.
    pub fn require_api_key(&self) -> Result<String, HostError> {
        match self.api_key.as_deref().map(str::trim) {
            Some(key) if !key.is_empty() => Ok(key.to_owned()),
            _ => Err(HostError::Config(
                "GYOZA_API_KEY is not set: the server refuses to start without an API key. \
                 Set GYOZA_API_KEY (or pass --api-key) to a secret that clients send as X-API-Key."
                    .to_owned(),
            )),
        }
    }

    /// Which store the settings select.
    pub fn store_kind(&self) -> Result<StoreKind, HostError> {
        let store = self.store.trim();
        if store.is_empty() || store.eq_ignore_ascii_case("sqlite") {
            Ok(StoreKind::Sqlite(self.database_path()))
        } else if store.starts_with("mongodb://") || store.starts_with("mongodb+srv://") {
            Ok(StoreKind::Mongo {
                url: store.to_owned(),
                database: self.mongo_db.clone(),
            })
        } else {
            Err(HostError::Config(format!(
                "--store / GYOZA_MONGO_URL must be 'sqlite' or a mongodb:// or mongodb+srv:// URL, got '{}'",
                crate::store::mongo::redact(store)
            )))
        }
    }

    /// The embedded store's file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("gyoza.db")
    }
}
