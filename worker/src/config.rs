//! Worker configuration: every setting, its flag, its environment variable and its default.
//!
//! | flag | environment | default | meaning |
//! |---|---|---|---|
//! | `--server-url` | `GYOZA_SERVER_URL` | `http://localhost:5555` | the gyoza server |
//! | `--api-key` | `GYOZA_API_KEY` | none | sent as `X-API-Key` |
//! | `--state-dir` | `GYOZA_WORKER_STATE_DIR` | `$XDG_STATE_HOME/gyoza-worker`, else `$HOME/.local/state/gyoza-worker` | the worker's own directory (0700, one worker at a time: locked): its default id, instance token, undelivered results (`outbox/`) and run directories (`runs/`) |
//! | `--worker-id` | `GYOZA_WORKER_ID` | `<host name>-<8 hex>`, made once and kept in the state directory | the worker's name on the server (one live worker per id: another is refused) |
//! | `--tags` | `GYOZA_WORKER_TAGS` | none | capability tags, comma-separated |
//! | `--heartbeat-interval` | `GYOZA_HEARTBEAT_INTERVAL` | `5` | seconds between heartbeats (and claims) |
//! | `--max-concurrent` | `GYOZA_MAX_CONCURRENT` | `4` | runs executed at once |
//! | `--work-dir` | `GYOZA_WORK_DIR` | `<state dir>/runs` | where per-run directories (0700) are made |
//! | `--docker-host` | `DOCKER_HOST` | `unix:///var/run/docker.sock` | the Docker engine |
//! | `--pull` | `GYOZA_PULL` | `missing` | `always`, `missing` or `never` pull op images |
//! | `--cpu-cores` | `GYOZA_CPU_CORES` | detected | CPU cores offered |
//! | `--ram-mb` | `GYOZA_RAM_MB` | detected | RAM offered, in MB |
//! | `--gpu ID:VRAM_MB[:tag,…]` | — | detected by NVML | a GPU offered (repeatable; replaces detection) |
//! | `--cancel-check-interval` | `GYOZA_CANCEL_CHECK_INTERVAL` | `0.5` | seconds between checks of a running run's state |
//! | `--stop-timeout` | `GYOZA_STOP_TIMEOUT` | `1` | seconds a stopped container gets between SIGTERM and SIGKILL |
//! | `--pids-limit` | `GYOZA_WORKER_PIDS_LIMIT` | `512` | most processes an op container may run at once |
//! | `--container-network` | `GYOZA_WORKER_CONTAINER_NETWORK` | `bridge` | Docker network of op containers (`none`: no network) |
//! | `--default-memory-mb` | `GYOZA_WORKER_DEFAULT_MEMORY_MB` | `2048` | memory limit of a run without `ram_mb` (0: none) |
//! | `--allow-capabilities` | `GYOZA_WORKER_ALLOW_CAPABILITIES` | none | Linux capabilities a run may ask back (`constraints.capabilities`), comma-separated; a run asking for another FAILS here |
//! | `--max-output-bytes` | `GYOZA_WORKER_MAX_OUTPUT_BYTES` | `16777216` | largest outputs.json read (links, FIFOs and devices are refused whatever the size) |
//! | `--shutdown-grace` | `GYOZA_WORKER_SHUTDOWN_GRACE` | `30` | seconds running runs get to finish after SIGTERM/SIGINT; then their containers are stopped and the runs handed back (0: at once) |
//! | `--pipeline` | `GYOZA_PIPELINE` | none | pipeline file adding wasm steps |
//!
//! Prefer the environment to `--api-key`: a flag is visible in the process list.

use std::path::PathBuf;
use std::time::Duration;

use gyoza_core::Gpu;

/// When the worker pulls an op's image before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Before every run (a failed pull falls back to a local copy, with a warning).
    Always,
    /// Only when the image is not present locally.
    Missing,
    /// Never: a missing image fails the run.
    Never,
}

