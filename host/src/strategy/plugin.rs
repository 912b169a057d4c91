//! One loaded plugin: its compiled component, validated against the world, and the instance
//! that serves its calls under the host's [`Limits`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use gyoza_core::api::StrategyInfo;
use gyoza_core::sync::lock;
use gyoza_wasm::{Compiled, Failure, Limits, Runtime};

use super::error::{CallFailure, StrategyError};
use super::stats::Stats;
use super::versions::{WIT_PACKAGE, compatible};
use super::wit::{Claim, Decision, LinkError, Pre, Session, World};

/// A compiled, validated plugin.
pub(super) struct Plugin {
    /// Name (the file stem, or the built-in's name).
    pub name: String,
    /// Hex sha256 of the wasm file.
    pub sha256: String,
    /// The `gyoza:scheduler` version it was built against.
    pub wit_version: String,
    /// Where it came from.
    pub origin: String,
    /// What it imports (WASI interfaces; the host links nothing else).
    pub imports: Vec<String>,
    runtime: Arc<Runtime>,
    pre: Pre,
    config: String,
    limits: Limits,
    session: Mutex<Option<Session>>,
}

/// The strategy name of a plugin file: its stem.
pub(super) fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Compiles `bytes` for plugin `name`, refusing what is not a component.
pub(super) fn compile(
    runtime: &Runtime,
    name: &str,
    bytes: &[u8],
) -> Result<Compiled, StrategyError> {
    runtime.compile(bytes).map_err(|e| StrategyError::Invalid {
        name: name.to_owned(),
        reason: format!(
            "is not a valid WebAssembly component: {}",
            first_line(&e.to_string())
        ),
    })
}

impl Plugin {
    /// Compiles and loads `bytes`; see [`Plugin::load`].
    pub(super) fn load_bytes(
        runtime: &Arc<Runtime>,
        name: &str,
        origin: String,
        bytes: &[u8],
        config: &str,
        limits: Limits,
    ) -> Result<Self, StrategyError> {
        let compiled = compile(runtime, name, bytes)?;
        Self::load(runtime, name, origin, &compiled, config, limits)
    }

    /// Validates `compiled`, instantiates it and calls its `init` once, so that a plugin that
    /// cannot serve is refused before it is ever made active.
    pub(super) fn load(
        runtime: &Arc<Runtime>,
        name: &str,
        origin: String,
        compiled: &Compiled,
        config: &str,
        limits: Limits,
    ) -> Result<Self, StrategyError> {
        let invalid = |reason: String| StrategyError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let wit_version = world_version(runtime, compiled, name)?;
        let world = match compatible(&wit_version) {
            Some("0.1.0") => World::V0_1,
            Some("0.2.0") => World::V0_2,
            _ => World::V1,
        };
        let pre = Pre::new(runtime, compiled, world).map_err(|e| match e {
            LinkError::Imports(e) => {
                invalid(format!("imports something the host does not provide: {e}"))
            }
            LinkError::World(e) => invalid(format!(
                "does not implement world {WIT_PACKAGE}/strategy@{wit_version}: {e}"
            )),
        })?;
        let plugin = Self {
            name: name.to_owned(),
            sha256: compiled.sha256.clone(),
            wit_version,
            origin,
            imports: runtime.imports(compiled),
            runtime: runtime.clone(),
            pre,
            config: config.to_owned(),
            limits,
            session: Mutex::new(None),
        };
        let session = plugin
            .start()
            .map_err(|failure| StrategyError::InitFailed {
                name: name.to_owned(),
                failure,
            })?;
        *lock(&plugin.session) = Some(session);
        Ok(plugin)
    }

    /// The plugin as `GET /strategies` shows it, with `stats`.
    pub(super) fn info(&self, active: bool, stats: &Stats) -> StrategyInfo {
        StrategyInfo {
            name: self.name.clone(),
            wit_version: self.wit_version.clone(),
            sha256: self.sha256.clone(),
            origin: self.origin.clone(),
            active,
            calls: stats.calls,
            failures: stats.failures,
            dropped: stats.dropped,
            evictions: stats.evictions,
            evictions_refused: stats.evictions_refused,
            latency_p50_ms: stats.latency_ms(0.5),
            latency_p99_ms: stats.latency_ms(0.99),
            last_failure: stats.last_failure.clone(),
        }
    }

    fn start(&self) -> Result<Session, CallFailure> {
        self.pre
            .start(&self.runtime, self.limits, &self.config)
            .map_err(|failure| self.failure(failure, CallFailure::InitRefused))
    }

    /// Asks the plugin to decide `claim`. Calls are serialised on the plugin's instance; a
    /// trap or timeout discards the instance and the next call starts a fresh one.
    pub(super) fn schedule(&self, claim: &Claim) -> Result<Decision, CallFailure> {
        // A panic while holding the lock can only have dropped a session mid-call; the next
        // call makes a fresh instance, so the poisoned guard is safe to reuse.
        let mut slot = lock(&self.session);
        let mut session = match slot.take() {
            Some(session) => session,
            None => self.start()?,
        };
        let answer = session.schedule(self.limits, claim);
        // An error the guest returned leaves its instance sound; a trap does not.
        if matches!(answer, Ok(_) | Err(Failure::Guest(_))) {
            *slot = Some(session);
        }
        answer.map_err(|failure| self.failure(failure, CallFailure::Refused))
    }

    /// `failure` in the words of this host: which limit was hit; `refused` for the guest's
    /// own error.
    fn failure(&self, failure: Failure, refused: fn(String) -> CallFailure) -> CallFailure {
        match failure {
            Failure::Timeout => CallFailure::Timeout(self.limits.deadline.as_millis()),
            Failure::Memory => CallFailure::OutOfMemory(self.limits.memory >> 20),
            Failure::Trap(text) => CallFailure::Trap(first_line(&text)),
            Failure::Guest(message) => refused(message),
        }
    }
}

/// The first line of `text`, at most 300 characters.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// The version of `gyoza:scheduler` the component exports, refusing versions this host does
/// not speak and components that do not export the interface at all.
fn world_version(
    runtime: &Runtime,
    compiled: &Compiled,
    name: &str,
) -> Result<String, StrategyError> {
    let exports = runtime.exports(compiled);
    let prefix = format!("{WIT_PACKAGE}/");
    let ours = exports
        .iter()
        .find(|export| export.interface && export.name.starts_with(&prefix));
    let Some(export) = ours else {
        let names: Vec<&str> = exports.iter().map(|e| e.name.as_str()).collect();
        return Err(StrategyError::Invalid {
            name: name.to_owned(),
            reason: format!(
                "does not export {WIT_PACKAGE}/scheduling (build it with gyoza-plugin-sdk for world \
                 {WIT_PACKAGE}/strategy); it exports: [{}]",
                names.join(", ")
            ),
        });
    };
    let version = export.name.split_once('@').map_or("", |(_, v)| v);
    if compatible(version).is_none() {
        return Err(StrategyError::UnsupportedVersion {
            name: name.to_owned(),
            found: format!("{WIT_PACKAGE}@{version}"),
        });
    }
    Ok(version.to_owned())
}
