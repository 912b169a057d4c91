//! A strategy as a wasm component vs the same algorithm compiled natively (bin-packing by
//! default).
//!
//! Run: `cargo bench -p gyoza-host --bench strategy`. Not a test: it prints figures (see
//! BENCHMARKS.md, section "Strategies").
//!
//! Both sides decide the same claim (100 active workers, 10 / 1,000 / 10,000 pending runs
//! and none running; then 1,000 pending and 500 running) from the same `ClaimRequest`, end to
//! end as the server does: build the WIT records (`gyoza:scheduler@1.0.0`: columns, string
//! table, running runs, queues), run the bin-packing plan, check the answer against the
//! requester's capacity (`gyoza_core::placement::place`, the claim's one check). The wasm
//! side is `StrategyHost::decide_blocking` with the embedded `bin-packing` component (reused
//! instance, epoch deadline and memory limit on). The native side builds the records with the
//! host's own builder (`gyoza_host::strategy::records::claim`), moves the columns into plain
//! copies of the WIT records, and runs `plugins/bin-packing/src/plan.rs` and the SDK's
//! `model.rs` (the very files the component is built from) on them.
//!
//! Environment:
//! - `GYOZA_BENCH_STRATEGY=NAME`: another strategy on the wasm side (`direct`: transfer cost
//!   only); with `GYOZA_BENCH_PLUGINS_DIR=DIR`, one loaded from DIR (by file stem).
//!   `fair-share` and `affinity` are compared with their native twins (their `plan.rs`,
//!   compiled here), other strategies with native bin-packing.
//! - `GYOZA_BENCH_CONFIG=STRING`: the strategy configuration both sides get (default
//!   `reclaim=true` for fair-share, `spread=team` for affinity, empty otherwise).
//! - `GYOZA_BENCH_PROFILE=native|wasm` (`GYOZA_BENCH_PENDING`, `GYOZA_BENCH_CALLS`): one side
//!   only, for a profiler; see [`profile`].
//! - `GYOZA_BENCH_CACHE_DIR=DIR`: keep the compiled components there (ELF files for
//!   `objdump -d`); `GYOZA_WASM_PERFMAP=1` names their functions in `/tmp/perf-<pid>.map`.

// The records mirror the WIT in full and the SDK helpers are included whole; the plan reads
// only some of them; the SDK implements Default by hand because its records are generated.
#![allow(dead_code, clippy::derivable_impls)]

use std::time::{Duration, Instant};

use chrono::Utc;
use gyoza_core::placement::place;
use gyoza_core::run::NewRun;
use gyoza_core::{
    Capacity as CoreCapacity, Constraints, Gpu as CoreGpu, HeldRun, OpRun,
    PendingRun as CorePendingRun, Resources, RunFacts, Worker as CoreWorker,
};
use gyoza_host::queues::QueueSettings;
use gyoza_host::scheduler::{ActiveWorker, ClaimRequest};
use gyoza_host::strategy::{StrategyHost, StrategySettings, records};

