//! Workers, the runs they hold, and their free capacity.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DomainError;
use crate::resources::{Constraints, Labels, Resources};
use crate::run::{OpRun, OpRunState};
use crate::time::{self, Timestamp};

/// What a worker needs to execute a run (a claim answer, or a heartbeat's running op).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerOpRun {
    /// The run's id.
    pub id: String,
    /// Docker image reference.
    pub image: String,
    /// Inputs, defaults applied.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inputs: Map<String, Value>,
    /// Hardware requirements.
    #[serde(default)]
    pub constraints: Constraints,
    /// The attempt this claim is for (absent in heartbeats from older workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The GPU (index on the worker) the server placed this run on, for a run that needs VRAM;
    /// absent otherwise and from older servers (the worker then picks one itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_id: Option<u32>,
}

impl WorkerOpRun {
    /// The claim view of a run's current attempt.
    pub fn from_run(run: &OpRun) -> Self {
        Self {
            id: run.id.clone(),
            image: run.image.clone(),
            inputs: run.inputs.clone(),
            constraints: run.constraints.clone(),
            attempt: Some(run.current_attempt()),
            gpu_id: None,
        }
    }

    /// What a heartbeat needs to report this op: its id, attempt and GPU, without the inputs
    /// (which may be large and which the server already has).
    pub fn as_reported(&self) -> Self {
        Self {
            inputs: Map::new(),
            ..self.clone()
        }
    }
}

/// A run attempt a worker reported but does not hold (the server gave the run to another
/// worker or attempt, it finished, or it does not exist): the worker must stop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StopRun {
    /// The run's id.
    pub id: String,
    /// The attempt the worker reported (absent when its report named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// What scheduling strategies see of a run beyond its priority and resources (the 1.0
/// interface): stores keep it beside the run document, so that a claim reads it without
/// decoding runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFacts {
    /// Its queue.
    #[serde(default = "default_queue_name", with = "shared_str")]
    pub queue: Arc<str>,
    /// The definition it was created from, if any.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "shared_str::option"
    )]
    pub definition: Option<Arc<str>>,
    /// Its Docker image.
    #[serde(default, with = "shared_str")]
    pub image: Arc<str>,
    /// Its current attempt's number (1-based).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Whether it may be preempted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preemptible: bool,
    /// How often it was preempted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preemptions: u32,
    /// Its labels.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// When its current attempt was assigned, if it was.
    #[serde(
        with = "time::wire_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub assigned_at: Option<Timestamp>,
}

fn default_queue_name() -> Arc<str> {
    crate::resources::DEFAULT_QUEUE.into()
}

/// Serde for the shared strings of [`RunFacts`] (as plain strings on the wire; shared so that
/// the runs of a claim's window that name the same queue or image hold one copy of it).
mod shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(deserializer).map(Arc::from)
    }

    pub mod option {
        use std::sync::Arc;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            text: &Option<Arc<str>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match text {
                Some(text) => serializer.serialize_some(&**text),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Arc<str>>, D::Error> {
            Option::<String>::deserialize(deserializer).map(|text| text.map(Arc::from))
        }
    }
}

fn first_attempt() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for RunFacts {
    fn default() -> Self {
        Self {
            queue: default_queue_name(),
            definition: None,
            image: Arc::from(""),
            attempt: 1,
            preemptible: false,
            preemptions: 0,
            labels: Labels::new(),
            assigned_at: None,
        }
    }
}

impl RunFacts {
    /// The facts of `run` as it is now.
    pub fn of(run: &OpRun) -> Self {
        Self {
            queue: run.queue.as_str().into(),
            definition: run.op_definition.as_deref().map(Arc::from),
            image: run.image.as_str().into(),
            attempt: run.current_attempt(),
            preemptible: run.preemptible,
            preemptions: run.preemptions(),
            labels: run.labels.clone(),
            assigned_at: run.current().assigned_at,
        }
    }
}

