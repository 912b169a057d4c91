//! `gyoza-bench fair-share`: the `fair-share` strategy on a real cluster. A release server,
//! three `gyoza worker start` processes (2 cores, 4096 MB each, by override) running real
//! containers of the example sleep image on the Docker engine, and two queues.
//!
//! 1. **Weights.** `a:weight=2; b:weight=1`. All of `b`'s runs are submitted first, then all
//!    of `a`'s (1 core, `--seconds` each). The contended period runs from `a`'s first
//!    submission to the first moment one queue has nothing left to start (the last
//!    assignment of either queue, whichever comes first). Over it, each queue's busy
//!    worker-seconds (CPU cores held × time, from each attempt's `assigned_at` to its
//!    `finished_at`, clipped to the period) and their ratio are printed: 2.0 is the target.
//! 2. **Quota.** The same with `b:weight=1,cpu=2`. What `b` holds is sampled from
//!    `GET /queues` every 100 ms, and also computed exactly from the attempts' intervals:
//!    the most it held at any instant is printed next to the quota.
//! 3. **Reclaim.** `reclaim=true`; `b`'s preemptible runs (priority 0, 120 s each) fill the
//!    six cores, then `a` submits six runs of priority 1. The time from that submission to
//!    `a` holding its fair part (4 of the 6 cores) is printed, with the workers' heartbeat
//!    interval (a full worker claims at its tick).
//!
//! Prints figures; asserts only that every run ended (COMPLETED, or preempted and then
//! COMPLETED).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gyoza_core::OpRunState;
use gyoza_core::api::{OpDefinitionCreate, OpRunCreateFromDefinition, OpRunView};
use gyoza_core::client::Client;
use serde_json::json;

use gyoza_e2e::held::{busy, holds, last_assigned, now_us, peak};

use super::{Server, WorkerProcess, wait_all_finished, wait_for_workers};

const IMAGE: &str = "gyoza-example/sleep:latest";
const WORKERS: usize = 3;
const CORES: u32 = 2;
const HEARTBEAT_S: u64 = 1;

/// One phase's server and workers.
struct Cluster {
    // Dropped first: the workers before their server.
    _workers: Vec<WorkerProcess>,
    server: Server,
    client: Client,
    work: std::path::PathBuf,
}

impl Cluster {
    async fn start(queues: &str, config: &str) -> anyhow::Result<Self> {
        let server = Server::start_with(
            None,
            &[
                ("GYOZA_STRATEGY", "fair-share"),
                ("GYOZA_QUEUES", queues),
                ("GYOZA_STRATEGY_CONFIG", config),
            ],
        )?;
        let client = server.client().await?;
        let definition: OpDefinitionCreate = serde_json::from_value(json!({
            "id": "nap", "version": "1", "image": IMAGE,
            "input_specs": {"seconds": {"type": "int"}},
            "constraints": {"cpu": 1, "ram_mb": 256},
            "retry_policy": {"max_attempts": 1}
        }))?;
        client.upsert_definition(&definition).await?;
        let work = std::env::temp_dir().join(format!("gyoza-bench-fs-{}", std::process::id()));
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let id = format!("fs-{i}");
            let (cores, heartbeat) = (CORES.to_string(), HEARTBEAT_S.to_string());
            let args = [
                "--cpu-cores",
                &cores,
                "--ram-mb",
                "4096",
                "--max-concurrent",
                "8",
                "--heartbeat-interval",
                &heartbeat,
            ];
            let state = work.join(&id);
            let env = [("GYOZA_WORKER_STATE_DIR", state.as_os_str())];
            workers.push(WorkerProcess::spawn(&server.url, &id, &args, &env)?);
        }
        wait_for_workers(&client, WORKERS).await?;
        Ok(Self {
            server,
            client,
            _workers: workers,
            work,
        })
    }

    async fn submit(
        &self,
        queue: &str,
        n: usize,
        seconds: u64,
        priority: i64,
        preemptible: bool,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let run = OpRunCreateFromDefinition {
                inputs: serde_json::from_value(json!({"seconds": seconds}))?,
                priority,
                queue: Some(queue.into()),
                preemptible: Some(preemptible),
                ..Default::default()
            };
            ids.push(
                self.client
                    .create_run_from_definition("nap", None, &run)
                    .await?
                    .id,
            );
        }
        Ok(ids)
    }

    async fn finished(&self, ids: &[String], timeout: Duration) -> anyhow::Result<Vec<OpRunView>> {
        wait_all_finished(&self.client, ids, timeout).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
        let _ = &self.server;
    }
}

