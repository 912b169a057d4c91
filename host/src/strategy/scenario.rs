//! Scenarios for `gyoza plugins simulate`: a JSON cluster, its running runs and pending runs,
//! decided by one plugin file exactly as a claim would be (same records, the claim's tag
//! filter, its checks [`gyoza_core::placement::place`] and
//! [`gyoza_core::placement::check_evictions`]), with per-call latency; and `gyoza plugins
//! check`.
//!
//! ```json
//! {
//!   "requester": "w1", "max": 10, "config": "preempt=true", "calls": 100,
//!   "queues": "interactive:weight=2; batch:weight=1,cpu=16",
//!   "workers": [{"id": "w1", "tags": ["ssd"],
//!                "resources": {"cpu_cores": 8, "ram_mb": 16384,
//!                              "gpus": [{"id": 0, "vram_mb": 8192, "tags": ["a100"]}]},
//!                "running": [{"id": "old", "cpu": 6, "priority": 1, "preemptible": true,
//!                             "queue": "batch", "ran_ms": 60000}]}],
//!   "pending": [{"id": "train", "priority": 5, "queue": "interactive",
//!                "labels": {"team": "vision"}, "constraints": {"cpu": 4, "tags": ["ssd"]}}]
//! }
//! ```
//!
//! A held run (`running`) is its constraints (`cpu`, `ram_mb`, `vram_mb`, `tags`, as in
//! older scenarios) plus, optionally, `id`, `priority`, `queue`, `labels`, `preemptible`,
//! `preemptions`, `image`, `definition`, `gpu_id` and `ran_ms`.
//!
//! A scenario may carry what it expects ([`Expectation`]: `"expect": {"assigned": [...],
//! "evicted": [[held, for], ...], "reasons": {"run": "reason"}}`); the report lists each
//! difference in `unexpected`, and [`simulate_scenario_command`] fails with
//! [`ScenarioError::Unexpected`]. The plugin may be named by a built-in's name instead of a
//! file (`examples/scenarios/` are decided so by the test suite).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gyoza_core::api::StrategyInfo;
use gyoza_core::placement::{EvictionRequest, EvictionRules, place};
use gyoza_core::run::NewRun;
use gyoza_core::{Capacity, Constraints, HeldRun, OpRun, PendingRun, Resources, RunFacts, Worker};
use serde::{Deserialize, Serialize};

use super::builtin::FALLBACK;
use super::convert;
use super::error::{CallFailure, StrategyError};
use super::plugin::{Plugin, plugin_name};
use super::settings::{StrategySettings, runtime};
use super::stats::Stats;
use super::versions::WIT_PACKAGE;
use super::wit::Claim;
use crate::queues::QueueSettings;
use crate::scheduler::{ActiveWorker, ClaimRequest, Decision};
use crate::service::PreemptionLimits;

/// A worker of a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioWorker {
    /// Worker id.
    pub id: String,
    /// Its hardware.
    pub resources: Resources,
    /// Its capability tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The runs it holds.
    #[serde(default)]
    pub running: Vec<ScenarioHeld>,
}

/// A run a worker of a scenario holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioHeld {
    /// Run id (default: `<worker>-held-<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What it holds.
    #[serde(flatten)]
    pub constraints: Constraints,
    /// Its priority.
    #[serde(default)]
    pub priority: i64,
    /// The GPU it holds VRAM on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_id: Option<u32>,
    /// How long it has been held, in milliseconds.
    #[serde(default)]
    pub ran_ms: u64,
    /// Its queue, labels and the rest.
    #[serde(flatten)]
    pub facts: ScenarioFacts,
}

