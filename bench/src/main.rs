//! gyoza-bench: starts a real `gyoza server` process and drives it over HTTP.
//!
//! ```text
//! cargo build --release -p gyoza-cli
//! cargo run --release -p gyoza-bench -- create  [--store URL]   # POST /runs, 32 clients
//! cargo run --release -p gyoza-bench -- claims  [--store URL]   # 10,000 runs, 50 workers
//! cargo run --release -p gyoza-bench -- claim-latency [--store URL]   # one claim at a time
//! cargo run --release -p gyoza-bench -- submit-to-claim [--store URL]   # POST /runs → a waiting claim's answer
//! cargo run --release -p gyoza-bench -- memory                  # RSS idle and with 100,000 runs
//! cargo run --release -p gyoza-bench -- worker                  # claim → container start vs docker run
//! cargo run --release -p gyoza-bench -- events  [--events N] [--event-bytes B]   # one chatty run
//! cargo run --release -p gyoza-bench -- fair-share [--runs N] [--seconds S]   # 3 real workers, 2 queues
//! scripts/bench-affinity.sh [--runs N] [--seconds S] [--every-ms M]   # image locality, engines of their own
//! cargo run --release -p gyoza-bench -- scale [--runs N] [--workers W]   # 1M runs stored, 1,000 workers
//! ```
//!
//! The server binary is `target/release/gyoza` (or `GYOZA_BIN`); `--store` is passed to it
//! (default: the embedded SQLite store in a temporary directory). Each scenario prints its
//! figures; BENCHMARKS.md records them with the method.
//!
//! # Layout
//! - [`Server`]: the server process (free port, temp data dir, killed on drop).
//! - one `async fn` per scenario; [`Latencies`] for percentiles.

mod affinity;
mod cluster;
mod scale;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gyoza_core::api::{AddEventRequest, HeartbeatRequest, OpRunCreate, WorkerEvent};
use gyoza_core::client::Client;
use gyoza_core::{Constraints, Resources};
use serde_json::json;

const KEY: &str = "bench-key";

/// The gyoza binary: `GYOZA_BIN`, else the workspace's release build.
fn server_bin() -> String {
    std::env::var("GYOZA_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/gyoza").to_owned()
    })
}

/// A server process for one scenario.
struct Server {
    child: Child,
    url: String,
    _data: std::path::PathBuf,
}

impl Server {
    fn start(store: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(store, &[])
    }

    /// [`Server::start`] with these environment variables set (strategy, queues).
    fn start_with(store: Option<&str>, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = server_bin();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = std::env::temp_dir().join(format!("gyoza-bench-{}-{port}", std::process::id()));
        let mut command = Command::new(&bin);
        command
            .args(["server", "start", "--port", &port.to_string(), "--data-dir"])
            .arg(&data)
            .env("GYOZA_API_KEY", KEY)
            .env("GYOZA_LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(store) = store {
            command.args(["--store", store, "--mongo-db", &format!("bench_{port}")]);
        }
        let child = command.spawn().with_context(|| {
            format!("cannot start {bin} (build it: cargo build --release -p gyoza-cli)")
        })?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let client = Client::new(&self.url, Some(KEY))?;
        for _ in 0..600 {
            if client.health().await.is_ok() {
                return Ok(client);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server did not answer within 30 s")
    }

    /// CPU time (user + system, all threads) the server process has used so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }

    fn rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._data);
    }
}

