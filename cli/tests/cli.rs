//! The real `gyoza` binary against a real server process, one test per command group:
//! tables, `--json`, errors shown as the server's `detail`, and exit codes.

use std::process::{Command, Output};

use gyoza_e2e::Server;
use serde_json::{Value, json};

const KEY: &str = "cli-test-key";

fn gyoza(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gyoza"))
        .args(args)
        .env("GYOZA_SERVER_URL", server)
        .env("GYOZA_API_KEY", KEY)
        .env("GYOZA_LOG_LEVEL", "warn")
        .output()
        .expect("run gyoza")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs gyoza, expects success, returns stdout.
fn ok(server: &str, args: &[&str]) -> String {
    let output = gyoza(server, args);
    assert!(
        output.status.success(),
        "gyoza {args:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn json_of(server: &str, args: &[&str]) -> Value {
    let text = ok(server, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("gyoza {args:?}: not JSON ({e}): {text}"))
}

/// `gyoza ARGS` against `server` with a wrong API key: exit status 1, saying so.
fn refused_with_a_wrong_key(server: &str, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_gyoza"))
        .args(args)
        .args(["--server", server, "--api-key", "wrong"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "gyoza {args:?}");
    assert!(
        stderr(&output).contains("Invalid or missing API key"),
        "{}",
        stderr(&output)
    );
}

/// Runs gyoza, expects failure with `code`, returns stderr.
fn fails(server: &str, args: &[&str], code: i32) -> String {
    let output = gyoza(server, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "gyoza {args:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stderr(&output)
}

const DEPLOY_FILE: &str = r#"
definitions:
  - id: resize
    version: 1.0.0
    image: resize:1
    inputs:
      width: {type: integer}
      format: {type: string, required: false, default: png}
    outputs:
      path: {type: string}
    constraints: {cpu: 1, ram_mb: 128}
    retry_policy: {max_attempts: 2, backoff_ms: 0}
    queue: imaging
    labels: {team: imaging, site: lab}
"#;

/// Plays a client or a worker for set-up: one API call, blocking.
fn api(server: &Server, method: &str, path: &str, body: Value) -> Value {
    let url = format!("{}{path}", server.url);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut request = reqwest::Client::new()
            .request(method, url)
            .header("x-api-key", KEY);
        if !body.is_null() {
            request = request.json(&body);
        }
        request
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    })
}

#[test]
fn deploy_definitions_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), KEY, &[]);
    let url = server.url.as_str();
    let file = dir.path().join("gyoza.yaml");
    std::fs::write(&file, DEPLOY_FILE).unwrap();
    let file = file.to_str().unwrap();

    assert_eq!(
        ok(url, &["deploy", "-f", file]),
        "created resize 1.0.0 (resize:1)\n"
    );
    let again = json_of(url, &["deploy", "-f", file, "--json"]);
    assert_eq!(again[0]["created"], false, "{again}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "definitions:\n  - id: x\n    version: '1'\n    image: i\n    retries: 3\n",
    )
    .unwrap();
    let err = fails(url, &["deploy", "-f", bad.to_str().unwrap()], 1);
    assert!(err.contains("retries"), "{err}");

    let table = ok(url, &["definitions", "list"]);
    assert!(
        table.starts_with("ID ") && table.contains("resize") && table.contains("1.0.0"),
        "{table}"
    );
    let got = json_of(url, &["definitions", "get", "resize", "--json"]);
    assert_eq!(got["input_specs"]["format"]["default"], "png");
    let err = fails(url, &["definitions", "get", "nope"], 1);
    assert_eq!(
        err.trim(),
        "error: OpDefinition 'nope' not found (HTTP 404)"
    );

    let run = json_of(
        url,
        &[
            "run",
            "resize",
            "--input",
            "width=640",
            "--priority",
            "7",
            "--json",
        ],
    );
    assert_eq!(run["inputs"], json!({"width": 640, "format": "png"}));
    assert_eq!(run["priority"], 7);
    assert_eq!(
        (&run["queue"], &run["preemptible"]),
        (&json!("imaging"), &json!(false))
    );
    let id = run["id"].as_str().unwrap().to_owned();
    let err = fails(url, &["run", "resize", "--input", "width=wide"], 1);
    assert!(
        err.contains("input 'width' must be integer, got string") && err.contains("HTTP 400"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");

    let inputs = dir.path().join("inputs.json");
    std::fs::write(&inputs, r#"{"a": {"b": [1, 2]}}"#).unwrap();
    let adhoc_id = ok(
        url,
        &[
            "run",
            "--image",
            "busybox:latest",
            "--inputs-file",
            inputs.to_str().unwrap(),
            "--cpu",
            "1",
        ],
    );
    let adhoc_id = adhoc_id.trim();
    let adhoc = json_of(url, &["runs", "get", adhoc_id, "--json"]);
    assert_eq!(
        (
            adhoc["inputs"]["a"]["b"][1].clone(),
            adhoc["constraints"]["cpu"].clone()
        ),
        (json!(2), json!(1))
    );

    let queued = json_of(
        url,
        &[
            "run",
            "resize",
            "--input",
            "width=1",
            "--queue",
            "gpu",
            "--label",
            "team=vision",
            "--label",
            "note=a=b",
            "--preemptible",
            "--json",
        ],
    );
    assert_eq!(
        (&queued["queue"], &queued["labels"], &queued["preemptible"]),
        (
            &json!("gpu"),
            &json!({"team": "vision", "note": "a=b", "site": "lab"}),
            &json!(true)
        )
    );
    let listed = json_of(
        url,
        &[
            "runs",
            "list",
            "--queue",
            "gpu",
            "--label",
            "team:vision",
            "--json",
        ],
    );
    let ids: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, vec![&queued["id"]]);
    let err = fails(
        url,
        &["run", "resize", "--input", "width=1", "--label", "team"],
        2,
    );
    assert!(err.contains("is not KEY=VALUE"), "{err}");
    ok(url, &["runs", "cancel", queued["id"].as_str().unwrap()]);

    let list = json_of(url, &["runs", "list", "--json", "--state", "PENDING"]);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let table = ok(url, &["runs", "list", "--state", "PENDING", "--limit", "1"]);
    assert!(
        table.contains(adhoc_id) && table.contains("(more: --starting-after"),
        "{table}"
    );
    let detail = ok(url, &["runs", "get", &id]);
    assert!(
        detail.contains("state        PENDING") && detail.contains("resize 1.0.0"),
        "{detail}"
    );
    let err = fails(url, &["runs", "list", "--state", "DONE"], 1);
    assert!(err.contains("Invalid state 'DONE'"), "{err}");

    let cancelled = json_of(url, &["runs", "cancel", &id, "--json"]);
    assert_eq!(cancelled["state"], "CANCELLED");
    let err = fails(url, &["runs", "cancel", &id], 1);
    assert!(err.contains("already in terminal state CANCELLED"), "{err}");
    assert!(ok(url, &["runs", "retry", &id]).contains("PENDING (attempt 2)"));
    let attempts = json_of(url, &["runs", "attempts", &id, "--json"]);
    assert_eq!(attempts.as_array().unwrap().len(), 2);
    let events = ok(url, &["runs", "events", &id]);
    assert!(
        events.contains("RETRIED") && events.contains("Manual retry"),
        "{events}"
    );
    let events = json_of(url, &["runs", "events", &id, "--json", "--after", "0"]);
    assert_eq!(events["events"], json!([]));
}

#[test]
fn workers_strategies_and_failures_to_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), KEY, &[]);
    let url = server.url.as_str();
    api(
        &server,
        "POST",
        "/workers/heartbeat",
        json!({"worker_id": "w-cli", "resources": {"cpu_cores": 3, "ram_mb": 2048, "gpus": [{"id": 0, "vram_mb": 8192}]}}),
    );
    let table = ok(url, &["workers", "list"]);
    assert!(
        table.contains("w-cli") && table.contains("active") && table.contains("0:8192MB"),
        "{table}"
    );
    let workers = json_of(url, &["workers", "list", "--json"]);
    assert_eq!(workers[0]["resources"]["cpu_cores"], 3);

    let strategies = json_of(url, &["strategies", "list", "--json"]);
    assert_eq!(strategies["active"], "bin-packing");
    let table = ok(url, &["strategies", "use", "priority"]);
    assert!(table.contains("* priority"), "{table}");
    let err = fails(url, &["strategies", "use", "nope"], 1);
    assert!(err.contains("HTTP 404"), "{err}");

    let err = fails("http://127.0.0.1:1", &["runs", "list"], 1);
    assert!(
        err.contains("http://127.0.0.1:1"),
        "the failing URL is named: {err}"
    );
    refused_with_a_wrong_key(url, &["runs", "list"]);

    let script = ok(url, &["completions", "bash"]);
    assert!(
        script.contains("gyoza") && script.contains("complete"),
        "{script}"
    );
}