/// What a scenario's runs may say beyond their priority and constraints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioFacts {
    /// Queue (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Labels.
    #[serde(
        default,
        skip_serializing_if = "gyoza_core::resources::Labels::is_empty"
    )]
    pub labels: gyoza_core::resources::Labels,
    /// Whether it may be preempted.
    #[serde(default)]
    pub preemptible: bool,
    /// How often it was preempted already.
    #[serde(default)]
    pub preemptions: u32,
    /// Its image (default `scenario`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The definition it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// Its attempt number (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl ScenarioFacts {
    fn facts(&self, assigned_at: Option<chrono::DateTime<chrono::Utc>>) -> RunFacts {
        RunFacts {
            queue: self
                .queue
                .as_deref()
                .unwrap_or(gyoza_core::resources::DEFAULT_QUEUE)
                .into(),
            definition: self.definition.as_deref().map(Into::into),
            image: self.image.as_deref().unwrap_or("scenario").into(),
            attempt: self.attempt.unwrap_or(1),
            preemptible: self.preemptible,
            preemptions: self.preemptions,
            labels: self.labels.clone(),
            assigned_at,
        }
    }
}

/// A pending run of a scenario, best first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioRun {
    /// Run id (any label).
    pub id: String,
    /// Priority (>= 0).
    #[serde(default)]
    pub priority: i64,
    /// What it needs.
    #[serde(default)]
    pub constraints: Constraints,
    /// How long it has waited, in milliseconds (default: in the order given, 1 ms apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// Its queue, labels and the rest.
    #[serde(flatten)]
    pub facts: ScenarioFacts,
}

/// A scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Queue weights and quotas, as `GYOZA_QUEUES` (see [`crate::queues`]).
    #[serde(default)]
    pub queues: String,
    /// Per queue, the decayed usage of its ended attempts: `[name, [cpu, ram_mb, vram_mb]]`
    /// seconds (a live server's, with `--from-server`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<(String, [f64; 3])>,
    /// Active workers.
    pub workers: Vec<ScenarioWorker>,
    /// Pending runs; they are sorted by priority (stable) as the store would.
    pub pending: Vec<ScenarioRun>,
    /// What the decision should be; `gyoza plugins simulate` fails when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
}

/// The decision a scenario expects. Each part that is given is compared; those left out
/// are not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The run ids assigned, in order (after the host's checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Vec<String>>,
    /// The preemptions carried out, as (held run id, pending run id), in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<Vec<(String, String)>>,
    /// Reasons of runs left pending, by run id: each must be the reason given (other runs'
    /// reasons are not compared).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
}

impl Expectation {
    /// How `report` differs from what is expected, one sentence per difference.
    fn differences(&self, report: &SimulationReport) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(assigned) = &self.assigned
            && assigned != &report.assigned
        {
            out.push(format!(
                "assigned [{}], expected [{}]",
                report.assigned.join(", "),
                assigned.join(", ")
            ));
        }
        if let Some(evicted) = &self.evicted {
            let got: Vec<(String, String)> = report
                .evicted
                .iter()
                .map(|(victim, for_run, _)| (victim.clone(), for_run.clone()))
                .collect();
            if &got != evicted {
                let show = |pairs: &[(String, String)]| {
                    pairs
                        .iter()
                        .map(|(victim, for_run)| format!("{victim} for {for_run}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                out.push(format!(
                    "evicted [{}], expected [{}]",
                    show(&got),
                    show(evicted)
                ));
            }
        }
        for (run, reason) in &self.reasons {
            let given = report
                .reasons
                .iter()
                .find(|(id, _)| id == run)
                .map(|(_, why)| why.as_str());
            if given != Some(reason.as_str()) {
                out.push(format!(
                    "run {run}: reason {}, expected \"{reason}\"",
                    given.map_or("none".to_owned(), |why| format!("\"{why}\""))
                ));
            }
        }
        out
    }
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
    /// (run id, reason) for runs left pending that the plugin explained, or that no worker's
    /// tags allow (the host's reason).
    pub reasons: Vec<(String, String)>,
    /// (held run id, pending run id it makes room for, reason) for the preemptions the
    /// host's rules allow.
    pub evicted: Vec<(String, String, String)>,
    /// Preemptions the host's rules refused.
    pub evictions_refused: usize,
    /// Pending runs the requester's tags rule out (never shown to the plugin).
    pub filtered: Vec<String>,
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
    /// How the decision differs from the scenario's `expect` (empty when it has none or
    /// the decision is the one expected).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexpected: Vec<String>,
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
    /// The decision is not the one the scenario expects: the report (text or JSON), which
    /// says how, for the caller to show.
    #[error("the decision is not the one the scenario expects")]
    Unexpected(String),
}

