//! One loaded plugin: its compiled component, validated against the world, and the instance
//! that serves its calls under a deadline and a memory limit.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;

use super::engine::{HostState, Runtime, TICK};
use super::wit::{Claim, Decision, v0_1, v0_2};
use super::{StrategyError, WIT_PACKAGE, WIT_VERSIONS, convert};

/// Limits every call of a plugin runs under.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Longest a call (instantiation and `init` included) may run.
    pub deadline: Duration,
    /// Largest linear memory, in bytes.
    pub memory_bytes: usize,
}

/// Why a call did not produce a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The call ran past its deadline and was interrupted.
    #[error("ran past its {0} ms deadline")]
    Timeout(u128),
    /// The guest tried to grow its memory beyond the limit.
    #[error("exceeded its {0} MiB memory limit")]
    OutOfMemory(usize),
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest's `init` refused its configuration.
    #[error("refused its configuration: {0}")]
    InitRefused(String),
    /// The guest's `schedule` returned an error.
    #[error("returned an error: {0}")]
    Refused(String),
}

/// A plugin's world, by the `gyoza:scheduler` version it exports.
enum Pre {
    /// 0.1.x: lists of records.
    V0_1(v0_1::StrategyPre<HostState>),
    /// 0.2.x: columns.
    V0_2(v0_2::StrategyPre<HostState>),
}

/// An instance's exports, as [`Pre`].
enum Bindings {
    V0_1(v0_1::Strategy),
    V0_2(v0_2::Strategy),
}

/// A live instance; reused across calls so that a guest may keep state.
struct Session {
    store: Store<HostState>,
    bindings: Bindings,
}

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
    runtime: Arc<Runtime>,
    pre: Pre,
    config: String,
    limits: Limits,
    session: Mutex<Option<Session>>,
}

/// Hex sha256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// (major, minor) of a version string.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut it = version.split(['.', '-', '+']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The version in [`WIT_VERSIONS`] that a plugin's `gyoza:scheduler` version is compatible
/// with, as semver goes (same major version; for 0.x, same minor), if any.
fn compatible(version: &str) -> Option<&'static str> {
    let theirs = major_minor(version)?;
    WIT_VERSIONS
        .into_iter()
        .find(|ours| match (theirs, major_minor(ours)) {
            ((0, minor), Some((0, our_minor))) => minor == our_minor,
            ((major, _), Some((our_major, _))) => major == our_major,
            _ => false,
        })
}

