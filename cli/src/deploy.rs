//! `gyoza deploy`: upserts the definitions of a deploy file (`gyoza.yaml`), optionally
//! building their images first.
//!
//! The file format (YAML; unknown keys are refused so that typos do not pass silently):
//!
//! ```yaml
//! definitions:
//!   - id: resize                 # name, unique with version
//!     version: 1.0.0             # semantic versions order "latest"
//!     image: resize:1.0.0        # Docker image reference
//!     build:                     # optional: `gyoza deploy --build` builds the image first
//!       context: ./resize        # relative to this file
//!       dockerfile: Dockerfile   # relative to the context (default Dockerfile)
//!     inputs:                    # name → {type, required (default true), default}
//!       width: {type: integer}
//!       format: {type: string, required: false, default: png}
//!     outputs:                   # name → {type}
//!       path: {type: string}
//!     constraints: {cpu: 1, ram_mb: 512, vram_mb: 0}
//!     retry_policy: {max_attempts: 3, backoff_ms: 1000}
//!     event_delivery: {topic: "https://hooks.example/gyoza", attributes: {team: imaging}}
//!     queue: imaging             # optional (default `default`)
//!     labels: {team: imaging}    # optional
//!     preemptible: true          # optional (default false)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gyoza_core::api::OpDefinitionCreate;
use gyoza_core::{Constraints, EventDelivery, InputSpec, OutputSpec, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::remote::{Connection, Outcome};

/// A deploy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployFile {
    /// The definitions to upsert, in order.
    pub definitions: Vec<DeployDefinition>,
}

/// One definition of a deploy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployDefinition {
    id: String,
    version: String,
    image: String,
    #[serde(default)]
    build: Option<Build>,
    #[serde(default)]
    inputs: BTreeMap<String, InputSpec>,
    #[serde(default)]
    outputs: BTreeMap<String, OutputSpec>,
    #[serde(default)]
    constraints: Option<Constraints>,
    #[serde(default)]
    retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    event_delivery: Option<EventDelivery>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    labels: Option<gyoza_core::resources::Labels>,
    #[serde(default)]
    preemptible: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    context: PathBuf,
    #[serde(default = "default_dockerfile")]
    dockerfile: PathBuf,
}

fn default_dockerfile() -> PathBuf {
    PathBuf::from("Dockerfile")
}

/// What happened to one definition.
#[derive(Debug, Serialize)]
struct Deployed {
    id: String,
    version: String,
    image: String,
    created: bool,
    built: bool,
}

/// Reads and checks a deploy file.
pub fn read(path: &Path) -> anyhow::Result<DeployFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: DeployFile = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a valid deploy file", path.display()))?;
    if file.definitions.is_empty() {
        bail!("{} lists no definitions", path.display());
    }
    Ok(file)
}

fn build_image(image: &str, build: &Build, base: &Path) -> anyhow::Result<()> {
    let context = base.join(&build.context);
    let dockerfile = context.join(&build.dockerfile);
    eprintln!("building {image} from {}", dockerfile.display());
    let status = std::process::Command::new("docker")
        .arg("build")
        .arg("--tag")
        .arg(image)
        .arg("--file")
        .arg(&dockerfile)
        .arg(&context)
        // Build output is progress for a person: keep stdout for the command's own result.
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .context(
            "cannot run `docker build` (is the Docker CLI installed and the engine running?)",
        )?;
    if !status.success() {
        bail!("`docker build` of {image} failed ({status})");
    }
    Ok(())
}

/// `gyoza deploy`.
pub async fn deploy(conn: &Connection, path: &Path, build: bool) -> anyhow::Result<Outcome> {
    let file = read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let client = conn.client()?;
    let mut deployed = Vec::new();
    for definition in file.definitions {
        let mut built = false;
        if build {
            if let Some(recipe) = &definition.build {
                build_image(&definition.image, recipe, base)?;
                built = true;
            }
        }
        let request = OpDefinitionCreate {
            id: definition.id,
            version: definition.version,
            image: definition.image,
            input_specs: Some(definition.inputs),
            output_specs: Some(definition.outputs),
            constraints: definition.constraints,
            retry_policy: definition.retry_policy,
            event_delivery: definition.event_delivery,
            queue: definition.queue,
            labels: definition.labels,
            preemptible: definition.preemptible,
        };
        let upserted = client
            .upsert_definition(&request)
            .await
            .with_context(|| format!("definition {} {}", request.id, request.version))?;
        let stored = upserted.definition;
        if !conn.json {
            let verb = if upserted.created {
                "created"
            } else {
                "replaced"
            };
            println!("{verb} {} {} ({})", stored.id, stored.version, stored.image);
        }
        deployed.push(Deployed {
            id: stored.id,
            version: stored.version,
            image: stored.image,
            created: upserted.created,
            built,
        });
    }
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&deployed)?);
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("deploy.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let file: DeployFile = serde_yaml::from_str(&doc).unwrap();
        let def = &file.definitions[0];
        assert_eq!((def.id.as_str(), def.version.as_str()), ("resize", "1.0.0"));
        assert!(!def.inputs["format"].required);
        assert_eq!(
            def.build.as_ref().unwrap().dockerfile,
            PathBuf::from("Dockerfile")
        );
    }

    #[test]
    fn typos_are_refused() {
        let err = serde_yaml::from_str::<DeployFile>(
            "definitions:\n  - id: a\n    version: '1'\n    image: i\n    retries: 3\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("retries"), "{err}");
    }
}
