//! [`StrategyHost`]: the loaded strategies, the active one, and the [`Scheduler`] that asks it
//! to decide each claim, with the fail policy when it cannot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gyoza_core::api::StrategyList;
use gyoza_core::placement::Placements;
use gyoza_core::sync::lock;

use super::builtin::{BUILTINS, FALLBACK, FALLBACK_BUILTIN};
use super::convert;
use super::error::{CallFailure, StrategyError};
use super::notes::Notes;
use super::plugin::{self, Plugin};
use super::policy::FailPolicy;
use super::registry::Registry;
use super::reload::Reload;
use super::settings::{StrategySettings, runtime};
use super::stats::StatsBook;
use super::wit::Claim;
use crate::scheduler::{ClaimRequest, Decision, PendingNote, Scheduler};

/// The name under which the fallback's reasons are shown.
const FALLBACK_NOTE: &str = "priority (fallback)";

struct Inner {
    fail_policy: FailPolicy,
    /// The configuration string every plugin's `init` gets.
    config: String,
    registry: Arc<Registry>,
    /// Its own instance of the embedded priority strategy: a plugin file named priority.wasm
    /// may replace the listed one, never the fallback.
    fallback: Arc<Plugin>,
    stats: StatsBook,
    notes: Notes,
    /// The plugins directory's watcher; it stops when this host is dropped.
    reload: Option<Arc<Reload>>,
    /// The plugin whose decision the latest claim acted on (none: the fallback's, or none),
    /// to which the claim's check reports what it dropped.
    last_decider: Mutex<Option<String>>,
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
        let runtime = runtime(settings.cache_dir.clone())?;
        let limits = settings.limits();
        let load = |name: &str, origin: &str, compiled: &gyoza_wasm::Compiled| {
            Plugin::load(
                &runtime,
                name,
                origin.into(),
                compiled,
                &settings.config,
                limits,
            )
        };
        // The fallback and the listed priority strategy share one compiled component.
        let fallback_wasm = plugin::compile(&runtime, FALLBACK, FALLBACK_BUILTIN.wasm)?;
        let fallback = Arc::new(load(FALLBACK, "builtin (fallback)", &fallback_wasm)?);
        let mut builtins = Vec::new();
        for builtin in BUILTINS {
            let compiled = if builtin.name == FALLBACK {
                fallback_wasm.clone()
            } else {
                plugin::compile(&runtime, builtin.name, builtin.wasm)?
            };
            builtins.push(load(builtin.name, "builtin", &compiled)?);
        }
        let registry = Arc::new(Registry::new(builtins, &settings.active));
        let reload = settings.plugins_dir.clone().map(|dir| {
            Reload::new(
                dir,
                runtime.clone(),
                settings.config.clone(),
                limits,
                registry.clone(),
            )
        });
        let host = Self {
            inner: Arc::new(Inner {
                fail_policy: settings.fail_policy,
                config: settings.config.clone(),
                registry,
                fallback,
                stats: StatsBook::default(),
                notes: Notes::default(),
                reload,
                last_decider: Mutex::new(None),
            }),
        };
        host.rescan();
        host.inner.registry.check_active()?;
        if let Some(reload) = &host.inner.reload {
            reload.watch()?;
        }
        tracing::info!(active = %host.active_name(), strategies = ?host.names(), "scheduling strategies loaded");
        Ok(host)
    }

    /// The names of the loaded strategies.
    pub fn names(&self) -> Vec<String> {
        self.inner.registry.names()
    }

    /// The configuration string every plugin's `init` gets (`GYOZA_STRATEGY_CONFIG`).
    pub fn config(&self) -> &str {
        &self.inner.config
    }

    /// The active strategy's name.
    pub fn active_name(&self) -> String {
        self.inner.registry.active_name()
    }

    /// Makes `name` the active strategy.
    pub fn activate(&self, name: &str) -> Result<(), StrategyError> {
        self.inner.registry.activate(name)?;
        tracing::info!(strategy = name, "active scheduling strategy changed");
        Ok(())
    }

    /// Every loaded strategy with its counters, and the rejected files.
    pub fn list(&self) -> StrategyList {
        let registry = &self.inner.registry;
        StrategyList {
            strategies: registry.infos(&self.inner.stats.snapshot()),
            active: registry.active_name(),
            fail_policy: self.inner.fail_policy,
            rejected: registry.rejected(),
        }
    }

    /// Looks at the plugins directory once: loads new and changed files, unloads removed
    /// ones (never the active strategy). The watcher calls this about once a second.
    pub fn rescan(&self) {
        if let Some(reload) = &self.inner.reload {
            reload.rescan();
        }
    }

    /// Why `run_id` was last left pending, if a strategy said.
    pub fn pending_note(&self, run_id: &str) -> Option<PendingNote> {
        self.inner.notes.get(run_id)
    }

    /// [`Scheduler::decide`] on the current thread, without the fail policy and the
    /// bookkeeping: for callers outside an async runtime that measure or try a strategy (the
    /// benchmark). Must not run on an async thread (WASI's synchronous bindings would refuse).
    pub fn decide_blocking(&self, request: &ClaimRequest<'_>) -> Result<Decision, CallFailure> {
        let plugin = self
            .inner
            .registry
            .active()
            .ok_or_else(|| CallFailure::Refused("active strategy is not loaded".into()))?;
        let answer = plugin.schedule(&convert::claim(request))?;
        Ok(convert::decision(request.pending.len(), &answer))
    }

    /// Decides a claim with the active strategy, or the fail policy when it fails. The wasm
    /// call runs on tokio's blocking pool: it may take up to the deadline, and WASI's
    /// synchronous bindings must not run on an async thread.
    async fn decide_claim(&self, request: &ClaimRequest<'_>) -> Decision {
        let claim = Arc::new(convert::claim(request));
        let Some(plugin) = self.inner.registry.active() else {
            // Only reachable if the active plugin's file vanished and was unloaded.
            tracing::error!(strategy = %self.active_name(), "active strategy is not loaded");
            return self.fail_over(request, claim).await;
        };
        let (outcome, elapsed) = call(plugin.clone(), claim.clone()).await;
        let failure = outcome.as_ref().err().map(ToString::to_string);
        self.inner
            .stats
            .record_call(&plugin.name, elapsed, failure.clone());
        match outcome {
            Ok(answer) => {
                let mut decision = convert::decision(request.pending.len(), &answer);
                self.inner.notes.record(&plugin.name, request, &decision);
                *lock(&self.inner.last_decider) = Some(plugin.name.clone());
                decision.strategy = Some(plugin.name.clone());
                decision
            }
            Err(failure) => {
                tracing::warn!(
                    strategy = %plugin.name,
                    %failure,
                    policy = ?self.inner.fail_policy,
                    "strategy call failed"
                );
                self.fail_over(request, claim).await
            }
        }
    }

    async fn fail_over(&self, request: &ClaimRequest<'_>, claim: Arc<Claim>) -> Decision {
        *lock(&self.inner.last_decider) = None;
        if self.inner.fail_policy == FailPolicy::None {
            return Decision::default();
        }
        match call(self.inner.fallback.clone(), claim).await.0 {
            Ok(answer) => {
                let mut decision = convert::decision(request.pending.len(), &answer);
                self.inner.notes.record(FALLBACK_NOTE, request, &decision);
                decision.strategy = Some(FALLBACK_NOTE.to_owned());
                decision
            }
            Err(failure) => {
                tracing::error!(%failure, "the fallback priority strategy failed too; assigning nothing");
                Decision::default()
            }
        }
    }
}

