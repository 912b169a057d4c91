//! The API's error policy.
//!
//! Every failure a handler can meet becomes an [`ApiError`], answered as
//! `{"detail": "..."}` with a status that says whose fault it was:
//!
//! - 400: the request breaks a rule of the domain (locked run, bad event, negative priority,
//!   invalid inputs, unknown state name) or is malformed JSON;
//! - 401: missing or wrong `X-API-Key`;
//! - 404: no such definition, run or route;
//! - 405: the route exists, the method does not;
//! - 409: a worker's call for an attempt that is no longer current (the run was retried or
//!   reclaimed meanwhile), or for a run it does not hold; nothing changed;
//! - 413: the body is larger than the server accepts, or an INFO/PROGRESS/ERROR event is
//!   larger than `limits::MAX_EVENT_BYTES` (the detail gives both sizes);
//! - 422: well-formed JSON or query parameters of the wrong shape or type;
//! - 500: the store failed. The cause is logged; the answer says only that the server
//!   failed, never how (no SQL, paths or stack traces leave the server);
//! - 507: the store has no space left (a full disk): nothing of the request was stored, and
//!   the same request succeeds once space is freed. The detail says so in fixed words.
//!
//! Handlers never panic on input: everything they read is validated into one of the above.
//! Below the API nothing knows HTTP: the domain service and the stores answer with
//! [`StoreError`] (a broken domain rule, or a failed backend), and the `From` conversions
//! here are the one place those become statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gyoza_core::DomainError;
use gyoza_core::api::ErrorBody;

use crate::store::{QueryError, StoreError};

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request breaks a rule or is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong API key.
    #[error("Invalid or missing API key (send it in the X-API-Key header)")]
    Unauthorized,
    /// 409: the call was for an attempt that is no longer current (fencing).
    #[error("{0}")]
    Conflict(String),
    /// 404: the named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route does not take this method.
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// 413: the body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: the request is well-formed but of the wrong shape.
    #[error("{0}")]
    Unprocessable(String),
    /// 500: the server failed; the message is logged, not sent.
    #[error("{0}")]
    Internal(String),
    /// 507: the store is full; the cause is logged, the detail is fixed.
    #[error("{0}")]
    StorageFull(String),
}

/// The detail of every 507 answer.
pub const STORAGE_FULL_DETAIL: &str = "storage full: the server's database has no space left, so nothing of this request was stored; retry once space is freed";

impl ApiError {
    /// 404 for a run.
    pub fn run_not_found(id: &str) -> Self {
        Self::NotFound(format!("OpRun '{id}' not found"))
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::StaleAttempt { .. }
            | DomainError::WorkerIdInUse { .. }
            | DomainError::NotHeld { .. } => Self::Conflict(e.to_string()),
            DomainError::EventTooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rule(rule) => rule.into(),
            full @ StoreError::Full(_) => Self::StorageFull(full.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::UnknownCursor { .. } => Self::BadRequest(e.to_string()),
            QueryError::UnknownAttempt { .. } => Self::NotFound(e.to_string()),
            QueryError::Store(store) => store.into(),
        }
    }
}

impl ApiError {
    /// The answer's status and `detail` (a 500's and a 507's cause logged, not told).
    pub fn answer(self) -> (StatusCode, String) {
        let status = self.status();
        let detail = match self {
            Self::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "Internal server error; the server log has the cause".to_owned()
            }
            Self::StorageFull(cause) => {
                tracing::error!(%cause, "request failed: the store is full");
                STORAGE_FULL_DETAIL.to_owned()
            }
            other => other.to_string(),
        };
        (status, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail) = self.answer();
        (status, Json(ErrorBody { detail })).into_response()
    }
}