/// CPU time (user + system) of a process from its `/proc/<pid>/stat`, in clock ticks of
/// 1/100 s (Linux's USER_HZ on x86_64 and arm64).
fn cpu_of(stat_path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(stat_path)?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short stat")?.parse::<u64>()?)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the parenthesis.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// CPU used per operation by the server and by this harness over a measured phase.
struct CpuMeter {
    server: Duration,
    harness: Duration,
}

impl CpuMeter {
    fn start(server: &Server) -> anyhow::Result<Self> {
        Ok(Self {
            server: server.cpu()?,
            harness: cpu_of("/proc/self/stat")?,
        })
    }

    /// "server X µs + harness Y µs of CPU per <unit>".
    fn per(&self, server: &Server, count: usize, unit: &str) -> anyhow::Result<String> {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
        let server_us = per(server.cpu()? - self.server);
        let harness_us = per(cpu_of("/proc/self/stat")? - self.harness);
        Ok(format!(
            "CPU per {unit}: server {server_us:.0} µs + harness {harness_us:.0} µs (2 cores allow at most {:.0} {unit}s/s)",
            2e6 / (server_us + harness_us)
        ))
    }
}

/// Latency samples.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&mut self, p: f64) -> f64 {
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

fn ad_hoc(i: usize) -> OpRunCreate {
    // Mixed sizes: 1–4 CPUs, 256–2048 MB.
    OpRunCreate {
        image: "bench:latest".into(),
        priority: (i % 10) as i64,
        inputs: serde_json::from_value(json!({"i": i})).unwrap_or_default(),
        constraints: Some(Constraints {
            cpu: Some(1 + (i % 4) as u32),
            ram_mb: Some(256 << (i % 4)),
            vram_mb: None,
            ..Constraints::default()
        }),
        retry_policy: None,
        event_delivery: None,
        queue: None,
        labels: None,
        preemptible: None,
    }
}

/// Event `kind` (STARTED, COMPLETED) of `op`'s attempt, as worker `worker` sends it.
fn worker_event(op: &gyoza_core::WorkerOpRun, worker: &str, kind: &str) -> AddEventRequest {
    AddEventRequest {
        event_type: kind.into(),
        msg: json!(""),
        payload: Some(serde_json::from_value(json!({"worker_id": worker})).unwrap_or_default()),
        attempt: op.attempt,
    }
}

/// Creates `total` runs with `clients` concurrent clients; returns (runs/s, latencies).
async fn create_runs(
    client: &Client,
    total: usize,
    clients: usize,
) -> anyhow::Result<(f64, Latencies)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                client.create_run(&ad_hoc(i)).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Latencies::default();
    for task in tasks {
        all.0.extend(task.await??);
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), all))
}

async fn create(store: Option<&str>) -> anyhow::Result<()> {
    let server = Server::start(store)?;
    let client = server.client().await?;
    let meter = CpuMeter::start(&server)?;
    let (rate, mut latencies) = create_runs(&client, 20_000, 32).await?;
    println!(
        "create: 20000 runs, 32 clients: {rate:.0} runs/s, latency p50 {:.2} ms, p99 {:.2} ms; {}",
        latencies.percentile(0.5),
        latencies.percentile(0.99),
        meter.per(&server, 20_000, "run")?
    );
    Ok(())
}

