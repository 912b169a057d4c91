//! Host bindings of `gyoza:pipeline@0.1.0` (world `step`) and the glue that calls them: the
//! only module of the worker that touches wasmtime.

use gyoza_core::Constraints;
use gyoza_wasm::{Compiled, Failure, Limits, Runtime};
use serde_json::{Map, Value};

use crate::step::ExecutionContext;

mod bindings {
    //! The bindgen output.
    wasmtime::component::bindgen!({
        path: "../wit/pipeline@0.1.0",
        world: "gyoza:pipeline/step",
    });
}

use bindings::gyoza::pipeline::types as wit_types;

/// Why a compiled component cannot serve as a step.
pub(super) enum LinkError {
    /// It imports something the linker (WASI only) does not provide.
    Imports(String),
    /// It does not export the step interface.
    World(String),
}

/// A step, linked and checked against the world.
pub(super) struct Pre(bindings::StepPre<gyoza_wasm::HostState>);

impl Pre {
    /// Links `compiled` as a step.
    pub(super) fn new(runtime: &Runtime, compiled: &Compiled) -> Result<Self, LinkError> {
        let pre = runtime
            .instantiate_pre(compiled)
            .map_err(|e| LinkError::Imports(format!("{e:#}")))?;
        bindings::StepPre::new(pre)
            .map(Self)
            .map_err(|e| LinkError::World(format!("{e:#}")))
    }

    /// Runs the step on `context` in a fresh instance under `limits`. The outer error is a
    /// failed call; the inner one the step's refusal, or an answer that is not a context.
    pub(super) fn run(
        &self,
        runtime: &Runtime,
        limits: Limits,
        context: &ExecutionContext,
        config: &str,
    ) -> Result<Result<ExecutionContext, String>, Failure> {
        let mut store = runtime.store(limits);
        let instance = self
            .0
            .instantiate(&mut store)
            .map_err(|e| Failure::of(&e))?;
        let input = to_wit(context);
        let answer = instance
            .gyoza_pipeline_step_api()
            .call_run(&mut store, &input, config)
            .map_err(|e| Failure::of(&e))?;
        Ok(answer.and_then(from_wit))
    }
}

fn to_wit(context: &ExecutionContext) -> wit_types::ExecutionContext {
    let json = |map: &Map<String, Value>| Value::Object(map.clone()).to_string();
    wit_types::ExecutionContext {
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
    }
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
        constraints: Constraints {
            cpu: context.constraints.cpu,
            ram_mb: context.constraints.ram_mb,
            vram_mb: context.constraints.vram_mb,
            // The step interface (frozen WIT) has no timeouts: the pipeline takes them from
            // the claim, never from what a step returns.
            ..Constraints::default()
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
