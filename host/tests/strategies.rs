//! Scheduling strategies as wasm components, through the API: placement rules of each
//! built-in strategy, `/strategies`, pending reasons, hot reload, the template, and the bad
//! plugins (loop, 1 GiB allocation, trap, lies) contained while claims keep being answered.
//!
//! Every plugin here is a real component built from `plugins/` and `examples/` by
//! `host/build.rs`; nothing is mocked.

pub mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::KEY;
use gyoza_host::strategy::{FailPolicy, StrategySettings, scenario};
use serde_json::{Value, json};

const BUILT: &str = env!("GYOZA_PLUGINS_OUT");

fn fixture(name: &str) -> PathBuf {
    Path::new(BUILT).join(format!("gyoza_fixture_{name}.wasm"))
}

fn builtin(name: &str) -> PathBuf {
    Path::new(BUILT).join(format!("gyoza_strategy_{name}.wasm"))
}

/// The common router harness, with the strategy host behind it and its plugins directory.
struct Api {
    router: common::Api,
    host: gyoza_host::strategy::StrategyHost,
    plugins: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Api {
    type Target = common::Api;

    fn deref(&self) -> &common::Api {
        &self.router
    }
}

struct Options {
    strategy: &'static str,
    config: &'static str,
    fail_policy: FailPolicy,
    plugins: Vec<(PathBuf, &'static str)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            strategy: "bin-packing",
            config: "",
            fail_policy: FailPolicy::Fallback,
            plugins: Vec::new(),
        }
    }
}

