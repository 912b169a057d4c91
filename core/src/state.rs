//! The states of a run (PENDING → ASSIGNED → RUNNING → COMPLETED | FAILED | CANCELLED).
//!
//! Apart from [`crate::run`] so that [`crate::error`] can name a state without importing the
//! module whose rules return its errors; parsing a state name (which can fail with a
//! [`crate::DomainError`]) lives in `run`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OpRunState {
    /// Waiting to be claimed by a worker.
    Pending,
    /// Claimed by a worker that has not started it yet.
    Assigned,
    /// Its container is running.
    Running,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error and no attempt left (terminal).
    Failed,
    /// Cancelled by a user (terminal).
    Cancelled,
}

impl OpRunState {
    /// Every state, in lifecycle order.
    pub const ALL: [OpRunState; 6] = [
        Self::Pending,
        Self::Assigned,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name used on the wire and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Assigned => "ASSIGNED",
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Whether the state is final (the run is locked).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for OpRunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
