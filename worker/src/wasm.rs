//! Wasm pipeline steps (`gyoza:pipeline@0.1.0`, world `step`): the only module that touches
//! wasmtime.
//!
//! One [`StepRuntime`] per worker holds the engine (component model, epoch interruption), the
//! linker (WASI with an empty context: a wasip2 guest imports wasi:io/cli even when it never
//! uses them) and the thread that advances the epoch. Each step is compiled and
//! pre-instantiated once, at start, so a broken or incompatible file stops the worker before
//! it claims anything. Each call gets a fresh store with the step's memory limit and deadline:
//! a trap, a timeout or a refused allocation fails that run, with the step's name, and
//! nothing else.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::WorkerError;
use crate::step::{ExecutionContext, Step};

mod wit {
    //! Host bindings of the WIT world.
    wasmtime::component::bindgen!({
        path: "../wit/pipeline@0.1.0",
        world: "gyoza:pipeline/step",
    });
}

use wit::gyoza::pipeline::types as wit_types;

/// How often the epoch advances: a deadline D stops a call between D and D + TICK.
const TICK: Duration = Duration::from_millis(5);

struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine and linker every step of the worker shares.
pub struct StepRuntime {
    engine: Engine,
    linker: Linker<HostState>,
}

impl StepRuntime {
    /// Builds the engine and starts its epoch ticker.
    pub fn new() -> Result<Arc<Self>, WorkerError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| WorkerError::Pipeline(format!("cannot start the wasm engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| WorkerError::Pipeline(format!("cannot link WASI: {e:#}")))?;
        // A thread, not a task: a deadline must hold even when the runtime's threads are busy.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("gyoza-step-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| WorkerError::Pipeline(format!("cannot start the deadline ticker: {e}")))?;
        Ok(Arc::new(Self { engine, linker }))
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
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| refuse(format!("not a WebAssembly component: {e:#}")))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            refuse(format!(
                "cannot be linked (it may import more than WASI): {e:#}"
            ))
        })?;
        let pre = wit::StepPre::new(pre).map_err(|e| {
            refuse(format!(
                "does not export gyoza:pipeline/step-api@0.1.0 (built for another WIT version?): {e:#}"
            ))
        })?;
        Ok(WasmStep {
            name: name.to_owned(),
            runtime: Arc::clone(self),
            pre,
            config: Value::Object(config.clone()).to_string(),
            deadline,
            memory_bytes: usize::try_from(memory_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
        })
    }

    fn store(&self, memory_bytes: usize, deadline: Duration) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(16)
            .tables(64)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                limits,
            },
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        let ticks = (deadline.as_millis() / TICK.as_millis()).max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store
    }
}

/// A compiled step with its configuration and limits.
pub struct WasmStep {
    name: String,
    runtime: Arc<StepRuntime>,
    pre: wit::StepPre<HostState>,
    config: String,
    deadline: Duration,
    memory_bytes: usize,
}

impl std::fmt::Debug for WasmStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmStep")
            .field("name", &self.name)
            .field("deadline", &self.deadline)
            .field("memory_bytes", &self.memory_bytes)
            .finish_non_exhaustive()
    }
}

impl Step for WasmStep {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, context: ExecutionContext) -> Result<ExecutionContext, String> {
        let mut store = self.runtime.store(self.memory_bytes, self.deadline);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| trap_message(&e, self.deadline))?;
        let input = to_wit(&context)?;
        let answer = instance
            .gyoza_pipeline_step_api()
            .call_run(&mut store, &input, &self.config)
            .map_err(|e| trap_message(&e, self.deadline))?;
        from_wit(answer?)
    }
}

/// A trap, in words: timeouts and memory exhaustion say which limit was hit.
fn trap_message(error: &wasmtime::Error, deadline: Duration) -> String {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::Interrupt {
            return format!(
                "did not finish within its deadline of {} ms",
                deadline.as_millis()
            );
        }
    }
    // StoreLimits (with trap_on_grow_failure) reports a refused growth with this message.
    if error.chain().any(|cause| {
        cause
            .to_string()
            .starts_with("forcing trap when growing memory")
    }) {
        return "exceeded its memory limit (memory_mb)".to_owned();
    }
    let text = format!("{error:#}");
    format!("trapped: {}", text.lines().next().unwrap_or(&text))
}

fn to_wit(context: &ExecutionContext) -> Result<wit_types::ExecutionContext, String> {
    let json = |map: &Map<String, Value>| Value::Object(map.clone()).to_string();
    Ok(wit_types::ExecutionContext {
        run_id: context.run_id.clone(),
        image: context.image.clone(),
        constraints: wit_types::Constraints {
            cpu: context.constraints.cpu,
            ram_mb: context.constraints.ram_mb,
            vram_mb: context.constraints.vram_mb,
        },
        inputs: json(&context.inputs),
        outputs: json(&context.outputs),
        env_vars: context.env_vars.clone().into_iter().collect(),
        volumes: context.volumes.clone().into_iter().collect(),
        logs: context.logs.clone(),
        exit_code: context.exit_code,
        extras: json(&context.extras),
    })
}

fn from_wit(context: wit_types::ExecutionContext) -> Result<ExecutionContext, String> {
    let object = |text: &str, what: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!(
            "returned {what} that are not the text of a JSON object"
        )),
    };
    Ok(ExecutionContext {
        run_id: context.run_id,
        image: context.image,
        constraints: gyoza_core::Constraints {
            cpu: context.constraints.cpu,
            ram_mb: context.constraints.ram_mb,
            vram_mb: context.constraints.vram_mb,
        },
        inputs: object(&context.inputs, "inputs")?,
        outputs: object(&context.outputs, "outputs")?,
        env_vars: context.env_vars.into_iter().collect(),
        volumes: context.volumes.into_iter().collect(),
        logs: context.logs,
        exit_code: context.exit_code,
        extras: object(&context.extras, "extras")?,
    })
}