impl Api {
    async fn new(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for (source, name) in &options.plugins {
            std::fs::copy(source, plugins.join(format!("{name}.wasm"))).unwrap();
        }
        let settings = StrategySettings {
            plugins_dir: Some(plugins.clone()),
            // Shared across tests: each plugin is compiled once per test run.
            cache_dir: Some(common::strategy_cache()),
            active: options.strategy.into(),
            config: options.config.into(),
            fail_policy: options.fail_policy,
            ..StrategySettings::builtin("bin-packing")
        };
        let host = common::start_strategies(settings).await;
        let router = common::Api::with_strategies(host.clone(), 1 << 20).await;
        Self {
            router,
            host,
            plugins,
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, uri: &str, body: Option<String>) -> (StatusCode, Value) {
        self.router.raw(method, uri, Some(KEY), body).await
    }

    /// A worker with `cpu` cores, `ram` MB and GPUs of these VRAM sizes.
    async fn worker(&self, id: &str, cpu: u32, ram: u64, gpus: &[u64]) {
        self.router.heartbeat_with_gpus(id, cpu, ram, gpus).await;
    }

    async fn run(&self, priority: i64, constraints: Value) -> String {
        let run = self
            .ok(
                "POST",
                "/runs",
                Some(json!({"image": "x", "priority": priority, "constraints": constraints})),
            )
            .await;
        run["id"].as_str().unwrap().to_owned()
    }

    async fn activate(&self, name: &str) {
        self.ok("PUT", "/strategies/active", Some(json!({"name": name})))
            .await;
    }

    async fn strategy(&self, name: &str) -> Value {
        let list = self.ok("GET", "/strategies", None).await;
        list["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn reason(&self, run: &str) -> Value {
        self.ok("GET", &format!("/runs/{run}"), None).await["scheduling"]["reason"].clone()
    }
}

#[tokio::test]
async fn builtins_are_listed_and_one_can_be_activated() {
    let api = Api::new(Options::default()).await;
    let list = api.ok("GET", "/strategies", None).await;
    assert_eq!(list["active"], "bin-packing", "the default strategy");
    let names: Vec<&str> = list["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "affinity",
            "bin-packing",
            "direct",
            "fair-share",
            "priority"
        ]
    );
    for s in list["strategies"].as_array().unwrap() {
        assert_eq!(
            s["wit_version"], "1.0.0",
            "the built-ins speak the newest version"
        );
        assert_eq!(s["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(s["active"], s["name"] == "bin-packing");
    }

    api.activate("direct").await;
    assert_eq!(api.strategy("direct").await["active"], true);

    let (status, body) = api
        .call(
            "PUT",
            "/strategies/active",
            Some(r#"{"name": "nope"}"#.into()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown strategy 'nope'")
    );
    let (status, _) = api
        .call("PUT", "/strategies/active", Some("{not json".into()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .call("PUT", "/strategies/active", Some(r#"{"name": " "}"#.into()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.host.active_name(),
        "direct",
        "refused changes change nothing"
    );
}

#[tokio::test]
async fn direct_hands_out_the_first_pending_run_only() {
    let api = Api::new(Options {
        strategy: "direct",
        ..Options::default()
    })
    .await;
    api.worker("w", 8, 8192, &[]).await;
    let low = api.run(1, json!({"cpu": 1})).await;
    let high = api.run(9, json!({"cpu": 1})).await;
    assert_eq!(
        api.claim("w", 10).await,
        [high],
        "one run, highest priority"
    );
    assert_eq!(api.claim("w", 10).await, [low]);
    let huge = api.run(5, json!({"cpu": 64})).await;
    assert!(api.claim("w", 10).await.is_empty());
    assert_eq!(api.reason(&huge).await, "needs 64 CPU cores; 6 free");
}

#[tokio::test]
async fn priority_is_strict_and_fills_free_capacity() {
    let api = Api::new(Options {
        strategy: "priority",
        ..Options::default()
    })
    .await;
    api.worker("w", 4, 8192, &[]).await;
    let first = api.run(9, json!({"cpu": 2})).await;
    let second = api.run(9, json!({"cpu": 1})).await;
    let blocked = api.run(5, json!({"cpu": 4})).await;
    let small = api.run(1, json!({"cpu": 1})).await;
    assert_eq!(
        api.claim("w", 10).await,
        [first, second],
        "FIFO within a priority; the 4-core run stops the claim: nothing jumps it"
    );
    assert_eq!(api.reason(&blocked).await, "needs 4 CPU cores; 1 free");
    assert!(api.reason(&small).await.is_null());
}

#[tokio::test]
async fn priority_backfills_when_configured() {
    let api = Api::new(Options {
        strategy: "priority",
        config: "backfill=true",
        ..Options::default()
    })
    .await;
    api.worker("w", 4, 8192, &[]).await;
    let first = api.run(9, json!({"cpu": 2})).await;
    let big = api.run(5, json!({"cpu": 4})).await;
    let small = api.run(1, json!({"cpu": 1, "ram_mb": 1024})).await;
    assert_eq!(
        api.claim("w", 10).await,
        [first, small],
        "smaller runs fill in"
    );
    assert_eq!(api.reason(&big).await, "needs 4 CPU cores; 2 free");
}

#[tokio::test]
async fn bin_packing_gives_a_run_to_its_tightest_worker() {
    let api = Api::new(Options::default()).await;
    api.worker("small", 2, 4096, &[]).await;
    api.worker("large", 16, 65536, &[]).await;
    let fits_small = api.run(5, json!({"cpu": 2, "ram_mb": 2048})).await;
    let needs_large = api.run(1, json!({"cpu": 8, "ram_mb": 16384})).await;

    assert_eq!(
        api.claim("large", 10).await,
        [needs_large],
        "the small run is left for the small worker"
    );
    assert_eq!(
        api.reason(&fits_small).await,
        "another active worker is a tighter fit"
    );
    assert_eq!(api.claim("small", 10).await, [fits_small]);
}

#[tokio::test]
async fn bin_packing_places_vram_on_one_gpu() {
    let api = Api::new(Options::default()).await;
    // 16 GB of VRAM in all, but no single GPU with more than 8 GB.
    api.worker("split", 8, 32768, &[8192, 8192]).await;
    let big = api.run(5, json!({"vram_mb": 16384})).await;
    assert!(api.claim("split", 10).await.is_empty());
    assert_eq!(
        api.reason(&big).await,
        "no active worker fits: needs 16384 MB VRAM; largest free GPU has 8192 MB"
    );

    api.worker("one-big-gpu", 8, 32768, &[32768]).await;
    assert_eq!(api.claim("one-big-gpu", 10).await, [big]);

    // The big GPU now has 16 GB free, an 8 GB GPU has 8 GB: a 6 GB run fits the latter
    // more tightly.
    let small = api.run(1, json!({"vram_mb": 6144})).await;
    assert!(api.claim("one-big-gpu", 10).await.is_empty());
    assert_eq!(api.claim("split", 10).await, [small]);

    // What a GPU already holds counts: 32 GB in all, 16 GB held.
    let another = api.run(5, json!({"vram_mb": 20000})).await;
    assert!(api.claim("one-big-gpu", 10).await.is_empty());
    assert_eq!(
        api.reason(&another).await,
        "no active worker fits: needs 20000 MB VRAM; largest free GPU has 16384 MB"
    );
}

/// A cluster and a queue with a bit of everything: workers of three sizes, none, one or two
/// GPUs, some busy; runs with and without VRAM, some too big for any worker.
fn mixed_scenario(requester: &str) -> scenario::Scenario {
    let workers = (0..12)
        .map(|i| {
            let gpus: Vec<Value> = match i % 4 {
                0 => vec![json!({"id": 0, "vram_mb": 8192}), json!({"id": 1, "vram_mb": 8192})],
                1 => vec![json!({"id": 0, "vram_mb": 24576})],
                _ => vec![],
            };
            let running: Vec<Value> = (0..i % 3)
                .map(|k| json!({"cpu": 1 + k, "ram_mb": 1024, "vram_mb": if i % 4 == 0 { 2048 } else { 0 }}))
                .collect();
            json!({
                "id": format!("w{i}"),
                "resources": {"cpu_cores": 4 << (i % 3), "ram_mb": 8192 << (i % 3), "gpus": gpus},
                "running": running,
            })
        })
        .collect::<Vec<_>>();
    let pending = (0..120)
        .map(|i| {
            let vram = if i % 5 == 0 { 2048 * (1 + i % 7) } else { 0 };
            json!({
                "id": format!("r{i}"),
                "priority": i % 3,
                "constraints": {"cpu": 1 + i % 6, "ram_mb": 512 * (1 + i % 20), "vram_mb": vram},
            })
        })
        .collect::<Vec<_>>();
    serde_json::from_value(json!({
        "requester": requester, "max": 6, "calls": 1, "workers": workers, "pending": pending,
    }))
    .unwrap()
}

#[test]
fn a_0_1_0_plugin_loads_and_places_exactly_as_the_1_0_0_builtin() {
    let old = fixture("bin_packing_0_1_0");
    let new = builtin("bin_packing");
    assert_eq!(
        gyoza_host::strategy::check_file(&old).unwrap().wit_version,
        "0.1.0"
    );
    assert_eq!(
        gyoza_host::strategy::check_file(&new).unwrap().wit_version,
        "1.0.0"
    );
    let (mut assigned, mut explained) = (0, 0);
    for requester in 0..12 {
        let scenario = mixed_scenario(&format!("w{requester}"));
        let by_old = scenario::simulate(&old, &scenario).unwrap();
        let by_new = scenario::simulate(&new, &scenario).unwrap();
        assert_eq!(by_old.wit_version, "0.1.0");
        assert_eq!(by_new.wit_version, "1.0.0");
        assert_eq!(by_new.failure, None);
        assert_eq!(by_old.failure, None);
        assert_eq!(by_old.assigned, by_new.assigned, "requester w{requester}");
        assert_eq!(by_old.reasons, by_new.reasons, "requester w{requester}");
        assert_eq!((by_old.dropped, by_new.dropped), (0, 0));
        assigned += by_new.assigned.len();
        explained += by_new.reasons.len();
    }
    assert!(
        assigned > 12 && explained > 12,
        "the scenario exercises placements and reasons: {assigned} assigned, {explained} reasons"
    );
}

#[tokio::test]
async fn a_0_1_0_plugin_serves_claims_through_the_server() {
    let api = Api::new(Options {
        strategy: "old",
        plugins: vec![(fixture("bin_packing_0_1_0"), "old")],
        ..Options::default()
    })
    .await;
    assert_eq!(api.strategy("old").await["wit_version"], "0.1.0");
    api.worker("small", 2, 4096, &[]).await;
    api.worker("large", 16, 65536, &[8192]).await;
    let fits_small = api.run(5, json!({"cpu": 2, "ram_mb": 2048})).await;
    let needs_gpu = api.run(1, json!({"cpu": 4, "vram_mb": 4096})).await;
    assert_eq!(api.claim("large", 10).await, [needs_gpu]);
    assert_eq!(
        api.reason(&fits_small).await,
        "another active worker is a tighter fit"
    );
    assert_eq!(api.claim("small", 10).await, [fits_small]);
    let old = api.strategy("old").await;
    assert_eq!(
        (old["calls"].as_u64(), old["failures"].as_u64()),
        (Some(2), Some(0))
    );
}

/// Claims keep being answered, quickly, with a bad plugin active; `fallback` still assigns.
async fn contained(fixture_name: &str) -> Api {
    let api = Api::new(Options {
        plugins: vec![(fixture(fixture_name), "bad")],
        ..Options::default()
    })
    .await;
    api.activate("bad").await;
    api.worker("w", 4, 8192, &[]).await;
    let a = api.run(5, json!({"cpu": 1})).await;
    let b = api.run(5, json!({"cpu": 1})).await;
    let started = Instant::now();
    let claimed = api.claim("w", 10).await;
    // Generous: the deadline is 100 ms; this only proves the call was stopped.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{fixture_name}: claim took {:?}",
        started.elapsed()
    );
    let mut claimed_sorted = claimed.clone();
    claimed_sorted.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(
        claimed_sorted, expected,
        "{fixture_name}: runs still assigned"
    );
    api
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_deadline() {
    let api = contained("loop").await;
    let bad = api.strategy("bad").await;
    assert_eq!(bad["failures"], 1);
    assert!(
        bad["last_failure"].as_str().unwrap().contains("deadline"),
        "{bad}"
    );
    // The next call gets a fresh instance and is stopped again.
    api.run(1, json!({})).await;
    assert_eq!(api.claim("w", 1).await.len(), 1);
    assert_eq!(api.strategy("bad").await["failures"], 2);
}

#[tokio::test]
async fn a_gigabyte_allocation_hits_the_memory_limit() {
    let api = contained("alloc").await;
    let bad = api.strategy("bad").await;
    assert_eq!(bad["failures"], 1);
    assert!(
        bad["last_failure"]
            .as_str()
            .unwrap()
            .contains("memory limit"),
        "{bad}"
    );
}

#[tokio::test]
async fn a_trap_is_contained() {
    let api = contained("trap").await;
    let bad = api.strategy("bad").await;
    assert_eq!(bad["failures"], 1);
    assert!(
        bad["last_failure"].as_str().unwrap().contains("trapped"),
        "{bad}"
    );
}

#[tokio::test]
async fn lies_are_dropped_and_counted() {
    let api = Api::new(Options {
        plugins: vec![(fixture("liar"), "liar")],
        ..Options::default()
    })
    .await;
    api.activate("liar").await;
    api.worker("w", 2, 8192, &[]).await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(api.run(5, json!({"cpu": 1})).await);
    }
    let claimed = api.claim("w", 10).await;
    assert_eq!(
        claimed,
        runs[..2],
        "only existing runs, once each, within the worker's 2 cores"
    );
    let liar = api.strategy("liar").await;
    assert_eq!(liar["failures"], 0);
    // Two unknown indices, one duplicate of run 0, then run 0 again and runs 2 and 3 that no
    // longer fit.
    assert_eq!(liar["dropped"], 6, "{liar}");
}

#[tokio::test]
async fn fail_policy_none_assigns_nothing() {
    let api = Api::new(Options {
        plugins: vec![(fixture("trap"), "trap")],
        strategy: "trap",
        fail_policy: FailPolicy::None,
        ..Options::default()
    })
    .await;
    api.worker("w", 4, 8192, &[]).await;
    api.run(5, json!({})).await;
    assert!(api.claim("w", 10).await.is_empty());
    assert_eq!(api.strategy("trap").await["failures"], 1);
}

async fn eventually(api: &Api, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = api.ok("GET", "/strategies", None).await;
        if check(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_dropped_file_is_hot_loaded_and_a_bad_one_ignored() {
    let api = Api::new(Options::default()).await;
    api.worker("w", 4, 8192, &[]).await;

    std::fs::copy(
        env!("GYOZA_TEMPLATE_OUT"),
        api.plugins.join("smallest.wasm"),
    )
    .unwrap();
    eventually(&api, "the template appears", |list| {
        list["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "smallest")
    })
    .await;
    api.activate("smallest").await;
    let big = api.run(9, json!({"cpu": 3})).await;
    let small = api.run(1, json!({"cpu": 1})).await;
    assert_eq!(api.claim("w", 1).await, [small], "smallest first");

    std::fs::write(api.plugins.join("broken.wasm"), b"\0asm not really").unwrap();
    let list = eventually(&api, "the bad file is reported", |list| {
        !list["rejected"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(list["rejected"][0]["file"], "broken.wasm");
    assert_eq!(
        list["active"], "smallest",
        "the running strategy keeps working"
    );

    // Replacing the active strategy's file swaps it in place.
    let before = api.strategy("smallest").await["sha256"].clone();
    std::fs::copy(builtin("direct"), api.plugins.join("smallest.wasm")).unwrap();
    eventually(&api, "the replacement is swapped in", |list| {
        list["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "smallest" && s["sha256"] != before)
    })
    .await;
    assert_eq!(api.claim("w", 10).await, [big], "now the direct strategy");
}

#[test]
fn the_template_builds_checks_and_simulates() {
    let template = Path::new(env!("GYOZA_TEMPLATE_OUT"));
    let info = gyoza_host::strategy::check_file(template).unwrap();
    assert_eq!(info.wit_version, "1.0.0");
    let scenario: scenario::Scenario = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/strategy-template/scenario.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let report = scenario::simulate(template, &scenario).unwrap();
    assert_eq!(report.failure, None);
    // Smallest first: 6 cores free on gpu-box; the 16 GB VRAM run cannot fit its 8 GB GPU.
    assert_eq!(report.assigned, ["infer", "report", "etl"], "{report:?}");
    assert!(
        report
            .reasons
            .iter()
            .any(|(id, why)| id == "train" && why.contains("16384 MB VRAM")),
        "{report:?}"
    );
}

#[test]
fn a_file_that_is_not_a_strategy_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let error = gyoza_host::strategy::check_file(&junk)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not a valid WebAssembly component"),
        "{error}"
    );
}

#[test]
fn a_plugin_for_an_unknown_wit_major_version_is_refused_clearly() {
    let error = gyoza_host::strategy::check_file(&fixture("future"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("was built against gyoza:scheduler@2.0.0")
            && error.contains("this server supports gyoza:scheduler@0.1.0"),
        "{error}"
    );
}

/// `examples/scenarios/<strategy>.<case>.json`, each decided by the built-in it names.
fn example_scenarios() -> Vec<(String, PathBuf, scenario::Scenario)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
    let mut found: Vec<(String, PathBuf, scenario::Scenario)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            let strategy = name.split('.').next().unwrap().to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed: scenario::Scenario =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (strategy, path, parsed)
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

#[test]
fn the_example_scenarios_decide_as_they_expect() {
    let scenarios = example_scenarios();
    let strategies: Vec<&str> = scenarios.iter().map(|(s, _, _)| s.as_str()).collect();
    assert!(
        strategies.contains(&"fair-share") && strategies.contains(&"affinity"),
        "{strategies:?}"
    );
    for (strategy, path, scenario) in &scenarios {
        let expect = scenario
            .expect
            .clone()
            .unwrap_or_else(|| panic!("{} expects nothing", path.display()));
        // Named by the built-in's name, as `gyoza plugins simulate fair-share` does.
        let report = scenario::simulate(Path::new(strategy), scenario).unwrap();
        assert_eq!(report.plugin, *strategy);
        assert_eq!(report.failure, None, "{}", path.display());
        assert_eq!(
            report.unexpected,
            Vec::<String>::new(),
            "{}",
            path.display()
        );

        // A scenario expecting something else fails, and says how.
        let mut wrong = scenario.clone();
        let mut assigned = expect.assigned.clone().unwrap_or_default();
        assigned.reverse();
        assigned.push("no-such-run".into());
        wrong.expect = Some(scenario::Expectation {
            assigned: Some(assigned),
            ..expect.clone()
        });
        let report = scenario::simulate(Path::new(strategy), &wrong).unwrap();
        assert_eq!(report.unexpected.len(), 1, "{:?}", report.unexpected);
        assert!(
            report.unexpected[0].contains("no-such-run"),
            "{:?}",
            report.unexpected
        );
        let err =
            scenario::simulate_scenario_command(Path::new(strategy), &wrong, false).unwrap_err();
        let scenario::ScenarioError::Unexpected(text) = err else {
            panic!("{err}")
        };
        assert!(text.contains("NOT AS EXPECTED: assigned"), "{text}");

        if let Some((run, reason)) = expect.reasons.iter().next() {
            let mut reasons = expect.reasons.clone();
            reasons.insert(run.clone(), format!("{reason}!"));
            wrong.expect = Some(scenario::Expectation {
                reasons,
                ..expect.clone()
            });
            let report = scenario::simulate(Path::new(strategy), &wrong).unwrap();
            assert_eq!(report.unexpected.len(), 1, "{:?}", report.unexpected);
            assert!(report.unexpected[0].starts_with(&format!("run {run}: reason")));
        }
    }
}