/// One plugin call on the blocking pool; the latency is the call's own, without queueing.
async fn call(
    plugin: Arc<Plugin>,
    claim: Arc<Claim>,
) -> (Result<super::wit::Decision, CallFailure>, Duration) {
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
        self.decide_claim(request).await
    }

    fn pending_note(&self, run_id: &str) -> Option<PendingNote> {
        StrategyHost::pending_note(self, run_id)
    }

    /// Counts the drops against the plugin named `strategy` if it is loaded, else against
    /// the plugin whose decision the latest claim acted on (a claim names this scheduler,
    /// `wasm`); nothing when the fallback decided, as its calls are not counted either.
    fn record_dropped(&self, strategy: &str, placements: &Placements) {
        if placements.dropped() == 0 {
            return;
        }
        let decider = if self.inner.registry.contains(strategy) {
            Some(strategy.to_owned())
        } else {
            lock(&self.inner.last_decider).clone()
        };
        let Some(decider) = decider else { return };
        tracing::warn!(
            strategy = %decider,
            unknown = placements.unknown,
            duplicate = placements.duplicate,
            over_capacity = placements.over_capacity,
            "strategy answer corrected: entries dropped"
        );
        self.inner
            .stats
            .record_dropped(&decider, placements.dropped());
    }

    /// Counts against the plugin named `strategy` (the decision names its decider); the
    /// fallback's are not counted, as its calls are not.
    fn record_evictions(&self, strategy: &str, carried_out: usize, refused: usize) {
        if (carried_out, refused) == (0, 0) || !self.inner.registry.contains(strategy) {
            return;
        }
        self.inner
            .stats
            .record_evictions(strategy, carried_out, refused);
    }

    fn note_pending(&self, run_id: &str, reason: String, at: gyoza_core::time::Timestamp) {
        self.inner.notes.note(run_id, "server", reason, at);
    }
}