impl Plugin {
    /// Compiles and validates `bytes`, instantiates it and calls its `init` once, so that a
    /// plugin that cannot serve is refused before it is ever made active.
    pub(super) fn load(
        runtime: &Arc<Runtime>,
        name: &str,
        origin: String,
        bytes: &[u8],
        config: &str,
        limits: Limits,
    ) -> Result<Self, StrategyError> {
        let invalid = |reason: String| StrategyError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let sha256 = sha256_hex(bytes);
        let component = runtime.compile(bytes, &sha256).map_err(|e| {
            invalid(format!(
                "is not a valid WebAssembly component: {}",
                first_line(&e)
            ))
        })?;
        let wit_version = world_version(runtime, &component, name)?;
        let instance_pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "imports something the host does not provide: {e:#}"
            ))
        })?;
        let wrong_world = |e: wasmtime::Error| {
            invalid(format!(
                "does not implement world {WIT_PACKAGE}/strategy@{wit_version}: {e:#}"
            ))
        };
        let pre = if compatible(&wit_version) == Some("0.1.0") {
            Pre::V0_1(v0_1::StrategyPre::new(instance_pre).map_err(wrong_world)?)
        } else {
            Pre::V0_2(v0_2::StrategyPre::new(instance_pre).map_err(wrong_world)?)
        };
        let plugin = Self {
            name: name.to_owned(),
            sha256,
            wit_version,
            origin,
            runtime: runtime.clone(),
            pre,
            config: config.to_owned(),
            limits,
            session: Mutex::new(None),
        };
        let session = plugin
            .instantiate()
            .map_err(|failure| StrategyError::InitFailed {
                name: name.to_owned(),
                failure,
            })?;
        *plugin.lock() = Some(session);
        Ok(plugin)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Session>> {
        // A panic while holding the lock can only have dropped a session mid-call; the next
        // call makes a fresh instance, so the poisoned guard is safe to reuse.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline.as_millis() / TICK.as_millis()).max(1) as u64
    }

    fn failure(&self, error: wasmtime::Error) -> CallFailure {
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            if *trap == wasmtime::Trap::Interrupt {
                return CallFailure::Timeout(self.limits.deadline.as_millis());
            }
        }
        // StoreLimits (with trap_on_grow_failure) reports a refused growth with this message.
        if error.chain().any(|cause| {
            cause
                .to_string()
                .starts_with("forcing trap when growing memory")
        }) {
            return CallFailure::OutOfMemory(self.limits.memory_bytes >> 20);
        }
        CallFailure::Trap(first_line(&format!("{error:#}")))
    }

    fn instantiate(&self) -> Result<Session, CallFailure> {
        let mut store = self.runtime.store(self.limits.memory_bytes);
        store.set_epoch_deadline(self.deadline_ticks());
        let (bindings, init) = match &self.pre {
            Pre::V0_1(pre) => {
                let bindings = pre.instantiate(&mut store).map_err(|e| self.failure(e))?;
                let init = bindings
                    .gyoza_scheduler_scheduling()
                    .call_init(&mut store, &self.config);
                (Bindings::V0_1(bindings), init)
            }
            Pre::V0_2(pre) => {
                let bindings = pre.instantiate(&mut store).map_err(|e| self.failure(e))?;
                let init = bindings
                    .gyoza_scheduler_scheduling()
                    .call_init(&mut store, &self.config);
                (Bindings::V0_2(bindings), init)
            }
        };
        init.map_err(|e| self.failure(e))?
            .map_err(CallFailure::InitRefused)?;
        Ok(Session { store, bindings })
    }

    /// Asks the plugin to decide `claim`. Calls are serialised on the plugin's instance; a
    /// trap or timeout discards the instance and the next call starts a fresh one.
    pub(super) fn schedule(&self, claim: &Claim) -> Result<Decision, CallFailure> {
        let mut slot = self.lock();
        let mut session = match slot.take() {
            Some(session) => session,
            None => self.instantiate()?,
        };
        session.store.set_epoch_deadline(self.deadline_ticks());
        let result = match &session.bindings {
            Bindings::V0_2(bindings) => bindings
                .gyoza_scheduler_scheduling()
                .call_schedule(&mut session.store, claim),
            Bindings::V0_1(bindings) => bindings
                .gyoza_scheduler_scheduling()
                .call_schedule(&mut session.store, &convert::to_v0_1(claim))
                .map(|answer| answer.map(convert::from_v0_1)),
        };
        match result {
            Ok(answer) => {
                *slot = Some(session);
                answer.map_err(CallFailure::Refused)
            }
            Err(e) => Err(self.failure(e)),
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// The version of `gyoza:scheduler` the component exports, refusing versions this host does
/// not speak and components that do not export the interface at all.
fn world_version(
    runtime: &Runtime,
    component: &wasmtime::component::Component,
    name: &str,
) -> Result<String, StrategyError> {
    let ty = component.component_type();
    let mut exports = Vec::new();
    for (export, item) in ty.exports(&runtime.engine) {
        exports.push(export.to_owned());
        let Some(rest) = export.strip_prefix(&format!("{WIT_PACKAGE}/")) else {
            continue;
        };
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        if compatible(version).is_none() {
            return Err(StrategyError::UnsupportedVersion {
                name: name.to_owned(),
                found: format!("{WIT_PACKAGE}@{version}"),
            });
        }
        return Ok(version.to_owned());
    }
    Err(StrategyError::Invalid {
        name: name.to_owned(),
        reason: format!(
            "does not export {WIT_PACKAGE}/scheduling (build it with gyoza-plugin-sdk for world \
             {WIT_PACKAGE}/strategy); it exports: [{}]",
            exports.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compatible_by_semver() {
        assert_eq!(compatible("0.1.0"), Some("0.1.0"));
        assert_eq!(compatible("0.1.7"), Some("0.1.0"));
        assert_eq!(compatible("0.2.0"), Some("0.2.0"));
        assert_eq!(compatible("0.2.3-rc1"), Some("0.2.0"));
        assert_eq!(compatible("0.3.0"), None);
        assert_eq!(compatible("1.0.0"), None);
        assert_eq!(compatible(""), None);
    }
}
