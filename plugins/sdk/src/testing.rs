//! A test kit for strategies: build a [`Claim`] from a few words, run a strategy on it and
//! see what the host would make of the answer, all natively (`cargo test`), without a
//! server or a wasm runtime.
//!
//! [`ClaimBuilder`] builds the claim the way the host does: one string table (entry 0 is
//! "", each string once), flat tag and label lists with their ranges, each worker's free
//! capacity computed from the runs it holds (total minus held; a held run's VRAM on its
//! GPU), and each queue's usage computed from the running and pending runs.
//!
//! ```
//! use gyoza_plugin_sdk::testing::{ClaimBuilder, QueueSpec, RunSpec, RunningSpec, WorkerSpec};
//!
//! let claim = ClaimBuilder::new()
//!     .worker(WorkerSpec::new(8, 16384).tags(["ssd"]).gpu(0, 24576, ["a100"]))
//!     .requester(0)
//!     .max(4)
//!     .running(RunningSpec::on(0).priority(1).cpu(4).preemptible(true).queue("batch"))
//!     .pending(
//!         RunSpec::new()
//!             .priority(5)
//!             .cpu(4)
//!             .queue("interactive")
//!             .label("team", "vision")
//!             .tags(["ssd"]),
//!     )
//!     .queue(QueueSpec::new("batch").weight(2))
//!     .build();
//!
//! assert_eq!(claim.requester_capacity().cpu, 4);
//! assert_eq!(claim.run_label(0, "team"), Some("vision"));
//! assert_eq!(claim.run_tags(0).collect::<Vec<_>>(), ["ssd"]);
//! let batch = claim.queue_index("batch").unwrap();
//! assert_eq!((claim.queues.weight[batch], claim.queues.cpu[batch]), (2, 4));
//! ```
//!
//! Then [`decide`] runs a strategy as the exported component would (`init`, the
//! malformed-claim check, `schedule`), and [`outcome`] applies the host's rules to its
//! answer (which assignments stand, which evictions are carried out).

use std::collections::{BTreeMap, HashMap};

use crate::{
    Claim, Decision, Gpus, Labels, NO_GPU, NO_QUOTA, PendingRuns, Queues, RunningRuns, Strategy,
    Workers,
};

/// The half-life of decayed queue usage in a built claim unless
/// [`ClaimBuilder::usage_half_life_s`] says otherwise (the kit's choice, not the server's).
pub const DEFAULT_USAGE_HALF_LIFE_S: u32 = 3600;

/// The claim's `max-evictions` unless [`ClaimBuilder::max_evictions`] says otherwise: the
/// server's default per-claim cap (`GYOZA_MAX_EVICTIONS_PER_CLAIM`).
pub const DEFAULT_MAX_EVICTIONS: u32 = 4;

/// The queue of a run built without [`RunSpec::queue`] or [`RunningSpec::queue`], as on the
/// server.
pub const DEFAULT_QUEUE: &str = "default";

/// A GPU of a [`WorkerSpec`].
#[derive(Debug, Clone, PartialEq)]
struct GpuSpec {
    id: u32,
    vram_mb: u64,
    tags: Vec<String>,
}

/// An active worker: its size, tags and GPUs. What it has free follows from the
/// [`RunningSpec`]s on it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    cpu_cores: u32,
    ram_mb: u64,
    tags: Vec<String>,
    gpus: Vec<GpuSpec>,
}

impl WorkerSpec {
    /// A worker with `cpu_cores` cores and `ram_mb` MB of RAM, no tags and no GPU.
    pub fn new(cpu_cores: u32, ram_mb: u64) -> Self {
        Self {
            cpu_cores,
            ram_mb,
            tags: Vec::new(),
            gpus: Vec::new(),
        }
    }

    /// Adds worker tags.
    pub fn tags<'a>(mut self, tags: impl IntoIterator<Item = &'a str>) -> Self {
        self.tags.extend(tags.into_iter().map(str::to_owned));
        self
    }

    /// Adds a GPU with device index `id`, `vram_mb` MB of VRAM and `tags` (`[]` for none).
    /// GPUs keep the order they are added in.
    pub fn gpu<'a>(
        mut self,
        id: u32,
        vram_mb: u64,
        tags: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        self.gpus.push(GpuSpec {
            id,
            vram_mb,
            tags: tags.into_iter().map(str::to_owned).collect(),
        });
        self
    }
}