/// Settings of `gyoza worker start`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    /// The gyoza server's base URL.
    #[arg(long, env = "GYOZA_SERVER_URL", default_value = gyoza_core::client::DEFAULT_SERVER_URL)]
    pub server_url: String,
    /// API key sent as X-API-Key.
    #[arg(long, env = "GYOZA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The worker's own directory: its lock, default id, instance token, undelivered results
    /// and run directories (default: $XDG_STATE_HOME/gyoza-worker, else
    /// $HOME/.local/state/gyoza-worker).
    #[arg(long, env = "GYOZA_WORKER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The worker's name on the server (default: <host name>-<8 hex>, made once and kept in
    /// the state directory).
    #[arg(long, env = "GYOZA_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Capability tags, comma-separated.
    #[arg(long, env = "GYOZA_WORKER_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Seconds between heartbeats; each heartbeat is followed by a claim.
    #[arg(long, env = "GYOZA_HEARTBEAT_INTERVAL", default_value = "5", value_parser = parse_seconds, value_name = "SECONDS")]
    pub heartbeat_interval: Duration,
    /// Runs executed at once; a claim asks for the free slots.
    #[arg(long, env = "GYOZA_MAX_CONCURRENT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_concurrent: u32,
    /// Directory for per-run directories (default: runs in the state directory).
    #[arg(long, env = "GYOZA_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Docker engine address (unix:///path or tcp://host:port; default: the local socket).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// When to pull op images.
    #[arg(long, env = "GYOZA_PULL", value_enum, default_value = "missing")]
    pub pull: PullPolicy,
    /// CPU cores offered (default: detected).
    #[arg(long, env = "GYOZA_CPU_CORES")]
    pub cpu_cores: Option<u32>,
    /// RAM offered in MB (default: detected).
    #[arg(long, env = "GYOZA_RAM_MB")]
    pub ram_mb: Option<u64>,
    /// A GPU offered, as ID:VRAM_MB[:tag,...]; repeatable; replaces NVML detection.
    #[arg(long = "gpu", value_parser = parse_gpu, value_name = "ID:VRAM_MB[:TAGS]")]
    pub gpus: Vec<Gpu>,
    /// Seconds between checks of each running run's state on the server (cancellation).
    #[arg(long, env = "GYOZA_CANCEL_CHECK_INTERVAL", default_value = "0.5", value_parser = parse_seconds, value_name = "SECONDS")]
    pub cancel_check_interval: Duration,
    /// Seconds a container being stopped gets between SIGTERM and SIGKILL.
    #[arg(
        long,
        env = "GYOZA_STOP_TIMEOUT",
        default_value_t = 1,
        value_name = "SECONDS"
    )]
    pub stop_timeout: u32,
    /// Seconds running runs get to finish after SIGTERM or SIGINT before their containers are
    /// stopped and their runs handed back to the server (0: at once). No run is claimed
    /// meanwhile.
    #[arg(long, env = "GYOZA_WORKER_SHUTDOWN_GRACE", default_value = "30", value_parser = parse_grace, value_name = "SECONDS")]
    pub shutdown_grace: Duration,
    /// Most processes an op container may run at once.
    #[arg(long, env = "GYOZA_WORKER_PIDS_LIMIT", default_value_t = 512, value_parser = clap::value_parser!(i64).range(16..=1_000_000), value_name = "N")]
    pub pids_limit: i64,
    /// Docker network op containers join: `bridge` (default), `none` (no network), or the
    /// name of a network.
    #[arg(long, env = "GYOZA_WORKER_CONTAINER_NETWORK", default_value = "bridge")]
    pub container_network: String,
    /// Memory limit in MB of a run that states no `constraints.ram_mb` (0: none).
    #[arg(
        long,
        env = "GYOZA_WORKER_DEFAULT_MEMORY_MB",
        default_value_t = 2048,
        value_name = "MB"
    )]
    pub default_memory_mb: u64,
    /// Linux capabilities a run may ask back through `constraints.capabilities` (every op
    /// container starts with all dropped), comma-separated (`NET_BIND_SERVICE,CHOWN`); an
    /// attempt asking for one not listed FAILS with a message naming it.
    #[arg(long = "allow-capabilities", env = "GYOZA_WORKER_ALLOW_CAPABILITIES", value_delimiter = ',', value_parser = parse_capability, value_name = "CAPS")]
    pub allow_capabilities: Vec<String>,
    /// Largest outputs.json the worker reads, in bytes; a larger one FAILS the run with a
    /// message that gives both sizes.
    #[arg(long, env = "GYOZA_WORKER_MAX_OUTPUT_BYTES", default_value_t = crate::outputs::DEFAULT_MAX_OUTPUT_BYTES, value_name = "BYTES")]
    pub max_output_bytes: u64,
    /// Pipeline file (TOML) adding wasm steps before or after the container.
    #[arg(long, env = "GYOZA_PIPELINE", value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

