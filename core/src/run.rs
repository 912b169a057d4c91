//! Runs: the [`OpRun`] aggregate, its attempts, and the state machine that events drive.
//!
//! ```text
//! PENDING ──claim──▶ ASSIGNED ──STARTED──▶ RUNNING ──COMPLETED──▶ COMPLETED
//!    ▲                  │                    │
//!    │                  └──────FAILED────────┤──(attempts left)──▶ new attempt, PENDING
//!    │                                       └──(none left)──────▶ FAILED
//!    └──────────── RETRIED (manual) ◀── FAILED | CANCELLED | ASSIGNED | RUNNING
//! any non-terminal state ──CANCELLED──▶ CANCELLED
//! ASSIGNED | RUNNING ──worker lost, run handed back or no longer reported──▶ new attempt, PENDING
//!                      (outside the retry budget; capped, then FAILED)
//! RUNNING ──past constraints.timeout_s + grace (the server's check)──▶ as FAILED above
//! PENDING ──past constraints.queue_timeout_s──▶ FAILED (no retry)
//! ```
//!
//! # Timeouts
//! A run's `constraints.timeout_s` bounds each attempt's execution, counted from its STARTED
//! (when the worker is about to start its container). The worker enforces it itself and
//! reports an ordinary FAILED; [`OpRun::time_out`] is the server's backstop for a worker that
//! is gone or does not enforce it, applied only once the limit *plus a grace* has passed (the
//! grace covers the worker's own stop, SIGTERM then SIGKILL, and its report). An ASSIGNED
//! attempt that never started is not timed out: pulling an image is not running, and a held
//! run that does not start is already dealt with by the lost-worker and unreported-run rules.
//!
//! `constraints.queue_timeout_s` bounds how long an attempt waits in PENDING, counted from
//! when it became claimable ([`OpRun::queued_since`]: the run's creation, or its last
//! requeue once any retry backoff is over, so a retry's backoff is not counted as queueing).
//! [`OpRun::queue_time_out`] then FAILS the run for good: a run that could not get a worker in
//! time is not retried (another attempt would wait in the same queue).
//!
//! COMPLETED, FAILED and CANCELLED are terminal: a run in one of them is *locked* and refuses
//! every event but a manual RETRIED (a COMPLETED run refuses that too: its result stands).
//! Each attempt (`<run_id>_att_<n>`) keeps its own timeline, outputs and execution summary;
//! the run shows those of its current (last) attempt.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DomainError;
use crate::limits;
use crate::resources::{
    Constraints, EventDelivery, Labels, RetryPolicy, default_queue, queueing_problems,
};
use crate::time::{self, Timestamp};

/// Requeues per run after its worker went away (lost: no heartbeat within the worker timeout;
/// released: the worker handed the run back; or not reported: its live worker no longer lists
/// it) before the run FAILS, so that an op that
/// kills its workers does not loop forever. Such requeues do not use the op's retry budget.
pub const MAX_LOST_REQUEUES: usize = 3;

/// How often a run may be preempted before strategies may no longer preempt it (the
/// server's default; `GYOZA_MAX_PREEMPTIONS`). Preemptions do not use the retry budget.
pub const MAX_PREEMPTIONS: u32 = 3;

/// Who preempts a run, for [`OpRun::preempt`].
#[derive(Debug, Clone, Copy)]
pub struct Preemption<'a> {
    /// The run it makes room for.
    pub by: &'a str,
    /// That run's priority.
    pub by_priority: i64,
    /// The strategy that decided.
    pub strategy: &'a str,
    /// The strategy's reason (may be empty).
    pub reason: &'a str,
}

pub use crate::state::OpRunState;

impl FromStr for OpRunState {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| DomainError::UnknownState(s.to_owned()))
    }
}

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// The worker started the container (ASSIGNED → RUNNING).
    Started,
    /// Informational message.
    Info,
    /// Progress percentage in `msg` (0–100).
    Progress,
    /// Finished successfully; `payload.outputs` holds the outputs.
    Completed,
    /// Failed; `payload.error_message` says why. Retried while attempts remain.
    Failed,
    /// Cancelled.
    Cancelled,
    /// An error worth recording that does not end the run.
    Error,
    /// A new attempt was started (manually with `payload.force`, or after a failure).
    Retried,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 8] = [
        Self::Started,
        Self::Info,
        Self::Progress,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Error,
        Self::Retried,
    ];

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Info => "INFO",
            Self::Progress => "PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Error => "ERROR",
            Self::Retried => "RETRIED",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| DomainError::UnknownEventType(s.to_owned()))
    }
}

/// One entry of an attempt's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventEntry {
    /// When the server recorded it.
    #[serde(with = "time::wire")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub t: Timestamp,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// A message, or the percentage of a PROGRESS event.
    pub msg: Value,
    /// Event-specific data.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Map<String, Value>,
}

/// What is known about how an attempt ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionSummary {
    /// Time from STARTED to the end, in milliseconds.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// The worker that claimed (and ran) the attempt.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Why the attempt failed.
    #[serde(default)]
    pub error_message: Option<String>,
    /// The GPU the worker picked for it.
    #[serde(default)]
    pub gpu_id: Option<u32>,
}

/// One execution attempt of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpAttempt {
    /// `<run_id>_att_<n>`.
    pub id: String,
    /// The run it belongs to.
    pub op_run_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// This attempt's state.
    pub state: OpRunState,
    /// Progress percentage (0–100).
    pub progress: u8,
    /// The end of the timeline: the last `events.len()` of its `events_total` events (see
    /// [`OpAttempt::first_event`]). Stores keep the timeline apart from the run and load
    /// only part of it; a run built in memory has all of it.
    pub events: Vec<EventEntry>,
    /// Events in the whole timeline (absent in runs stored before gyoza counted them: then
    /// `events` is the whole timeline, see [`OpRun::settle`]).
    #[serde(default)]
    pub events_total: u64,
    /// Inputs as this attempt received them.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inputs: Map<String, Value>,
    /// Outputs it produced.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub outputs: Map<String, Value>,
    /// Worker, GPU, duration, error.
    pub execution_summary: ExecutionSummary,
    /// Hardware constraints at the time.
    pub constraints: Constraints,
    /// When it started waiting to be claimed, for an attempt after the first (its RETRIED
    /// event); absent for the first (the run's creation) and in runs stored before gyoza
    /// recorded it.
    #[serde(
        with = "time::wire_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub queued_at: Option<Timestamp>,
    /// When a worker claimed it (PENDING → ASSIGNED); absent in runs stored before gyoza
    /// recorded it.
    #[serde(with = "time::wire_opt", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub assigned_at: Option<Timestamp>,
    /// When its container started (STARTED).
    #[serde(with = "time::wire_opt", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(with = "time::wire_opt", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub finished_at: Option<Timestamp>,
    /// It ended because its worker went away: it stopped heartbeating (lost), or it handed
    /// the run back (shutting down, or its Docker engine became unreachable). Such attempts do
    /// not count against the retry policy (the op did not fail; its worker did), but their
    /// requeues are capped.
    #[serde(default)]
    pub worker_lost: bool,
    /// It ended because a scheduling strategy preempted it for a run of higher priority.
    /// Such attempts do not count against the retry policy either; the server caps how often
    /// a run is preempted (`GYOZA_MAX_PREEMPTIONS`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preempted: bool,
}

impl OpAttempt {
    fn new(run: &OpRun, number: u32) -> Self {
        Self {
            id: format!("{}_att_{number}", run.id),
            op_run_id: run.id.clone(),
            attempt: number,
            state: OpRunState::Pending,
            progress: 0,
            events: Vec::new(),
            events_total: 0,
            inputs: run.inputs.clone(),
            outputs: Map::new(),
            execution_summary: ExecutionSummary::default(),
            constraints: run.constraints.clone(),
            queued_at: None,
            assigned_at: None,
            started_at: None,
            finished_at: None,
            worker_lost: false,
            preempted: false,
        }
    }

    /// A copy without the timeline and inputs (filled in by [`OpRun::stored`]).
    fn clone_without_timeline(&self) -> OpAttempt {
        OpAttempt {
            id: self.id.clone(),
            op_run_id: self.op_run_id.clone(),
            attempt: self.attempt,
            state: self.state,
            progress: self.progress,
            events: Vec::new(),
            events_total: self.events_total,
            inputs: Map::new(),
            outputs: self.outputs.clone(),
            execution_summary: self.execution_summary.clone(),
            constraints: self.constraints.clone(),
            queued_at: self.queued_at,
            assigned_at: self.assigned_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            worker_lost: self.worker_lost,
            preempted: self.preempted,
        }
    }

    /// Index in the timeline of `events[0]`: the events before it are not loaded.
    pub fn first_event(&self) -> u64 {
        let loaded = u64::try_from(self.events.len()).unwrap_or(u64::MAX);
        self.events_total.saturating_sub(loaded)
    }

    /// Appends `entry` to the timeline.
    fn record(&mut self, entry: EventEntry) {
        self.events.push(entry);
        self.events_total = self.events_total.saturating_add(1);
    }

