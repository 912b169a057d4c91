//! The `priority` strategy: strict priority, highest first and first come first served within
//! a priority, filling the requester's free CPU, RAM and VRAM.
//!
//! Strict means the first run that does not fit stops the claim: nothing behind it jumps the
//! queue, so a large run is never starved by a stream of small ones. With `backfill=true` in
//! the configuration, smaller runs behind it may fill the capacity it cannot use.
//!
//! With `preempt=true`, the first run that does not fit may take the place of runs the
//! requester holds: if evicting preemptible running runs of the requester whose priority is
//! strictly lower than its own makes it fit, they are evicted (lowest priority first, then
//! the most recently started first; any that turns out not to be needed is spared) and the
//! run is assigned; what they free counts for the runs after it. If evicting cannot make it
//! fit, nothing is evicted. At most one run per claim preempts: the next run that does not
//! fit stops the claim (or, with backfill, is passed over) as without `preempt`.

use gyoza_plugin_sdk::{
    Capacity, Claim, Decision, PendingRun, Strategy, WaitCode, config, export_strategy, reason,
};

/// How many waiting runs get a reason per claim (the host keeps only a few anyway).
const REASONS: usize = 8;

struct Priority {
    backfill: bool,
    preempt: bool,
    preempt_elsewhere: bool,
}

impl Strategy for Priority {
    fn init(config_string: &str) -> Result<Self, String> {
        let (mut backfill, mut preempt, mut preempt_elsewhere) = (false, false, false);
        for (key, value) in config::parse(config_string)? {
            // The server hands one configuration string to every plugin: keys meant for
            // other strategies are not an error.
            match key {
                "backfill" => backfill = config::parse_bool(key, value)?,
                "preempt" => preempt = config::parse_bool(key, value)?,
                "preempt_elsewhere" => preempt_elsewhere = config::parse_bool(key, value)?,
                _ => {}
            }
        }
        Ok(Priority {
            backfill,
            preempt,
            preempt_elsewhere,
        })
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        let mut free = claim.requester_capacity();
        let mut decision = Decision::default();
        let mut may_preempt = self.preempt;
        let mut preempted_elsewhere = false;
        for (index, run) in claim.pending.iter().enumerate() {
            if decision.assign.len() >= claim.max as usize {
                break;
            }
            if let Some(gpu) = free.fit(&run) {
                free.take(&run, gpu);
                decision.assign.push(index as u32);
                continue;
            }
            if may_preempt {
                may_preempt = false;
                if let Some(victims) = victims(claim, &free, &run) {
                    let mut room = free.clone();
                    for &victim in &victims {
                        claim.free_up(&mut room, victim);
                    }
                    // Always fits (that is how the victims were chosen); evictions are only
                    // asked for together with the assignment they make room for.
                    if let Some(gpu) = room.fit(&run) {
                        for victim in victims {
                            let why = format!("preempted for a run of priority {}", run.priority);
                            decision.evict(victim, index, why);
                        }
                        free = room;
                        free.take(&run, gpu);
                        decision.assign.push(index as u32);
                        continue;
                    }
                }
            }
            let elsewhere = (self.preempt && self.preempt_elsewhere && !preempted_elsewhere)
                .then(|| victims_elsewhere(claim, &run))
                .flatten();
            if let Some(victims) = elsewhere {
                preempted_elsewhere = true;
                let why = format!(
                    "preempted for a run of priority {} that fits this worker",
                    run.priority
                );
                for &victim in &victims {
                    decision.evict(victim, index, why.clone());
                }
                let runs = if victims.len() == 1 { "run" } else { "runs" };
                let why = format!(
                    "preempting {} {runs} on another worker to make room",
                    victims.len()
                );
                decision.wait(index, WaitCode::Placement, why);
            } else if decision.deferred.len() < REASONS {
                let why =
                    reason::does_not_fit(&run, &free).unwrap_or_else(|| "does not fit".to_owned());
                decision.wait(index, WaitCode::Capacity, why);
            }
            if !self.backfill {
                break;
            }
        }
        Ok(decision)
    }
}

/// The running runs (indices into `claim.running`) to evict so that `run` fits the
/// requester's capacity `free`, or `None` if that cannot be done within the host's rules and
/// caps: [`victims_on`] the requester.
fn victims(claim: &Claim, free: &Capacity, run: &PendingRun) -> Option<Vec<usize>> {
    victims_on(claim, claim.requester as usize, free, run)
}

