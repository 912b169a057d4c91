//! The typed async HTTP client of the REST API (feature `client`).
//!
//! One method per endpoint, taking and returning the wire types of [`crate::api`], so that the
//! worker and the CLI never spell a path or a field name themselves. Every request carries the
//! `X-API-Key` header when a key is configured.
//!
//! # Errors
//! Every method returns [`ClientError`], which says what went wrong in terms a person can act
//! on:
//! - [`ClientError::Unreachable`] / [`ClientError::Timeout`]: the server could not be reached
//!   or did not answer in time; the message names the URL. These are the transient ones
//!   ([`ClientError::is_transient`]) that a caller may retry.
//! - [`ClientError::Api`]: the server answered with an error status; it carries the status
//!   and the server's `detail` text verbatim.
//! - [`ClientError::Decode`]: the server answered 2xx with a body that is not what this client
//!   expects (usually a server of another version, or not a gyoza server at all).
//! - [`ClientError::Config`]: the client was built with an unusable URL or API key.

use std::fmt::Write as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::OpAttempt;
use crate::OpDefinition;
use crate::api::{ActivateStrategyRequest, QueueList, StrategyList};
use crate::api::{
    AddEventRequest, ClaimResponse, ErrorBody, EventsResponse, Health, HeartbeatRequest,
    OpDefinitionCreate, OpRunCreate, OpRunCreateFromDefinition, OpRunList, OpRunUpdate, OpRunView,
    ReleaseRequest, WorkerView,
};
use crate::worker::WorkerOpRun;

/// The header that carries the API key.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// The server URL used when none is configured (the original client's default).
pub const DEFAULT_SERVER_URL: &str = "http://localhost:5555";

/// How long a request may take, connection included, unless the builder says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to the server did not give the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client cannot be built as configured (bad URL, API key with invalid characters).
    #[error("{0}")]
    Config(String),
    /// No connection could be made, or it broke before an answer arrived.
    #[error("cannot reach the gyoza server at {url}: {}", error_chain(.source))]
    Unreachable {
        /// The URL of the request.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server did not answer within the client's timeout.
    #[error("the gyoza server at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL of the request.
        url: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server answered with an error status; `detail` is its explanation.
    #[error("{method} {url} failed with {status}: {detail}")]
    Api {
        /// The request's method.
        method: Method,
        /// The URL of the request.
        url: String,
        /// The answer's status.
        status: StatusCode,
        /// The server's `detail` text (or the start of the body if it sent no JSON error).
        detail: String,
    },
    /// A successful answer whose body is not the expected JSON.
    #[error("unexpected answer from {url}: {source}")]
    Decode {
        /// The URL of the request.
        url: String,
        /// What did not match.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The status of an error answer, if the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's `detail` text, if the server answered with an error.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Api { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the server was unreachable, too slow, or
    /// failed internally (5xx). A 4xx answer is a decision and will not change by retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Api { status, .. } => status.is_server_error(),
            Self::Config(_) | Self::Decode { .. } => false,
        }
    }
}

/// `source: cause: cause...`, without reqwest's own "for url (...)" (the URL is named once).
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = current {
        let part = e.to_string();
        // reqwest wraps hyper, which wraps the OS error; skip layers that add nothing.
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            let _ = write!(text, "{part}");
        }
        current = e.source();
    }
    text
}

/// Filters and paging of [`Client::list_runs`]; `Default` is the server's first page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFilter {
    /// Page size, 1–100 (server default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The page of runs older than this run id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_after: Option<String>,
    /// The page of runs newer than this run id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ending_before: Option<String>,
    /// Only runs in this state (e.g. `RUNNING`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only runs of this definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_definition: Option<String>,
    /// Only runs of this image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Only runs in this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only runs with this label, `key:value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Created at or after this UNIX time (seconds).
    #[serde(rename = "created[gte]", skip_serializing_if = "Option::is_none")]
    pub created_gte: Option<i64>,
    /// Created at or before this UNIX time (seconds).
    #[serde(rename = "created[lte]", skip_serializing_if = "Option::is_none")]
    pub created_lte: Option<i64>,
    /// Created after this UNIX time (seconds).
    #[serde(rename = "created[gt]", skip_serializing_if = "Option::is_none")]
    pub created_gt: Option<i64>,
    /// Created before this UNIX time (seconds).
    #[serde(rename = "created[lt]", skip_serializing_if = "Option::is_none")]
    pub created_lt: Option<i64>,
}

