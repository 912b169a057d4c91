//! What a run tells the server: its events (STARTED, COMPLETED, FAILED and the container's
//! own), its log, and handing it back — each with retries under one backoff rule.
//!
//! A run's *result* (COMPLETED, FAILED, or its hand-back) is never dropped
//! ([`deliver_result`]): it is written to the worker's [`Outbox`] first, and sent until the
//! server answers with a decision — 2xx (taken), 409 (a stale attempt, fenced), 404 (the run
//! is gone) or another 4xx (refused as sent). While the server is unreachable or answers 5xx,
//! 401/403 (a key being rotated), 408 or 429, the worker keeps trying, forever, waiting up to
//! 30 s between tries and warning at most once a minute per run. A COMPLETED refused with 413
//! (outputs over the server's body limit) becomes a FAILED that says so, delivered the same
//! way. A new life of the worker sends the results its outbox still holds in one
//! `POST /workers/{id}/events` first ([`deliver_results`]), and what that does not settle
//! one by one as above. STARTED is retried for a while ([`report`]); the container's events and log batches
//! are worth less than the run itself and get a few tries only ([`forward_events`],
//! [`ship_logs`]).

use std::time::Duration;

use gyoza_core::WorkerOpRun;
use gyoza_core::api::{AddEventRequest, ReleaseRequest, WorkerEvent};
use gyoza_core::backoff::Backoff;
use gyoza_core::client::{Client, ClientError};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::Receiver;

use crate::events::payload;
use crate::outbox::{Entry, Message, Outbox};

/// Tries of a STARTED report before going on without it.
const REPORT_TRIES: u32 = 10;
/// Waits between tries of a report (STARTED, and results, which are tried forever).
const REPORT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// At most one warning per run this often while its result cannot be delivered.
const RESULT_WARN_EVERY: Duration = Duration::from_secs(60);
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
    /// A STARTED the server could not be reached for on every try (logged; the run goes on
    /// without it). Never the answer for a result: [`deliver_result`] does not give up.
    GaveUp,
    /// Refused with a 4xx decision: the run is no longer ours to report on.
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

/// Sends STARTED (or another event) for `op`'s attempt, retrying for a while while the
/// server is unreachable; a refusal is returned, not retried.
pub async fn report(client: &Client, op: &WorkerOpRun, mut event: AddEventRequest) -> Reported {
    event.attempt = op.attempt;
    let what = event.event_type.clone();
    let run_id = op.id.as_str();
    let retried = retry(
        REPORT_TRIES,
        REPORT_BACKOFF,
        || client.add_event(&op.id, &event),
        |attempt, e| {
            tracing::warn!(run_id, what, attempt, error = %e, "cannot report; retrying");
        },
    )
    .await;
    match retried {
        Ok(_) => Reported::Delivered,
        Err(e) if refused(&e) => {
            let detail = e.detail().unwrap_or_default().to_owned();
            tracing::info!(run_id, what, detail = %detail, "the server refused: the run was cancelled, retried or reclaimed meanwhile");
            Reported::Refused(detail)
        }
        Err(e) => {
            tracing::error!(run_id, what, error = %e, "cannot report; going on without it");
            Reported::GaveUp
        }
    }
}

/// The result entry of `op`'s attempt with `event` (COMPLETED or FAILED).
pub fn result_entry(op: &WorkerOpRun, mut event: AddEventRequest) -> Entry {
    event.attempt = op.attempt;
    Entry {
        run_id: op.id.clone(),
        attempt: op.attempt,
        message: Message::Event(event),
    }
}

/// The entry handing `op`'s attempt back to the server for another attempt. A server that
/// does not number attempts has no release endpoint either: the run is reported FAILED with
/// the same message instead.
pub fn release_entry(worker_id: &str, op: &WorkerOpRun, reason: &str) -> Entry {
    let Some(attempt) = op.attempt else {
        let message = format!("worker {worker_id} handed the run back: {reason}");
        return result_entry(op, failed(&message));
    };
    Entry {
        run_id: op.id.clone(),
        attempt: Some(attempt),
        message: Message::Release(ReleaseRequest {
            worker_id: worker_id.to_owned(),
            attempt,
            reason: Some(reason.to_owned()),
        }),
    }
}