#[test]
fn queues_list_shows_each_queues_fair_share() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        env!("CARGO_BIN_EXE_gyoza"),
        dir.path(),
        KEY,
        &["--queues", "batch:weight=2,cpu=16,runs=20; idle:weight=1"],
    );
    let url = server.url.as_str();
    api(
        &server,
        "POST",
        "/workers/heartbeat",
        json!({"worker_id": "w-q", "resources": {"cpu_cores": 8, "ram_mb": 4096}}),
    );
    for _ in 0..3 {
        api(
            &server,
            "POST",
            "/runs",
            json!({"image": "x", "queue": "batch", "constraints": {"cpu": 4, "ram_mb": 1024}}),
        );
    }
    let claimed = api(&server, "POST", "/workers/w-q/claim?max=1", Value::Null);
    assert_eq!(claimed["ops"].as_array().unwrap().len(), 1, "{claimed}");

    // CPU 4/8 dominates (RAM 1024/4096), halved by weight 2.
    let table = ok(url, &["queues", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(lines[0]),
        [
            "NAME", "WEIGHT", "PENDING", "RUNNING", "CPU", "RAM_MB", "VRAM_MB", "SHARE", "QUOTA"
        ],
        "{table}"
    );
    assert_eq!(
        cells(lines[1]),
        [
            "batch",
            "2",
            "2",
            "1",
            "4",
            "1024",
            "0",
            "0.250",
            "cpu=16,runs=20"
        ],
        "{table}"
    );
    assert_eq!(
        cells(lines[2]),
        ["idle", "1", "0", "0", "0", "0", "0", "0.000", "-"],
        "{table}"
    );
    let list = json_of(url, &["queues", "list", "--json"]);
    assert_eq!(list["half_life_s"], 3600);
    assert_eq!(list["queues"][0]["quota"]["ram_mb"], Value::Null);
    assert_eq!(list["queues"][0]["share"], 0.25);

    refused_with_a_wrong_key(url, &["queues", "list"]);
}

