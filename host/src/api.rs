//! The REST API: routes, shared state and the OpenAPI document.
//!
//! [`app`] builds the router; handlers live in one module per resource. Paths, methods,
//! field names and status codes are those of the original gyoza server.

mod dashboard;
mod definitions;
pub mod extract;
mod logs;
mod observe;
mod runs;
mod strategies;
mod stream;
mod workers;

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use gyoza_core::api::Health;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};

use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::delivery::{self, Deliverer, DeliveryConfig};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::{RunMutation, Store, StoreError};
use gyoza_core::OpRun;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Claim policy.
    pub scheduler: Arc<dyn Scheduler>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// The key clients must send.
    pub api_key: Arc<str>,
    /// A worker silent for longer is inactive.
    pub worker_timeout: chrono::Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Counters and histograms of this process.
    pub metrics: Arc<Metrics>,
    /// Ids of runs that changed in this process (wakes event streams and log followers).
    pub changes: broadcast::Sender<String>,
    /// Sends run events to their topic URLs.
    pub deliverer: Arc<Deliverer>,
    /// Runs that claims in this process are assigning right now (see [`crate::scheduler`]).
    pub claims_in_flight: Arc<crate::scheduler::InFlight>,
    /// The wasm strategy host, for `/strategies` and its metrics (none: not a wasm scheduler).
    pub strategies: Option<crate::strategy::StrategyHost>,
}

impl AppState {
    /// A state with default limits (60 s worker timeout, 10 MiB bodies, default delivery);
    /// starts the event delivery loop, so it must be called within a tokio runtime.
    pub fn new(
        store: Arc<dyn Store>,
        scheduler: Arc<dyn Scheduler>,
        clock: Arc<dyn Clock>,
        api_key: &str,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            store,
            scheduler,
            clock,
            api_key: api_key.into(),
            worker_timeout: chrono::Duration::seconds(60),
            max_body_bytes: 10 * 1024 * 1024,
            deliverer: Deliverer::start(DeliveryConfig::default(), metrics.clone()),
            metrics,
            changes: broadcast::channel(1024).0,
            claims_in_flight: Arc::default(),
            strategies: None,
        }
    }

    /// Waits until `run_id` may have changed: a notification from this process, a lagged
    /// channel, or `poll` passing (changes made by other replicas are only seen by looking).
    pub async fn wait_for_change(
        changes: &mut broadcast::Receiver<String>,
        run_id: &str,
        poll: std::time::Duration,
    ) {
        let deadline = tokio::time::sleep(poll);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                news = changes.recv() => match news {
                    Ok(id) if id == run_id => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut deadline).await;
                        return;
                    }
                },
            }
        }
    }

    /// Applies a domain change to a run atomically, then delivers the events it added to the
    /// run's topic and wakes this process's watchers of the run. `Ok(None)`: no such run.
    pub async fn update_run(
        &self,
        id: &str,
        mut mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        let before = Arc::new(std::sync::Mutex::new(delivery::Mark::default()));
        let seen = before.clone();
        let tracked: RunMutation = Box::new(move |run| {
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = delivery::mark(run);
            mutation(run)
        });
        let Some(run) = self.store.update_run(id, tracked).await? else {
            return Ok(None);
        };
        let before = *before.lock().unwrap_or_else(|p| p.into_inner());
        self.deliverer.enqueue_new(&run, before);
        self.notify(&run.id);
        Ok(Some(run))
    }

    /// Tells event streams and log followers in this process that `run_id` changed.
    pub fn notify(&self, run_id: &str) {
        // No receivers is normal: nobody is watching.
        let _ = self.changes.send(run_id.to_owned());
    }
}

/// The router of the whole API.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route(
            "/definitions",
            get(definitions::list).post(definitions::upsert),
        )
        .route("/definitions/{name}", get(definitions::get))
        .route("/definitions/{name}/runs", post(definitions::create_run))
        .route("/runs", get(runs::list).post(runs::create))
        .route("/runs/{id}", get(runs::get).patch(runs::update))
        .route("/runs/{id}/retry", post(runs::retry))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/release", post(runs::release))
        .route(
            "/runs/{id}/events",
            get(runs::poll_events).post(runs::add_event),
        )
        .route("/runs/{id}/attempts", get(runs::attempts))
        .route("/runs/{id}/events/stream", get(stream::events))
        .route("/runs/{id}/logs", get(logs::get).post(logs::append))
        .route("/metrics", get(observe::metrics))
        .route("/workers", get(workers::list))
        .route("/workers/heartbeat", post(workers::heartbeat))
        .route("/workers/{id}/claim", post(workers::claim))
        .route("/strategies", get(strategies::list))
        .route("/strategies/active", put(strategies::activate))
        .route("/openapi.json", get(openapi_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/dashboard", get(dashboard::page))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("Not Found".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::count_requests,
        ))
        .with_state(state)
}

/// Liveness; needs no API key.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The OpenAPI description, generated from the handlers and wire types.
#[derive(OpenApi)]
#[openapi(
    info(title = "gyoza", description = "Job scheduler for containerised operations."),
    paths(
        health,
        openapi_json,
        definitions::upsert,
        definitions::list,
        definitions::get,
        definitions::create_run,
        runs::list,
        runs::create,
        runs::get,
        runs::update,
        runs::retry,
        runs::cancel,
        runs::release,
        runs::poll_events,
        runs::add_event,
        runs::attempts,
        stream::events,
        logs::get,
        logs::append,
        observe::metrics,
        workers::list,
        workers::heartbeat,
        workers::claim,
        strategies::list,
        strategies::activate,
    ),
    modifiers(&SecurityAddon),
    security(("api_key" = []))
)]
pub struct ApiDoc;
