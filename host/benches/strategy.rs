//! Bin-packing as a wasm component vs the same algorithm compiled natively.
//!
//! Run: `cargo bench -p gyoza-host --bench strategy`. Not a test: it prints figures (see
//! BENCHMARKS.md, section "Strategies").
//!
//! Both sides decide the same claim (100 active workers, 10 / 1,000 / 10,000 pending runs)
//! from the same `ClaimRequest`, end to end as the server does: build the WIT records
//! (`gyoza:scheduler@0.2.0` columns), run the bin-packing plan, check the answer against the
//! requester's capacity (`gyoza_core::placement::place`, the claim's one check). The wasm side
//! is `StrategyHost::decide_blocking` with the embedded
//! `bin-packing` component (reused instance, epoch deadline and memory limit on). The native
//! side compiles `plugins/bin-packing/src/plan.rs` and the SDK's `model.rs` (the very files
//! the component is built from) against plain copies of the WIT records.
//!
//! Environment:
//! - `GYOZA_BENCH_STRATEGY=NAME`: another strategy on the wasm side (`direct`: transfer cost
//!   only); with `GYOZA_BENCH_PLUGINS_DIR=DIR`, one loaded from DIR (by file stem).
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
    Capacity as CoreCapacity, Constraints, Gpu as CoreGpu, OpRun, PendingRun as CorePendingRun,
    Resources, Worker as CoreWorker,
};
use gyoza_host::queues::QueueSettings;
use gyoza_host::scheduler::{ActiveWorker, ClaimRequest};
use gyoza_host::strategy::{StrategyHost, StrategySettings};

// The WIT records (gyoza:scheduler@0.2.0) as plain Rust, and the guest's code compiled natively
// against them. At the crate root because the included files name the records as `super::...`.
pub struct PendingRuns {
    pub priority: Vec<i64>,
    pub cpu: Vec<u32>,
    pub ram_mb: Vec<u64>,
    pub vram_mb: Vec<u64>,
    pub waited_ms: Vec<u64>,
}
pub struct Workers {
    pub cpu_cores: Vec<u32>,
    pub ram_mb: Vec<u64>,
    pub free_cpu: Vec<i64>,
    pub free_ram_mb: Vec<i64>,
    pub gpu_start: Vec<u32>,
    pub gpu_count: Vec<u32>,
    pub running: Vec<u32>,
}
pub struct Gpus {
    pub id: Vec<u32>,
    pub vram_mb: Vec<u64>,
    pub free_vram_mb: Vec<i64>,
}
pub struct Claim {
    pub requester: u32,
    pub max: u32,
    pub workers: Workers,
    pub gpus: Gpus,
    pub pending: PendingRuns,
}
pub struct Deferral {
    pub run: u32,
    pub reason: String,
}
pub struct Decision {
    pub assign: Vec<u32>,
    pub deferred: Vec<Deferral>,
}

#[path = "../../plugins/sdk/src/model.rs"]
mod model;
pub use model::{Capacity, Placement, reason};

#[path = "../../plugins/bin-packing/src/plan.rs"]
pub mod plan;

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
                    image: "x".into(),
                    priority: (n - i) as i64 / 100,
                    constraints: Constraints {
                        cpu: Some(1 + (i % 8) as u32),
                        ram_mb: Some(512 * (1 + (i % 16) as u64)),
                        vram_mb: (i % 5 == 0).then_some(2048 * (1 + (i % 6) as u64)),
                        ..Constraints::default()
                    },
                    ..NewRun::default()
                },
                now - chrono::Duration::milliseconds(i as i64),
            )
            .map(|run| CorePendingRun::from(&run))
            .expect("a valid run")
        })
        .collect()
}

/// Appends `worker` with `free` to the columns, as the host's `convert::claim` does.
fn push_worker(workers: &mut Workers, gpus: &mut Gpus, worker: &ActiveWorker, free: &CoreCapacity) {
    let start = gpus.id.len() as u32;
    for &(id, free_vram) in &free.gpus {
        let total = worker
            .resources
            .gpus
            .iter()
            .find(|g| g.id == id)
            .map_or(0, |g| g.vram_mb);
        gpus.id.push(id);
        gpus.vram_mb.push(total);
        gpus.free_vram_mb.push(free_vram);
    }
    workers.cpu_cores.push(worker.resources.cpu_cores);
    workers.ram_mb.push(worker.resources.ram_mb);
    workers.free_cpu.push(free.cpu);
    workers.free_ram_mb.push(free.ram_mb);
    workers.gpu_start.push(start);
    workers.gpu_count.push(gpus.id.len() as u32 - start);
    workers.running.push(worker.running as u32);
}

