//! Scenarios for `gyoza plugins simulate`: a JSON cluster and pending runs, decided by one
//! plugin file exactly as a claim would be (same records, same checks), with per-call latency.
//!
//! ```json
//! {
//!   "requester": "w1", "max": 10, "config": "", "calls": 100,
//!   "workers": [{"id": "w1", "resources": {"cpu_cores": 8, "ram_mb": 16384,
//!                "gpus": [{"id": 0, "vram_mb": 8192}]}, "running": [{"cpu": 2}]}],
//!   "pending": [{"id": "train", "priority": 5, "constraints": {"vram_mb": 16384}}]
//! }
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use gyoza_core::run::NewRun;
use gyoza_core::{Capacity, Constraints, HeldRun, OpRun, PendingRun, Resources, Worker};
use serde::{Deserialize, Serialize};

use super::engine::Runtime;
use super::plugin::Plugin;
use super::{StrategyError, StrategySettings, convert, plugin_name};
use crate::scheduler::{ActiveWorker, ClaimRequest};

/// A worker of a scenario.
#[derive(Debug, Clone, Deserialize)]
pub struct ScenarioWorker {
    /// Worker id.
    pub id: String,
    /// Its hardware.
    pub resources: Resources,
    /// What the runs it already holds need.
    #[serde(default)]
    pub running: Vec<Constraints>,
}

/// A pending run of a scenario, best first.
#[derive(Debug, Clone, Deserialize)]
pub struct ScenarioRun {
    /// Run id (any label).
    pub id: String,
    /// Priority (>= 0).
    #[serde(default)]
    pub priority: i64,
    /// What it needs.
    #[serde(default)]
    pub constraints: Constraints,
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    /// The worker that claims.
    pub requester: String,
    /// At most this many runs (default 10).
    #[serde(default = "default_max")]
    pub max: usize,
    /// Configuration string for the plugin's `init`.
    #[serde(default)]
    pub config: String,
    /// How many times to call the plugin, for latency figures (default 20).
    #[serde(default = "default_calls")]
    pub calls: usize,
    /// Active workers.
    pub workers: Vec<ScenarioWorker>,
    /// Pending runs; they are sorted by priority (stable) as the store would.
    pub pending: Vec<ScenarioRun>,
}

fn default_max() -> usize {
    10
}

fn default_calls() -> usize {
    20
}

/// What a simulation produced.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    /// The plugin's name and WIT version.
    pub plugin: String,
    /// The WIT version it implements.
    pub wit_version: String,
    /// Run ids assigned to the requester, best first (after the host's checks).
    pub assigned: Vec<String>,
    /// (run id, reason) for runs left pending that the plugin explained.
    pub reasons: Vec<(String, String)>,
    /// Answer entries the host dropped.
    pub dropped: usize,
    /// Calls made.
    pub calls: usize,
    /// Fastest call, in microseconds.
    pub latency_min_us: u64,
    /// Median call, in microseconds.
    pub latency_p50_us: u64,
    /// Slowest call, in microseconds.
    pub latency_max_us: u64,
    /// The failure, if the plugin failed instead of deciding.
    pub failure: Option<String>,
}

/// Why a scenario could not be simulated.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] StrategyError),
    /// The scenario file is unreadable or wrong.
    #[error("scenario: {0}")]
    Scenario(String),
}

