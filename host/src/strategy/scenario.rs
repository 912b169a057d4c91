//! Scenarios for `gyoza plugins simulate`: a JSON cluster and pending runs, decided by one
//! plugin file exactly as a claim would be (same records, and the claim's own check,
//! [`gyoza_core::placement::place`]), with per-call latency; and `gyoza plugins check`.
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

use gyoza_core::api::StrategyInfo;
use gyoza_core::placement::place;
use gyoza_core::run::NewRun;
use gyoza_core::{Capacity, Constraints, HeldRun, OpRun, PendingRun, Resources, Worker};
use serde::{Deserialize, Serialize};

use super::builtin::FALLBACK;
use super::convert;
use super::error::{CallFailure, StrategyError};
use super::plugin::{Plugin, plugin_name};
use super::settings::{StrategySettings, runtime};
use super::stats::Stats;
use super::versions::WIT_PACKAGE;
use super::wit::Claim;
use crate::scheduler::{ActiveWorker, ClaimRequest, Decision};

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

/// Loads the plugin file at `path` with default limits and `config`.
fn load(path: &Path, config: &str) -> Result<Plugin, StrategyError> {
    let bytes = std::fs::read(path).map_err(|source| StrategyError::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })?;
    let limits = StrategySettings::builtin(FALLBACK).limits();
    Plugin::load_bytes(
        &runtime(None)?,
        &plugin_name(path),
        path.display().to_string(),
        &bytes,
        config,
        limits,
    )
}

/// Loads one plugin file (for `gyoza plugins check`), with default limits.
pub fn check_file(path: &Path) -> Result<StrategyInfo, StrategyError> {
    Ok(load(path, "")?.info(false, &Stats::default()))
}

impl Scenario {
    /// The pending runs, validated as runs are and sorted by priority (stable) as the store
    /// would; the first is the oldest.
    fn pending_runs(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<PendingRun>, ScenarioError> {
        let mut pending = Vec::new();
        for (i, run) in self.pending.iter().enumerate() {
            let mut op = OpRun::new(
                NewRun {
                    image: "scenario".into(),
                    priority: run.priority,
                    constraints: run.constraints.clone(),
                    ..NewRun::default()
                },
                now - chrono::Duration::milliseconds((self.pending.len() - i) as i64),
            )
            .map_err(|e| ScenarioError::Scenario(format!("run '{}': {e}", run.id)))?;
            op.id = run.id.clone();
            pending.push(PendingRun::from(&op));
        }
        pending.sort_by_key(|run| std::cmp::Reverse(run.priority));
        Ok(pending)
    }

    /// The workers with their free capacity after the runs they hold.
    fn cluster(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ActiveWorker>, ScenarioError> {
        let mut cluster = Vec::new();
        for worker in &self.workers {
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
        Ok(cluster)
    }

    /// The requester as a worker, and its free capacity.
    fn requester(
        &self,
        cluster: &[ActiveWorker],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Worker, Capacity), ScenarioError> {
        let Some(me) = cluster.iter().find(|w| w.id == self.requester) else {
            return Err(ScenarioError::Scenario(format!(
                "requester '{}' is not one of the workers",
                self.requester
            )));
        };
        let worker = Worker {
            id: me.id.clone(),
            resources: me.resources.clone(),
            tags: Vec::new(),
            running_ops: Vec::new(),
            created_at: now,
            last_heartbeat_at: now,
            instance: None,
        };
        Ok((worker, me.free.clone()))
    }
}

/// Calls `plugin` on `claim` up to `calls` times (stopping at a failure): the sorted
/// latencies and the last outcome.
fn time_calls(
    plugin: &Plugin,
    claim: &Claim,
    calls: usize,
) -> (
    Vec<Duration>,
    Option<Result<super::wit::Decision, CallFailure>>,
) {
    let mut latencies = Vec::new();
    let mut last = None;
    for _ in 0..calls.max(1) {
        let started = Instant::now();
        let outcome = plugin.schedule(claim);
        latencies.push(started.elapsed());
        let failed = outcome.is_err();
        last = Some(outcome);
        if failed {
            break;
        }
    }
    latencies.sort();
    (latencies, last)
}

/// Runs `scenario` against the plugin in `plugin_path`.
pub fn simulate(
    plugin_path: &Path,
    scenario: &Scenario,
) -> Result<SimulationReport, ScenarioError> {
    let plugin = load(plugin_path, &scenario.config)?;
    let now = chrono::Utc::now();
    let pending = scenario.pending_runs(now)?;
    let cluster = scenario.cluster(now)?;
    let (requester, free) = scenario.requester(&cluster, now)?;
    let request = ClaimRequest {
        worker: &requester,
        free,
        pending: &pending,
        max: scenario.max,
        now,
        cluster: &cluster,
    };
    let (latencies, last) = time_calls(&plugin, &convert::claim(&request), scenario.calls);
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
        Some(Ok(answer)) => {
            let decision = convert::decision(pending.len(), &answer);
            settle(&mut report, &request, &decision);
        }
        Some(Err(failure)) => report.failure = Some(failure.to_string()),
        None => {}
    }
    Ok(report)
}

/// What a claim makes of `decision`: the runs that pass the claim's check, what it dropped,
/// and the reasons for the runs left pending.
fn settle(report: &mut SimulationReport, request: &ClaimRequest<'_>, decision: &Decision) {
    let placements = place(
        &request.free,
        request.pending,
        decision.chosen.iter().copied(),
        request.max,
    );
    let id = |index: usize| request.pending[index].id.clone();
    report.dropped = placements.dropped();
    report.assigned = placements.placed.iter().map(|p| id(p.index)).collect();
    report.reasons = decision
        .reasons
        .iter()
        .map(|(index, reason)| (id(*index), reason.clone()))
        .collect();
}

/// `gyoza plugins check FILE`: what the plugin is, as text (or JSON).
pub fn check_command(file: &Path, json: bool) -> Result<String, ScenarioError> {
    let info = check_file(file)?;
    if json {
        return serde_json::to_string_pretty(&info)
            .map_err(|e| ScenarioError::Scenario(e.to_string()));
    }
    Ok(format!(
        "ok: {} implements {}/strategy@{} (world `strategy`)\nsha256: {}\ncopy it into the server's plugins directory to load it as strategy '{}'",
        file.display(),
        WIT_PACKAGE,
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
        report.plugin, WIT_PACKAGE, report.wit_version, scenario.requester, scenario.max
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