impl WorkerConfig {
    /// The state directory: the configured one, else the XDG rule (see the table above).
    pub fn resolve_state_dir(&self) -> Result<PathBuf, crate::WorkerError> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        let var = |name| std::env::var(name).ok();
        crate::state::default_dir(var("XDG_STATE_HOME").as_deref(), var("HOME").as_deref())
            .ok_or_else(|| {
                crate::WorkerError::Config(
                    "neither XDG_STATE_HOME nor HOME is set: give the worker a state directory \
                     (--state-dir or GYOZA_WORKER_STATE_DIR)"
                        .into(),
                )
            })
    }

    /// The worker id: the configured one, else the one kept in `state` (made once from the
    /// host name and 8 random hex digits).
    pub fn resolve_worker_id(
        &self,
        state: &crate::state::StateDir,
    ) -> Result<String, crate::WorkerError> {
        let id = match self.worker_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                let host = sysinfo::System::host_name()
                    .map(|h| h.trim().replace(['/', '?', '#'], "-"))
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "gyoza-worker".to_owned());
                state.worker_id(&host)?
            }
        };
        if id.contains(['/', '?', '#']) {
            return Err(crate::WorkerError::Config(format!(
                "worker id '{id}' must not contain '/', '?' or '#' (it is part of URLs)"
            )));
        }
        Ok(id)
    }

    /// The capabilities runs may ask back, each once.
    pub fn allowed_capabilities(&self) -> Vec<String> {
        let mut names = self.allow_capabilities.clone();
        names.sort();
        names.dedup();
        names
    }

    /// The work directory: the configured one, else `runs` in the state directory.
    pub fn resolve_work_dir(&self, state: &crate::state::StateDir) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| state.path().join("runs"))
    }
}

/// A Linux capability's name (`CAP_` prefix and case ignored), in Docker's spelling.
pub fn parse_capability(text: &str) -> Result<String, String> {
    let name = gyoza_core::resources::capability_name(text);
    if gyoza_core::resources::LINUX_CAPABILITIES.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!(
            "'{text}' is not a Linux capability (e.g. NET_BIND_SERVICE; ALL cannot be allowed)"
        ))
    }
}

/// Seconds, possibly fractional (`5`, `0.5`), as a duration of at least a millisecond.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!("'{text}' is out of range (0.001 to 86400 seconds)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Seconds of a grace period: as [`parse_seconds`], but 0 is allowed (no grace).
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    if text.trim().parse::<f64>().is_ok_and(|s| s == 0.0) {
        return Ok(Duration::ZERO);
    }
    parse_seconds(text)
}

/// `ID:VRAM_MB[:tag,tag…]`, e.g. `0:16384:cuda,a100`.
pub fn parse_gpu(text: &str) -> Result<Gpu, String> {
    let mut parts = text.splitn(3, ':');
    let usage = || format!("'{text}' is not ID:VRAM_MB[:tag,...] (e.g. 0:16384:cuda)");
    let id = parts
        .next()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(usage)?;
    let vram_mb = parts
        .next()
        .and_then(|p| p.trim().parse::<u64>().ok())
        .ok_or_else(usage)?;
    let tags = parts
        .next()
        .map(|tags| {
            tags.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Gpu { id, vram_mb, tags })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_overrides_parse_with_and_without_tags() {
        assert_eq!(
            parse_gpu("1:8192:cuda, a100").unwrap(),
            Gpu {
                id: 1,
                vram_mb: 8192,
                tags: vec!["cuda".into(), "a100".into()]
            }
        );
        assert_eq!(parse_gpu("0:512").unwrap().tags, Vec::<String>::new());
        for bad in ["", "0", "x:1", "0:-1", "0:lots"] {
            let err = parse_gpu(bad).unwrap_err();
            assert!(err.contains("ID:VRAM_MB"), "{bad}: {err}");
        }
    }

    #[test]
    fn seconds_accept_fractions_within_range() {
        assert_eq!(parse_seconds("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_seconds("0.25").unwrap(), Duration::from_millis(250));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("NaN").is_err());
    }

    #[test]
    fn a_grace_period_may_be_zero() {
        assert_eq!(parse_grace("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("2.5").unwrap(), Duration::from_millis(2500));
        assert!(parse_grace("-1").is_err());
        assert!(parse_grace("later").is_err());
    }
}
