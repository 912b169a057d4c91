//! `/queues`: each queue's fair-share state (see [`crate::service::Service::queue_list`]).

use axum::Json;
use axum::extract::State;
use gyoza_core::api::QueueList;

use super::AppState;
use crate::error::ApiError;

/// Every queue that is configured (`GYOZA_QUEUES`), has PENDING runs or has runs held by
/// active workers, by name: its weight and quotas, its PENDING runs (all of them), the runs
/// active workers hold and what they hold, its decayed usage as a claim shows it to
/// strategies, and its dominant share of the active cluster divided by its weight.
#[utoipa::path(get, path = "/queues", responses((status = 200, body = QueueList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<QueueList>, ApiError> {
    Ok(Json(state.service.queue_list().await?))
}