/// Loads the plugin file at `path` with default limits and `config`; a path that names no
/// file but a built-in strategy (`fair-share`) loads that one.
fn load(path: &Path, config: &str) -> Result<Plugin, StrategyError> {
    let embedded = path
        .to_str()
        .filter(|_| !path.exists())
        .and_then(super::builtin::builtin);
    let bytes = match embedded {
        Some(builtin) => builtin.wasm.to_vec(),
        None => std::fs::read(path).map_err(|cause| StrategyError::Io {
            context: format!(
                "cannot read {} (nor is it a built-in strategy: {})",
                path.display(),
                super::builtin::BUILTINS.map(|b| b.name).join(", ")
            ),
            cause,
        })?,
    };
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
            let waited = run
                .waited_ms
                .unwrap_or((self.pending.len() - i) as u64)
                .min(i64::MAX as u64);
            let mut op = OpRun::new(
                NewRun {
                    image: "scenario".into(),
                    priority: run.priority,
                    constraints: run.constraints.clone(),
                    queue: run
                        .facts
                        .queue
                        .clone()
                        .unwrap_or_else(gyoza_core::resources::default_queue),
                    labels: run.facts.labels.clone(),
                    preemptible: run.facts.preemptible,
                    ..NewRun::default()
                },
                now - chrono::Duration::milliseconds(waited as i64),
            )
            .map_err(|e| ScenarioError::Scenario(format!("run '{}': {e}", run.id)))?;
            op.id = run.id.clone();
            let mut pending_run = PendingRun::from(&op);
            pending_run.facts = run.facts.facts(None);
            pending.push(pending_run);
        }
        pending.sort_by_key(|run| std::cmp::Reverse(run.priority));
        Ok(pending)
    }

    /// The workers with their free capacity after the runs they hold, and those runs.
    fn cluster(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Vec<ActiveWorker>, Vec<HeldRun>), ScenarioError> {
        let mut cluster = Vec::new();
        let mut running = Vec::new();
        for worker in &self.workers {
            let held: Vec<HeldRun> = worker
                .running
                .iter()
                .enumerate()
                .map(|(i, run)| {
                    let assigned = now
                        - chrono::Duration::milliseconds(run.ran_ms.min(i64::MAX as u64) as i64);
                    // Validated as a run would be.
                    OpRun::new(
                        NewRun {
                            image: "held".into(),
                            constraints: run.constraints.clone(),
                            priority: run.priority,
                            ..NewRun::default()
                        },
                        now,
                    )
                    .map(|_| HeldRun {
                        id: run
                            .id
                            .clone()
                            .unwrap_or_else(|| format!("{}-held-{i}", worker.id)),
                        worker_id: worker.id.clone(),
                        constraints: run.constraints.clone(),
                        gpu_id: run.gpu_id,
                        priority: run.priority,
                        facts: run.facts.facts(Some(assigned)),
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(|e| ScenarioError::Scenario(format!("worker '{}': {e}", worker.id)))?;
            cluster.push(ActiveWorker {
                id: worker.id.clone(),
                free: Capacity::free(&worker.resources, &held),
                resources: worker.resources.clone(),
                running: held.len(),
                tags: worker.tags.clone(),
            });
            running.extend(held);
        }
        Ok((cluster, running))
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
            tags: me.tags.clone(),
            running_ops: Vec::new(),
            created_at: now,
            last_heartbeat_at: now,
            instance: None,
        };
        Ok((worker, me.free.clone()))
    }
}

impl Scenario {
    /// The scenario of a claim by `preview.worker` as the server would show it now (`GET
    /// /workers/{id}/claim-scenario`): its active workers with the runs they hold, the
    /// pending window, the server's queues and strategy configuration.
    pub fn from_preview(
        preview: &crate::service::ClaimPreview,
        max: usize,
        config: &str,
        queues: &QueueSettings,
    ) -> Self {
        let ms =
            |at: chrono::DateTime<chrono::Utc>| (preview.now - at).num_milliseconds().max(0) as u64;
        let facts = |facts: &RunFacts| ScenarioFacts {
            queue: Some(facts.queue.to_string()),
            labels: facts.labels.clone(),
            preemptible: facts.preemptible,
            preemptions: facts.preemptions,
            image: Some(facts.image.to_string()),
            definition: facts.definition.as_deref().map(str::to_owned),
            attempt: Some(facts.attempt),
        };
        let workers = preview
            .cluster
            .iter()
            .map(|worker| ScenarioWorker {
                id: worker.id.clone(),
                resources: worker.resources.clone(),
                tags: worker.tags.clone(),
                running: preview
                    .running
                    .iter()
                    .filter(|run| run.worker_id == worker.id)
                    .map(|run| ScenarioHeld {
                        id: Some(run.id.clone()),
                        constraints: run.constraints.clone(),
                        priority: run.priority,
                        gpu_id: run.gpu_id,
                        ran_ms: run.facts.assigned_at.map_or(0, ms),
                        facts: facts(&run.facts),
                    })
                    .collect(),
            })
            .collect();
        let pending = preview
            .pending
            .iter()
            .map(|run| ScenarioRun {
                id: run.id.clone(),
                priority: run.priority,
                constraints: run.constraints.clone(),
                waited_ms: Some(ms(run.created_at)),
                facts: facts(&run.facts),
            })
            .collect();
        Self {
            requester: preview.worker.id.clone(),
            max,
            config: config.to_owned(),
            calls: default_calls(),
            queues: queues.to_string(),
            usage: preview.usage.clone(),
            workers,
            pending,
            expect: None,
        }
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
    let queues = QueueSettings::parse(&scenario.queues, crate::queues::DEFAULT_HALF_LIFE_S)
        .map_err(|e| ScenarioError::Scenario(format!("queues: {e}")))?;
    let (cluster, running) = scenario.cluster(now)?;
    let (requester, free) = scenario.requester(&cluster, now)?;
    let all = scenario.pending_runs(now)?;
    let ids: Vec<String> = all.iter().map(|r| r.id.clone()).collect();
    let (pending, unmet) = crate::service::meeting_tags(&requester, all, &cluster);
    let limits = PreemptionLimits::default();
    let request = ClaimRequest {
        worker: &requester,
        free,
        pending: &pending,
        max: scenario.max,
        now,
        cluster: &cluster,
        running: &running,
        queues: &queues,
        usage: &scenario.usage,
        max_preemptions: limits.max_preemptions,
        max_evictions: limits.per_claim,
    };
    let (latencies, last) = time_calls(&plugin, &convert::claim(&request), scenario.calls);
    let us = |d: Option<&Duration>| d.map_or(0, |d| d.as_micros() as u64);
    let mut report = SimulationReport {
        plugin: plugin.name.clone(),
        wit_version: plugin.wit_version.clone(),
        assigned: Vec::new(),
        reasons: unmet,
        evicted: Vec::new(),
        evictions_refused: 0,
        filtered: ids
            .into_iter()
            .filter(|id| !pending.iter().any(|run| &run.id == id))
            .collect(),
        dropped: 0,
        calls: latencies.len(),
        latency_min_us: us(latencies.first()),
        latency_p50_us: us(latencies.get(latencies.len() / 2)),
        latency_max_us: us(latencies.last()),
        failure: None,
        unexpected: Vec::new(),
    };
    match last {
        Some(Ok(answer)) => {
            let decision = convert::decision(pending.len(), &answer);
            settle(&mut report, &request, &decision, limits);
        }
        Some(Err(failure)) => report.failure = Some(failure.to_string()),
        None => {}
    }
    if let Some(expect) = &scenario.expect {
        report.unexpected = match &report.failure {
            Some(failure) => vec![format!("the plugin failed: {failure}")],
            None => expect.differences(&report),
        };
    }
    Ok(report)
}

/// What a claim makes of `decision`: the preemptions the host's rules allow, the runs that
/// pass the claim's check on the capacity those free, what it dropped, and the reasons for
/// the runs left pending.
fn settle(
    report: &mut SimulationReport,
    request: &ClaimRequest<'_>,
    decision: &Decision,
    limits: PreemptionLimits,
) {
    let rules = EvictionRules {
        per_claim: limits.per_claim,
        budget: limits.per_minute,
        max_preemptions: limits.max_preemptions,
        elsewhere: false,
    };
    let evictions = decision.checked_evictions(request, rules);
    let evicted: Vec<&EvictionRequest> = evictions
        .accepted
        .iter()
        .map(|&i| &decision.evictions[i])
        .collect();
    let left: Vec<HeldRun> = request
        .running
        .iter()
        .enumerate()
        .filter(|(i, run)| {
            run.worker_id == request.worker.id && !evicted.iter().any(|e| e.run == *i)
        })
        .map(|(_, run)| run.clone())
        .collect();
    let free = Capacity::free(&request.worker.resources, &left);
    let placements = place(
        &free,
        request.pending,
        decision.chosen.iter().copied(),
        request.max,
    );
    let id = |index: usize| request.pending[index].id.clone();
    report.dropped = placements.dropped();
    report.assigned = placements.placed.iter().map(|p| id(p.index)).collect();
    report.evicted = evicted
        .iter()
        .map(|e| {
            (
                request.running[e.run].id.clone(),
                id(e.for_run),
                e.reason.clone(),
            )
        })
        .collect();
    report.evictions_refused = evictions.refused.len();
    report.reasons.extend(
        decision
            .reasons
            .iter()
            .map(|(index, reason)| (id(*index), reason.clone())),
    );
}

/// The claim `gyoza plugins check` probes a plugin with, to show which optional parts of the
/// answer it uses: a full requester whose runs are preemptible and of low priority, a
/// high-priority run that fits only by preempting, and a run too large for any worker.
const PROBE: &str = r#"{
  "requester": "probe", "max": 4, "calls": 1, "queues": "interactive:weight=2",
  "workers": [
    {"id": "probe", "tags": ["probe"], "resources": {"cpu_cores": 4, "ram_mb": 8192},
     "running": [{"cpu": 2, "priority": 1, "preemptible": true, "queue": "batch", "ran_ms": 60000},
                 {"cpu": 2, "priority": 1, "preemptible": true, "queue": "batch", "ran_ms": 1000}]},
    {"id": "other", "resources": {"cpu_cores": 2, "ram_mb": 4096}}
  ],
  "pending": [
    {"id": "urgent", "priority": 9, "queue": "interactive", "labels": {"team": "probe"},
     "constraints": {"cpu": 2}},
    {"id": "huge", "priority": 1, "constraints": {"cpu": 64}}
  ]
}"#;

/// What `gyoza plugins check` says of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The plugin as `GET /strategies` shows it.
    #[serde(flatten)]
    pub info: StrategyInfo,
    /// What its WIT version offers, claim and answer.
    pub parts: Vec<&'static str>,
    /// What it imports.
    pub imports: Vec<String>,
    /// Its decision on the probe claim (`PROBE`): which optional parts of the answer it
    /// used there.
    pub probe: SimulationReport,
}

/// The parts of the interface a plugin of `wit_version` is given and may answer with.
fn parts(wit_version: &str) -> Vec<&'static str> {
    let mut parts = vec![
        "claim: pending runs (priority, cpu, ram, vram, waited)",
        "claim: workers and GPUs with free capacity",
        "answer: assign",
        "answer: deferred with a reason",
    ];
    match wit_version.split('.').next() {
        Some("0") if wit_version.starts_with("0.1") => parts.insert(0, "claim: lists of records"),
        Some("0") => parts.insert(0, "claim: columns"),
        _ => {
            parts.insert(0, "claim: columns and a string table");
            parts.extend([
                "claim: queue, definition, image, attempt, preemptible, tags and labels of pending runs",
                "claim: worker and GPU tags",
                "claim: running runs",
                "claim: queue weights, quotas and usage",
                "answer: wait codes",
                "answer: evict",
            ]);
        }
    }
    parts
}

