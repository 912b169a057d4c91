//! API-key authentication.
//!
//! Every route but `/health` requires the `X-API-Key` header to equal the configured key.
//! The comparison takes the same time wherever the keys differ, and the key is never logged.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::api::AppState;
use crate::error::ApiError;

/// The request header that carries the key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Middleware: answers 401 unless the request carries the right key.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(state.api_key.as_bytes())) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}