/// Samples what queue `name` holds (CPU) from `GET /queues` until `stop` is set.
fn sample(
    client: Client,
    name: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(list) = client.queues().await
                && let Some(queue) = list.queues.iter().find(|q| q.name == name)
            {
                seen.push(queue.held.cpu);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

async fn weights(runs: usize, seconds: u64, quota: Option<u32>) -> anyhow::Result<()> {
    let queues = match quota {
        Some(cpu) => format!("a:weight=2; b:weight=1,cpu={cpu}"),
        None => "a:weight=2; b:weight=1".to_owned(),
    };
    let cluster = Cluster::start(&queues, "").await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample(cluster.client.clone(), "b", stop.clone());
    let b = cluster.submit("b", runs, seconds, 5, false).await?;
    let from = now_us();
    let a = cluster.submit("a", runs, seconds, 5, false).await?;
    let timeout = Duration::from_secs(60 + 2 * runs as u64 * (seconds + 2));
    let (a, b) = (
        cluster.finished(&a, timeout).await?,
        cluster.finished(&b, timeout).await?,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await?;
    let completed = a
        .iter()
        .chain(&b)
        .filter(|r| r.state == OpRunState::Completed)
        .count();
    let to = last_assigned(&a).min(last_assigned(&b));
    let (held_a, held_b) = (holds(&a), holds(&b));
    let (busy_a, busy_b) = (busy(&held_a, from, to), busy(&held_b, from, to));
    println!(
        "fair-share {queues}: {runs} runs per queue of {seconds} s on {WORKERS} workers × {CORES} cores, b submitted first; {completed}/{} COMPLETED",
        2 * runs
    );
    println!(
        "  contended period {:.1} s: busy core-seconds a {busy_a:.1}, b {busy_b:.1}; a/b {:.2} (weights 2:1)",
        (to - from) as f64 / 1e6,
        busy_a / busy_b
    );
    if let Some(cpu) = quota {
        println!(
            "  quota b cpu={cpu}: most b held at once {} cores (from the attempts); {} samples of GET /queues, most {} cores",
            peak(&held_b),
            samples.len(),
            samples.iter().max().copied().unwrap_or(0)
        );
    }
    Ok(())
}

async fn reclaim() -> anyhow::Result<()> {
    let cluster = Cluster::start("a:weight=2; b:weight=1", "reclaim=true").await?;
    let slots = WORKERS * CORES as usize;
    let b = cluster.submit("b", slots, 120, 0, true).await?;
    // b borrows every core.
    for _ in 0..600 {
        let list = cluster.client.queues().await?;
        if list
            .queues
            .iter()
            .any(|q| q.name == "b" && q.held.cpu == slots as u64)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let submitted = Instant::now();
    let a = cluster.submit("a", slots, 2, 1, false).await?;
    let fair = slots as u64 * 2 / 3;
    let mut got_back = None;
    for _ in 0..1200 {
        let list = cluster.client.queues().await?;
        if list
            .queues
            .iter()
            .any(|q| q.name == "a" && q.held.cpu >= fair)
        {
            got_back = Some(submitted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = cluster.finished(&a, Duration::from_secs(120)).await?;
    let mut preempted = 0;
    for id in &b {
        let run = cluster.client.get_run(id).await?;
        preempted += run.attempts.iter().filter(|a| a.preempted).count();
        // b's long runs are not waited for: cancelled, their workers stop the containers.
        if !run.state.is_terminal() {
            cluster.client.cancel_run(id).await?;
        }
    }
    cluster.finished(&b, Duration::from_secs(60)).await?;
    match got_back {
        Some(took) => println!(
            "fair-share reclaim=true: a (weight 2, priority 1) held its fair part ({fair} of {slots} cores) {:.2} s after submitting, b's runs preempted {preempted}; workers' heartbeat {HEARTBEAT_S} s; {} of a's runs COMPLETED",
            took.as_secs_f64(),
            a.iter()
                .filter(|r| r.state == OpRunState::Completed)
                .count()
        ),
        None => bail!("a never held its fair part ({fair} cores) within 60 s"),
    }
    Ok(())
}

/// `gyoza-bench fair-share [--runs N] [--seconds S]`.
pub async fn fair_share(runs: usize, seconds: u64) -> anyhow::Result<()> {
    let inspected = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run docker")?;
    if !inspected.success() {
        bail!("image {IMAGE} is not on this machine: build it with examples/ops/build.sh sleep");
    }
    weights(runs, seconds, None).await?;
    weights(runs / 2, seconds, Some(2)).await?;
    reclaim().await
}