    /// Ends the attempt in `state` at `now`, recording its duration when it had started.
    fn finish(&mut self, state: OpRunState, now: Timestamp) {
        self.state = state;
        self.finished_at = Some(now);
        if let Some(started) = self.started_at {
            let ms = now.signed_duration_since(started).num_milliseconds();
            self.execution_summary.duration_ms = Some(u64::try_from(ms).unwrap_or(0));
        }
    }
}

/// What a new run is made of; see [`OpRun::new`]. `Default` is an empty run in the default
/// queue.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Docker image reference.
    pub image: String,
    /// Scheduling priority (>= 0, higher first).
    pub priority: i64,
    /// Inputs, defaults already applied.
    pub inputs: Map<String, Value>,
    /// Hardware requirements.
    pub constraints: Constraints,
    /// Retry rules.
    pub retry_policy: RetryPolicy,
    /// Event delivery.
    pub event_delivery: EventDelivery,
    /// The queue it is in.
    pub queue: String,
    /// Its labels.
    pub labels: Labels,
    /// Whether it may be preempted.
    pub preemptible: bool,
    /// The definition it was made from, if any.
    pub op_definition: Option<String>,
    /// That definition's version.
    pub op_definition_version: Option<String>,
}

impl Default for NewRun {
    fn default() -> Self {
        Self {
            image: String::new(),
            priority: 0,
            inputs: Map::new(),
            constraints: Constraints::default(),
            retry_policy: RetryPolicy::default(),
            event_delivery: EventDelivery::default(),
            queue: default_queue(),
            labels: Labels::new(),
            preemptible: false,
            op_definition: None,
            op_definition_version: None,
        }
    }
}

/// An execution of an op: the aggregate root over its attempts.
///
/// This is the stored form. The wire form is [`crate::api::OpRunView`], which also shows the
/// current attempt's progress, events, outputs and execution summary on the run itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRun {
    /// Unique id (a UUID).
    pub id: String,
    /// Current state.
    pub state: OpRunState,
    /// Scheduling priority, >= 0; higher runs first.
    pub priority: i64,
    /// Docker image reference.
    pub image: String,
    /// Inputs (defaults applied).
    pub inputs: Map<String, Value>,
    /// Hardware requirements.
    pub constraints: Constraints,
    /// Retry rules.
    pub retry_policy: RetryPolicy,
    /// Event delivery.
    pub event_delivery: EventDelivery,
    /// The queue it is in (`default` for a run stored before queues).
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Whether it may be preempted: its attempt stopped and the run requeued (outside its
    /// retry budget) for a run of higher priority.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preemptible: bool,
    /// Parent definition name, `None` for ad-hoc runs.
    pub op_definition: Option<String>,
    /// Parent definition version.
    #[serde(default)]
    pub op_definition_version: Option<String>,
    /// Creation time.
    #[serde(with = "time::wire")]
    pub created_at: Timestamp,
    /// Last change.
    #[serde(with = "time::wire")]
    pub updated_at: Timestamp,
    /// A retried run may not be claimed before this time (its retry backoff).
    #[serde(with = "time::wire_opt", default)]
    pub available_at: Option<Timestamp>,
    /// Every attempt; the last one is current.
    pub attempts: Vec<OpAttempt>,
}

impl OpRun {
    /// Creates a PENDING run with its first attempt.
    pub fn new(spec: NewRun, now: Timestamp) -> Result<Self, DomainError> {
        check_priority(spec.priority)?;
        spec.retry_policy
            .validate()
            .map_err(|e| DomainError::InvalidDefinition(vec![e]))?;
        if spec.image.trim().is_empty() {
            return Err(DomainError::InvalidDefinition(vec![
                "image must not be empty".into(),
            ]));
        }
        let mut problems = spec.constraints.problems();
        problems.extend(spec.retry_policy.problems());
        problems.extend(spec.event_delivery.problems());
        problems.extend(queueing_problems(&spec.queue, &spec.labels));
        limits::bytes_at_most(&mut problems, "image", &spec.image, limits::MAX_IMAGE_BYTES);
        if !problems.is_empty() {
            return Err(DomainError::OutOfRange(problems));
        }
        let mut run = Self {
            id: uuid::Uuid::new_v4().to_string(),
            state: OpRunState::Pending,
            priority: spec.priority,
            image: spec.image,
            inputs: spec.inputs,
            constraints: spec.constraints,
            retry_policy: spec.retry_policy,
            event_delivery: spec.event_delivery,
            queue: spec.queue,
            labels: spec.labels,
            preemptible: spec.preemptible,
            op_definition: spec.op_definition,
            op_definition_version: spec.op_definition_version,
            created_at: now,
            updated_at: now,
            available_at: None,
            attempts: Vec::new(),
        };
        run.attempts.push(OpAttempt::new(&run, 1));
        Ok(run)
    }

    /// Makes a run decoded from a store whole: an attempt stored before gyoza counted its
    /// events has them all loaded (so `events_total` is their number), and an attempt stored
    /// without its copy of the inputs (see [`OpRun::stored`]) gets the run's back.
    pub fn settle(&mut self) {
        for attempt in &mut self.attempts {
            let loaded = u64::try_from(attempt.events.len()).unwrap_or(u64::MAX);
            attempt.events_total = attempt.events_total.max(loaded);
            if attempt.inputs.is_empty() {
                attempt.inputs.clone_from(&self.inputs);
            }
        }
    }

    /// The run as a store keeps it: the attempts' copies of the inputs left out (every attempt
    /// gets the run's inputs when it starts, so [`OpRun::settle`] restores them; the run keeps
    /// one copy), and their loaded events too unless `keep_events` (the store keeps the
    /// timeline apart; `events_total` still counts it).
    pub fn stored(&self, keep_events: bool) -> OpRun {
        let mut stored = OpRun {
            attempts: Vec::with_capacity(self.attempts.len()),
            ..self.clone_without_attempts()
        };
        for attempt in &self.attempts {
            stored.attempts.push(OpAttempt {
                events: if keep_events {
                    attempt.events.clone()
                } else {
                    Vec::new()
                },
                inputs: if attempt.inputs == self.inputs {
                    Map::new()
                } else {
                    attempt.inputs.clone()
                },
                ..attempt.clone_without_timeline()
            });
        }
        stored
    }

    fn clone_without_attempts(&self) -> OpRun {
        OpRun {
            id: self.id.clone(),
            state: self.state,
            priority: self.priority,
            image: self.image.clone(),
            inputs: self.inputs.clone(),
            constraints: self.constraints.clone(),
            retry_policy: self.retry_policy.clone(),
            event_delivery: self.event_delivery.clone(),
            queue: self.queue.clone(),
            labels: self.labels.clone(),
            preemptible: self.preemptible,
            op_definition: self.op_definition.clone(),
            op_definition_version: self.op_definition_version.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            available_at: self.available_at,
            attempts: Vec::new(),
        }
    }

    /// The current (last) attempt.
    pub fn current(&self) -> &OpAttempt {
        // Invariant: a run is created with one attempt and attempts are never removed.
        self.attempts
            .last()
            .expect("an OpRun always has an attempt")
    }

    fn current_mut(&mut self) -> &mut OpAttempt {
        self.attempts
            .last_mut()
            .expect("an OpRun always has an attempt")
    }

    /// The current attempt's number (1-based).
    pub fn current_attempt(&self) -> u32 {
        self.current().attempt
    }

