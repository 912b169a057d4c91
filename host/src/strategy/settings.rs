//! How a strategy host runs: [`StrategySettings`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gyoza_wasm::{Limits, Runtime, RuntimeOptions};

use super::builtin::FALLBACK;
use super::error::StrategyError;
use super::policy::FailPolicy;

/// How a [`StrategyHost`](super::StrategyHost) runs.
#[derive(Debug, Clone)]
pub struct StrategySettings {
    /// Directory watched for `.wasm` plugins (none: built-ins only).
    pub plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are cached (none: compile on every start).
    pub cache_dir: Option<PathBuf>,
    /// The strategy active at start.
    pub active: String,
    /// The configuration string every plugin's `init` receives.
    pub config: String,
    /// What a failed call leads to.
    pub fail_policy: FailPolicy,
    /// Longest a call may run.
    pub deadline: Duration,
    /// Largest memory of a plugin instance, in bytes.
    pub memory_limit: usize,
}

impl StrategySettings {
    /// Built-ins only, `active` active, default limits and fail policy.
    pub fn builtin(active: &str) -> Self {
        Self {
            plugins_dir: None,
            cache_dir: None,
            active: active.to_owned(),
            config: String::new(),
            fail_policy: FailPolicy::Fallback,
            deadline: Duration::from_millis(100),
            memory_limit: 64 << 20,
        }
    }

    /// The embedded `priority` strategy with backfill (highest priority first, each run that
    /// fits the requester's free capacity, skipping those that do not), built-ins only: for
    /// tests and embedders that want a scheduler without settings.
    pub fn priority_backfill() -> Self {
        Self {
            config: "backfill=true".into(),
            ..Self::builtin(FALLBACK)
        }
    }

    /// The limits of every call.
    pub(super) fn limits(&self) -> Limits {
        Limits {
            deadline: self.deadline,
            memory: self.memory_limit,
        }
    }
}

/// The wasm runtime strategies run on, with `cache_dir` as the compiled-plugin cache.
/// `GYOZA_WASM_PERFMAP=1` (see the server's configuration) makes it name the compiled code
/// of each wasm function in `/tmp/perf-<pid>.map`, for profiling plugins.
pub(super) fn runtime(cache_dir: Option<PathBuf>) -> Result<Arc<Runtime>, StrategyError> {
    let perf_map = std::env::var_os("GYOZA_WASM_PERFMAP").is_some_and(|v| v == "1");
    Ok(Runtime::new(RuntimeOptions {
        cache_dir,
        perf_map,
    })?)
}
