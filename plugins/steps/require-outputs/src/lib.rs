//! Example pipeline step (stage `after`): fails a run whose container exited 0 but whose
//! outputs lack one of the keys its config names, and records in the extras that it checked.
//!
//! ```toml
//! [[step]]
//! name = "require-outputs"
//! wasm = "gyoza_step_require_outputs.wasm"
//! stage = "after"
//! [step.config]
//! keys = ["result", "report_url"]
//! ```

use gyoza_plugin_sdk::step::{ExecutionContext, Step};
use serde_json::{Map, Value};

struct RequireOutputs;

fn object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{what} is not a JSON object")),
        Err(e) => Err(format!("{what} is not JSON: {e}")),
    }
}

impl Step for RequireOutputs {
    fn run(mut context: ExecutionContext, config: &str) -> Result<ExecutionContext, String> {
        let config = object(config, "config")?;
        let keys: Vec<&str> = match config.get("keys") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_str).collect(),
            _ => return Err("config needs `keys`, a list of output names".into()),
        };
        // A failed container is reported as such by the worker; nothing to check here.
        if context.exit_code != Some(0) {
            return Ok(context);
        }
        let outputs = object(&context.outputs, "outputs")?;
        let missing: Vec<&str> = keys
            .into_iter()
            .filter(|k| !outputs.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the op did not produce the outputs {}",
                missing.join(", ")
            ));
        }
        let mut extras = object(&context.extras, "extras")?;
        extras.insert("outputs_checked".into(), Value::Bool(true));
        context.extras = Value::Object(extras).to_string();
        Ok(context)
    }
}

gyoza_plugin_sdk::export_step!(RequireOutputs);
