//! What a run tells the server: its events (STARTED, COMPLETED, FAILED and the container's
//! own), its log, and handing it back — each with retries under one backoff rule.
//!
//! A run's result must not be lost to a short outage, so STARTED, COMPLETED, FAILED and a
//! release are retried for a while ([`report`], [`release`]); the container's events and log
//! batches are worth less than the run itself and get a few tries only ([`forward_events`],
//! [`ship_logs`]). A 400/404/409 answer is a refusal, never retried: the run was cancelled,
//! retried or reclaimed meanwhile (409 is the server fencing a stale attempt).

use std::time::Duration;

use gyoza_core::WorkerOpRun;
use gyoza_core::api::{AddEventRequest, ReleaseRequest};
use gyoza_core::backoff::Backoff;
use gyoza_core::client::{Client, ClientError};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::Receiver;

use crate::events::payload;
use crate::run_context::RunContext;

/// Tries of a report of the run's result or state before giving up.
const REPORT_TRIES: u32 = 10;
/// Waits between those tries.
const REPORT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// Tries of a container event or a log batch.
const SIDE_TRIES: u32 = 3;
/// Waits between those tries.
const SIDE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
/// Bytes of output sent in one batch at most.
const LOG_BATCH_BYTES: usize = 64 * 1024;
/// How long a log batch collects lines before it is sent.
const LOG_BATCH_WAIT: Duration = Duration::from_millis(500);

/// What became of a report to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// The server recorded it.
    Delivered,
    /// The server could not be reached (or failed) on every try: the report is lost. Logged;
    /// the run goes on as if it had been delivered.
    GaveUp,
    /// Refused with 400/404/409: the run is no longer ours to report on.
    Refused(String),
}

/// The COMPLETED event with `outputs`.
pub fn completed(outputs: &Map<String, Value>) -> AddEventRequest {
    AddEventRequest {
        event_type: "COMPLETED".into(),
        msg: json!("Completed"),
        payload: Some(payload([("outputs", Value::Object(outputs.clone()))])),
        attempt: None,
    }
}

/// The FAILED event with `message` (its first line as the event's message).
pub fn failed(message: &str) -> AddEventRequest {
    AddEventRequest {
        event_type: "FAILED".into(),
        msg: json!(first_line(message)),
        payload: Some(payload([("error_message", json!(message))])),
        attempt: None,
    }
}

/// The STARTED event of a run on worker `worker_id`, on `gpu` if it has one.
pub fn started(worker_id: &str, gpu: Option<u32>) -> AddEventRequest {
    let mut started = payload([("worker_id", json!(worker_id))]);
    if let Some(gpu) = gpu {
        started.insert("gpu_id".into(), json!(gpu));
    }
    AddEventRequest {
        event_type: "STARTED".into(),
        msg: json!(format!("Started on worker {worker_id}")),
        payload: Some(started),
        attempt: None,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// Delivers an event for `op`'s attempt (see [`deliver`]).
pub async fn report(client: &Client, op: &WorkerOpRun, mut event: AddEventRequest) -> Reported {
    event.attempt = op.attempt;
    let what = event.event_type.clone();
    deliver(&op.id, &what, || client.add_event(&op.id, &event)).await
}

/// Hands `op`'s attempt back to the server for another attempt (see [`deliver`]). A server
/// that does not number attempts has no release endpoint either: the run is reported FAILED
/// with the same message instead.
pub async fn release(context: &RunContext, op: &WorkerOpRun, reason: &str) -> Reported {
    let Some(attempt) = op.attempt else {
        let message = format!("worker {} handed the run back: {reason}", context.worker_id);
        return report(&context.client, op, failed(&message)).await;
    };
    let request = ReleaseRequest {
        worker_id: context.worker_id.clone(),
        attempt,
        reason: Some(reason.to_owned()),
    };
    deliver(&op.id, "release", || {
        context.client.release_run(&op.id, &request)
    })
    .await
}

/// Makes a call about run `run_id`, retrying while the server is unreachable. Refusals are
/// returned, not retried.
async fn deliver<T, F, Fut>(run_id: &str, what: &str, call: F) -> Reported
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let retried = retry(REPORT_TRIES, REPORT_BACKOFF, call, |attempt, e| {
        tracing::warn!(run_id, what, attempt, error = %e, "cannot report; retrying");
    })
    .await;
    match retried {
        Ok(_) => Reported::Delivered,
        Err(e) if refused(&e) => {
            let detail = e.detail().unwrap_or_default().to_owned();
            tracing::info!(run_id, what, detail = %detail, "the server refused: the run was cancelled, retried or reclaimed meanwhile");
            Reported::Refused(detail)
        }
        Err(e) => {
            tracing::error!(run_id, what, error = %e, "cannot report; gave up: the server never took it");
            Reported::GaveUp
        }
    }
}

fn refused(e: &ClientError) -> bool {
    e.status()
        .is_some_and(|s| matches!(s.as_u16(), 400 | 404 | 409))
}

/// Calls `call` until it succeeds, fails for good, or has been tried `tries` times; a
/// transient failure (server unreachable, 5xx) is told to `on_retry` and waited on as
/// `backoff` says. The last failure is returned.
async fn retry<T, F, Fut>(
    tries: u32,
    backoff: Backoff,
    mut call: F,
    mut on_retry: impl FnMut(u32, &ClientError),
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_transient() && !refused(&e) && attempt < tries => {
                on_retry(attempt, &e);
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Sends the container's output to the server (`POST /runs/{id}/logs`) in batches: whatever
/// arrived within half a second, or 64 KiB. A batch that cannot be delivered after a few
/// tries is dropped with a warning: the run must not wait on its log.
pub async fn ship_logs(
    client: Client,
    run_id: String,
    attempt: Option<u32>,
    mut lines: Receiver<String>,
) {
    let mut open = true;
    while open {
        let Some(first) = lines.recv().await else {
            break;
        };
        let mut batch = first;
        open = fill_batch(&mut batch, &mut lines).await;
        let sent = retry(
            SIDE_TRIES,
            SIDE_BACKOFF,
            || client.append_log(&run_id, attempt, &batch),
            |_, _| {},
        )
        .await;
        if let Err(e) = sent {
            tracing::warn!(run_id = %run_id, error = %e, bytes = batch.len(), "container output not sent to the server");
        }
    }
}

/// Adds to `batch` what `lines` brings within [`LOG_BATCH_WAIT`], up to [`LOG_BATCH_BYTES`];
/// whether `lines` is still open.
async fn fill_batch(batch: &mut String, lines: &mut Receiver<String>) -> bool {
    let deadline = tokio::time::sleep(LOG_BATCH_WAIT);
    tokio::pin!(deadline);
    while batch.len() < LOG_BATCH_BYTES {
        tokio::select! {
            () = &mut deadline => break,
            line = lines.recv() => match line {
                Some(line) => batch.push_str(&line),
                None => return false,
            },
        }
    }
    true
}

/// Sends the container's events in order; a refused or undeliverable one is logged and
/// skipped (an op's progress report is not worth stalling its run for).
pub async fn forward_events(
    client: Client,
    run_id: String,
    attempt: Option<u32>,
    mut events: Receiver<AddEventRequest>,
) {
    while let Some(mut event) = events.recv().await {
        event.attempt = attempt;
        let sent = retry(
            SIDE_TRIES,
            SIDE_BACKOFF,
            || client.add_event(&run_id, &event),
            |_, _| {},
        )
        .await;
        if let Err(e) = sent {
            tracing::warn!(run_id = %run_id, event = %event.event_type, error = %e, "container event not recorded");
        }
    }
}
