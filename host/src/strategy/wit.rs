//! Host bindings of the WIT worlds this host speaks, and the per-version call glue: the only
//! module of the strategy host that touches wasmtime. Claims are built as 0.2.0 records
//! (columns); a 0.1.0 plugin gets them converted to its lists of records, and its answer
//! converted back.

use gyoza_wasm::{Compiled, Failure, HostState, Limits, Runtime, outcome};
use wasmtime::Store;

pub mod v0_1 {
    //! `gyoza:scheduler@0.1.0`: lists of records.
    wasmtime::component::bindgen!({
        path: "../wit/scheduler@0.1.0",
        world: "gyoza:scheduler/strategy",
    });
}

pub mod v0_2 {
    //! `gyoza:scheduler@0.2.0`: columns.
    wasmtime::component::bindgen!({
        path: "../wit/scheduler@0.2.0",
        world: "gyoza:scheduler/strategy",
    });
}

pub use v0_2::gyoza::scheduler::types::{Claim, Decision, Deferral, Gpus, PendingRuns, Workers};

use v0_1::gyoza::scheduler::types as old;

/// Why a compiled component cannot serve as a strategy.
pub(super) enum LinkError {
    /// It imports something the linker (WASI only) does not provide.
    Imports(String),
    /// It does not export the world of the version it claims.
    World(String),
}

/// A plugin's world, by the `gyoza:scheduler` version it exports.
pub(super) enum Pre {
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
pub(super) struct Session {
    store: Store<HostState>,
    bindings: Bindings,
}

impl Pre {
    /// Links `compiled` as the world of 0.1 (`records`) or 0.2.
    pub(super) fn new(
        runtime: &Runtime,
        compiled: &Compiled,
        records: bool,
    ) -> Result<Self, LinkError> {
        let pre = runtime
            .instantiate_pre(compiled)
            .map_err(|e| LinkError::Imports(format!("{e:#}")))?;
        let world = |e: wasmtime::Error| LinkError::World(format!("{e:#}"));
        Ok(if records {
            Self::V0_1(v0_1::StrategyPre::new(pre).map_err(world)?)
        } else {
            Self::V0_2(v0_2::StrategyPre::new(pre).map_err(world)?)
        })
    }

    /// Instantiates the plugin under `limits` and calls its `init` with `config`.
    pub(super) fn start(
        &self,
        runtime: &Runtime,
        limits: Limits,
        config: &str,
    ) -> Result<Session, Failure> {
        let mut store = runtime.store(limits);
        let classify = |e: wasmtime::Error| Failure::of(&e);
        let (bindings, init) = match self {
            Self::V0_1(pre) => {
                let bindings = pre.instantiate(&mut store).map_err(classify)?;
                let init = bindings
                    .gyoza_scheduler_scheduling()
                    .call_init(&mut store, config);
                (Bindings::V0_1(bindings), init)
            }
            Self::V0_2(pre) => {
                let bindings = pre.instantiate(&mut store).map_err(classify)?;
                let init = bindings
                    .gyoza_scheduler_scheduling()
                    .call_init(&mut store, config);
                (Bindings::V0_2(bindings), init)
            }
        };
        outcome(init)?;
        Ok(Session { store, bindings })
    }
}

impl Session {
    /// Asks the instance to decide `claim`, with a fresh deadline.
    pub(super) fn schedule(&mut self, limits: Limits, claim: &Claim) -> Result<Decision, Failure> {
        limits.arm(&mut self.store);
        let answer = match &self.bindings {
            Bindings::V0_2(bindings) => bindings
                .gyoza_scheduler_scheduling()
                .call_schedule(&mut self.store, claim),
            Bindings::V0_1(bindings) => bindings
                .gyoza_scheduler_scheduling()
                .call_schedule(&mut self.store, &to_v0_1(claim))
                .map(|answer| answer.map(from_v0_1)),
        };
        outcome(answer)
    }
}

/// `claim` as a `gyoza:scheduler@0.1.0` plugin takes it: lists of records.
fn to_v0_1(claim: &Claim) -> old::Claim {
    let (w, g, p) = (&claim.workers, &claim.gpus, &claim.pending);
    old::Claim {
        requester: claim.requester,
        max: claim.max,
        workers: (0..w.free_cpu.len())
            .map(|i| old::Worker {
                cpu_cores: w.cpu_cores[i],
                ram_mb: w.ram_mb[i],
                free_cpu: w.free_cpu[i],
                free_ram_mb: w.free_ram_mb[i],
                gpu_start: w.gpu_start[i],
                gpu_count: w.gpu_count[i],
                running: w.running[i],
            })
            .collect(),
        gpus: (0..g.id.len())
            .map(|i| old::Gpu {
                id: g.id[i],
                vram_mb: g.vram_mb[i],
                free_vram_mb: g.free_vram_mb[i],
            })
            .collect(),
        pending: (0..p.cpu.len())
            .map(|i| old::PendingRun {
                priority: p.priority[i],
                cpu: p.cpu[i],
                ram_mb: p.ram_mb[i],
                vram_mb: p.vram_mb[i],
                waited_ms: p.waited_ms[i],
            })
            .collect(),
    }
}

/// A `gyoza:scheduler@0.1.0` plugin's answer, as the host's (0.2.0) type: the same fields.
fn from_v0_1(decision: old::Decision) -> Decision {
    Decision {
        assign: decision.assign,
        deferred: decision
            .deferred
            .into_iter()
            .map(|d| Deferral {
                run: d.run,
                reason: d.reason,
            })
            .collect(),
    }
}