/// How the worker takes an answer to a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Taken (2xx; also a 2xx whose body this client cannot read).
    Taken,
    /// 413 on COMPLETED: the outputs are over the server's body limit.
    TooLarge,
    /// A decision against it (409 fenced, 404 gone, another 4xx): forget it.
    Refused,
    /// No decision (unreachable, timeout, 5xx, 401/403, 408, 429): try again.
    Retry,
}

fn answer(result: &Result<(), ClientError>, what: &str) -> Answer {
    let e = match result {
        Ok(()) | Err(ClientError::Decode { .. }) => return Answer::Taken,
        Err(e) => e,
    };
    match e.status().map(|s| s.as_u16()) {
        None if e.is_transient() => Answer::Retry,
        None => Answer::Refused,
        Some(status) => answer_status(status, what),
    }
}

/// What an answer with HTTP status `status` means for a result `what`.
fn answer_status(status: u16, what: &str) -> Answer {
    match status {
        200..=299 => Answer::Taken,
        413 if what == "COMPLETED" => Answer::TooLarge,
        401 | 403 | 408 | 429 => Answer::Retry,
        500.. => Answer::Retry,
        _ => Answer::Refused,
    }
}

/// Sends the events among `entries` (results a previous life of this worker left in
/// `outbox`) in one `POST /workers/{worker_id}/events`, and removes from the outbox each one
/// the server decided on (taken, or refused as [`deliver_result`] would take a refusal).
/// Returns the entries still to deliver one by one with [`deliver_result`]: hand-backs, the
/// events the server did not decide on (a 5xx, a 429, a COMPLETED too large for it), and every
/// entry when the batch got no answer or the server predates the endpoint.
pub async fn deliver_results(
    client: &Client,
    outbox: &Outbox,
    worker_id: &str,
    entries: Vec<Entry>,
) -> Vec<Entry> {
    let (mut events, mut batch, mut left) = (Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        match &entry.message {
            Message::Event(event) => {
                batch.push(WorkerEvent {
                    run_id: entry.run_id.clone(),
                    event: event.clone(),
                });
                events.push(entry);
            }
            Message::Release(_) => left.push(entry),
        }
    }
    if events.is_empty() {
        return left;
    }
    let answer = match client.worker_events(worker_id, &batch).await {
        Ok(answer) if answer.results.len() == events.len() => answer,
        Ok(_) | Err(_) => {
            tracing::info!(
                results = events.len(),
                "the server did not take the results in one request; sending them one by one"
            );
            left.extend(events);
            return left;
        }
    };
    let mut decided = 0;
    for (entry, outcome) in events.into_iter().zip(&answer.results) {
        match answer_status(outcome.status, entry.what()) {
            Answer::Taken | Answer::Refused => {
                if outcome.state.is_none() {
                    tracing::info!(run_id = %entry.run_id, what = entry.what(), detail = ?outcome.detail, "the server refused: the run was cancelled, retried or reclaimed meanwhile");
                }
                outbox.remove(&entry).await;
                decided += 1;
            }
            Answer::TooLarge | Answer::Retry => left.push(entry),
        }
    }
    tracing::info!(
        decided,
        left = left.len(),
        "sent the results a previous run of this worker left undelivered in one request"
    );
    left
}

/// `entry`'s COMPLETED turned into a FAILED saying its outputs (of `bytes` bytes) were too
/// large for the server (`detail`: the server's words).
fn too_large(entry: &Entry, detail: &str) -> Entry {
    let bytes = match &entry.message {
        Message::Event(event) => event
            .payload
            .as_ref()
            .and_then(|p| p.get("outputs"))
            .and_then(|o| serde_json::to_vec(o).ok())
            .map_or(0, |v| v.len()),
        Message::Release(_) => 0,
    };
    let message = format!(
        "the outputs were {bytes} bytes and the server refused them as too large ({detail}); \
         write smaller outputs (e.g. a reference to where the data is) or raise the server's \
         --max-body-bytes"
    );
    let mut event = failed(&message);
    event.attempt = entry.attempt;
    Entry {
        run_id: entry.run_id.clone(),
        attempt: entry.attempt,
        message: Message::Event(event),
    }
}

