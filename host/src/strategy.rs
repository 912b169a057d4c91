//! Scheduling strategies as WebAssembly components (`gyoza:scheduler@0.2.0` and `@0.1.0`, world
//! `strategy`).
//!
//! The only module that touches wasmtime. One [`StrategyHost`] per server holds one engine,
//! the loaded plugins (the built-in `direct`, `priority` and `bin-packing`, embedded in the
//! binary, and every `.wasm` of the plugins directory) and which of them is active. It is the
//! server's [`Scheduler`]: each claim is converted to the WIT's compact records, decided by
//! the active plugin under a deadline and a memory limit, and the answer is checked before
//! the claim acts on it. A trap, timeout or error answer is counted and handled by the
//! [`FailPolicy`]: the embedded priority strategy decides instead, or nothing is assigned.
//!
//! The plugins directory is polled about once a second: a new or changed file is compiled,
//! validated (world, WIT version, `init`) and swapped in atomically; a bad file is logged,
//! listed as rejected, and ignored. A claim holds an `Arc` of the plugin it started with, so
//! in-flight claims finish on the old instance.
//!
//! Reasons a strategy gives for runs it leaves pending are kept in this process's memory (the
//! latest per run, a bounded number) and joined into `GET /runs` as `scheduling`: they are
//! hints that every claim refreshes, so writing them to the store on each claim would cost
//! far more than they are worth. With several replicas, a run shows the reason of the replica
//! that last decided about it, if the request reaches that replica.
//!
//! # Layout
//! - `engine`: the `Engine`, the `Linker` (WASI with an empty context), the epoch ticker that
//!   enforces deadlines, the on-disk cache of precompiled components.
//! - `plugin`: one compiled, validated plugin and its reusable instance; a call under limits.
//! - `convert`: a claim to WIT records, and the checks on a strategy's answer.
//! - `stats`: calls, failures and latency percentiles per strategy.
//! - [`scenario`]: JSON scenarios for `gyoza plugins simulate`, and `gyoza plugins check`.
//! - this file: [`StrategyHost`], its settings, the hot reload, [`PriorityBackfill`].

mod convert;
mod engine;
mod plugin;
pub mod scenario;
mod stats;

mod wit {
    //! Host bindings of the WIT worlds this host speaks. Claims are built as 0.2.0 records
    //! (columns); a 0.1.0 plugin gets them converted to its lists of records.
    pub mod v0_1 {
        wasmtime::component::bindgen!({
            path: "../wit/scheduler@0.1.0",
            world: "gyoza:scheduler/strategy",
        });
    }
    pub mod v0_2 {
        wasmtime::component::bindgen!({
            path: "../wit/scheduler@0.2.0",
            world: "gyoza:scheduler/strategy",
        });
    }
    pub use v0_2::gyoza::scheduler::types::{Claim, Decision};
}

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

pub use convert::Checked;
pub use plugin::CallFailure;

use crate::scheduler::{ClaimRequest, Decision, PendingNote, Scheduler};
use engine::Runtime;
use plugin::{Limits, Plugin};
use stats::Stats;

/// The WIT package strategies implement.
pub const WIT_PACKAGE: &str = "gyoza:scheduler";
/// The newest version of it this host speaks: the one the SDK and the built-ins implement.
pub const WIT_VERSION: &str = "0.2.0";
/// Every version of it this host speaks, oldest first. A plugin of a compatible version (same
/// major version; for 0.x, same minor) of one of them loads.
pub const WIT_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// Name of the strategy used when a plugin fails and the policy is `fallback`.
pub const FALLBACK: &str = "priority";

/// The built-in strategies, built from `plugins/` by `host/build.rs` and embedded.
pub const BUILTINS: [(&str, &[u8]); 3] = [
    (
        "direct",
        include_bytes!(concat!(
            env!("GYOZA_PLUGINS_OUT"),
            "/gyoza_strategy_direct.wasm"
        )),
    ),
    (
        "priority",
        include_bytes!(concat!(
            env!("GYOZA_PLUGINS_OUT"),
            "/gyoza_strategy_priority.wasm"
        )),
    ),
    (
        "bin-packing",
        include_bytes!(concat!(
            env!("GYOZA_PLUGINS_OUT"),
            "/gyoza_strategy_bin_packing.wasm"
        )),
    ),
];

