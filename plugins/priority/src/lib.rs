//! The `priority` strategy: strict priority, highest first and first come first served within
//! a priority, filling the requester's free CPU, RAM and VRAM.
//!
//! Strict means the first run that does not fit stops the claim: nothing behind it jumps the
//! queue, so a large run is never starved by a stream of small ones. With `backfill=true` in
//! the configuration, smaller runs behind it may fill the capacity it cannot use.

use gyoza_plugin_sdk::{Claim, Decision, Strategy, config, export_strategy, reason};

/// How many waiting runs get a reason per claim (the host keeps only a few anyway).
const REASONS: usize = 8;

struct Priority {
    backfill: bool,
}

impl Strategy for Priority {
    fn init(config_string: &str) -> Result<Self, String> {
        let mut backfill = false;
        for (key, value) in config::parse(config_string)? {
            // The server hands one configuration string to every plugin: keys meant for
            // other strategies are not an error.
            if key == "backfill" {
                backfill = config::parse_bool(key, value)?;
            }
        }
        Ok(Priority { backfill })
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        let mut free = claim.requester_capacity();
        let mut decision = Decision::default();
        for (index, run) in claim.pending.iter().enumerate() {
            if decision.assign.len() >= claim.max as usize {
                break;
            }
            match free.fit(&run) {
                Some(gpu) => {
                    free.take(&run, gpu);
                    decision.assign.push(index as u32);
                }
                None => {
                    if decision.deferred.len() < REASONS {
                        let why = reason::does_not_fit(&run, &free)
                            .unwrap_or_else(|| "does not fit".to_owned());
                        decision.defer(index, why);
                    }
                    if !self.backfill {
                        break;
                    }
                }
            }
        }
        Ok(decision)
    }
}

export_strategy!(Priority);
