//! Scheduling strategies as WebAssembly components (`gyoza:scheduler@1.0.0`, and the older
//! `@0.2.0` and `@0.1.0`; world `strategy`).
//!
//! One [`StrategyHost`] per server holds the loaded plugins (the built-in `direct`, `priority`
//! and `bin-packing`, embedded in the binary, and every `.wasm` of the plugins directory) and
//! which of them is active, on one [`gyoza_wasm::Runtime`]. It is the server's
//! [`Scheduler`](crate::scheduler::Scheduler): each claim is converted once to the WIT's
//! compact records (1.0.0 columns and string table; an older plugin gets the fields its
//! version has) and decided by the active plugin under a deadline and a memory limit; its
//! answer goes back to the claim as the raw choice (indices into the pending window, in
//! order, and the preemptions it asked for), which the claim alone checks
//! ([`gyoza_core::placement::place`], [`gyoza_core::placement::check_evictions`]) and reports
//! the drops and refusals of. A trap,
//! timeout or error answer is counted and handled by the [`FailPolicy`]: the embedded priority
//! strategy decides instead, or nothing is assigned.
//!
//! The plugins directory is polled about once a second: a new or changed file is compiled,
//! validated (world, WIT version, `init`) and swapped in atomically; a bad file is logged,
//! listed as rejected, and ignored. A claim holds an `Arc` of the plugin it started with, so
//! in-flight claims finish on the old instance. Reasons a strategy gives for runs it leaves
//! pending are kept in memory and shown on `GET /runs`.
//!
//! # Layout
//! - `host`: [`StrategyHost`], its `Scheduler` implementation and the fail-over.
//! - `settings`: [`StrategySettings`], and the wasm runtime they make.
//! - `policy`: [`FailPolicy`] and how the command line reads it.
//! - `builtin`: the embedded strategies, by name ([`builtin()`], [`FALLBACK`]).
//! - `backfill`: [`PriorityBackfill`], a host of the built-ins only, for tests and embedders.
//! - `registry`: the loaded plugins, the active one, the refused files.
//! - `reload`: the hot reload of the plugins directory (the watcher).
//! - `plugin`: one compiled, validated plugin and its reusable instance.
//! - `wit`: the WIT bindings (the only wasmtime user here) and the per-version call glue.
//! - `convert`: a claim to WIT records, and a plugin's answer to the raw decision.
//! - `stats`: calls, failures, drops and latency percentiles per strategy.
//! - `notes`: the latest reason per pending run.
//! - `versions`: the WIT versions this host speaks.
//! - `error`: [`StrategyError`] and [`CallFailure`].
//! - [`scenario`]: JSON scenarios for `gyoza plugins simulate`, and `gyoza plugins check`.

mod backfill;
mod builtin;
mod convert;
mod error;
mod host;
mod notes;
mod plugin;
mod policy;
mod registry;
mod reload;
pub mod scenario;
mod settings;
mod stats;
mod versions;
mod wit;

pub use backfill::PriorityBackfill;
pub use builtin::{BUILTINS, Builtin, FALLBACK, builtin};
pub use error::{CallFailure, StrategyError};
pub use host::StrategyHost;
pub use policy::{FailPolicy, fail_policy_parser};
pub use reload::RELOAD_INTERVAL;
pub use scenario::check_file;
pub use settings::StrategySettings;
pub use versions::{WIT_PACKAGE, WIT_VERSION, WIT_VERSIONS};

pub mod records {
    //! The `gyoza:scheduler@1.0.0` records a claim is handed to plugins as, and the host's
    //! one way of building them: for the strategy benchmark, which runs the same plan natively
    //! on the same records.
    pub use super::wit::{
        Claim, Decision, Deferral, Gpus, Labels, PendingRuns, Queues, RunningRuns, WaitCode,
        Workers,
    };

    /// The records of `request`, as every claim builds them.
    pub fn claim(request: &crate::scheduler::ClaimRequest<'_>) -> Claim {
        super::convert::claim(request)
    }
}
