//! API-key authentication.
//!
//! Every route but `/health` requires the `X-API-Key` header to equal the configured key.
//! The comparison takes the same time wherever the keys differ, and the key is never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The request header that carries the key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The key clients must send (its `Debug` does not show it).
#[derive(Clone)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// The key `key`.
    pub fn new(key: &str) -> Self {
        Self(key.into())
    }

    /// Whether `given` is the key, in time independent of where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        given.ct_eq(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Middleware: answers 401 unless the request carries the right key.
pub async fn require_api_key(
    State(key): State<ApiKey>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if key.matches(given) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}
