//! Wasm pipeline steps (`gyoza:pipeline@0.1.0`, world `step`) on the shared runtime
//! ([`gyoza_wasm`]).
//!
//! One [`StepRuntime`] per worker holds the runtime (engine, WASI linker, epoch ticker). Each
//! step is compiled and pre-instantiated once, at start, so a broken or incompatible file
//! stops the worker before it claims anything. Each call gets a fresh store with the step's
//! memory limit and deadline: a trap, a timeout or a refused allocation fails that run, with
//! the step's name, and nothing else.
//!
//! # Layout
//! - this file: [`StepRuntime`], [`WasmStep`], the wording of a failed call.
//! - `wit`: the WIT bindings (the only wasmtime user of the worker) and the conversions of
//!   the execution context to and from its records.

use std::sync::Arc;
use std::time::Duration;

use gyoza_wasm::{Failure, Limits, Runtime, RuntimeOptions};
use serde_json::{Map, Value};

use crate::WorkerError;
use crate::step::{ExecutionContext, Step};

mod wit;

/// The runtime every step of the worker shares.
pub struct StepRuntime {
    runtime: Arc<Runtime>,
}

impl StepRuntime {
    /// Builds the engine and starts its epoch ticker.
    pub fn new() -> Result<Arc<Self>, WorkerError> {
        let runtime = Runtime::new(RuntimeOptions::default())
            .map_err(|e| WorkerError::Pipeline(e.to_string()))?;
        Ok(Arc::new(Self { runtime }))
    }

    /// Compiles and checks the step in `wasm` (bytes of a component).
    pub fn load(
        self: &Arc<Self>,
        name: &str,
        wasm: &[u8],
        config: &Map<String, Value>,
        deadline: Duration,
        memory_mb: u64,
    ) -> Result<WasmStep, WorkerError> {
        let refuse = |why: String| WorkerError::Pipeline(format!("step '{name}': {why}"));
        let compiled = self
            .runtime
            .compile(wasm)
            .map_err(|e| refuse(format!("not a WebAssembly component: {e}")))?;
        let pre = wit::Pre::new(&self.runtime, &compiled).map_err(|e| match e {
            wit::LinkError::Imports(e) => refuse(format!(
                "cannot be linked (it may import more than WASI): {e}"
            )),
            wit::LinkError::World(e) => refuse(format!(
                "does not export gyoza:pipeline/step-api@0.1.0 (built for another WIT version?): {e}"
            )),
        })?;
        Ok(WasmStep {
            name: name.to_owned(),
            runtime: Arc::clone(&self.runtime),
            pre,
            config: Value::Object(config.clone()).to_string(),
            limits: Limits {
                deadline,
                memory: usize::try_from(memory_mb.saturating_mul(1024 * 1024))
                    .unwrap_or(usize::MAX),
            },
        })
    }
}

/// A compiled step with its configuration and limits.
pub struct WasmStep {
    name: String,
    runtime: Arc<Runtime>,
    pre: wit::Pre,
    config: String,
    limits: Limits,
}

impl std::fmt::Debug for WasmStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmStep")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Step for WasmStep {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, context: ExecutionContext) -> Result<ExecutionContext, String> {
        self.pre
            .run(&self.runtime, self.limits, &context, &self.config)
            .map_err(|failure| self.failure(failure))?
    }
}

impl WasmStep {
    /// A failed call, in words: timeouts and memory exhaustion say which limit was hit; the
    /// step's own refusal is passed on as it is.
    fn failure(&self, failure: Failure) -> String {
        match failure {
            Failure::Timeout => format!(
                "did not finish within its deadline of {} ms",
                self.limits.deadline.as_millis()
            ),
            Failure::Memory => "exceeded its memory limit (memory_mb)".to_owned(),
            Failure::Trap(text) => format!("trapped: {text}"),
            Failure::Guest(message) => message,
        }
    }
}