#[test]
fn waiting_on_a_run_reports_how_it_ended_in_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), KEY, &[]);
    let url = server.url.clone();
    api(
        &server,
        "POST",
        "/workers/heartbeat",
        json!({"worker_id": "w", "resources": {"cpu_cores": 8, "ram_mb": 8192}}),
    );
    for (ending, code) in [("FAILED", 1), ("CANCELLED", 3), ("COMPLETED", 0)] {
        let mode = if ending == "COMPLETED" {
            "--follow"
        } else {
            "--wait"
        };
        let waiter = Command::new(env!("CARGO_BIN_EXE_gyoza"))
            .args(["run", "--image", "x", mode])
            .env("GYOZA_SERVER_URL", &url)
            .env("GYOZA_API_KEY", KEY)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Play the worker: claim the run, then end it.
        let mut claimed = Value::Null;
        for _ in 0..100 {
            claimed = api(&server, "POST", "/workers/w/claim", Value::Null);
            if !claimed["ops"].as_array().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let id = claimed["ops"][0]["id"]
            .as_str()
            .expect("the run was created")
            .to_owned();
        let event = |body: Value| api(&server, "POST", &format!("/runs/{id}/events"), body);
        event(json!({"type": "STARTED", "msg": "", "payload": {"worker_id": "w"}}));
        event(json!({"type": "PROGRESS", "msg": 50}));
        match ending {
            "FAILED" => event(json!({"type": "FAILED", "msg": "boom"})),
            "CANCELLED" => api(&server, "POST", &format!("/runs/{id}/cancel"), Value::Null),
            _ => event(
                json!({"type": "COMPLETED", "msg": "ok", "payload": {"outputs": {"answer": 42}}}),
            ),
        };
        let output = waiter.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "{ending}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        if ending == "COMPLETED" {
            let outputs: Value = serde_json::from_str(&stdout(&output)).unwrap();
            assert_eq!(outputs, json!({"answer": 42}));
            assert!(
                stderr(&output).contains("STARTED"),
                "events are shown: {}",
                stderr(&output)
            );
        }
    }
    // `runs watch` on a finished run prints its history and the ending.
    let list = json_of(&url, &["runs", "list", "--json", "--state", "COMPLETED"]);
    let done = list["data"][0]["id"].as_str().unwrap().to_owned();
    let watched = ok(&url, &["runs", "watch", &done]);
    assert!(
        watched.contains("PROGRESS") && watched.trim_end().ends_with("ended COMPLETED"),
        "{watched}"
    );
}

