//! The one classification of a failed call into a guest, from wasmtime's typed errors (never
//! from their text): the deadline is [`wasmtime::Trap::Interrupt`], the memory limit is the
//! limiter's [`MemoryLimitExceeded`], any other error is a trap. An error value the guest
//! returned through its interface is [`Failure::Guest`].

use crate::limits::MemoryLimitExceeded;

/// Why a call into a guest produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The call ran past its deadline and was interrupted.
    #[error("ran past its deadline")]
    Timeout,
    /// The guest tried to grow its memory beyond the limit.
    #[error("exceeded its memory limit")]
    Memory,
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access...): the first
    /// line of the error.
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest answered with an error value of its interface.
    #[error("returned an error: {0}")]
    Guest(String),
}

impl Failure {
    /// Classifies an error returned by wasmtime for a call or an instantiation.
    pub fn of(error: &wasmtime::Error) -> Self {
        if error
            .downcast_ref::<wasmtime::Trap>()
            .is_some_and(|trap| *trap == wasmtime::Trap::Interrupt)
        {
            return Self::Timeout;
        }
        if error.downcast_ref::<MemoryLimitExceeded>().is_some() {
            return Self::Memory;
        }
        let text = format!("{error:#}");
        Self::Trap(text.lines().next().unwrap_or_default().trim().to_owned())
    }
}

/// A two-tier call result as one: the outer error (a trap) classified, the inner one (the
/// guest's decision) as [`Failure::Guest`].
pub fn outcome<T>(result: wasmtime::Result<Result<T, String>>) -> Result<T, Failure> {
    result
        .map_err(|error| Failure::of(&error))?
        .map_err(Failure::Guest)
}