/// The scheduling view of a pending run: what a strategy decides from, without the run's
/// inputs and history (stores read it from an index, not from the run document).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRun {
    /// The run's id.
    pub id: String,
    /// Scheduling priority; higher first.
    pub priority: i64,
    /// Creation time (FIFO within a priority).
    pub created_at: Timestamp,
    /// Hardware requirements and required tags.
    pub constraints: Constraints,
    /// Queue, labels and the rest strategies see.
    pub facts: RunFacts,
    /// The GPUs of the claiming worker it may be placed on, when its required tags are met
    /// only by some of them (set by a claim's tag check; `None`: any).
    pub only_gpus: Option<Vec<u32>>,
}

impl From<&OpRun> for PendingRun {
    fn from(run: &OpRun) -> Self {
        Self {
            id: run.id.clone(),
            priority: run.priority,
            created_at: run.created_at,
            constraints: run.constraints.clone(),
            facts: RunFacts::of(run),
            only_gpus: None,
        }
    }
}

/// A run a worker holds (its current attempt ASSIGNED or RUNNING), as capacity accounting
/// and scheduling strategies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldRun {
    /// The run's id.
    pub id: String,
    /// The worker holding it.
    pub worker_id: String,
    /// Hardware requirements.
    pub constraints: Constraints,
    /// The GPU it runs on, once the worker reported it.
    pub gpu_id: Option<u32>,
    /// Scheduling priority.
    pub priority: i64,
    /// Queue, labels and the rest strategies see.
    pub facts: RunFacts,
}

impl HeldRun {
    /// The held view of `run`, or `None` when no worker holds it.
    pub fn of(run: &OpRun) -> Option<Self> {
        if !matches!(run.state, OpRunState::Assigned | OpRunState::Running) {
            return None;
        }
        Some(Self {
            id: run.id.clone(),
            worker_id: run.worker_id()?.to_owned(),
            constraints: run.constraints.clone(),
            gpu_id: run.current().execution_summary.gpu_id,
            priority: run.priority,
            facts: RunFacts::of(run),
        })
    }
}

/// A worker as the server knows it from its heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Worker {
    /// Worker name.
    pub id: String,
    /// Hardware it offers.
    pub resources: Resources,
    /// Capability tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Runs it reported as executing in its last heartbeat.
    #[serde(default)]
    pub running_ops: Vec<WorkerOpRun>,
    /// First heartbeat.
    #[serde(with = "time::wire")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// Latest heartbeat.
    #[serde(with = "time::wire")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_heartbeat_at: Timestamp,
    /// The token of the worker process that sent the latest heartbeat (absent for workers
    /// that do not send one): another process heartbeating under the same id with another
    /// token is refused while this one is live (see [`Worker::from_heartbeat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// What a worker says about itself in a heartbeat: the domain side of the wire's
/// `HeartbeatRequest` (converted in [`crate::api`]), which stores merge into the [`Worker`]
/// they keep with [`Worker::from_heartbeat`].
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Worker name.
    pub worker_id: String,
    /// Hardware it offers.
    pub resources: Resources,
    /// Capability tags.
    pub tags: Vec<String>,
    /// Runs it is executing; `None` when the heartbeat does not say (older workers), which
    /// keeps what the worker reported before.
    pub running_ops: Option<Vec<WorkerOpRun>>,
    /// The sending process's instance token (`None` from workers that send none).
    pub instance: Option<String>,
    /// How recent the stored worker's heartbeat must be for another instance's heartbeat
    /// under its id to be refused (the server's worker timeout); `None`: never refused.
    pub exclusive_for: Option<chrono::Duration>,
}