/// The wasm guests `host/build.rs` built for this build: `<target>/wasm-plugins/...`, beside
/// the `<target>/<profile>/gyoza` binary under test.
fn built_plugin(file: &str) -> std::path::PathBuf {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_gyoza"));
    let target = binary
        .parent()
        .and_then(|profile| profile.parent())
        .expect("the binary is in <target>/<profile>/");
    target.join("wasm-plugins/wasm32-wasip2/release").join(file)
}

#[test]
fn plugins_check_and_simulate_report_the_wit_version() {
    let builtin = built_plugin("gyoza_strategy_bin_packing.wasm");
    let old = built_plugin("gyoza_fixture_bin_packing_0_1_0.wasm");
    let (builtin, old) = (builtin.to_str().unwrap(), old.to_str().unwrap());
    let nowhere = "http://127.0.0.1:1";

    let text = ok(nowhere, &["plugins", "check", builtin]);
    assert!(
        text.contains("implements gyoza:scheduler/strategy@1.0.0")
            && text.contains("answer: evict")
            && text.contains("evicted 0"),
        "{text}"
    );
    // The probe claim shows which optional parts a plugin uses: priority with preempt=true
    // evicts there (the server hands every plugin one configuration; check uses none, so the
    // JSON report of the 0.1.0 plugin names no 1.0 parts).
    let text = ok(nowhere, &["plugins", "check", old]);
    assert!(
        text.contains("implements gyoza:scheduler/strategy@0.1.0"),
        "{text}"
    );
    let old_check = json_of(nowhere, &["plugins", "check", old, "--json"]);
    assert_eq!(old_check["wit_version"], "0.1.0");
    assert!(
        !old_check["parts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "answer: evict"),
        "{old_check}"
    );
    assert_eq!(old_check["probe"]["failure"], Value::Null, "{old_check}");

    // The same scenario decided by bin-packing over each interface: the same answer.
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/strategy-template/scenario.json"
    );
    let new_report = json_of(
        nowhere,
        &[
            "plugins",
            "simulate",
            builtin,
            "--scenario",
            scenario,
            "--json",
        ],
    );
    let old_report = json_of(
        nowhere,
        &["plugins", "simulate", old, "--scenario", scenario, "--json"],
    );
    assert_eq!(new_report["wit_version"], "1.0.0");
    assert_eq!(old_report["wit_version"], "0.1.0");
    assert_eq!(new_report["failure"], Value::Null, "{new_report}");
    assert_eq!(new_report["assigned"], old_report["assigned"]);
    assert_eq!(new_report["reasons"], old_report["reasons"]);
    assert!(
        !new_report["reasons"].as_array().unwrap().is_empty(),
        "{new_report}"
    );
    let text = ok(
        nowhere,
        &["plugins", "simulate", old, "--scenario", scenario],
    );
    assert!(text.contains("gyoza:scheduler@0.1.0"), "{text}");
}