/// How often the plugins directory is looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What happens to a claim when the active strategy traps, times out or returns an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    /// The embedded `priority` strategy decides the claim instead.
    Fallback,
    /// The claim gets no runs.
    None,
}

/// Why a strategy could not be loaded or selected.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// The wasm engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The file is not a component implementing the `strategy` world.
    #[error("plugin '{name}' {reason}")]
    Invalid {
        /// Plugin name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin was built against a WIT version this server does not speak.
    #[error(
        "plugin '{name}' was built against {found}; this server supports {WIT_PACKAGE}@{} \
         and compatible versions: rebuild the plugin with a matching gyoza-plugin-sdk, or upgrade the server",
        WIT_VERSIONS.join(&format!(" and {WIT_PACKAGE}@"))
    )]
    UnsupportedVersion {
        /// Plugin name.
        name: String,
        /// The package and version it exports.
        found: String,
    },
    /// The plugin's instantiation or `init` failed.
    #[error("plugin '{name}' could not start: {failure}")]
    InitFailed {
        /// Plugin name.
        name: String,
        /// What happened.
        failure: CallFailure,
    },
    /// No loaded strategy has this name.
    #[error("unknown strategy '{name}'; loaded: {}", available.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names that exist.
        available: Vec<String>,
    },
    /// A file could not be read.
    #[error("{context}: {source}")]
    Io {
        /// What was being read.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How a [`StrategyHost`] runs.
#[derive(Debug, Clone)]
pub struct StrategySettings {
    /// Directory watched for `.wasm` plugins (none: built-ins only).
    pub plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are cached (none: compile on every start).
    pub cache_dir: Option<PathBuf>,
    /// The strategy active at start.
    pub active: String,
    /// The configuration string every plugin's `init` receives.
    pub config: String,
    /// What a failed call leads to.
    pub fail_policy: FailPolicy,
    /// Longest a call may run.
    pub deadline: Duration,
    /// Largest memory of a plugin instance, in bytes.
    pub memory_limit: usize,
}

impl StrategySettings {
    /// Built-ins only, `active` active, default limits and fail policy.
    pub fn builtin(active: &str) -> Self {
        Self {
            plugins_dir: None,
            cache_dir: None,
            active: active.to_owned(),
            config: String::new(),
            fail_policy: FailPolicy::Fallback,
            deadline: Duration::from_millis(100),
            memory_limit: 64 << 20,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            deadline: self.deadline,
            memory_bytes: self.memory_limit,
        }
    }
}

/// One strategy as `GET /strategies` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StrategyInfo {
    /// Name (a plugin file's stem, or a built-in's name).
    pub name: String,
    /// The `gyoza:scheduler` version it implements.
    pub wit_version: String,
    /// sha256 of its wasm.
    pub sha256: String,
    /// `builtin` or the file it was loaded from.
    pub origin: String,
    /// Whether claims use it.
    pub active: bool,
    /// Calls since the server started.
    pub calls: u64,
    /// Calls that trapped, timed out, ran out of memory or returned an error.
    pub failures: u64,
    /// Answer entries dropped by the host's checks (unknown, duplicate or over-capacity).
    pub dropped: u64,
    /// Median call latency over recent calls, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile call latency over recent calls, in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// The latest failure.
    pub last_failure: Option<String>,
}

/// A plugin file that was refused, as `GET /strategies` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RejectedPlugin {
    /// The file.
    pub file: String,
    /// Why.
    pub error: String,
}

/// `GET /strategies`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StrategyList {
    /// Loaded strategies, by name.
    pub strategies: Vec<StrategyInfo>,
    /// The active one.
    pub active: String,
    /// What a failed call leads to.
    pub fail_policy: FailPolicy,
    /// Plugin files that were refused (and why).
    pub rejected: Vec<RejectedPlugin>,
}

/// What the watcher knows of a plugin file: its size and modification time when last read.
type FileStamp = (u64, Option<SystemTime>);