impl Worker {
    /// The worker after `heartbeat` arrived at `now`: first-seen time kept from `existing`,
    /// and its running ops too when the heartbeat does not list them. The one merge of a
    /// heartbeat, whichever store keeps the worker.
    ///
    /// Refused ([`DomainError::WorkerIdInUse`]) when `existing` was last heartbeated by
    /// another instance (both tokens known and different) within `heartbeat.exclusive_for`:
    /// two live processes under one id would take each other's runs and containers. A
    /// heartbeat or a stored worker without a token (the seed's workers) is never refused.
    pub fn from_heartbeat(
        existing: Option<Worker>,
        heartbeat: Heartbeat,
        now: Timestamp,
    ) -> Result<Self, DomainError> {
        if let (Some(existing), Some(window)) = (&existing, heartbeat.exclusive_for) {
            let other = match (&existing.instance, &heartbeat.instance) {
                (Some(stored), Some(sent)) => stored != sent,
                _ => false,
            };
            let ago = now - existing.last_heartbeat_at;
            if other && ago <= window {
                return Err(DomainError::WorkerIdInUse {
                    worker_id: existing.id.clone(),
                    seconds_ago: ago.num_seconds().max(0),
                });
            }
        }
        Ok(Self {
            created_at: existing.as_ref().map_or(now, |w| w.created_at),
            running_ops: match heartbeat.running_ops {
                Some(ops) => ops,
                None => existing.map(|w| w.running_ops).unwrap_or_default(),
            },
            id: heartbeat.worker_id,
            resources: heartbeat.resources,
            tags: heartbeat.tags,
            last_heartbeat_at: now,
            instance: heartbeat.instance,
        })
    }

    /// Whether the worker heartbeated within `timeout` of `now`.
    pub fn is_active(&self, now: Timestamp, timeout: chrono::Duration) -> bool {
        now - self.last_heartbeat_at <= timeout
    }
}

/// A figure in megabytes as a signed free-capacity amount (saturating: stored documents may
/// predate the limits of [`crate::limits`]).
fn megabytes(mb: u64) -> i64 {
    i64::try_from(mb).unwrap_or(i64::MAX)
}

/// The free hardware of a worker: its resources less what its claimed runs need.
///
/// Missing constraint figures count as zero: a run without constraints always fits, so a claim
/// bounds how many runs it takes by other means (its `max`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Free CPU cores (negative when over-committed).
    pub cpu: i64,
    /// Free RAM in megabytes.
    pub ram_mb: i64,
    /// Free VRAM per GPU: (GPU id, megabytes).
    pub gpus: Vec<(u32, i64)>,
}

impl Capacity {
    /// The free capacity of `resources` once `held` (runs claimed by the worker) are placed.
    pub fn free(resources: &Resources, held: &[HeldRun]) -> Self {
        let mut capacity = Self {
            cpu: i64::from(resources.cpu_cores),
            ram_mb: megabytes(resources.ram_mb),
            gpus: resources
                .gpus
                .iter()
                .map(|g| (g.id, megabytes(g.vram_mb)))
                .collect(),
        };
        // Runs whose GPU is known first, so that the rest are placed on what remains.
        let (known, unknown): (Vec<&HeldRun>, Vec<&HeldRun>) =
            held.iter().partition(|run| run.gpu_id.is_some());
        for run in known.into_iter().chain(unknown) {
            capacity.take(&run.constraints, run.gpu_id);
        }
        capacity
    }

    /// Whether `constraints` fit; `Some(gpu)` names the GPU picked for a VRAM request
    /// (the one with the least free VRAM that is enough), `Some(None)` means no GPU needed.
    pub fn fit(&self, constraints: &Constraints) -> Option<Option<u32>> {
        self.fit_on(constraints, None)
    }

