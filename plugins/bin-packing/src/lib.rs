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

#[cfg(test)]
mod tests {
    use gyoza_plugin_sdk::testing::{
        ClaimBuilder, RunSpec, RunningSpec, WorkerSpec, decide, outcome,
    };
    use gyoza_plugin_sdk::{Claim, Decision, WaitCode};

    use super::BinPacking;

    fn decide_on(claim: &Claim) -> Decision {
        let decision = decide::<BinPacking>("", claim).expect("a decision");
        assert_eq!(outcome(claim, &decision).dropped, 0, "{decision:?}");
        assert_eq!(decision.evict, [], "bin-packing never evicts");
        decision
    }

    fn waits(decision: &Decision) -> Vec<(u32, WaitCode, &str)> {
        decision
            .deferred
            .iter()
            .map(|d| (d.run, d.code, d.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_run_goes_to_the_requester_only_where_it_fits_tightest() {
        // Worker 1 has 2 cores left of 4 after its running run: the tighter fit for 2 cores.
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(16, 65536))
            .worker(WorkerSpec::new(4, 8192))
            .running(RunningSpec::on(1).cpu(2).ram_mb(4096))
            .pending(RunSpec::new().cpu(2).ram_mb(1024))
            .pending(RunSpec::new().cpu(8).ram_mb(1024))
            .build();
        let decision = decide_on(&claim);
        assert_eq!(decision.assign, [1]);
        assert_eq!(
            waits(&decision),
            [(
                0,
                WaitCode::Placement,
                "another active worker is a tighter fit"
            )]
        );
        // Asked by worker 1, the same plan gives it run 0 and leaves run 1 to worker 0.
        let by_small = ClaimBuilder::new()
            .worker(WorkerSpec::new(16, 65536))
            .worker(WorkerSpec::new(4, 8192))
            .requester(1)
            .running(RunningSpec::on(1).cpu(2).ram_mb(4096))
            .pending(RunSpec::new().cpu(2).ram_mb(1024))
            .pending(RunSpec::new().cpu(8).ram_mb(1024))
            .build();
        assert_eq!(decide_on(&by_small).assign, [0]);
    }

    #[test]
    fn identical_workers_tie_in_favour_of_the_requester() {
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(4, 8192))
            .worker(WorkerSpec::new(4, 8192))
            .requester(1)
            .pending(RunSpec::new().cpu(1))
            .build();
        assert_eq!(decide_on(&claim).assign, [0]);
    }

    #[test]
    fn placements_on_other_workers_are_simulated() {
        // Both runs fit worker 1 best, but once the first is placed there the second no
        // longer fits it and goes to the requester.
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(16, 65536))
            .worker(WorkerSpec::new(4, 8192))
            .pending(RunSpec::new().cpu(3))
            .pending(RunSpec::new().cpu(3))
            .build();
        let decision = decide_on(&claim);
        assert_eq!(decision.assign, [1]);
        assert_eq!(waits(&decision)[0].0, 0);
    }

    #[test]
    fn vram_goes_on_the_tightest_gpu_left_after_what_it_holds() {
        // The requester's 24 GB GPU holds 20 GB: 4 GB left, tighter than worker 1's 8 GB.
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 32768).gpu(0, 24576, []))
            .worker(WorkerSpec::new(8, 32768).gpu(0, 8192, []))
            .running(RunningSpec::on(0).vram(0, 20480))
            .pending(RunSpec::new().cpu(1).vram_mb(4096))
            .pending(RunSpec::new().cpu(1).vram_mb(6144))
            .pending(RunSpec::new().cpu(1).vram_mb(16384))
            .build();
        let decision = decide_on(&claim);
        assert_eq!(decision.assign, [0]);
        assert_eq!(
            waits(&decision),
            [
                (
                    1,
                    WaitCode::Placement,
                    "another active worker is a tighter fit"
                ),
                (
                    2,
                    WaitCode::Capacity,
                    "no active worker fits: needs 16384 MB VRAM; largest free GPU has 0 MB"
                ),
            ]
        );
    }

    #[test]
    fn max_stops_the_plan() {
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 32768))
            .max(2)
            .pending(RunSpec::new().cpu(1))
            .pending(RunSpec::new().cpu(1))
            .pending(RunSpec::new().cpu(1))
            .build();
        assert_eq!(decide_on(&claim).assign, [0, 1]);
    }
}
