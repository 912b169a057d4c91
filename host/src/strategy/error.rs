//! The strategy host's errors: [`StrategyError`] when a plugin cannot be loaded or selected,
//! [`CallFailure`] when a call produced no decision. Both are shown to operators (logs,
//! `GET /strategies`, `gyoza plugins check`), so their text names the plugin and the limit.

use super::versions::{WIT_PACKAGE, WIT_VERSIONS};

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
    #[error("{context}: {cause}")]
    Io {
        /// What was being read.
        context: String,
        /// The OS error (in the message, so not also a `source`: a chain would say it twice).
        cause: std::io::Error,
    },
}

impl From<gyoza_wasm::WasmError> for StrategyError {
    fn from(error: gyoza_wasm::WasmError) -> Self {
        Self::Engine(error.to_string())
    }
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
