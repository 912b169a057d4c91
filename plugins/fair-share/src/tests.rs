use gyoza_plugin_sdk::testing::{
    ClaimBuilder, QueueSpec, RunSpec, RunningSpec, WorkerSpec, decide, outcome,
};
use gyoza_plugin_sdk::{Claim, Decision, WaitCode};

use super::FairShare;

fn decide_with(config: &str, claim: &Claim) -> Decision {
    let decision = decide::<FairShare>(config, claim).expect("a decision");
    // Whatever it answers, the host carries out in full.
    let checked = outcome(claim, &decision);
    assert_eq!(checked.dropped, 0, "{decision:?}");
    assert_eq!(checked.refused, [], "{decision:?}");
    decision
}

/// The queue of each assigned run, in the order assigned.
fn queues_of(claim: &Claim, decision: &Decision) -> String {
    decision
        .assign
        .iter()
        .map(|&i| claim.string(claim.pending.queue[i as usize]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn evicted(decision: &Decision) -> Vec<(u32, u32)> {
    decision.evict.iter().map(|e| (e.run, e.for_run)).collect()
}

/// `n` one-core runs of each of `a` and `b`, all of `a` ahead of all of `b` in the claim's
/// order (the first queue submitted entirely before the second).
fn two_queues(builder: ClaimBuilder, n: usize) -> ClaimBuilder {
    let mut builder = builder;
    for queue in ["a", "b"] {
        for _ in 0..n {
            builder = builder.pending(RunSpec::new().cpu(1).ram_mb(100).queue(queue));
        }
    }
    builder
}

#[test]
fn queues_share_the_requester_by_weight_whatever_order_they_came_in() {
    let claim = two_queues(
        ClaimBuilder::new()
            .worker(WorkerSpec::new(12, 65536))
            .queue(QueueSpec::new("a").weight(1))
            .queue(QueueSpec::new("b").weight(2)),
        12,
    )
    .build();
    let decision = decide_with("", &claim);
    assert_eq!(decision.assign.len(), 12);
    let order = queues_of(&claim, &decision);
    // b (weight 2) gets two cores for each of a's: 8 and 4. Ties go by the claim's order.
    assert_eq!(order, "a b b a b b a b b a b b", "{order}");
    // Within a queue, the claim's order (priority, then age).
    let b: Vec<u32> = decision
        .assign
        .iter()
        .copied()
        .filter(|&i| i >= 12)
        .collect();
    assert_eq!(b, [12, 13, 14, 15, 16, 17, 18, 19]);
}

#[test]
fn the_queue_furthest_below_its_share_goes_first_counting_what_it_holds_elsewhere() {
    // Queue a already holds 6 of the cluster's 16 cores on the other worker.
    let claim = two_queues(
        ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 65536))
            .worker(WorkerSpec::new(8, 65536))
            .running(RunningSpec::on(1).cpu(6).queue("a")),
        8,
    )
    .build();
    let decision = decide_with("", &claim);
    // b catches up (6 runs), then they alternate.
    assert_eq!(queues_of(&claim, &decision), "b b b b b b a b");
}

#[test]
fn the_dominant_resource_is_what_counts() {
    // a holds little CPU but most of the RAM: its dominant share is RAM (0.75).
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 16384))
        .worker(WorkerSpec::new(8, 16384))
        .running(RunningSpec::on(1).cpu(1).ram_mb(24576).queue("a"))
        .running(RunningSpec::on(1).cpu(4).queue("b"))
        .pending(RunSpec::new().cpu(1).queue("a"))
        .pending(RunSpec::new().cpu(1).queue("b"))
        .max(1)
        .build();
    // b holds 4 of 16 cores (0.25) and no RAM; a holds 1/16 CPU but 0.75 RAM.
    assert_eq!(queues_of(&claim, &decide_with("", &claim)), "b");
}

