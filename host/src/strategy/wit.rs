//! Host bindings of the WIT worlds this host speaks, and the per-version call glue: the only
//! module of the strategy host that touches wasmtime. Claims are built as 1.0.0 records; a
//! 0.2.0 plugin gets the columns it knows (a copy without the new ones), a 0.1.0 plugin those
//! as lists of records, and their answers are converted back (no waits codes, no evictions).

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

pub mod v1_0 {
    //! `gyoza:scheduler@1.0.0`: columns, strings, running runs, queues, evictions.
    wasmtime::component::bindgen!({
        path: "../wit/scheduler@1.0.0",
        world: "gyoza:scheduler/strategy",
    });
}

pub use v1_0::gyoza::scheduler::types::{
    Claim, Decision, Deferral, Gpus, Labels, PendingRuns, Queues, RunningRuns, WaitCode, Workers,
};

use v0_1::gyoza::scheduler::types as old;
use v0_2::gyoza::scheduler::types as v2;

/// Why a compiled component cannot serve as a strategy.
pub(super) enum LinkError {
    /// It imports something the linker (WASI only) does not provide.
    Imports(String),
    /// It does not export the world of the version it claims.
    World(String),
}

/// The `gyoza:scheduler` versions this host links, by their world's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum World {
    /// 0.1.x: lists of records.
    V0_1,
    /// 0.2.x: columns.
    V0_2,
    /// 1.x: columns, strings, running runs, queues, evictions.
    V1,
}

/// A plugin's world, by the `gyoza:scheduler` version it exports.
pub(super) enum Pre {
    V0_1(v0_1::StrategyPre<HostState>),
    V0_2(v0_2::StrategyPre<HostState>),
    V1(v1_0::StrategyPre<HostState>),
}

/// An instance's exports, as [`Pre`].
enum Bindings {
    V0_1(v0_1::Strategy),
    V0_2(v0_2::Strategy),
    V1(v1_0::Strategy),
}

/// A live instance; reused across calls so that a guest may keep state.
pub(super) struct Session {
    store: Store<HostState>,
    bindings: Bindings,
}

impl Pre {
    /// Links `compiled` as `world`.
    pub(super) fn new(
        runtime: &Runtime,
        compiled: &Compiled,
        world: World,
    ) -> Result<Self, LinkError> {
        let pre = runtime
            .instantiate_pre(compiled)
            .map_err(|e| LinkError::Imports(format!("{e:#}")))?;
        let wrong = |e: wasmtime::Error| LinkError::World(format!("{e:#}"));
        Ok(match world {
            World::V0_1 => Self::V0_1(v0_1::StrategyPre::new(pre).map_err(wrong)?),
            World::V0_2 => Self::V0_2(v0_2::StrategyPre::new(pre).map_err(wrong)?),
            World::V1 => Self::V1(v1_0::StrategyPre::new(pre).map_err(wrong)?),
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
            Self::V1(pre) => {
                let bindings = pre.instantiate(&mut store).map_err(classify)?;
                let init = bindings
                    .gyoza_scheduler_scheduling()
                    .call_init(&mut store, config);
                (Bindings::V1(bindings), init)
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
            Bindings::V1(bindings) => bindings
                .gyoza_scheduler_scheduling()
                .call_schedule(&mut self.store, claim),
            Bindings::V0_2(bindings) => bindings
                .gyoza_scheduler_scheduling()
                .call_schedule(&mut self.store, &to_v0_2(claim))
                .map(|answer| answer.map(from_v0_2)),
            Bindings::V0_1(bindings) => bindings
                .gyoza_scheduler_scheduling()
                .call_schedule(&mut self.store, &to_v0_1(&to_v0_2(claim)))
                .map(|answer| answer.map(from_v0_1)),
        };
        outcome(answer)
    }
}

/// `claim` as a `gyoza:scheduler@0.2.0` plugin takes it: the columns 0.2.0 has.
fn to_v0_2(claim: &Claim) -> v2::Claim {
    let (w, g, p) = (&claim.workers, &claim.gpus, &claim.pending);
    v2::Claim {
        requester: claim.requester,
        max: claim.max,
        workers: v2::Workers {
            cpu_cores: w.cpu_cores.clone(),
            ram_mb: w.ram_mb.clone(),
            free_cpu: w.free_cpu.clone(),
            free_ram_mb: w.free_ram_mb.clone(),
            gpu_start: w.gpu_start.clone(),
            gpu_count: w.gpu_count.clone(),
            running: w.running.clone(),
        },
        gpus: v2::Gpus {
            id: g.id.clone(),
            vram_mb: g.vram_mb.clone(),
            free_vram_mb: g.free_vram_mb.clone(),
        },
        pending: v2::PendingRuns {
            priority: p.priority.clone(),
            cpu: p.cpu.clone(),
            ram_mb: p.ram_mb.clone(),
            vram_mb: p.vram_mb.clone(),
            waited_ms: p.waited_ms.clone(),
        },
    }
}

/// A `gyoza:scheduler@0.2.0` plugin's answer, as the host's (1.0.0) type: its reasons with
/// the code `other`, and no evictions.
fn from_v0_2(decision: v2::Decision) -> Decision {
    Decision {
        assign: decision.assign,
        deferred: decision
            .deferred
            .into_iter()
            .map(|d| Deferral {
                run: d.run,
                code: WaitCode::Other,
                reason: d.reason,
            })
            .collect(),
        evict: Vec::new(),
    }
}

/// `claim` as a `gyoza:scheduler@0.1.0` plugin takes it: lists of records.
fn to_v0_1(claim: &v2::Claim) -> old::Claim {
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

/// A `gyoza:scheduler@0.1.0` plugin's answer, as the host's (1.0.0) type, as for 0.2.0.
fn from_v0_1(decision: old::Decision) -> Decision {
    from_v0_2(v2::Decision {
        assign: decision.assign,
        deferred: decision
            .deferred
            .into_iter()
            .map(|d| v2::Deferral {
                run: d.run,
                reason: d.reason,
            })
            .collect(),
    })
}
