use gyoza_plugin_sdk::testing::{ClaimBuilder, RunSpec, RunningSpec, WorkerSpec, decide, outcome};
use gyoza_plugin_sdk::{Claim, Decision, WaitCode};

use super::Affinity;

fn decide_with(config: &str, claim: &Claim) -> Decision {
    let decision = decide::<Affinity>(config, claim).expect("a decision");
    // Whatever it answers, the host carries out in full.
    let checked = outcome(claim, &decision);
    assert_eq!(checked.dropped, 0, "{decision:?}");
    assert_eq!(checked.evicted.len(), 0, "{decision:?}");
    decision
}

/// Two 8-core workers; worker 1 holds a run of image `b`.
fn two_images() -> ClaimBuilder {
    ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .worker(WorkerSpec::new(8, 65536))
        .running(RunningSpec::on(1).cpu(1).image("b"))
}

#[test]
fn a_run_of_an_image_another_worker_holds_waits_for_it_and_the_rest_go_here() {
    let claim = two_images()
        .pending(RunSpec::new().priority(9).cpu(1).image("b"))
        .pending(RunSpec::new().cpu(1).image("a"))
        .build();
    let decision = decide_with("", &claim);
    assert_eq!(decision.assign, [1]);
    assert_eq!(decision.deferred.len(), 1);
    assert_eq!(decision.deferred[0].run, 0);
    assert_eq!(decision.deferred[0].code, WaitCode::Placement);
    assert_eq!(
        decision.deferred[0].reason,
        "prefers a worker with image b cached; 1 such worker has room"
    );
    // Asked by worker 1, it is taken there, first (its score is higher).
    let there = two_images()
        .requester(1)
        .max(1)
        .pending(RunSpec::new().cpu(1).image("a"))
        .pending(RunSpec::new().cpu(1).image("b"))
        .build();
    assert_eq!(decide_with("", &there).assign, [1]);
}

#[test]
fn a_preferred_worker_without_room_does_not_hold_a_run_back() {
    // Worker 1 holds image b but is full.
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .worker(WorkerSpec::new(1, 65536))
        .running(RunningSpec::on(1).cpu(1).image("b"))
        .pending(RunSpec::new().cpu(1).image("b"))
        .build();
    assert_eq!(decide_with("", &claim).assign, [0]);
}

#[test]
fn a_run_that_waited_out_its_patience_takes_any_worker() {
    let waited = |ms| {
        two_images()
            .pending(RunSpec::new().cpu(1).image("b").waited_ms(ms))
            .build()
    };
    assert_eq!(decide_with("", &waited(30_000)).assign, [0]);
    assert_eq!(decide_with("", &waited(29_999)).assign, []);
    assert_eq!(decide_with("patience_ms=0", &waited(0)).assign, [0]);
    assert_eq!(decide_with("patience_ms=60000", &waited(30_000)).assign, []);
}

#[test]
fn a_definition_counts_as_its_image() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .worker(WorkerSpec::new(8, 65536))
        .running(RunningSpec::on(1).cpu(1).definition("train").image("x:1"))
        .pending(RunSpec::new().cpu(1).definition("train").image("x:2"))
        .build();
    assert_eq!(decide_with("", &claim).assign, []);
    assert_eq!(decide_with("image_weight=0", &claim).assign, [0]);
}

#[test]
fn locality_here_ranks_a_run_first_and_what_is_taken_counts_at_once() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536))
        .running(RunningSpec::on(0).cpu(1).image("b"))
        .pending(RunSpec::new().priority(9).cpu(1).image("a"))
        .pending(RunSpec::new().cpu(1).image("b"))
        .pending(RunSpec::new().cpu(1).image("c"))
        .pending(RunSpec::new().cpu(1).image("a"))
        .build();
    // b (held here) first; then a by priority, then the other a (now held), then c.
    assert_eq!(decide_with("", &claim).assign, [1, 0, 3, 2]);
}

