//! The fault soak: two server replicas on one MongoDB database (the MongoDB-wire test server),
//! three real workers on the real Docker engine, and a few hundred short runs, while the test
//! kills a random server or worker with SIGKILL every few seconds and restarts it (a server on
//! its port and data directory, a worker under its id and work directory).
//!
//! At the end every run is terminal; no run completed more than once; each COMPLETED run had
//! exactly one container started for its completed attempt (counted from `docker events`,
//! streamed in the background: containers are named `gyoza-<run>-<attempt>`); no worker held
//! more than its capacity in any sample (the store's ASSIGNED and RUNNING runs and the
//! workers' own reports, sampled every ~200 ms); and no container of the soak's workers is
//! left behind. The figures (runs, kills of each kind, requeues, max overcommit, duration) are
//! printed.
//!
//! Tuning (the defaults are the acceptance values):
//! `GYOZA_SOAK_RUNS` (300), `GYOZA_SOAK_KILL_EVERY_MS` (3000, the mean pause between kills;
//! 0 for no kills), `GYOZA_SOAK_DEADLINE_S` (480, the longest the runs may take to end),
//! `GYOZA_SOAK_SEED` (the kills' random sequence, printed). A run left out:
//! `GYOZA_TEST_SKIP_MONGO=1`, or no Docker engine (see the harness's Docker policy).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gyoza_core::api::{OpDefinitionCreate, OpRunCreateFromDefinition, OpRunView};
use gyoza_core::client::{Client, RunFilter};
use gyoza_core::sync::lock;
use gyoza_core::{OpRunState, client::ClientError};
use gyoza_e2e::{API_KEY, Server, Worker, docker_or_skip, gyoza_bin};
use serde_json::json;

/// Each worker's CPU cores; every run needs one, so a worker holds at most this many.
const WORKER_CPUS: u32 = 2;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (no dependency): a seed replays the same kills.
struct Lcg(u64);

impl Lcg {
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Whether the MongoDB-wire test server answers; its URL.
fn mongo_or_skip(test: &str) -> Option<String> {
    if std::env::var("GYOZA_TEST_SKIP_MONGO").is_ok_and(|v| v == "1") {
        eprintln!("GYOZA_TEST_SKIP_MONGO=1: {test} left out");
        return None;
    }
    let url = std::env::var("GYOZA_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27117".into());
    let address = url
        .trim_start_matches("mongodb://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        std::net::TcpStream::connect(&address).is_ok(),
        "{test}: no MongoDB-wire server at {url}; run scripts/setup.d/30-mongo.sh or set GYOZA_TEST_SKIP_MONGO=1"
    );
    Some(url)
}

/// A server replica that the chaos can kill and restart on the same port and data directory.
struct Replica {
    server: Server,
    data: tempfile::TempDir,
    flags: Vec<String>,
}

impl Replica {
    fn start(flags: Vec<String>) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Server::start_in(gyoza_bin(), data.path(), API_KEY, &args);
        Self {
            server,
            data,
            flags,
        }
    }

    fn kill_and_restart(&mut self, pause: Duration) {
        let port = self.server.port().to_string();
        self.server.kill();
        std::thread::sleep(pause);
        let mut args: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        args.extend(["--port", &port]);
        // The port is free again at once (the listener sets SO_REUSEADDR); a bind that loses
        // a race with another process is retried.
        let mut tries = 0;
        loop {
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Server::start_in(gyoza_bin(), self.data.path(), API_KEY, &args)
            }));
            match started {
                Ok(server) => {
                    self.server = server;
                    return;
                }
                Err(_) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }
}

/// A worker that keeps its id and work directory across restarts.
struct Soaker {
    worker: Worker,
    id: String,
    url: String,
    work: tempfile::TempDir,
}