/// What [`Client::upsert_definition`] did.
#[derive(Debug, Clone)]
pub struct Upserted {
    /// The definition as stored.
    pub definition: OpDefinition,
    /// `true` when this id + version is new, `false` when it replaced a stored one.
    pub created: bool,
}

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl ClientBuilder {
    /// Sends `key` as `X-API-Key` on every request (`None` or blank: no header).
    pub fn api_key(mut self, key: Option<impl Into<String>>) -> Self {
        self.api_key = key.map(Into::into).filter(|k| !k.trim().is_empty());
        self
    }

    /// Gives up on a request after `timeout` (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client, or [`ClientError::Config`] if the URL or key cannot be used.
    pub fn build(self) -> Result<Client, ClientError> {
        let base = Url::parse(self.base_url.trim()).map_err(|e| {
            ClientError::Config(format!(
                "invalid server URL '{}': {e} (expected e.g. {DEFAULT_SERVER_URL})",
                self.base_url
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::Config(format!(
                "invalid server URL '{}': expected an http:// or https:// URL such as {DEFAULT_SERVER_URL}",
                self.base_url
            )));
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(key.trim()).map_err(|_| {
                ClientError::Config(
                    "the API key contains characters that cannot be sent in an HTTP header".into(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(API_KEY_HEADER, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(self.timeout)
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            timeout: self.timeout,
        })
    }
}

/// A client of one gyoza server. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
}

impl Client {
    /// A builder for a client of the server at `base_url` (e.g. `http://localhost:5555`).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client of the server at `base_url` with `api_key` and the default timeout.
    pub fn new(base_url: &str, api_key: Option<&str>) -> Result<Self, ClientError> {
        Self::builder(base_url).api_key(api_key).build()
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `base/segment/segment…`, each segment percent-encoded (names and ids may hold any
    /// character a URL path cannot).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Infallible: `build` refused URLs that cannot be a base.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http.request(method, self.url(segments))
    }

    /// Sends `request` and decodes a 2xx JSON answer; anything else becomes a [`ClientError`].
    async fn execute<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<(StatusCode, T), ClientError> {
        let request = request
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the request: {e}")))?;
        let method = request.method().clone();
        let url = request.url().to_string();
        let transport = |source: reqwest::Error, url: &str| {
            if source.is_timeout() {
                ClientError::Timeout {
                    url: url.to_owned(),
                    timeout: self.timeout,
                }
            } else {
                ClientError::Unreachable {
                    url: url.to_owned(),
                    source,
                }
            }
        };
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| transport(e, &url))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport(e, &url))?;
        if !status.is_success() {
            return Err(ClientError::Api {
                method,
                url,
                status,
                detail: detail_of(&body),
            });
        }
        let value =
            serde_json::from_slice(&body).map_err(|source| ClientError::Decode { url, source })?;
        Ok((status, value))
    }

    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        self.execute(request).await.map(|(_, value)| value)
    }

    /// `GET /health` (needs no API key).
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(self.request(Method::GET, &["health"])).await
    }

    /// `GET /openapi.json`: the server's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.call(self.request(Method::GET, &["openapi.json"]))
            .await
    }

    /// `POST /definitions`: creates a definition or replaces the same id + version.
    pub async fn upsert_definition(
        &self,
        definition: &OpDefinitionCreate,
    ) -> Result<Upserted, ClientError> {
        let (status, definition) = self
            .execute(
                self.request(Method::POST, &["definitions"])
                    .json(definition),
            )
            .await?;
        Ok(Upserted {
            definition,
            created: status == StatusCode::CREATED,
        })
    }

    /// `GET /definitions`: every version of every definition.
    pub async fn list_definitions(&self) -> Result<Vec<OpDefinition>, ClientError> {
        self.call(self.request(Method::GET, &["definitions"])).await
    }

    /// `GET /definitions/{name}`: the given version, or the latest when `version` is `None`.
    pub async fn get_definition(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<OpDefinition, ClientError> {
        let mut request = self.request(Method::GET, &["definitions", name]);
        if let Some(version) = version {
            request = request.query(&[("version", version)]);
        }
        self.call(request).await
    }

    /// `POST /runs`: an ad-hoc run, without a definition.
    pub async fn create_run(&self, run: &OpRunCreate) -> Result<OpRunView, ClientError> {
        self.call(self.request(Method::POST, &["runs"]).json(run))
            .await
    }

    /// `POST /runs/batch`: creates these ad-hoc runs in one request, in order; each item's
    /// outcome is in the answer's `results`.
    pub async fn create_runs(
        &self,
        runs: &[OpRunCreate],
    ) -> Result<crate::api::OpRunBatchAnswer, ClientError> {
        let runs = runs
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("cannot encode a run: {e}")))?;
        let body = crate::api::OpRunBatchCreate { runs };
        self.call(self.request(Method::POST, &["runs", "batch"]).json(&body))
            .await
    }

    /// `POST /definitions/{name}/runs`: a run from a definition (the latest version when
    /// `version` is `None`).
    pub async fn create_run_from_definition(
        &self,
        name: &str,
        version: Option<&str>,
        run: &OpRunCreateFromDefinition,
    ) -> Result<OpRunView, ClientError> {
        let mut request = self
            .request(Method::POST, &["definitions", name, "runs"])
            .json(run);
        if let Some(version) = version {
            request = request.query(&[("version", version)]);
        }
        self.call(request).await
    }

    /// `GET /runs`: one page of runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<OpRunList, ClientError> {
        self.call(self.request(Method::GET, &["runs"]).query(filter))
            .await
    }

    /// `GET /runs/{id}`.
    pub async fn get_run(&self, id: &str) -> Result<OpRunView, ClientError> {
        self.call(self.request(Method::GET, &["runs", id])).await
    }

    /// `PATCH /runs/{id}`: changes state, outputs or priority.
    pub async fn update_run(
        &self,
        id: &str,
        update: &OpRunUpdate,
    ) -> Result<OpRunView, ClientError> {
        self.call(self.request(Method::PATCH, &["runs", id]).json(update))
            .await
    }

    /// `POST /runs/{id}/retry`: a new attempt now, whatever the retry policy says.
    pub async fn retry_run(&self, id: &str) -> Result<OpRunView, ClientError> {
        self.call(self.request(Method::POST, &["runs", id, "retry"]))
            .await
    }

    /// `POST /runs/{id}/cancel`.
    pub async fn cancel_run(&self, id: &str) -> Result<OpRunView, ClientError> {
        self.call(self.request(Method::POST, &["runs", id, "cancel"]))
            .await
    }

    /// `POST /runs/{id}/events`: appends an event to the current attempt.
    pub async fn add_event(
        &self,
        id: &str,
        event: &AddEventRequest,
    ) -> Result<OpRunView, ClientError> {
        self.call(
            self.request(Method::POST, &["runs", id, "events"])
                .json(event),
        )
        .await
    }

    /// `POST /workers/{worker_id}/events`: events of runs this worker holds, in one request;
    /// each is answered in the result's `results`, as its own `add_event` would have been.
    pub async fn worker_events(
        &self,
        worker_id: &str,
        events: &[crate::api::WorkerEvent],
    ) -> Result<crate::api::WorkerEventBatchAnswer, ClientError> {
        let events = events
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("cannot encode an event: {e}")))?;
        let body = crate::api::WorkerEventBatch { events };
        self.call(
            self.request(Method::POST, &["workers", worker_id, "events"])
                .json(&body),
        )
        .await
    }

    /// `POST /runs/{id}/release`: hands a run this worker cannot finish back to the queue (a
    /// new attempt, outside the retry budget). 409 when the attempt is no longer current.
    pub async fn release_run(
        &self,
        id: &str,
        release: &ReleaseRequest,
    ) -> Result<OpRunView, ClientError> {
        self.call(
            self.request(Method::POST, &["runs", id, "release"])
                .json(release),
        )
        .await
    }

    /// `GET /runs/{id}/events`: the current attempt's events after index `after` (all when
    /// `None`).
    pub async fn poll_events(
        &self,
        id: &str,
        after: Option<i64>,
    ) -> Result<EventsResponse, ClientError> {
        let mut request = self.request(Method::GET, &["runs", id, "events"]);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        self.call(request).await
    }

    /// `GET /runs/{id}/attempts`: every attempt, oldest first.
    pub async fn get_attempts(&self, id: &str) -> Result<Vec<OpAttempt>, ClientError> {
        self.call(self.request(Method::GET, &["runs", id, "attempts"]))
            .await
    }

    /// `GET /workers`.
    pub async fn list_workers(&self) -> Result<Vec<WorkerView>, ClientError> {
        self.call(self.request(Method::GET, &["workers"])).await
    }

    /// `POST /workers/heartbeat`: registers or refreshes a worker.
    pub async fn heartbeat(&self, heartbeat: &HeartbeatRequest) -> Result<WorkerView, ClientError> {
        self.call(
            self.request(Method::POST, &["workers", "heartbeat"])
                .json(heartbeat),
        )
        .await
    }

    /// `POST /workers/{id}/claim?max=N`: up to `max` runs, now ASSIGNED to the worker.
    pub async fn claim(&self, worker_id: &str, max: u32) -> Result<Vec<WorkerOpRun>, ClientError> {
        let response: ClaimResponse = self
            .call(
                self.request(Method::POST, &["workers", worker_id, "claim"])
                    .query(&[("max", max)]),
            )
            .await?;
        Ok(response.ops)
    }

    /// `POST /workers/{id}/claim?max=N&wait_ms=W`: as [`GyozaClient::claim`], but when nothing
    /// is claimable the server waits up to `wait` (at most
    /// [`crate::limits::MAX_CLAIM_WAIT_MS`]) for something to be. A server that does not
    /// know `wait_ms` (the original one) ignores it and answers at once.
    pub async fn claim_waiting(
        &self,
        worker_id: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<WorkerOpRun>, ClientError> {
        let wait_ms = u64::try_from(wait.as_millis())
            .unwrap_or(u64::MAX)
            .min(crate::limits::MAX_CLAIM_WAIT_MS);
        let response: ClaimResponse = self
            .call(
                self.request(Method::POST, &["workers", worker_id, "claim"])
                    .query(&[("max", u64::from(max)), ("wait_ms", wait_ms)])
                    // The client's timeout is for the answer, after the wait.
                    .timeout(self.timeout + Duration::from_millis(wait_ms)),
            )
            .await?;
        Ok(response.ops)
    }

    /// `GET /workers/{id}/claim-scenario?max=N`: what a claim by the worker would decide from
    /// now, as a `gyoza plugins simulate` scenario (JSON; nothing is claimed).
    pub async fn claim_scenario(
        &self,
        worker_id: &str,
        max: u32,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(
            self.request(Method::GET, &["workers", worker_id, "claim-scenario"])
                .query(&[("max", max)]),
        )
        .await
    }

    /// Sends `request` and returns the answer once its status is 2xx, its body unread
    /// (for text and streams); anything else becomes a [`ClientError`].
    async fn send(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let request = request
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the request: {e}")))?;
        let method = request.method().clone();
        let url = request.url().to_string();
        let response =
            self.http
                .execute(request)
                .await
                .map_err(|source| ClientError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(ClientError::Api {
            method,
            url,
            status,
            detail: detail_of(&body),
        })
    }

    /// `GET /queues`: each queue's weight, quotas, PENDING and held runs, decayed usage and
    /// dominant share.
    pub async fn queues(&self) -> Result<QueueList, ClientError> {
        self.call(self.request(Method::GET, &["queues"])).await
    }

    /// `GET /strategies`: loaded strategies, their statistics and the active one.
    pub async fn strategies(&self) -> Result<StrategyList, ClientError> {
        self.call(self.request(Method::GET, &["strategies"])).await
    }

    /// `PUT /strategies/active`: makes a loaded strategy the active one.
    pub async fn activate_strategy(&self, name: &str) -> Result<StrategyList, ClientError> {
        self.call(self.request(Method::PUT, &["strategies", "active"]).json(
            &ActivateStrategyRequest {
                name: name.to_owned(),
            },
        ))
        .await
    }

    /// `GET /metrics`: the server's metrics in the Prometheus text format.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url(&["metrics"]).to_string();
        let response = self.send(self.request(Method::GET, &["metrics"])).await?;
        response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })
    }

    /// `GET /runs/{id}/logs`: an attempt's output (the current attempt when `None`).
    pub async fn logs(&self, id: &str, attempt: Option<u32>) -> Result<String, ClientError> {
        let mut request = self.request(Method::GET, &["runs", id, "logs"]);
        if let Some(attempt) = attempt {
            request = request.query(&[("attempt", attempt)]);
        }
        let url = self.url(&["runs", id, "logs"]).to_string();
        let response = self.send(request).await?;
        response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })
    }

    /// `POST /runs/{id}/logs`: appends a batch of output to an attempt's log.
    pub async fn append_log(
        &self,
        id: &str,
        attempt: Option<u32>,
        text: &str,
    ) -> Result<(), ClientError> {
        let body = serde_json::json!({ "attempt": attempt, "text": text });
        self.send(
            self.request(Method::POST, &["runs", id, "logs"])
                .json(&body),
        )
        .await
        .map(drop)
    }

    /// A streaming `GET` with no time limit on the body: `/runs/{id}/logs?follow=true`
    /// (`path` = `["runs", id, "logs"]`, `query` = `[("follow", "true")]`) or the event
    /// stream (`["runs", id, "events", "stream"]`, resuming after `last_event_id`). Read it
    /// with [`reqwest::Response::chunk`].
    pub async fn stream(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self.request(Method::GET, path).query(query);
        // The client's timeout covers whole requests: a stream may last as long as its run.
        request = request.timeout(Duration::from_secs(365 * 24 * 3600));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        self.send(request).await
    }
}

