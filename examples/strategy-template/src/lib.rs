//! A gyoza scheduling strategy: smallest runs first.
//!
//! Each claim gets the pending runs (best first), every active worker with its free
//! capacity, and which worker is asking. Return the indices of the runs the asking worker
//! should take, and optionally why some runs wait. The host checks the answer (unknown,
//! duplicate or over-capacity runs are dropped), so a mistake here never over-commits a
//! worker.

use gyoza_plugin_sdk::{Claim, Decision, Strategy, export_strategy, reason};

/// State kept between claims (the host reuses one instance): here, only the configuration.
struct SmallestFirst {
    limit: usize,
}

impl Strategy for SmallestFirst {
    fn init(config: &str) -> Result<Self, String> {
        // GYOZA_STRATEGY_CONFIG, e.g. "limit=4".
        let mut limit = usize::MAX;
        for (key, value) in gyoza_plugin_sdk::config::parse(config)? {
            if key == "limit" {
                limit = value
                    .parse()
                    .map_err(|_| format!("limit must be a number, got '{value}'"))?;
            }
        }
        Ok(SmallestFirst { limit })
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        let mut order: Vec<usize> = (0..claim.pending.len()).collect();
        // The runs are columns: one list per field, entry i of each is run i.
        order.sort_by_key(|&i| (claim.pending.cpu[i], claim.pending.ram_mb[i]));
        let mut free = claim.requester_capacity();
        let mut decision = Decision::default();
        let wanted = (claim.max as usize).min(self.limit);
        for i in order {
            let run = claim.pending.run(i);
            match free.fit(&run) {
                Some(gpu) if decision.assign.len() < wanted => {
                    free.take(&run, gpu);
                    decision.assign.push(i as u32);
                }
                Some(_) => break,
                None => {
                    if let Some(why) = reason::does_not_fit(&run, &free) {
                        decision.defer(i, why);
                    }
                }
            }
        }
        Ok(decision)
    }
}

export_strategy!(SmallestFirst);