/// Delivers a run's result (see the module doc): written to `outbox` first, sent until the
/// server decides, then removed. Never gives up; returns `Delivered` or `Refused`.
pub async fn deliver_result(client: &Client, outbox: &Outbox, mut entry: Entry) -> Reported {
    if let Err(e) = outbox.put(&entry).await {
        tracing::error!(run_id = %entry.run_id, error = %e, "cannot keep the result in the outbox; sending it anyway (it is lost if the worker dies before the server takes it)");
    }
    let mut failures: u32 = 0;
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let what = entry.what().to_owned();
        let sent = match &entry.message {
            Message::Event(event) => client.add_event(&entry.run_id, event).await.map(drop),
            Message::Release(request) => client.release_run(&entry.run_id, request).await.map(drop),
        };
        let run_id = entry.run_id.as_str();
        match answer(&sent, &what) {
            Answer::Taken => {
                if failures > 0 {
                    tracing::info!(
                        run_id,
                        what,
                        tries = failures.saturating_add(1),
                        "result delivered"
                    );
                }
                outbox.remove(&entry).await;
                return Reported::Delivered;
            }
            Answer::TooLarge => {
                let detail = sent
                    .err()
                    .and_then(|e| e.detail().map(str::to_owned))
                    .unwrap_or_default();
                tracing::warn!(run_id, detail = %detail, "the server refused the outputs as too large; reporting FAILED instead");
                entry = too_large(&entry, &detail);
                if let Err(e) = outbox.put(&entry).await {
                    tracing::error!(run_id = %entry.run_id, error = %e, "cannot keep the result in the outbox; sending it anyway");
                }
                failures = 0;
            }
            Answer::Refused => {
                let detail = sent
                    .err()
                    .map(|e| e.detail().map_or_else(|| e.to_string(), str::to_owned))
                    .unwrap_or_default();
                tracing::info!(run_id, what, detail = %detail, "the server refused: the run was cancelled, retried or reclaimed meanwhile");
                outbox.remove(&entry).await;
                return Reported::Refused(detail);
            }
            Answer::Retry => {
                failures = failures.saturating_add(1);
                let now = tokio::time::Instant::now();
                if warned.is_none_or(|at| now.duration_since(at) >= RESULT_WARN_EVERY) {
                    warned = Some(now);
                    if let Err(e) = &sent {
                        tracing::warn!(run_id, what, tries = failures, error = %e, "cannot deliver the result yet; it is kept in the outbox and retried until the server takes it");
                    }
                }
                tokio::time::sleep(REPORT_BACKOFF.delay(failures)).await;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server that answers every request with `status` and an error body, as a
    /// server without `POST /workers/{id}/events` (404) or one that is failing (503) does.
    async fn answering(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let body = r#"{"detail":"Not Found"}"#;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        url
    }

    /// Against a server without the batch endpoint (or one that does not answer it), every
    /// result is left in the outbox for [`deliver_result`], none is dropped.
    #[tokio::test]
    async fn results_the_batch_did_not_settle_are_left_to_send_one_by_one() {
        for status in [404, 503] {
            let dir = tempfile::tempdir().unwrap();
            let outbox = Outbox::open(dir.path()).unwrap();
            let entries = vec![
                Entry {
                    run_id: "r1".into(),
                    attempt: Some(1),
                    message: Message::Event(completed(&Map::new())),
                },
                Entry {
                    run_id: "r2".into(),
                    attempt: Some(2),
                    message: Message::Event(failed("boom")),
                },
            ];
            for entry in &entries {
                outbox.put(entry).await.unwrap();
            }
            let client = Client::new(&answering(status).await, Some("k")).unwrap();
            let left = deliver_results(&client, &outbox, "w1", entries).await;
            let mut ids: Vec<_> = left.iter().map(|e| e.run_id.as_str()).collect();
            ids.sort();
            assert_eq!(ids, ["r1", "r2"], "status {status}");
            assert_eq!(outbox.entries().len(), 2, "status {status}");
        }
    }
}