/// `batch`: each worker sends the STARTED and COMPLETED of the runs one claim gave it in one
/// `POST /workers/{id}/events`, not two `POST /runs/{id}/events` per run.
async fn claims(
    store: Option<&str>,
    runs: usize,
    workers: usize,
    batch: bool,
) -> anyhow::Result<()> {
    let server = Server::start(store)?;
    let client = server.client().await?;
    create_runs(&client, runs, 32).await?;
    let heartbeat = |w: usize| HeartbeatRequest {
        worker_id: format!("bench-{w}"),
        resources: Resources {
            cpu_cores: 16,
            ram_mb: 65_536,
            gpus: vec![],
        },
        tags: vec![],
        running_ops: Some(vec![]),
        instance: None,
    };
    for w in 0..workers {
        client.heartbeat(&heartbeat(w)).await?;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let meter = CpuMeter::start(&server)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, done) = (client.clone(), done.clone());
        let beat = heartbeat(w);
        tasks.push(tokio::spawn(async move {
            let (mut mine, mut latencies, mut empty) = (Vec::new(), Vec::new(), 0);
            while done.load(Ordering::Relaxed) < runs && empty < 50 {
                client.heartbeat(&beat).await?;
                let t = Instant::now();
                let ops = client.claim(&beat.worker_id, 8).await?;
                latencies.push(t.elapsed());
                if ops.is_empty() {
                    empty += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                empty = 0;
                // The worker holds nothing else when it claims (it ends each claim's runs
                // before the next): what one claim gave it must fit its capacity.
                let cpu: u64 = ops
                    .iter()
                    .map(|op| u64::from(op.constraints.cpu.unwrap_or(0)))
                    .sum();
                let ram: u64 = ops
                    .iter()
                    .map(|op| op.constraints.ram_mb.unwrap_or(0))
                    .sum();
                if cpu > u64::from(beat.resources.cpu_cores) || ram > beat.resources.ram_mb {
                    bail!(
                        "{} was given {cpu} CPUs and {ram} MB, over its capacity",
                        beat.worker_id
                    );
                }
                if batch {
                    let events: Vec<WorkerEvent> = ops
                        .iter()
                        .flat_map(|op| {
                            ["STARTED", "COMPLETED"].map(|kind| WorkerEvent {
                                run_id: op.id.clone(),
                                event: worker_event(op, &beat.worker_id, kind),
                            })
                        })
                        .collect();
                    let answer = client.worker_events(&beat.worker_id, &events).await?;
                    if answer.failed > 0 {
                        bail!(
                            "{} events were refused: {:?}",
                            answer.failed,
                            answer.results
                        );
                    }
                } else {
                    for op in &ops {
                        for kind in ["STARTED", "COMPLETED"] {
                            let event = worker_event(op, &beat.worker_id, kind);
                            client.add_event(&op.id, &event).await?;
                        }
                    }
                }
                for op in ops {
                    done.fetch_add(1, Ordering::Relaxed);
                    mine.push(op.id);
                }
            }
            Ok::<_, anyhow::Error>((mine, latencies))
        }));
    }
    let (mut placed, mut latencies) = (Vec::new(), Latencies::default());
    for task in tasks {
        let (mine, lat) = task.await??;
        placed.extend(mine);
        latencies.0.extend(lat);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = placed.len();
    placed.sort();
    placed.dedup();
    if placed.len() != total {
        bail!("{} runs were assigned twice", total - placed.len());
    }
    println!(
        "claims: {runs} runs, {workers} workers (heartbeat + claim + STARTED + COMPLETED{}): {} placed once each, none over capacity, {:.0} placements/s, claim p50 {:.2} ms, p99 {:.2} ms; {}",
        if batch {
            ", events batched per claim"
        } else {
            ""
        },
        total,
        total as f64 / elapsed,
        latencies.percentile(0.5),
        latencies.percentile(0.99),
        meter.per(&server, total, "placement")?
    );
    let metrics = client.metrics().await?;
    let strategy = |quantile: &str| {
        let sample =
            format!("gyoza_strategy_latency_{quantile}_seconds{{strategy=\"bin-packing\"}}");
        metric(&metrics, &sample).map_or("-".to_owned(), |v| format!("{:.2} ms", v * 1e3))
    };
    println!(
        "claims: mean per claim round: {}; the strategy's call alone p50 {}, p99 {}",
        claim_phases(&metrics),
        strategy("p50"),
        strategy("p99")
    );
    if total != runs {
        bail!("only {total} of {runs} runs were placed");
    }
    Ok(())
}

/// The value of `sample` (a name with its labels) in the exposition text `metrics`.
fn metric(metrics: &str, sample: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.parse::<f64>().ok())
}