#[test]
fn plugins_simulate_from_a_live_server_is_a_dry_run_of_its_claim() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        env!("CARGO_BIN_EXE_gyoza"),
        dir.path(),
        KEY,
        &[
            "--strategy",
            "priority",
            "--strategy-config",
            "preempt=true",
            "--queues",
            "interactive:weight=2",
        ],
    );
    let url = server.url.as_str();
    api(
        &server,
        "POST",
        "/workers/heartbeat",
        json!({"worker_id": "w", "tags": ["ssd"], "resources": {"cpu_cores": 2, "ram_mb": 4096}}),
    );
    let run = |priority: i64, preemptible: bool, extra: Value| {
        let mut body = json!({"image": "x", "priority": priority, "preemptible": preemptible,
                              "constraints": {"cpu": 1}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        api(&server, "POST", "/runs", body)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let low = [run(1, true, json!({})), run(1, true, json!({}))];
    let claimed = api(&server, "POST", "/workers/w/claim?max=2", Value::Null);
    assert_eq!(claimed["ops"].as_array().unwrap().len(), 2, "{claimed}");
    let urgent = run(
        9,
        false,
        json!({"queue": "interactive", "labels": {"team": "a"}}),
    );
    let elsewhere = run(
        5,
        false,
        json!({"constraints": {"cpu": 1, "tags": ["gpu"]}}),
    );

    let priority = built_plugin("gyoza_strategy_priority.wasm");
    let args = |json: bool| {
        let mut args = vec![
            "plugins",
            "simulate",
            priority.to_str().unwrap(),
            "--from-server",
            url,
            "--worker",
            "w",
        ];
        if json {
            args.push("--json");
        }
        args
    };
    let report = json_of(url, &args(true));
    assert_eq!(report["failure"], Value::Null, "{report}");
    assert_eq!(report["assigned"], json!([urgent]), "{report}");
    let evicted = report["evicted"].as_array().unwrap();
    assert_eq!(evicted.len(), 1, "{report}");
    assert!(
        low.iter().any(|id| evicted[0][0] == id.as_str()),
        "{report}"
    );
    assert_eq!(evicted[0][1], urgent.as_str());
    assert_eq!(report["filtered"], json!([elsewhere]), "{report}");
    let text = ok(url, &args(false));
    assert!(text.contains("evict ") && text.contains(&urgent), "{text}");

    // A dry run: nothing was claimed or preempted.
    let shown = api(&server, "GET", &format!("/runs/{urgent}"), Value::Null);
    assert_eq!(shown["state"], "PENDING");
    for id in &low {
        let shown = api(&server, "GET", &format!("/runs/{id}"), Value::Null);
        assert_eq!(shown["current_attempt"], 1, "{shown}");
    }
    // The scenario as the server gives it: queues and config included.
    let scenario = api(&server, "GET", "/workers/w/claim-scenario", Value::Null);
    assert_eq!(scenario["config"], "preempt=true");
    assert_eq!(scenario["queues"], "interactive:weight=2");
    assert_eq!(scenario["workers"][0]["tags"], json!(["ssd"]));
    let err = fails(
        url,
        &[
            "plugins",
            "simulate",
            priority.to_str().unwrap(),
            "--from-server",
            url,
            "--worker",
            "nobody",
        ],
        1,
    );
    assert!(err.contains("never sent a heartbeat"), "{err}");
}

#[test]
fn plugins_simulate_names_a_builtin_and_fails_when_the_scenario_expects_otherwise() {
    let nowhere = "http://127.0.0.1:1";
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/fair-share.weights.json"
    );
    let text = ok(
        nowhere,
        &["plugins", "simulate", "fair-share", "--scenario", scenario],
    );
    assert!(
        text.contains("plugin fair-share (gyoza:scheduler@1.0.0)"),
        "{text}"
    );
    assert!(
        text.ends_with("as expected\n\n") || text.ends_with("as expected\n"),
        "{text:?}"
    );

    let mut wrong: Value =
        serde_json::from_str(&std::fs::read_to_string(scenario).unwrap()).unwrap();
    wrong["expect"]["assigned"] = json!(["b1"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.json");
    std::fs::write(&path, wrong.to_string()).unwrap();
    let path = path.to_str().unwrap();
    for json in [false, true] {
        let mut args = vec!["plugins", "simulate", "fair-share", "--scenario", path];
        if json {
            args.push("--json");
        }
        let output = gyoza(nowhere, &args);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("the decision is not the one the scenario expects"),
            "{}",
            stderr(&output)
        );
        // The report still says how, on stdout.
        let shown = stdout(&output);
        assert!(shown.contains("expected [b1]"), "{shown}");
        if json {
            let report: Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(
                report["unexpected"][0],
                "assigned [i1, i2, i3, b1, b2], expected [b1]"
            );
        }
    }

    let unknown = fails(
        nowhere,
        &["plugins", "simulate", "fair-shares", "--scenario", path],
        1,
    );
    assert!(
        unknown.contains("cannot read fair-shares (nor is it a built-in strategy: direct, priority, bin-packing, fair-share, affinity): No such file"),
        "{unknown}"
    );
    assert_eq!(unknown.matches("No such file").count(), 1, "{unknown}");
}