struct Inner {
    runtime: Arc<Runtime>,
    settings: StrategySettings,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    active: RwLock<String>,
    fallback: Arc<Plugin>,
    stats: Mutex<HashMap<String, Stats>>,
    notes: Mutex<HashMap<String, PendingNote>>,
    files: Mutex<HashMap<PathBuf, FileStamp>>,
    rejected: Mutex<BTreeMap<String, String>>,
}

/// Most pending-run reasons kept in memory; beyond, the oldest half of the map is dropped
/// (cheaply: all of it). Reasons are hints that the next claim refreshes.
const NOTES_KEPT: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent; a poisoned lock is reusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The loaded strategies, the active one, and the scheduler that calls it.
#[derive(Clone)]
pub struct StrategyHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StrategyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyHost")
            .field("active", &self.active_name())
            .finish_non_exhaustive()
    }
}

impl StrategyHost {
    /// Loads the built-ins and the plugins directory, checks that `settings.active` exists,
    /// and starts watching the directory.
    pub fn start(settings: StrategySettings) -> Result<Self, StrategyError> {
        let runtime = Runtime::new(settings.cache_dir.clone())?;
        let limits = settings.limits();
        let mut plugins = BTreeMap::new();
        for (name, bytes) in BUILTINS {
            let plugin = Plugin::load(
                &runtime,
                name,
                "builtin".into(),
                bytes,
                &settings.config,
                limits,
            )?;
            plugins.insert(name.to_owned(), Arc::new(plugin));
        }
        // The fallback is its own instance of the embedded priority strategy: a plugin file
        // named priority.wasm may replace the listed one, never the fallback.
        let fallback = Arc::new(Plugin::load(
            &runtime,
            FALLBACK,
            "builtin (fallback)".into(),
            BUILTINS[1].1,
            &settings.config,
            limits,
        )?);
        let host = Self {
            inner: Arc::new(Inner {
                runtime,
                active: RwLock::new(settings.active.clone()),
                settings,
                plugins: RwLock::new(plugins),
                fallback,
                stats: Mutex::new(HashMap::new()),
                notes: Mutex::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
                rejected: Mutex::new(BTreeMap::new()),
            }),
        };
        host.rescan();
        let active = host.active_name();
        if !read(&host.inner.plugins).contains_key(&active) {
            return Err(StrategyError::Unknown {
                name: active,
                available: host.names(),
            });
        }
        if let Some(dir) = host.inner.settings.plugins_dir.clone() {
            spawn_watcher(Arc::downgrade(&host.inner), dir)?;
        }
        tracing::info!(active = %host.active_name(), strategies = ?host.names(), "scheduling strategies loaded");
        Ok(host)
    }

    /// The names of the loaded strategies.
    pub fn names(&self) -> Vec<String> {
        read(&self.inner.plugins).keys().cloned().collect()
    }

    /// The active strategy's name.
    pub fn active_name(&self) -> String {
        read(&self.inner.active).clone()
    }

    /// Makes `name` the active strategy.
    pub fn activate(&self, name: &str) -> Result<(), StrategyError> {
        let plugins = read(&self.inner.plugins);
        if !plugins.contains_key(name) {
            return Err(StrategyError::Unknown {
                name: name.to_owned(),
                available: plugins.keys().cloned().collect(),
            });
        }
        *write(&self.inner.active) = name.to_owned();
        tracing::info!(strategy = name, "active scheduling strategy changed");
        Ok(())
    }

    /// Every loaded strategy with its counters, and the rejected files.
    pub fn list(&self) -> StrategyList {
        let active = self.active_name();
        let stats = lock(&self.inner.stats);
        let strategies = read(&self.inner.plugins)
            .values()
            .map(|plugin| {
                let s = stats.get(&plugin.name).cloned().unwrap_or_default();
                StrategyInfo {
                    name: plugin.name.clone(),
                    wit_version: plugin.wit_version.clone(),
                    sha256: plugin.sha256.clone(),
                    origin: plugin.origin.clone(),
                    active: plugin.name == active,
                    calls: s.calls,
                    failures: s.failures,
                    dropped: s.dropped,
                    latency_p50_ms: s.latency_ms(0.5),
                    latency_p99_ms: s.latency_ms(0.99),
                    last_failure: s.last_failure.clone(),
                }
            })
            .collect();
        let rejected = lock(&self.inner.rejected)
            .iter()
            .map(|(file, error)| RejectedPlugin {
                file: file.clone(),
                error: error.clone(),
            })
            .collect();
        StrategyList {
            strategies,
            active,
            fail_policy: self.inner.settings.fail_policy,
            rejected,
        }
    }