/// The mean of each phase of a claim round, from `gyoza_claim_phase_seconds` in `metrics`.
fn claim_phases(metrics: &str) -> String {
    let value = |name: &str, phase: &str| {
        metric(
            metrics,
            &format!("gyoza_claim_phase_seconds_{name}{{phase=\"{phase}\"}}"),
        )
    };
    ["view", "turn", "decide", "assign"]
        .iter()
        .map(|phase| match (value("sum", phase), value("count", phase)) {
            (Some(sum), Some(count)) if count > 0.0 => {
                format!("{phase} {:.2} ms", sum / count * 1e3)
            }
            _ => format!("{phase} -"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One claim at a time on an otherwise idle server: `runs` pending runs, `workers` workers
/// holding up to 8 started runs each, then `10 × SAMPLES` claims by a worker that can take
/// nothing (it has too little RAM for any run: after its first claim, answered from its free
/// capacity and the least a pending run needs, without reading the window) and `SAMPLES`
/// claims of one run by a free worker (fewer when fewer runs are left; each run completed
/// before the next claim, untimed); the latency of each claim request, and the server's CPU
/// per claim.
async fn claim_latency(store: Option<&str>, runs: usize, workers: usize) -> anyhow::Result<()> {
    const SAMPLES: usize = 300;
    let server = Server::start(store)?;
    let client = server.client().await?;
    create_runs(&client, runs, 32).await?;
    let heartbeat = |name: String, ram_mb: u64| HeartbeatRequest {
        worker_id: name,
        resources: Resources {
            cpu_cores: 16,
            ram_mb,
            gpus: vec![],
        },
        tags: vec![],
        running_ops: None,
        instance: None,
    };
    let mut held = 0;
    for w in 0..workers {
        let beat = heartbeat(format!("bench-{w}"), 65_536);
        client.heartbeat(&beat).await?;
        for op in client.claim(&beat.worker_id, 8).await? {
            client
                .add_event(&op.id, &worker_event(&op, &beat.worker_id, "STARTED"))
                .await?;
            held += 1;
        }
    }
    // With few runs, the one-run claims stop when none is left.
    let mut pending_left = runs - held;
    let mut line = format!(
        "claim latency: {runs} runs, {workers} workers holding {held} ({pending_left} pending):"
    );
    for (name, ram_mb) in [("full", 1), ("one run", 65_536)] {
        let beat = heartbeat(format!("probe-{ram_mb}"), ram_mb);
        client.heartbeat(&beat).await?;
        let (mut latencies, mut cpu) = (Latencies::default(), Duration::ZERO);
        // Ten times as many full claims: each costs about a tenth, and the server's CPU is
        // read in 10 ms ticks.
        let samples = match ram_mb {
            1 => SAMPLES * 10,
            _ => SAMPLES.min(pending_left),
        };
        for _ in 0..samples {
            let before = server.cpu()?;
            let t = Instant::now();
            let ops = client.claim(&beat.worker_id, 1).await?;
            latencies.0.push(t.elapsed());
            cpu += server.cpu()? - before;
            pending_left -= ops.len();
            match (ram_mb, ops.as_slice()) {
                (1, []) => {}
                (1, _) => bail!("a worker with 1 MB of RAM was given a run"),
                (_, [op]) => {
                    for kind in ["STARTED", "COMPLETED"] {
                        client
                            .add_event(&op.id, &worker_event(op, &beat.worker_id, kind))
                            .await?;
                    }
                }
                (_, ops) => bail!("a claim of one run answered {} runs", ops.len()),
            }
        }
        line += &format!(
            " {name}: {} claims, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0} µs per claim;",
            latencies.0.len(),
            latencies.percentile(0.5),
            latencies.percentile(0.99),
            cpu.as_secs_f64() * 1e6 / latencies.0.len().max(1) as f64
        );
    }
    println!("{}", line.trim_end_matches(';'));
    Ok(())
}

/// Submission to claim on an idle worker: `SAMPLES` times, a worker's long-polling claim
/// (`wait_ms=10000`) waits (seen in `gyoza_claims_waiting`), a run is submitted, and the time
/// from sending `POST /runs` to the claim's answer is taken; the run is then started and
/// completed (untimed) so that the worker is idle again.
async fn submit_to_claim(store: Option<&str>) -> anyhow::Result<()> {
    const SAMPLES: usize = 200;
    let server = Server::start(store)?;
    let client = server.client().await?;
    let worker = "idle";
    client
        .heartbeat(&HeartbeatRequest {
            worker_id: worker.into(),
            resources: Resources {
                cpu_cores: 4,
                ram_mb: 8_192,
                gpus: vec![],
            },
            tags: vec![],
            running_ops: None,
            instance: None,
        })
        .await?;
    let mut latencies = Latencies::default();
    for _ in 0..SAMPLES {
        let waiting = {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .claim_waiting(worker, 1, Duration::from_secs(10))
                    .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client
            .metrics()
            .await?
            .lines()
            .any(|l| l == "gyoza_claims_waiting 1")
        {
            if Instant::now() > deadline {
                bail!("the claim never waited");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t = Instant::now();
        let run = client.create_run(&ad_hoc(1)).await?;
        let ops = waiting.await??;
        latencies.0.push(t.elapsed());
        let [op] = ops.as_slice() else {
            bail!("the waiting claim answered {} runs", ops.len());
        };
        if op.id != run.id {
            bail!("the waiting claim got another run");
        }
        for kind in ["STARTED", "COMPLETED"] {
            client
                .add_event(&op.id, &worker_event(op, worker, kind))
                .await?;
        }
    }
    println!(
        "submit to claim: {SAMPLES} runs, each submitted while an idle worker's claim waits: p50 {:.2} ms, p99 {:.2} ms",
        latencies.percentile(0.5),
        latencies.percentile(0.99)
    );
    Ok(())
}

/// One chatty run: `events` INFO events of `bytes` bytes appended to it one after the other
/// over HTTP with nothing else going on, the mean time and the server's CPU of the first and
/// of the last thousand appends and their ratios; then `CONTENDED` appends to a second chatty
/// run (the first is at its 10,000-event cap; the store holds its history) while 4 other
/// workers claim, start and complete short runs, and those claims' latencies.
async fn events(events: usize, bytes: usize) -> anyhow::Result<()> {
    const CLAIMERS: usize = 4;
    const CONTENDED: usize = 2_000;
    let server = Server::start(None)?;
    let client = server.client().await?;
    let beat = |name: String| HeartbeatRequest {
        worker_id: name,
        resources: Resources {
            cpu_cores: 64,
            ram_mb: 1 << 20,
            gpus: vec![],
        },
        tags: vec![],
        running_ops: None,
        instance: None,
    };
    // The chatty runs, assigned to a worker of their own.
    client.heartbeat(&beat("chatty".into())).await?;
    let mut chatty_runs = Vec::new();
    for _ in 0..2 {
        let run = client.create_run(&ad_hoc(0)).await?;
        let claimed = client.claim("chatty", 1).await?;
        if claimed.first().map(|op| &op.id) != Some(&run.id) {
            bail!("a chatty run was not claimed first");
        }
        chatty_runs.push(run);
    }
    // Runs for the others to claim in the contended phase.
    create_runs(&client, 20_000, 8).await?;
    let pad = "x".repeat(bytes);
    let append = |chatty: &gyoza_core::api::OpRunView, i: usize| {
        let (client, chatty, pad) = (client.clone(), chatty.clone(), pad.clone());
        async move {
            let event = AddEventRequest {
                event_type: "INFO".into(),
                msg: json!(format!("event {i}")),
                payload: Some(serde_json::from_value(json!({"pad": pad})).unwrap_or_default()),
                attempt: chatty.current_attempt.into(),
            };
            let t = Instant::now();
            client.add_event(&chatty.id, &event).await?;
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };

    // Quiet: the cost of an append against the history before it, time and server CPU per
    // window of a thousand.
    let window = 1_000.min(events);
    let mut costs = Vec::with_capacity(events);
    let mut cpu = Vec::new();
    let mut window_start = server.cpu()?;
    for i in 0..events {
        costs.push(append(&chatty_runs[0], i).await?);
        if (i + 1) % window == 0 {
            let now = server.cpu()?;
            cpu.push((now - window_start).as_secs_f64() * 1e6 / window as f64);
            window_start = now;
        }
    }
    let mean = |part: &[Duration]| -> f64 {
        part.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / part.len().max(1) as f64
    };
    let (first, last) = (mean(&costs[..window]), mean(&costs[events - window..]));
    let (cpu_first, cpu_last) = (cpu[0], cpu[cpu.len() - 1]);

    // Contended: appends go on while other workers claim; their claim latencies.
    let appending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut claimers = Vec::new();
    for w in 0..CLAIMERS {
        let (client, appending) = (client.clone(), appending.clone());
        let beat = beat(format!("claimer-{w}"));
        claimers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while appending.load(Ordering::Relaxed) {
                client.heartbeat(&beat).await?;
                let t = Instant::now();
                let ops = client.claim(&beat.worker_id, 1).await?;
                latencies.push(t.elapsed());
                for op in ops {
                    for kind in ["STARTED", "COMPLETED"] {
                        let event = worker_event(&op, &beat.worker_id, kind);
                        client.add_event(&op.id, &event).await?;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut contended = Vec::with_capacity(CONTENDED);
    for i in events..events + CONTENDED {
        contended.push(append(&chatty_runs[1], i).await?);
    }
    appending.store(false, Ordering::Relaxed);
    let mut claims = Latencies::default();
    for claimer in claimers {
        claims.0.extend(claimer.await??);
    }
    let view = client.get_run(&chatty_runs[0].id).await?;
    println!(
        "events: {events} INFO events of {bytes} B on one run (SQLite), alone: first {window} mean {first:.2} ms, last {window} mean {last:.2} ms, ratio {:.2}; server CPU per append first {window} {cpu_first:.0} µs, last {window} {cpu_last:.0} µs, ratio {:.2}; windows of {window} (µs of server CPU per append): {}",
        last / first,
        cpu_last / cpu_first.max(1.0),
        cpu.iter()
            .map(|c| format!("{c:.0}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!(
        "events: {CONTENDED} appends to a second run (the store holding {events} to {} events) mean {:.2} ms while {CLAIMERS} other workers claimed: {} claims, p50 {:.2} ms, p99 {:.2} ms; first run's events_total {}",
        events + CONTENDED,
        mean(&contended),
        claims.0.len(),
        claims.percentile(0.5),
        claims.percentile(0.99),
        view.events_total,
    );
    Ok(())
}

/// Container start times (nanoseconds since the epoch) by container name, from `docker events`.
struct ContainerStarts {
    child: Child,
    seen: Arc<std::sync::Mutex<std::collections::HashMap<String, i128>>>,
}

impl ContainerStarts {
    fn listen() -> anyhow::Result<Self> {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--format",
                "{{.Actor.Attributes.name}} {{.TimeNano}}",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run `docker events` (is the docker CLI installed?)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some((name, nanos)) = line.rsplit_once(' ')
                    && let Ok(nanos) = nanos.parse::<i128>()
                    && let Ok(mut seen) = sink.lock()
                {
                    seen.insert(name.to_owned(), nanos);
                }
            }
        });
        Ok(Self { child, seen })
    }

    /// When container `name` started, waiting up to 10 s for docker to tell.
    async fn of(&self, name: &str) -> anyhow::Result<i128> {
        for _ in 0..1000 {
            if let Some(nanos) = self.seen.lock().ok().and_then(|s| s.get(name).copied()) {
                return Ok(nanos);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("docker reported no start of container {name}")
    }
}

impl Drop for ContainerStarts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn epoch_nanos(t: std::time::SystemTime) -> i128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Waits, up to 30 s, until `n` workers are registered (the scenario then goes on whatever
/// it finds: a worker that never registers shows as runs it never took).
async fn wait_for_workers(client: &Client, n: usize) -> anyhow::Result<()> {
    for _ in 0..300 {
        if client.list_workers().await?.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Polls each of `ids` until it is terminal; fails when one is not within `timeout` of the
/// start. The runs as they ended, in `ids`' order.
async fn wait_all_finished(
    client: &Client,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<gyoza_core::api::OpRunView>> {
    let deadline = Instant::now() + timeout;
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let run = client.get_run(id).await?;
            if run.state.is_terminal() {
                done.push(run);
                break;
            }
            if Instant::now() > deadline {
                bail!("run {id} did not finish in time ({:?})", run.state);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(done)
}

/// A `gyoza worker` process against `server`, killed on drop.
struct WorkerProcess(Child);

impl WorkerProcess {
    /// `gyoza worker start` against `url` as worker `id`, with `args` and `env` added (its
    /// output but warnings and errors discarded).
    fn spawn(
        url: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        let child = Command::new(server_bin())
            .args(["worker", "start", "--server-url", url, "--worker-id", id])
            .args(args)
            .env("GYOZA_API_KEY", KEY)
            .env("GYOZA_LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a worker")?;
        Ok(Self(child))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn worker_start() -> anyhow::Result<()> {
    const SAMPLES: usize = 15;
    let image =
        std::env::var("GYOZA_BENCH_IMAGE").unwrap_or_else(|_| "gyoza-example/echo:latest".into());
    let inspected = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run docker")?;
    if !inspected.success() {
        bail!("image {image} is not on this machine: build it with examples/ops/build.sh echo");
    }
    let server = Server::start(None)?;
    let client = server.client().await?;
    let starts = ContainerStarts::listen()?;
    let work = std::env::temp_dir().join(format!("gyoza-bench-work-{}", std::process::id()));
    let _worker = WorkerProcess::spawn(
        &server.url,
        "bench-worker",
        &[],
        &[("GYOZA_WORK_DIR", work.as_os_str())],
    )?;
    wait_for_workers(&client, 1).await?;
    // One run first, not counted: the first container of a worker pays for warming caches.
    let mut gyoza = Vec::new();
    for i in 0..=SAMPLES {
        let run = client
            .create_run(&OpRunCreate {
                image: image.clone(),
                priority: 0,
                inputs: serde_json::from_value(json!({"i": i})).unwrap_or_default(),
                constraints: None,
                retry_policy: None,
                event_delivery: None,
                queue: None,
                labels: None,
                preemptible: None,
            })
            .await?;
        let done = wait_until_finished(&client, &run.id).await?;
        let attempt = done.attempts.last().context("a run without attempts")?;
        let assigned = attempt
            .assigned_at
            .context("the attempt has no assigned_at")?;
        let container = format!("gyoza-{}-{}", run.id, attempt.attempt);
        let started = starts.of(&container).await?;
        let assigned = i128::from(assigned.timestamp_nanos_opt().unwrap_or(0));
        if i > 0 {
            gyoza.push((started - assigned) as f64 / 1e6);
        }
    }
    let mut docker = Vec::new();
    for i in 0..=SAMPLES {
        let name = format!("gyoza-bench-docker-run-{}-{i}", std::process::id());
        let invoked = epoch_nanos(std::time::SystemTime::now());
        let status = Command::new("docker")
            .args(["run", "--rm", "--name", &name, &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let started = starts.of(&name).await?;
        if i > 0 {
            docker.push((started - invoked) as f64 / 1e6);
        }
        let _ = status;
    }
    let (gyoza_ms, docker_ms) = (median_ms(gyoza), median_ms(docker));
    println!(
        "worker: claim → container start median {gyoza_ms:.1} ms; `docker run` → container start median {docker_ms:.1} ms; ratio {:.2} ({SAMPLES} runs each, {image})",
        gyoza_ms / docker_ms
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

async fn wait_until_finished(
    client: &Client,
    id: &str,
) -> anyhow::Result<gyoza_core::api::OpRunView> {
    for _ in 0..6000 {
        let run = client.get_run(id).await?;
        if run.state.is_terminal() {
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("run {id} did not finish within 60 s")
}

async fn memory() -> anyhow::Result<()> {
    let server = Server::start(None)?;
    let client = server.client().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = server.rss_mb()?;
    create_runs(&client, 100_000, 32).await?;
    let loaded = server.rss_mb()?;
    println!("memory: server RSS idle {idle:.1} MB, with 100000 runs stored {loaded:.1} MB");
    Ok(())
}

/// Every scenario, each three times where BENCHMARKS.md gives a median; with `--store`, the
/// claims on that MongoDB-wire server too (1,000 runs, 10 workers). A scenario that fails
/// is reported and the others still run; the exit status says whether all passed.
async fn all(mongo: Option<&str>) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut note = |name: &str, result: anyhow::Result<()>| {
        if let Err(e) = result {
            println!("{name}: FAILED: {e:#}");
            failed.push(name.to_owned());
        }
    };
    for _ in 0..3 {
        note("create", create(None).await);
    }
    for _ in 0..3 {
        note("claims", claims(None, 10_000, 50, false).await);
        note(
            "claims --batch-events",
            claims(None, 10_000, 50, true).await,
        );
    }
    for _ in 0..3 {
        note("claim-latency", claim_latency(None, 10_000, 50).await);
    }
    for _ in 0..3 {
        note("submit-to-claim", submit_to_claim(None).await);
    }
    note("memory", memory().await);
    for _ in 0..3 {
        note("worker", worker_start().await);
    }
    note("fair-share", cluster::fair_share(150, 2).await);
    if let Some(url) = mongo {
        note(
            "claims on MongoDB",
            claims(Some(url), 1_000, 10, false).await,
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("failed: {}", failed.join(", "))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store = args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let number = |flag: &str, default: usize| -> anyhow::Result<usize> {
        match args.iter().position(|a| a == flag) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{flag} needs a number")),
            None => Ok(default),
        }
    };
    match args.first().map(String::as_str) {
        Some("create") => create(store).await,
        Some("claims") => {
            let batch = args.iter().any(|a| a == "--batch-events");
            claims(
                store,
                number("--runs", 10_000)?,
                number("--workers", 50)?,
                batch,
            )
            .await
        }
        Some("claim-latency") => {
            claim_latency(store, number("--runs", 10_000)?, number("--workers", 50)?).await
        }
        Some("submit-to-claim") => submit_to_claim(store).await,
        Some("memory") => memory().await,
        Some("worker") => worker_start().await,
        Some("events") => {
            events(number("--events", 10_000)?, number("--event-bytes", 4_096)?).await
        }
        Some("affinity") => {
            let list = |flag: &str| -> Vec<String> {
                args.iter()
                    .position(|a| a == flag)
                    .and_then(|i| args.get(i + 1))
                    .map(|v| v.split(',').map(str::to_owned).collect())
                    .unwrap_or_default()
            };
            affinity::affinity(
                list("--engines"),
                list("--images"),
                number("--runs", 40)?,
                number("--seconds", 4)? as u64,
                number("--every-ms", 1000)? as u64,
            )
            .await
        }
        Some("scale") => {
            scale::scale(number("--runs", 1_000_000)?, number("--workers", 1_000)?).await
        }
        Some("fair-share") => {
            cluster::fair_share(number("--runs", 150)?, number("--seconds", 2)? as u64).await
        }
        Some("all") => all(store).await,
        _ => bail!(
            "usage: gyoza-bench create|claims|claim-latency|submit-to-claim|memory|worker|events|fair-share|affinity|scale|all [--store URL] [--runs N] [--workers N] [--events N] [--event-bytes B] [--seconds S] [--engines SOCK,..] [--images IMAGE,..] [--every-ms M]"
        ),
    }
}
