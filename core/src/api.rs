//! Request and response bodies of the REST API.
//!
//! Field names and shapes follow the original gyoza server, so that its clients work
//! unchanged. Where this server shows more than the original did (a run's `attempts`,
//! `current_attempt`, `available_at`; a worker's `active`), it only adds fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::definition::{InputSpec, OpDefinition, OutputSpec};
use crate::error::DomainError;
use crate::resources::{Constraints, EventDelivery, Labels, Resources, RetryPolicy, default_queue};
use crate::run::{EventType, ExecutionSummary, NewRun, OpAttempt, OpRun, OpRunState};
use crate::time::{self, Timestamp};
use crate::worker::{Heartbeat, StopRun, Worker, WorkerOpRun};

/// The priority a run gets when the request names none (the original client's default).
pub const DEFAULT_PRIORITY: i64 = 5;

fn default_priority() -> i64 {
    DEFAULT_PRIORITY
}

/// Every error answer: `{"detail": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What was wrong, for a person to read.
    pub detail: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: String,
}

/// `POST /definitions`: create or replace a definition (same id + version replaces).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpDefinitionCreate {
    /// Name.
    pub id: String,
    /// Version (semantic versions order "latest").
    pub version: String,
    /// Docker image reference.
    pub image: String,
    /// Accepted inputs.
    #[serde(default)]
    pub input_specs: Option<BTreeMap<String, InputSpec>>,
    /// Produced outputs.
    #[serde(default)]
    pub output_specs: Option<BTreeMap<String, OutputSpec>>,
    /// Hardware requirements.
    #[serde(default)]
    pub constraints: Option<Constraints>,
    /// Retry rules.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Event delivery.
    #[serde(default)]
    pub event_delivery: Option<EventDelivery>,
    /// The queue its runs are in (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Labels its runs get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Whether its runs may be preempted (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
}

impl OpDefinitionCreate {
    /// The definition this request describes, validated. `created_at` is kept from the
    /// version it replaces, if any.
    pub fn into_definition(
        self,
        created_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<OpDefinition, DomainError> {
        let definition = OpDefinition {
            id: self.id,
            version: self.version,
            image: self.image,
            input_specs: self.input_specs.unwrap_or_default(),
            output_specs: self.output_specs.unwrap_or_default(),
            constraints: self.constraints.unwrap_or_default(),
            retry_policy: self.retry_policy.unwrap_or_default(),
            event_delivery: self.event_delivery.unwrap_or_default(),
            queue: self.queue.unwrap_or_else(default_queue),
            labels: self.labels.unwrap_or_default(),
            preemptible: self.preemptible.unwrap_or(false),
            created_at: created_at.unwrap_or(now),
            updated_at: now,
        };
        definition.validate()?;
        Ok(definition)
    }
}

/// `POST /runs`: an ad-hoc run, without a definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunCreate {
    /// Docker image reference.
    pub image: String,
    /// Scheduling priority, >= 0 (default 5).
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Inputs.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inputs: Map<String, Value>,
    /// Hardware requirements.
    #[serde(default)]
    pub constraints: Option<Constraints>,
    /// Retry rules.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Event delivery.
    #[serde(default)]
    pub event_delivery: Option<EventDelivery>,
    /// The queue it is in (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Whether it may be preempted (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
}

impl OpRunCreate {
    /// The new run this request describes.
    pub fn into_run(self, now: Timestamp) -> Result<OpRun, DomainError> {
        OpRun::new(
            NewRun {
                image: self.image,
                priority: self.priority,
                inputs: self.inputs,
                constraints: self.constraints.unwrap_or_default(),
                retry_policy: self.retry_policy.unwrap_or_default(),
                event_delivery: self.event_delivery.unwrap_or_default(),
                queue: self.queue.unwrap_or_else(default_queue),
                labels: self.labels.unwrap_or_default(),
                preemptible: self.preemptible.unwrap_or(false),
                op_definition: None,
                op_definition_version: None,
            },
            now,
        )
    }
}