    /// Attempts that count against the retry policy: all but those whose worker went away
    /// (lost, or handed the run back).
    pub fn attempts_used(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| !a.worker_lost && !a.preempted)
            .count()
    }

    /// How often the run was preempted.
    pub fn preemptions(&self) -> u32 {
        self.attempts.iter().filter(|a| a.preempted).count() as u32
    }

    /// Whether a strategy may preempt the run: it is preemptible, ASSIGNED or RUNNING, and
    /// was preempted fewer than `max_preemptions` times.
    pub fn may_be_preempted(&self, max_preemptions: u32) -> bool {
        self.preemptible
            && matches!(self.state, OpRunState::Assigned | OpRunState::Running)
            && self.preemptions() < max_preemptions
    }

    /// Preempts attempt `attempt`, held by worker `worker_id`, for run `by` of priority
    /// `by_priority`, as strategy `strategy` asked: the attempt FAILS with "preempted by <run
    /// id> (priority P) via <strategy>" and the run is requeued as a new attempt outside its
    /// retry budget. Its worker finds the run in its heartbeat's `stop` list, or gets 409 on
    /// its next event, and stops the container as for a cancelled run.
    ///
    /// Refused for an attempt that is no longer current, unless the run is ASSIGNED to or
    /// RUNNING on that worker, for a run that is not preemptible or was preempted
    /// `max_preemptions` times already, and unless `by_priority` is higher than the run's,
    /// so that a preemption decided on a stale view changes nothing.
    pub fn preempt(
        &mut self,
        worker_id: &str,
        attempt: u32,
        preemption: &Preemption<'_>,
        max_preemptions: u32,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        self.check_attempt(Some(attempt))?;
        self.check_held_by(worker_id, "preemption")?;
        let refuse = |why: String| {
            Err(DomainError::InvalidEvent(format!(
                "OpRun '{}' cannot be preempted: {why}",
                self.id
            )))
        };
        if !self.preemptible {
            return refuse("it is not preemptible".into());
        }
        if self.preemptions() >= max_preemptions {
            return refuse(format!(
                "it was preempted {max_preemptions} times already (the server's limit)"
            ));
        }
        if preemption.by_priority <= self.priority {
            return refuse(format!(
                "run '{}' has priority {}, not higher than its {}",
                preemption.by, preemption.by_priority, self.priority
            ));
        }
        let message = format!(
            "preempted by {} (priority {}) via {}",
            preemption.by, preemption.by_priority, preemption.strategy
        );
        let attempt = self.current_mut();
        attempt.preempted = true;
        attempt.execution_summary.error_message = Some(message.clone());
        attempt.finish(OpRunState::Failed, now);
        let mut payload = Map::from_iter([
            ("error_message".to_owned(), Value::String(message.clone())),
            (
                "preempted_by".to_owned(),
                Value::String(preemption.by.to_owned()),
            ),
            (
                "strategy".to_owned(),
                Value::String(preemption.strategy.to_owned()),
            ),
        ]);
        if !preemption.reason.is_empty() {
            payload.insert(
                "reason".to_owned(),
                Value::String(preemption.reason.to_owned()),
            );
        }
        attempt.record(EventEntry {
            t: now,
            event_type: EventType::Failed,
            msg: Value::String(message.clone()),
            payload,
        });
        self.updated_at = now;
        let count = self.preemptions();
        let msg = format!("Requeued after it was preempted ({count} of {max_preemptions})");
        let payload = Map::from_iter([
            ("force".to_owned(), Value::Bool(false)),
            ("reason".to_owned(), Value::String("preempted".into())),
            ("previous_error".to_owned(), Value::String(message)),
        ]);
        self.start_new_attempt(Value::String(msg), payload, now);
        self.available_at = None;
        Ok(())
    }

    /// Refuses a call made for an attempt that is no longer the current one (fencing: a
    /// worker that lost its run, to a retry or a reclaim, must not change the new attempt).
    pub fn check_attempt(&self, attempt: Option<u32>) -> Result<(), DomainError> {
        match attempt {
            Some(attempt) if attempt != self.current_attempt() => Err(DomainError::StaleAttempt {
                run_id: self.id.clone(),
                attempt,
                current: self.current_attempt(),
            }),
            _ => Ok(()),
        }
    }

    /// Ends the current attempt of a run whose worker `worker_id` went silent for
    /// `silent_secs`: the attempt FAILS with "worker <id> lost (no heartbeat for Ns)" and the
    /// run is requeued as a new attempt without using its retry budget, at most
    /// `max_requeues` times (then the run FAILS).
    ///
    /// Refused unless the run is still ASSIGNED to or RUNNING on that worker, so that
    /// applying it twice (two server replicas, say) changes nothing the second time.
    pub fn worker_lost(
        &mut self,
        worker_id: &str,
        silent_secs: i64,
        max_requeues: usize,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        self.check_held_by(worker_id, "worker lost")?;
        let message = format!("worker {worker_id} lost (no heartbeat for {silent_secs}s)");
        self.requeue_after_worker_gone(
            message,
            "worker_lost",
            "its worker was lost",
            max_requeues,
            now,
        );
        Ok(())
    }

    /// Hands the current attempt `attempt` back from worker `worker_id`, which cannot finish
    /// it (it is shutting down, or its Docker engine went away): the attempt FAILS with
    /// "worker <id> handed the run back: <reason>" and the run is requeued exactly as after a
    /// lost worker — without using its retry budget, and sharing the same cap of
    /// `max_requeues` (then the run FAILS).
    ///
    /// Refused for an attempt that is no longer current ([`DomainError::StaleAttempt`]), and
    /// unless the run is ASSIGNED to or RUNNING on that worker.
    pub fn release(
        &mut self,
        worker_id: &str,
        attempt: u32,
        reason: &str,
        max_requeues: usize,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        self.check_attempt(Some(attempt))?;
        self.check_held_by(worker_id, "release")?;
        let message = format!("worker {worker_id} handed the run back: {reason}");
        self.requeue_after_worker_gone(
            message,
            "worker_released",
            "its worker handed it back",
            max_requeues,
            now,
        );
        Ok(())
    }

    /// Ends attempt `attempt`, held by worker `worker_id`, that the worker's heartbeats no
    /// longer report (it restarted, or never got the claim's answer): the attempt FAILS with
    /// "worker <id> no longer reports this run (it restarted or lost the claim's answer)" and
    /// the run is requeued exactly as after a lost worker — without using its retry budget,
    /// and sharing the same cap of `max_requeues` (then the run FAILS).
    ///
    /// Refused for an attempt that is no longer current ([`DomainError::StaleAttempt`]), and
    /// unless the run is ASSIGNED to or RUNNING on that worker, so that a heartbeat read
    /// before a change (a report, a reap, another replica's reconcile) changes nothing.
    pub fn not_reported(
        &mut self,
        worker_id: &str,
        attempt: u32,
        max_requeues: usize,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        self.check_attempt(Some(attempt))?;
        self.check_held_by(worker_id, "requeue of an unreported run")?;
        let message = format!(
            "worker {worker_id} no longer reports this run (it restarted or lost the claim's answer)"
        );
        self.requeue_after_worker_gone(
            message,
            "worker_not_reporting",
            "its worker stopped reporting it",
            max_requeues,
            now,
        );
        Ok(())
    }

    /// When the current attempt's run timeout plus `grace` is over: `None` unless the run is
    /// RUNNING with a `constraints.timeout_s` (an attempt counts from its STARTED). The
    /// sum saturates: a limit beyond the timestamp range never passes.
    pub fn timeout_deadline(&self, grace: chrono::Duration) -> Option<Timestamp> {
        if self.state != OpRunState::Running {
            return None;
        }
        let limit = self.constraints.timeout()?;
        let started = self.current().started_at?;
        Some(
            started
                .checked_add_signed(crate::resources::seconds(limit))
                .and_then(|t| t.checked_add_signed(grace))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        )
    }

    /// Fails RUNNING attempt `attempt`, whose worker did not stop it at its
    /// `constraints.timeout_s`, once that limit plus `grace` has passed at `now`: the attempt
    /// FAILS with "timed out after N s (enforced by the server)" exactly as if its worker had
    /// reported that FAILED, so the run is retried per its retry policy. The failed attempt's
    /// worker finds the run in its heartbeat's `stop` list and stops the container.
    ///
    /// Refused for an attempt that is no longer current, for a run that is not RUNNING, and
    /// before the deadline ([`OpRun::timeout_deadline`]), so that the server's check, read
    /// before a change (a report, a reap, another replica's check), changes nothing.
    pub fn time_out(
        &mut self,
        attempt: u32,
        grace: chrono::Duration,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        self.check_attempt(Some(attempt))?;
        self.check_unlocked()?;
        if self.state != OpRunState::Running {
            return Err(self.transition_error("time out", "RUNNING"));
        }
        let (Some(limit), Some(deadline)) =
            (self.constraints.timeout(), self.timeout_deadline(grace))
        else {
            return Err(DomainError::InvalidEvent(format!(
                "OpRun '{}' has no run timeout",
                self.id
            )));
        };
        if now <= deadline {
            return Err(DomainError::InvalidEvent(format!(
                "OpRun '{}' has not run past its timeout and grace yet",
                self.id
            )));
        }
        let message = format!("timed out after {limit} s (enforced by the server)");
        let payload = Map::from_iter([
            ("error_message".to_owned(), Value::String(message.clone())),
            ("timed_out".to_owned(), Value::Bool(true)),
        ]);
        self.add_event(EventType::Failed, Value::String(message), payload, now)
    }

    /// When the current attempt started waiting to be claimed: the run's creation for the
    /// first attempt, the requeue (`queued_at`, its RETRIED event) for a later one, and the
    /// end of the retry backoff when that is later. An attempt stored before `queued_at`
    /// existed falls back to its RETRIED event when loaded, else to the end of the attempt
    /// before it.
    pub fn queued_since(&self) -> Timestamp {
        let current = self.current();
        let requeued = if current.attempt > 1 {
            let retried = current
                .events
                .first()
                .filter(|_| current.first_event() == 0)
                .map(|e| e.t);
            let previous = self
                .attempts
                .iter()
                .rev()
                .nth(1)
                .and_then(|a| a.finished_at);
            current
                .queued_at
                .or(retried)
                .or(previous)
                .unwrap_or(self.created_at)
        } else {
            self.created_at
        };
        self.available_at.map_or(requeued, |t| t.max(requeued))
    }

    /// When the current attempt's queue timeout is over: `None` unless the run is PENDING
    /// with a `constraints.queue_timeout_s`. Saturates like [`OpRun::timeout_deadline`].
    pub fn queue_deadline(&self) -> Option<Timestamp> {
        if self.state != OpRunState::Pending {
            return None;
        }
        let limit = self.constraints.queue_timeout()?;
        Some(
            self.queued_since()
                .checked_add_signed(crate::resources::seconds(limit))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        )
    }

    /// Fails PENDING attempt `attempt`, which no worker claimed within the run's
    /// `constraints.queue_timeout_s`, once that has passed at `now`: the attempt and the run
    /// end FAILED with "not started within N s" (a FAILED event on the timeline, delivered
    /// like any other), without a retry. A manual retry may reopen it.
    ///
    /// Refused for an attempt that is no longer current, for a run that is not PENDING (a
    /// claim got there first) and before the deadline ([`OpRun::queue_deadline`]).
    pub fn queue_time_out(&mut self, attempt: u32, now: Timestamp) -> Result<(), DomainError> {
        self.check_attempt(Some(attempt))?;
        self.check_unlocked()?;
        if self.state != OpRunState::Pending {
            return Err(self.transition_error("queue time out", "PENDING"));
        }
        let (Some(limit), Some(deadline)) =
            (self.constraints.queue_timeout(), self.queue_deadline())
        else {
            return Err(DomainError::InvalidEvent(format!(
                "OpRun '{}' has no queue timeout",
                self.id
            )));
        };
        if now <= deadline {
            return Err(DomainError::InvalidEvent(format!(
                "OpRun '{}' has not waited past its queue timeout yet",
                self.id
            )));
        }
        let message = format!("not started within {limit} s");
        let attempt = self.current_mut();
        attempt.execution_summary.error_message = Some(message.clone());
        attempt.finish(OpRunState::Failed, now);
        attempt.record(EventEntry {
            t: now,
            event_type: EventType::Failed,
            msg: Value::String(message.clone()),
            payload: Map::from_iter([
                ("error_message".to_owned(), Value::String(message)),
                ("queue_timed_out".to_owned(), Value::Bool(true)),
            ]),
        });
        self.state = OpRunState::Failed;
        self.available_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// Whether the current attempt is ASSIGNED to or RUNNING on worker `worker_id` and is
    /// `attempt` (any attempt when `None`: a worker's report that names none).
    pub fn is_held_by(&self, worker_id: &str, attempt: Option<u32>) -> bool {
        matches!(self.state, OpRunState::Assigned | OpRunState::Running)
            && self.worker_id() == Some(worker_id)
            && attempt.is_none_or(|a| a == self.current_attempt())
    }

    /// Refuses unless the run is unlocked and its current attempt ASSIGNED to or RUNNING on
    /// `worker_id`.
    fn check_held_by(&self, worker_id: &str, action: &str) -> Result<(), DomainError> {
        self.check_unlocked()?;
        if !matches!(self.state, OpRunState::Assigned | OpRunState::Running) {
            return Err(self.transition_error(action, "ASSIGNED or RUNNING"));
        }
        if self.worker_id() != Some(worker_id) {
            return Err(DomainError::InvalidEvent(format!(
                "OpRun '{}' is not held by worker '{worker_id}'",
                self.id
            )));
        }
        Ok(())
    }

    /// Ends the current attempt FAILED with `message` because its worker went away (not
    /// because the op failed), and requeues the run as a new attempt outside the retry
    /// budget, unless `max_requeues` such requeues already happened: then the run FAILS.
    fn requeue_after_worker_gone(
        &mut self,
        message: String,
        reason: &str,
        why: &str,
        max_requeues: usize,
        now: Timestamp,
    ) {
        let attempt = self.current_mut();
        attempt.worker_lost = true;
        attempt.execution_summary.error_message = Some(message.clone());
        attempt.finish(OpRunState::Failed, now);
        attempt.record(EventEntry {
            t: now,
            event_type: EventType::Failed,
            msg: Value::String(message.clone()),
            payload: Map::from_iter([("error_message".to_owned(), Value::String(message.clone()))]),
        });
        self.updated_at = now;
        let gone = self.attempts.iter().filter(|a| a.worker_lost).count();
        if gone <= max_requeues {
            let msg = format!("Requeued after {why} ({gone} of {max_requeues})");
            let payload = Map::from_iter([
                ("force".to_owned(), Value::Bool(false)),
                ("reason".to_owned(), Value::String(reason.into())),
                ("previous_error".to_owned(), Value::String(message)),
            ]);
            self.start_new_attempt(Value::String(msg), payload, now);
            self.available_at = None;
        } else {
            self.state = OpRunState::Failed;
        }
    }

    /// Whether the run is in a terminal state and refuses changes.
    pub fn is_locked(&self) -> bool {
        self.state.is_terminal()
    }

    /// Whether a worker may claim the run at `now`.
    pub fn is_claimable(&self, now: Timestamp) -> bool {
        self.state == OpRunState::Pending && self.available_at.is_none_or(|t| t <= now)
    }

    /// The worker the current attempt is assigned to, if any.
    pub fn worker_id(&self) -> Option<&str> {
        self.current().execution_summary.worker_id.as_deref()
    }

    fn check_unlocked(&self) -> Result<(), DomainError> {
        if self.is_locked() {
            return Err(DomainError::Locked {
                run_id: self.id.clone(),
                state: self.state,
            });
        }
        Ok(())
    }

    fn transition_error(&self, action: &str, expected: &str) -> DomainError {
        DomainError::InvalidTransition {
            run_id: self.id.clone(),
            action: action.to_owned(),
            expected: expected.to_owned(),
            actual: self.state,
        }
    }

    fn set_run_and_attempt_state(&mut self, state: OpRunState) {
        self.state = state;
        self.current_mut().state = state;
    }

    /// PENDING → ASSIGNED for `worker_id` (a claim).
    pub fn assign(&mut self, worker_id: &str, now: Timestamp) -> Result<(), DomainError> {
        self.check_unlocked()?;
        if self.state != OpRunState::Pending {
            return Err(self.transition_error("assign", "PENDING"));
        }
        if !self.is_claimable(now) {
            return Err(DomainError::InvalidEvent(format!(
                "OpRun '{}' is waiting for its retry backoff and cannot be assigned yet",
                self.id
            )));
        }
        self.set_run_and_attempt_state(OpRunState::Assigned);
        self.current_mut().execution_summary.worker_id = Some(worker_id.to_owned());
        self.current_mut().assigned_at = Some(now);
        self.available_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// Changes the priority (must be >= 0). Allowed in any state: it only matters while PENDING.
    pub fn set_priority(&mut self, priority: i64, now: Timestamp) -> Result<(), DomainError> {
        check_priority(priority)?;
        self.priority = priority;
        self.updated_at = now;
        Ok(())
    }

    /// Replaces the current attempt's outputs (an operator's emergency edit).
    pub fn set_outputs(&mut self, outputs: Map<String, Value>, now: Timestamp) {
        self.current_mut().outputs = outputs;
        self.updated_at = now;
    }

    /// Sets the state directly: `PATCH /runs/{id}`, an operator's emergency override.
    ///
    /// A locked run refuses any change of state; the same state is a no-op. Every change adds
    /// an event that names it as manual (`payload.manual = true`), delivered like any other.
    /// - COMPLETED, FAILED, CANCELLED end the current attempt.
    /// - PENDING on an ASSIGNED or RUNNING run starts a new attempt (the superseded one ends
    ///   CANCELLED), so the worker that held it is fenced: its reports for the old attempt get
    ///   409 and it stops the container. Like a manual retry, the new attempt counts against
    ///   the retry policy's attempts.
    /// - ASSIGNED and RUNNING are refused: a run is assigned only by a claim, and runs only
    ///   once its worker reports STARTED (a run set to RUNNING by hand would have no worker to
    ///   run, report or reap it).
    pub fn set_state(&mut self, state: OpRunState, now: Timestamp) -> Result<(), DomainError> {
        if state == self.state {
            return Ok(());
        }
        self.check_unlocked()?;
        let mut payload = Map::from_iter([
            ("manual".to_owned(), Value::Bool(true)),
            ("state".to_owned(), Value::String(state.as_str().to_owned())),
        ]);
        match state {
            OpRunState::Assigned | OpRunState::Running => {
                return Err(DomainError::InvalidEvent(format!(
                    "state {state} cannot be set by hand: a run is ASSIGNED only by a worker's \
                     claim and RUNNING only once that worker reports STARTED; PATCH may set \
                     PENDING, COMPLETED, FAILED or CANCELLED"
                )));
            }
            OpRunState::Pending => {
                let previous = self.current_attempt();
                self.current_mut().finish(OpRunState::Cancelled, now);
                payload.insert("previous_attempt".into(), Value::from(previous));
                let msg = format!(
                    "manual: state set to PENDING; attempt {previous} superseded by a new attempt"
                );
                self.start_new_attempt(Value::String(msg), payload, now);
                self.available_at = None;
            }
            OpRunState::Completed | OpRunState::Failed | OpRunState::Cancelled => {
                self.current_mut().record(EventEntry {
                    t: now,
                    event_type: EventType::Info,
                    msg: Value::String(format!("manual: state set to {state}")),
                    payload,
                });
                self.state = state;
                self.current_mut().finish(state, now);
            }
        }
        self.updated_at = now;
        Ok(())
    }

    /// Appends an event to the current attempt and applies what it means (see the module docs).
    ///
    /// A refused event changes nothing, not even the timeline.
    pub fn add_event(
        &mut self,
        event_type: EventType,
        msg: Value,
        payload: Map<String, Value>,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        if event_type == EventType::Retried {
            let force = payload
                .get("force")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            return self.retry(force, msg, payload, now);
        }
        self.check_unlocked()?;
        if matches!(
            event_type,
            EventType::Info | EventType::Progress | EventType::Error
        ) {
            check_event_size(&msg, &payload)?;
            if self.current().events_total >= limits::MAX_EVENTS_PER_ATTEMPT {
                return Err(DomainError::TooManyEvents {
                    run_id: self.id.clone(),
                    attempt: self.current_attempt(),
                    event_type: event_type.as_str().to_owned(),
                    limit: limits::MAX_EVENTS_PER_ATTEMPT,
                });
            }
        }
        let entry = EventEntry {
            t: now,
            event_type,
            msg,
            payload,
        };
        match event_type {
            EventType::Started => self.on_started(&entry, now)?,
            EventType::Progress => {
                let progress = progress_value(&entry.msg)?;
                self.current_mut().progress = progress;
            }
            EventType::Completed => {
                self.require_claimed("COMPLETED")?;
                let outputs = match entry.payload.get("outputs") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(outputs)) => outputs.clone(),
                    Some(_) => {
                        return Err(DomainError::InvalidEvent(
                            "COMPLETED payload.outputs must be a JSON object".into(),
                        ));
                    }
                };
                self.state = OpRunState::Completed;
                let attempt = self.current_mut();
                attempt.outputs = outputs;
                attempt.finish(OpRunState::Completed, now);
            }
            EventType::Failed => {
                self.require_claimed("FAILED")?;
                let error_message = match entry.payload.get("error_message") {
                    Some(Value::String(message)) => message.clone(),
                    None | Some(Value::Null) => match &entry.msg {
                        Value::String(message) => message.clone(),
                        other => other.to_string(),
                    },
                    Some(_) => {
                        return Err(DomainError::InvalidEvent(
                            "FAILED payload.error_message must be a string".into(),
                        ));
                    }
                };
                let attempt = self.current_mut();
                attempt.execution_summary.error_message = Some(error_message.clone());
                attempt.finish(OpRunState::Failed, now);
                attempt.record(entry);
                self.updated_at = now;
                if self.attempts_used() < attempts_allowed(&self.retry_policy) {
                    let next = self.attempts_used() + 1;
                    let msg = format!(
                        "Automatic retry: attempt {next} of {} after failure",
                        self.retry_policy.max_attempts
                    );
                    let mut payload = Map::new();
                    payload.insert("force".into(), Value::Bool(false));
                    payload.insert("previous_error".into(), Value::String(error_message));
                    self.start_new_attempt(Value::String(msg), payload, now);
                    // Saturating: a policy stored before the limits existed may be huge.
                    let backoff = self.retry_policy.backoff();
                    self.available_at = (backoff > chrono::Duration::zero()).then(|| {
                        now.checked_add_signed(backoff)
                            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
                    });
                } else {
                    self.state = OpRunState::Failed;
                }
                return Ok(());
            }
            EventType::Cancelled => {
                self.state = OpRunState::Cancelled;
                self.current_mut().finish(OpRunState::Cancelled, now);
            }
            EventType::Info | EventType::Error => {}
            EventType::Retried => unreachable!("handled above"),
        }
        self.current_mut().record(entry);
        self.updated_at = now;
        Ok(())
    }

    fn on_started(&mut self, entry: &EventEntry, now: Timestamp) -> Result<(), DomainError> {
        if self.state != OpRunState::Assigned {
            return Err(self.transition_error("STARTED", "ASSIGNED"));
        }
        let worker_id = match entry.payload.get("worker_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(_) => {
                return Err(DomainError::InvalidEvent(
                    "STARTED payload.worker_id must be a string".into(),
                ));
            }
        };
        let gpu_id = match entry.payload.get("gpu_id") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| {
                        DomainError::InvalidEvent(
                            "STARTED payload.gpu_id must be a non-negative integer".into(),
                        )
                    })?,
            ),
        };
        self.set_run_and_attempt_state(OpRunState::Running);
        let attempt = self.current_mut();
        attempt.started_at = Some(now);
        if let Some(worker_id) = worker_id {
            attempt.execution_summary.worker_id = Some(worker_id);
        }
        attempt.execution_summary.gpu_id = gpu_id;
        Ok(())
    }

    fn require_claimed(&self, action: &str) -> Result<(), DomainError> {
        match self.state {
            OpRunState::Assigned | OpRunState::Running => Ok(()),
            _ => Err(self.transition_error(action, "ASSIGNED or RUNNING")),
        }
    }

    /// Starts a new attempt in PENDING (a manual retry); `force` skips the max-attempts check.
    ///
    /// Allowed from FAILED and CANCELLED (the point of a retry) and from ASSIGNED or RUNNING
    /// (a forced restart: the superseded attempt ends CANCELLED). A COMPLETED run keeps its
    /// result and a PENDING run has nothing to retry.
    pub fn retry(
        &mut self,
        force: bool,
        msg: Value,
        mut payload: Map<String, Value>,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        match self.state {
            OpRunState::Completed => {
                return Err(DomainError::Locked {
                    run_id: self.id.clone(),
                    state: self.state,
                });
            }
            OpRunState::Pending => {
                return Err(
                    self.transition_error("RETRIED", "FAILED, CANCELLED, ASSIGNED or RUNNING")
                );
            }
            OpRunState::Assigned
            | OpRunState::Running
            | OpRunState::Failed
            | OpRunState::Cancelled => {}
        }
        // Checked before anything changes: a refused retry leaves the run as it was.
        if !force && self.attempts_used() >= attempts_allowed(&self.retry_policy) {
            return Err(DomainError::RetriesExhausted {
                run_id: self.id.clone(),
                max_attempts: self.retry_policy.max_attempts,
            });
        }
        if matches!(self.state, OpRunState::Assigned | OpRunState::Running) {
            self.current_mut().finish(OpRunState::Cancelled, now);
        }
        payload.insert("force".into(), Value::Bool(force));
        self.start_new_attempt(msg, payload, now);
        self.available_at = None;
        Ok(())
    }

    fn start_new_attempt(&mut self, msg: Value, payload: Map<String, Value>, now: Timestamp) {
        let number = u32::try_from(self.attempts.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let mut attempt = OpAttempt::new(self, number);
        attempt.queued_at = Some(now);
        attempt.record(EventEntry {
            t: now,
            event_type: EventType::Retried,
            msg,
            payload,
        });
        self.attempts.push(attempt);
        self.state = OpRunState::Pending;
        self.updated_at = now;
    }
}

