//! gyoza-e2e: the harness of the end-to-end tests, which start real processes.
//!
//! The tests in `tests/` run the real `gyoza` binary — `gyoza server start` on a free port and
//! `gyoza worker start` against it — on a real Docker engine, with the example op images of
//! `examples/ops/` (built by `scripts/setup.d/20-docker.sh`, or here when missing). Nothing is
//! mocked.
//!
//! Docker policy: a test that needs Docker calls [`docker_or_skip`]. Under `CI=true` a missing
//! engine fails the test (CI installs and starts one, so its absence is a bug); elsewhere the
//! test is skipped with a loud message, so that the rest of the suite runs on a laptop without
//! dockerd.
//!
//! # Layout
//! - [`gyoza_bin`]: the `gyoza` binary, built on first use.
//! - [`Server`]: a `gyoza server start` process on a free port, with a client for it (also
//!   the harness of the cli crate's process tests, which start their own build of the binary
//!   on a data directory they keep).
//! - [`Worker`]: a `gyoza worker start` process, on a state directory of its own or one the
//!   test keeps (to restart it, or start two on one); [`worker_id`] names them.
//! - [`free_port`], [`Server::start_at`]: a server restartable on the same port and data.
//! - [`docker_or_skip`], [`container_running`], [`container_exists`]: the Docker engine, as
//!   the tests see it.
//! - [`DockerProxy`]: a Unix socket forwarding to the real engine that a test can close and
//!   reopen, so that a worker loses its engine while the engine itself (which other tests
//!   share) keeps running.
//! - [`wait_for_run`], [`wait_until_terminal`], [`wait_until_container_runs`]: polling a run
//!   until a condition holds; [`assert_completed_by`], [`assert_handed_back`],
//!   [`attempt_error`]: what tests check of a run.
//! - [`image_run`]: an ad-hoc run of an image.
//! - [`deploy_nap`], [`nap`]: the "nap" definition (the example sleep op) and runs of it.
//! - [`held`]: what runs held over time, from their attempts (fair-share checks).

pub mod held;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gyoza_core::api::{OpDefinitionCreate, OpRunCreate, OpRunCreateFromDefinition, OpRunView};
use gyoza_core::client::Client;
use gyoza_core::sync::lock;
use gyoza_core::{OpAttempt, OpRunState};

/// The API key of every test server.
pub const API_KEY: &str = "e2e-secret";

/// The example op images the tests run.
pub const EXAMPLE_OPS: [&str; 7] = [
    "echo", "progress", "fail", "sleep", "memhog", "bigout", "chown",
];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The `gyoza` binary: `$GYOZA_BIN` if set, else built with cargo (once per test process; a
/// no-op when it is up to date).
pub fn gyoza_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("GYOZA_BIN") {
            return PathBuf::from(bin);
        }
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "gyoza-cli", "--bin", "gyoza"])
            .current_dir(&root);
        without_test_env(&mut build);
        let status = build
            .status()
            .expect("cannot run cargo to build the gyoza binary");
        assert!(status.success(), "building the gyoza binary failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("gyoza")
    })
    .clone()
}

/// Removes the variables `cargo test` sets for the running test binary (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_*`, …) from a nested cargo's environment. Some build scripts (ring's) rerun
/// when one of them changes, so inheriting them made the nested build and every ordinary
/// build rebuild half the dependency tree in turn.
fn without_test_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
        {
            command.env_remove(name);
        }
    }
}

/// Output lines of a child process, collected by a thread.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    fn collect(&self, stream: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let lines = Arc::clone(&self.0);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lock(&lines).push(line);
            }
        })
    }

    fn push(&self, line: String) {
        lock(&self.0).push(line);
    }

    /// Everything so far, one line each.
    pub fn text(&self) -> String {
        lock(&self.0).join("\n")
    }

    /// Whether a line containing `needle` has been printed.
    pub fn contains(&self, needle: &str) -> bool {
        lock(&self.0).iter().any(|l| l.contains(needle))
    }
}

fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SIGTERM first: the processes under test shut down gracefully on it.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `gyoza server start` process on a free port.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// What it printed.
    pub output: Output,
    /// The API key it was started with.
    api_key: String,
    /// Its data directory, when it is the server's own (removed with it).
    _data: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with its own data directory and [`API_KEY`], and waits until it
    /// listens.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`Server::start`], with more `gyoza server start` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_in(gyoza_bin(), data.path(), API_KEY, extra);
        server._data = Some(data);
        server
    }

    /// Starts binary `bin` as `gyoza server start` on `data_dir` (which outlives the server,
    /// so that a test can start another on the same data) with API key `api_key` and the
    /// `extra` flags, and waits until it listens. The cli crate's tests give their own
    /// build of the binary.
    pub fn start_in(bin: impl AsRef<Path>, data_dir: &Path, api_key: &str, extra: &[&str]) -> Self {
        Self::spawn(bin.as_ref(), data_dir, 0, api_key, extra)
    }

    /// Starts a server on `data_dir` at a fixed `port` (see [`free_port`]) with API key
    /// `api_key`: stopping it (dropping it) and starting another on the same directory and
    /// port is a server restart as its workers see it.
    pub fn start_at(data_dir: &Path, port: u16, api_key: &str, extra: &[&str]) -> Self {
        Self::spawn(&gyoza_bin(), data_dir, port, api_key, extra)
    }

    /// Starts the server; `extra` may name the port itself (a restart on the same address),
    /// else it listens on `port` (0: a free one).
    fn spawn(bin: &Path, data_dir: &Path, port: u16, api_key: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(bin);
        command.args(["server", "start", "--host", "127.0.0.1"]);
        if !extra.contains(&"--port") {
            command.args(["--port", &port.to_string()]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("GYOZA_API_KEY", api_key)
            .env("GYOZA_LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start gyoza server");
        let stderr = child.stderr.take().expect("piped stderr");
        let output = Output::default();
        let (url, reader) = read_until_listening(BufReader::new(stderr), &output);
        // Detached: the server's output is only read on failure.
        drop(output.collect(reader.into_inner()));
        Self {
            child,
            url,
            output,
            api_key: api_key.to_owned(),
            _data: None,
        }
    }

    /// A client of this server with the right key.
    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(&self.api_key)).expect("client")
    }

    /// The process id, for signals (`kill -KILL <pid>`).
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.url))
    }

    /// Kills the process with SIGKILL (a crash: in-flight requests are cut) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .try_wait()
            .expect("cannot check the server process")
    }
}

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Reads a starting server's output into `output` until it says where it listens; the
/// address, and the reader for the rest.
fn read_until_listening<R: BufRead>(mut reader: R, output: &Output) -> (String, R) {
    const LISTENING: &str = "gyoza server listening on ";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).unwrap_or(0);
        assert!(
            read > 0 && Instant::now() < deadline,
            "gyoza server exited before listening:\n{}",
            output.text()
        );
        output.push(line.trim_end().to_owned());
        if let Some(at) = line.find(LISTENING) {
            let rest = &line[at + LISTENING.len()..];
            let url = rest.split_whitespace().next().unwrap_or_default();
            return (url.to_owned(), reader);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child);
        if std::thread::panicking() {
            eprintln!("---- server output ----\n{}", self.output.text());
        }
    }
}

/// The worker id [`Worker::start`] gives worker `name` of this test process.
pub fn worker_id(name: &str) -> String {
    format!("e2e-{name}-{}", std::process::id())
}

/// A `gyoza worker start` process.
pub struct Worker {
    child: Child,
    /// Its worker id.
    pub id: String,
    /// What it printed.
    pub output: Output,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Its state directory, when it is the worker's own (removed with it).
    _state: Option<tempfile::TempDir>,
}

impl Worker {
    /// Starts a worker for `server` with fast heartbeats and cancellation checks; `extra`
    /// flags are appended (and win over the defaults here).
    pub fn start(server: &Server, name: &str, extra: &[&str]) -> Self {
        let state = tempfile::tempdir().expect("temp dir");
        let id = worker_id(name);
        let mut worker = Self::start_on(server, &id, state.path(), extra);
        worker._state = Some(state);
        worker
    }

    /// Starts a worker with id `id` on state directory `state_dir` (which outlives it, so that
    /// a test can restart a worker on the same directory, or start two on one), as
    /// [`Worker::start`] does otherwise.
    pub fn start_on(server: &Server, id: &str, state_dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(&server.url, id, state_dir, extra)
    }

