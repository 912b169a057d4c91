//! A gyoza scheduling strategy: smallest runs first.
//!
//! Each claim gets the pending runs (best first), every active worker with its free
//! capacity, and which worker is asking. Return the indices of the runs the asking worker
//! should take, and optionally why some runs wait. The host checks the answer (unknown,
//! duplicate or over-capacity runs are dropped), so a mistake here never over-commits a
//! worker.

use gyoza_plugin_sdk::{Claim, Decision, Strategy, WaitCode, export_strategy, reason};

/// One instance serves every claim, so a strategy may keep state here between claims.
struct SmallestFirst;

impl Strategy for SmallestFirst {
    fn init(_config: &str) -> Result<Self, String> {
        // GYOZA_STRATEGY_CONFIG, e.g. "limit=4": see gyoza_plugin_sdk::config::parse.
        Ok(SmallestFirst)
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        // The runs are columns: one list per field, entry i of each is run i.
        let mut order: Vec<usize> = (0..claim.pending.len()).collect();
        order.sort_by_key(|&i| (claim.pending.cpu[i], claim.pending.ram_mb[i]));
        let mut free = claim.requester_capacity();
        let mut decision = Decision::default();
        for i in order {
            if decision.assign.len() >= claim.max as usize {
                break;
            }
            let run = claim.pending.run(i);
            match free.fit(&run) {
                Some(gpu) => {
                    free.take(&run, gpu);
                    decision.assign.push(i as u32);
                }
                None => {
                    let why = reason::does_not_fit(&run, &free).unwrap_or_default();
                    decision.wait(i, WaitCode::Capacity, why);
                }
            }
        }
        Ok(decision)
    }
}

export_strategy!(SmallestFirst);

/// Native tests (`cargo test`): the SDK's test kit builds claims as the server does.
#[cfg(test)]
mod tests {
    use gyoza_plugin_sdk::WaitCode;
    use gyoza_plugin_sdk::testing::{
        ClaimBuilder, RunSpec, RunningSpec, WorkerSpec, decide, outcome,
    };

    use super::SmallestFirst;

    #[test]
    fn the_smallest_run_goes_first() {
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(4, 8192))
            .max(1)
            .pending(RunSpec::new().priority(9).cpu(3))
            .pending(RunSpec::new().priority(1).cpu(1))
            .build();
        let decision = decide::<SmallestFirst>("", &claim).unwrap();
        assert_eq!(decision.assign, [1]);
    }

    #[test]
    fn runs_fill_the_free_capacity_and_the_rest_say_why_they_wait() {
        // scenario.json: 6 of gpu-box's 8 cores are free, and its GPU has 8 GB.
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 32768).gpu(0, 8192, []))
            .worker(WorkerSpec::new(4, 8192))
            .running(RunningSpec::on(0).cpu(2).ram_mb(4096))
            .pending(RunSpec::new().priority(9).cpu(2).vram_mb(16384)) // train
            .pending(RunSpec::new().priority(5).cpu(1).vram_mb(4096)) // infer
            .pending(RunSpec::new().priority(5).cpu(4).ram_mb(8192)) // etl
            .pending(RunSpec::new().priority(1).cpu(1).ram_mb(512)) // report
            .build();
        let decision = decide::<SmallestFirst>("", &claim).unwrap();
        assert_eq!(decision.assign, [1, 3, 2]);
        let wait = &decision.deferred[0];
        assert_eq!((wait.run, wait.code), (0, WaitCode::Capacity));
        // Smaller runs go first, so infer already has 4 GB of the GPU.
        assert_eq!(
            wait.reason,
            "needs 16384 MB VRAM; largest free GPU has 4096 MB"
        );
        // The server would take every one of them.
        assert_eq!(outcome(&claim, &decision).assigned, [1, 3, 2]);
    }
}
