//! `/workers`: heartbeats, the worker list, and claims.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gyoza_core::api::{
    AddEventRequest, ClaimResponse, ErrorBody, HeartbeatRequest, WorkerEvent, WorkerEventBatch,
    WorkerEventBatchAnswer, WorkerEventOutcome, WorkerView,
};
use gyoza_core::{EventType, Worker};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::extract::{ApiJson, ApiQuery, bounded_param};
use crate::error::ApiError;

fn view(state: &AppState, worker: Worker) -> WorkerView {
    let active = worker.is_active(state.service.clock.now(), state.service.worker_timeout);
    WorkerView {
        worker,
        active,
        stop: Vec::new(),
    }
}

/// Every worker that ever heartbeated, with whether it is active.
#[utoipa::path(get, path = "/workers", responses((status = 200, body = Vec<WorkerView>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let workers = state.service.store.list_workers().await?;
    Ok(Json(workers.into_iter().map(|w| view(&state, w)).collect()))
}

/// Registers or refreshes a worker, and reconciles the runs it reports with those it holds
/// (see [`crate::service::Service::reconcile`]): the answer's `stop` lists the reported runs
/// it must stop.
#[utoipa::path(
    post, path = "/workers/heartbeat", request_body = HeartbeatRequest,
    responses((status = 200, body = WorkerView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Json<WorkerView>, ApiError> {
    if request.worker_id.trim().is_empty() {
        return Err(ApiError::BadRequest("worker_id must not be empty".into()));
    }
    request.validate()?;
    let reports_runs = request.running_ops.is_some();
    let mut heartbeat = gyoza_core::Heartbeat::from(request);
    // Another live process under this id is refused (409): see `Worker::from_heartbeat`.
    heartbeat.exclusive_for = Some(state.service.worker_timeout);
    let worker = state
        .service
        .store
        .heartbeat(heartbeat, state.service.clock.now())
        .await?;
    let mut answer = view(&state, worker);
    if reports_runs {
        // The worker keeps the running ops of this heartbeat. It is recorded whatever
        // happens next: a reconcile that fails is done again at the next heartbeat.
        let (id, report) = (&answer.worker.id, &answer.worker.running_ops);
        match state.service.reconcile(id, report).await {
            Ok(stop) => answer.stop = stop,
            Err(e) => {
                tracing::warn!(worker_id = %id, error = %e, "cannot reconcile the heartbeat");
            }
        }
    }
    Ok(Json(answer))
}

/// How many runs a claim may return.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClaimParams {
    /// At most this many runs, 1–100 (default 1, as the original direct strategy).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    max: Option<String>,
    /// When nothing is claimable now, wait up to this many milliseconds for something to be,
    /// 0–60000 (default 0: answer at once, as the original server).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 60000)]
    wait_ms: Option<String>,
}

/// What `GET /workers/{id}/claim-scenario` reads.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ScenarioParams {
    /// The claim's `max`, 1–100 (default 10).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    max: Option<String>,
}

/// What a claim by the worker would decide from now, as a `gyoza plugins simulate` scenario
/// (its active workers with the runs they hold, the pending window, the server's queues and
/// strategy configuration). Read-only: nothing is claimed. `gyoza plugins simulate FILE
/// --from-server URL --worker ID` simulates a plugin on it.
#[utoipa::path(
    get, path = "/workers/{id}/claim-scenario", params(("id" = String, Path), ScenarioParams),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn claim_scenario(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ScenarioParams>,
) -> Result<Json<crate::strategy::scenario::Scenario>, ApiError> {
    let max = bounded_param("max", params.max.as_deref(), 10, 1..=100)?;
    let Some(preview) = state.service.claim_preview(&id).await? else {
        return Err(ApiError::NotFound(format!(
            "Worker '{id}' never sent a heartbeat"
        )));
    };
    let config = state.strategies.as_ref().map_or("", |host| host.config());
    Ok(Json(crate::strategy::scenario::Scenario::from_preview(
        &preview,
        max as usize,
        config,
        &state.service.queues,
    )))
}

