//! What a call may use: [`Limits`] (a deadline and a memory limit), the one rule that turns a
//! deadline into epoch ticks, and the [`Limiter`] that refuses memory beyond the limit with a
//! typed error ([`MemoryLimitExceeded`]) so that running out is told apart from other traps.

use std::time::Duration;

use wasmtime::{ResourceLimiter, Store};

/// How often the engine's epoch advances. A deadline of D is D / TICK epochs, so a call is
/// stopped between D and D + TICK after it started.
pub const TICK: Duration = Duration::from_millis(5);

/// Most instances, tables and memories one store may create (a component instantiates a few
/// core modules; these are generous for that and small for a hostile guest).
const INSTANCES: usize = 16;
const TABLES: usize = 64;
const MEMORIES: usize = 4;

/// Limits every call into a guest runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a call (or an instantiation) may run.
    pub deadline: Duration,
    /// Largest linear memory, in bytes.
    pub memory: usize,
}

impl Limits {
    /// The deadline in epoch ticks: at least one, saturating for huge deadlines.
    pub fn ticks(&self) -> u64 {
        let ticks = (self.deadline.as_nanos() / TICK.as_nanos()).max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Gives `store` a fresh deadline of [`Limits::deadline`] from now: before each call on a
    /// store that is reused across calls.
    pub fn arm<T>(&self, store: &mut Store<T>) {
        store.set_epoch_deadline(self.ticks());
    }
}

/// A guest tried to grow a linear memory beyond its limit (or its own declared maximum).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("memory limit exceeded: {desired} bytes wanted, {limit} allowed")]
pub struct MemoryLimitExceeded {
    /// The size the guest asked for, in bytes.
    pub desired: usize,
    /// The limit, in bytes.
    pub limit: usize,
}

/// The store's resource limiter: a refused memory growth traps with [`MemoryLimitExceeded`]
/// rather than quietly failing `memory.grow` (a guest's allocator would then abort with a
/// message that says nothing of the limit).
#[derive(Debug)]
pub struct Limiter {
    memory: usize,
}

impl Limiter {
    pub(crate) fn new(memory: usize) -> Self {
        Self { memory }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory || maximum.is_some_and(|max| desired > max) {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                limit: self.memory,
            }));
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("the host could not grow the memory"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            wasmtime::bail!("table growth to {desired} elements is beyond its maximum");
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("the host could not grow the table"))
    }

    fn instances(&self) -> usize {
        INSTANCES
    }

    fn tables(&self) -> usize {
        TABLES
    }

    fn memories(&self) -> usize {
        MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_whole_ticks_at_least_one_and_saturates() {
        let limits = |deadline| Limits {
            deadline,
            memory: 0,
        };
        assert_eq!(limits(Duration::from_millis(100)).ticks(), 20);
        assert_eq!(limits(Duration::from_millis(7)).ticks(), 1);
        assert_eq!(limits(Duration::ZERO).ticks(), 1);
        assert_eq!(limits(Duration::MAX).ticks(), u64::MAX);
    }
}