/// The setters a running and a pending run's spec share (a field of the same name each).
macro_rules! run_setters {
    () => {
        /// Its priority.
        pub fn priority(mut self, priority: i64) -> Self {
            self.priority = priority;
            self
        }

        /// The CPU cores it needs (or holds).
        pub fn cpu(mut self, cpu: u32) -> Self {
            self.cpu = cpu;
            self
        }

        /// The RAM it needs (or holds), in megabytes.
        pub fn ram_mb(mut self, ram_mb: u64) -> Self {
            self.ram_mb = ram_mb;
            self
        }

        /// Its queue.
        pub fn queue(mut self, queue: &str) -> Self {
            self.queue = queue.to_owned();
            self
        }

        /// The definition it was created from.
        pub fn definition(mut self, definition: &str) -> Self {
            self.definition = definition.to_owned();
            self
        }

        /// Its image.
        pub fn image(mut self, image: &str) -> Self {
            self.image = image.to_owned();
            self
        }

        /// Whether it may be preempted (for a running run: whether the host would let a
        /// strategy preempt it).
        pub fn preemptible(mut self, preemptible: bool) -> Self {
            self.preemptible = preemptible;
            self
        }

        /// Sets label `key` (a later value for the same key replaces an earlier one).
        pub fn label(mut self, key: &str, value: &str) -> Self {
            self.labels.insert(key.to_owned(), value.to_owned());
            self
        }
    };
}

/// A run a worker holds (assigned or running). Defaults: priority 0, nothing held, queue
/// [`DEFAULT_QUEUE`], no definition, image "", not preemptible, assigned 0 ms ago, no labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningSpec {
    worker: usize,
    gpu: Option<u32>,
    priority: i64,
    cpu: u32,
    ram_mb: u64,
    vram_mb: u64,
    ran_ms: u64,
    queue: String,
    definition: String,
    image: String,
    preemptible: bool,
    labels: BTreeMap<String, String>,
}

impl RunningSpec {
    run_setters!();

    /// A run held by worker `worker` (its index: the order of [`ClaimBuilder::worker`]).
    pub fn on(worker: usize) -> Self {
        Self {
            worker,
            gpu: None,
            priority: 0,
            cpu: 0,
            ram_mb: 0,
            vram_mb: 0,
            ran_ms: 0,
            queue: DEFAULT_QUEUE.to_owned(),
            definition: String::new(),
            image: String::new(),
            preemptible: false,
            labels: BTreeMap::new(),
        }
    }

    /// The VRAM it holds, `vram_mb` MB on its worker's GPU of device index `gpu`.
    pub fn vram(mut self, gpu: u32, vram_mb: u64) -> Self {
        self.gpu = Some(gpu);
        self.vram_mb = vram_mb;
        self
    }

    /// How long ago its attempt was assigned, in milliseconds.
    pub fn ran_ms(mut self, ran_ms: u64) -> Self {
        self.ran_ms = ran_ms;
        self
    }
}

/// A pending run. Defaults: priority 0, no requirement, waiting 0 ms, queue
/// [`DEFAULT_QUEUE`], no definition, image "", attempt 1, not preemptible, no tags, no labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    priority: i64,
    cpu: u32,
    ram_mb: u64,
    vram_mb: u64,
    waited_ms: u64,
    queue: String,
    definition: String,
    image: String,
    attempt: u32,
    preemptible: bool,
    tags: Vec<String>,
    labels: BTreeMap<String, String>,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl RunSpec {
    run_setters!();

    /// A pending run with the defaults above.
    pub fn new() -> Self {
        Self {
            priority: 0,
            cpu: 0,
            ram_mb: 0,
            vram_mb: 0,
            waited_ms: 0,
            queue: DEFAULT_QUEUE.to_owned(),
            definition: String::new(),
            image: String::new(),
            attempt: 1,
            preemptible: false,
            tags: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    /// The VRAM it needs on one GPU, in megabytes.
    pub fn vram_mb(mut self, vram_mb: u64) -> Self {
        self.vram_mb = vram_mb;
        self
    }

    /// How long it has been waiting, in milliseconds.
    pub fn waited_ms(mut self, waited_ms: u64) -> Self {
        self.waited_ms = waited_ms;
        self
    }

    /// The attempt that would run.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Adds worker tags it requires (the host shows a claim only runs whose tags the
    /// requester meets; the kit does not check).
    pub fn tags<'a>(mut self, tags: impl IntoIterator<Item = &'a str>) -> Self {
        self.tags.extend(tags.into_iter().map(str::to_owned));
        self
    }
}

/// A queue's configuration, and the decayed usage of its ended attempts. A queue that only
/// runs name is in the claim too, with weight 1 and no quota.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    name: String,
    weight: u32,
    quota_cpu: u64,
    quota_ram_mb: u64,
    quota_vram_mb: u64,
    quota_runs: u64,
    ended: [f64; 3],
}

