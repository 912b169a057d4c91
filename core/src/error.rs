//! The domain's error type.
//!
//! Every rule of the domain that a request can break has a variant here; its `Display` text is
//! written for the person who sent the request, because the server returns it verbatim as the
//! `detail` of a 400 answer.

use crate::state::OpRunState;

/// A domain rule refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The run is COMPLETED, FAILED or CANCELLED and accepts no further change.
    #[error("OpRun '{run_id}' is locked: it is already in terminal state {state}")]
    Locked {
        /// The run that refused the change.
        run_id: String,
        /// Its terminal state.
        state: OpRunState,
    },
    /// The requested state change is not allowed from the run's current state.
    #[error("{action} requires state {expected}, but OpRun '{run_id}' is {actual}")]
    InvalidTransition {
        /// The run that refused the change.
        run_id: String,
        /// What was attempted (an event type or an operation name).
        action: String,
        /// The state(s) the action needs, for the message.
        expected: String,
        /// The state the run is in.
        actual: OpRunState,
    },
    /// An event's message or payload does not have the shape its type needs.
    #[error("{0}")]
    InvalidEvent(String),
    /// An event type that gyoza does not know.
    #[error(
        "Invalid event type '{0}': expected one of STARTED, INFO, PROGRESS, COMPLETED, FAILED, CANCELLED, ERROR, RETRIED"
    )]
    UnknownEventType(String),
    /// A state name that gyoza does not know.
    #[error(
        "Invalid state '{0}': expected one of PENDING, ASSIGNED, RUNNING, COMPLETED, FAILED, CANCELLED"
    )]
    UnknownState(String),
    /// Numbers or strings beyond their limits (see [`crate::limits`]); every problem is listed.
    #[error("Out of range: {}", .0.join("; "))]
    OutOfRange(Vec<String>),
    /// A negative priority.
    #[error("priority must be >= 0, got {0}")]
    NegativePriority(i64),
    /// Inputs that do not satisfy a definition's input specs; every problem is listed.
    #[error("Invalid inputs: {}", .0.join("; "))]
    InvalidInputs(Vec<String>),
    /// A definition that cannot be stored as sent (empty id, unknown input type, bad default...).
    #[error("Invalid definition: {}", .0.join("; "))]
    InvalidDefinition(Vec<String>),
    /// A call for an attempt that is no longer the run's current attempt (fencing).
    #[error(
        "attempt {attempt} of OpRun '{run_id}' is no longer current (the current attempt is {current}); the run was retried or reclaimed"
    )]
    StaleAttempt {
        /// The run.
        run_id: String,
        /// The attempt the caller named.
        attempt: u32,
        /// The current attempt.
        current: u32,
    },
    /// A worker's event for a run whose current attempt it does not hold (409): the run was
    /// reaped, released, preempted or ended meanwhile, or was never its.
    #[error(
        "OpRun '{run_id}' is not held by worker '{worker_id}' (its current attempt is not ASSIGNED to or RUNNING on that worker); nothing changed"
    )]
    NotHeld {
        /// The run.
        run_id: String,
        /// The worker that sent the event.
        worker_id: String,
    },
    /// An INFO, PROGRESS or ERROR event larger than [`crate::limits::MAX_EVENT_BYTES`] (413).
    #[error(
        "event too large: its msg and payload are {bytes} bytes as JSON; the most an INFO, PROGRESS or ERROR event may have is {limit} bytes"
    )]
    EventTooLarge {
        /// Bytes of `msg` and `payload` as JSON.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The attempt already holds [`crate::limits::MAX_EVENTS_PER_ATTEMPT`] INFO, PROGRESS and
    /// ERROR events; state events are still accepted.
    #[error(
        "attempt {attempt} of OpRun '{run_id}' already has {limit} INFO, PROGRESS and ERROR events, the most an attempt records; this {event_type} event is refused (state events are still accepted)"
    )]
    TooManyEvents {
        /// The run.
        run_id: String,
        /// Its current attempt.
        attempt: u32,
        /// The refused event's type.
        event_type: String,
        /// The limit.
        limit: u64,
    },
    /// A heartbeat from another worker process under the id of a worker that is still live.
    #[error(
        "worker id '{worker_id}' is in use by another live worker process (it heartbeated {seconds_ago} s ago): give this worker another --worker-id (or GYOZA_WORKER_ID), or stop the other one first"
    )]
    WorkerIdInUse {
        /// The worker id.
        worker_id: String,
        /// Seconds since the other process's last heartbeat.
        seconds_ago: i64,
    },
    /// A retry without force when every attempt of the retry policy has been used.
    #[error("OpRun '{run_id}' has used all {max_attempts} attempt(s) of its retry policy")]
    RetriesExhausted {
        /// The run that refused the retry.
        run_id: String,
        /// Its retry policy's `max_attempts`.
        max_attempts: u32,
    },
}
