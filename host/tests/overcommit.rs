//! No worker is ever overcommitted, whatever claims race for it: concurrent claims of one
//! worker (a retried claim, two processes with one id), claims through two server replicas on
//! one database, and a race of many workers for runs of random sizes. Each claim computes the
//! worker's free capacity from a read; only the store's capacity check at write time
//! (`Store::assign_runs`) keeps two claimers from filling the same capacity twice.

pub mod common;

use std::collections::HashMap;

use common::Api;
use futures_util::future::join_all;
use gyoza_core::{HeldRun, Worker};
use serde_json::json;

/// What the store says `worker` holds: (CPU cores, RAM in MB, runs).
fn load(held: &[HeldRun], worker: &str) -> (u64, u64, usize) {
    held.iter()
        .filter(|r| r.worker_id == worker)
        .fold((0, 0, 0), |(cpu, ram, n), r| {
            (
                cpu + u64::from(r.constraints.cpu.unwrap_or(0)),
                ram + r.constraints.ram_mb.unwrap_or(0),
                n + 1,
            )
        })
}

/// `count` pending runs needing 1 CPU and 256 MB each.
async fn one_cpu_runs(api: &Api, count: usize) {
    for _ in 0..count {
        api.create_run(json!({"image": "x", "constraints": {"cpu": 1, "ram_mb": 256}}))
            .await;
    }
}

/// Checks that the 2-CPU worker `w1` holds two 1-CPU runs, the ones `claims` got.
async fn holds_two_runs(api: &Api, claims: &[Vec<String>]) {
    let claimed: usize = claims.iter().map(Vec::len).sum();
    let held = api.service.store.held_runs().await.unwrap();
    assert_eq!(
        load(&held, "w1"),
        (2, 512, 2),
        "the worker holds its 2 CPUs' worth"
    );
    assert_eq!(claimed, 2, "the claims together got 2 runs: {claims:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_claims_of_a_two_cpu_worker_leave_it_two_runs() {
    let api = Api::new().await;
    api.heartbeat("w1", 2, 8192).await;
    one_cpu_runs(&api, 16).await;
    let claims = join_all((0..8).map(|_| api.claim("w1", 8))).await;
    holds_two_runs(&api, &claims).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_through_two_replicas_leave_a_two_cpu_worker_two_runs() {
    let first = Api::new().await;
    let second = first.replica().await;
    first.heartbeat("w1", 2, 8192).await;
    one_cpu_runs(&first, 16).await;
    let claims = join_all((0..8).map(|i| {
        let api = if i % 2 == 0 { &first } else { &second };
        api.claim("w1", 8)
    }))
    .await;
    holds_two_runs(&second, &claims).await;
}

/// A small deterministic generator (no dependency): the same race every run.
struct Lcg(u64);

impl Lcg {
    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        low + (self.0 >> 33) % (high - low + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_race_of_sixteen_workers_overcommits_none() {
    let first = Api::new().await;
    let second = first.replica().await;
    let mut random = Lcg(14);
    for w in 0..16 {
        let (cpu, ram) = (random.between(1, 4), random.between(1, 4) * 1024);
        first.heartbeat(&format!("w{w}"), cpu as u32, ram).await;
    }
    for _ in 0..120 {
        let (cpu, ram) = (random.between(1, 3), random.between(1, 6) * 256);
        first
            .create_run(json!({"image": "x", "constraints": {"cpu": cpu, "ram_mb": ram}}))
            .await;
    }
    // Every worker claims three times at once, through both replicas.
    let claims = join_all((0..48).map(|i| {
        let api = if i % 2 == 0 { &first } else { &second };
        let worker = format!("w{}", i % 16);
        async move { api.claim(&worker, 8).await }
    }))
    .await;
    assert!(
        claims.iter().any(|c| !c.is_empty()),
        "some work was claimed"
    );
    let held = first.service.store.held_runs().await.unwrap();
    let workers: HashMap<String, Worker> = first
        .service
        .store
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id.clone(), w))
        .collect();
    let mut over = Vec::new();
    for (id, worker) in &workers {
        let (cpu, ram, runs) = load(&held, id);
        let has = &worker.resources;
        if cpu > u64::from(has.cpu_cores) || ram > has.ram_mb {
            over.push(format!(
                "{id}: {runs} runs need {cpu} CPU / {ram} MB of {} / {}",
                has.cpu_cores, has.ram_mb
            ));
        }
    }
    assert!(over.is_empty(), "overcommitted workers: {over:#?}");
}