    /// [`Capacity::fit`] with the GPU picked among `only` when given (the GPUs whose tags
    /// meet a run's required tags).
    pub fn fit_on(&self, constraints: &Constraints, only: Option<&[u32]>) -> Option<Option<u32>> {
        if i64::from(constraints.cpu.unwrap_or(0)) > self.cpu
            || megabytes(constraints.ram_mb.unwrap_or(0)) > self.ram_mb
        {
            return None;
        }
        match constraints.vram_mb {
            None | Some(0) => Some(None),
            Some(vram) => self
                .gpus
                .iter()
                .filter(|(id, free)| {
                    *free >= megabytes(vram) && only.is_none_or(|only| only.contains(id))
                })
                .min_by_key(|(_, free)| *free)
                .map(|(id, _)| Some(*id)),
        }
    }

    /// Subtracts `constraints`, from GPU `gpu` if given, else from the best-fitting GPU.
    pub fn take(&mut self, constraints: &Constraints, gpu: Option<u32>) {
        self.cpu = self
            .cpu
            .saturating_sub(i64::from(constraints.cpu.unwrap_or(0)));
        self.ram_mb = self
            .ram_mb
            .saturating_sub(megabytes(constraints.ram_mb.unwrap_or(0)));
        if let Some(vram) = constraints.vram_mb.filter(|v| *v > 0) {
            let target = gpu.or_else(|| self.fit(constraints).flatten()).or_else(|| {
                // Over-committed already: charge the GPU with the most free VRAM.
                self.gpus
                    .iter()
                    .max_by_key(|(_, free)| *free)
                    .map(|(id, _)| *id)
            });
            if let Some(slot) = self.gpus.iter_mut().find(|(id, _)| Some(*id) == target) {
                slot.1 = slot.1.saturating_sub(megabytes(vram));
            }
        }
    }

