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
//! | `--reconcile-grace` | `GYOZA_RECONCILE_GRACE` | `30` | seconds after its assignment past which a held run its live worker no longer reports is requeued |
//! | `--timeout-grace` | `GYOZA_TIMEOUT_GRACE` | `60` | seconds past a run's `constraints.timeout_s` after which the server fails a RUNNING attempt its worker did not stop |
//! | `--claim-recheck-ms` | `GYOZA_CLAIM_RECHECK_MS` | `1000` | a long-polling claim (`?wait_ms=`) claims again at least this often: how soon it sees runs submitted to another replica |
//! | `--max-body-bytes` | `GYOZA_MAX_BODY_BYTES` | `10485760` | largest request body accepted (413 beyond) |
//! | `--plugins-dir` | `GYOZA_PLUGINS_DIR` | `<data dir>/plugins` | directory watched for strategy plugins (`*.wasm`) |
//! | `--strategy` | `GYOZA_STRATEGY` | `bin-packing` | active scheduling strategy (`direct`, `priority`, `bin-packing` or a plugin's file stem) |
//! | `--strategy-config` | `GYOZA_STRATEGY_CONFIG` | empty | configuration string passed to every strategy's `init` (e.g. `backfill=true`) |
//! | `--strategy-fail-policy` | `GYOZA_STRATEGY_FAIL_POLICY` | `fallback` | on a trap, timeout or error: `fallback` (built-in priority) or `none` (assign nothing) |
//! | `--strategy-deadline-ms` | `GYOZA_STRATEGY_DEADLINE_MS` | `100` | longest a strategy call may run |
//! | `--strategy-memory-mb` | `GYOZA_STRATEGY_MEMORY_MB` | `64` | largest memory of a strategy instance, in MiB |
//! | `--queues` | `GYOZA_QUEUES` | empty | queue weights and quotas handed to strategies, e.g. `interactive:weight=2; batch:cpu=16,runs=20` (see `queues`) |
//! | `--queue-usage-half-life` | `GYOZA_QUEUE_USAGE_HALF_LIFE` | `3600` | half-life, in seconds, of the decayed queue usage strategies are shown |
//! | `--max-evictions-per-claim` | `GYOZA_MAX_EVICTIONS_PER_CLAIM` | `4` | most preemptions one claim carries out |
//! | `--max-evictions-per-minute` | `GYOZA_MAX_EVICTIONS_PER_MINUTE` | `60` | most preemptions one server process carries out per minute |
//! | `--max-preemptions` | `GYOZA_MAX_PREEMPTIONS` | `3` | a run preempted this often is not preempted again |
//! | `--preempt-across-workers` | `GYOZA_PREEMPT_ACROSS_WORKERS` | `false` | let strategies preempt runs on another worker than the one claiming, for a pending run that fits there; the freed capacity is kept for that run |
//! | `--reservation-s` | `GYOZA_RESERVATION_S` | `30` | seconds such freed capacity is kept for its run (1–3600) |
//!
//! `GYOZA_LOG_LEVEL` (default `info`) is read by the `gyoza` binary, which sets up logging.
//! `GYOZA_WASM_PERFMAP=1` (default off), for profiling strategy plugins, makes the wasm engine
//! write `/tmp/perf-<pid>.map` naming the machine code of every wasm function.
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
    /// Seconds after its assignment past which a run that its live worker's heartbeats no
    /// longer report is requeued (longer than a claim's answer can take to arrive).
    #[arg(
        long,
        env = "GYOZA_RECONCILE_GRACE",
        default_value_t = 30,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub reconcile_grace: u64,
    /// Seconds past a run's `constraints.timeout_s` after which the server itself fails a
    /// RUNNING attempt that its worker did not stop (a worker gone, or too old to enforce
    /// timeouts); longer than a worker takes to stop a container and report.
    #[arg(
        long,
        env = "GYOZA_TIMEOUT_GRACE",
        default_value_t = 60,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub timeout_grace: u64,
    /// Milliseconds between the claims of a long-polling claim (`?wait_ms=`) when nothing
    /// wakes it: the bound on how soon it sees runs submitted to another server replica.
    #[arg(
        long,
        env = "GYOZA_CLAIM_RECHECK_MS",
        default_value_t = 1_000,
        value_name = "MILLISECONDS",
        value_parser = clap::value_parser!(u64).range(10..=60_000)
    )]
    pub claim_recheck_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "GYOZA_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Webhook destinations allowed beyond public addresses: host names and CIDRs,
    /// comma-separated (e.g. "hooks.internal,10.0.0.0/8"). Loopback, private and link-local
    /// addresses are refused unless listed.
    #[arg(long, env = "GYOZA_DELIVERY_ALLOW", default_value = "")]
    pub delivery_allow: String,
    /// Directory watched for strategy plugins (*.wasm) [default: <data dir>/plugins].
    #[arg(long, env = "GYOZA_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Active scheduling strategy: direct, priority, bin-packing, or a plugin's file stem.
    #[arg(long, env = "GYOZA_STRATEGY", default_value = "bin-packing")]
    pub strategy: String,
    /// Configuration string passed to every strategy's init (e.g. "backfill=true").
    #[arg(long, env = "GYOZA_STRATEGY_CONFIG", default_value = "")]
    pub strategy_config: String,
    /// What a claim gets when the strategy traps, times out or returns an error.
    #[arg(
        long,
        env = "GYOZA_STRATEGY_FAIL_POLICY",
        value_parser = crate::strategy::fail_policy_parser(),
        default_value = "fallback"
    )]
    pub strategy_fail_policy: crate::strategy::FailPolicy,
    /// Longest a strategy call may run, in milliseconds.
    #[arg(long, env = "GYOZA_STRATEGY_DEADLINE_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub strategy_deadline_ms: u64,
    /// Largest memory of a strategy instance, in MiB.
    #[arg(long, env = "GYOZA_STRATEGY_MEMORY_MB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub strategy_memory_mb: u64,
    /// Queue weights and quotas handed to strategies, `;`-separated
    /// (e.g. "interactive:weight=2; batch:weight=1,cpu=16,runs=20").
    #[arg(long, env = "GYOZA_QUEUES", default_value = "")]
    pub queues: String,
    /// Half-life of the decayed queue usage strategies are shown, in seconds.
    #[arg(long, env = "GYOZA_QUEUE_USAGE_HALF_LIFE", default_value_t = crate::queues::DEFAULT_HALF_LIFE_S, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_usage_half_life: u32,
    /// Most preemptions one claim carries out.
    #[arg(long, env = "GYOZA_MAX_EVICTIONS_PER_CLAIM", default_value_t = 4)]
    pub max_evictions_per_claim: usize,
    /// Most preemptions this server process carries out per minute.
    #[arg(long, env = "GYOZA_MAX_EVICTIONS_PER_MINUTE", default_value_t = 60)]
    pub max_evictions_per_minute: usize,
    /// A run preempted this often is not preempted again.
    #[arg(long, env = "GYOZA_MAX_PREEMPTIONS", default_value_t = gyoza_core::run::MAX_PREEMPTIONS)]
    pub max_preemptions: u32,
    /// Let strategies preempt runs on another worker than the one claiming, for a pending
    /// run that fits there; the freed capacity is kept for that run.
    #[arg(long, env = "GYOZA_PREEMPT_ACROSS_WORKERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub preempt_across_workers: bool,
    /// Seconds capacity freed on another worker is kept for the run it was freed for.
    #[arg(long, env = "GYOZA_RESERVATION_S", default_value_t = crate::service::DEFAULT_RESERVATION_S, value_parser = clap::value_parser!(i64).range(1..=3600))]
    pub reservation_s: i64,
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

    /// The directory watched for strategy plugins.
    pub fn plugins_path(&self) -> PathBuf {
        self.plugins_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// How run events are delivered: the default delivery with this server's destination
    /// allow-list; a malformed list is a configuration error naming the bad entry.
    pub fn delivery_config(&self) -> Result<crate::delivery::DeliveryConfig, HostError> {
        let policy = crate::destination::DestinationPolicy::parse(&self.delivery_allow)
            .map_err(|e| HostError::Config(format!("--delivery-allow: {e}")))?;
        Ok(crate::delivery::DeliveryConfig {
            policy,
            ..Default::default()
        })
    }

    /// The queue settings (`--queues`); a malformed entry is a configuration error naming it.
    pub fn queue_settings(&self) -> Result<crate::queues::QueueSettings, HostError> {
        crate::queues::QueueSettings::parse(&self.queues, self.queue_usage_half_life)
            .map_err(|e| HostError::Config(format!("--queues / GYOZA_QUEUES: {e}")))
    }

    /// The host's limits on preemption.
    pub fn preemption_limits(&self) -> crate::service::PreemptionLimits {
        crate::service::PreemptionLimits {
            per_claim: self.max_evictions_per_claim,
            per_minute: self.max_evictions_per_minute,
            max_preemptions: self.max_preemptions,
            across_workers: self.preempt_across_workers,
            reservation: chrono::Duration::seconds(self.reservation_s),
        }
    }

    /// How the strategy host runs: plugins directory, compiled-plugin cache (in the data
    /// directory), active strategy, configuration, fail policy and limits.
    pub fn strategy_settings(&self) -> crate::strategy::StrategySettings {
        crate::strategy::StrategySettings {
            plugins_dir: Some(self.plugins_path()),
            cache_dir: Some(self.data_dir.join("cache").join("strategies")),
            active: self.strategy.clone(),
            config: self.strategy_config.clone(),
            fail_policy: self.strategy_fail_policy,
            deadline: std::time::Duration::from_millis(self.strategy_deadline_ms),
            memory_limit: (self.strategy_memory_mb as usize) << 20,
        }
    }
}
