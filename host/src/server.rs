//! Starting and stopping the server.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::HostError;
use crate::api::{AppState, app};
use crate::clock::SystemClock;
use crate::config::{ServerConfig, StoreKind};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::store::mongo::redact;
use crate::store::{MongoStore, SqliteStore, Store};
use crate::strategy::StrategyHost;

/// Serves the API on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = state.service.clone();
    // Waiting claims answer at once, so that the in-flight requests finish promptly.
    let shutdown = async move {
        shutdown.await;
        service.stop_waiting();
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The state a server built from `config` runs with (its store, the wasm strategies, the
/// service over them).
pub async fn state_from_config(config: &ServerConfig) -> Result<AppState, HostError> {
    let api_key = config.require_api_key()?;
    let queues = config.queue_settings()?;
    // The store accrues ended attempts' usage with the half-life claims decay it with.
    let store: Arc<dyn Store> = match config.store_kind()? {
        StoreKind::Sqlite(path) => {
            let store = SqliteStore::open(path).await?;
            store.set_usage_half_life(queues.half_life_s);
            tracing::info!(database = %store.path().display(), "embedded store open");
            Arc::new(store)
        }
        StoreKind::Mongo { url, database } => {
            let store = MongoStore::connect(&url, &database).await?;
            store.set_usage_half_life(queues.half_life_s);
            tracing::info!(url = %redact(&url), database, "MongoDB store open");
            Arc::new(store)
        }
    };
    let settings = config.strategy_settings();
    // Compiling the built-in strategies takes a moment of CPU: off the async threads.
    let strategies = tokio::task::spawn_blocking(move || StrategyHost::start(settings))
        .await
        .map_err(|e| HostError::Config(format!("strategy loader stopped: {e}")))??;
    let metrics = Arc::new(Metrics::default());
    let mut service = Service::with_delivery(
        store,
        Arc::new(strategies.clone()),
        Arc::new(SystemClock),
        metrics.clone(),
        config.delivery_config()?,
    );
    service.worker_timeout = chrono::Duration::seconds(config.worker_timeout as i64);
    service.reconcile_grace = chrono::Duration::seconds(config.reconcile_grace as i64);
    service.timeout_grace = gyoza_core::resources::seconds(config.timeout_grace);
    service.claim_recheck = std::time::Duration::from_millis(config.claim_recheck_ms);
    service.queues = queues;
    service.preemption = config.preemption_limits();
    let mut state = AppState::new(Arc::new(service), metrics, &api_key);
    state.max_body_bytes = config.max_body_bytes;
    state.strategies = Some(strategies);
    Ok(state)
}

/// Opens the store, binds the configured address and serves until `shutdown`.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HostError> {
    let state = state_from_config(&config).await?;
    let address = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|source| HostError::Io {
            context: format!("cannot listen on {address}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| HostError::Io {
        context: "cannot read the listening address".into(),
        source,
    })?;
    tracing::info!("gyoza server listening on http://{local}");
    let reaper = crate::reaper::spawn(state.service.clone());
    let served = serve(listener, state, shutdown).await;
    reaper.abort();
    served.map_err(|source| HostError::Io {
        context: "server stopped with an error".into(),
        source,
    })?;
    tracing::info!("gyoza server stopped");
    Ok(())
}