/// Assigns pending runs that fit the worker to it. With `wait_ms`, a claim that finds nothing
/// waits up to that long for a run it can take (a long poll): it answers as soon as it claimed
/// something, else empty at the deadline.
#[utoipa::path(
    post, path = "/workers/{id}/claim", params(("id" = String, Path), ClaimParams),
    responses((status = 200, body = ClaimResponse), (status = 422, body = ErrorBody))
)]
pub async fn claim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ClaimParams>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let max = bounded_param("max", params.max.as_deref(), 1, 1..=100)?;
    let longest = i64::try_from(gyoza_core::limits::MAX_CLAIM_WAIT_MS).unwrap_or(i64::MAX);
    let wait_ms = bounded_param("wait_ms", params.wait_ms.as_deref(), 0, 0..=longest)?;
    let wait = std::time::Duration::from_millis(wait_ms as u64);
    let started = std::time::Instant::now();
    let ops = state.service.claim_waiting(&id, max as usize, wait).await?;
    let metrics = &state.metrics;
    if wait.is_zero() {
        // A long poll's time is mostly its wait.
        metrics.claim_latency.observe(started.elapsed());
    }
    metrics.claims.fetch_add(1, Ordering::Relaxed);
    metrics
        .placements
        .fetch_add(ops.len() as u64, Ordering::Relaxed);
    Ok(Json(ClaimResponse { ops }))
}

/// Applies up to 1,000 events of runs worker `id` holds, in one request (see
/// [`Service::worker_events`](crate::service::Service::worker_events)). Each event is checked
/// and applied as `POST /runs/{run_id}/events` of it alone would be, one run's events in
/// order, and answered in `results` with the status that request would have had (409 as
/// well for a run the worker does not hold); the others apply whatever one's outcome.
#[utoipa::path(
    post, path = "/workers/{id}/events", params(("id" = String, Path)), request_body = WorkerEventBatch,
    responses((status = 200, body = WorkerEventBatchAnswer), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn events(
    State(state): State<AppState>,
    Path(worker_id): Path<String>,
    ApiJson(request): ApiJson<WorkerEventBatch>,
) -> Result<Json<WorkerEventBatchAnswer>, ApiError> {
    let limit = gyoza_core::limits::MAX_BATCH_EVENTS;
    if request.events.len() > limit {
        return Err(ApiError::BadRequest(format!(
            "A batch holds at most {limit} events, got {}",
            request.events.len()
        )));
    }
    // Each item read and its type checked before anything touches the store.
    // Per item its run id, or why it was refused; the valid events move to the service.
    let mut valid: Vec<(String, AddEventRequest)> = Vec::new();
    let checked: Vec<Result<String, ApiError>> = request
        .events
        .into_iter()
        .map(|item| {
            let event: WorkerEvent = super::extract::from_value(item)?;
            event.event.event_type.parse::<EventType>()?;
            valid.push((event.run_id.clone(), event.event));
            Ok(event.run_id)
        })
        .collect();
    let mut applied = state
        .service
        .worker_events(&worker_id, valid)
        .await
        .into_iter();
    let results: Vec<WorkerEventOutcome> = checked
        .into_iter()
        .enumerate()
        .map(|(index, checked)| {
            let outcome = match checked {
                Err(e) => Err(e),
                Ok(run_id) => match applied.next().flatten() {
                    None => Err(ApiError::run_not_found(&run_id)),
                    Some(outcome) => outcome.map_err(ApiError::from),
                },
            };
            match outcome {
                Ok(run_state) => WorkerEventOutcome {
                    index,
                    status: StatusCode::OK.as_u16(),
                    state: Some(run_state),
                    detail: None,
                },
                Err(e) => {
                    let (status, detail) = e.answer();
                    WorkerEventOutcome {
                        index,
                        status: status.as_u16(),
                        state: None,
                        detail: Some(detail),
                    }
                }
            }
        })
        .collect();
    let applied = results.iter().filter(|r| r.state.is_some()).count();
    Ok(Json(WorkerEventBatchAnswer {
        applied,
        failed: results.len() - applied,
        results,
    }))
}
