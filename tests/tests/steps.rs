//! End-to-end: wasm pipeline steps around real containers.

use std::time::Duration;

use gyoza_core::OpRunState;
use gyoza_core::api::OpRunCreate;
use gyoza_e2e::{
    Server, Worker, docker_or_skip, image_run, step_plugin, wait_until_terminal, wasm_plugin,
};
use serde_json::{Map, json};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn echo_run() -> OpRunCreate {
    image_run("gyoza-example/echo:latest", Map::new())
}

fn pipeline(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).expect("write pipeline");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasm_step_changes_what_the_container_sees() {
    if !docker_or_skip("a_wasm_step_changes_what_the_container_sees") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = pipeline(
        &dir,
        &format!(
            r#"
            [[step]]
            name = "inject-env"
            wasm = "{}"
            [step.config]
            GREETING = "hello from wasm"

            [[step]]
            name = "require-outputs"
            wasm = "{}"
            stage = "after"
            deadline_ms = 2000
            memory_mb = 32
            [step.config]
            keys = ["echo", "greeting"]
            "#,
            step_plugin("inject_env").display(),
            step_plugin("require_outputs").display()
        ),
    );
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "steps", &["--pipeline", &file]);
    let run = client.create_run(&echo_run()).await.expect("create run");
    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(
        run.state,
        OpRunState::Completed,
        "{:?}",
        run.execution_summary
    );
    // The echo op writes $GREETING into its outputs: the step before the container set it.
    assert_eq!(run.outputs["greeting"], json!("hello from wasm"));
    assert_eq!(run.outputs["run_id"], json!(run.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_step_fails_the_run_naming_the_step() {
    if !docker_or_skip("a_failing_step_fails_the_run_naming_the_step") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = pipeline(
        &dir,
        &format!(
            r#"
            [[step]]
            name = "require-outputs"
            wasm = "{}"
            stage = "after"
            [step.config]
            keys = ["echo", "report_url"]
            "#,
            step_plugin("require_outputs").display()
        ),
    );
    let server = Server::start();
    let client = server.client();
    let _worker = Worker::start(&server, "failstep", &["--pipeline", &file]);
    let run = client.create_run(&echo_run()).await.expect("create run");
    let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
    assert_eq!(run.state, OpRunState::Failed);
    let error = run.execution_summary.error_message.unwrap_or_default();
    assert_eq!(
        error,
        "pipeline step 'require-outputs' failed: the op did not produce the outputs report_url"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_with_a_plugin_of_another_world_is_refused_at_start() {
    if !docker_or_skip("a_pipeline_with_a_plugin_of_another_world") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = pipeline(
        &dir,
        &format!(
            "[[step]]\nname = \"not-a-step\"\nwasm = \"{}\"\n",
            wasm_plugin("gyoza_strategy_direct").display()
        ),
    );
    let server = Server::start();
    let mut worker = Worker::start(&server, "badstep", &["--pipeline", &file]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !worker.has_exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker started anyway"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        worker.output.contains("step 'not-a-step'")
            && worker.output.contains("gyoza:pipeline/step-api@0.1.0"),
        "{}",
        worker.output.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_step_is_stopped_by_its_limits_and_fails_only_its_run() {
    if !docker_or_skip("a_misbehaving_step_is_stopped_by_its_limits") {
        return;
    }
    let cases = [
        ("spin", "did not finish within its deadline of 200 ms"),
        ("hog", "exceeded its memory limit"),
        ("panic", "trapped"),
    ];
    for (mode, expected) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = pipeline(
            &dir,
            &format!(
                "[[step]]\nname = \"{mode}\"\nwasm = \"{}\"\ndeadline_ms = 200\nmemory_mb = 16\n\
                 [step.config]\nmode = \"{mode}\"\n",
                wasm_plugin("gyoza_step_fixture_misbehave").display()
            ),
        );
        let server = Server::start();
        let client = server.client();
        let mut worker = Worker::start(
            &server,
            &format!("misbehave-{mode}"),
            &["--pipeline", &file],
        );
        let run = client.create_run(&echo_run()).await.expect("create run");
        let run = wait_until_terminal(&client, &run.id, RUN_TIMEOUT).await;
        assert_eq!(run.state, OpRunState::Failed, "{mode}");
        let error = run.execution_summary.error_message.unwrap_or_default();
        assert!(
            error.starts_with(&format!("pipeline step '{mode}' failed: "))
                && error.contains(expected),
            "{mode}: {error}"
        );
        assert!(
            !worker.has_exited(),
            "{mode}: the step took the worker down"
        );
    }
}