/// The running runs to evict on worker `worker`, whose free capacity is `free`, so that
/// `run` fits there ([`Claim::fewest_to_evict`]). It may evict the worker's preemptible runs
/// of a strictly lower priority, lowest priority first, then most recently started first.
fn victims_on(
    claim: &Claim,
    worker: usize,
    free: &Capacity,
    run: &PendingRun,
) -> Option<Vec<usize>> {
    let running = &claim.running;
    let mut candidates: Vec<usize> = claim
        .running_on(worker)
        .filter(|&i| running.preemptible[i] && running.priority[i] < run.priority)
        .collect();
    candidates.sort_by_key(|&i| (running.priority[i], running.ran_ms[i], i));
    claim.fewest_to_evict(free, run, &candidates)
}

/// The runs to evict on another worker than the requester so that `run` fits there
/// ([`victims_on`] each): on the worker that needs the fewest (the first such worker among
/// equals); `None` if no worker can be made to fit it.
fn victims_elsewhere(claim: &Claim, run: &PendingRun) -> Option<Vec<usize>> {
    (0..claim.workers.len())
        .filter(|&w| w != claim.requester as usize)
        .filter_map(|w| victims_on(claim, w, &claim.capacity(w), run))
        .min_by_key(Vec::len)
}

export_strategy!(Priority);

#[cfg(test)]
mod tests {
    use gyoza_plugin_sdk::testing::{
        ClaimBuilder, RunSpec, RunningSpec, WorkerSpec, decide, outcome, outcome_across_workers,
    };
    use gyoza_plugin_sdk::{Claim, Decision, WaitCode};

    use super::Priority;

    fn decide_with(config: &str, claim: &Claim) -> Decision {
        let decision = decide::<Priority>(config, claim).expect("a decision");
        // Whatever it answers, the host carries out in full.
        let checked = outcome(claim, &decision);
        assert_eq!(checked.dropped, 0, "{decision:?}");
        assert_eq!(checked.refused, [], "{decision:?}");
        decision
    }

    fn evicted(decision: &Decision) -> Vec<(u32, u32)> {
        decision.evict.iter().map(|e| (e.run, e.for_run)).collect()
    }