impl Soaker {
    fn flags() -> Vec<String> {
        [
            "--cpu-cores",
            &WORKER_CPUS.to_string(),
            "--ram-mb",
            "4096",
            "--max-concurrent",
            &WORKER_CPUS.to_string(),
            "--shutdown-grace",
            "5",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn start(id: String, url: String) -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        let flags = Self::flags();
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let worker = Worker::start_at(&url, &id, work.path(), &args);
        Self {
            worker,
            id,
            url,
            work,
        }
    }

    fn kill_and_restart(&mut self, pause: Duration) {
        self.worker.kill();
        std::thread::sleep(pause);
        let flags = Self::flags();
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.worker = Worker::start_at(&self.url, &self.id, self.work.path(), &args);
    }
}

/// Counts container starts by container name from `docker events`, in the background.
struct ContainerStarts {
    child: std::process::Child,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl ContainerStarts {
    fn stream() -> Self {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--filter",
                "label=gyoza.run_id",
                "--format",
                "{{.Actor.Attributes.name}}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run docker events");
        let stdout = child.stdout.take().expect("piped stdout");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let into = counts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(name) = line else { break };
                *lock(&into).entry(name.trim().to_owned()).or_insert(0) += 1;
            }
        });
        Self { child, counts }
    }

    fn of(&self, name: &str) -> u32 {
        lock(&self.counts).get(name).copied().unwrap_or(0)
    }
}

impl Drop for ContainerStarts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `f` on each client in turn until one answers (a replica may be down for a moment).
async fn on_any<T, F, Fut>(clients: &[Client], what: &str, f: F) -> T
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut turn = 0;
    loop {
        let client = clients[turn % clients.len()].clone();
        match f(client).await {
            Ok(value) => return value,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: no replica answered for 60 s: {e}"
                );
                turn += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Every run in `state` (all pages).
async fn runs_in(
    client: &Client,
    state: Option<OpRunState>,
) -> Result<Vec<OpRunView>, ClientError> {
    let mut runs = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list_runs(&RunFilter {
                limit: Some(100),
                state: state.map(|s| s.as_str().to_owned()),
                starting_after: after.clone(),
                ..RunFilter::default()
            })
            .await?;
        after = page.data.last().map(|r| r.id.clone());
        let more = page.has_more;
        runs.extend(page.data);
        if !more || after.is_none() {
            return Ok(runs);
        }
    }
}

/// The worst overcommit seen: CPU cores beyond a worker's, by the runs it reported running
/// in the ~200 ms samples of `GET /workers`, and by the runs the store had it hold.
#[derive(Debug, Default, Clone, Copy)]
struct Overcommit {
    samples: u64,
    reported_excess: u64,
    held_excess: u64,
}

/// One sample through `client`: the runs each worker reports against its CPU cores (every
/// run needs one core).
async fn sample(client: &Client, worst: &mut Overcommit) -> Result<(), ClientError> {
    for view in client.list_workers().await? {
        let cores = u64::from(view.worker.resources.cpu_cores);
        let reports = u64::try_from(view.worker.running_ops.len()).unwrap_or(u64::MAX);
        worst.reported_excess = worst.reported_excess.max(reports.saturating_sub(cores));
    }
    worst.samples += 1;
    Ok(())
}

/// The most CPU cores any worker held at once beyond its `cores`, from every attempt's
/// holding interval (assigned until finished, as the store recorded them): an exact
/// replay of what the samples could only catch in between two list requests.
fn held_excess(runs: &[OpRunView], cores: u32) -> u64 {
    let mut changes: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for run in runs {
        for attempt in &run.attempts {
            let (Some(worker), Some(from)) =
                (&attempt.execution_summary.worker_id, &attempt.assigned_at)
            else {
                continue;
            };
            let cpu = i64::from(attempt.constraints.cpu.unwrap_or(0));
            let entry = changes.entry(worker.as_str()).or_default();
            entry.push((from.timestamp_micros(), cpu));
            // Still held (none should be at the end): until the end of time.
            let until = attempt
                .finished_at
                .map_or(i64::MAX, |t| t.timestamp_micros());
            entry.push((until, -cpu));
        }
    }
    let mut worst = 0u64;
    for (_, mut list) in changes {
        // At one instant a release comes before a take.
        list.sort();
        let mut held = 0i64;
        for (_, change) in list {
            held = held.saturating_add(change);
            let excess = held.saturating_sub(i64::from(cores));
            worst = worst.max(u64::try_from(excess).unwrap_or(0));
        }
    }
    worst
}

