//! gyoza-wasm: the one wasmtime wrapper of gyoza, shared by the server's scheduling
//! strategies and the worker's pipeline steps.
//!
//! A [`Runtime`] owns the engine (component model, epoch interruption), the linker (WASI p2
//! with an empty context: a wasip2 guest imports wasi:io/cli even when it never uses them, and
//! gets no files, network or environment) and the thread that advances the epoch, which holds
//! only a weak reference to the engine and stops once it is gone. Guests are compiled through
//! [`Runtime::compile`], which keeps precompiled artifacts on disk when the runtime has a cache
//! directory. Every call runs in a [`Store`](wasmtime::Store) built from [`Limits`] (a deadline and a
//! memory limit), and a failed call is told apart by [`Failure::of`]: timeout, memory, trap,
//! from wasmtime's typed errors; [`Failure::Guest`] for an error value the guest returned.
//!
//! What stays with the users: their WIT bindings (`wasmtime::component::bindgen!` output) and
//! the glue that calls them, and the wording of failures for their operators.
//!
//! # Layout
//! - [`runtime`]: [`Runtime`], the engine, linker and epoch ticker; stores built from limits.
//! - `state`: [`HostState`], the per-store state (empty WASI context, the limiter).
//! - [`limits`]: [`Limits`], the deadline → epoch ticks rule, the memory [`limits::Limiter`].
//! - `cache`: compile-with-cache (artifacts keyed by wasm hash + engine compatibility hash),
//!   [`sha256_hex`].
//! - `error`: [`WasmError`], when the runtime cannot start or a guest cannot compile.
//! - [`failure`]: [`Failure`], the one classification of a failed call.

mod cache;
mod error;
pub mod failure;
pub mod limits;
pub mod runtime;
mod state;

pub use cache::sha256_hex;
pub use error::WasmError;
pub use failure::{Failure, outcome};
pub use limits::{Limits, MemoryLimitExceeded, TICK};
pub use runtime::{Compiled, Export, Runtime, RuntimeOptions};
pub use state::HostState;