    /// Decides a claim with the active strategy (or the fail policy) and returns the checked
    /// run ids, best first. The wasm call runs on tokio's blocking pool: it may take up to the
    /// deadline, and WASI's synchronous bindings must not run on an async thread.
    pub async fn decide(&self, request: &ClaimRequest<'_>) -> Vec<String> {
        let plugin = {
            let active = read(&self.inner.active);
            read(&self.inner.plugins).get(active.as_str()).cloned()
        };
        let claim = Arc::new(convert::claim(request));
        let Some(plugin) = plugin else {
            // Only reachable if the active plugin's file vanished and was unloaded.
            tracing::error!(strategy = %self.active_name(), "active strategy is not loaded");
            return self.fail_over(request, claim).await;
        };
        let (outcome, elapsed) = call(plugin.clone(), claim.clone()).await;
        match outcome {
            Ok(decision) => {
                let checked = convert::check(request, &decision);
                self.record(&plugin.name, elapsed, None, checked.dropped());
                if checked.dropped() > 0 {
                    tracing::warn!(
                        strategy = %plugin.name,
                        unknown = checked.unknown,
                        duplicate = checked.duplicate,
                        over_capacity = checked.over_capacity,
                        "strategy answer corrected: entries dropped"
                    );
                }
                self.remember(&plugin.name, request, &checked);
                checked.ids
            }
            Err(failure) => {
                tracing::warn!(
                    strategy = %plugin.name,
                    %failure,
                    policy = ?self.inner.settings.fail_policy,
                    "strategy call failed"
                );
                self.record(&plugin.name, elapsed, Some(failure.to_string()), 0);
                self.fail_over(request, claim).await
            }
        }
    }

    /// [`StrategyHost::decide`] on the current thread, without the fail policy: for callers
    /// outside an async runtime that measure or try a strategy (the benchmark). Must not run
    /// on an async thread (WASI's synchronous bindings would refuse).
    pub fn decide_blocking(&self, request: &ClaimRequest<'_>) -> Result<Vec<String>, CallFailure> {
        let plugin = {
            let active = read(&self.inner.active);
            read(&self.inner.plugins).get(active.as_str()).cloned()
        };
        let plugin =
            plugin.ok_or_else(|| CallFailure::Refused("active strategy is not loaded".into()))?;
        let claim = convert::claim(request);
        let decision = plugin.schedule(&claim)?;
        Ok(convert::check(request, &decision).ids)
    }

    async fn fail_over(&self, request: &ClaimRequest<'_>, claim: Arc<wit::Claim>) -> Vec<String> {
        if self.inner.settings.fail_policy == FailPolicy::None {
            return Vec::new();
        }
        match call(self.inner.fallback.clone(), claim).await.0 {
            Ok(decision) => {
                let checked = convert::check(request, &decision);
                self.remember("priority (fallback)", request, &checked);
                checked.ids
            }
            Err(failure) => {
                tracing::error!(%failure, "the fallback priority strategy failed too; assigning nothing");
                Vec::new()
            }
        }
    }

    fn record(&self, name: &str, elapsed: Duration, failure: Option<String>, dropped: usize) {
        lock(&self.inner.stats)
            .entry(name.to_owned())
            .or_default()
            .record(elapsed, failure, dropped);
    }

    fn remember(&self, strategy: &str, request: &ClaimRequest<'_>, checked: &Checked) {
        if checked.reasons.is_empty() && checked.ids.is_empty() {
            return;
        }
        let mut notes = lock(&self.inner.notes);
        for id in &checked.ids {
            notes.remove(id);
        }
        if notes.len() + checked.reasons.len() > NOTES_KEPT {
            notes.clear();
        }
        for (id, reason) in &checked.reasons {
            notes.insert(
                id.clone(),
                PendingNote {
                    strategy: strategy.to_owned(),
                    reason: reason.clone(),
                    at: request.now,
                },
            );
        }
    }

