//! The REST API: routes, shared state and the OpenAPI document.
//!
//! [`app`] builds the router; handlers live in one module per resource. They parse requests,
//! call the domain [`Service`] (or the store for plain reads) and map its errors to statuses
//! (see [`crate::error`]); nothing below this module knows HTTP. Paths, methods, field names
//! and status codes are those of the original gyoza server.

mod dashboard;
mod definitions;
pub mod extract;
mod logs;
mod observe;
mod queues;
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
use utoipa::openapi::security::{ApiKey as ApiKeyScheme, ApiKeyValue, SecurityScheme};

use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::service::Service;
use crate::strategy::StrategyHost;

/// What every handler shares: the domain service, and what only HTTP needs.
#[derive(Clone)]
pub struct AppState {
    /// The domain service (store, scheduler, clock, run updates, claims).
    pub service: Arc<Service>,
    /// The key clients must send.
    pub api_key: ApiKey,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Counters and histograms of this process.
    pub metrics: Arc<Metrics>,
    /// The wasm strategy host behind the scheduler, for `/strategies` and its metrics
    /// (none: this server runs no wasm strategies, and `/strategies` answers 404).
    pub strategies: Option<StrategyHost>,
}

impl AppState {
    /// A state over `service` with 10 MiB bodies and no strategy host; `metrics` should be
    /// the registry the service's event delivery counts in.
    pub fn new(service: Arc<Service>, metrics: Arc<Metrics>, api_key: &str) -> Self {
        Self {
            service,
            api_key: ApiKey::new(api_key),
            max_body_bytes: 10 * 1024 * 1024,
            metrics,
            strategies: None,
        }
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
        .route("/runs/batch", post(runs::create_batch))
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
        .route("/workers/{id}/events", post(workers::events))
        .route("/workers/{id}/claim-scenario", get(workers::claim_scenario))
        .route("/queues", get(queues::list))
        .route("/strategies", get(strategies::list))
        .route("/strategies/active", put(strategies::activate))
        .route("/openapi.json", get(openapi_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.api_key.clone(),
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
            SecurityScheme::ApiKey(ApiKeyScheme::Header(ApiKeyValue::new("X-API-Key"))),
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
        runs::create_batch,
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
        workers::events,
        workers::claim_scenario,
        queues::list,
        strategies::list,
        strategies::activate,
    ),
    modifiers(&SecurityAddon),
    security(("api_key" = []))
)]
pub struct ApiDoc;
