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
use gyoza_core::limits::MAX_EVENT_PAGE;
use gyoza_core::run::EventEntry;
use gyoza_core::{OpRunState, time};
use serde_json::json;
use tokio::sync::broadcast;

use super::AppState;
use crate::error::ApiError;
use crate::service::Service;
use crate::store::{EventCursor, EventQuery, QueryError, list_events};

/// How long a stream waits for news before looking at the store anyway.
const POLL: Duration = Duration::from_secs(1);

/// The last event a client has: (attempt, index). `(1, None)` means "nothing yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    attempt: u32,
    index: Option<u64>,
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
        Some((attempt, index)) => match (attempt.parse::<u32>(), index.parse::<u64>()) {
            (Ok(attempt), Ok(index)) if attempt >= 1 => Position {
                attempt,
                index: Some(index),
            },
            _ => start,
        },
        None => start,
    }
}

/// The SSE event of `event`, index `index` of attempt `attempt`, of a run now in `state`.
fn sse_event(attempt: u32, index: u64, event: &EventEntry, state: OpRunState) -> Event {
    let data = json!({
        "id": index,
        "attempt": attempt,
        "type": event.event_type,
        "t": time::to_wire(&event.t),
        "msg": event.msg,
        "state": state,
        "payload": event.payload,
    });
    Event::default()
        .id(format!("{attempt}.{index}"))
        .data(data.to_string())
}

struct Watch {
    state: AppState,
    run_id: String,
    changes: broadcast::Receiver<String>,
    position: Position,
    queue: VecDeque<Event>,
    finished: bool,
}

/// What one look at the store found.
enum Found {
    /// Events to send (the position moved past them).
    Events,
    /// Nothing new in this attempt, but a later attempt exists: look there.
    NextAttempt,
    /// Nothing new; the run is in this state.
    Nothing(OpRunState),
    /// The run is gone.
    Gone,
}

impl Watch {
    /// Queues the next page of events after the position (one page at a time, so a long
    /// timeline is streamed without being loaded whole).
    async fn look(&mut self) -> Result<Found, QueryError> {
        let query = EventQuery {
            attempt: Some(self.position.attempt),
            cursor: self
                .position
                .index
                .map_or(EventCursor::Start, EventCursor::After),
            limit: MAX_EVENT_PAGE,
        };
        let page = match list_events(&*self.state.service.store, &self.run_id, &query).await {
            Ok(Some(page)) => page,
            Ok(None) => return Ok(Found::Gone),
            // A Last-Event-ID naming an attempt that does not exist (yet).
            Err(QueryError::UnknownAttempt { .. }) => {
                return Ok(
                    match self.state.service.store.load_run(&self.run_id).await? {
                        Some(run) => Found::Nothing(run.state),
                        None => Found::Gone,
                    },
                );
            }
            Err(e) => return Err(e),
        };
        if let Some((last, _)) = page.events.last() {
            self.position.index = Some(*last);
            for (index, event) in &page.events {
                self.queue
                    .push_back(sse_event(page.attempt, *index, event, page.state));
            }
            return Ok(Found::Events);
        }
        if page.attempt < page.current_attempt {
            return Ok(Found::NextAttempt);
        }
        Ok(Found::Nothing(page.state))
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            match self.look().await {
                Ok(Found::Events) => {}
                Ok(Found::NextAttempt) => {
                    self.position = Position {
                        attempt: self.position.attempt.saturating_add(1),
                        index: None,
                    };
                }
                Ok(Found::Nothing(state)) if state.is_terminal() => {
                    self.finished = true;
                    let end = json!({"state": state});
                    self.queue
                        .push_back(Event::default().event("end").data(end.to_string()));
                }
                Ok(Found::Nothing(_)) => {
                    Service::wait_for_change(&mut self.changes, &self.run_id, POLL).await;
                }
                Ok(Found::Gone) => self.finished = true,
                Err(e) => {
                    tracing::error!(run_id = %self.run_id, error = %e, "event stream: store failed; closing the stream");
                    self.finished = true;
                }
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