/// The `detail` of an error body, or the start of the body when it is not a gyoza error.
fn detail_of(body: &[u8]) -> String {
    if let Ok(error) = serde_json::from_slice::<ErrorBody>(body) {
        return error.detail;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no details in the answer)".to_owned();
    }
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_each_segment_and_keep_a_base_path() {
        let client = Client::new("http://example.invalid:5555/gyoza/", None).unwrap();
        assert_eq!(
            client.url(&["definitions", "a b%", "runs"]).as_str(),
            "http://example.invalid:5555/gyoza/definitions/a%20b%25/runs"
        );
        let client = Client::new("http://example.invalid", None).unwrap();
        assert_eq!(
            client.url(&["runs", "x"]).as_str(),
            "http://example.invalid/runs/x"
        );
    }

    #[test]
    fn unusable_configuration_is_refused_with_a_hint() {
        let err = Client::new("localhost:5555", None).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let err = Client::new("http://localhost", Some("bad\nkey")).unwrap_err();
        assert!(err.to_string().contains("API key"), "{err}");
    }

    #[test]
    fn error_details_come_from_the_body() {
        assert_eq!(
            detail_of(br#"{"detail":"OpRun 'x' not found"}"#),
            "OpRun 'x' not found"
        );
        assert_eq!(
            detail_of(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(detail_of(b""), "(no details in the answer)");
        assert!(detail_of("é".repeat(400).as_bytes()).ends_with('…'));
    }

    #[test]
    fn run_filter_uses_the_server_names() {
        let filter = RunFilter {
            limit: Some(5),
            state: Some("RUNNING".into()),
            created_gte: Some(10),
            ..RunFilter::default()
        };
        let url = Client::new("http://h", None)
            .unwrap()
            .http
            .get("http://h/runs")
            .query(&filter)
            .build()
            .unwrap()
            .url()
            .to_string();
        assert_eq!(
            url,
            "http://h/runs?limit=5&state=RUNNING&created%5Bgte%5D=10"
        );
    }
}