/// Runs `scenario` against the plugin in `plugin_path`.
pub fn simulate(
    plugin_path: &Path,
    scenario: &Scenario,
) -> Result<SimulationReport, ScenarioError> {
    let bytes = std::fs::read(plugin_path).map_err(|source| StrategyError::Io {
        context: format!("cannot read {}", plugin_path.display()),
        source,
    })?;
    let runtime = Runtime::new(None)?;
    let limits = StrategySettings::builtin(super::FALLBACK).limits();
    let plugin = Plugin::load(
        &runtime,
        &plugin_name(plugin_path),
        plugin_path.display().to_string(),
        &bytes,
        &scenario.config,
        limits,
    )?;
    let now = chrono::Utc::now();
    let mut pending = Vec::new();
    for (i, run) in scenario.pending.iter().enumerate() {
        let mut op = OpRun::new(
            NewRun {
                image: "scenario".into(),
                priority: run.priority,
                constraints: run.constraints.clone(),
                ..NewRun::default()
            },
            now - chrono::Duration::milliseconds((scenario.pending.len() - i) as i64),
        )
        .map_err(|e| ScenarioError::Scenario(format!("run '{}': {e}", run.id)))?;
        op.id = run.id.clone();
        pending.push(PendingRun::from(&op));
    }
    pending.sort_by_key(|run| std::cmp::Reverse(run.priority));
    let mut cluster = Vec::new();
    for worker in &scenario.workers {
        let held: Vec<HeldRun> = worker
            .running
            .iter()
            .enumerate()
            .map(|(i, constraints)| {
                // Validated as a run would be.
                OpRun::new(
                    NewRun {
                        image: "held".into(),
                        constraints: constraints.clone(),
                        ..NewRun::default()
                    },
                    now,
                )
                .map(|_| HeldRun {
                    id: format!("{}-held-{i}", worker.id),
                    worker_id: worker.id.clone(),
                    constraints: constraints.clone(),
                    gpu_id: None,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| ScenarioError::Scenario(format!("worker '{}': {e}", worker.id)))?;
        cluster.push(ActiveWorker {
            id: worker.id.clone(),
            free: Capacity::free(&worker.resources, &held),
            resources: worker.resources.clone(),
            running: held.len(),
        });
    }
    let Some(me) = cluster.iter().find(|w| w.id == scenario.requester).cloned() else {
        return Err(ScenarioError::Scenario(format!(
            "requester '{}' is not one of the workers",
            scenario.requester
        )));
    };
    let requester = Worker {
        id: me.id.clone(),
        resources: me.resources.clone(),
        tags: Vec::new(),
        running_ops: Vec::new(),
        created_at: now,
        last_heartbeat_at: now,
    };
    let request = ClaimRequest {
        worker: &requester,
        free: me.free.clone(),
        pending: &pending,
        max: scenario.max,
        now,
        cluster: &cluster,
    };
    let claim = convert::claim(&request);
    let mut latencies = Vec::new();
    let mut last = None;
    for _ in 0..scenario.calls.max(1) {
        let started = Instant::now();
        let outcome = plugin.schedule(&claim);
        latencies.push(started.elapsed());
        let failed = outcome.is_err();
        last = Some(outcome);
        if failed {
            break;
        }
    }
    latencies.sort();
    let us = |d: Option<&Duration>| d.map_or(0, |d| d.as_micros() as u64);
    let mut report = SimulationReport {
        plugin: plugin.name.clone(),
        wit_version: plugin.wit_version.clone(),
        assigned: Vec::new(),
        reasons: Vec::new(),
        dropped: 0,
        calls: latencies.len(),
        latency_min_us: us(latencies.first()),
        latency_p50_us: us(latencies.get(latencies.len() / 2)),
        latency_max_us: us(latencies.last()),
        failure: None,
    };
    match last {
        Some(Ok(decision)) => {
            let checked = convert::check(&request, &decision);
            report.dropped = checked.dropped();
            report.assigned = checked.ids;
            report.reasons = checked.reasons;
        }
        Some(Err(failure)) => report.failure = Some(failure.to_string()),
        None => {}
    }
    Ok(report)
}

/// `gyoza plugins check FILE`: what the plugin is, as text (or JSON).
pub fn check_command(file: &Path, json: bool) -> Result<String, ScenarioError> {
    let info = super::check_file(file)?;
    if json {
        return serde_json::to_string_pretty(&info)
            .map_err(|e| ScenarioError::Scenario(e.to_string()));
    }
    Ok(format!(
        "ok: {} implements {}/strategy@{} (world `strategy`)\nsha256: {}\ncopy it into the server's plugins directory to load it as strategy '{}'",
        file.display(),
        super::WIT_PACKAGE,
        info.wit_version,
        info.sha256,
        info.name
    ))
}

/// `gyoza plugins simulate FILE --scenario SCENARIO`: the decision, as text (or JSON).
pub fn simulate_command(file: &Path, scenario: &Path, json: bool) -> Result<String, ScenarioError> {
    let text = std::fs::read_to_string(scenario)
        .map_err(|e| ScenarioError::Scenario(format!("cannot read {}: {e}", scenario.display())))?;
    let scenario: Scenario = serde_json::from_str(&text)
        .map_err(|e| ScenarioError::Scenario(format!("{}: {e}", scenario.display())))?;
    let report = simulate(file, &scenario)?;
    if json {
        return serde_json::to_string_pretty(&report)
            .map_err(|e| ScenarioError::Scenario(e.to_string()));
    }
    let mut out = format!(
        "plugin {} ({}@{}), requester {}, max {}\n",
        report.plugin,
        super::WIT_PACKAGE,
        report.wit_version,
        scenario.requester,
        scenario.max
    );
    if let Some(failure) = &report.failure {
        out.push_str(&format!("FAILED: the plugin {failure}\n"));
    }
    out.push_str(&format!(
        "assigned ({}): {}\n",
        report.assigned.len(),
        report.assigned.join(", ")
    ));
    for (run, reason) in &report.reasons {
        out.push_str(&format!("  pending {run}: {reason}\n"));
    }
    if report.dropped > 0 {
        out.push_str(&format!(
            "dropped by the host's checks: {}\n",
            report.dropped
        ));
    }
    out.push_str(&format!(
        "latency over {} calls: min {} us, p50 {} us, max {} us\n",
        report.calls, report.latency_min_us, report.latency_p50_us, report.latency_max_us
    ));
    Ok(out)
}