    /// An 8-core worker holding four 2-core runs: 0 and 1 preemptible at priority 1 (run 1
    /// started more recently), 2 preemptible at priority 3, 3 not preemptible at priority 0.
    fn busy() -> ClaimBuilder {
        ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 16384))
            .worker(WorkerSpec::new(8, 16384))
            .running(
                RunningSpec::on(0)
                    .priority(1)
                    .cpu(2)
                    .ran_ms(50_000)
                    .preemptible(true),
            )
            .running(
                RunningSpec::on(0)
                    .priority(1)
                    .cpu(2)
                    .ran_ms(10_000)
                    .preemptible(true),
            )
            .running(
                RunningSpec::on(0)
                    .priority(3)
                    .cpu(2)
                    .ran_ms(1_000)
                    .preemptible(true),
            )
            .running(RunningSpec::on(0).cpu(2))
            // Another worker's run, preemptible and of the lowest priority: never a victim.
            .running(RunningSpec::on(1).cpu(8).preemptible(true))
    }

    #[test]
    fn strict_priority_stops_at_the_first_run_that_does_not_fit() {
        let claim = |max| {
            ClaimBuilder::new()
                .worker(WorkerSpec::new(4, 8192))
                .max(max)
                .pending(RunSpec::new().priority(9).cpu(2))
                .pending(RunSpec::new().priority(5).cpu(4))
                .pending(RunSpec::new().priority(1).cpu(1))
                .build()
        };
        let decision = decide_with("", &claim(10));
        assert_eq!(decision.assign, [0]);
        assert_eq!(decision.deferred.len(), 1);
        assert_eq!(decision.deferred[0].run, 1);
        assert_eq!(decision.deferred[0].code, WaitCode::Capacity);
        assert_eq!(decision.deferred[0].reason, "needs 4 CPU cores; 2 free");
        assert_eq!(decide_with("backfill=true", &claim(10)).assign, [0, 2]);
        assert_eq!(decide_with("backfill=true", &claim(1)).assign, [0]);
    }

    #[test]
    fn without_preempt_nothing_is_evicted() {
        let claim = busy().pending(RunSpec::new().priority(5).cpu(4)).build();
        for config in ["", "preempt=false", "backfill=true"] {
            let decision = decide_with(config, &claim);
            assert_eq!(
                (decision.assign.len(), decision.evict.len()),
                (0, 0),
                "{config}"
            );
            assert_eq!(decision.deferred[0].reason, "needs 4 CPU cores; 0 free");
        }
    }

    #[test]
    fn preempt_evicts_the_fewest_lowest_priority_most_recent_first() {
        let claim = busy()
            .pending(RunSpec::new().priority(5).cpu(4))
            .pending(RunSpec::new().priority(4).cpu(1))
            .build();
        let decision = decide_with("preempt=true", &claim);
        // Runs 1 then 0 (priority 1, most recent first) free the 4 cores; the run behind
        // takes nothing: the claim is full again.
        assert_eq!(evicted(&decision), [(1, 0), (0, 0)]);
        assert_eq!(
            decision.evict[0].reason,
            "preempted for a run of priority 5"
        );
        assert_eq!(decision.assign, [0]);
        assert_eq!(decision.deferred[0].run, 1);

        let small = busy().pending(RunSpec::new().priority(5).cpu(1)).build();
        assert_eq!(evicted(&decide_with("preempt=true", &small)), [(1, 0)]);
    }

    #[test]
    fn capacity_freed_by_evictions_counts_for_the_runs_after() {
        let claim = busy()
            .pending(RunSpec::new().priority(5).cpu(3))
            .pending(RunSpec::new().priority(2).cpu(1))
            .build();
        let decision = decide_with("preempt=true", &claim);
        assert_eq!(evicted(&decision), [(1, 0), (0, 0)]);
        assert_eq!(decision.assign, [0, 1]);
    }

    #[test]
    fn no_preemption_needs_more_victims_than_the_host_carries_out() {
        let claim = |cap| {
            busy()
                .max_evictions(cap)
                .pending(RunSpec::new().priority(5).cpu(4))
                .build()
        };
        assert_eq!(
            evicted(&decide_with("preempt=true", &claim(2))),
            [(1, 0), (0, 0)]
        );
        let capped = decide_with("preempt=true", &claim(1));
        assert_eq!(evicted(&capped), [], "two victims needed, one allowed");
        assert_eq!(capped.assign, Vec::<u32>::new());
        assert_eq!(capped.deferred[0].code, WaitCode::Capacity);
    }

    #[test]
    fn a_victim_that_is_not_needed_is_spared() {
        // Run 0 (priority 1) holds 1 core, run 1 (priority 2) 4: the 4-core run needs run 1
        // only.
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(5, 8192))
            .running(RunningSpec::on(0).priority(1).cpu(1).preemptible(true))
            .running(RunningSpec::on(0).priority(2).cpu(4).preemptible(true))
            .pending(RunSpec::new().priority(5).cpu(4))
            .build();
        let decision = decide_with("preempt=true", &claim);
        assert_eq!(evicted(&decision), [(1, 0)]);
        assert_eq!(decision.assign, [0]);
    }

    #[test]
    fn preempt_frees_vram_on_the_victims_gpu() {
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 16384).gpu(0, 8192, []).gpu(1, 8192, []))
            .running(
                RunningSpec::on(0)
                    .priority(1)
                    .cpu(1)
                    .vram(0, 6000)
                    .preemptible(true),
            )
            .running(
                RunningSpec::on(0)
                    .priority(0)
                    .cpu(1)
                    .vram(1, 2000)
                    .preemptible(true),
            )
            .pending(RunSpec::new().priority(5).cpu(1).vram_mb(8000))
            .build();
        let decision = decide_with("preempt=true", &claim);
        // Run 1 goes first (lowest priority): it frees GPU 1 whole, 8192 MB, which is enough.
        assert_eq!(evicted(&decision), [(1, 0)]);
        assert_eq!(decision.assign, [0]);
    }

    #[test]
    fn when_evicting_cannot_make_room_nothing_is_evicted() {
        // Runs 0, 1 and 2 free 6 cores at most (3 is not preemptible): 8 cannot fit.
        let claim = busy().pending(RunSpec::new().priority(9).cpu(8)).build();
        let decision = decide_with("preempt=true", &claim);
        assert_eq!((decision.assign.len(), decision.evict.len()), (0, 0));
        assert_eq!(decision.deferred[0].reason, "needs 8 CPU cores; 0 free");
        // 6 cores need run 2, of priority 3: a run of priority 3 may not evict it.
        let equal = busy().pending(RunSpec::new().priority(3).cpu(6)).build();
        let decision = decide_with("preempt=true", &equal);
        assert_eq!((decision.assign.len(), decision.evict.len()), (0, 0));
    }

    #[test]
    fn equal_priority_and_non_preemptible_runs_are_never_evicted() {
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(4, 8192))
            .running(RunningSpec::on(0).priority(5).cpu(2).preemptible(true))
            .running(RunningSpec::on(0).priority(0).cpu(2))
            .pending(RunSpec::new().priority(5).cpu(2))
            .build();
        let decision = decide_with("preempt=true", &claim);
        assert_eq!((decision.assign.len(), decision.evict.len()), (0, 0));
        assert_eq!(decision.deferred[0].code, WaitCode::Capacity);
    }

    #[test]
    fn with_backfill_only_the_first_blocked_run_preempts() {
        let claim = busy()
            .pending(RunSpec::new().priority(5).cpu(8))
            .pending(RunSpec::new().priority(4).cpu(2))
            .build();
        // The first blocked run cannot get 8 cores; the second could evict one run but is
        // not considered: it is backfilled only into free capacity, of which there is none.
        let decision = decide_with("backfill=true, preempt=true", &claim);
        assert_eq!((decision.assign.len(), decision.evict.len()), (0, 0));
        assert_eq!(decision.deferred.len(), 2);
        // Without the blocker, the same run preempts.
        let alone = busy().pending(RunSpec::new().priority(4).cpu(2)).build();
        assert_eq!(
            evicted(&decide_with("backfill=true, preempt=true", &alone)),
            [(1, 0)]
        );
    }

    #[test]
    fn preempt_respects_max() {
        let claim = busy()
            .max(0)
            .pending(RunSpec::new().priority(5).cpu(2))
            .build();
        let decision = decide_with("preempt=true", &claim);
        assert_eq!(decision, Decision::default());
    }

    #[test]
    fn preempt_elsewhere_evicts_on_the_worker_needing_the_fewest_and_the_run_waits() {
        // The requester has 2 cores, held; worker 1 holds two preemptible 4-core runs,
        // worker 2 four preemptible 2-core runs: 6 cores need two evictions on worker 1,
        // three on worker 2.
        let mut builder = ClaimBuilder::new()
            .worker(WorkerSpec::new(2, 8192))
            .worker(WorkerSpec::new(8, 16384))
            .worker(WorkerSpec::new(8, 16384))
            .running(RunningSpec::on(0).cpu(2))
            .running(RunningSpec::on(1).priority(1).cpu(4).preemptible(true))
            .running(RunningSpec::on(1).priority(1).cpu(4).preemptible(true));
        for _ in 0..4 {
            builder = builder.running(RunningSpec::on(2).priority(1).cpu(2).preemptible(true));
        }
        let claim = builder
            .pending(RunSpec::new().priority(5).cpu(6))
            .pending(RunSpec::new().priority(4).cpu(1))
            .build();
        let decision = decide::<Priority>("preempt=true, preempt_elsewhere=true", &claim).unwrap();
        assert_eq!(evicted(&decision), [(1, 0), (2, 0)]);
        assert_eq!(decision.assign, Vec::<u32>::new());
        assert_eq!(decision.deferred[0].run, 0);
        assert_eq!(decision.deferred[0].code, WaitCode::Placement);
        assert_eq!(
            decision.deferred[0].reason,
            "preempting 2 runs on another worker to make room"
        );
        // A server that preempts across workers carries them out; one that does not, none.
        let across = outcome_across_workers(&claim, &decision);
        assert_eq!((across.evicted, across.refused), (vec![1, 2], vec![]));
        assert_eq!(outcome(&claim, &decision).evicted, Vec::<usize>::new());
        // Without the key, nothing is asked of other workers.
        let decision = decide_with("preempt=true", &claim);
        assert_eq!(decision.evict.len(), 0);
        // Nor when no worker can be made to fit it (9 cores: more than any worker has).
        let huge = ClaimBuilder::new()
            .worker(WorkerSpec::new(2, 8192))
            .worker(WorkerSpec::new(8, 16384))
            .running(RunningSpec::on(1).priority(1).cpu(8).preemptible(true))
            .pending(RunSpec::new().priority(5).cpu(9))
            .build();
        let decision = decide::<Priority>("preempt=true, preempt_elsewhere=true", &huge).unwrap();
        assert_eq!(decision.evict.len(), 0);
        assert_eq!(decision.deferred[0].code, WaitCode::Capacity);
    }

    #[test]
    fn a_bad_value_is_refused_and_unknown_keys_ignored() {
        let claim = busy().build();
        assert!(decide::<Priority>("preempt=maybe", &claim).is_err());
        assert!(decide::<Priority>("threshold=3, preempt=yes", &claim).is_ok());
    }
}