/// Refuses an event whose `msg` and `payload` are larger than [`limits::MAX_EVENT_BYTES`] as
/// JSON.
fn check_event_size(msg: &Value, payload: &Map<String, Value>) -> Result<(), DomainError> {
    let bytes = json_len(msg).saturating_add(json_len(payload));
    if bytes > limits::MAX_EVENT_BYTES {
        return Err(DomainError::EventTooLarge {
            bytes,
            limit: limits::MAX_EVENT_BYTES,
        });
    }
    Ok(())
}

/// Bytes of `value` as JSON (what the store keeps).
fn json_len(value: &impl Serialize) -> usize {
    /// Counts what serde writes, without keeping it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail, and a map of JSON values always serialises.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Refuses a priority below 0 or above [`limits::MAX_PRIORITY`].
pub(crate) fn check_priority(priority: i64) -> Result<(), DomainError> {
    if priority < 0 {
        return Err(DomainError::NegativePriority(priority));
    }
    let mut problems = Vec::new();
    limits::at_most(&mut problems, "priority", priority, limits::MAX_PRIORITY);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DomainError::OutOfRange(problems))
    }
}

/// How many attempts `policy` allows, as a count of attempts.
fn attempts_allowed(policy: &RetryPolicy) -> usize {
    usize::try_from(policy.max_attempts).unwrap_or(usize::MAX)
}

