//! Preemption through `gyoza:scheduler@1.0.0`, with real wasm strategies behind a real router:
//! `priority preempt=true` preempts the requester's preemptible runs of lower priority for a
//! run that does not fit otherwise; the preempted attempt FAILS with why and the run is
//! requeued outside its retry budget; its worker is told to stop it; the host's caps (per
//! claim, per minute, per run) hold; a lying 1.0 plugin is corrected and counted; plugins of
//! 0.1.0, 0.2.0 and 1.0.0 serve side by side.

pub mod common;

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use gyoza_host::service::{PreemptionLimits, Service};
use gyoza_host::strategy::{FailPolicy, StrategySettings, scenario};
use serde_json::{Value, json};

const BUILT: &str = env!("GYOZA_PLUGINS_OUT");

fn fixture(name: &str) -> PathBuf {
    Path::new(BUILT).join(format!("gyoza_fixture_{name}.wasm"))
}

/// A server whose active strategy is `strategy` (a built-in, or a plugin among `plugins`,
/// dropped into its plugins directory as (file, name)), with `config`, its service set up by
/// `configure`; and the plugins directory's guard.
async fn server(
    strategy: &str,
    config: &str,
    plugins: &[(PathBuf, &str)],
    configure: impl FnOnce(&mut Service),
) -> (common::Api, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (source, name) in plugins {
        std::fs::copy(source, dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    let settings = StrategySettings {
        plugins_dir: Some(dir.path().to_path_buf()),
        cache_dir: Some(common::strategy_cache()),
        active: strategy.into(),
        config: config.into(),
        fail_policy: FailPolicy::Fallback,
        ..StrategySettings::builtin("priority")
    };
    let host = common::start_strategies(settings).await;
    (common::Api::configured(host, 1 << 20, configure).await, dir)
}

async fn priority_preempting(configure: impl FnOnce(&mut Service)) -> common::Api {
    server("priority", "preempt=true", &[], configure).await.0
}

/// A run of `priority` needing `cpu` cores; preemptible or not; one attempt allowed.
async fn run(api: &common::Api, priority: i64, cpu: u32, preemptible: bool) -> String {
    let run = api
        .create_run(json!({
            "image": "x",
            "priority": priority,
            "preemptible": preemptible,
            "constraints": {"cpu": cpu},
            "retry_policy": {"max_attempts": 1},
        }))
        .await;
    run["id"].as_str().unwrap().to_owned()
}

async fn get(api: &common::Api, id: &str) -> Value {
    api.ok("GET", &format!("/runs/{id}"), None).await
}

async fn strategy(api: &common::Api, name: &str) -> Value {
    let list = api.ok("GET", "/strategies", None).await;
    list["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no strategy {name} in {list}"))
}

/// Whether `run` was preempted for `by` (priority `priority`) via `strategy`: its first
/// attempt FAILED saying so and it waits in a second attempt.
fn preempted(run: &Value, by: &str, priority: i64, strategy: &str) -> bool {
    let first = &run["attempts"][0];
    run["state"] == "PENDING"
        && run["current_attempt"] == 2
        && first["state"] == "FAILED"
        && first["preempted"] == true
        && first["execution_summary"]["error_message"]
            == format!("preempted by {by} (priority {priority}) via {strategy}").as_str()
}

#[tokio::test]
async fn priority_preempts_the_fewest_low_priority_runs_and_their_worker_is_told_to_stop() {
    let api = priority_preempting(|_| {}).await;
    api.heartbeat("w", 4, 8192).await;
    let mut low = Vec::new();
    for _ in 0..3 {
        low.push(run(&api, 1, 1, true).await);
    }
    let fixed = run(&api, 1, 1, false).await;
    assert_eq!(api.claim("w", 10).await.len(), 4, "the worker is full");
    for id in &low[..2] {
        api.event_ok(
            id,
            json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w"}, "attempt": 1}),
        )
        .await;
    }

    let urgent = run(&api, 9, 2, false).await;
    assert_eq!(api.claim("w", 10).await, std::slice::from_ref(&urgent));

    let mut victims = Vec::new();
    for id in &low {
        let shown = get(&api, id).await;
        if preempted(&shown, &urgent, 9, "priority") {
            // Requeued although its retry policy allows one attempt: outside the budget.
            assert_eq!(shown["attempts"][1]["state"], "PENDING", "{shown}");
            victims.push(id.clone());
        } else {
            assert!(
                matches!(shown["state"].as_str(), Some("ASSIGNED" | "RUNNING")),
                "{shown}"
            );
        }
    }
    assert_eq!(victims.len(), 2, "two cores freed by two runs, no more");
    assert_eq!(
        get(&api, &fixed).await["state"],
        "ASSIGNED",
        "not preemptible"
    );
    let priority = strategy(&api, "priority").await;
    assert_eq!(
        (
            priority["evictions"].as_u64(),
            priority["evictions_refused"].as_u64()
        ),
        (Some(2), Some(0)),
        "{priority}"
    );
    let (_, metrics) = api.text("GET", "/metrics", None).await;
    assert!(
        metrics.contains("gyoza_strategy_evictions{strategy=\"priority\"} 2"),
        "{metrics}"
    );

    // The worker, still running the old attempts, is told to stop them, and their reports
    // are refused.
    let running_ops: Vec<Value> = low
        .iter()
        .chain([&fixed, &urgent])
        .map(|id| json!({"id": id, "image": "x", "attempt": 1}))
        .collect();
    let answer = api
        .ok(
            "POST",
            "/workers/heartbeat",
            Some(json!({
                "worker_id": "w",
                "resources": {"cpu_cores": 4, "ram_mb": 8192},
                "running_ops": running_ops,
            })),
        )
        .await;
    let mut stop: Vec<String> = answer["stop"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    stop.sort();
    victims.sort();
    assert_eq!(stop, victims, "{answer}");
    let (status, body) = api
        .event(
            &victims[0],
            json!({"type": "COMPLETED", "msg": "", "payload": {}, "attempt": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn nothing_is_preempted_for_an_equal_priority_or_beyond_what_frees_enough() {
    let api = priority_preempting(|_| {}).await;
    api.heartbeat("w", 2, 8192).await;
    let same = run(&api, 5, 1, true).await;
    let fixed = run(&api, 1, 1, false).await;
    assert_eq!(api.claim("w", 10).await.len(), 2);
    // Same priority as the preemptible run; and the only lower one is not preemptible.
    let peer = run(&api, 5, 1, false).await;
    assert!(api.claim("w", 10).await.is_empty());
    for id in [&same, &fixed] {
        assert_eq!(get(&api, id).await["current_attempt"], 1);
    }
    assert_eq!(get(&api, &peer).await["state"], "PENDING");
    assert_eq!(strategy(&api, "priority").await["evictions"], 0);
}

#[tokio::test]
async fn the_hosts_caps_per_claim_per_minute_and_per_run_hold() {
    // Per claim: two victims needed, one allowed: none is preempted (all or nothing).
    let api = priority_preempting(|service| {
        service.preemption = PreemptionLimits {
            per_claim: 1,
            ..PreemptionLimits::default()
        };
    })
    .await;
    api.heartbeat("w", 2, 8192).await;
    let low = [run(&api, 1, 1, true).await, run(&api, 1, 1, true).await];
    assert_eq!(api.claim("w", 10).await.len(), 2);
    let big = run(&api, 9, 2, false).await;
    assert!(api.claim("w", 10).await.is_empty());
    for id in &low {
        assert_eq!(get(&api, id).await["current_attempt"], 1, "not preempted");
    }
    assert_eq!(get(&api, &big).await["state"], "PENDING");

    // Per minute: one preemption, then the budget is spent until a minute has passed.
    let api = priority_preempting(|service| {
        service.preemption = PreemptionLimits {
            per_minute: 1,
            ..PreemptionLimits::default()
        };
    })
    .await;
    api.heartbeat("w", 2, 8192).await;
    let low = [run(&api, 1, 1, true).await, run(&api, 1, 1, true).await];
    assert_eq!(api.claim("w", 10).await.len(), 2);
    let first = run(&api, 9, 1, false).await;
    assert_eq!(api.claim("w", 10).await, [first]);
    let second = run(&api, 9, 1, false).await;
    assert!(
        api.claim("w", 10).await.is_empty(),
        "the minute's budget is spent"
    );
    assert_eq!(get(&api, &second).await["state"], "PENDING");
    let preempted_count = {
        let mut n = 0;
        for id in &low {
            n += usize::from(get(&api, id).await["current_attempt"] == 2);
        }
        n
    };
    assert_eq!(preempted_count, 1);

    // Per run: a run preempted `max_preemptions` times is preempted no more.
    let api = priority_preempting(|service| {
        service.preemption = PreemptionLimits {
            max_preemptions: 1,
            ..PreemptionLimits::default()
        };
    })
    .await;
    api.heartbeat("w", 1, 8192).await;
    let victim = run(&api, 1, 1, true).await;
    assert_eq!(api.claim("w", 10).await, std::slice::from_ref(&victim));
    let first = run(&api, 9, 1, false).await;
    assert_eq!(api.claim("w", 10).await, std::slice::from_ref(&first));
    assert!(preempted(&get(&api, &victim).await, &first, 9, "priority"));
    api.start_and_complete(&first, "w", 1).await;
    assert_eq!(
        api.claim("w", 10).await,
        std::slice::from_ref(&victim),
        "its second attempt"
    );
    let second = run(&api, 9, 1, false).await;
    assert!(api.claim("w", 10).await.is_empty());
    let shown = get(&api, &victim).await;
    assert_eq!(
        (shown["state"].as_str(), shown["current_attempt"].as_u64()),
        (Some("ASSIGNED"), Some(2)),
        "{shown}"
    );
    assert_eq!(get(&api, &second).await["state"], "PENDING");
}

#[tokio::test]
async fn a_lying_plugin_is_corrected_counted_and_never_breaks_a_claim() {
    // The held runs are placed by priority (no preemption); then the liar decides.
    let (api, _plugins) = server("priority", "", &[(fixture("evict_liar"), "liar")], |_| {}).await;
    api.heartbeat("w", 3, 8192).await;
    api.heartbeat("v", 1, 8192).await;
    // On w: one run the rules let go, one not preemptible, one of a higher priority than
    // the run the liar names; on v: a preemptible run on another worker.
    let mut held = Vec::new();
    for (priority, preemptible) in [(1, true), (1, false), (9, true)] {
        let id = run(&api, priority, 1, preemptible).await;
        assert_eq!(
            api.claim("w", 1).await,
            std::slice::from_ref(&id),
            "claimed one by one"
        );
        held.push(id);
    }
    let [legit, fixed, high] = [&held[0], &held[1], &held[2]];
    let elsewhere = run(&api, 1, 1, true).await;
    assert_eq!(api.claim("v", 1).await, std::slice::from_ref(&elsewhere));

    api.ok("PUT", "/strategies/active", Some(json!({"name": "liar"})))
        .await;
    let wanted = run(&api, 5, 1, false).await;
    assert_eq!(
        api.claim("w", 10).await,
        std::slice::from_ref(&wanted),
        "the one allowed preemption makes room"
    );
    assert!(preempted(&get(&api, legit).await, &wanted, 5, "liar"));
    for id in [fixed, high] {
        assert_eq!(get(&api, id).await["state"], "ASSIGNED");
    }
    assert_eq!(get(&api, &elsewhere).await["state"], "ASSIGNED");
    let liar = strategy(&api, "liar").await;
    assert_eq!(liar["failures"], 0, "{liar}");
    assert_eq!(liar["evictions"], 1, "{liar}");
    // An unknown running run, the non-preemptible one, the higher-priority one, the one on
    // another worker, one for an unknown pending run and a repeat.
    assert_eq!(liar["evictions_refused"], 6, "{liar}");
    let (_, metrics) = api.text("GET", "/metrics", None).await;
    assert!(
        metrics.contains("gyoza_strategy_evictions_refused{strategy=\"liar\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn plugins_of_0_1_0_0_2_0_and_1_0_0_serve_side_by_side() {
    let (api, _plugins) = server(
        "priority",
        "",
        &[
            (fixture("bin_packing_0_1_0"), "v01"),
            (fixture("priority_0_2_0"), "v02"),
        ],
        |_| {},
    )
    .await;
    for (name, version) in [("v01", "0.1.0"), ("v02", "0.2.0"), ("priority", "1.0.0")] {
        assert_eq!(strategy(&api, name).await["wit_version"], version);
    }
    api.heartbeat("w", 4, 8192).await;
    for name in ["v01", "v02", "priority"] {
        api.ok("PUT", "/strategies/active", Some(json!({"name": name})))
            .await;
        let a = run(&api, 5, 2, false).await;
        let b = run(&api, 1, 2, false).await;
        let mut claimed = api.claim("w", 10).await;
        claimed.sort();
        let mut expected = vec![a.clone(), b.clone()];
        expected.sort();
        assert_eq!(claimed, expected, "{name}");
        for id in [a, b] {
            api.start_and_complete(&id, "w", 1).await;
        }
        let shown = strategy(&api, name).await;
        assert_eq!(
            (shown["calls"].as_u64(), shown["failures"].as_u64()),
            (Some(1), Some(0)),
            "{shown}"
        );
    }

    // The 0.2.0 priority and the 1.0.0 built-in decide every requester of a mixed cluster
    // alike.
    let old = fixture("priority_0_2_0");
    let new = Path::new(BUILT).join("gyoza_strategy_priority.wasm");
    let (mut assigned, mut explained) = (0, 0);
    for requester in 0..6 {
        let scenario = mixed(requester);
        let by_old = scenario::simulate(&old, &scenario).unwrap();
        let by_new = scenario::simulate(&new, &scenario).unwrap();
        assert_eq!((by_old.failure, by_new.failure), (None, None));
        assert_eq!(by_old.assigned, by_new.assigned, "requester w{requester}");
        assert_eq!(by_old.reasons, by_new.reasons, "requester w{requester}");
        assigned += by_new.assigned.len();
        explained += by_new.reasons.len();
    }
    assert!(
        assigned >= 6 && explained >= 6,
        "{assigned} assigned, {explained} reasons"
    );
}

/// Six workers of mixed sizes, some busy, and 40 pending runs of mixed needs.
fn mixed(requester: usize) -> scenario::Scenario {
    let workers: Vec<Value> = (0..6)
        .map(|i| {
            json!({
                "id": format!("w{i}"),
                "resources": {"cpu_cores": 2 << (i % 3), "ram_mb": 4096 << (i % 3),
                              "gpus": if i % 2 == 0 { json!([{"id": 0, "vram_mb": 8192}]) } else { json!([]) }},
                "running": if i % 3 == 0 { json!([{"cpu": 1, "ram_mb": 1024}]) } else { json!([]) },
            })
        })
        .collect();
    let pending: Vec<Value> = (0..40)
        .map(|i| {
            json!({
                "id": format!("r{i}"),
                "priority": i % 4,
                "constraints": {"cpu": 1 + i % 5, "ram_mb": 512 * (1 + i % 7),
                                "vram_mb": if i % 6 == 0 { json!(4096) } else { Value::Null }},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "requester": format!("w{requester}"), "max": 5, "calls": 1,
        "workers": workers, "pending": pending,
    }))
    .unwrap()
}

/// `priority preempt=true, preempt_elsewhere=true` on a server that preempts across
/// workers (or not), with reservations of `reservation_s`.
async fn preempting_elsewhere(across_workers: bool) -> common::Api {
    server(
        "priority",
        "preempt=true, preempt_elsewhere=true",
        &[],
        move |service| {
            service.preemption = PreemptionLimits {
                across_workers,
                reservation: chrono::Duration::seconds(30),
                ..PreemptionLimits::default()
            };
        },
    )
    .await
    .0
}

/// Worker `big` (4 cores) full of two preemptible 2-core runs of priority 1; worker `small`
/// (1 core, free); a 4-core run of priority 9 that fits only `big` once both are preempted.
/// The two low runs, and the urgent one.
async fn big_is_busy(api: &common::Api) -> (Vec<String>, String) {
    api.heartbeat("big", 4, 8192).await;
    let low = vec![run(api, 1, 2, true).await, run(api, 1, 2, true).await];
    assert_eq!(api.claim("big", 10).await.len(), 2);
    api.heartbeat("small", 1, 8192).await;
    let urgent = run(api, 9, 4, false).await;
    (low, urgent)
}

fn reservations(metrics: &str, outcome: &str) -> u64 {
    let line = format!("gyoza_reservations_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
}

async fn metrics(api: &common::Api) -> String {
    api.text("GET", "/metrics", None).await.1
}

#[tokio::test]
async fn a_run_that_fits_only_another_worker_preempts_there_and_that_worker_gets_it_first() {
    let api = preempting_elsewhere(true).await;
    let (low, urgent) = big_is_busy(&api).await;

    // small cannot take the urgent run; its claim preempts both runs on big for it.
    assert!(api.claim("small", 10).await.is_empty());
    for id in &low {
        assert!(
            preempted(&get(&api, id).await, &urgent, 9, "priority"),
            "{id}"
        );
    }
    assert_eq!(
        get(&api, &urgent).await["scheduling"]["reason"],
        "preempting 2 runs on another worker to make room"
    );
    assert_eq!(reservations(&metrics(&api).await, "made"), 1);

    // Another worker with room is not given the kept run (it may take the requeued ones).
    api.heartbeat("other", 8, 8192).await;
    let taken = api.claim("other", 10).await;
    assert!(!taken.contains(&urgent), "{taken:?}");
    // big gets it first, whatever the strategy prefers: here a run of a higher priority
    // still, which would take big's 4 cores.
    let vip = run(&api, 10, 4, false).await;
    assert_eq!(api.claim("big", 10).await, std::slice::from_ref(&urgent));
    assert_eq!(get(&api, &vip).await["state"], "PENDING");
    let text = metrics(&api).await;
    assert_eq!(reservations(&text, "used"), 1);
    assert_eq!(reservations(&text, "expired"), 0);
}

#[tokio::test]
async fn a_kept_run_goes_back_to_every_worker_when_its_reservation_expires() {
    let api = preempting_elsewhere(true).await;
    let (_low, urgent) = big_is_busy(&api).await;
    assert!(api.claim("small", 10).await.is_empty());
    api.heartbeat("other", 8, 8192).await;
    // Preempted runs requeued take other's room meanwhile: give it more.
    api.heartbeat("roomy", 16, 65536).await;
    api.claim("other", 10).await;
    assert!(!api.claim("roomy", 10).await.contains(&urgent));
    // 31 s later (every worker heartbeats meanwhile), roomy may take it.
    api.advance(31);
    for (worker, cpu, ram) in [
        ("big", 4, 8192),
        ("small", 1, 8192),
        ("other", 8, 8192),
        ("roomy", 16, 65536),
    ] {
        api.heartbeat(worker, cpu, ram).await;
    }
    assert!(api.claim("roomy", 10).await.contains(&urgent));
    assert_eq!(reservations(&metrics(&api).await, "expired"), 1);
}

#[tokio::test]
async fn without_preemption_across_workers_nothing_is_preempted_elsewhere() {
    let api = preempting_elsewhere(false).await;
    let (low, urgent) = big_is_busy(&api).await;
    assert!(api.claim("small", 10).await.is_empty());
    for id in &low {
        assert_eq!(get(&api, id).await["current_attempt"], 1, "not preempted");
    }
    let priority = strategy(&api, "priority").await;
    assert_eq!(priority["evictions"], 0);
    assert_eq!(priority["evictions_refused"], 2);
    assert_eq!(get(&api, &urgent).await["state"], "PENDING");
    assert_eq!(reservations(&metrics(&api).await, "made"), 0);
}

#[tokio::test]
async fn preemption_elsewhere_is_refused_for_a_run_that_worker_could_not_take() {
    // The urgent run requires a tag that small has and big has not: the strategy (which is
    // not shown other workers' fit for a run's tags) asks to preempt on big; the host
    // refuses, and nothing is preempted.
    let api = preempting_elsewhere(true).await;
    api.heartbeat("big", 4, 8192).await;
    let low = [run(&api, 1, 2, true).await, run(&api, 1, 2, true).await];
    assert_eq!(api.claim("big", 10).await.len(), 2);
    api.ok(
        "POST",
        "/workers/heartbeat",
        Some(json!({
            "worker_id": "small", "tags": ["gpu-free"],
            "resources": {"cpu_cores": 1, "ram_mb": 8192, "gpus": []},
        })),
    )
    .await;
    let tagged = api
        .create_run(json!({
            "image": "x", "priority": 9, "preemptible": false,
            "constraints": {"cpu": 4, "tags": ["gpu-free"]},
        }))
        .await;
    let tagged = tagged["id"].as_str().unwrap().to_owned();
    assert!(api.claim("small", 10).await.is_empty());
    for id in &low {
        assert_eq!(get(&api, id).await["current_attempt"], 1, "not preempted");
    }
    assert_eq!(strategy(&api, "priority").await["evictions_refused"], 2);
    assert_eq!(get(&api, &tagged).await["state"], "PENDING");
}
