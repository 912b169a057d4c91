//! `gyoza-bench scale [--runs N] [--workers W]`: the server with many runs stored and many
//! workers heartbeating (issue "The claim path at the limit", scale table).
//!
//! 1. `--runs` (default 1,000,000) PENDING runs are created through `POST /runs/batch`
//!    (1,000 per request, 4 clients), in three queues, each with a label.
//! 2. `GET /runs` is timed, 20 requests each after one untimed: the first page (the
//!    default limit), and a filtered page (`state=PENDING&queue=q1&label=team:t3`).
//! 3. The pending window: a claim (`max=1`) by a worker with room for any one run, right
//!    after a new run was created (the kept window must be read again: a "refresh"), 10
//!    times, against 10 claims with nothing created between (the kept window serves). Each
//!    run claimed is cancelled before the next claim.
//! 4. The server's RSS with all that stored.
//! 5. The server's CPU over 30 s with no request: its background work (the reaper's tick,
//!    every 15 s with the default worker timeout, and the timeout check on it, which reads
//!    every PENDING run).
//! 6. `--workers` (default 1,000) simulated workers heartbeat every 5 s for 30 s (spread
//!    evenly): the server's CPU over those 30 s as a share of one core, and per heartbeat
//!    once the background's share (5) is taken off.
//!
//! Prints figures; asserts nothing about them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gyoza_core::Resources;
use gyoza_core::api::{HeartbeatRequest, OpRunCreate};
use gyoza_core::client::{Client, RunFilter};
use serde_json::json;

use super::{Latencies, Server};

const BATCH: usize = 1_000;
const CLIENTS: usize = 4;

fn run(i: usize) -> anyhow::Result<OpRunCreate> {
    Ok(serde_json::from_value(json!({
        "image": "bench:latest",
        "priority": i % 10,
        "inputs": {"i": i},
        "queue": format!("q{}", i % 3),
        "labels": {"team": format!("t{}", i % 7)},
        "constraints": {"cpu": 1 + i % 4, "ram_mb": 256 << (i % 4)},
    }))?)
}

async fn create(client: &Client, total: usize) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                if first >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let runs = (first..(first + BATCH).min(total))
                    .map(run)
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let answer = client.create_runs(&runs).await?;
                anyhow::ensure!(answer.failed == 0, "a batch item was refused");
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Median time of 20 `GET /runs` with `filter`, after one untimed.
async fn page(client: &Client, filter: &RunFilter) -> anyhow::Result<(f64, usize)> {
    let shown = client.list_runs(filter).await?.data.len();
    let mut times = Latencies::default();
    for _ in 0..20 {
        let t = Instant::now();
        client.list_runs(filter).await?;
        times.0.push(t.elapsed());
    }
    Ok((times.percentile(0.5), shown))
}

fn heartbeat(w: usize, cpu_cores: u32) -> HeartbeatRequest {
    HeartbeatRequest {
        worker_id: format!("scale-{w}"),
        resources: Resources {
            cpu_cores,
            ram_mb: 65_536,
            gpus: vec![],
        },
        tags: vec![],
        running_ops: Some(vec![]),
        instance: None,
    }
}

pub async fn scale(runs: usize, workers: usize) -> anyhow::Result<()> {
    let server = Server::start(None)?;
    let client = server.client().await?;
    let rate = create(&client, runs).await?;
    println!("scale: {runs} runs created through POST /runs/batch at {rate:.0} runs/s");

    let (first, n) = page(&client, &RunFilter::default()).await?;
    let filter = RunFilter {
        state: Some("PENDING".into()),
        queue: Some("q1".into()),
        label: Some("team:t3".into()),
        ..RunFilter::default()
    };
    let (filtered, m) = page(&client, &filter).await?;
    println!(
        "  GET /runs: first page ({n} runs) median {first:.2} ms; filtered page (state, queue, label: {m} runs) median {filtered:.2} ms"
    );

    // A worker with room for any one run (4 cores, 2048 MB); each run it claims is cancelled
    // before the next claim, so that it has room again.
    let mut worker = heartbeat(0, 4);
    worker.worker_id = "scale-claimer".into();
    worker.resources.ram_mb = 2048;
    client.heartbeat(&worker).await?;
    let claim_once = |client: Client| async move {
        let t = Instant::now();
        let ops = client.claim("scale-claimer", 1).await?;
        let took = t.elapsed();
        for op in &ops {
            client.cancel_run(&op.id).await?;
        }
        Ok::<_, anyhow::Error>((took, ops.len()))
    };
    claim_once(client.clone()).await?;
    let (mut kept, mut refreshed) = (Latencies::default(), Latencies::default());
    let mut claimed = 0;
    for i in 0..10 {
        let (took, n) = claim_once(client.clone()).await?;
        kept.0.push(took);
        claimed += n;
        client.create_run(&run(runs + i)?).await?;
        let (took, n) = claim_once(client.clone()).await?;
        refreshed.0.push(took);
        claimed += n;
    }
    println!(
        "  claim of one run with {runs} stored: window kept median {:.2} ms; window read again (a run created just before) median {:.2} ms; {claimed} of 20 claims got a run",
        kept.percentile(0.5),
        refreshed.percentile(0.5)
    );
    println!("  server RSS {:.1} MB", server.rss_mb()?);

    for w in 0..workers {
        client.heartbeat(&heartbeat(w, 8)).await?;
    }
    let period = Duration::from_secs(5);
    let window = Duration::from_secs(30);
    let idle_before = server.cpu()?;
    tokio::time::sleep(window).await;
    let idle = (server.cpu()? - idle_before).as_secs_f64() / window.as_secs_f64();
    println!(
        "  idle for 30 s (the reaper's tick and the timeout check only): server CPU {:.1}% of one core",
        idle * 100.0
    );
    let cpu_before = server.cpu()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        let offset = period.mul_f64(w as f64 / workers as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut beats = 0usize;
            let mut next = Instant::now();
            while next.duration_since(started) < window {
                client.heartbeat(&heartbeat(w, 8)).await?;
                beats += 1;
                next += period;
                tokio::time::sleep_until(next.into()).await;
            }
            Ok::<_, anyhow::Error>(beats)
        }));
    }
    let mut beats = 0;
    for task in tasks {
        beats += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (server.cpu()? - cpu_before).as_secs_f64();
    let beating = (cpu - idle * elapsed).max(0.0);
    println!(
        "  {workers} workers heartbeating every 5 s: {beats} heartbeats in {elapsed:.1} s, server CPU {:.1}% of one core in all, {:.1}% for the heartbeats ({:.0} µs per heartbeat)",
        cpu / elapsed * 100.0,
        beating / elapsed * 100.0,
        beating * 1e6 / beats.max(1) as f64
    );
    Ok(())
}