    /// [`Worker::start_on`] for the server at `url` (which may be restarted meanwhile).
    pub fn start_at(url: &str, id: &str, state_dir: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(gyoza_bin());
        command.args(["worker", "start"]);
        for default in ["--heartbeat-interval", "--cancel-check-interval"] {
            if !extra.contains(&default) {
                command.args([default, "0.3"]);
            }
        }
        let mut child = command
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .env("GYOZA_SERVER_URL", url)
            .env("GYOZA_API_KEY", API_KEY)
            .env("GYOZA_WORKER_ID", id)
            .env("GYOZA_LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start gyoza worker");
        let output = Output::default();
        let reader = output.collect(child.stderr.take().expect("piped stderr"));
        Self {
            child,
            id: id.to_owned(),
            output,
            reader: Some(reader),
            _state: None,
        }
    }

    /// Sends SIGTERM and waits for the process to end; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        terminate(&mut self.child);
        let success = self.child.wait().is_ok_and(|s| s.success());
        self.finish_output();
        success
    }

    /// Sends SIGTERM and returns at once (see [`Worker::wait_exit`]).
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit: `Some(success)`, or `None` if it is
    /// still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_output();
                return Some(status.success());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until everything the (exited) process printed has been read.
    fn finish_output(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Kills the process with SIGKILL (a crash: no goodbye to the server, containers left
    /// behind) and waits for it to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish_output();
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        if exited {
            self.finish_output();
        }
        exited
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        terminate(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- worker {} output ----\n{}",
                self.id,
                self.output.text()
            );
        }
    }
}

fn docker(args: &[&str]) -> Option<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether a Docker engine answers, with the example images built (building them if needed).
/// Under `CI=true` a missing engine is a failure; elsewhere the caller should skip.
pub fn docker_or_skip(test: &str) -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        docker(&["info"]).ok_or_else(|| "no Docker engine answers `docker info`".to_owned())?;
        let missing = EXAMPLE_OPS.iter().any(|op| {
            docker(&["image", "inspect", &format!("gyoza-example/{op}:latest")]).is_none()
        });
        if missing {
            let status = Command::new("bash")
                .arg(workspace_root().join("examples/ops/build.sh"))
                .status()
                .map_err(|e| format!("cannot run examples/ops/build.sh: {e}"))?;
            if !status.success() {
                return Err("examples/ops/build.sh failed".into());
            }
        }
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: Docker is required under CI=true but is unusable: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED {test}: {why}. Start dockerd (scripts/setup.d/20-docker.sh does) \
                 to run the end-to-end tests. ***\n"
            );
            false
        }
    }
}

/// Whether a container of run `run_id` is running.
pub fn container_running(run_id: &str) -> bool {
    docker(&[
        "ps",
        "--quiet",
        "--filter",
        &format!("label=gyoza.run_id={run_id}"),
    ])
    .is_some_and(|out| !out.trim().is_empty())
}

/// Whether a container named exactly `name` exists, running or not.
pub fn container_exists(name: &str) -> bool {
    docker(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("name=^{name}$"),
    ])
    .is_some_and(|out| !out.trim().is_empty())
}