/// `POST /runs/batch`: up to [`crate::limits::MAX_BATCH_RUNS`] ad-hoc runs at once. Each item
/// is an [`OpRunCreate`], checked on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunBatchCreate {
    /// The runs, in the order they are created (FIFO within a priority).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<OpRunCreate>))]
    pub runs: Vec<Value>,
}

/// One item's outcome in a [`OpRunBatchAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunBatchItem {
    /// Its index in the request's `runs`.
    pub index: usize,
    /// 201 when created, else the status a `POST /runs` of it alone would have answered.
    pub status: u16,
    /// The run created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<OpRunView>,
    /// Why it was not created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The answer of `POST /runs/batch`: one item per requested run, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunBatchAnswer {
    /// How many were created.
    pub created: usize,
    /// How many were refused.
    pub failed: usize,
    /// Per run, in the request's order.
    pub results: Vec<OpRunBatchItem>,
}

/// `POST /definitions/{name}/runs`: a run from a definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunCreateFromDefinition {
    /// Inputs; validated against the definition, defaults applied.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inputs: Map<String, Value>,
    /// Scheduling priority, >= 0 (default 5).
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Constraints of this run that differ from the definition's: each figure given replaces
    /// the definition's, the others are inherited (e.g. `{"timeout_s": 30}`; `0` drops a
    /// timeout). Absent: the definition's constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
    /// The queue it is in. Absent: the definition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Labels added over the definition's (a key given here replaces the definition's value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Whether it may be preempted. Absent: the definition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
}

impl OpRunCreateFromDefinition {
    /// The new run: inputs validated with defaults applied; constraints (with this request's
    /// overrides), retry policy and event delivery copied from the definition.
    pub fn into_run(self, definition: &OpDefinition, now: Timestamp) -> Result<OpRun, DomainError> {
        let inputs = definition.prepare_inputs(&self.inputs)?;
        let constraints = match &self.constraints {
            Some(overrides) => definition.constraints.overridden_by(overrides),
            None => definition.constraints.clone(),
        };
        let mut labels = definition.labels.clone();
        labels.extend(self.labels.unwrap_or_default());
        OpRun::new(
            NewRun {
                image: definition.image.clone(),
                priority: self.priority,
                inputs,
                constraints,
                retry_policy: definition.retry_policy.clone(),
                event_delivery: definition.event_delivery.clone(),
                queue: self.queue.unwrap_or_else(|| definition.queue.clone()),
                labels,
                preemptible: self.preemptible.unwrap_or(definition.preemptible),
                op_definition: Some(definition.id.clone()),
                op_definition_version: Some(definition.version.clone()),
            },
            now,
        )
    }
}

/// `PATCH /runs/{id}`: change state, outputs or priority.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunUpdate {
    /// New state name.
    #[serde(default)]
    pub state: Option<String>,
    /// Replacement outputs of the current attempt.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub outputs: Option<Map<String, Value>>,
    /// New priority, >= 0.
    #[serde(default)]
    pub priority: Option<i64>,
}

impl OpRunUpdate {
    /// Applies the update to `run`; nothing changes unless every part is valid.
    pub fn apply(self, run: &mut OpRun, now: Timestamp) -> Result<(), DomainError> {
        let state = self
            .state
            .as_deref()
            .map(str::parse::<OpRunState>)
            .transpose()?;
        if let Some(priority) = self.priority {
            crate::run::check_priority(priority)?;
        }
        if let Some(state) = state {
            run.set_state(state, now)?;
        }
        if let Some(outputs) = self.outputs {
            run.set_outputs(outputs, now);
        }
        if let Some(priority) = self.priority {
            run.set_priority(priority, now)?;
        }
        Ok(())
    }
}

/// `POST /runs/{id}/events`: append an event to the current attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddEventRequest {
    /// Event type name (STARTED, INFO, PROGRESS, COMPLETED, FAILED, CANCELLED, ERROR, RETRIED).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Message, or the percentage of a PROGRESS event.
    #[serde(default)]
    pub msg: Value,
    /// Event-specific data.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Map<String, Value>>,
    /// The attempt the sender works on (workers send it): an event for an attempt that is no
    /// longer current is refused with 409 and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl AddEventRequest {
    /// Applies the event to `run`.
    pub fn apply(self, run: &mut OpRun, now: Timestamp) -> Result<(), DomainError> {
        run.check_attempt(self.attempt)?;
        let event_type: EventType = self.event_type.parse()?;
        let msg = match self.msg {
            Value::Null => Value::String(String::new()),
            msg => msg,
        };
        run.add_event(event_type, msg, self.payload.unwrap_or_default(), now)
    }
}