impl QueueSpec {
    /// Queue `name` with weight 1, no quota and no ended attempts.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            weight: 1,
            quota_cpu: NO_QUOTA,
            quota_ram_mb: NO_QUOTA,
            quota_vram_mb: NO_QUOTA,
            quota_runs: NO_QUOTA,
            ended: [0.0; 3],
        }
    }

    /// Its weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its CPU quota, in cores.
    pub fn quota_cpu(mut self, cores: u64) -> Self {
        self.quota_cpu = cores;
        self
    }

    /// Its RAM quota, in megabytes.
    pub fn quota_ram_mb(mut self, ram_mb: u64) -> Self {
        self.quota_ram_mb = ram_mb;
        self
    }

    /// Its VRAM quota, in megabytes.
    pub fn quota_vram_mb(mut self, vram_mb: u64) -> Self {
        self.quota_vram_mb = vram_mb;
        self
    }

    /// Its quota of runs held at once.
    pub fn quota_runs(mut self, runs: u64) -> Self {
        self.quota_runs = runs;
        self
    }

    /// The decayed usage of its ended attempts (CPU-core-, RAM-MB- and VRAM-MB-seconds),
    /// added to that of its held runs.
    pub fn ended_usage(
        mut self,
        cpu_seconds: f64,
        ram_mb_seconds: f64,
        vram_mb_seconds: f64,
    ) -> Self {
        self.ended = [cpu_seconds, ram_mb_seconds, vram_mb_seconds];
        self
    }
}

/// Builds a [`Claim`]; see the [module docs](self). Indices are the order things are added
/// in: worker `i` is the `i`-th [`ClaimBuilder::worker`], pending run `i` the `i`-th
/// [`ClaimBuilder::pending`] (the host sends them best first: add them in that order),
/// running run `i` the `i`-th [`ClaimBuilder::running`]. Queues are in name order.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimBuilder {
    requester: usize,
    max: u32,
    max_evictions: u32,
    usage_half_life_s: u32,
    workers: Vec<WorkerSpec>,
    running: Vec<RunningSpec>,
    pending: Vec<RunSpec>,
    queues: Vec<QueueSpec>,
}

impl Default for ClaimBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClaimBuilder {
    /// An empty claim: requester 0, `max` unlimited (`u32::MAX`), usage half-life
    /// [`DEFAULT_USAGE_HALF_LIFE_S`]. It needs at least the requester's worker.
    pub fn new() -> Self {
        Self {
            requester: 0,
            max: u32::MAX,
            max_evictions: DEFAULT_MAX_EVICTIONS,
            usage_half_life_s: DEFAULT_USAGE_HALF_LIFE_S,
            workers: Vec::new(),
            running: Vec::new(),
            pending: Vec::new(),
            queues: Vec::new(),
        }
    }

    /// Adds an active worker.
    pub fn worker(mut self, worker: WorkerSpec) -> Self {
        self.workers.push(worker);
        self
    }

    /// Which worker asks for work (an index into the workers added).
    pub fn requester(mut self, worker: usize) -> Self {
        self.requester = worker;
        self
    }

    /// How many runs the requester takes at most.
    pub fn max(mut self, max: u32) -> Self {
        self.max = max;
        self
    }

    /// How many evictions the host would carry out for this claim (default
    /// [`DEFAULT_MAX_EVICTIONS`], the server's default per-claim cap).
    pub fn max_evictions(mut self, max: u32) -> Self {
        self.max_evictions = max;
        self
    }

    /// The half-life of decayed queue usage, in seconds.
    pub fn usage_half_life_s(mut self, seconds: u32) -> Self {
        self.usage_half_life_s = seconds;
        self
    }

    /// Adds a run a worker holds.
    pub fn running(mut self, run: RunningSpec) -> Self {
        self.running.push(run);
        self
    }

    /// Adds a pending run.
    pub fn pending(mut self, run: RunSpec) -> Self {
        self.pending.push(run);
        self
    }

    /// Configures a queue (a later spec for the same name replaces an earlier one).
    pub fn queue(mut self, queue: QueueSpec) -> Self {
        self.queues.retain(|q| q.name != queue.name);
        self.queues.push(queue);
        self
    }

