//! The router test harness of the host's integration tests (`api`, `observe`, `reliability`,
//! `strategies`, …): a server state over a SQLite store in a temporary directory (or over the
//! MongoDB-wire test server, [`Api::mongodb`]) and a manual clock, its router called through
//! `tower::ServiceExt::oneshot` (no sockets), and the requests the tests make over and over.
//!
//! Each test file declares it with `pub mod common;`, so that helpers a file does not use
//! are not dead code.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{Duration, TimeZone, Utc};
use gyoza_host::api::{AppState, app};
use gyoza_host::clock::ManualClock;
use gyoza_host::delivery::DeliveryConfig;
use gyoza_host::destination::DestinationPolicy;
use gyoza_host::metrics::Metrics;
use gyoza_host::service::Service;
use gyoza_host::store::{MongoStore, SqliteOptions, SqliteStore, Store};
use gyoza_host::strategy::{StrategyHost, StrategySettings};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub mod hooked;

/// Declares, for each `name => body`, the tests `sqlite::name` and `mongodb::name`, each
/// running `body(api)` on an [`Api`] over its store (the MongoDB one passes without running
/// when the wire server is left out, see [`skip_mongo`]). The plain form uses [`Api::new`]
/// and [`Api::mongodb`] under `#[tokio::test]`; the long form names the test attribute and
/// both constructor calls: `#[tokio::test(..)] Api::a(..), Api::b(..); name => body; ...`.
#[macro_export]
macro_rules! on_both_stores {
    (#[$test:meta] $sqlite:expr, $mongodb:expr; $($name:ident => $body:ident;)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(#[$test]
            async fn $name() {
                super::$body($sqlite.await).await;
            })*
        }
        mod mongodb {
            #[allow(unused_imports)]
            use super::*;
            $(#[$test]
            async fn $name() {
                if !super::common::skip_mongo() {
                    super::$body($mongodb.await).await;
                }
            })*
        }
    };
    ($($name:ident => $body:ident;)*) => {
        $crate::on_both_stores! {
            #[tokio::test] Api::new(), Api::mongodb();
            $($name => $body;)*
        }
    };
}

/// The API key of every test server.
pub const KEY: &str = "test-key";

/// Default body limit of a test server, as the server's.
const BODY_LIMIT: usize = 10 * 1024 * 1024;

/// The `detail` of an error answer (the test fails when there is none).
pub fn detail(value: &Value) -> &str {
    value["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail in {value}"))
}

/// A server's router and what tests reach behind it.
pub struct Api {
    /// The router.
    pub app: Router,
    /// The domain service behind it (for the reaper's check).
    pub service: Arc<Service>,
    /// Its clock, starting at 2026-01-01 00:00 UTC.
    pub clock: Arc<ManualClock>,
    /// The directory of its database (`gyoza.db`; empty on MongoDB).
    pub dir: Arc<tempfile::TempDir>,
    /// The MongoDB database it uses, when it is on MongoDB.
    pub mongo_db: Option<String>,
    /// Where its event deliveries may reach beyond public addresses.
    pub delivery_allow: String,
}

/// The MongoDB-wire test server's URL (`GYOZA_TEST_MONGO_URL`, default
/// `mongodb://127.0.0.1:27117`, which `scripts/test.sh` starts).
pub fn mongo_url() -> String {
    std::env::var("GYOZA_TEST_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27117".into())
}

/// A database name no other test (of this or another run) uses.
pub fn fresh_mongo_db(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// True when MongoDB tests are left out (`GYOZA_TEST_SKIP_MONGO=1`), said once on stderr.
pub fn skip_mongo() -> bool {
    let skip = std::env::var("GYOZA_TEST_SKIP_MONGO").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("GYOZA_TEST_SKIP_MONGO=1: MongoDB test left out");
    }
    skip
}

fn new_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ))
}

/// Where compiled strategies are cached: shared across tests, so that each is compiled once
/// per test run.
pub fn strategy_cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("strategy-cache")
}