/// `POST /workers/{id}/events`: up to [`crate::limits::MAX_BATCH_EVENTS`] events of runs the
/// worker holds, in one request. Each item is a [`WorkerEvent`], checked on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerEventBatch {
    /// The events, applied in this order to each run.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<WorkerEvent>))]
    pub events: Vec<Value>,
}

/// One event of a [`WorkerEventBatch`]: what `POST /runs/{run_id}/events` takes, and the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerEvent {
    /// The run the event is for; the worker must hold it (ASSIGNED or RUNNING there).
    pub run_id: String,
    /// The event.
    #[serde(flatten)]
    pub event: AddEventRequest,
}

/// One item's outcome in a [`WorkerEventBatchAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerEventOutcome {
    /// Its index in the request's `events`.
    pub index: usize,
    /// 200 when applied, else the status `POST /runs/{run_id}/events` of it alone would have
    /// answered (409 as well for a run the worker does not hold).
    pub status: u16,
    /// The run's state once the event was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<OpRunState>,
    /// Why it was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The answer of `POST /workers/{id}/events`: one item per event, in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerEventBatchAnswer {
    /// How many were applied.
    pub applied: usize,
    /// How many were refused.
    pub failed: usize,
    /// Per event, in the request's order.
    pub results: Vec<WorkerEventOutcome>,
}

/// Longest `reason` a [`ReleaseRequest`] may give, in characters.
pub const MAX_RELEASE_REASON_CHARS: usize = 1000;

/// `POST /runs/{id}/release`: a worker hands back a run it cannot finish (it is shutting
/// down, or its Docker engine went away). The attempt ends FAILED with "worker <id> handed the
/// run back: <reason>" and the run is requeued as a new attempt, outside the retry budget
/// (as after a lost worker, and under the same cap).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseRequest {
    /// The worker handing the run back; it must be the one holding the run.
    pub worker_id: String,
    /// The attempt it is handing back: an attempt that is no longer current gets 409.
    pub attempt: u32,
    /// Why, for people reading the run (default "shutting down"; at most 1000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReleaseRequest {
    /// The reason to record: the one given (trimmed), else "shutting down"; refused when too
    /// long.
    pub fn reason(&self) -> Result<String, DomainError> {
        let reason = self.reason.as_deref().map(str::trim).unwrap_or_default();
        if reason.chars().count() > MAX_RELEASE_REASON_CHARS {
            return Err(DomainError::InvalidEvent(format!(
                "release reason is longer than {MAX_RELEASE_REASON_CHARS} characters"
            )));
        }
        Ok(if reason.is_empty() {
            "shutting down".to_owned()
        } else {
            reason.to_owned()
        })
    }

    /// Applies the hand-back to `run` (see [`OpRun::release`]).
    pub fn apply(
        &self,
        run: &mut OpRun,
        max_requeues: usize,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        let reason = self.reason()?;
        run.release(&self.worker_id, self.attempt, &reason, max_requeues, now)
    }
}

