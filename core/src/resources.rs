//! Value objects shared by definitions, runs and workers.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Hardware an op needs to run. A missing figure means "no requirement".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Constraints {
    /// CPU cores.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// RAM in megabytes.
    #[serde(default)]
    pub ram_mb: Option<u64>,
    /// VRAM in megabytes, on one GPU.
    #[serde(default)]
    pub vram_mb: Option<u64>,
}

/// How a failed run is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryPolicy {
    /// Attempts in all, the first included (so 1 means "never retry").
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long a failed run waits before its next attempt may be claimed.
    #[serde(default)]
    pub backoff_ms: u64,
}

fn default_max_attempts() -> u32 {
    1
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_ms: 0,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy; `max_attempts` of 0 would make a run that can never run.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry_policy.max_attempts must be >= 1".to_owned());
        }
        Ok(())
    }
}

/// Where a run's events are published, and with what extra attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventDelivery {
    /// Topic to publish events to; empty means "do not publish".
    #[serde(default)]
    pub topic: String,
    /// Extra metadata attached to each published event.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: Map<String, Value>,
}

/// One GPU of a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gpu {
    /// Device index on its host.
    pub id: u32,
    /// Total VRAM in megabytes.
    pub vram_mb: u64,
    /// Free-form capability tags (e.g. `cuda`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The hardware a worker offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// CPU cores.
    pub cpu_cores: u32,
    /// RAM in megabytes.
    pub ram_mb: u64,
    /// GPUs, if any.
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}