    /// The claim. Panics when the description cannot be a claim: the requester or a running
    /// run's worker is not a worker added, or a running run's GPU is not one of its worker's.
    pub fn build(self) -> Claim {
        assert!(
            self.requester < self.workers.len(),
            "ClaimBuilder: requester {} is not one of the {} workers",
            self.requester,
            self.workers.len()
        );
        let mut strings = Strings::default();
        let mut tags = Vec::new();
        let mut labels = Labels {
            key: Vec::new(),
            value: Vec::new(),
        };
        let mut add_tags = |strings: &mut Strings, list: &[String]| {
            let start = tags.len() as u32;
            tags.extend(list.iter().map(|tag| strings.index(tag)));
            (start, list.len() as u32)
        };
        let mut add_labels = |strings: &mut Strings, map: &BTreeMap<String, String>| {
            let start = labels.key.len() as u32;
            for (key, value) in map {
                labels.key.push(strings.index(key));
                labels.value.push(strings.index(value));
            }
            (start, map.len() as u32)
        };

        let mut pending = PendingRuns {
            priority: Vec::new(),
            cpu: Vec::new(),
            ram_mb: Vec::new(),
            vram_mb: Vec::new(),
            waited_ms: Vec::new(),
            queue: Vec::new(),
            definition: Vec::new(),
            image: Vec::new(),
            attempt: Vec::new(),
            preemptible: Vec::new(),
            tag_start: Vec::new(),
            tag_count: Vec::new(),
            label_start: Vec::new(),
            label_count: Vec::new(),
        };
        for run in &self.pending {
            pending.priority.push(run.priority);
            pending.cpu.push(run.cpu);
            pending.ram_mb.push(run.ram_mb);
            pending.vram_mb.push(run.vram_mb);
            pending.waited_ms.push(run.waited_ms);
            pending.queue.push(strings.index(&run.queue));
            pending.definition.push(strings.index(&run.definition));
            pending.image.push(strings.index(&run.image));
            pending.attempt.push(run.attempt);
            pending.preemptible.push(run.preemptible);
            let (start, count) = add_tags(&mut strings, &run.tags);
            pending.tag_start.push(start);
            pending.tag_count.push(count);
            let (start, count) = add_labels(&mut strings, &run.labels);
            pending.label_start.push(start);
            pending.label_count.push(count);
        }

        let mut workers = Workers {
            cpu_cores: Vec::new(),
            ram_mb: Vec::new(),
            free_cpu: Vec::new(),
            free_ram_mb: Vec::new(),
            gpu_start: Vec::new(),
            gpu_count: Vec::new(),
            running: Vec::new(),
            tag_start: Vec::new(),
            tag_count: Vec::new(),
        };
        let mut gpus = Gpus {
            id: Vec::new(),
            vram_mb: Vec::new(),
            free_vram_mb: Vec::new(),
            tag_start: Vec::new(),
            tag_count: Vec::new(),
        };
        for worker in &self.workers {
            workers.cpu_cores.push(worker.cpu_cores);
            workers.ram_mb.push(worker.ram_mb);
            workers.free_cpu.push(i64::from(worker.cpu_cores));
            workers.free_ram_mb.push(worker.ram_mb as i64);
            workers.gpu_start.push(gpus.id.len() as u32);
            workers.gpu_count.push(worker.gpus.len() as u32);
            workers.running.push(0);
            let (start, count) = add_tags(&mut strings, &worker.tags);
            workers.tag_start.push(start);
            workers.tag_count.push(count);
            for gpu in &worker.gpus {
                gpus.id.push(gpu.id);
                gpus.vram_mb.push(gpu.vram_mb);
                gpus.free_vram_mb.push(gpu.vram_mb as i64);
                let (start, count) = add_tags(&mut strings, &gpu.tags);
                gpus.tag_start.push(start);
                gpus.tag_count.push(count);
            }
        }

        let mut running = RunningRuns {
            worker: Vec::new(),
            gpu: Vec::new(),
            priority: Vec::new(),
            cpu: Vec::new(),
            ram_mb: Vec::new(),
            vram_mb: Vec::new(),
            ran_ms: Vec::new(),
            queue: Vec::new(),
            definition: Vec::new(),
            image: Vec::new(),
            preemptible: Vec::new(),
            label_start: Vec::new(),
            label_count: Vec::new(),
        };
        for (index, run) in self.running.iter().enumerate() {
            let w = run.worker;
            let Some(spec) = self.workers.get(w) else {
                panic!("ClaimBuilder: running run {index} is on worker {w}, which is not added");
            };
            let gpu = match run.gpu {
                None => NO_GPU,
                Some(id) => {
                    let Some(position) = spec.gpus.iter().position(|g| g.id == id) else {
                        panic!(
                            "ClaimBuilder: running run {index} holds GPU {id}, which worker {w} does not have"
                        );
                    };
                    let gpu = workers.gpu_start[w] as usize + position;
                    gpus.free_vram_mb[gpu] =
                        gpus.free_vram_mb[gpu].saturating_sub_unsigned(run.vram_mb);
                    gpu as u32
                }
            };
            workers.free_cpu[w] -= i64::from(run.cpu);
            workers.free_ram_mb[w] = workers.free_ram_mb[w].saturating_sub_unsigned(run.ram_mb);
            workers.running[w] += 1;
            running.worker.push(w as u32);
            running.gpu.push(gpu);
            running.priority.push(run.priority);
            running.cpu.push(run.cpu);
            running.ram_mb.push(run.ram_mb);
            running.vram_mb.push(run.vram_mb);
            running.ran_ms.push(run.ran_ms);
            running.queue.push(strings.index(&run.queue));
            running.definition.push(strings.index(&run.definition));
            running.image.push(strings.index(&run.image));
            running.preemptible.push(run.preemptible);
            let (start, count) = add_labels(&mut strings, &run.labels);
            running.label_start.push(start);
            running.label_count.push(count);
        }

        let queues = self.queue_columns(&mut strings);
        let claim = Claim {
            requester: self.requester as u32,
            max: self.max,
            max_evictions: self.max_evictions,
            strings: strings.table,
            tags,
            labels,
            workers,
            gpus,
            pending,
            running,
            queues,
            usage_half_life_s: self.usage_half_life_s,
        };
        debug_assert_eq!(claim.malformed(), None, "the kit built a malformed claim");
        claim
    }

