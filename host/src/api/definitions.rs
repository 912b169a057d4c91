//! `/definitions`: versioned op definitions and runs made from them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gyoza_core::OpDefinition;
use gyoza_core::api::{ErrorBody, OpDefinitionCreate, OpRunCreateFromDefinition, OpRunView};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::extract::{ApiJson, ApiQuery};
use crate::error::ApiError;

/// Which version of a definition.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionParam {
    /// A specific version; omitted means the latest (highest semantic version).
    version: Option<String>,
}

/// Creates a definition, or replaces the one with the same id and version.
#[utoipa::path(
    post, path = "/definitions", request_body = OpDefinitionCreate,
    responses(
        (status = 201, description = "Created a new id + version", body = Object),
        (status = 200, description = "Replaced an existing id + version", body = Object),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn upsert(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<OpDefinitionCreate>,
) -> Result<(StatusCode, Json<OpDefinition>), ApiError> {
    let definition = request.into_definition(None, state.service.clock.now())?;
    let (definition, created) = state.service.store.upsert_definition(definition).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(definition)))
}

/// Every version of every definition.
#[utoipa::path(get, path = "/definitions", responses((status = 200, body = Vec<Object>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<OpDefinition>>, ApiError> {
    Ok(Json(state.service.store.list_definitions().await?))
}

async fn find(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<OpDefinition, ApiError> {
    state
        .service
        .store
        .get_definition(name, version)
        .await?
        .ok_or_else(|| match version {
            Some(v) => ApiError::NotFound(format!("OpDefinition '{name}' version '{v}' not found")),
            None => ApiError::NotFound(format!("OpDefinition '{name}' not found")),
        })
}

/// One definition: a given version, or the latest.
#[utoipa::path(
    get, path = "/definitions/{name}", params(("name" = String, Path), VersionParam),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<VersionParam>,
) -> Result<Json<OpDefinition>, ApiError> {
    Ok(Json(find(&state, &name, query.version.as_deref()).await?))
}

/// Creates a run from a definition: inputs validated, defaults applied, constraints, retry
/// policy and event delivery copied from the definition.
#[utoipa::path(
    post, path = "/definitions/{name}/runs", params(("name" = String, Path), VersionParam),
    request_body = OpRunCreateFromDefinition,
    responses(
        (status = 201, body = OpRunView),
        (status = 400, description = "Invalid inputs (every problem listed)", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn create_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<VersionParam>,
    ApiJson(request): ApiJson<OpRunCreateFromDefinition>,
) -> Result<(StatusCode, Json<OpRunView>), ApiError> {
    let definition = find(&state, &name, query.version.as_deref()).await?;
    let run = request.into_run(&definition, state.service.clock.now())?;
    state.service.insert_run(&run).await?;
    state
        .metrics
        .run_creations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok((StatusCode::CREATED, Json(OpRunView::from(&run))))
}
