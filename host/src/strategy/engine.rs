//! The one wasmtime `Engine` and `Linker` of the process, the epoch ticker that enforces call
//! deadlines, and the on-disk cache of precompiled plugins (one per host, in its data dir).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::StrategyError;

/// How often the engine's epoch advances. A deadline of D is D / TICK epochs, so a call is
/// stopped between D and D + TICK after it started.
pub(super) const TICK: Duration = Duration::from_millis(5);

/// Per-store state: an empty WASI context (a wasip2 guest imports wasi:io/cli even when it
/// never uses them; it gets no files, network, environment or clocks of note) and the limits.
pub(super) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine and linker of the process, shared by every [`Runtime`]: one engine per
/// process, one ticker thread.
struct Shared {
    engine: Engine,
    linker: Linker<HostState>,
}

fn shared() -> Result<&'static Shared, StrategyError> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(build_shared)
        .as_ref()
        .map_err(|e| StrategyError::Engine(e.clone()))
}

/// Builds the engine (component model, epoch interruption), links WASI, starts the ticker.
fn build_shared() -> Result<Shared, String> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if std::env::var_os("GYOZA_WASM_PERFMAP").is_some_and(|v| v == "1") {
        // For profiling plugins: /tmp/perf-<pid>.map names the compiled code of each wasm
        // function, which perf (and a script over callgrind's addresses) can then attribute.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| format!("cannot link WASI: {e:#}"))?;
    // A thread, not a tokio task: deadlines must hold even when every runtime thread is
    // busy, and plugins also run outside a runtime (the CLI, the benchmark).
    let ticker = engine.clone();
    std::thread::Builder::new()
        .name("gyoza-epoch".into())
        .spawn(move || {
            loop {
                ticker.increment_epoch();
                std::thread::sleep(TICK);
            }
        })
        .map_err(|e| format!("cannot start the deadline ticker: {e}"))?;
    Ok(Shared { engine, linker })
}

/// The process's engine and linker, and where this host caches compiled plugins.
pub(super) struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: &'static Linker<HostState>,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    /// The shared engine with `cache_dir` as the compiled-plugin cache.
    pub(super) fn new(cache_dir: Option<PathBuf>) -> Result<Arc<Self>, StrategyError> {
        let shared = shared()?;
        if let Some(dir) = &cache_dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create the plugin cache directory; compiling without a cache");
            }
        }
        Ok(Arc::new(Self {
            engine: shared.engine.clone(),
            linker: &shared.linker,
            cache_dir,
        }))
    }

    /// A store with the memory limit, trapping (rather than failing the growth quietly) so
    /// that running out is reported as such.
    pub(super) fn store(&self, memory_limit: usize) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_limit)
            .instances(16)
            .tables(64)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                limits,
            },
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store
    }

    /// Compiles `bytes` (whose sha256 is `sha256`), through the cache when there is one.
    pub(super) fn compile(&self, bytes: &[u8], sha256: &str) -> Result<Component, String> {
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"));
        };
        let path = dir.join(format!("{sha256}-{:016x}.cwasm", self.compatibility()));
        if path.exists() {
            // SAFETY: the cache directory is written only by this server (below), and the
            // file name carries both the wasm's hash and the engine's compatibility hash;
            // wasmtime also checks the artifact's header against this engine. Whoever can
            // write there can already replace the server binary.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unusable cached plugin artifact; recompiling");
                }
            }
        }
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| format!("{e:#}"))?;
        if let Err(e) = write_atomically(&path, &compiled) {
            tracing::warn!(file = %path.display(), error = %e, "cannot cache the compiled plugin");
        }
        // SAFETY: `compiled` was produced just now by this very engine.
        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(|e| format!("{e:#}"))
    }

    /// A short hash of everything that makes a compiled artifact usable by this engine
    /// (wasmtime version, target, settings).
    fn compatibility(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hasher.finish()
    }
}

/// Writes through a temporary file and a rename, so that a crash never leaves half an artifact
/// under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per process and per write: two hosts compiling the same plugin at once must not
    // share a temporary file (interleaved writes would make a corrupt artifact).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