    /// Every queue configured or named by a run, in name order, with its usage.
    fn queue_columns(&self, strings: &mut Strings) -> Queues {
        let mut by_name: BTreeMap<&str, (QueueSpec, Usage)> = BTreeMap::new();
        fn entry<'m, 'n>(
            map: &'m mut BTreeMap<&'n str, (QueueSpec, Usage)>,
            name: &'n str,
        ) -> &'m mut (QueueSpec, Usage) {
            map.entry(name)
                .or_insert_with(|| (QueueSpec::new(name), Usage::default()))
        }
        for spec in &self.queues {
            entry(&mut by_name, &spec.name).0 = spec.clone();
        }
        for run in &self.pending {
            entry(&mut by_name, &run.queue).1.pending += 1;
        }
        let half_life = f64::from(self.usage_half_life_s);
        for run in &self.running {
            let usage = &mut entry(&mut by_name, &run.queue).1;
            usage.running += 1;
            usage.cpu += u64::from(run.cpu);
            usage.ram_mb += run.ram_mb;
            usage.vram_mb += run.vram_mb;
            let held = decayed_seconds(run.ran_ms, half_life);
            usage.seconds[0] += f64::from(run.cpu) * held;
            usage.seconds[1] += run.ram_mb as f64 * held;
            usage.seconds[2] += run.vram_mb as f64 * held;
        }
        let mut queues = Queues {
            name: Vec::new(),
            weight: Vec::new(),
            quota_cpu: Vec::new(),
            quota_ram_mb: Vec::new(),
            quota_vram_mb: Vec::new(),
            quota_runs: Vec::new(),
            running: Vec::new(),
            cpu: Vec::new(),
            ram_mb: Vec::new(),
            vram_mb: Vec::new(),
            pending: Vec::new(),
            cpu_seconds: Vec::new(),
            ram_mb_seconds: Vec::new(),
            vram_mb_seconds: Vec::new(),
        };
        for (name, (spec, usage)) in by_name {
            queues.name.push(strings.index(name));
            queues.weight.push(spec.weight);
            queues.quota_cpu.push(spec.quota_cpu);
            queues.quota_ram_mb.push(spec.quota_ram_mb);
            queues.quota_vram_mb.push(spec.quota_vram_mb);
            queues.quota_runs.push(spec.quota_runs);
            queues.running.push(usage.running);
            queues.cpu.push(usage.cpu);
            queues.ram_mb.push(usage.ram_mb);
            queues.vram_mb.push(usage.vram_mb);
            queues.pending.push(usage.pending);
            queues.cpu_seconds.push(spec.ended[0] + usage.seconds[0]);
            queues.ram_mb_seconds.push(spec.ended[1] + usage.seconds[1]);
            queues
                .vram_mb_seconds
                .push(spec.ended[2] + usage.seconds[2]);
        }
        queues
    }
}

/// What a queue's runs hold and how many wait, while a claim is built.
#[derive(Debug, Default)]
struct Usage {
    running: u32,
    cpu: u64,
    ram_mb: u64,
    vram_mb: u64,
    pending: u32,
    seconds: [f64; 3],
}

/// The decayed seconds of a run held for `ran_ms`: each second weighted by
/// 2^(-age / half-life), i.e. the integral of that weight over the run's age, 0 .. ran.
fn decayed_seconds(ran_ms: u64, half_life_s: f64) -> f64 {
    if half_life_s <= 0.0 {
        return 0.0;
    }
    let ran_s = ran_ms as f64 / 1000.0;
    half_life_s / std::f64::consts::LN_2 * (1.0 - (-ran_s / half_life_s).exp2())
}

/// The claim's string table while it is built: entry 0 is "", each string is there once.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, u32>,
}