// The WIT records (gyoza:scheduler@1.0.0) as plain Rust, and the guest's code compiled natively
// against them. At the crate root because the included files name the records as `super::...`.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRuns {
    pub priority: Vec<i64>,
    pub cpu: Vec<u32>,
    pub ram_mb: Vec<u64>,
    pub vram_mb: Vec<u64>,
    pub waited_ms: Vec<u64>,
    pub queue: Vec<u32>,
    pub definition: Vec<u32>,
    pub image: Vec<u32>,
    pub attempt: Vec<u32>,
    pub preemptible: Vec<bool>,
    pub tag_start: Vec<u32>,
    pub tag_count: Vec<u32>,
    pub label_start: Vec<u32>,
    pub label_count: Vec<u32>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Workers {
    pub cpu_cores: Vec<u32>,
    pub ram_mb: Vec<u64>,
    pub free_cpu: Vec<i64>,
    pub free_ram_mb: Vec<i64>,
    pub gpu_start: Vec<u32>,
    pub gpu_count: Vec<u32>,
    pub running: Vec<u32>,
    pub tag_start: Vec<u32>,
    pub tag_count: Vec<u32>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Gpus {
    pub id: Vec<u32>,
    pub vram_mb: Vec<u64>,
    pub free_vram_mb: Vec<i64>,
    pub tag_start: Vec<u32>,
    pub tag_count: Vec<u32>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct RunningRuns {
    pub worker: Vec<u32>,
    pub gpu: Vec<u32>,
    pub priority: Vec<i64>,
    pub cpu: Vec<u32>,
    pub ram_mb: Vec<u64>,
    pub vram_mb: Vec<u64>,
    pub ran_ms: Vec<u64>,
    pub queue: Vec<u32>,
    pub definition: Vec<u32>,
    pub image: Vec<u32>,
    pub preemptible: Vec<bool>,
    pub label_start: Vec<u32>,
    pub label_count: Vec<u32>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    pub key: Vec<u32>,
    pub value: Vec<u32>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Queues {
    pub name: Vec<u32>,
    pub weight: Vec<u32>,
    pub quota_cpu: Vec<u64>,
    pub quota_ram_mb: Vec<u64>,
    pub quota_vram_mb: Vec<u64>,
    pub quota_runs: Vec<u64>,
    pub running: Vec<u32>,
    pub cpu: Vec<u64>,
    pub ram_mb: Vec<u64>,
    pub vram_mb: Vec<u64>,
    pub pending: Vec<u32>,
    pub cpu_seconds: Vec<f64>,
    pub ram_mb_seconds: Vec<f64>,
    pub vram_mb_seconds: Vec<f64>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub requester: u32,
    pub max: u32,
    pub max_evictions: u32,
    pub strings: Vec<String>,
    pub tags: Vec<u32>,
    pub labels: Labels,
    pub workers: Workers,
    pub gpus: Gpus,
    pub pending: PendingRuns,
    pub running: RunningRuns,
    pub queues: Queues,
    pub usage_half_life_s: u32,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCode {
    Capacity,
    Ordering,
    Quota,
    Placement,
    Other,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Deferral {
    pub run: u32,
    pub code: WaitCode,
    pub reason: String,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Eviction {
    pub run: u32,
    pub for_run: u32,
    pub reason: String,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub assign: Vec<u32>,
    pub deferred: Vec<Deferral>,
    pub evict: Vec<Eviction>,
}

/// The host's records (`gyoza_host::strategy::records`) as the plain copies above: the
/// columns are moved, not copied.
fn plain(claim: records::Claim) -> Claim {
    let records::Claim {
        requester,
        max,
        max_evictions,
        strings,
        tags,
        labels,
        workers: w,
        gpus: g,
        pending: p,
        running: r,
        queues: q,
        usage_half_life_s,
    } = claim;
    Claim {
        requester,
        max,
        max_evictions,
        strings,
        tags,
        labels: Labels {
            key: labels.key,
            value: labels.value,
        },
        workers: Workers {
            cpu_cores: w.cpu_cores,
            ram_mb: w.ram_mb,
            free_cpu: w.free_cpu,
            free_ram_mb: w.free_ram_mb,
            gpu_start: w.gpu_start,
            gpu_count: w.gpu_count,
            running: w.running,
            tag_start: w.tag_start,
            tag_count: w.tag_count,
        },
        gpus: Gpus {
            id: g.id,
            vram_mb: g.vram_mb,
            free_vram_mb: g.free_vram_mb,
            tag_start: g.tag_start,
            tag_count: g.tag_count,
        },
        pending: PendingRuns {
            priority: p.priority,
            cpu: p.cpu,
            ram_mb: p.ram_mb,
            vram_mb: p.vram_mb,
            waited_ms: p.waited_ms,
            queue: p.queue,
            definition: p.definition,
            image: p.image,
            attempt: p.attempt,
            preemptible: p.preemptible,
            tag_start: p.tag_start,
            tag_count: p.tag_count,
            label_start: p.label_start,
            label_count: p.label_count,
        },
        running: RunningRuns {
            worker: r.worker,
            gpu: r.gpu,
            priority: r.priority,
            cpu: r.cpu,
            ram_mb: r.ram_mb,
            vram_mb: r.vram_mb,
            ran_ms: r.ran_ms,
            queue: r.queue,
            definition: r.definition,
            image: r.image,
            preemptible: r.preemptible,
            label_start: r.label_start,
            label_count: r.label_count,
        },
        queues: Queues {
            name: q.name,
            weight: q.weight,
            quota_cpu: q.quota_cpu,
            quota_ram_mb: q.quota_ram_mb,
            quota_vram_mb: q.quota_vram_mb,
            quota_runs: q.quota_runs,
            running: q.running,
            cpu: q.cpu,
            ram_mb: q.ram_mb,
            vram_mb: q.vram_mb,
            pending: q.pending,
            cpu_seconds: q.cpu_seconds,
            ram_mb_seconds: q.ram_mb_seconds,
            vram_mb_seconds: q.vram_mb_seconds,
        },
        usage_half_life_s,
    }
}

#[path = "../../plugins/sdk/src/model.rs"]
mod model;
pub use model::{Capacity, NO_GPU, NO_QUOTA, PendingRun, Placement, reason};

#[path = "../../plugins/sdk/src/config.rs"]
mod config;

#[path = "../../plugins/bin-packing/src/plan.rs"]
pub mod plan;

#[path = "../../plugins/fair-share/src/plan.rs"]
mod fair_share;

#[path = "../../plugins/affinity/src/plan.rs"]
mod affinity;

/// The native twin of the strategy on the wasm side: the same plan file, compiled here.
enum Native {
    BinPacking,
    FairShare(fair_share::Config),
    Affinity(affinity::Config),
    /// No twin (a strategy loaded from a file, `direct`, `priority`): bin-packing stands in.
    None,
}

impl Native {
    /// The twin of built-in `strategy` configured with `config`.
    fn of(strategy: &str, config: &str) -> Result<Self, String> {
        Ok(match strategy {
            "bin-packing" => Native::BinPacking,
            "fair-share" => Native::FairShare(fair_share::Config::parse(config)?),
            "affinity" => Native::Affinity(affinity::Config::parse(config)?),
            _ => Native::None,
        })
    }

    fn decide(&self, claim: &Claim) -> Decision {
        match self {
            Native::BinPacking | Native::None => plan::plan(claim),
            Native::FairShare(config) => fair_share::plan(config, claim),
            Native::Affinity(config) => affinity::plan(config, claim),
        }
    }
}

const WORKERS: usize = 100;

fn cluster() -> Vec<ActiveWorker> {
    (0..WORKERS)
        .map(|i| {
            let gpus = match i % 4 {
                0 => vec![8192, 8192],
                1 => vec![24576],
                _ => vec![],
            };
            let resources = Resources {
                cpu_cores: 8 << (i % 3),
                ram_mb: 16384 << (i % 3),
                gpus: gpus
                    .iter()
                    .enumerate()
                    .map(|(id, vram)| CoreGpu {
                        id: id as u32,
                        vram_mb: *vram,
                        tags: vec![],
                    })
                    .collect(),
            };
            ActiveWorker {
                id: format!("w{i}"),
                free: CoreCapacity::free(&resources, &[]),
                resources,
                running: 0,
                tags: vec![],
            }
        })
        .collect()
}

fn pending(n: usize) -> Vec<CorePendingRun> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            OpRun::new(
                NewRun {
                    image: format!("registry/op-{}:1", i % 20),
                    priority: (n - i) as i64 / 100,
                    constraints: Constraints {
                        cpu: Some(1 + (i % 8) as u32),
                        ram_mb: Some(512 * (1 + (i % 16) as u64)),
                        vram_mb: (i % 5 == 0).then_some(2048 * (1 + (i % 6) as u64)),
                        ..Constraints::default()
                    },
                    queue: ["interactive", "batch", "research"][i % 3].into(),
                    labels: [("team".to_owned(), format!("team-{}", i % 7))].into(),
                    preemptible: i % 2 == 0,
                    ..NewRun::default()
                },
                now - chrono::Duration::milliseconds(i as i64),
            )
            .map(|run| CorePendingRun::from(&run))
            .expect("a valid run")
        })
        .collect()
}

/// `per_worker` runs held by each worker (1 core, 512 MB each, a fifth on a GPU), assigned
/// seconds to minutes ago, in the three queues; the workers' free capacity is then less
/// theirs.
fn running(cluster: &mut [ActiveWorker], per_worker: usize) -> Vec<HeldRun> {
    let now = Utc::now();
    let mut held = Vec::new();
    for (w, worker) in cluster.iter_mut().enumerate() {
        let mut mine = Vec::new();
        for k in 0..per_worker {
            let i = w * per_worker + k;
            let gpu = worker
                .resources
                .gpus
                .first()
                .filter(|_| i % 5 == 0)
                .map(|g| g.id);
            mine.push(HeldRun {
                id: format!("held-{i}"),
                worker_id: worker.id.clone(),
                constraints: Constraints {
                    cpu: Some(1),
                    ram_mb: Some(512),
                    vram_mb: gpu.map(|_| 1024),
                    ..Constraints::default()
                },
                gpu_id: gpu,
                priority: (i % 3) as i64,
                facts: RunFacts {
                    queue: ["interactive", "batch", "research"][i % 3].into(),
                    image: format!("registry/op-{}:1", i % 20).into(),
                    preemptible: i % 2 == 1,
                    labels: [("team".to_owned(), format!("team-{}", i % 7))].into(),
                    assigned_at: Some(now - chrono::Duration::seconds((i % 600) as i64)),
                    ..RunFacts::default()
                },
            });
        }
        worker.free = CoreCapacity::free(&worker.resources, &mine);
        worker.running = mine.len();
        held.extend(mine);
    }
    held
}

/// What the host does around a native strategy: the same records, the same checks.
/// Not inlined, so that a profiler can count it alone (`--toggle-collect=*native_decide*`).
#[inline(never)]
fn native_decide(native: &Native, request: &ClaimRequest<'_>) -> usize {
    // The records the host builds for every claim, then the columns moved to plain copies.
    let claim = plain(records::claim(request));
    // The SDK checks this before the guest's strategy runs; so does the native side.
    if claim.malformed().is_some() {
        return 0;
    }
    let decision = native.decide(&claim);
    // The claim's check, as on the wasm side.
    place(
        &request.free,
        request.pending,
        decision.assign.iter().map(|&i| i as usize),
        request.max,
    )
    .placed
    .len()
}

/// The wasm side: the strategy host's decision, then the claim's check.
fn wasm_decide(host: &StrategyHost, request: &ClaimRequest<'_>) -> usize {
    match host.decide_blocking(request) {
        Ok(decision) => place(&request.free, request.pending, decision.chosen, request.max)
            .placed
            .len(),
        Err(e) => {
            eprintln!("wasm call failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Median times of `a` and `b` over `iterations` calls each, after a warm-up, and their last
/// answers. The two take turns by blocks of ten calls, so that whatever else the machine is
/// doing weighs on both sides alike rather than on whichever ran during a busy spell, while
/// each still runs with its own data in the caches (only a block's first call does not).
fn medians(
    iterations: usize,
    mut a: impl FnMut() -> usize,
    mut b: impl FnMut() -> usize,
) -> ((Duration, usize), (Duration, usize)) {
    const BLOCK: usize = 10;
    let (mut answer_a, mut answer_b) = (0, 0);
    for _ in 0..(iterations / 10).max(2) {
        answer_a = a();
        answer_b = b();
    }
    let time_block =
        |f: &mut dyn FnMut() -> usize, answer: &mut usize, times: &mut Vec<Duration>| {
            for _ in 0..BLOCK {
                let started = Instant::now();
                *answer = std::hint::black_box(f());
                times.push(started.elapsed());
            }
        };
    let (mut times_a, mut times_b) = (Vec::new(), Vec::new());
    for _ in 0..iterations.div_ceil(BLOCK) {
        time_block(&mut a, &mut answer_a, &mut times_a);
        time_block(&mut b, &mut answer_b, &mut times_b);
    }
    times_a.sort();
    times_b.sort();
    (
        (times_a[times_a.len() / 2], answer_a),
        (times_b[times_b.len() / 2], answer_b),
    )
}

/// `GYOZA_BENCH_PROFILE=native|wasm`: only that side, `GYOZA_BENCH_CALLS` calls (default
/// 100) at `GYOZA_BENCH_PENDING` runs (default 1,000), for a profiler, e.g.
/// `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*decide_blocking*'`.
fn profile(
    side: &str,
    native: &Native,
    host: &StrategyHost,
    worker: &CoreWorker,
    cluster: &[ActiveWorker],
) {
    let number = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = pending(number("GYOZA_BENCH_PENDING", 1_000));
    let request = ClaimRequest {
        worker,
        free: cluster[2].free.clone(),
        pending: &runs,
        max: 10,
        now: Utc::now(),
        cluster,
        running: &[],
        queues: &QueueSettings::default(),
        usage: &[],
        max_preemptions: 3,
        max_evictions: 4,
    };
    let calls = number("GYOZA_BENCH_CALLS", 100);
    let mut assigned = 0;
    for _ in 0..calls {
        assigned += match side {
            "native" => native_decide(native, &request),
            _ => wasm_decide(host, &request),
        };
    }
    println!(
        "{side}: {calls} calls at {} pending, {assigned} runs assigned",
        runs.len()
    );
}

fn main() {
    let strategy = std::env::var("GYOZA_BENCH_STRATEGY").unwrap_or_else(|_| "bin-packing".into());
    // What the policies do with a configuration key or two (both sides get it).
    let config = std::env::var("GYOZA_BENCH_CONFIG").unwrap_or_else(|_| {
        match strategy.as_str() {
            "fair-share" => "reclaim=true",
            "affinity" => "spread=team",
            _ => "",
        }
        .into()
    });
    let twin = match Native::of(&strategy, &config) {
        Ok(twin) => twin,
        Err(e) => {
            eprintln!("GYOZA_BENCH_CONFIG: {e}");
            std::process::exit(1);
        }
    };
    let settings = StrategySettings {
        config: config.clone(),
        // A strategy named by its file there, e.g. the bin-packing fixture built against
        // gyoza:scheduler@0.1.0: GYOZA_BENCH_STRATEGY=gyoza_fixture_bin_packing_0_1_0.
        plugins_dir: std::env::var_os("GYOZA_BENCH_PLUGINS_DIR").map(Into::into),
        // The compiled components land there as ELF files (`*.cwasm`), for `objdump -d`.
        cache_dir: std::env::var_os("GYOZA_BENCH_CACHE_DIR").map(Into::into),
        ..StrategySettings::builtin(&strategy)
    };
    let host = match StrategyHost::start(settings) {
        Ok(host) => host,
        Err(e) => {
            eprintln!("cannot start the strategy host: {e}");
            std::process::exit(1);
        }
    };
    let cluster = cluster();
    // The requester is mid-sized, so that most runs are placed on other workers and the plan
    // walks the whole pending list (the expensive case).
    let me = &cluster[2];
    let worker = CoreWorker {
        id: me.id.clone(),
        resources: me.resources.clone(),
        tags: vec![],
        running_ops: vec![],
        created_at: Utc::now(),
        last_heartbeat_at: Utc::now(),
        instance: None,
    };
    if let Ok(side) = std::env::var("GYOZA_BENCH_PROFILE") {
        profile(&side, &twin, &host, &worker, &cluster);
        return;
    }
    let native_side = match twin {
        Native::None => "native: bin-packing",
        _ => "native: its twin",
    };
    println!(
        "{strategy} (config \"{config}\"; {native_side}), {WORKERS} workers, claim max 10: median time per decision"
    );
    println!(
        "{:>8} {:>8} {:>12} {:>12} {:>8} {:>9}",
        "pending", "running", "native", "wasm", "ratio", "assigned"
    );
    // Five held runs on each of the 100 workers: the 500 running runs of the 1.0 claim.
    let mut busy = cluster.clone();
    let held = running(&mut busy, 5);
    let queues = QueueSettings::parse("interactive:weight=2; batch:weight=1,cpu=64", 3600)
        .expect("valid queues");
    for (n, on, iterations) in [
        (10, 0, 2000),
        (1_000, 0, 200),
        (10_000, 0, 20),
        (1_000, 500, 200),
    ] {
        let runs = pending(n);
        let (cluster, running): (&[ActiveWorker], &[HeldRun]) = if on == 0 {
            (&cluster, &[])
        } else {
            (&busy, &held)
        };
        let request = ClaimRequest {
            worker: &worker,
            free: cluster[2].free.clone(),
            pending: &runs,
            max: 10,
            now: Utc::now(),
            cluster,
            running,
            queues: &queues,
            usage: &[],
            max_preemptions: 3,
            max_evictions: 4,
        };
        let ((native, native_ids), (wasm, wasm_ids)) = medians(
            iterations,
            || native_decide(&twin, &request),
            || wasm_decide(&host, &request),
        );
        // A strategy and its twin (or either form of bin-packing) must decide the same.
        if strategy.contains("bin_packing") || !matches!(twin, Native::None) {
            assert_eq!(native_ids, wasm_ids, "both sides must decide the same");
        }
        println!(
            "{n:>8} {on:>8} {:>10.1}us {:>10.1}us {:>7.2}x {:>9}",
            native.as_secs_f64() * 1e6,
            wasm.as_secs_f64() * 1e6,
            wasm.as_secs_f64() / native.as_secs_f64(),
            wasm_ids
        );
    }
}