/// `gyoza plugins check FILE`: what the plugin is, the parts of the interface its version
/// has, what it imports and what it answered to a probe claim, as text (or JSON).
pub fn check_command(file: &Path, json: bool) -> Result<String, ScenarioError> {
    let plugin = load(file, "")?;
    let info = plugin.info(false, &Stats::default());
    let probe: Scenario = serde_json::from_str(PROBE)
        .map_err(|e| ScenarioError::Scenario(format!("the probe claim: {e}")))?;
    let report = CheckReport {
        parts: parts(&info.wit_version),
        imports: plugin.imports.clone(),
        probe: simulate(file, &probe)?,
        info,
    };
    if json {
        return serde_json::to_string_pretty(&report)
            .map_err(|e| ScenarioError::Scenario(e.to_string()));
    }
    let info = &report.info;
    let mut out = format!(
        "ok: {} implements {}/strategy@{} (world `strategy`)\nsha256: {}\n",
        file.display(),
        WIT_PACKAGE,
        info.wit_version,
        info.sha256,
    );
    out.push_str(&format!(
        "interface {}@{}:\n",
        WIT_PACKAGE, info.wit_version
    ));
    for part in &report.parts {
        out.push_str(&format!("  {part}\n"));
    }
    out.push_str(&format!(
        "imports: {}\n",
        if report.imports.is_empty() {
            "none".to_owned()
        } else {
            report.imports.join(", ")
        }
    ));
    let probe = &report.probe;
    match &probe.failure {
        Some(failure) => out.push_str(&format!("probe claim: FAILED: {failure}\n")),
        None => out.push_str(&format!(
            "probe claim (a full worker, a high-priority run that fits only by preempting): assigned {}, reasons {}, evicted {}{}\n",
            probe.assigned.len(),
            probe.reasons.len(),
            probe.evicted.len(),
            if probe.evictions_refused > 0 {
                format!(", {} preemptions refused", probe.evictions_refused)
            } else {
                String::new()
            }
        )),
    }
    out.push_str(&format!(
        "copy it into the server's plugins directory to load it as strategy '{}'",
        info.name
    ));
    Ok(out)
}