    /// The largest free VRAM on one GPU, for messages.
    pub fn largest_free_vram(&self) -> i64 {
        self.gpus.iter().map(|(_, free)| *free).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Gpu;
    use crate::run::NewRun;

    fn resources() -> Resources {
        Resources {
            cpu_cores: 4,
            ram_mb: 8192,
            gpus: vec![
                Gpu {
                    id: 0,
                    vram_mb: 8192,
                    tags: vec![],
                },
                Gpu {
                    id: 1,
                    vram_mb: 16384,
                    tags: vec![],
                },
            ],
        }
    }

    fn run(cpu: u32, ram: u64, vram: Option<u64>) -> HeldRun {
        HeldRun {
            id: format!("r{cpu}"),
            worker_id: "w1".into(),
            constraints: Constraints {
                cpu: Some(cpu),
                ram_mb: Some(ram),
                vram_mb: vram,
                ..Constraints::default()
            },
            gpu_id: None,
            priority: 0,
            facts: RunFacts::default(),
        }
    }

    #[test]
    fn a_heartbeat_keeps_the_first_seen_time_and_unreported_running_ops() {
        let t0 = chrono::Utc::now();
        let beat = |running_ops| Heartbeat {
            worker_id: "w1".into(),
            resources: resources(),
            tags: vec!["fast".into()],
            running_ops,
            instance: None,
            exclusive_for: None,
        };
        let op = WorkerOpRun {
            id: "r1".into(),
            image: "img".into(),
            inputs: Map::new(),
            constraints: Constraints::default(),
            attempt: Some(1),
            gpu_id: None,
        };
        let first = Worker::from_heartbeat(None, beat(Some(vec![op.clone()])), t0).unwrap();
        assert_eq!((first.created_at, first.last_heartbeat_at), (t0, t0));
        let later = t0 + chrono::Duration::seconds(5);
        let second = Worker::from_heartbeat(Some(first.clone()), beat(None), later).unwrap();
        assert_eq!(second.created_at, t0, "first-seen time kept");
        assert_eq!(second.last_heartbeat_at, later);
        assert_eq!(
            second.running_ops,
            vec![op],
            "running ops kept when not reported"
        );
        let third = Worker::from_heartbeat(Some(second), beat(Some(vec![])), later).unwrap();
        assert!(third.running_ops.is_empty(), "an empty list is a report");
    }

    #[test]
    fn another_live_instance_under_the_same_id_is_refused_and_the_same_one_is_not() {
        let t0 = chrono::Utc::now();
        let window = chrono::Duration::seconds(60);
        let beat = |instance: Option<&str>| Heartbeat {
            worker_id: "w1".into(),
            resources: resources(),
            tags: vec![],
            running_ops: None,
            instance: instance.map(str::to_owned),
            exclusive_for: Some(window),
        };
        let first = Worker::from_heartbeat(None, beat(Some("a")), t0).unwrap();
        assert_eq!(first.instance.as_deref(), Some("a"));
        let at = |s| t0 + chrono::Duration::seconds(s);
        let err = Worker::from_heartbeat(Some(first.clone()), beat(Some("b")), at(12)).unwrap_err();
        assert_eq!(
            err,
            DomainError::WorkerIdInUse {
                worker_id: "w1".into(),
                seconds_ago: 12
            }
        );
        assert!(
            err.to_string().contains("'w1'") && err.to_string().contains("12 s ago"),
            "{err}"
        );
        // Right at the window's edge it is still live; past it, the new instance takes over.
        assert!(Worker::from_heartbeat(Some(first.clone()), beat(Some("b")), at(60)).is_err());
        let taken = Worker::from_heartbeat(Some(first.clone()), beat(Some("b")), at(61)).unwrap();
        assert_eq!(taken.instance.as_deref(), Some("b"));
        // The same instance (a restart from the same state directory) is accepted at once.
        assert!(Worker::from_heartbeat(Some(first.clone()), beat(Some("a")), at(1)).is_ok());
        // Workers without a token (the seed's) are never refused, nor refuse others.
        assert!(Worker::from_heartbeat(Some(first.clone()), beat(None), at(1)).is_ok());
        let seed = Worker::from_heartbeat(None, beat(None), t0).unwrap();
        assert!(Worker::from_heartbeat(Some(seed), beat(Some("b")), at(1)).is_ok());
        // No window (a caller that does not ask for exclusivity): never refused.
        let lenient = Heartbeat {
            exclusive_for: None,
            ..beat(Some("b"))
        };
        assert!(Worker::from_heartbeat(Some(first), lenient, at(1)).is_ok());
    }

    #[test]
    fn only_assigned_and_running_runs_are_held() {
        let now = chrono::Utc::now();
        let mut run = OpRun::new(
            NewRun {
                image: "x".into(),
                ..NewRun::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(HeldRun::of(&run), None);
        run.assign("w1", now).unwrap();
        let held = HeldRun::of(&run).unwrap();
        assert_eq!((held.worker_id.as_str(), held.gpu_id), ("w1", None));
    }

    #[test]
    fn held_runs_reduce_free_capacity() {
        let capacity = Capacity::free(
            &resources(),
            &[run(1, 1024, Some(4096)), run(2, 2048, None)],
        );
        assert_eq!(capacity.cpu, 1);
        assert_eq!(capacity.ram_mb, 5120);
        // The 4096 MB request went to the tightest GPU that fit (GPU 0).
        assert_eq!(capacity.gpus, vec![(0, 4096), (1, 16384)]);
    }

    #[test]
    fn fit_picks_the_tightest_gpu() {
        let capacity = Capacity::free(&resources(), &[]);
        let needs = |vram| Constraints {
            cpu: Some(1),
            ram_mb: Some(1),
            vram_mb: Some(vram),
            ..Constraints::default()
        };
        assert_eq!(capacity.fit(&needs(6000)), Some(Some(0)));
        assert_eq!(capacity.fit(&needs(12000)), Some(Some(1)));
        assert_eq!(capacity.fit(&needs(20000)), None);
        assert_eq!(
            capacity.fit(&Constraints {
                cpu: Some(5),
                ..Constraints::default()
            }),
            None
        );
        assert_eq!(capacity.fit(&Constraints::default()), Some(None));
    }
}