    /// Looks at the plugins directory once: loads new and changed files, unloads removed
    /// ones (never the active strategy). The watcher calls this about once a second.
    pub fn rescan(&self) {
        rescan(&self.inner);
    }
}

/// Loads one plugin file (for `gyoza plugins check` and the reload), with default limits.
pub fn check_file(path: &Path) -> Result<StrategyInfo, StrategyError> {
    let bytes = std::fs::read(path).map_err(|source| StrategyError::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })?;
    let settings = StrategySettings::builtin(FALLBACK);
    let runtime = Runtime::new(None)?;
    let name = plugin_name(path);
    let plugin = Plugin::load(
        &runtime,
        &name,
        path.display().to_string(),
        &bytes,
        "",
        settings.limits(),
    )?;
    Ok(StrategyInfo {
        name: plugin.name.clone(),
        wit_version: plugin.wit_version.clone(),
        sha256: plugin.sha256.clone(),
        origin: plugin.origin.clone(),
        active: false,
        calls: 0,
        failures: 0,
        dropped: 0,
        latency_p50_ms: None,
        latency_p99_ms: None,
        last_failure: None,
    })
}

fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn spawn_watcher(inner: Weak<Inner>, dir: PathBuf) -> Result<(), StrategyError> {
    // A thread that holds only a weak reference: it stops once the host is dropped.
    std::thread::Builder::new()
        .name("gyoza-plugins".into())
        .spawn(move || {
            loop {
                std::thread::sleep(RELOAD_INTERVAL);
                let Some(inner) = inner.upgrade() else { break };
                rescan(&inner);
            }
            tracing::debug!(dir = %dir.display(), "plugin watcher stopped");
        })
        .map(|_| ())
        .map_err(|source| StrategyError::Io {
            context: "cannot start the plugin watcher".into(),
            source,
        })
}

fn rescan(inner: &Inner) {
    let Some(dir) = &inner.settings.plugins_dir else {
        return;
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create the plugins directory");
            }
            return;
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugins directory");
            return;
        }
    };
    let mut present = HashMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        present.insert(path, (meta.len(), meta.modified().ok()));
    }
    let changed: Vec<(PathBuf, FileStamp)> = {
        let files = lock(&inner.files);
        present
            .iter()
            .filter(|(path, stamp)| files.get(*path) != Some(stamp))
            .map(|(p, s)| (p.clone(), *s))
            .collect()
    };
    for (path, stamp) in changed {
        load_file(inner, &path);
        lock(&inner.files).insert(path, stamp);
    }
    let removed: Vec<PathBuf> = lock(&inner.files)
        .keys()
        .filter(|p| !present.contains_key(*p))
        .cloned()
        .collect();
    for path in removed {
        lock(&inner.files).remove(&path);
        let name = plugin_name(&path);
        lock(&inner.rejected).remove(&file_label(&path));
        if *read(&inner.active) == name {
            tracing::warn!(strategy = %name, "the active strategy's file was removed; it stays loaded until another is activated");
            continue;
        }
        let builtin = BUILTINS.iter().find(|(n, _)| *n == name);
        let mut plugins = write(&inner.plugins);
        let from_file = plugins.get(&name).is_some_and(|p| p.origin != "builtin");
        if !from_file {
            continue;
        }
        match builtin {
            // A removed override of a built-in brings the built-in back.
            Some((_, bytes)) => match Plugin::load(
                &inner.runtime,
                &name,
                "builtin".into(),
                bytes,
                &inner.settings.config,
                inner.settings.limits(),
            ) {
                Ok(plugin) => {
                    plugins.insert(name.clone(), Arc::new(plugin));
                }
                Err(e) => tracing::error!(error = %e, "cannot reload a built-in strategy"),
            },
            None => {
                plugins.remove(&name);
            }
        }
        tracing::info!(strategy = %name, file = %path.display(), "plugin file removed; strategy unloaded");
    }
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn load_file(inner: &Inner, path: &Path) {
    let name = plugin_name(path);
    let label = file_label(path);
    let result = std::fs::read(path)
        .map_err(|source| StrategyError::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })
        .and_then(|bytes| {
            let current = read(&inner.plugins).get(&name).map(|p| p.sha256.clone());
            if current.as_deref() == Some(plugin::sha256_hex(&bytes).as_str()) {
                return Ok(None);
            }
            Plugin::load(
                &inner.runtime,
                &name,
                path.display().to_string(),
                &bytes,
                &inner.settings.config,
                inner.settings.limits(),
            )
            .map(Some)
        });
    match result {
        Ok(Some(plugin)) => {
            tracing::info!(strategy = %name, sha256 = %plugin.sha256, file = %path.display(), "plugin loaded");
            // The swap: claims that already hold the old Arc finish on it.
            write(&inner.plugins).insert(name, Arc::new(plugin));
            lock(&inner.rejected).remove(&label);
        }
        Ok(None) => {
            lock(&inner.rejected).remove(&label);
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "plugin refused; the loaded strategies keep working");
            lock(&inner.rejected).insert(label, e.to_string());
        }
    }
}