/// `gyoza plugins simulate FILE --scenario SCENARIO`: the decision, as text (or JSON).
pub fn simulate_command(file: &Path, scenario: &Path, json: bool) -> Result<String, ScenarioError> {
    let text = std::fs::read_to_string(scenario)
        .map_err(|e| ScenarioError::Scenario(format!("cannot read {}: {e}", scenario.display())))?;
    let scenario: Scenario = serde_json::from_str(&text)
        .map_err(|e| ScenarioError::Scenario(format!("{}: {e}", scenario.display())))?;
    simulate_scenario_command(file, &scenario, json)
}

/// [`simulate_command`] on a scenario already read (e.g. from a live server).
pub fn simulate_scenario_command(
    file: &Path,
    scenario: &Scenario,
    json: bool,
) -> Result<String, ScenarioError> {
    let report = simulate(file, scenario)?;
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| ScenarioError::Scenario(e.to_string()))?;
        if !report.unexpected.is_empty() {
            return Err(ScenarioError::Unexpected(text));
        }
        return Ok(text);
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
    for (victim, for_run, reason) in &report.evicted {
        out.push_str(&format!("evict {victim} for {for_run}: {reason}\n"));
    }
    if report.evictions_refused > 0 {
        out.push_str(&format!(
            "preemptions refused by the host's rules: {}\n",
            report.evictions_refused
        ));
    }
    if !report.filtered.is_empty() {
        out.push_str(&format!(
            "not shown to the plugin (the requester lacks a required tag): {}\n",
            report.filtered.join(", ")
        ));
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
    if scenario.expect.is_some() {
        if report.unexpected.is_empty() {
            out.push_str("as expected\n");
        } else {
            for difference in &report.unexpected {
                out.push_str(&format!("NOT AS EXPECTED: {difference}\n"));
            }
            return Err(ScenarioError::Unexpected(out));
        }
    }
    Ok(out)
}