/// A run as the API shows it: the run's own fields plus its current attempt's progress,
/// events, outputs and execution summary, and the list of all attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunView {
    /// Run id.
    pub id: String,
    /// Current state.
    pub state: OpRunState,
    /// Scheduling priority.
    pub priority: i64,
    /// Docker image reference.
    pub image: String,
    /// Inputs (defaults applied).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inputs: Map<String, Value>,
    /// Current attempt's outputs.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub outputs: Map<String, Value>,
    /// Current attempt's progress (0–100).
    pub progress: u8,
    /// The end of the current attempt's timeline: at most the last
    /// [`limits::RUN_VIEW_EVENTS`](crate::limits::RUN_VIEW_EVENTS) events of the run (fewer in
    /// `GET /runs`); `GET /runs/{id}/events` pages through all of them.
    pub events: Vec<crate::run::EventEntry>,
    /// Events in the current attempt's whole timeline: more than `events` holds when the view
    /// shows only its end (each attempt says the same in its own `events_total`).
    #[serde(default)]
    pub events_total: u64,
    /// Current attempt's execution summary.
    pub execution_summary: ExecutionSummary,
    /// Hardware requirements.
    pub constraints: Constraints,
    /// Retry rules.
    pub retry_policy: RetryPolicy,
    /// Event delivery.
    pub event_delivery: EventDelivery,
    /// The queue it is in.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
    /// Whether it may be preempted.
    #[serde(default)]
    pub preemptible: bool,
    /// Parent definition, `null` for ad-hoc runs.
    pub op_definition: Option<String>,
    /// Parent definition's version.
    pub op_definition_version: Option<String>,
    /// Creation time.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: String,
    /// Last change.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: String,
    /// Retry backoff: not claimable before this time.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub available_at: Option<String>,
    /// Current attempt number (1-based).
    pub current_attempt: u32,
    /// Every attempt, oldest first.
    pub attempts: Vec<OpAttempt>,
    /// Why a PENDING run waits, as the scheduling strategy last said (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<RunScheduling>,
}

/// What the scheduler last said about a pending run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunScheduling {
    /// Why it was left pending, e.g. "needs 16384 MB VRAM; largest free GPU has 8192 MB".
    pub reason: String,
    /// The strategy that said so.
    pub strategy: String,
    /// When (the claim that decided).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub decided_at: String,
}

impl From<&OpRun> for OpRunView {
    fn from(run: &OpRun) -> Self {
        let current = run.current();
        Self {
            id: run.id.clone(),
            state: run.state,
            priority: run.priority,
            image: run.image.clone(),
            inputs: run.inputs.clone(),
            outputs: current.outputs.clone(),
            progress: current.progress,
            events: current.events.clone(),
            events_total: current.events_total,
            execution_summary: current.execution_summary.clone(),
            constraints: run.constraints.clone(),
            retry_policy: run.retry_policy.clone(),
            event_delivery: run.event_delivery.clone(),
            queue: run.queue.clone(),
            labels: run.labels.clone(),
            preemptible: run.preemptible,
            op_definition: run.op_definition.clone(),
            op_definition_version: run.op_definition_version.clone(),
            created_at: time::to_wire(&run.created_at),
            updated_at: time::to_wire(&run.updated_at),
            available_at: run.available_at.as_ref().map(time::to_wire),
            current_attempt: current.attempt,
            attempts: run.attempts.clone(),
            scheduling: None,
        }
    }
}

/// `GET /runs`: one page of runs, newest first (Stripe-style list object).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRunList {
    /// Always `list`.
    pub object: String,
    /// The page.
    pub data: Vec<OpRunView>,
    /// Whether more runs lie beyond this page in the direction of travel.
    pub has_more: bool,
    /// Always `/runs`.
    pub url: String,
}

/// One event as `GET /runs/{id}/events` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    /// Index in its attempt's timeline (pass it as `after` to poll for newer ones).
    pub id: usize,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it was recorded.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub t: String,
    /// Message.
    pub msg: Value,
    /// The run's state now.
    pub state: OpRunState,
    /// Event-specific data.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Map<String, Value>,
}

/// `GET /runs/{id}/events`: one page of an attempt's timeline, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventsResponse {
    /// The page.
    pub events: Vec<EventView>,
    /// Whether more events lie beyond the page in the direction of travel (after its last
    /// event, or before its first for a `before` page).
    #[serde(default)]
    pub has_more: bool,
    /// The attempt the events belong to.
    #[serde(default)]
    pub attempt: u32,
    /// Events in that attempt's whole timeline.
    #[serde(default)]
    pub events_total: u64,
}