/// One plugin call on the blocking pool; the latency is the call's own, without queueing.
async fn call(
    plugin: Arc<Plugin>,
    claim: Arc<wit::Claim>,
) -> (Result<wit::Decision, CallFailure>, Duration) {
    let joined = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let outcome = plugin.schedule(&claim);
        (outcome, started.elapsed())
    })
    .await;
    joined.unwrap_or_else(|e| {
        (
            Err(CallFailure::Trap(format!(
                "the host task running the call failed: {e}"
            ))),
            Duration::ZERO,
        )
    })
}

#[async_trait::async_trait]
impl Scheduler for StrategyHost {
    fn name(&self) -> &str {
        "wasm"
    }

    async fn decide(&self, request: &ClaimRequest<'_>) -> Decision {
        as_decision(request, StrategyHost::decide(self, request).await)
    }

    fn pending_note(&self, run_id: &str) -> Option<PendingNote> {
        lock(&self.inner.notes).get(run_id).cloned()
    }
}

/// TEMP (the wasmrt branch owns this): checked ids back to indices into the window.
fn as_decision(request: &ClaimRequest<'_>, ids: Vec<String>) -> Decision {
    let index: HashMap<&str, usize> = request
        .pending
        .iter()
        .enumerate()
        .map(|(i, run)| (run.id.as_str(), i))
        .collect();
    Decision {
        chosen: ids
            .iter()
            .filter_map(|id| index.get(id.as_str()).copied())
            .collect(),
        reasons: Vec::new(),
    }
}

/// The embedded `priority` strategy with backfill (highest priority first, each run that fits
/// the requester's free capacity, skipping those that do not), on one process-wide host with
/// no plugins directory. For tests and embedders that want a scheduler without settings.
#[derive(Debug, Default, Clone, Copy)]
pub struct PriorityBackfill;

impl PriorityBackfill {
    fn host() -> Option<&'static StrategyHost> {
        static HOST: OnceLock<Option<StrategyHost>> = OnceLock::new();
        HOST.get_or_init(|| {
            let settings = StrategySettings {
                config: "backfill=true".into(),
                ..StrategySettings::builtin(FALLBACK)
            };
            StrategyHost::start(settings)
                .map_err(
                    |e| tracing::error!(error = %e, "cannot start the built-in priority strategy"),
                )
                .ok()
        })
        .as_ref()
    }
}

#[async_trait::async_trait]
impl Scheduler for PriorityBackfill {
    fn name(&self) -> &str {
        "priority"
    }

    async fn decide(&self, request: &ClaimRequest<'_>) -> Decision {
        match Self::host() {
            Some(host) => as_decision(request, StrategyHost::decide(host, request).await),
            None => Decision::default(),
        }
    }

    fn pending_note(&self, run_id: &str) -> Option<PendingNote> {
        Self::host().and_then(|h| h.pending_note(run_id))
    }
}