/// What the host does around a native strategy: the same records, the same checks.
/// Not inlined, so that a profiler can count it alone (`--toggle-collect=*native_decide*`).
#[inline(never)]
fn native_decide(request: &ClaimRequest<'_>) -> usize {
    let n = request.cluster.len();
    let mut workers = Workers {
        cpu_cores: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        free_cpu: Vec::with_capacity(n),
        free_ram_mb: Vec::with_capacity(n),
        gpu_start: Vec::with_capacity(n),
        gpu_count: Vec::with_capacity(n),
        running: Vec::with_capacity(n),
    };
    let mut gpus = Gpus {
        id: Vec::new(),
        vram_mb: Vec::new(),
        free_vram_mb: Vec::new(),
    };
    let mut requester = 0;
    for (i, w) in request.cluster.iter().enumerate() {
        if w.id == request.worker.id {
            requester = i;
            push_worker(&mut workers, &mut gpus, w, &request.free);
        } else {
            push_worker(&mut workers, &mut gpus, w, &w.free);
        }
    }
    let n = request.pending.len();
    let mut pending = PendingRuns {
        priority: Vec::with_capacity(n),
        cpu: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        vram_mb: Vec::with_capacity(n),
        waited_ms: Vec::with_capacity(n),
    };
    for run in request.pending {
        pending.priority.push(run.priority);
        pending.cpu.push(run.constraints.cpu.unwrap_or(0));
        pending.ram_mb.push(run.constraints.ram_mb.unwrap_or(0));
        pending.vram_mb.push(run.constraints.vram_mb.unwrap_or(0));
        pending
            .waited_ms
            .push((request.now - run.created_at).num_milliseconds().max(0) as u64);
    }
    let claim = Claim {
        requester: requester as u32,
        max: request.max as u32,
        workers,
        gpus,
        pending,
    };
    // The SDK checks this before the guest's strategy runs; so does the native side.
    if claim.malformed().is_some() {
        return 0;
    }
    let decision = plan::plan(&claim);
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
fn profile(side: &str, host: &StrategyHost, worker: &CoreWorker, cluster: &[ActiveWorker]) {
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
    };
    let calls = number("GYOZA_BENCH_CALLS", 100);
    let mut assigned = 0;
    for _ in 0..calls {
        assigned += match side {
            "native" => native_decide(&request),
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
    let settings = StrategySettings {
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
        profile(&side, &host, &worker, &cluster);
        return;
    }
    println!("bin-packing, {WORKERS} workers, claim max 10: median time per decision");
    println!(
        "{:>8} {:>12} {:>12} {:>8} {:>9}",
        "pending", "native", "wasm", "ratio", "assigned"
    );
    for (n, iterations) in [(10, 2000), (1_000, 200), (10_000, 20)] {
        let runs = pending(n);
        let request = ClaimRequest {
            worker: &worker,
            free: me.free.clone(),
            pending: &runs,
            max: 10,
            now: Utc::now(),
            cluster: &cluster,
            running: &[],
            queues: &QueueSettings::default(),
            usage: &[],
            max_preemptions: 3,
        };
        let ((native, native_ids), (wasm, wasm_ids)) = medians(
            iterations,
            || native_decide(&request),
            || wasm_decide(&host, &request),
        );
        // Either form of bin-packing must decide as the native plan does.
        if strategy.contains("bin_packing") || strategy == "bin-packing" {
            assert_eq!(native_ids, wasm_ids, "both sides must decide the same");
        }
        println!(
            "{n:>8} {:>10.1}us {:>10.1}us {:>7.2}x {:>9}",
            native.as_secs_f64() * 1e6,
            wasm.as_secs_f64() * 1e6,
            wasm.as_secs_f64() / native.as_secs_f64(),
            wasm_ids
        );
    }
}
