//! The pipeline file: wasm steps inserted before or after the container run.
//!
//! ```toml
//! # Paths are relative to this file.
//! [[step]]
//! name = "inject-env"          # named in logs and in the error of a run it fails
//! wasm = "inject_env.wasm"     # a component of world gyoza:pipeline/step@0.1.0
//! stage = "before"             # "before" (default) or "after" the container
//! deadline_ms = 1000           # the step is interrupted after this long (default 1000)
//! memory_mb = 64               # its linear memory may not grow beyond this (default 64)
//! [step.config]                # anything; given to the step as JSON
//! GREETING = "hello"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::WorkerError;
use crate::step::Steps;

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// After inputs are prepared, before STARTED and the container.
    #[default]
    Before,
    /// After the container, before the run is reported.
    After,
}

/// One `[[step]]` of a pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Its name.
    pub name: String,
    /// The component file (relative paths are relative to the pipeline file).
    pub wasm: PathBuf,
    /// Before or after the container.
    #[serde(default)]
    pub stage: Stage,
    /// Wall-clock budget of one call, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Memory limit, in MB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// The step's own settings.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_deadline_ms() -> u64 {
    1_000
}

fn default_memory_mb() -> u64 {
    64
}

/// A pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Its steps, in order.
    #[serde(default)]
    pub step: Vec<StepConfig>,
}

/// Reads and checks a pipeline file; relative `wasm` paths become relative to its folder.
pub fn parse_pipeline(path: &Path) -> Result<PipelineFile, WorkerError> {
    let text = std::fs::read_to_string(path).map_err(|source| WorkerError::Io {
        context: format!("cannot read the pipeline file {}", path.display()),
        source,
    })?;
    let mut file: PipelineFile = toml::from_str(&text)
        .map_err(|e| WorkerError::Pipeline(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut names = std::collections::HashSet::new();
    for step in &mut file.step {
        if step.name.trim().is_empty() {
            return Err(WorkerError::Pipeline(format!(
                "{}: every step needs a name",
                path.display()
            )));
        }
        if !names.insert(step.name.clone()) {
            return Err(WorkerError::Pipeline(format!(
                "{}: two steps are named '{}'",
                path.display(),
                step.name
            )));
        }
        if step.deadline_ms == 0 || step.memory_mb == 0 {
            return Err(WorkerError::Pipeline(format!(
                "{}: step '{}': deadline_ms and memory_mb must be > 0",
                path.display(),
                step.name
            )));
        }
        if step.wasm.is_relative() {
            step.wasm = base.join(&step.wasm);
        }
    }
    Ok(file)
}

/// Loads the steps of a pipeline file: each is compiled and checked now, so that a bad file
/// stops the worker before it claims anything.
pub fn load_pipeline(path: &Path) -> Result<Steps, WorkerError> {
    let file = parse_pipeline(path)?;
    let mut steps = Steps::default();
    if file.step.is_empty() {
        return Ok(steps);
    }
    let runtime = crate::wasm::StepRuntime::new()?;
    for step in &file.step {
        let wasm = std::fs::read(&step.wasm).map_err(|source| WorkerError::Io {
            context: format!("step '{}': cannot read {}", step.name, step.wasm.display()),
            source,
        })?;
        let config = match serde_json::to_value(&step.config) {
            Ok(serde_json::Value::Object(config)) => config,
            _ => {
                return Err(WorkerError::Pipeline(format!(
                    "step '{}': its config cannot be given as JSON",
                    step.name
                )));
            }
        };
        let loaded = runtime.load(
            &step.name,
            &wasm,
            &config,
            std::time::Duration::from_millis(step.deadline_ms),
            step.memory_mb,
        )?;
        let loaded: std::sync::Arc<dyn crate::step::Step> = std::sync::Arc::new(loaded);
        match step.stage {
            Stage::Before => steps.before.push(loaded),
            Stage::After => steps.after.push(loaded),
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_files_parse_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(
            &path,
            r#"
            [[step]]
            name = "env"
            wasm = "env.wasm"
            [step.config]
            GREETING = "hi"

            [[step]]
            name = "check"
            wasm = "/abs/check.wasm"
            stage = "after"
            deadline_ms = 50
            "#,
        )
        .unwrap();
        let file = parse_pipeline(&path).unwrap();
        assert_eq!(file.step.len(), 2);
        assert_eq!(file.step[0].stage, Stage::Before);
        assert_eq!(file.step[0].wasm, dir.path().join("env.wasm"));
        assert_eq!(file.step[0].deadline_ms, 1_000);
        assert_eq!(file.step[0].config["GREETING"].as_str(), Some("hi"));
        assert_eq!(file.step[1].stage, Stage::After);
        assert_eq!(file.step[1].wasm, PathBuf::from("/abs/check.wasm"));
    }

    #[test]
    fn the_example_pipeline_file_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/steps/pipeline.example.toml");
        let file = parse_pipeline(&path).unwrap();
        let names: Vec<&str> = file.step.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["inject-env", "require-outputs"]);
        assert_eq!(file.step[1].stage, Stage::After);
        assert!(file.step[0].wasm.ends_with("gyoza_step_inject_env.wasm"));
    }

    #[test]
    fn bad_pipeline_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[[step]]\nname = 'a'\nwasm = 'a.wasm'\nstage = 'during'\n",
        )
        .unwrap();
        let err = parse_pipeline(&path).unwrap_err().to_string();
        assert!(err.contains("during"), "{err}");
        std::fs::write(
            &path,
            "[[step]]\nname = 'a'\nwasm = 'a.wasm'\n[[step]]\nname = 'a'\nwasm = 'b.wasm'\n",
        )
        .unwrap();
        let err = parse_pipeline(&path).unwrap_err().to_string();
        assert!(err.contains("two steps"), "{err}");
    }
}
