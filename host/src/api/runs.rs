//! `/runs`: runs, their events and attempts.
//!
//! Listing follows the original server's router exactly: Stripe-style cursor pagination,
//! newest first, with `state` (alias `status`), `op_definition`, `image` and `created[...]`
//! filters.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gyoza_core::api::{
    AddEventRequest, ErrorBody, EventsResponse, OpRunBatchAnswer, OpRunBatchCreate, OpRunBatchItem,
    OpRunCreate, OpRunList, OpRunUpdate, OpRunView, ReleaseRequest, RunScheduling,
};
use gyoza_core::resources::label_problem;
use gyoza_core::run::MAX_LOST_REQUEUES;
use gyoza_core::{DomainError, EventType, OpAttempt, OpRun, OpRunState};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::IntoParams;

use super::AppState;
use super::extract::{ApiJson, ApiQuery, bounded_param, int_param};
use crate::error::ApiError;
use crate::store::{
    CreatedBound, Cursor, EventCursor, EventQuery, RunMutation, RunQuery, list_events,
    with_recent_events,
};
use gyoza_core::limits::{MAX_EVENT_PAGE, RUN_LIST_EVENTS};

/// Query parameters of `GET /runs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1–100 (default 10).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Cursor: the page of runs older than this run id.
    starting_after: Option<String>,
    /// Cursor: the page of runs newer than this run id.
    ending_before: Option<String>,
    /// Only runs in this state.
    state: Option<String>,
    /// Alias of `state`; if both are given they must match.
    status: Option<String>,
    /// Only runs of this definition.
    op_definition: Option<String>,
    /// Only runs of this image.
    image: Option<String>,
    /// Only runs in this queue.
    queue: Option<String>,
    /// Only runs with this label, `key:value`.
    label: Option<String>,
    /// Created at or after this UNIX time (seconds).
    #[serde(rename = "created[gte]")]
    #[param(rename = "created[gte]", value_type = Option<i64>)]
    created_gte: Option<String>,
    /// Created at or before this UNIX time (seconds).
    #[serde(rename = "created[lte]")]
    #[param(rename = "created[lte]", value_type = Option<i64>)]
    created_lte: Option<String>,
    /// Created after this UNIX time (seconds).
    #[serde(rename = "created[gt]")]
    #[param(rename = "created[gt]", value_type = Option<i64>)]
    created_gt: Option<String>,
    /// Created before this UNIX time (seconds).
    #[serde(rename = "created[lt]")]
    #[param(rename = "created[lt]", value_type = Option<i64>)]
    created_lt: Option<String>,
}

/// Builds a `created_at` bound from microseconds.
type BoundFn = fn(i64) -> CreatedBound;

/// Earliest and latest UNIX seconds a timestamp filter may name (years 1 to 9999).
const SECONDS_RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl ListParams {
    fn into_query(self) -> Result<RunQuery, ApiError> {
        let limit = bounded_param("limit", self.limit.as_deref(), 10, 1..=100)?;
        let state = non_empty(self.state);
        let status = non_empty(self.status);
        if let (Some(a), Some(b)) = (&state, &status) {
            if a != b {
                return Err(ApiError::BadRequest(
                    "state and status must match when both are provided".into(),
                ));
            }
        }
        let state = state
            .or(status)
            .map(|s| {
                s.parse::<OpRunState>()
                    .map_err(|_| ApiError::BadRequest(format!("Invalid state '{s}'")))
            })
            .transpose()?;
        let cursor = match (
            non_empty(self.starting_after),
            non_empty(self.ending_before),
        ) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "starting_after and ending_before cannot be used together".into(),
                ));
            }
            (Some(id), None) => Cursor::StartingAfter(id),
            (None, Some(id)) => Cursor::EndingBefore(id),
            (None, None) => Cursor::Start,
        };
        let mut created = Vec::new();
        let bounds: [(&str, Option<String>, BoundFn); 4] = [
            ("created[gte]", self.created_gte, CreatedBound::Gte),
            ("created[lte]", self.created_lte, CreatedBound::Lte),
            ("created[gt]", self.created_gt, CreatedBound::Gt),
            ("created[lt]", self.created_lt, CreatedBound::Lt),
        ];
        for (name, value, bound) in bounds {
            if let Some(seconds) = int_param(name, value.as_deref())? {
                if !SECONDS_RANGE.contains(&seconds) {
                    return Err(ApiError::BadRequest("Invalid created timestamp".into()));
                }
                created.push(bound(seconds * 1_000_000));
            }
        }
        let label = non_empty(self.label)
            .map(|label| {
                let Some((key, value)) = label.split_once(':') else {
                    return Err(ApiError::BadRequest(format!(
                        "Query parameter 'label' must be key:value, got '{label}'"
                    )));
                };
                let mut problems = Vec::new();
                label_problem(&mut problems, key, value);
                if !problems.is_empty() {
                    return Err(ApiError::BadRequest(format!(
                        "Query parameter 'label': {}",
                        problems.join("; ")
                    )));
                }
                Ok((key.to_owned(), value.to_owned()))
            })
            .transpose()?;
        Ok(RunQuery {
            limit: limit as usize,
            cursor,
            state,
            op_definition: non_empty(self.op_definition),
            image: non_empty(self.image),
            queue: non_empty(self.queue),
            label,
            created,
            queue_timeout: false,
        })
    }
}