/// What the chaos did.
#[derive(Debug, Default)]
struct Kills {
    servers: u32,
    workers: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_under_random_kills_runs_every_run_to_the_end_once() {
    if !docker_or_skip("soak") {
        return;
    }
    let Some(mongo) = mongo_or_skip("soak") else {
        return;
    };
    let runs_wanted: usize = env_or("GYOZA_SOAK_RUNS", 300);
    let kill_every_ms: u64 = env_or("GYOZA_SOAK_KILL_EVERY_MS", 3000);
    let deadline_s: u64 = env_or("GYOZA_SOAK_DEADLINE_S", 480);
    let seed: u64 = env_or("GYOZA_SOAK_SEED", u64::from(std::process::id()));
    let began = Instant::now();

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let database = format!("gyoza_soak_{}_{nanos}", std::process::id());
    // A worker silent for 10 s is lost; a live worker's unreported run is requeued 5 s after
    // its assignment (the soak's restarts take well under a second).
    let flags: Vec<String> = [
        "--store",
        &mongo,
        "--mongo-db",
        &database,
        "--worker-timeout",
        "10",
        "--reconcile-grace",
        "5",
    ]
    .map(str::to_owned)
    .to_vec();
    let starts = ContainerStarts::stream();
    let replicas = vec![Replica::start(flags.clone()), Replica::start(flags)];
    let urls: Vec<String> = replicas.iter().map(|r| r.server.url.clone()).collect();
    let clients: Vec<Client> = replicas.iter().map(|r| r.server.client()).collect();
    let workers: Vec<Soaker> = (0..3)
        .map(|i| {
            Soaker::start(
                format!("soak-w{i}-{}", std::process::id()),
                urls[i % urls.len()].clone(),
            )
        })
        .collect();
    let worker_ids: Vec<String> = workers.iter().map(|w| w.id.clone()).collect();

    let definition: OpDefinitionCreate = serde_json::from_value(json!({
        "id": "soak-nap", "version": "1", "image": "gyoza-example/sleep:latest",
        "input_specs": {"seconds": {"type": "int"}},
        "constraints": {"cpu": 1, "ram_mb": 64},
        "retry_policy": {"max_attempts": 3, "backoff_ms": 0}
    }))
    .expect("definition");
    clients[0]
        .upsert_definition(&definition)
        .await
        .expect("upsert definition");

    // The chaos: a random server or worker, SIGKILLed and restarted, every few seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let (mut replicas, mut workers) = (replicas, workers);
            let mut kills = Kills::default();
            let mut random = Lcg(seed);
            while kill_every_ms > 0 && !stop.load(Ordering::SeqCst) {
                let pause = kill_every_ms / 2 + random.below(kill_every_ms.max(1));
                let until = Instant::now() + Duration::from_millis(pause);
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let down = Duration::from_millis(100 + random.below(900));
                let target = usize::try_from(random.below(5)).unwrap_or(0);
                if let Some(replica) = replicas.get_mut(target) {
                    replica.kill_and_restart(down);
                    kills.servers += 1;
                } else if let Some(worker) = workers.get_mut(target - replicas.len()) {
                    worker.kill_and_restart(down);
                    kills.workers += 1;
                }
            }
            (replicas, workers, kills)
        })
    };

    // The sampler: every ~200 ms, through either replica.
    let sampler = {
        let (stop, clients) = (stop.clone(), clients.clone());
        tokio::spawn(async move {
            let mut worst = Overcommit::default();
            let mut turn = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let _ = sample(&clients[turn % clients.len()], &mut worst).await;
                turn = turn.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            worst
        })
    };

    // The runs, created through both replicas while the chaos goes on.
    let mut ids = Vec::with_capacity(runs_wanted);
    for n in 0..runs_wanted {
        let create = OpRunCreateFromDefinition {
            inputs: serde_json::from_value(json!({"seconds": 1})).expect("inputs"),
            priority: 5,
            ..Default::default()
        };
        let turn = [clients[n % 2].clone(), clients[(n + 1) % 2].clone()];
        let run = on_any(&turn, "create a run", |client| {
            let create = create.clone();
            async move {
                client
                    .create_run_from_definition("soak-nap", None, &create)
                    .await
            }
        })
        .await;
        ids.push(run.id);
    }
    let created_s = began.elapsed().as_secs_f64();

    // Until every run is terminal (nothing stuck) or the deadline.
    let deadline = began + Duration::from_secs(deadline_s);
    let mut open = usize::MAX;
    while open > 0 {
        assert!(
            Instant::now() < deadline,
            "{open} runs were still not terminal after {deadline_s} s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut counted = 0;
        for state in [
            OpRunState::Pending,
            OpRunState::Assigned,
            OpRunState::Running,
        ] {
            counted += on_any(&clients, "list open runs", |client| async move {
                runs_in(&client, Some(state)).await
            })
            .await
            .len();
        }
        open = counted;
    }
    let drained_s = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let (replicas, mut workers, kills) = chaos.await.expect("the chaos panicked");
    let mut worst = sampler.await.expect("the sampler panicked");
    // The workers stop gracefully: nothing is left to run, and nothing may be left behind.
    for worker in &mut workers {
        worker.worker.stop();
    }
    // Docker reports events a moment late.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let runs = on_any(&clients, "list every run", |client| async move {
        runs_in(&client, None).await
    })
    .await;
    let mut by_state: HashMap<&str, usize> = HashMap::new();
    let (mut requeues, mut op_retries, mut lost_reports) = (0, 0, 0);
    let mut problems = Vec::new();
    for run in runs.iter().filter(|r| ids.contains(&r.id)) {
        *by_state.entry(run.state.as_str()).or_insert(0) += 1;
        if !run.state.is_terminal() {
            problems.push(format!("{} is {}", run.id, run.state.as_str()));
        }
        for attempt in &run.attempts[..run.attempts.len().saturating_sub(1)] {
            if attempt.worker_lost {
                requeues += 1;
            } else if attempt.state == OpRunState::Failed {
                op_retries += 1;
            }
            // A requeued attempt whose container had started: a retry (e.g. a report lost
            // with its killed worker), not a second completion.
            let name = format!("gyoza-{}-{}", run.id, attempt.attempt);
            if attempt.worker_lost && starts.of(&name) > 0 {
                lost_reports += 1;
            }
        }
        let completed = run
            .attempts
            .iter()
            .filter(|a| a.state == OpRunState::Completed)
            .count();
        if completed > 1 {
            problems.push(format!("{} completed {completed} attempts", run.id));
        }
        if run.state == OpRunState::Completed {
            let name = format!("gyoza-{}-{}", run.id, run.current_attempt);
            let started = starts.of(&name);
            if started != 1 {
                problems.push(format!(
                    "{} completed attempt {} with {started} containers started",
                    run.id, run.current_attempt
                ));
            }
        }
    }
    let ours: Vec<OpRunView> = runs.into_iter().filter(|r| ids.contains(&r.id)).collect();
    worst.held_excess = held_excess(&ours, WORKER_CPUS);
    let found = by_state.values().sum::<usize>();
    if found != ids.len() {
        problems.push(format!("{} runs created, {found} found", ids.len()));
    }
    for id in &worker_ids {
        let left = Command::new("docker")
            .args(["ps", "--all", "--quiet", "--filter"])
            .arg(format!("label=gyoza.worker_id={id}"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if !left.is_empty() {
            problems.push(format!("worker {id} left containers: {left}"));
        }
    }
    let figures = format!(
        "soak: {} runs ({by_state:?}) on 2 replicas (MongoDB-wire) and 3 workers ({WORKER_CPUS} CPUs each); \
         kills: {} servers, {} workers (seed {seed}, every ~{kill_every_ms} ms); \
         requeues: {requeues} (of which {lost_reports} after their container had started: retries, e.g. a report lost with its worker); \
         op retries: {op_retries}; samples: {}; max overcommit: {} CPUs held (replayed from every attempt), {} runs reported (sampled); \
         created in {created_s:.0} s, all terminal after {drained_s:.0} s",
        ids.len(),
        kills.servers,
        kills.workers,
        worst.samples,
        worst.held_excess,
        worst.reported_excess,
    );
    println!("{figures}");
    eprintln!("{figures}");
    drop(replicas);
    assert!(problems.is_empty(), "{figures}\n{problems:#?}");
    assert!(worst.samples > 0, "the sampler never got an answer");
    assert_eq!(worst.held_excess, 0, "a worker held more than its capacity");
    assert_eq!(
        worst.reported_excess, 0,
        "a worker ran more than its capacity"
    );
}