impl Default for Strings {
    fn default() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl Strings {
    fn index(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as u32;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// Runs strategy `S` on `claim` as the exported component does: [`Strategy::init`] with
/// `config`, the SDK's malformed-claim check, then [`Strategy::schedule`].
pub fn decide<S: Strategy>(config: &str, claim: &Claim) -> Result<Decision, String> {
    let mut strategy = S::init(config)?;
    if let Some(why) = claim.malformed() {
        return Err(why.into());
    }
    strategy.schedule(claim)
}

/// What the host would make of a decision (see [`outcome`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The runs the requester takes (indices into `claim.pending`), in the decision's order.
    pub assigned: Vec<usize>,
    /// Assignments dropped: unknown, duplicate, beyond `max`, or not fitting the requester's
    /// free capacity (with what accepted evictions free) together with those before them.
    pub dropped: usize,
    /// The running runs evicted (indices into `claim.running`), in the decision's order.
    pub evicted: Vec<usize>,
    /// The evictions refused: their index in `decision.evict`, and why.
    pub refused: Vec<(usize, &'static str)>,
}

/// Applies the host's rules, as `gyoza:scheduler@1.0.0` states them, to `decision`:
/// an eviction is carried out only if its run exists, is held by the requester and is
/// preemptible, is not evicted twice, and its `for_run` exists, is in `assign` or `deferred`
/// and has a higher priority; then the assignments are placed in order on the requester's
/// free capacity plus what those evictions free, up to `claim.max`. The server also caps
/// evictions per claim and per minute (its configuration); this does not.
pub fn outcome(claim: &Claim, decision: &Decision) -> Outcome {
    outcome_with(claim, decision, false)
}

/// [`outcome`] on a server that lets strategies preempt across workers
/// (`GYOZA_PREEMPT_ACROSS_WORKERS=true`): an eviction on another worker is also carried out
/// when its `for_run` is deferred (not assigned), every eviction for that run is on that one
/// worker, and the run fits that worker's free capacity once they are carried out (the
/// server also checks that worker's tags, which the claim does not show for pending runs).
pub fn outcome_across_workers(claim: &Claim, decision: &Decision) -> Outcome {
    outcome_with(claim, decision, true)
}

fn outcome_with(claim: &Claim, decision: &Decision, across_workers: bool) -> Outcome {
    let mut out = Outcome::default();
    let requester = claim.requester as usize;
    let mut free = claim.requester_capacity();
    let named =
        |run: u32| decision.assign.contains(&run) || decision.deferred.iter().any(|d| d.run == run);
    // Whether the evictions elsewhere for pending run `for_run` make it fit where they are.
    let fits_elsewhere = |for_run: u32| {
        let victims: Vec<usize> = decision
            .evict
            .iter()
            .filter(|e| e.for_run == for_run && (e.run as usize) < claim.running.len())
            .map(|e| e.run as usize)
            .collect();
        let Some(&first) = victims.first() else {
            return false;
        };
        let worker = claim.running.worker[first] as usize;
        if decision.assign.contains(&for_run)
            || victims
                .iter()
                .any(|&v| claim.running.worker[v] as usize != worker)
        {
            return false;
        }
        let mut room = claim.capacity(worker);
        for &victim in &victims {
            claim.free_up(&mut room, victim);
        }
        claim
            .pending
            .get(for_run as usize)
            .is_some_and(|run| room.fit(&run).is_some())
    };
    for (k, eviction) in decision.evict.iter().enumerate() {
        let (run, for_run) = (eviction.run as usize, eviction.for_run as usize);
        let why = if run >= claim.running.len() {
            Some("no such running run")
        } else if claim.running.worker[run] as usize != requester
            && !(across_workers && fits_elsewhere(eviction.for_run))
        {
            Some("not held by the requester")
        } else if !claim.running.preemptible[run] {
            Some("not preemptible")
        } else if out.evicted.contains(&run) {
            Some("evicted twice")
        } else if for_run >= claim.pending.len() {
            Some("for no such pending run")
        } else if !named(eviction.for_run) {
            Some("for a run neither assigned nor deferred")
        } else if claim.pending.priority[for_run] <= claim.running.priority[run] {
            Some("for a run of no higher priority")
        } else {
            None
        };
        match why {
            Some(why) => out.refused.push((k, why)),
            None => {
                if claim.running.worker[run] as usize == requester {
                    claim.free_up(&mut free, run);
                }
                out.evicted.push(run);
            }
        }
    }
    for &index in &decision.assign {
        let index = index as usize;
        let fits = match claim.pending.get(index) {
            Some(run)
                if !out.assigned.contains(&index) && out.assigned.len() < claim.max as usize =>
            {
                free.fit(&run).map(|gpu| free.take(&run, gpu)).is_some()
            }
            _ => false,
        };
        if fits {
            out.assigned.push(index);
        } else {
            out.dropped += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WaitCode;

    fn cluster() -> ClaimBuilder {
        ClaimBuilder::new()
            .worker(
                WorkerSpec::new(8, 16384)
                    .tags(["ssd", "eu"])
                    .gpu(0, 24576, ["a100"])
                    .gpu(1, 8192, []),
            )
            .worker(WorkerSpec::new(4, 8192).tags(["ssd"]))
            .running(
                RunningSpec::on(0)
                    .priority(1)
                    .cpu(4)
                    .ram_mb(4096)
                    .vram(1, 6000)
                    .ran_ms(60_000)
                    .queue("batch")
                    .preemptible(true)
                    .label("team", "vision"),
            )
            .running(RunningSpec::on(1).cpu(1).ram_mb(512))
            .pending(
                RunSpec::new()
                    .priority(5)
                    .cpu(4)
                    .queue("interactive")
                    .image("ghcr.io/x/y:1")
                    .label("team", "vision")
                    .label("tier", "gold")
                    .tags(["ssd"]),
            )
            .pending(RunSpec::new().cpu(1).image("ghcr.io/x/y:1").attempt(2))
            .queue(QueueSpec::new("batch").weight(2).quota_cpu(16))
    }

    #[test]
    fn free_capacity_is_total_minus_what_running_runs_hold() {
        let claim = cluster().build();
        assert_eq!(claim.workers.free_cpu, [4, 3]);
        assert_eq!(claim.workers.free_ram_mb, [12288, 7680]);
        assert_eq!(claim.workers.running, [1, 1]);
        assert_eq!(claim.gpus.free_vram_mb, [24576, 2192]);
        assert_eq!(claim.running.gpu, [1, NO_GPU]);
        assert_eq!(claim.capacity(0).gpus, [24576, 2192]);
        assert_eq!(claim.running_on(0).collect::<Vec<_>>(), [0]);
        assert_eq!(claim.running_on(1).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn strings_are_deduplicated_and_start_with_the_empty_string() {
        let claim = cluster().build();
        assert_eq!(claim.strings[0], "");
        let mut sorted = claim.strings.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), claim.strings.len(), "{:?}", claim.strings);
        assert_eq!(claim.pending.image[0], claim.pending.image[1]);
        assert_eq!(claim.string(claim.pending.image[0]), "ghcr.io/x/y:1");
        assert_eq!(claim.string(claim.pending.definition[0]), "");
        assert_eq!(claim.string(u32::MAX), "");
    }

    #[test]
    fn tags_and_labels_read_back_per_row() {
        let claim = cluster().build();
        assert_eq!(claim.run_tags(0).collect::<Vec<_>>(), ["ssd"]);
        assert_eq!(claim.run_tags(1).count(), 0);
        assert_eq!(claim.worker_tags(0).collect::<Vec<_>>(), ["ssd", "eu"]);
        assert_eq!(claim.gpu_tags(0).collect::<Vec<_>>(), ["a100"]);
        assert_eq!(claim.gpu_tags(1).count(), 0);
        assert_eq!(
            claim.run_labels(0).collect::<Vec<_>>(),
            [("team", "vision"), ("tier", "gold")]
        );
        assert_eq!(claim.run_label(0, "tier"), Some("gold"));
        assert_eq!(claim.run_label(1, "tier"), None);
        assert_eq!(claim.running_label(0, "team"), Some("vision"));
        assert_eq!(claim.running_label(1, "team"), None);
        assert_eq!(claim.pending.run(1).attempt, 2);
    }

    #[test]
    fn queues_count_what_their_runs_hold_and_how_many_wait() {
        let claim = cluster().usage_half_life_s(60).build();
        let names: Vec<&str> = (0..claim.queues.len())
            .map(|i| claim.queue_name(i))
            .collect();
        assert_eq!(names, ["batch", "default", "interactive"]);
        let batch = claim.queues.queue(0);
        assert_eq!(
            (batch.weight, batch.quota_cpu, batch.quota_runs),
            (2, 16, NO_QUOTA)
        );
        assert_eq!(
            (batch.running, batch.cpu, batch.ram_mb, batch.vram_mb),
            (1, 4, 4096, 6000)
        );
        assert_eq!(batch.pending, 0);
        // Held for one half-life: 60 s / ln 2 * (1 - 1/2) core-seconds per core.
        let one_core = 30.0 / std::f64::consts::LN_2;
        assert!(
            (batch.cpu_seconds - 4.0 * one_core).abs() < 1e-9,
            "{batch:?}"
        );
        assert!((batch.vram_mb_seconds - 6000.0 * one_core).abs() < 1e-6);
        let default = claim.queues.queue(1);
        assert_eq!(
            (default.weight, default.running, default.pending),
            (1, 1, 1)
        );
        let interactive = claim
            .queue_index("interactive")
            .map(|i| claim.queues.queue(i));
        assert_eq!(interactive.map(|q| (q.running, q.pending)), Some((0, 1)));
        assert_eq!(claim.queue_index("nope"), None);
    }

    #[test]
    fn ended_usage_adds_to_the_held_one() {
        let claim = ClaimBuilder::new()
            .worker(WorkerSpec::new(1, 1))
            .queue(QueueSpec::new("q").ended_usage(1.0, 2.0, 3.0))
            .build();
        assert_eq!(claim.queues.cpu_seconds, [1.0]);
        assert_eq!(claim.queues.ram_mb_seconds, [2.0]);
        assert_eq!(claim.queues.vram_mb_seconds, [3.0]);
    }

    #[test]
    fn a_built_claim_is_well_formed_and_breaking_it_is_noticed() {
        let claim = cluster().build();
        assert_eq!(claim.malformed(), None);
        type Breaks = (&'static str, fn(&mut Claim));
        let broken: [Breaks; 10] = [
            ("columns", |c| c.pending.attempt.push(1)),
            ("columns", |c| c.queues.vram_mb_seconds.clear()),
            ("columns", |c| {
                c.labels.value.pop();
            }),
            ("requester", |c| c.requester = 2),
            ("string table", |c| c.strings[0] = "x".into()),
            ("string index", |c| c.pending.image[1] = 99),
            ("tag or label", |c| c.pending.tag_count[0] = 9),
            ("tag or label", |c| c.running.label_start[0] = u32::MAX),
            ("GPU range", |c| c.workers.gpu_count[1] = 1),
            ("GPU is not one of its worker's", |c| c.running.gpu[1] = 0),
        ];
        for (what, breaks) in broken {
            let mut claim = claim.clone();
            breaks(&mut claim);
            let why = claim.malformed().unwrap_or_default();
            assert!(why.contains(what), "{what}: {why:?}");
        }
    }

    #[test]
    #[should_panic(expected = "requester 1 is not one of the 1 workers")]
    fn a_requester_that_is_not_a_worker_is_refused() {
        ClaimBuilder::new()
            .worker(WorkerSpec::new(1, 1))
            .requester(1)
            .build();
    }

    #[test]
    #[should_panic(expected = "holds GPU 3, which worker 0 does not have")]
    fn a_running_run_on_a_gpu_its_worker_lacks_is_refused() {
        ClaimBuilder::new()
            .worker(WorkerSpec::new(1, 1).gpu(0, 10, []))
            .running(RunningSpec::on(0).vram(3, 5))
            .build();
    }

    #[test]
    fn free_up_gives_back_what_a_running_run_holds() {
        let claim = cluster().build();
        let mut free = claim.requester_capacity();
        claim.free_up(&mut free, 0);
        assert_eq!(
            free,
            crate::Capacity {
                cpu: 8,
                ram_mb: 16384,
                gpus: vec![24576, 8192]
            }
        );
    }

    #[test]
    fn outcome_applies_the_host_rules() {
        let claim = cluster()
            .running(RunningSpec::on(0).priority(9).cpu(2).preemptible(true))
            .running(RunningSpec::on(0).cpu(1))
            .running(RunningSpec::on(0).preemptible(true))
            .pending(RunSpec::new().priority(3))
            .build();
        let mut decision = Decision {
            assign: vec![0, 7, 0, 1],
            ..Decision::default()
        };
        decision.wait(1, WaitCode::Capacity, "waits");
        decision.evict(0, 0, "ok");
        decision.evict(9, 0, "no such run");
        decision.evict(1, 0, "other worker");
        decision.evict(3, 0, "not preemptible");
        decision.evict(0, 0, "twice");
        decision.evict(2, 5, "no such pending run");
        decision.evict(2, 0, "equal or higher priority: 9 > 5");
        decision.evict(4, 2, "pending run 2 is neither assigned nor deferred");
        let out = outcome(&claim, &decision);
        assert_eq!(out.evicted, [0]);
        assert_eq!(
            out.refused,
            [
                (1, "no such running run"),
                (2, "not held by the requester"),
                (3, "not preemptible"),
                (4, "evicted twice"),
                (5, "for no such pending run"),
                (6, "for a run of no higher priority"),
                (7, "for a run neither assigned nor deferred"),
            ]
        );
        // 1 core free, 5 once running run 0 is evicted: pending run 0 takes 4, run 1 the last.
        assert_eq!(out.assigned, [0, 1]);
        assert_eq!(out.dropped, 2);
        assert_eq!(
            outcome(&cluster().max(1).build(), &decision).assigned,
            [0],
            "max caps the assignments"
        );
    }

    struct Greedy;

    impl Strategy for Greedy {
        fn init(config: &str) -> Result<Self, String> {
            if config.is_empty() {
                Ok(Greedy)
            } else {
                Err(format!("bad config {config}"))
            }
        }
        fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
            let mut decision = Decision::default();
            decision.assign.extend(0..claim.pending.len() as u32);
            Ok(decision)
        }
    }

    #[test]
    fn decide_runs_init_the_check_and_schedule() {
        let claim = cluster().build();
        assert_eq!(
            decide::<Greedy>("", &claim).map(|d| d.assign),
            Ok(vec![0, 1])
        );
        assert_eq!(
            decide::<Greedy>("x", &claim).map(|d| d.assign),
            Err("bad config x".into())
        );
        let mut broken = claim.clone();
        broken.requester = 5;
        assert_eq!(
            decide::<Greedy>("", &broken).map(|d| d.assign),
            Err("the claim's requester is not one of its workers".into())
        );
    }
}