impl EventsResponse {
    /// A page of attempt `attempt` (of `events_total` events) of a run now in `state`: each
    /// event with its index in the timeline.
    pub fn page(
        state: OpRunState,
        attempt: u32,
        events_total: u64,
        events: Vec<(u64, crate::run::EventEntry)>,
        has_more: bool,
    ) -> Self {
        let events = events
            .into_iter()
            .map(|(index, e)| EventView {
                id: usize::try_from(index).unwrap_or(usize::MAX),
                event_type: e.event_type,
                t: time::to_wire(&e.t),
                msg: e.msg,
                state,
                payload: e.payload,
            })
            .collect();
        Self {
            events,
            has_more,
            attempt,
            events_total,
        }
    }
}

/// `POST /workers/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    /// Worker name.
    pub worker_id: String,
    /// Hardware it offers.
    pub resources: Resources,
    /// Capability tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Runs it is executing. Each needs only its `id` and `attempt`: the rest of a claim's
    /// view (`image`, `inputs`, `constraints`), which seed workers send back, is accepted but
    /// optional.
    #[serde(default, deserialize_with = "reported_ops")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<ReportedOp>>))]
    pub running_ops: Option<Vec<WorkerOpRun>>,
    /// A token of the worker process, the same across its restarts (gyoza workers keep it in
    /// their state directory). While a worker with one token is live, a heartbeat under the
    /// same id with another token is refused with 409. Optional: a heartbeat without one is
    /// never refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// A running op as a heartbeat reports it: what [`WorkerOpRun`] holds, all optional but the id.
#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
struct ReportedOp {
    /// The run's id.
    id: String,
    /// The attempt the worker executes (absent from older workers: any attempt).
    #[serde(default)]
    attempt: Option<u32>,
    /// Docker image reference (accepted, not needed).
    #[serde(default)]
    image: String,
    /// Inputs (accepted, not needed).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    inputs: Map<String, Value>,
    /// Hardware requirements (accepted, not needed).
    #[serde(default)]
    constraints: Constraints,
    /// The GPU the run is on.
    #[serde(default)]
    gpu_id: Option<u32>,
}

/// Reads a heartbeat's `running_ops` leniently (see [`ReportedOp`]); a claim answer's ops are
/// read strictly, as [`WorkerOpRun`] says.
fn reported_ops<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<WorkerOpRun>>, D::Error> {
    let ops = Option::<Vec<ReportedOp>>::deserialize(deserializer)?;
    Ok(ops.map(|ops| {
        ops.into_iter()
            .map(|op| WorkerOpRun {
                id: op.id,
                image: op.image,
                inputs: op.inputs,
                constraints: op.constraints,
                attempt: op.attempt,
                gpu_id: op.gpu_id,
            })
            .collect()
    }))
}

impl HeartbeatRequest {
    /// Refuses a heartbeat whose figures or strings are beyond their limits (see
    /// [`crate::limits`]), naming every one.
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut problems = self.resources.problems();
        crate::limits::bytes_at_most(
            &mut problems,
            "worker_id",
            &self.worker_id,
            crate::limits::MAX_ID_BYTES,
        );
        crate::resources::tag_problems(&mut problems, "tags", &self.tags);
        if let Some(instance) = &self.instance {
            crate::limits::bytes_at_most(
                &mut problems,
                "instance",
                instance,
                crate::limits::MAX_ID_BYTES,
            );
        }
        let ops = self.running_ops.as_deref().unwrap_or_default();
        crate::limits::at_most(
            &mut problems,
            "running_ops (entries)",
            ops.len(),
            crate::limits::MAX_RUNNING_OPS,
        );
        // One message for all the ids too long: the first names the limit.
        if let Some(op) = ops
            .iter()
            .find(|op| op.id.len() > crate::limits::MAX_ID_BYTES)
        {
            crate::limits::bytes_at_most(
                &mut problems,
                "running_ops[].id",
                &op.id,
                crate::limits::MAX_ID_BYTES,
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DomainError::OutOfRange(problems))
        }
    }
}

impl From<HeartbeatRequest> for Heartbeat {
    fn from(request: HeartbeatRequest) -> Self {
        Self {
            worker_id: request.worker_id,
            resources: request.resources,
            tags: request.tags,
            running_ops: request.running_ops,
            instance: request.instance,
            // The API layer sets the server's worker timeout.
            exclusive_for: None,
        }
    }
}