/// Reads a PROGRESS message: an integer 0–100, as a JSON number or a numeric string.
fn progress_value(msg: &Value) -> Result<u8, DomainError> {
    let parsed = match msg {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed
        .filter(|p| (0..=100).contains(p))
        .map(|p| p as u8)
        .ok_or_else(|| {
            DomainError::InvalidEvent(format!(
                "PROGRESS msg must be an integer between 0 and 100, got {msg}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use serde_json::json;

    fn t0() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn run_with(max_attempts: u32, backoff_ms: u64) -> OpRun {
        OpRun::new(
            NewRun {
                image: "busybox".into(),
                priority: 5,
                retry_policy: RetryPolicy {
                    max_attempts,
                    backoff_ms,
                },
                ..NewRun::default()
            },
            t0(),
        )
        .unwrap()
    }

    #[test]
    fn a_run_stored_before_queues_is_in_the_default_queue() {
        let mut stored = serde_json::to_value(run_with(1, 0)).unwrap();
        for field in ["queue", "labels", "preemptible"] {
            stored.as_object_mut().unwrap().remove(field);
        }
        let run: OpRun = serde_json::from_value(stored).unwrap();
        assert_eq!(run.queue, "default");
        assert!(run.labels.is_empty());
        assert!(!run.preemptible);
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn event(
        run: &mut OpRun,
        ty: EventType,
        msg: Value,
        payload: Value,
    ) -> Result<(), DomainError> {
        run.add_event(ty, msg, obj(payload), t0())
    }

    fn started(run: &mut OpRun) {
        run.assign("w1", t0()).unwrap();
        run.add_event(
            EventType::Started,
            json!("go"),
            obj(json!({"worker_id": "w1", "gpu_id": 0})),
            t0(),
        )
        .unwrap();
    }

    #[test]
    fn new_run_is_pending_with_first_attempt() {
        let run = run_with(1, 0);
        assert_eq!(run.state, OpRunState::Pending);
        assert_eq!(run.attempts.len(), 1);
        assert_eq!(run.current().id, format!("{}_att_1", run.id));
        assert_eq!(run.current().state, OpRunState::Pending);
    }

    #[test]
    fn negative_priority_is_refused() {
        let err = OpRun::new(
            NewRun {
                image: "x".into(),
                priority: -1,
                ..NewRun::default()
            },
            t0(),
        )
        .unwrap_err();
        assert_eq!(err, DomainError::NegativePriority(-1));
        let mut run = run_with(1, 0);
        assert!(run.set_priority(-3, t0()).is_err());
        assert_eq!(run.priority, 5);
    }

    #[test]
    fn started_requires_assigned_and_fills_summary() {
        let mut run = run_with(1, 0);
        let err = event(
            &mut run,
            EventType::Started,
            json!(""),
            json!({"worker_id": "w1"}),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            DomainError::InvalidTransition {
                actual: OpRunState::Pending,
                ..
            }
        ));
        assert!(
            run.current().events.is_empty(),
            "a refused event is not recorded"
        );
        started(&mut run);
        assert_eq!(run.state, OpRunState::Running);
        assert_eq!(
            run.current().execution_summary.worker_id.as_deref(),
            Some("w1")
        );
        assert_eq!(run.current().execution_summary.gpu_id, Some(0));
        assert_eq!(
            run.current().assigned_at,
            Some(t0()),
            "the claim time is kept"
        );
        assert_eq!(run.current().started_at, Some(t0()));
        assert!(event(&mut run, EventType::Started, json!(""), json!({})).is_err());
    }

    #[test]
    fn progress_must_be_an_integer_between_0_and_100() {
        let mut run = run_with(1, 0);
        started(&mut run);
        event(&mut run, EventType::Progress, json!(40), json!({})).unwrap();
        assert_eq!(run.current().progress, 40);
        event(&mut run, EventType::Progress, json!("55"), json!({})).unwrap();
        assert_eq!(run.current().progress, 55);
        for bad in [
            json!(101),
            json!(-1),
            json!(4.5),
            json!("half"),
            json!(null),
        ] {
            assert!(
                event(&mut run, EventType::Progress, bad.clone(), json!({})).is_err(),
                "{bad}"
            );
        }
        assert_eq!(run.current().progress, 55);
    }

    #[test]
    fn completed_sets_outputs_finish_and_duration_then_locks() {
        let mut run = run_with(1, 0);
        started(&mut run);
        let later = t0() + Duration::milliseconds(1500);
        run.add_event(
            EventType::Completed,
            json!("done"),
            obj(json!({"outputs": {"x": 1}})),
            later,
        )
        .unwrap();
        assert_eq!(run.state, OpRunState::Completed);
        let attempt = run.current();
        assert_eq!(Value::Object(attempt.outputs.clone()), json!({"x": 1}));
        assert_eq!(attempt.finished_at, Some(later));
        assert_eq!(attempt.execution_summary.duration_ms, Some(1500));
        let err = event(&mut run, EventType::Info, json!("late"), json!({})).unwrap_err();
        assert!(matches!(
            err,
            DomainError::Locked {
                state: OpRunState::Completed,
                ..
            }
        ));
        assert!(run.retry(true, json!("again"), Map::new(), t0()).is_err());
    }

    #[test]
    fn completed_outputs_must_be_an_object() {
        let mut run = run_with(1, 0);
        started(&mut run);
        assert!(
            event(
                &mut run,
                EventType::Completed,
                json!(""),
                json!({"outputs": [1]})
            )
            .is_err()
        );
        assert_eq!(run.state, OpRunState::Running);
    }

    #[test]
    fn completed_on_a_pending_run_is_refused() {
        let mut run = run_with(1, 0);
        assert!(event(&mut run, EventType::Completed, json!(""), json!({})).is_err());
        assert!(event(&mut run, EventType::Failed, json!(""), json!({})).is_err());
    }

    #[test]
    fn failed_with_attempts_left_requeues_after_backoff() {
        let mut run = run_with(3, 2_000);
        started(&mut run);
        event(
            &mut run,
            EventType::Failed,
            json!("boom"),
            json!({"error_message": "exit 1"}),
        )
        .unwrap();
        assert_eq!(run.state, OpRunState::Pending);
        assert_eq!(run.attempts.len(), 2);
        assert_eq!(run.attempts[0].state, OpRunState::Failed);
        assert_eq!(
            run.attempts[0].execution_summary.error_message.as_deref(),
            Some("exit 1")
        );
        assert_eq!(run.current().id, format!("{}_att_2", run.id));
        assert_eq!(run.current().events[0].event_type, EventType::Retried);
        assert!(!run.is_claimable(t0() + Duration::milliseconds(1_999)));
        assert!(
            run.assign("w1", t0() + Duration::milliseconds(1_999))
                .is_err()
        );
        assert!(run.is_claimable(t0() + Duration::milliseconds(2_000)));
    }

    #[test]
    fn failed_without_attempts_left_is_terminal() {
        let mut run = run_with(2, 0);
        for _ in 0..2 {
            started(&mut run);
            event(&mut run, EventType::Failed, json!("crashed"), json!({})).unwrap();
        }
        assert_eq!(run.state, OpRunState::Failed);
        assert_eq!(run.attempts.len(), 2);
        assert_eq!(
            run.current().execution_summary.error_message.as_deref(),
            Some("crashed")
        );
        assert!(!run.is_claimable(t0()));
    }

    #[test]
    fn manual_retry_reopens_failed_and_cancelled_runs() {
        let mut run = run_with(1, 0);
        event(&mut run, EventType::Cancelled, json!("stop"), json!({})).unwrap();
        assert_eq!(run.state, OpRunState::Cancelled);
        assert!(event(&mut run, EventType::Cancelled, json!("again"), json!({})).is_err());
        let err = run
            .retry(false, json!("retry"), Map::new(), t0())
            .unwrap_err();
        assert!(matches!(
            err,
            DomainError::RetriesExhausted {
                max_attempts: 1,
                ..
            }
        ));
        run.retry(true, json!("Manual retry"), Map::new(), t0())
            .unwrap();
        assert_eq!(run.state, OpRunState::Pending);
        assert_eq!(run.current_attempt(), 2);
        assert_eq!(run.current().events[0].payload["force"], json!(true));
    }

    #[test]
    fn retry_of_a_running_run_cancels_the_superseded_attempt() {
        let mut run = run_with(1, 0);
        started(&mut run);
        event(
            &mut run,
            EventType::Retried,
            json!("restart"),
            json!({"force": true}),
        )
        .unwrap();
        assert_eq!(run.attempts[0].state, OpRunState::Cancelled);
        assert_eq!(run.state, OpRunState::Pending);
        let err = event(
            &mut run,
            EventType::Retried,
            json!("again"),
            json!({"force": true}),
        )
        .unwrap_err();
        assert!(matches!(err, DomainError::InvalidTransition { .. }));
    }

    #[test]
    fn a_lost_worker_requeues_without_using_the_retry_budget() {
        let mut run = run_with(1, 0);
        started(&mut run);
        run.worker_lost("w1", 75, 3, t0()).unwrap();
        assert_eq!(run.state, OpRunState::Pending);
        assert_eq!(run.attempts.len(), 2);
        assert!(run.attempts[0].worker_lost);
        assert_eq!(
            run.attempts[0].execution_summary.error_message.as_deref(),
            Some("worker w1 lost (no heartbeat for 75s)")
        );
        assert_eq!(run.attempts_used(), 1, "the lost attempt is not counted");
        assert!(
            run.worker_lost("w1", 75, 3, t0()).is_err(),
            "applying it twice changes nothing"
        );
        // The op's own failure still gets its single attempt's worth of budget: none left.
        started(&mut run);
        event(&mut run, EventType::Failed, json!("boom"), json!({})).unwrap();
        assert_eq!(run.state, OpRunState::Failed);
    }

    #[test]
    fn lost_worker_requeues_are_capped() {
        let mut run = run_with(5, 0);
        for _ in 0..3 {
            started(&mut run);
            run.worker_lost("w1", 61, 3, t0()).unwrap();
            assert_eq!(run.state, OpRunState::Pending);
        }
        started(&mut run);
        run.worker_lost("w1", 61, 3, t0()).unwrap();
        assert_eq!(
            run.state,
            OpRunState::Failed,
            "the fourth loss ends the run"
        );
        assert_eq!(run.attempts.len(), 4);
    }

    #[test]
    fn only_the_holding_worker_can_be_lost() {
        let mut run = run_with(1, 0);
        assert!(
            run.worker_lost("w1", 61, 3, t0()).is_err(),
            "PENDING runs are held by no one"
        );
        started(&mut run);
        assert!(run.worker_lost("w2", 61, 3, t0()).is_err());
        assert_eq!(run.state, OpRunState::Running);
    }

    #[test]
    fn a_preempted_run_is_requeued_outside_its_retry_budget_within_its_own_cap() {
        let by = |priority| Preemption {
            by: "urgent",
            by_priority: priority,
            strategy: "priority",
            reason: "make room",
        };
        let mut run = run_with(1, 5_000);
        started(&mut run);
        let refused = |run: &mut OpRun, worker: &str, attempt: u32, priority: i64, cap: u32| {
            let before = run.clone();
            let error = run
                .preempt(worker, attempt, &by(priority), cap, t0())
                .unwrap_err();
            assert_eq!(*run, before, "a refusal changes nothing");
            error.to_string()
        };
        assert!(refused(&mut run, "w1", 1, 9, 3).contains("not preemptible"));
        run.preemptible = true;
        assert!(refused(&mut run, "w1", 1, 5, 3).contains("not higher than its 5"));
        assert!(refused(&mut run, "w2", 1, 9, 3).contains("not held by worker 'w2'"));
        assert!(matches!(
            run.preempt("w1", 2, &by(9), 3, t0()),
            Err(DomainError::StaleAttempt { .. })
        ));
        assert!(run.may_be_preempted(1));

        run.preempt("w1", 1, &by(9), 1, t0()).unwrap();
        assert_eq!((run.state, run.current_attempt()), (OpRunState::Pending, 2));
        let first = &run.attempts[0];
        assert!(first.preempted && !first.worker_lost);
        assert_eq!(first.state, OpRunState::Failed);
        assert_eq!(
            first.execution_summary.error_message.as_deref(),
            Some("preempted by urgent (priority 9) via priority")
        );
        let failed = first.events.last().unwrap();
        assert_eq!(failed.payload["preempted_by"], json!("urgent"));
        assert_eq!(failed.payload["reason"], json!("make room"));
        assert_eq!(
            run.current().events[0].payload["reason"],
            json!("preempted")
        );
        assert_eq!(
            run.attempts_used(),
            1,
            "the preempted attempt is not counted"
        );
        assert!(run.is_claimable(t0()), "no retry backoff");
        // Its cap of one is spent: held again, it may not be preempted again.
        started(&mut run);
        assert!(!run.may_be_preempted(1));
        assert!(refused(&mut run, "w1", 2, 9, 1).contains("preempted 1 times already"));
        // The op's own failure still has its single attempt's worth of budget: none left.
        event(&mut run, EventType::Failed, json!("boom"), json!({})).unwrap();
        assert_eq!(run.state, OpRunState::Failed);
    }

    #[test]
    fn a_released_run_is_requeued_without_using_the_retry_budget() {
        let mut run = run_with(1, 5_000);
        started(&mut run);
        run.release("w1", 1, "shutting down", 3, t0()).unwrap();
        assert_eq!(run.state, OpRunState::Pending);
        assert_eq!(run.current_attempt(), 2);
        assert!(run.attempts[0].worker_lost);
        assert_eq!(run.attempts[0].state, OpRunState::Failed);
        assert_eq!(
            run.attempts[0].execution_summary.error_message.as_deref(),
            Some("worker w1 handed the run back: shutting down")
        );
        assert_eq!(
            run.attempts_used(),
            1,
            "the released attempt is not counted"
        );
        assert!(
            run.is_claimable(t0()),
            "a hand-back is not a failure of the op: no retry backoff"
        );
        let retried = &run.current().events[0];
        assert_eq!(retried.event_type, EventType::Retried);
        assert_eq!(retried.payload["reason"], json!("worker_released"));
        // The op's own failure still has its single attempt's worth of budget: none left.
        started(&mut run);
        event(&mut run, EventType::Failed, json!("boom"), json!({})).unwrap();
        assert_eq!(run.state, OpRunState::Failed);
    }

    #[test]
    fn a_release_is_fenced_and_needs_the_holding_worker() {
        let mut run = run_with(3, 0);
        let err = run.release("w1", 1, "x", 3, t0()).unwrap_err();
        assert!(
            matches!(
                err,
                DomainError::InvalidTransition {
                    actual: OpRunState::Pending,
                    ..
                }
            ),
            "a PENDING run is held by no one: {err:?}"
        );
        started(&mut run);
        assert!(matches!(
            run.release("w2", 1, "x", 3, t0()).unwrap_err(),
            DomainError::InvalidEvent(_)
        ));
        assert!(matches!(
            run.release("w1", 7, "x", 3, t0()).unwrap_err(),
            DomainError::StaleAttempt {
                attempt: 7,
                current: 1,
                ..
            }
        ));
        assert_eq!(run.state, OpRunState::Running, "refusals change nothing");
        assert_eq!(run.attempts.len(), 1);
        run.release("w1", 1, "x", 3, t0()).unwrap();
        assert!(
            matches!(
                run.release("w1", 1, "x", 3, t0()).unwrap_err(),
                DomainError::StaleAttempt { .. }
            ),
            "releasing twice changes nothing the second time"
        );
        started(&mut run);
        event(&mut run, EventType::Completed, json!(""), json!({})).unwrap();
        assert!(matches!(
            run.release("w1", 2, "x", 3, t0()).unwrap_err(),
            DomainError::Locked { .. }
        ));
    }

    #[test]
    fn releases_and_lost_workers_share_one_requeue_cap() {
        let mut run = run_with(5, 0);
        started(&mut run);
        run.worker_lost("w1", 61, 3, t0()).unwrap();
        for attempt in 2..=3 {
            started(&mut run);
            run.release("w1", attempt, "shutting down", 3, t0())
                .unwrap();
            assert_eq!(run.state, OpRunState::Pending);
        }
        started(&mut run);
        run.release("w1", 4, "shutting down", 3, t0()).unwrap();
        assert_eq!(
            run.state,
            OpRunState::Failed,
            "the fourth requeue ends the run"
        );
        assert_eq!(
            run.current().execution_summary.error_message.as_deref(),
            Some("worker w1 handed the run back: shutting down")
        );
    }

    #[test]
    fn an_unreported_run_is_requeued_once_and_shares_the_requeue_cap() {
        let mut run = run_with(1, 0);
        assert!(
            run.not_reported("w1", 1, 3, t0()).is_err(),
            "a PENDING run is held by no one"
        );
        started(&mut run);
        assert!(run.not_reported("w2", 1, 3, t0()).is_err(), "held by w1");
        assert!(matches!(
            run.not_reported("w1", 2, 3, t0()).unwrap_err(),
            DomainError::StaleAttempt { .. }
        ));
        run.not_reported("w1", 1, 3, t0()).unwrap();
        assert_eq!((run.state, run.current_attempt()), (OpRunState::Pending, 2));
        assert!(run.attempts[0].worker_lost);
        assert_eq!(run.attempts_used(), 1, "outside the retry budget");
        assert_eq!(
            run.attempts[0].execution_summary.error_message.as_deref(),
            Some("worker w1 no longer reports this run (it restarted or lost the claim's answer)")
        );
        assert!(
            run.not_reported("w1", 1, 3, t0()).is_err(),
            "applying it twice changes nothing the second time"
        );
        started(&mut run);
        run.worker_lost("w1", 61, 3, t0()).unwrap();
        started(&mut run);
        run.release("w1", 3, "shutting down", 3, t0()).unwrap();
        started(&mut run);
        run.not_reported("w1", 4, 3, t0()).unwrap();
        assert_eq!(
            run.state,
            OpRunState::Failed,
            "the fourth requeue ends the run"
        );
    }

    fn timed(max_attempts: u32, backoff_ms: u64, timeout_s: u64, queue_timeout_s: u64) -> OpRun {
        let mut run = run_with(max_attempts, backoff_ms);
        run.constraints.timeout_s = Some(timeout_s);
        run.constraints.queue_timeout_s = Some(queue_timeout_s);
        run
    }

    fn started_at(run: &mut OpRun, now: Timestamp) {
        run.assign("w1", now).unwrap();
        run.add_event(
            EventType::Started,
            json!("go"),
            obj(json!({"worker_id": "w1"})),
            now,
        )
        .unwrap();
    }

    #[test]
    fn a_running_attempt_past_its_timeout_and_grace_fails_and_is_retried_per_policy() {
        let grace = Duration::seconds(60);
        let mut run = timed(2, 0, 10, 0);
        let err = run.time_out(1, grace, t0()).unwrap_err();
        assert!(
            matches!(err, DomainError::InvalidTransition { .. }),
            "a PENDING run has not started: {err:?}"
        );
        run.assign("w1", t0()).unwrap();
        assert!(
            run.time_out(1, grace, t0() + Duration::days(1)).is_err(),
            "an ASSIGNED attempt has not started: no run timeout"
        );
        run.add_event(
            EventType::Started,
            json!("go"),
            obj(json!({"worker_id": "w1"})),
            t0(),
        )
        .unwrap();
        assert_eq!(
            run.timeout_deadline(grace),
            Some(t0() + Duration::seconds(70))
        );
        assert!(
            run.time_out(1, grace, t0() + Duration::seconds(70))
                .is_err(),
            "not past the limit plus the grace"
        );
        assert!(matches!(
            run.time_out(2, grace, t0() + Duration::seconds(71))
                .unwrap_err(),
            DomainError::StaleAttempt { .. }
        ));
        assert_eq!(run.state, OpRunState::Running, "refusals change nothing");
        run.time_out(1, grace, t0() + Duration::seconds(71))
            .unwrap();
        assert_eq!((run.state, run.current_attempt()), (OpRunState::Pending, 2));
        let failed = &run.attempts[0];
        assert_eq!(failed.state, OpRunState::Failed);
        assert!(!failed.worker_lost, "a timeout is the op's failure");
        assert_eq!(
            failed.execution_summary.error_message.as_deref(),
            Some("timed out after 10 s (enforced by the server)")
        );
        let event = failed.events.last().unwrap();
        assert_eq!(event.event_type, EventType::Failed);
        assert_eq!(event.payload["timed_out"], true);
        assert!(
            run.time_out(1, grace, t0() + Duration::seconds(71))
                .is_err(),
            "applying it twice changes nothing the second time"
        );
        // The second attempt times out too: no attempts left, the run ends FAILED.
        let later = t0() + Duration::seconds(100);
        started_at(&mut run, later);
        run.time_out(2, grace, later + Duration::seconds(71))
            .unwrap();
        assert_eq!(run.state, OpRunState::Failed);
        assert_eq!(run.attempts.len(), 2);
    }

    #[test]
    fn no_timeout_and_a_zero_timeout_never_time_out() {
        for limit in [None, Some(0)] {
            let mut run = run_with(1, 0);
            run.constraints.timeout_s = limit;
            started(&mut run);
            assert_eq!(run.timeout_deadline(Duration::zero()), None);
            assert!(
                run.time_out(1, Duration::zero(), t0() + Duration::days(3_650))
                    .is_err()
            );
            assert_eq!(run.state, OpRunState::Running);
        }
    }

    #[test]
    fn a_timeout_beyond_the_timestamp_range_saturates() {
        let mut run = timed(1, 0, u64::MAX, u64::MAX);
        assert_eq!(run.queue_deadline(), Some(chrono::DateTime::<Utc>::MAX_UTC));
        started(&mut run);
        assert_eq!(
            run.timeout_deadline(Duration::MAX),
            Some(chrono::DateTime::<Utc>::MAX_UTC)
        );
        assert!(
            run.time_out(1, Duration::MAX, chrono::DateTime::<Utc>::MAX_UTC)
                .is_err()
        );
    }

    #[test]
    fn a_pending_run_past_its_queue_timeout_fails_for_good_and_a_fresh_one_waits() {
        let mut run = timed(3, 0, 0, 30);
        assert_eq!(run.queue_deadline(), Some(t0() + Duration::seconds(30)));
        assert!(
            run.queue_time_out(1, t0() + Duration::seconds(30)).is_err(),
            "not past the limit yet"
        );
        assert_eq!(run.state, OpRunState::Pending);
        assert!(matches!(
            run.queue_time_out(2, t0() + Duration::seconds(31))
                .unwrap_err(),
            DomainError::StaleAttempt { .. }
        ));
        run.queue_time_out(1, t0() + Duration::seconds(31)).unwrap();
        assert_eq!(
            run.state,
            OpRunState::Failed,
            "no retry for a queue timeout"
        );
        assert_eq!(run.attempts.len(), 1);
        let attempt = run.current();
        assert_eq!(attempt.state, OpRunState::Failed);
        assert_eq!(
            attempt.execution_summary.error_message.as_deref(),
            Some("not started within 30 s")
        );
        let event = attempt.events.last().unwrap();
        assert_eq!(event.event_type, EventType::Failed);
        assert_eq!(event.payload["queue_timed_out"], true);
        assert!(run.queue_time_out(1, t0() + Duration::seconds(31)).is_err());
        // A manual retry reopens it, with a queue timeout of its own.
        let reopened = t0() + Duration::seconds(100);
        run.retry(false, json!("again"), Map::new(), reopened)
            .unwrap();
        assert_eq!(run.queued_since(), reopened);
        assert!(
            run.queue_time_out(2, reopened + Duration::seconds(30))
                .is_err()
        );
    }

    #[test]
    fn the_queue_timeout_counts_from_the_last_requeue_after_its_backoff() {
        let mut run = timed(3, 50_000, 0, 30);
        let failed_at = t0() + Duration::seconds(200);
        started_at(&mut run, t0());
        run.add_event(EventType::Failed, json!("boom"), Map::new(), failed_at)
            .unwrap();
        assert_eq!(run.state, OpRunState::Pending);
        let claimable = failed_at + Duration::seconds(50);
        assert_eq!(run.queued_since(), claimable, "the backoff is not queueing");
        assert!(
            run.queue_time_out(2, claimable + Duration::seconds(30))
                .is_err()
        );
        run.queue_time_out(2, claimable + Duration::seconds(31))
            .unwrap();
        assert_eq!(run.state, OpRunState::Failed);
        assert_eq!(run.attempts.len(), 2);
    }

    #[test]
    fn a_claimed_run_is_not_queue_timed_out() {
        let mut run = timed(1, 0, 0, 30);
        run.assign("w1", t0() + Duration::seconds(29)).unwrap();
        assert_eq!(run.queue_deadline(), None);
        assert!(
            run.queue_time_out(1, t0() + Duration::days(1)).is_err(),
            "a claim got there first"
        );
        assert_eq!(run.state, OpRunState::Assigned);
        let mut none = timed(1, 0, 0, 0);
        assert_eq!(none.queue_deadline(), None, "0 means no queue timeout");
        assert!(none.queue_time_out(1, t0() + Duration::days(1)).is_err());
    }

    #[test]
    fn calls_for_an_old_attempt_are_fenced() {
        let mut run = run_with(2, 0);
        started(&mut run);
        event(&mut run, EventType::Failed, json!("boom"), json!({})).unwrap();
        assert_eq!(run.current_attempt(), 2);
        let err = run.check_attempt(Some(1)).unwrap_err();
        assert!(matches!(
            err,
            DomainError::StaleAttempt {
                attempt: 1,
                current: 2,
                ..
            }
        ));
        assert!(run.check_attempt(Some(2)).is_ok());
        assert!(
            run.check_attempt(None).is_ok(),
            "callers that do not say are not fenced"
        );
    }

    #[test]
    fn info_and_error_are_recorded_only() {
        let mut run = run_with(1, 0);
        event(&mut run, EventType::Info, json!("hello"), json!({})).unwrap();
        event(&mut run, EventType::Error, json!("warn"), json!({"k": 1})).unwrap();
        assert_eq!(run.state, OpRunState::Pending);
        assert_eq!(run.current().events.len(), 2);
    }

    #[test]
    fn set_state_refuses_assigned_and_running_and_requeues_a_held_run_as_a_new_attempt() {
        let mut run = run_with(1, 0);
        for state in [OpRunState::Assigned, OpRunState::Running] {
            let err = run.set_state(state, t0()).unwrap_err();
            assert!(
                err.to_string().contains("only by a worker's claim"),
                "{err}"
            );
            assert_eq!(run.state, OpRunState::Pending, "nothing changed");
        }
        run.assign("w1", t0()).unwrap();
        run.set_state(OpRunState::Pending, t0()).unwrap();
        assert_eq!(run.state, OpRunState::Pending);
        assert_eq!(
            run.current_attempt(),
            2,
            "a new attempt: the old worker is fenced"
        );
        assert_eq!(run.attempts[0].state, OpRunState::Cancelled);
        assert_eq!(run.worker_id(), None);
        assert!(run.check_attempt(Some(1)).is_err());
        let event = &run.current().events[0];
        assert_eq!(event.payload["manual"], true);
        assert_eq!(event.payload["previous_attempt"], 1);
    }

    #[test]
    fn set_state_respects_the_lock() {
        let mut run = run_with(1, 0);
        run.set_state(OpRunState::Completed, t0()).unwrap();
        let manual = run.current().events.last().unwrap();
        assert_eq!(manual.payload["manual"], true);
        assert_eq!(manual.msg, "manual: state set to COMPLETED");
        assert!(run.set_state(OpRunState::Pending, t0()).is_err());
        assert!(
            run.set_state(OpRunState::Completed, t0()).is_ok(),
            "same state is a no-op"
        );
    }

    #[test]
    fn unknown_names_are_refused() {
        assert!("DONE".parse::<OpRunState>().is_err());
        assert!("pending".parse::<OpRunState>().is_err());
        assert!("BOOM".parse::<EventType>().is_err());
        assert_eq!("RETRIED".parse::<EventType>().unwrap(), EventType::Retried);
    }

    #[test]
    fn stored_form_round_trips() {
        let mut run = run_with(2, 10);
        started(&mut run);
        let text = serde_json::to_string(&run).unwrap();
        let back: OpRun = serde_json::from_str(&text).unwrap();
        assert_eq!(back, run);
    }
}
