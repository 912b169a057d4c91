//! `GET /runs/{id}/events/stream`: a run's events as Server-Sent Events.
//!
//! Every event of every attempt, in order, then an `end` event once the run is terminal.
//! Each SSE `id` is `<attempt>.<index>`; a client that reconnects with `Last-Event-ID`
//! resumes after that event. Changes made through this server wake the stream at once;
//! changes made through another replica are seen within a second.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use gyoza_core::api::ErrorBody;
use gyoza_core::{OpRun, time};
use serde_json::json;
use tokio::sync::broadcast;

use super::AppState;
use crate::error::ApiError;
use crate::service::Service;

/// How long a stream waits for news before looking at the store anyway.
const POLL: Duration = Duration::from_secs(1);

/// The last event a client has: (attempt, index). `(1, None)` means "nothing yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    attempt: u32,
    index: Option<usize>,
}

fn parse_last_event_id(headers: &HeaderMap) -> Position {
    let start = Position {
        attempt: 1,
        index: None,
    };
    let Some(value) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) else {
        return start;
    };
    match value.split_once('.') {
        Some((attempt, index)) => match (attempt.parse::<u32>(), index.parse::<usize>()) {
            (Ok(attempt), Ok(index)) if attempt >= 1 => Position {
                attempt,
                index: Some(index),
            },
            _ => start,
        },
        None => start,
    }
}

/// The events of `run` after `position`, as SSE events; moves `position` past them.
fn events_after(run: &OpRun, position: &mut Position) -> Vec<Event> {
    let mut out = Vec::new();
    let from = position.attempt;
    for attempt in run.attempts.iter().filter(|a| a.attempt >= from) {
        let first = if attempt.attempt == position.attempt {
            position.index.map_or(0, |i| i + 1)
        } else {
            0
        };
        for (index, event) in attempt.events.iter().enumerate().skip(first) {
            let data = json!({
                "id": index,
                "attempt": attempt.attempt,
                "type": event.event_type,
                "t": time::to_wire(&event.t),
                "msg": event.msg,
                "state": run.state,
                "payload": event.payload,
            });
            out.push(
                Event::default()
                    .id(format!("{}.{index}", attempt.attempt))
                    .data(data.to_string()),
            );
            *position = Position {
                attempt: attempt.attempt,
                index: Some(index),
            };
        }
    }
    out
}

struct Watch {
    state: AppState,
    run_id: String,
    changes: broadcast::Receiver<String>,
    position: Position,
    queue: VecDeque<Event>,
    finished: bool,
}

impl Watch {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            match self.state.service.store.get_run(&self.run_id).await {
                Ok(Some(run)) => {
                    self.queue.extend(events_after(&run, &mut self.position));
                    if run.is_locked() {
                        self.finished = true;
                        let end = json!({"state": run.state});
                        self.queue
                            .push_back(Event::default().event("end").data(end.to_string()));
                    }
                }
                Ok(None) => self.finished = true,
                Err(e) => {
                    tracing::error!(run_id = %self.run_id, error = %e, "event stream: store failed; closing the stream");
                    self.finished = true;
                }
            }
            if self.queue.is_empty() && !self.finished {
                Service::wait_for_change(&mut self.changes, &self.run_id, POLL).await;
            }
        }
    }
}

/// The run's events as Server-Sent Events, live until the run ends.
#[utoipa::path(
    get, path = "/runs/{id}/events/stream", params(("id" = String, Path), ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (`<attempt>.<index>`)")),
    responses((status = 200, description = "text/event-stream of events, then an `end` event", content_type = "text/event-stream"), (status = 404, body = ErrorBody))
)]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before the first read so that no change falls between the two.
    let changes = state.service.subscribe();
    super::runs::load(&state, &id).await?;
    let watch = Watch {
        state,
        run_id: id,
        changes,
        position: parse_last_event_id(&headers),
        queue: VecDeque::new(),
        finished: false,
    };
    let stream = futures_util::stream::unfold(watch, Watch::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