#[test]
fn spread_puts_runs_of_one_value_on_different_workers_while_others_have_room() {
    let cluster = || {
        ClaimBuilder::new()
            .worker(WorkerSpec::new(8, 65536))
            .worker(WorkerSpec::new(8, 65536))
            .worker(WorkerSpec::new(8, 65536))
    };
    let mut claim = cluster();
    // Shards of one job share its image: spreading them outweighs the image taken here.
    for _ in 0..3 {
        claim = claim.pending(RunSpec::new().cpu(1).image("job").label("shard", "7"));
    }
    let claim = claim
        .pending(RunSpec::new().cpu(1).label("shard", "8"))
        .build();
    let decision = decide_with("spread=shard", &claim);
    // One of shard 7 here, shard 8 too; the other two shard-7 runs wait for the two others.
    assert_eq!(decision.assign, [0, 3]);
    let placement: Vec<_> = decision
        .deferred
        .iter()
        .map(|d| (d.run, d.code, d.reason.as_str()))
        .collect();
    assert_eq!(
        placement,
        [
            (
                1,
                WaitCode::Placement,
                "spreads shard=7: this worker holds 1 such run; 2 workers with room hold fewer"
            ),
            (
                2,
                WaitCode::Placement,
                "spreads shard=7: this worker holds 1 such run; 2 workers with room hold fewer"
            ),
        ]
    );
    // Without the key, they all go here.
    assert_eq!(decide_with("", &claim).assign, [0, 1, 2, 3]);

    // When every other worker holds one already, the requester takes a second.
    let full = cluster()
        .running(RunningSpec::on(1).cpu(1).label("shard", "7"))
        .running(RunningSpec::on(2).cpu(1).label("shard", "7"))
        .pending(RunSpec::new().cpu(1).label("shard", "7"))
        .pending(RunSpec::new().cpu(1).label("shard", "7"))
        .build();
    assert_eq!(decide_with("spread=shard", &full).assign, [0, 1]);
}

#[test]
fn preferred_tags_count_worker_and_gpu_tags() {
    let decision = decide_with("", &claim_for(0));
    assert_eq!(decision.assign, [1, 2]);
    assert_eq!(
        decision.deferred[0].reason,
        "prefers tags ssd,a100; 1 worker with room has more of them"
    );
    // Worker 1 has both: the run preferring both goes first there.
    assert_eq!(decide_with("", &claim_for(1)).assign, [0, 1, 2]);
}

/// Worker 0 has tag ssd, worker 1 ssd and a GPU tagged a100; `requester` asks.
fn claim_for(requester: usize) -> Claim {
    ClaimBuilder::new()
        .worker(WorkerSpec::new(8, 65536).tags(["ssd"]))
        .worker(
            WorkerSpec::new(8, 65536)
                .tags(["ssd"])
                .gpu(0, 8192, ["a100"]),
        )
        .requester(requester)
        .pending(RunSpec::new().cpu(1).label("prefer-tags", "ssd, a100"))
        .pending(RunSpec::new().cpu(1).label("prefer-tags", "ssd"))
        .pending(RunSpec::new().cpu(1))
        .build()
}

#[test]
fn runs_that_do_not_fit_wait_with_the_capacity_reason_and_max_is_kept() {
    let claim = ClaimBuilder::new()
        .worker(WorkerSpec::new(2, 65536))
        .max(2)
        .pending(RunSpec::new().priority(9).cpu(4))
        .pending(RunSpec::new().cpu(1))
        .pending(RunSpec::new().cpu(1))
        .pending(RunSpec::new().cpu(1))
        .build();
    let decision = decide_with("", &claim);
    assert_eq!(decision.assign, [1, 2]);
    assert_eq!(decision.deferred[0].reason, "needs 4 CPU cores; 2 free");
}

#[test]
fn bad_values_are_refused_and_weights_at_their_limit_do_not_overflow() {
    let claim = two_images().build();
    for bad in [
        "image_weight=-1",
        "tag_weight=1000001",
        "spread_weight=x",
        "spread=",
        "patience_ms=soon",
    ] {
        assert!(decide::<Affinity>(bad, &claim).is_err(), "{bad}");
    }
    let mut heavy = two_images();
    for _ in 0..50 {
        heavy = heavy.running(RunningSpec::on(0).label("k", "v").label("prefer-tags", "x"));
    }
    let heavy = heavy
        .pending(
            RunSpec::new()
                .image("b")
                .label("k", "v")
                .label("prefer-tags", "x,x,x"),
        )
        .build();
    let config = "image_weight=1000000, spread=k, spread_weight=1000000, tag_weight=1000000";
    assert_eq!(decide_with(config, &heavy).assign, []);
    assert!(decide::<Affinity>("backfill=true, reclaim=true", &claim).is_ok());
}