/// A worker as `GET /workers` and the heartbeat answer show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerView {
    /// The worker.
    #[serde(flatten)]
    pub worker: Worker,
    /// Whether it heartbeated within the server's worker timeout.
    pub active: bool,
    /// In a heartbeat's answer: the reported runs the server does not give to this worker
    /// (held by another worker, at another attempt, finished, or unknown), which the worker
    /// must stop. Absent when there are none, and from `GET /workers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<StopRun>,
}

/// `POST /workers/{id}/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    /// Runs now ASSIGNED to the worker (may be empty).
    pub ops: Vec<WorkerOpRun>,
}

/// What happens to a claim when the active strategy traps, times out or returns an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    /// The embedded `priority` strategy decides the claim instead.
    Fallback,
    /// The claim gets no runs.
    None,
}

impl FailPolicy {
    /// Every policy's name, as the wire and the command line spell it.
    pub const NAMES: [&'static str; 2] = ["fallback", "none"];

    /// This policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fallback => "fallback",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for FailPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FailPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "fallback" => Ok(Self::Fallback),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown fail policy '{other}'; expected one of: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// One strategy as `GET /strategies` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StrategyInfo {
    /// Name (a plugin file's stem, or a built-in's name).
    pub name: String,
    /// The `gyoza:scheduler` version it implements.
    pub wit_version: String,
    /// sha256 of its wasm.
    pub sha256: String,
    /// `builtin` or the file it was loaded from.
    pub origin: String,
    /// Whether claims use it.
    pub active: bool,
    /// Calls since the server started.
    pub calls: u64,
    /// Calls that trapped, timed out, ran out of memory or returned an error.
    pub failures: u64,
    /// Answer entries dropped by the host's checks (unknown, duplicate or over-capacity).
    pub dropped: u64,
    /// Preemptions it asked for that were carried out.
    #[serde(default)]
    pub evictions: u64,
    /// Preemptions it asked for that the host refused (its rules, or the run had moved).
    #[serde(default)]
    pub evictions_refused: u64,
    /// Median call latency over recent calls, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile call latency over recent calls, in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// The latest failure.
    pub last_failure: Option<String>,
}

/// A plugin file that was refused, as `GET /strategies` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RejectedPlugin {
    /// The file.
    pub file: String,
    /// Why.
    pub error: String,
}

/// `GET /strategies` and the answer of `PUT /strategies/active`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StrategyList {
    /// Loaded strategies, by name.
    pub strategies: Vec<StrategyInfo>,
    /// The active one.
    pub active: String,
    /// What a failed call leads to.
    pub fail_policy: FailPolicy,
    /// Plugin files that were refused (and why).
    pub rejected: Vec<RejectedPlugin>,
}

/// `PUT /strategies/active`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActivateStrategyRequest {
    /// Name of a loaded strategy.
    pub name: String,
}

/// `GET /queues`: each queue's fair-share state now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueList {
    /// Half-life of the decayed usage (`GYOZA_QUEUE_USAGE_HALF_LIFE`), in seconds.
    pub half_life_s: u32,
    /// Every queue that is configured (`GYOZA_QUEUES`), has PENDING runs or has runs held by
    /// active workers, by name.
    pub queues: Vec<QueueView>,
}

/// One queue of [`QueueList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// Its weight (1 when not configured).
    pub weight: u32,
    /// Its quotas (`null`: none).
    pub quota: QueueQuota,
    /// PENDING runs of the queue, all of them (runs waiting out a retry backoff included).
    pub pending: u64,
    /// Runs of the queue held (ASSIGNED or RUNNING) by active workers.
    pub running: u64,
    /// What those runs hold now.
    pub held: QueueHeld,
    /// Usage over the decaying window: the queue's ended attempts plus the runs held now,
    /// as a claim shows it to strategies.
    pub usage: QueueUsage,
    /// Dominant share: the largest of held CPU / RAM / VRAM over the active cluster's total
    /// of that resource (resources the cluster has none of skipped), divided by the weight;
    /// 0 when it holds nothing.
    pub share: f64,
}

