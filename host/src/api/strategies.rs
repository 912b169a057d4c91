//! `/strategies`: the loaded scheduling strategies and which one is active.

use axum::Json;
use axum::extract::State;
use gyoza_core::api::{ActivateStrategyRequest, ErrorBody, StrategyList};

use super::AppState;
use super::extract::ApiJson;
use crate::error::ApiError;
use crate::strategy::{StrategyError, StrategyHost};

fn host(state: &AppState) -> Result<&StrategyHost, ApiError> {
    state
        .strategies
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server runs no wasm strategies".into()))
}

/// Every loaded strategy (name, WIT version, sha256, counters, latency), the active one,
/// and plugin files that were refused.
#[utoipa::path(get, path = "/strategies", responses((status = 200, body = StrategyList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<StrategyList>, ApiError> {
    Ok(Json(host(&state)?.list()))
}

/// Makes a loaded strategy the active one; claims use it from the next one on.
#[utoipa::path(
    put, path = "/strategies/active", request_body = ActivateStrategyRequest,
    responses((status = 200, body = StrategyList), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn activate(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ActivateStrategyRequest>,
) -> Result<Json<StrategyList>, ApiError> {
    let name = request.name.trim();
    if name.is_empty() {
        return Err(ApiError::BadRequest("name must not be empty".into()));
    }
    let host = host(&state)?;
    match host.activate(name) {
        Ok(()) => Ok(Json(host.list())),
        Err(e @ StrategyError::Unknown { .. }) => Err(ApiError::NotFound(e.to_string())),
        Err(e) => Err(ApiError::BadRequest(e.to_string())),
    }
}
