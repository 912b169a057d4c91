//! The per-store host state: an empty WASI context and the store's limiter.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::limits::Limiter;

/// What a store holds for the host: a WASI context with no files, network, environment or
/// arguments (a wasip2 guest imports wasi:io/cli even when it never uses them), its resource
/// table, and the limiter that enforces the memory limit.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
}

impl HostState {
    pub(crate) fn new(limiter: Limiter) -> Self {
        Self {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limiter,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