/// Lists runs, newest first, one page at a time.
#[utoipa::path(
    get, path = "/runs", params(ListParams),
    responses((status = 200, body = OpRunList), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<OpRunList>, ApiError> {
    let query = params.into_query()?;
    let mut page = state.service.store.list_runs(&query).await?;
    for run in &mut page.runs {
        with_recent_events(&*state.service.store, run, RUN_LIST_EVENTS).await?;
    }
    Ok(Json(OpRunList {
        object: "list".into(),
        data: page
            .runs
            .iter()
            .map(|run| with_scheduling(&state, run))
            .collect(),
        has_more: page.has_more,
        url: "/runs".into(),
    }))
}

/// Creates an ad-hoc run (no definition).
#[utoipa::path(
    post, path = "/runs", request_body = OpRunCreate,
    responses((status = 201, body = OpRunView), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<OpRunCreate>,
) -> Result<(StatusCode, Json<OpRunView>), ApiError> {
    let run = request.into_run(state.service.clock.now())?;
    state.service.insert_run(&run).await?;
    state.metrics.run_creations.fetch_add(1, Ordering::Relaxed);
    Ok((StatusCode::CREATED, Json(OpRunView::from(&run))))
}

/// Creates up to 1,000 ad-hoc runs at once, in order. Each item is checked as `POST /runs`
/// checks its body, and answered in `results` with the status that request would have had:
/// the valid ones are created (201) whatever the others are. The valid ones are stored in one
/// write, all or none: when the store fails the whole request fails and none is stored.
#[utoipa::path(
    post, path = "/runs/batch", request_body = OpRunBatchCreate,
    responses((status = 200, body = OpRunBatchAnswer), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn create_batch(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<OpRunBatchCreate>,
) -> Result<Json<OpRunBatchAnswer>, ApiError> {
    let limit = gyoza_core::limits::MAX_BATCH_RUNS;
    if request.runs.len() > limit {
        return Err(ApiError::BadRequest(format!(
            "A batch holds at most {limit} runs, got {}",
            request.runs.len()
        )));
    }
    let now = state.service.clock.now();
    // A microsecond apart, so that every store keeps the batch's order (FIFO within a
    // priority goes by creation time).
    let checked: Vec<Result<OpRun, ApiError>> = (0i64..)
        .zip(request.runs)
        .map(|(i, item)| {
            let at = now + chrono::Duration::microseconds(i);
            Ok(super::extract::from_value::<OpRunCreate>(item)?.into_run(at)?)
        })
        .collect();
    let valid: Vec<OpRun> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().cloned())
        .collect();
    state.service.insert_runs(&valid).await?;
    state
        .metrics
        .run_creations
        .fetch_add(valid.len() as u64, Ordering::Relaxed);
    let results: Vec<OpRunBatchItem> = checked
        .into_iter()
        .enumerate()
        .map(|(index, checked)| match checked {
            Ok(run) => OpRunBatchItem {
                index,
                status: StatusCode::CREATED.as_u16(),
                run: Some(OpRunView::from(&run)),
                detail: None,
            },
            Err(e) => {
                let (status, detail) = e.answer();
                OpRunBatchItem {
                    index,
                    status: status.as_u16(),
                    run: None,
                    detail: Some(detail),
                }
            }
        })
        .collect();
    Ok(Json(OpRunBatchAnswer {
        created: valid.len(),
        failed: results.len() - valid.len(),
        results,
    }))
}

pub(super) async fn load(state: &AppState, id: &str) -> Result<OpRun, ApiError> {
    state
        .service
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::run_not_found(id))
}

