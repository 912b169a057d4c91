//! The `bin-packing` strategy: a run goes to the requesting worker only if that worker is its
//! best fit (the tightest remaining capacity) among the active workers. GPU-aware: a run that
//! needs VRAM is placed on one GPU with enough VRAM left after what that GPU already holds.
//!
//! Packing tightly keeps large holes free for large runs; the cost is that a worker may get
//! nothing while a tighter one is busy claiming.

mod plan;

// The names the plan uses (`super::...`).
use gyoza_plugin_sdk::{Capacity, Claim, Decision, Strategy, WaitCode, export_strategy, reason};

struct BinPacking;

impl Strategy for BinPacking {
    fn init(_config: &str) -> Result<Self, String> {
        // The server hands its one configuration string to every plugin: keys meant for
        // other strategies are not an error here.
        Ok(BinPacking)
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        Ok(plan::plan(claim))
    }
}

export_strategy!(BinPacking);
