//! `/runs/{id}/logs`: the container output of each attempt, shipped by the worker in batches.
//!
//! The server keeps a bounded tail per attempt ([`LOG_TAIL_BYTES`]); older output is dropped
//! (a follower is told how much). `?follow=true` streams new output until the attempt ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gyoza_core::api::ErrorBody;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::extract::{ApiJson, ApiQuery, int_param};
use crate::error::ApiError;
use crate::service::Service;

/// Bytes of output kept per attempt.
pub const LOG_TAIL_BYTES: usize = 1024 * 1024;

/// A batch of output.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct LogBatch {
    /// The attempt it belongs to (default: the current one).
    #[serde(default)]
    pub attempt: Option<u32>,
    /// The output, as text.
    pub text: String,
}

/// Appends a batch of output to an attempt's log (the worker calls this while a run goes).
#[utoipa::path(
    post, path = "/runs/{id}/logs", params(("id" = String, Path)), request_body = LogBatch,
    responses((status = 204, description = "Appended"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn append(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(batch): ApiJson<LogBatch>,
) -> Result<StatusCode, ApiError> {
    let run = super::runs::load(&state, &id).await?;
    let attempt = batch.attempt.unwrap_or_else(|| run.current_attempt());
    if attempt == 0 || attempt as usize > run.attempts.len() {
        return Err(ApiError::BadRequest(format!(
            "OpRun '{id}' has no attempt {attempt} (it has {})",
            run.attempts.len()
        )));
    }
    state
        .service
        .store
        .append_log(&id, attempt, &batch.text, LOG_TAIL_BYTES)
        .await?;
    state.service.notify(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Which log, and whether to follow it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Attempt number (default: the current one).
    #[param(value_type = Option<i64>)]
    attempt: Option<String>,
    /// `true` streams new output until the attempt ends.
    #[param(value_type = Option<bool>)]
    follow: Option<String>,
}

/// An attempt's output (the kept tail), as plain text.
#[utoipa::path(
    get, path = "/runs/{id}/logs", params(("id" = String, Path), LogParams),
    responses((status = 200, description = "The output", content_type = "text/plain"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    let follow = match params.follow.as_deref() {
        None | Some("false" | "0" | "") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "Query parameter 'follow' must be true or false, got '{other}'"
            )));
        }
    };
    let changes = state.service.subscribe();
    let run = super::runs::load(&state, &id).await?;
    let attempt = match int_param("attempt", params.attempt.as_deref())? {
        None => run.current_attempt(),
        Some(a) if a >= 1 && a as usize <= run.attempts.len() => a as u32,
        Some(a) => {
            return Err(ApiError::BadRequest(format!(
                "OpRun '{id}' has no attempt {a} (it has {})",
                run.attempts.len()
            )));
        }
    };
    let tail = state
        .service
        .store
        .get_log(&id, attempt)
        .await?
        .unwrap_or_default();
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        return Ok((headers, tail.text).into_response());
    }
    let follower = Follower {
        state,
        run_id: id,
        attempt,
        changes,
        sent: tail.total_bytes,
        first: Some(tail.text),
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(follower, Follower::next));
    Ok((headers, body).into_response())
}

struct Follower {
    state: AppState,
    run_id: String,
    attempt: u32,
    changes: broadcast::Receiver<String>,
    sent: u64,
    first: Option<String>,
    done: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(Bytes::from(first)), self));
        }
        loop {
            if self.done {
                return None;
            }
            // Read the run before the log: output written before the run ended is then
            // always seen before the follower stops.
            let ended = match self.state.service.store.load_run(&self.run_id).await {
                Ok(Some(run)) => run.is_locked() || run.current_attempt() != self.attempt,
                _ => true,
            };
            let tail = match self
                .state
                .service
                .store
                .get_log(&self.run_id, self.attempt)
                .await
            {
                Ok(tail) => tail.unwrap_or_default(),
                Err(e) => {
                    tracing::error!(run_id = %self.run_id, error = %e, "log follow: store failed");
                    return None;
                }
            };
            self.done = ended;
            if tail.total_bytes > self.sent {
                let new = (tail.total_bytes - self.sent) as usize;
                self.sent = tail.total_bytes;
                let chunk = if new > tail.text.len() {
                    format!(
                        "\n[gyoza: {} bytes of output dropped]\n{}",
                        new - tail.text.len(),
                        tail.text
                    )
                } else {
                    tail.text[tail.text.len() - new..].to_owned()
                };
                return Some((Ok(Bytes::from(chunk)), self));
            }
            if !self.done {
                Service::wait_for_change(&mut self.changes, &self.run_id, Duration::from_secs(1))
                    .await;
            }
        }
    }
}
