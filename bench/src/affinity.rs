//! `gyoza-bench affinity`: image locality on real workers, each with its own Docker engine
//! pulling from a registry, `priority` against `affinity`. `scripts/bench-affinity.sh` sets
//! up what it needs (the engines, two images, the registry) and runs it:
//!
//! ```text
//! gyoza-bench affinity --engines SOCK,SOCK,... --images IMAGE,IMAGE [--runs N] [--seconds S] [--every-ms M]
//! ```
//!
//! For each strategy: the images are removed from every engine, a release server starts
//! with that strategy, and one `gyoza worker start` per engine (2 cores, `--pull missing`,
//! `--container-network none`). Then `--runs` runs of 1 core alternate between the images,
//! one submitted every `--every-ms`, each sleeping `--seconds`. When all have ended, it
//! prints how many pulls were made (each image present on each engine was pulled once), how
//! long a run waited from its claim to its container's start (`assigned_at` to `started_at`:
//! the pull, when there was one, and the start), and which worker ran what.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gyoza_core::OpRunState;
use gyoza_core::api::OpRunCreate;
use serde_json::json;

use super::{Server, WorkerProcess, median_ms, wait_all_finished, wait_for_workers};

/// `docker -H unix://SOCK ARGS`: whether it succeeded.
fn docker(sock: &str, args: &[&str]) -> bool {
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{sock}"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn one(
    strategy: &str,
    engines: &[String],
    images: &[String],
    runs: usize,
    seconds: u64,
    every: Duration,
) -> anyhow::Result<()> {
    for sock in engines {
        for image in images {
            docker(sock, &["rmi", "-f", image]);
        }
    }
    let server = Server::start_with(None, &[("GYOZA_STRATEGY", strategy)])?;
    let client = server.client().await?;
    let work = std::env::temp_dir().join(format!("gyoza-bench-aff-{}", std::process::id()));
    let mut workers = Vec::new();
    for (i, sock) in engines.iter().enumerate() {
        let id = format!("aff-{i}");
        let host = format!("unix://{sock}");
        let args = [
            "--cpu-cores",
            "2",
            "--ram-mb",
            "4096",
            "--max-concurrent",
            "8",
            "--heartbeat-interval",
            "1",
            "--pull",
            "missing",
            "--container-network",
            "none",
            "--docker-host",
            &host,
        ];
        let state = work.join(&id);
        let env = [("GYOZA_WORKER_STATE_DIR", state.as_os_str())];
        workers.push(WorkerProcess::spawn(&server.url, &id, &args, &env)?);
    }
    wait_for_workers(&client, engines.len()).await?;
    let mut ids = Vec::with_capacity(runs);
    let started = Instant::now();
    for i in 0..runs {
        let run: OpRunCreate = serde_json::from_value(json!({
            "image": images[i % images.len()],
            "inputs": {"seconds": seconds},
            "priority": 5,
            "constraints": {"cpu": 1, "ram_mb": 256},
        }))?;
        ids.push(client.create_run(&run).await?.id);
        tokio::time::sleep(every).await;
    }
    let done = wait_all_finished(&client, &ids, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    drop(workers);
    let completed = done
        .iter()
        .filter(|r| r.state == OpRunState::Completed)
        .count();
    let mut pulls = 0;
    for sock in engines {
        for image in images {
            pulls += usize::from(docker(sock, &["image", "inspect", image]));
        }
    }
    let mut delays = Vec::new();
    let mut placed: BTreeMap<(String, String), usize> = BTreeMap::new();
    for run in &done {
        let Some(attempt) = run.attempts.last() else {
            continue;
        };
        if let (Some(assigned), Some(started)) = (attempt.assigned_at, attempt.started_at) {
            delays.push((started - assigned).num_microseconds().unwrap_or(0) as f64 / 1e3);
        }
        let worker = attempt
            .execution_summary
            .worker_id
            .clone()
            .unwrap_or_default();
        *placed.entry((worker, run.image.clone())).or_default() += 1;
    }
    let total: f64 = delays.iter().sum();
    let mean = total / delays.len().max(1) as f64;
    println!(
        "affinity bench, {strategy}: {completed}/{runs} COMPLETED in {:.1} s; {pulls} pulls ({} engines x {} images at most); claim -> container start mean {mean:.0} ms, median {:.0} ms, total {:.1} s",
        elapsed.as_secs_f64(),
        engines.len(),
        images.len(),
        median_ms(delays.clone()),
        total / 1e3
    );
    for ((worker, image), n) in &placed {
        println!("  {worker} ran {n} of {image}");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// `gyoza-bench affinity` (see the module docs).
pub async fn affinity(
    engines: Vec<String>,
    images: Vec<String>,
    runs: usize,
    seconds: u64,
    every_ms: u64,
) -> anyhow::Result<()> {
    if engines.is_empty() || images.is_empty() {
        bail!(
            "name the engines (--engines SOCK,...) and images (--images IMAGE,...): scripts/bench-affinity.sh does"
        );
    }
    for sock in &engines {
        if !docker(sock, &["info"]) {
            bail!("no Docker engine answers at {sock}");
        }
    }
    let every = Duration::from_millis(every_ms);
    for strategy in ["priority", "affinity"] {
        one(strategy, &engines, &images, runs, seconds, every)
            .await
            .with_context(|| format!("strategy {strategy}"))?;
    }
    Ok(())
}