/// A strategy host started from `settings` (off the async threads: it compiles).
pub async fn start_strategies(settings: StrategySettings) -> StrategyHost {
    tokio::task::spawn_blocking(move || StrategyHost::start(settings))
        .await
        .unwrap()
        .unwrap()
}

/// The built-in `priority` strategy with backfill, the scheduler of most tests.
async fn priority_backfill() -> StrategyHost {
    start_strategies(StrategySettings {
        cache_dir: Some(strategy_cache()),
        config: "backfill=true".into(),
        ..StrategySettings::builtin("priority")
    })
    .await
}

impl Api {
    /// A server scheduling with the built-in priority strategy (backfill).
    pub async fn new() -> Self {
        Self::with_body_limit(BODY_LIMIT).await
    }

    /// [`Api::new`] with another body limit.
    pub async fn with_body_limit(max_body_bytes: usize) -> Self {
        Self::with_strategies(priority_backfill().await, max_body_bytes).await
    }

    /// A server scheduling with `host` (also behind `/strategies`), on a new database.
    pub async fn with_strategies(host: StrategyHost, max_body_bytes: usize) -> Self {
        Self::configured(host, max_body_bytes, |_| {}).await
    }

    /// [`Api::with_strategies`] whose service `configure` sets up first (queues, limits).
    pub async fn configured(
        host: StrategyHost,
        max_body_bytes: usize,
        configure: impl FnOnce(&mut Service),
    ) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start(host, max_body_bytes, dir, new_clock(), "", configure).await
    }

    /// [`Api::configured`] over a SQLite store with `hook` in its gaps ([`hooked`]), and
    /// that store.
    pub async fn hooked<H: hooked::Hook>(
        host: StrategyHost,
        hook: H,
        configure: impl FnOnce(&mut Service),
    ) -> (Self, Arc<hooked::Hooked<H>>) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let inner = SqliteStore::open(dir.path().join("gyoza.db"))
            .await
            .unwrap();
        let store = Arc::new(hooked::Hooked { inner, hook });
        let api = Self::on_store(
            store.clone(),
            host,
            BODY_LIMIT,
            dir,
            None,
            new_clock(),
            "",
            configure,
        );
        (api, store)
    }

    /// [`Api::new`] whose event deliveries may also reach `allow` (hosts and CIDRs, as
    /// `GYOZA_DELIVERY_ALLOW`).
    pub async fn with_delivery_allow(allow: &str) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let clock = new_clock();
        Self::start(
            priority_backfill().await,
            BODY_LIMIT,
            dir,
            clock,
            allow,
            |_| {},
        )
        .await
    }

    /// A server on a new SQLite database opened with `options`, and its store (to change
    /// them while it serves).
    pub async fn with_sqlite_options(options: SqliteOptions) -> (Self, SqliteStore) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let store = SqliteStore::open_with(dir.path().join("gyoza.db"), options)
            .await
            .unwrap();
        let api = Self::on_store(
            Arc::new(store.clone()),
            priority_backfill().await,
            BODY_LIMIT,
            dir,
            None,
            new_clock(),
            "",
            |_| {},
        );
        (api, store)
    }

    /// A server on a new database of the MongoDB-wire test server ([`mongo_url`]); the test
    /// fails when no server answers. Check [`skip_mongo`] first.
    pub async fn mongodb() -> Self {
        Self::mongodb_with_delivery_allow("").await
    }

    /// [`Api::mongodb`] whose event deliveries may also reach `allow`.
    pub async fn mongodb_with_delivery_allow(allow: &str) -> Self {
        Self::on_mongodb(fresh_mongo_db("gyoza_api"), new_clock(), allow).await
    }

    /// The server stopped and started again on the same database (file or MongoDB) and
    /// clock: every task of the old one is gone (its deliveries' loop ends within a second).
    pub async fn restart(self) -> Self {
        let (dir, mongo_db, clock, allow) = (
            self.dir.clone(),
            self.mongo_db.clone(),
            self.clock.clone(),
            self.delivery_allow.clone(),
        );
        drop(self);
        if let Some(database) = mongo_db {
            return Self::on_mongodb(database, clock, &allow).await;
        }
        Self::start(
            priority_backfill().await,
            BODY_LIMIT,
            dir,
            clock,
            &allow,
            |_| {},
        )
        .await
    }

    async fn on_mongodb(database: String, clock: Arc<ManualClock>, allow: &str) -> Self {
        let url = mongo_url();
        let store = MongoStore::connect(&url, &database)
            .await
            .unwrap_or_else(|e| {
                panic!("no MongoDB-wire server at {url} ({e}); run scripts/setup.d/30-mongo.sh or set GYOZA_TEST_SKIP_MONGO=1")
            });
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::on_store(
            Arc::new(store),
            priority_backfill().await,
            BODY_LIMIT,
            dir,
            Some(database),
            clock,
            allow,
            |_| {},
        )
    }

    /// Another server replica on the same database (file or MongoDB) and clock.
    pub async fn replica(&self) -> Self {
        let allow = &self.delivery_allow;
        if let Some(database) = &self.mongo_db {
            return Self::on_mongodb(database.clone(), self.clock.clone(), allow).await;
        }
        let host = priority_backfill().await;
        Self::start(
            host,
            BODY_LIMIT,
            self.dir.clone(),
            self.clock.clone(),
            allow,
            |_| {},
        )
        .await
    }

    async fn start(
        host: StrategyHost,
        max_body_bytes: usize,
        dir: Arc<tempfile::TempDir>,
        clock: Arc<ManualClock>,
        delivery_allow: &str,
        configure: impl FnOnce(&mut Service),
    ) -> Self {
        let store = SqliteStore::open(dir.path().join("gyoza.db"))
            .await
            .unwrap();
        Self::on_store(
            Arc::new(store),
            host,
            max_body_bytes,
            dir,
            None,
            clock,
            delivery_allow,
            configure,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn on_store(
        store: Arc<dyn Store>,
        host: StrategyHost,
        max_body_bytes: usize,
        dir: Arc<tempfile::TempDir>,
        mongo_db: Option<String>,
        clock: Arc<ManualClock>,
        delivery_allow: &str,
        configure: impl FnOnce(&mut Service),
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let delivery = DeliveryConfig {
            policy: DestinationPolicy::parse(delivery_allow).unwrap(),
            ..DeliveryConfig::default()
        };
        let mut service = Service::with_delivery(
            store,
            Arc::new(host.clone()),
            clock.clone(),
            metrics.clone(),
            delivery,
        );
        configure(&mut service);
        let service = Arc::new(service);
        let mut state = AppState::new(service.clone(), metrics, KEY);
        state.max_body_bytes = max_body_bytes;
        state.strategies = Some(host);
        Self {
            app: app(state),
            service,
            clock,
            dir,
            mongo_db,
            delivery_allow: delivery_allow.to_owned(),
        }
    }

    /// A request with `key` (if any), a JSON `body` (if any) and extra headers.
    pub fn request(
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Request<Body> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(text) => {
                request = request.header("content-type", "application/json");
                Body::from(text)
            }
            None => Body::empty(),
        };
        request.body(body).unwrap()
    }

    /// Sends `request`; the status and the whole body as text.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, String) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A request with `key` and a body sent as is; the answer must be JSON (or empty: null).
    pub async fn raw(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let (status, text) = self.send(Self::request(method, uri, key, body, &[])).await;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {uri}: not JSON ({e}): {text:?}"))
        };
        (status, value)
    }

    /// A request with the key and a JSON body; the answer as JSON.
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.raw(method, uri, Some(KEY), body.map(|b| b.to_string()))
            .await
    }

    /// A request with the key and a JSON body; the answer as text.
    pub async fn text(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, String) {
        let body = body.map(|b| b.to_string());
        self.send(Self::request(method, uri, Some(KEY), body, &[]))
            .await
    }

    /// [`Api::call`] that must succeed; the answer.
    pub async fn ok(&self, method: &str, uri: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, uri, body).await;
        assert!(status.is_success(), "{method} {uri}: {status} {value}");
        value
    }

    /// Sends a GET whose answer streams, and collects that body in the background.
    pub fn collect_stream(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<(StatusCode, String)> {
        let request = Self::request("GET", uri, Some(KEY), None, headers);
        let app = self.app.clone();
        tokio::spawn(async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// `POST /runs` that must answer 201; the run.
    pub async fn create_run(&self, body: Value) -> Value {
        let (status, run) = self.call("POST", "/runs", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run
    }

    /// A heartbeat of a worker with `cpu` cores, `ram` MB and no GPU.
    pub async fn heartbeat(&self, worker: &str, cpu: u32, ram: u64) {
        self.heartbeat_with_gpus(worker, cpu, ram, &[]).await;
    }

    /// A heartbeat of a worker with `cpu` cores, `ram` MB and GPUs of these VRAM sizes (MB).
    pub async fn heartbeat_with_gpus(&self, worker: &str, cpu: u32, ram: u64, gpus: &[u64]) {
        let gpus: Vec<Value> = gpus
            .iter()
            .enumerate()
            .map(|(i, vram)| json!({"id": i, "vram_mb": vram}))
            .collect();
        self.ok(
            "POST",
            "/workers/heartbeat",
            Some(json!({"worker_id": worker, "resources": {"cpu_cores": cpu, "ram_mb": ram, "gpus": gpus}})),
        )
        .await;
    }

    /// The ids of the runs a claim of `worker` got.
    pub async fn claim(&self, worker: &str, max: usize) -> Vec<String> {
        let answer = self
            .ok("POST", &format!("/workers/{worker}/claim?max={max}"), None)
            .await;
        answer["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Posts an event to `run`; the answer.
    pub async fn event(&self, run: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", &format!("/runs/{run}/events"), Some(body))
            .await
    }

    /// Posts an event to `run` that must be accepted; the run.
    pub async fn event_ok(&self, run: &str, body: Value) -> Value {
        self.ok("POST", &format!("/runs/{run}/events"), Some(body))
            .await
    }

    /// Moves the clock forward.
    pub fn advance(&self, seconds: i64) {
        self.clock.advance(Duration::seconds(seconds));
    }

    /// A run made from `body` and claimed by worker `w1` (8 cores, 8 GB).
    pub async fn claimed_run(&self, body: Value) -> String {
        self.heartbeat("w1", 8, 8192).await;
        let run = self.ok("POST", "/runs", Some(body)).await;
        let id = run["id"].as_str().unwrap().to_owned();
        let claim = self.ok("POST", "/workers/w1/claim", None).await;
        assert_eq!(claim["ops"][0]["id"], id.as_str());
        id
    }

    /// A run (with this retry policy) claimed by and started on `worker` (4 cores, 4 GB).
    pub async fn running_on(&self, worker: &str, retry: Value) -> String {
        self.heartbeat(worker, 4, 4096).await;
        let run = self
            .ok(
                "POST",
                "/runs",
                Some(json!({"image": "x", "retry_policy": retry})),
            )
            .await;
        let id = run["id"].as_str().unwrap().to_owned();
        let claim = self
            .ok("POST", &format!("/workers/{worker}/claim"), None)
            .await;
        assert_eq!(claim["ops"][0]["id"], id.as_str());
        assert_eq!(claim["ops"][0]["attempt"], 1);
        self.event_ok(
            &id,
            json!({"type": "STARTED", "msg": "", "payload": {"worker_id": worker}, "attempt": 1}),
        )
        .await;
        id
    }

    /// Attempt `attempt` of run `id` STARTED on `worker` and COMPLETED; the run as answered.
    pub async fn start_and_complete(&self, id: &str, worker: &str, attempt: u32) -> Value {
        self.event_ok(
            id,
            json!({"type": "STARTED", "msg": "", "payload": {"worker_id": worker}, "attempt": attempt}),
        )
        .await;
        self.event_ok(
            id,
            json!({"type": "COMPLETED", "msg": "ok", "attempt": attempt}),
        )
        .await
    }
}