/// Applies a domain change to a run (see [`Service::update_run`](crate::service::Service::update_run))
/// and answers with the run as the change left it. Its `events` (and each attempt's) are
/// those the change appended, `events_total` counts the whole timeline: the answer costs the
/// same whatever the history (`GET /runs/{id}` shows the end of the timeline).
async fn mutate(
    state: &AppState,
    id: &str,
    mutation: RunMutation,
) -> Result<Json<OpRunView>, ApiError> {
    let run = state
        .service
        .update_run(id, mutation)
        .await?
        .ok_or_else(|| ApiError::run_not_found(id))?;
    Ok(Json(OpRunView::from(&run)))
}

/// One run with its attempts.
#[utoipa::path(
    get, path = "/runs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = OpRunView), (status = 404, body = ErrorBody))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OpRunView>, ApiError> {
    let run = load(&state, &id).await?;
    Ok(Json(with_scheduling(&state, &run)))
}

/// The run's view, with the scheduler's latest reason while it is PENDING.
fn with_scheduling(state: &AppState, run: &OpRun) -> OpRunView {
    let mut view = OpRunView::from(run);
    if run.state == OpRunState::Pending {
        view.scheduling = state
            .service
            .scheduler
            .pending_note(&run.id)
            .map(|note| RunScheduling {
                reason: note.reason,
                strategy: note.strategy,
                decided_at: gyoza_core::time::to_wire(&note.at),
            });
    }
    view
}

