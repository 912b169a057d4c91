//! The `direct` strategy: the first pending run (highest priority, oldest first) goes to the
//! worker that asks, one run per claim, as in the original gyoza. It only refuses a run that
//! cannot fit the requester, since the host would drop it anyway; the run then waits with the
//! reason, and nothing behind it jumps the queue.

use gyoza_plugin_sdk::{Claim, Decision, Strategy, WaitCode, export_strategy, reason};

struct Direct;

impl Strategy for Direct {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Direct)
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        let mut decision = Decision::default();
        let Some(first) = claim.pending.first() else {
            return Ok(decision);
        };
        let free = claim.requester_capacity();
        match reason::does_not_fit(&first, &free) {
            None if claim.max > 0 => decision.assign.push(0),
            None => {}
            Some(why) => decision.wait(0, WaitCode::Capacity, why),
        }
        Ok(decision)
    }
}

export_strategy!(Direct);
