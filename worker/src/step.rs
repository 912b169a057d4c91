//! The step interface: what a pipeline step receives and returns ([`ExecutionContext`], the
//! seed's), the [`Step`] trait a wasm step implements, and the [`Steps`] around the
//! container run.
//!
//! It sits below both the pipeline (which runs steps) and the wasm runtime (which implements
//! them), so neither has to import the other.

use std::collections::BTreeMap;
use std::sync::Arc;

use gyoza_core::Constraints;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Everything the steps of one run share (the seed's `ExecutionContext`). This is also what
/// a wasm step receives and returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionContext {
    /// The run.
    pub run_id: String,
    /// The image to run.
    pub image: String,
    /// Hardware limits.
    pub constraints: Constraints,
    /// Inputs (written to inputs.json).
    pub inputs: Map<String, Value>,
    /// Outputs (read from outputs.json).
    pub outputs: Map<String, Value>,
    /// The container's environment.
    pub env_vars: BTreeMap<String, String>,
    /// Bind mounts, host path → container path.
    pub volumes: BTreeMap<String, String>,
    /// The container's output (the first MiB).
    pub logs: String,
    /// The container's exit code, once it ran.
    pub exit_code: Option<i64>,
    /// Free-form values steps pass to each other.
    pub extras: Map<String, Value>,
}

/// A pipeline step besides the built-in ones (a wasm step).
pub trait Step: Send + Sync {
    /// Its name, for logs and failure messages.
    fn name(&self) -> &str;
    /// Changes the context, or refuses with a message (which fails the run).
    fn run(&self, context: ExecutionContext) -> Result<ExecutionContext, String>;
}

/// Steps around the container run.
#[derive(Clone, Default)]
pub struct Steps {
    /// Run after inputs are prepared, before STARTED.
    pub before: Vec<Arc<dyn Step>>,
    /// Run after the container, before COMPLETED/FAILED.
    pub after: Vec<Arc<dyn Step>>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |steps: &[Arc<dyn Step>]| {
            steps
                .iter()
                .map(|s| s.name().to_owned())
                .collect::<Vec<_>>()
        };
        f.debug_struct("Steps")
            .field("before", &names(&self.before))
            .field("after", &names(&self.after))
            .finish()
    }
}