/// Changes a run's state, outputs or priority (an operator's tool: prefer events).
#[utoipa::path(
    patch, path = "/runs/{id}", params(("id" = String, Path)), request_body = OpRunUpdate,
    responses((status = 200, body = OpRunView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<OpRunUpdate>,
) -> Result<Json<OpRunView>, ApiError> {
    let now = state.service.clock.now();
    mutate(
        &state,
        &id,
        Box::new(move |run| request.clone().apply(run, now)),
    )
    .await
}

/// Retries a run now: a new attempt in PENDING, whatever its retry policy says.
#[utoipa::path(
    post, path = "/runs/{id}/retry", params(("id" = String, Path)),
    responses((status = 200, body = OpRunView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OpRunView>, ApiError> {
    let now = state.service.clock.now();
    mutate(
        &state,
        &id,
        Box::new(move |run| {
            let mut payload = Map::new();
            payload.insert("force".into(), Value::Bool(true));
            run.add_event(
                EventType::Retried,
                Value::String("Manual retry".into()),
                payload,
                now,
            )
        }),
    )
    .await
}

/// Cancels a run that has not finished.
#[utoipa::path(
    post, path = "/runs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = OpRunView), (status = 400, description = "Run already terminal", body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OpRunView>, ApiError> {
    let now = state.service.clock.now();
    mutate(
        &state,
        &id,
        Box::new(move |run| {
            if run.is_locked() {
                return Err(DomainError::InvalidEvent(format!(
                    "Run is already in terminal state {}",
                    run.state
                )));
            }
            run.add_event(
                EventType::Cancelled,
                Value::String("Cancelled by user".into()),
                Map::new(),
                now,
            )
        }),
    )
    .await
}

/// A worker hands back a run it cannot finish (it is shutting down, or its Docker engine went
/// away): the attempt ends FAILED with "worker <id> handed the run back: <reason>" and the run
/// is requeued as a new PENDING attempt without using its retry budget, as after a lost worker
/// and under the same cap (after which the run FAILS).
#[utoipa::path(
    post, path = "/runs/{id}/release", params(("id" = String, Path)), request_body = ReleaseRequest,
    responses(
        (status = 200, description = "Requeued (or FAILED when the requeue cap was reached)", body = OpRunView),
        (status = 400, description = "The run is not ASSIGNED to or RUNNING on that worker, or the reason is too long", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The attempt is no longer current", body = ErrorBody),
        (status = 422, body = ErrorBody)
    )
)]
pub async fn release(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReleaseRequest>,
) -> Result<Json<OpRunView>, ApiError> {
    let now = state.service.clock.now();
    // Refuse a bad reason before touching the store.
    request.reason()?;
    let view = mutate(
        &state,
        &id,
        Box::new(move |run| request.apply(run, MAX_LOST_REQUEUES, now)),
    )
    .await?;
    tracing::info!(
        run_id = %id,
        state = %view.state,
        attempt = view.current_attempt,
        "a worker handed the run back: {}",
        if view.state.is_terminal() { "run failed (requeue cap reached)" } else { "requeued" }
    );
    Ok(view)
}

/// Which events to return.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// The attempt (default: the current one).
    #[param(value_type = Option<i64>, minimum = 1)]
    attempt: Option<String>,
    /// Cursor: only events with an index greater than this (the next page; what the
    /// original server's `after` meant).
    #[param(value_type = Option<i64>)]
    after: Option<String>,
    /// Cursor: the page of events just before this index (the previous page).
    #[param(value_type = Option<i64>)]
    before: Option<String>,
    /// Page size, 1–100 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

impl EventParams {
    fn into_query(self) -> Result<EventQuery, ApiError> {
        let max = i64::try_from(MAX_EVENT_PAGE).unwrap_or(i64::MAX);
        let limit = bounded_param("limit", self.limit.as_deref(), 100, 1..=max)?;
        let attempt = match int_param("attempt", self.attempt.as_deref())? {
            None => None,
            Some(n) => Some(u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::BadRequest(format!("attempt must be a number from 1, got {n}"))
            })?),
        };
        let after = int_param("after", self.after.as_deref())?;
        let before = int_param("before", self.before.as_deref())?;
        let cursor = match (after, before) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "after and before cannot be used together".into(),
                ));
            }
            // As the original server: a negative `after` starts at the beginning.
            (Some(after), None) => {
                u64::try_from(after).map_or(EventCursor::Start, EventCursor::After)
            }
            (None, Some(before)) => EventCursor::Before(u64::try_from(before).unwrap_or(0)),
            (None, None) => EventCursor::Start,
        };
        Ok(EventQuery {
            attempt,
            cursor,
            limit: usize::try_from(limit).unwrap_or(MAX_EVENT_PAGE),
        })
    }
}

/// One page of an attempt's events, oldest first: the current attempt's unless `attempt`
/// names another, from its start, `after` an index or `before` one; `has_more` says whether
/// more lie beyond the page in that direction.
#[utoipa::path(
    get, path = "/runs/{id}/events", params(("id" = String, Path), EventParams),
    responses((status = 200, body = EventsResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn poll_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Json<EventsResponse>, ApiError> {
    let query = params.into_query()?;
    let page = list_events(&*state.service.store, &id, &query)
        .await?
        .ok_or_else(|| ApiError::run_not_found(&id))?;
    Ok(Json(EventsResponse::page(
        page.state,
        page.attempt,
        page.events_total,
        page.events,
        page.has_more,
    )))
}

/// Appends an event to the current attempt; STARTED, PROGRESS, COMPLETED, FAILED, CANCELLED
/// and RETRIED also move the run (see the run state machine).
#[utoipa::path(
    post, path = "/runs/{id}/events", params(("id" = String, Path)), request_body = AddEventRequest,
    responses((status = 200, body = OpRunView), (status = 400, description = "Invalid event or run locked", body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn add_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<AddEventRequest>,
) -> Result<Json<OpRunView>, ApiError> {
    let now = state.service.clock.now();
    // Refuse an unknown type before touching the store.
    request.event_type.parse::<EventType>()?;
    mutate(
        &state,
        &id,
        Box::new(move |run| request.clone().apply(run, now)),
    )
    .await
}

/// Every attempt of a run, oldest first.
#[utoipa::path(
    get, path = "/runs/{id}/attempts", params(("id" = String, Path)),
    responses((status = 200, body = Vec<OpAttempt>), (status = 404, body = ErrorBody))
)]
pub async fn attempts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<OpAttempt>>, ApiError> {
    Ok(Json(load(&state, &id).await?.attempts))
}