/// A queue's quotas: the most its runs may hold at once (`null`: no quota).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueQuota {
    /// CPU cores.
    pub cpu: Option<u64>,
    /// RAM in megabytes.
    pub ram_mb: Option<u64>,
    /// VRAM in megabytes.
    pub vram_mb: Option<u64>,
    /// Runs held at once.
    pub runs: Option<u64>,
}

/// What a queue's held runs hold now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueHeld {
    /// CPU cores.
    pub cpu: u64,
    /// RAM in megabytes.
    pub ram_mb: u64,
    /// VRAM in megabytes.
    pub vram_mb: u64,
}

/// A queue's usage over the decaying window: every second a resource was held, weighted by
/// 2^(−age / half_life_s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueUsage {
    /// CPU-core-seconds.
    pub cpu_seconds: f64,
    /// RAM-megabyte-seconds.
    pub ram_mb_seconds: f64,
    /// VRAM-megabyte-seconds.
    pub vram_mb_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_heartbeat_may_report_its_runs_by_id_and_attempt_only() {
        let beat: HeartbeatRequest = serde_json::from_value(json!({
            "worker_id": "w1",
            "resources": {"cpu_cores": 1, "ram_mb": 1},
            "running_ops": [{"id": "r1", "attempt": 2}, {"id": "r2", "image": "x", "inputs": {"a": 1}}]
        }))
        .unwrap();
        let ops = beat.running_ops.unwrap();
        assert_eq!((ops[0].id.as_str(), ops[0].attempt), ("r1", Some(2)));
        assert_eq!((ops[1].image.as_str(), ops[1].attempt), ("x", None));
        assert_eq!(ops[1].inputs["a"], 1);
        assert!(ops[1].as_reported().inputs.is_empty());
        let unsaid: HeartbeatRequest = serde_json::from_value(json!({
            "worker_id": "w1", "resources": {"cpu_cores": 1, "ram_mb": 1}, "running_ops": null
        }))
        .unwrap();
        assert_eq!(unsaid.running_ops, None);
        let mut flood = unsaid.clone();
        flood.running_ops = Some(vec![ops[0].clone(); crate::limits::MAX_RUNNING_OPS + 1]);
        let err = flood.validate().unwrap_err().to_string();
        assert!(
            err.contains("running_ops (entries) must be at most 10000"),
            "{err}"
        );
        // A claim answer's ops are still read strictly.
        assert!(serde_json::from_value::<ClaimResponse>(json!({"ops": [{"id": "r1"}]})).is_err());
    }

    #[test]
    fn patch_with_one_bad_part_changes_nothing() {
        let now = chrono::Utc::now();
        let mut run = OpRunCreate {
            image: "x".into(),
            priority: 1,
            inputs: Map::new(),
            constraints: None,
            retry_policy: None,
            event_delivery: None,
            queue: None,
            labels: None,
            preemptible: None,
        }
        .into_run(now)
        .unwrap();
        let before = run.clone();
        let update: OpRunUpdate =
            serde_json::from_value(json!({"state": "RUNNING", "priority": -2})).unwrap();
        assert_eq!(
            update.apply(&mut run, now),
            Err(DomainError::NegativePriority(-2))
        );
        assert_eq!(run, before);
        let update: OpRunUpdate = serde_json::from_value(json!({"state": "DONE"})).unwrap();
        assert!(update.apply(&mut run, now).is_err());
        assert_eq!(run, before);
    }

    #[test]
    fn an_event_page_numbers_each_event_by_its_index() {
        let now = chrono::Utc::now();
        let entry = |i: i64| crate::run::EventEntry {
            t: now,
            event_type: EventType::Info,
            msg: json!(i),
            payload: Map::new(),
        };
        let page = EventsResponse::page(
            OpRunState::Running,
            2,
            40,
            vec![(7, entry(7)), (8, entry(8))],
            true,
        );
        let ids: Vec<usize> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![7, 8]);
        assert_eq!(
            (page.attempt, page.events_total, page.has_more),
            (2, 40, true)
        );
        assert_eq!(page.events[0].state, OpRunState::Running);
    }
}