/// The real engine's socket: `DOCKER_HOST` when it is a `unix://` address, else the default.
fn real_docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// A Unix socket that forwards every connection to the real Docker engine while it is open.
/// Closing it drops every connection and removes the socket file, which is what a worker
/// sees when its engine goes away — without stopping the engine that other tests use.
pub struct DockerProxy {
    path: PathBuf,
    forwarding: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl DockerProxy {
    /// A proxy that is not listening yet: its socket path does not exist.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            path: dir.path().join("docker.sock"),
            forwarding: None,
            _dir: dir,
        }
    }

    /// The address to give a worker (`unix://…`).
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Starts listening and forwarding (within the current tokio runtime).
    pub fn open(&mut self) {
        assert!(self.forwarding.is_none(), "the proxy is already open");
        let listener = tokio::net::UnixListener::bind(&self.path).expect("bind the proxy socket");
        let target = real_docker_socket();
        self.forwarding = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    /// Stops listening, breaks every forwarded connection and removes the socket file.
    pub async fn close(&mut self) {
        if let Some(forwarding) = self.forwarding.take() {
            forwarding.abort();
            let _ = forwarding.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Default for DockerProxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        if let Some(forwarding) = self.forwarding.take() {
            forwarding.abort();
        }
    }
}

/// Deploys the "nap" definition: the example sleep op with a `seconds` input and
/// `retry_policy` (the tests give it one attempt, so that a requeue which used the retry
/// budget would leave the run FAILED).
pub async fn deploy_nap(client: &Client, retry_policy: serde_json::Value) {
    let definition: OpDefinitionCreate = serde_json::from_value(serde_json::json!({
        "id": "nap", "version": "1", "image": "gyoza-example/sleep:latest",
        "input_specs": {"seconds": {"type": "int"}},
        "retry_policy": retry_policy
    }))
    .expect("definition");
    client
        .upsert_definition(&definition)
        .await
        .expect("upsert definition");
}

/// Creates a run of the "nap" definition ([`deploy_nap`]) that sleeps `seconds`.
pub async fn nap(client: &Client, seconds: u64) -> OpRunView {
    client
        .create_run_from_definition(
            "nap",
            None,
            &OpRunCreateFromDefinition {
                inputs: serde_json::from_value(serde_json::json!({ "seconds": seconds }))
                    .expect("inputs"),
                priority: 5,
                ..Default::default()
            },
        )
        .await
        .expect("create run")
}

/// Polls run `id` until `done` holds for it, or panics after `timeout` with the last view.
pub async fn wait_for_run(
    client: &Client,
    id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&OpRunView) -> bool,
) -> OpRunView {
    let deadline = Instant::now() + timeout;
    loop {
        let run = client.get_run(id).await.expect("get run");
        if done(&run) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} did not reach '{what}' within {timeout:?}; last seen:\n{}",
            serde_json::to_string_pretty(&run).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Polls run `id` until it is terminal (COMPLETED, FAILED or CANCELLED), or panics after
/// `timeout`.
pub async fn wait_until_terminal(client: &Client, id: &str, timeout: Duration) -> OpRunView {
    wait_for_run(client, id, timeout, "terminal", |r| r.state.is_terminal()).await
}

/// Waits until run `id` is RUNNING and its container runs.
pub async fn wait_until_container_runs(client: &Client, id: &str, timeout: Duration) {
    wait_for_run(client, id, timeout, "RUNNING", |r| {
        r.state == OpRunState::Running
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !container_running(id) {
        assert!(Instant::now() < deadline, "the container of {id} never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `run` COMPLETED in attempt `attempt`, on worker `worker_id`.
pub fn assert_completed_by(run: &OpRunView, attempt: u32, worker_id: &str) {
    assert_eq!(run.state, OpRunState::Completed, "{:?}", run.attempts);
    assert_eq!(run.current_attempt, attempt);
    assert_eq!(run.execution_summary.worker_id.as_deref(), Some(worker_id));
}

/// Asserts that worker `worker_id` handed `run`'s first attempt back for `reason` (the start
/// of the reason): the run is PENDING again, the attempt FAILED as lost, outside the op's
/// retry budget. Returns the attempt's error message.
pub fn assert_handed_back(run: &OpRunView, worker_id: &str, reason: &str) -> String {
    assert_eq!(run.state, OpRunState::Pending, "{:?}", run.attempts);
    let first = &run.attempts[0];
    assert_eq!(first.state, OpRunState::Failed);
    assert!(
        first.worker_lost,
        "the hand-back was counted as the op's failure (it used the op's retry budget)"
    );
    let error = attempt_error(first);
    assert!(
        error.starts_with(&format!("worker {worker_id} handed the run back: {reason}")),
        "{error}"
    );
    error
}

/// The error message of `attempt` ("" when it has none).
pub fn attempt_error(attempt: &OpAttempt) -> String {
    attempt
        .execution_summary
        .error_message
        .clone()
        .unwrap_or_default()
}

/// An ad-hoc run of `image` with `inputs`, priority 5, no constraints or policies.
pub fn image_run(image: &str, inputs: serde_json::Map<String, serde_json::Value>) -> OpRunCreate {
    OpRunCreate {
        image: image.into(),
        priority: 5,
        inputs,
        constraints: None,
        retry_policy: None,
        event_delivery: None,
        queue: None,
        labels: None,
        preemptible: None,
    }
}

/// The built example step plugin `gyoza_step_<name>.wasm` (from `plugins/steps/`), building
/// the plugins workspace for wasm32-wasip2 when it is missing.
pub fn step_plugin(name: &str) -> PathBuf {
    wasm_plugin(&format!("gyoza_step_{name}"))
}

/// A built `.wasm` of the plugins workspace, by crate file name (e.g. `gyoza_strategy_direct`).
pub fn wasm_plugin(file_stem: &str) -> PathBuf {
    let root = workspace_root();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("wasm-plugins");
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{file_stem}.wasm"));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--manifest-path")
            .arg(root.join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("cannot run cargo to build the wasm plugins");
        assert!(
            status.success(),
            "building the wasm plugins failed (is the wasm32-wasip2 target installed?)"
        );
    }
    path
}
