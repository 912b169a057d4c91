//! Example pipeline step (stage `before`): adds the entries of its config to the
//! container's environment, replacing variables of the same name.
//!
//! ```toml
//! [[step]]
//! name = "inject-env"
//! wasm = "gyoza_step_inject_env.wasm"
//! [step.config]
//! GREETING = "hello"     # strings as they are; other values as JSON text
//! ```

use gyoza_plugin_sdk::step::{ExecutionContext, Step};
use serde_json::Value;

struct InjectEnv;

impl Step for InjectEnv {
    fn run(mut context: ExecutionContext, config: &str) -> Result<ExecutionContext, String> {
        let config: serde_json::Map<String, Value> = serde_json::from_str(config)
            .map_err(|e| format!("config is not a JSON object: {e}"))?;
        for (name, value) in config {
            if name.is_empty() || name.contains('=') {
                return Err(format!("'{name}' cannot be an environment variable name"));
            }
            let value = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            context.env_vars.retain(|(existing, _)| *existing != name);
            context.env_vars.push((name, value));
        }
        Ok(context)
    }
}

gyoza_plugin_sdk::export_step!(InjectEnv);