#[test]
fn a_queue_at_a_quota_waits_with_a_reason_naming_it_and_the_others_go_on() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .worker(WorkerSpec::new(8, 65536))
        .running(RunningSpec::on(1).cpu(3).queue("b"))
        .queue(QueueSpec::new("b").weight(100).quota_cpu(4))
        .pending(RunSpec::new().cpu(1).queue("b"))
        .pending(RunSpec::new().cpu(1).queue("b"))
        .pending(RunSpec::new().cpu(1).queue("a"))
        .build();
    let decision = decide_with("", &claim);
    // a holds nothing: it goes first; then b takes one core up to its quota of 4 and waits.
    assert_eq!(decision.assign, [2, 0]);
    assert_eq!(decision.deferred.len(), 1);
    assert_eq!(decision.deferred[0].run, 1);
    assert_eq!(decision.deferred[0].code, WaitCode::Quota);
    assert_eq!(
        decision.deferred[0].reason,
        "queue b is at its CPU quota: 4 of 4 cores held; the run needs 1"
    );

    let runs = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .running(RunningSpec::on(0).cpu(1).queue("b"))
        .queue(QueueSpec::new("b").quota_runs(2).quota_ram_mb(1000))
        .pending(RunSpec::new().cpu(1).ram_mb(400).queue("b"))
        .pending(RunSpec::new().cpu(1).ram_mb(400).queue("b"))
        .build();
    let decision = decide_with("backfill=true", &runs);
    assert_eq!(decision.assign, [0]);
    assert_eq!(
        decision.deferred[0].reason,
        "queue b is at its quota of 2 runs held at once"
    );
    let ram = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .queue(QueueSpec::new("b").quota_ram_mb(1000))
        .pending(RunSpec::new().ram_mb(600).queue("b"))
        .pending(RunSpec::new().ram_mb(600).queue("b"))
        .build();
    let decision = decide_with("", &ram);
    assert_eq!(decision.assign, [0]);
    assert_eq!(
        decision.deferred[0].reason,
        "queue b is at its RAM quota: 600 of 1000 MB held; the run needs 600"
    );
}

#[test]
fn a_quota_at_the_limit_of_its_type_never_overflows() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .worker(WorkerSpec::new(8, u64::MAX))
        .running(RunningSpec::on(1).ram_mb(u64::MAX - 1).queue("b"))
        .queue(QueueSpec::new("b").quota_ram_mb(u64::MAX - 1))
        .pending(RunSpec::new().ram_mb(u64::MAX).queue("b"))
        .pending(RunSpec::new().cpu(1).queue("b"))
        .build();
    let decision = decide::<FairShare>("backfill=true", &claim).expect("a decision");
    assert_eq!(decision.assign, [1]);
    assert_eq!(decision.deferred[0].code, WaitCode::Quota);
}

#[test]
fn within_a_queue_the_order_is_strict_unless_backfill() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(4, 65536))
        .pending(RunSpec::new().priority(9).cpu(8).queue("a"))
        .pending(RunSpec::new().priority(5).cpu(1).queue("a"))
        .pending(RunSpec::new().priority(1).cpu(1).queue("b"))
        .build();
    let strict = decide_with("", &claim);
    // a's big run holds back a's small one, not b's.
    assert_eq!(strict.assign, [2]);
    assert_eq!(strict.deferred[0].run, 0);
    assert_eq!(strict.deferred[0].code, WaitCode::Capacity);
    assert_eq!(strict.deferred[0].reason, "needs 8 CPU cores; 4 free");
    // With backfill, a's next run passes it (a and b both hold nothing: the claim's order).
    assert_eq!(decide_with("backfill=true", &claim).assign, [1, 2]);
}

#[test]
fn a_queue_alone_borrows_the_whole_cluster_and_max_is_kept() {
    let claim = two_queues(ClaimBuilder::new().worker(WorkerSpec::new(8, 65536)), 0)
        .pending(RunSpec::new().cpu(2).queue("a"))
        .pending(RunSpec::new().cpu(2).queue("a"))
        .pending(RunSpec::new().cpu(2).queue("a"))
        .pending(RunSpec::new().cpu(2).queue("a"))
        .queue(QueueSpec::new("b").weight(1000))
        .build();
    assert_eq!(decide_with("", &claim).assign, [0, 1, 2, 3]);
    let capped = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .max(1)
        .pending(RunSpec::new().cpu(2).queue("a"))
        .pending(RunSpec::new().cpu(2).queue("b"))
        .build();
    assert_eq!(decide_with("", &capped).assign, [0]);
}

/// The requester holds four preemptible 2-core runs of `batch` at priority 0; `interactive`
/// holds nothing and waits with a 4-core run of priority `priority`.
fn borrowed_for(priority: i64) -> ClaimBuilder {
    let mut builder = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .worker(WorkerSpec::new(8, 65536));
    for ran_ms in [40_000, 30_000, 20_000, 10_000] {
        builder = builder.running(
            RunningSpec::on(0)
                .cpu(2)
                .queue("batch")
                .preemptible(true)
                .ran_ms(ran_ms),
        );
    }
    builder
        // Another worker's batch run: not the requester's, never a victim.
        .running(RunningSpec::on(1).cpu(8).queue("batch").preemptible(true))
        .pending(
            RunSpec::new()
                .priority(priority)
                .cpu(4)
                .queue("interactive"),
        )
        .pending(RunSpec::new().cpu(2).queue("batch"))
}

fn borrowed() -> ClaimBuilder {
    borrowed_for(1)
}

