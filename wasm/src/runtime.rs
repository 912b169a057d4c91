//! [`Runtime`]: the engine (component model, epoch interruption), the linker with WASI, the
//! epoch ticker, compiling guests and building stores from [`Limits`].

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, Store};

use crate::cache::{self, sha256_hex};
use crate::error::WasmError;
use crate::limits::{Limiter, Limits, TICK};
use crate::state::HostState;

/// How a [`Runtime`] is set up.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Where precompiled guests are kept (none: compile every time). Must be writable only
    /// by this program: artifacts found there are loaded as native code.
    pub cache_dir: Option<PathBuf>,
    /// Write `/tmp/perf-<pid>.map`, which names the compiled code of each wasm function for
    /// perf (for profiling guests).
    pub perf_map: bool,
}

/// The engine and linker shared by every guest of one user (the server's strategies, or a
/// worker's steps), and the thread that advances the engine's epoch.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

/// A compiled guest, with the sha256 of its bytes.
#[derive(Clone)]
pub struct Compiled {
    component: Component,
    /// Hex sha256 of the wasm it was compiled from.
    pub sha256: String,
}

/// One export of a compiled component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Its name, e.g. `gyoza:scheduler/scheduling@0.2.0`.
    pub name: String,
    /// Whether it is an instance (an exported interface) rather than a function or type.
    pub interface: bool,
}

impl Compiled {
    /// The component, for the WIT bindings' `instantiate_pre`.
    pub fn component(&self) -> &Component {
        &self.component
    }
}

impl Runtime {
    /// Builds the engine, links WASI and starts the epoch ticker.
    pub fn new(options: RuntimeOptions) -> Result<Arc<Self>, WasmError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        if options.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)
            .map_err(|e| WasmError::Engine(format!("cannot start the wasm engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| WasmError::Engine(format!("cannot link WASI: {e:#}")))?;
        start_ticker(&engine)?;
        if let Some(dir) = &options.cache_dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create the wasm cache directory; compiling without a cache");
            }
        }
        Ok(Arc::new(Self {
            engine,
            linker,
            cache_dir: options.cache_dir,
        }))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Pre-instantiates `compiled` with the linker (WASI only): fails if the guest imports
    /// anything else.
    pub fn instantiate_pre(&self, compiled: &Compiled) -> wasmtime::Result<InstancePre<HostState>> {
        self.linker.instantiate_pre(&compiled.component)
    }

    /// Compiles `bytes` (a component), through the cache when the runtime has one.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, WasmError> {
        let sha256 = sha256_hex(bytes);
        let component = match &self.cache_dir {
            Some(dir) => cache::compile(&self.engine, dir, bytes, &sha256),
            None => Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}")),
        }
        .map_err(WasmError::Compile)?;
        Ok(Compiled { component, sha256 })
    }

    /// The exports of `compiled`, in its order.
    pub fn exports(&self, compiled: &Compiled) -> Vec<Export> {
        compiled
            .component
            .component_type()
            .exports(&self.engine)
            .map(|(name, item)| Export {
                name: name.to_owned(),
                interface: matches!(item.ty, ComponentItem::ComponentInstance(_)),
            })
            .collect()
    }

    /// The names of what `compiled` imports, in its order.
    pub fn imports(&self, compiled: &Compiled) -> Vec<String> {
        compiled
            .component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// A store for one call (or one session of calls) under `limits`: the memory limit is
    /// enforced from the first allocation, the deadline runs from now.
    pub fn store(&self, limits: Limits) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new(Limiter::new(limits.memory)));
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        limits.arm(&mut store);
        store
    }
}

/// Starts the thread that advances the epoch every [`TICK`]. A thread, not a tokio task:
/// deadlines must hold even when every async thread is busy, and guests also run outside a
/// runtime (the CLI, benchmarks). It holds only a weak reference, so it stops once the engine
/// is dropped.
fn start_ticker(engine: &Engine) -> Result<(), WasmError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("gyoza-wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .map(drop)
        .map_err(|e| WasmError::Engine(format!("cannot start the deadline ticker: {e}")))
}

#[cfg(test)]
mod tests;
