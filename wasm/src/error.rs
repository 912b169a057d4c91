//! [`WasmError`]: the runtime could not start, or a guest could not be compiled.

/// Why the runtime could not be set up or a guest could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    /// The engine, the WASI linker or the epoch ticker could not be set up.
    #[error("{0}")]
    Engine(String),
    /// The bytes are not a WebAssembly component this engine can compile.
    #[error("{0}")]
    Compile(String),
}