#[test]
fn reclaim_takes_borrowed_capacity_back_fewest_and_most_recent_first() {
    let claim = borrowed().build();
    let without = decide_with("", &claim);
    assert_eq!((without.assign.len(), without.evict.len()), (0, 0));
    assert_eq!(without.deferred[0].reason, "needs 4 CPU cores; 0 free");

    let decision = decide_with("reclaim=true", &claim);
    // The two most recently started batch runs free the 4 cores.
    assert_eq!(evicted(&decision), [(3, 0), (2, 0)]);
    assert_eq!(
        decision.evict[0].reason,
        "preempted: queue batch borrowed beyond its fair share and queue interactive is below its own"
    );
    assert_eq!(decision.assign, [0]);
    // Batch's own run waits: the freed capacity went to interactive.
    assert_eq!(decision.deferred[0].run, 1);
}

#[test]
fn reclaim_keeps_the_hosts_rules_and_takes_back_only_what_was_borrowed() {
    // The waiting run's priority is no higher than the borrowers': the host would refuse.
    let equal = borrowed_for(0).build();
    let decision = decide_with("reclaim=true", &equal);
    assert_eq!(decision.evict.len(), 0, "{decision:?}");

    // Batch's weight makes its fair part 100/101 of the 16 cores: giving 4 back would take
    // it below that, so it keeps them.
    let weighted = borrowed()
        .queue(QueueSpec::new("batch").weight(100))
        .build();
    let decision = decide_with("reclaim=true", &weighted);
    assert_eq!(decision.evict.len(), 0, "{decision:?}");

    // Non-preemptible runs stay.
    let fixed = ClaimBuilder::new()
        .worker(WorkerSpec::new(4, 65536))
        .running(RunningSpec::on(0).cpu(4).queue("batch"))
        .pending(RunSpec::new().priority(1).cpu(4).queue("interactive"))
        .build();
    assert_eq!(decide_with("reclaim=true", &fixed).evict.len(), 0);

    // A queue above its own fair part does not reclaim either: interactive holds 32 of 48
    // cores, batch 16.
    let greedy = borrowed()
        .worker(WorkerSpec::new(32, 65536))
        .running(RunningSpec::on(2).cpu(32).queue("interactive"))
        .build();
    let decision = decide_with("reclaim=true", &greedy);
    assert_eq!(decision.evict.len(), 0, "{decision:?}");

    // Capped by what the host carries out for the claim.
    let capped = borrowed().max_evictions(1).build();
    let decision = decide_with("reclaim=true", &capped);
    assert_eq!((decision.assign.len(), decision.evict.len()), (0, 0));
}

#[test]
fn history_makes_a_queue_that_ran_lately_yield() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .queue(QueueSpec::new("a").ended_usage(500_000.0, 0.0, 0.0))
        .queue(QueueSpec::new("b").ended_usage(1_000.0, 0.0, 0.0))
        .pending(RunSpec::new().cpu(1).queue("a"))
        .pending(RunSpec::new().cpu(1).queue("b"))
        .max(1)
        .build();
    assert_eq!(queues_of(&claim, &decide_with("", &claim)), "a");
    assert_eq!(queues_of(&claim, &decide_with("history=true", &claim)), "b");
}

#[test]
fn history_counts_this_claims_assignments_so_one_claim_does_not_go_to_one_queue() {
    // a's history is 1% of what the 8 cores could give over the window (8 × 3600 / ln 2
    // core-seconds); each core this claim assigns is 1/8 of the cluster.
    let window = 8.0 * 3600.0 / std::f64::consts::LN_2;
    let claim = two_queues(
        ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 65536))
            .queue(QueueSpec::new("a").ended_usage(0.01 * window, 0.0, 0.0)),
        4,
    )
    .build();
    let decision = decide_with("history=true", &claim);
    assert_eq!(queues_of(&claim, &decision), "b a b a b a b a");
}

#[test]
fn vram_counts_only_where_the_cluster_has_gpus() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536).gpu(0, 16384, []))
        .running(RunningSpec::on(0).cpu(1).vram(0, 12288).queue("a"))
        .pending(RunSpec::new().cpu(1).queue("a"))
        .pending(RunSpec::new().cpu(1).queue("b"))
        .max(1)
        .build();
    // a holds 0.75 of the VRAM.
    assert_eq!(queues_of(&claim, &decide_with("", &claim)), "b");
}

#[test]
fn bad_values_are_refused_and_unknown_keys_ignored() {
    let claim = borrowed().build();
    assert!(decide::<FairShare>("reclaim=maybe", &claim).is_err());
    assert!(decide::<FairShare>("history=2", &claim).is_err());
    assert!(decide::<FairShare>("preempt=true, spread=shard, reclaim=on", &claim).is_ok());
}

#[test]
fn an_empty_claim_decides_nothing() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(0, 0))
        .queue(QueueSpec::new("idle").weight(3).quota_runs(0))
        .build();
    assert_eq!(decide_with("reclaim=true", &claim), Decision::default());
}
