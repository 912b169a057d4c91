//! Between the host's view of a claim and the WIT records: the compact `claim` (1.0.0
//! columns and string table) a plugin decides from, and its answer as the raw [`Decision`]
//! the claim checks (indices into the pending window, in the plugin's order, the reasons it
//! gave and the preemptions it asked for).

use std::collections::{HashMap, HashSet};

use gyoza_core::placement::EvictionRequest;
use gyoza_core::resources::Labels;
use gyoza_core::{Capacity, HeldRun, Resources, RunFacts};

use super::wit::{self, Claim, Gpus, PendingRuns, Queues, RunningRuns, Workers};
use crate::scheduler::{ClaimRequest, Decision};

/// Reasons kept per claim: strategies should only explain the first few runs they defer, and
/// the host never stores more than this many from one answer.
pub(super) const REASONS_KEPT: usize = 16;

/// Longest reason kept, in characters.
const REASON_CHARS: usize = 300;

/// `running-runs.gpu` of a run that holds no GPU.
const NO_GPU: u32 = u32::MAX;

/// `queues.quota-*` of a queue without that quota.
const NO_QUOTA: u64 = u64::MAX;

/// A word-at-a-time multiplicative hash (as rustc's FxHash) from a per-process random seed:
/// the string table hashes a few thousand short strings per claim, where SipHash (std's
/// default) was a third of building the claim and a byte-at-a-time hash still a fifth; the
/// seed keeps collisions from being chosen ahead by whoever names queues and labels.
#[derive(Clone, Copy)]
struct SeededHash(u64);

impl std::hash::BuildHasher for SeededHash {
    type Hasher = WordHash;

    fn build_hasher(&self) -> WordHash {
        WordHash(self.0)
    }
}

impl SeededHash {
    fn new() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        Self(*SEED.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                | 1
        }))
    }
}

struct WordHash(u64);

impl std::hash::Hasher for WordHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        let word = u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56);
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

/// The claim's string table: each distinct string once, entry 0 the empty string.
struct Strings<'a> {
    list: Vec<String>,
    index: HashMap<&'a str, u32, SeededHash>,
}

/// The last string a column named, and its index: runs in a row often share their queue,
/// image or label key, which then costs a comparison instead of a lookup.
#[derive(Default)]
struct Memo<'a>(Option<(&'a str, u32)>);

impl<'a> Strings<'a> {
    fn new() -> Self {
        let mut index = HashMap::with_capacity_and_hasher(64, SeededHash::new());
        index.insert("", 0);
        Self {
            list: vec![String::new()],
            index,
        }
    }

    fn id(&mut self, text: &'a str) -> u32 {
        if let Some(&id) = self.index.get(text) {
            return id;
        }
        let id = self.list.len() as u32;
        self.list.push(text.to_owned());
        self.index.insert(text, id);
        id
    }

    /// [`Strings::id`] through `memo`.
    fn id_via(&mut self, memo: &mut Memo<'a>, text: &'a str) -> u32 {
        match memo.0 {
            // Runs read from a store share one copy of each name: the address decides
            // without touching the text (the runs' strings are spread over the heap).
            Some((last, id)) if std::ptr::eq(last, text) || last == text => id,
            _ => {
                let id = self.id(text);
                memo.0 = Some((text, id));
                id
            }
        }
    }
}

/// The flat lists rows name ranges of: tags, and labels as (key, value) pairs.
struct Flat<'a> {
    strings: Strings<'a>,
    tags: Vec<u32>,
    labels: wit::Labels,
    /// The last label key, and the last queue, definition and image of a run.
    memo: [Memo<'a>; 4],
}

impl<'a> Flat<'a> {
    /// Appends `tags`; returns (start, count).
    fn tags(&mut self, tags: &'a [String]) -> (u32, u32) {
        let start = self.tags.len() as u32;
        for tag in tags {
            let id = self.strings.id(tag);
            self.tags.push(id);
        }
        (start, tags.len() as u32)
    }

    /// The string indices of a run's queue, definition (0 for none) and image.
    fn names(&mut self, facts: &'a RunFacts) -> [u32; 3] {
        let [_, queue, definition, image] = &mut self.memo;
        let named = facts.definition.as_deref().unwrap_or_default();
        [
            self.strings.id_via(queue, &facts.queue),
            self.strings.id_via(definition, named),
            self.strings.id_via(image, &facts.image),
        ]
    }

    /// Appends `labels`; returns (start, count).
    fn labels(&mut self, labels: &'a Labels) -> (u32, u32) {
        let start = self.labels.key.len() as u32;
        for (key, value) in labels {
            let key = self.strings.id_via(&mut self.memo[0], key);
            let value = self.strings.id(value);
            self.labels.key.push(key);
            self.labels.value.push(value);
        }
        (start, labels.len() as u32)
    }
}

fn push_worker<'a>(
    flat: &mut Flat<'a>,
    workers: &mut Workers,
    gpus: &mut Gpus,
    (resources, tags): (&'a Resources, &'a [String]),
    free: &Capacity,
    running: usize,
) {
    let gpu_start = gpus.id.len() as u32;
    for &(id, free_vram) in &free.gpus {
        let gpu = resources.gpus.iter().find(|g| g.id == id);
        let (start, count) = match gpu {
            Some(gpu) => flat.tags(&gpu.tags),
            None => (flat.tags.len() as u32, 0),
        };
        gpus.id.push(id);
        gpus.vram_mb.push(gpu.map_or(0, |g| g.vram_mb));
        gpus.free_vram_mb.push(free_vram);
        gpus.tag_start.push(start);
        gpus.tag_count.push(count);
    }
    let (tag_start, tag_count) = flat.tags(tags);
    workers.cpu_cores.push(resources.cpu_cores);
    workers.ram_mb.push(resources.ram_mb);
    workers.free_cpu.push(free.cpu);
    workers.free_ram_mb.push(free.ram_mb);
    workers.gpu_start.push(gpu_start);
    workers.gpu_count.push(gpus.id.len() as u32 - gpu_start);
    workers.running.push(running as u32);
    workers.tag_start.push(tag_start);
    workers.tag_count.push(tag_count);
}

fn workers_with_capacity(n: usize) -> Workers {
    Workers {
        cpu_cores: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        free_cpu: Vec::with_capacity(n),
        free_ram_mb: Vec::with_capacity(n),
        gpu_start: Vec::with_capacity(n),
        gpu_count: Vec::with_capacity(n),
        running: Vec::with_capacity(n),
        tag_start: Vec::with_capacity(n),
        tag_count: Vec::with_capacity(n),
    }
}

/// The WIT claim for `request` (`gyoza:scheduler@1.0.0`). The requester's capacity is the
/// request's own (read for this claim), whether or not the cluster listing has it.
pub(super) fn claim(request: &ClaimRequest<'_>) -> Claim {
    let mut flat = Flat {
        strings: Strings::new(),
        tags: Vec::new(),
        labels: wit::Labels {
            key: Vec::new(),
            value: Vec::new(),
        },
        memo: Default::default(),
    };
    let mut workers = workers_with_capacity(request.cluster.len() + 1);
    let mut gpus = Gpus {
        id: Vec::new(),
        vram_mb: Vec::new(),
        free_vram_mb: Vec::new(),
        tag_start: Vec::new(),
        tag_count: Vec::new(),
    };
    let mut requester = None;
    let mut worker_index: HashMap<&str, u32> = HashMap::with_capacity(request.cluster.len());
    for worker in request.cluster {
        let free = if worker.id == request.worker.id {
            requester = Some(workers.free_cpu.len());
            &request.free
        } else {
            &worker.free
        };
        worker_index.insert(&worker.id, workers.free_cpu.len() as u32);
        push_worker(
            &mut flat,
            &mut workers,
            &mut gpus,
            (&worker.resources, &worker.tags),
            free,
            worker.running,
        );
    }
    let requester = requester.unwrap_or_else(|| {
        worker_index.insert(&request.worker.id, workers.free_cpu.len() as u32);
        push_worker(
            &mut flat,
            &mut workers,
            &mut gpus,
            (&request.worker.resources, &request.worker.tags),
            &request.free,
            0,
        );
        workers.free_cpu.len() - 1
    });
    let pending = pending_runs(request, &mut flat);
    let running = running_runs(request, &mut flat, &worker_index, &workers, &gpus);
    let queues = queues(request, &mut flat);
    Claim {
        requester: requester as u32,
        max: request.max.min(u32::MAX as usize) as u32,
        max_evictions: request.max_evictions.min(u32::MAX as usize) as u32,
        strings: flat.strings.list,
        tags: flat.tags,
        labels: flat.labels,
        workers,
        gpus,
        pending,
        running,
        queues,
        usage_half_life_s: request.queues.half_life_s,
    }
}

fn pending_runs<'a>(request: &ClaimRequest<'a>, flat: &mut Flat<'a>) -> PendingRuns {
    let n = request.pending.len();
    let mut pending = PendingRuns {
        priority: Vec::with_capacity(n),
        cpu: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        vram_mb: Vec::with_capacity(n),
        waited_ms: Vec::with_capacity(n),
        queue: Vec::with_capacity(n),
        definition: Vec::with_capacity(n),
        image: Vec::with_capacity(n),
        attempt: Vec::with_capacity(n),
        preemptible: Vec::with_capacity(n),
        tag_start: Vec::with_capacity(n),
        tag_count: Vec::with_capacity(n),
        label_start: Vec::with_capacity(n),
        label_count: Vec::with_capacity(n),
    };
    for run in request.pending {
        let facts = &run.facts;
        pending.priority.push(run.priority);
        pending.cpu.push(run.constraints.cpu.unwrap_or(0));
        pending.ram_mb.push(run.constraints.ram_mb.unwrap_or(0));
        pending.vram_mb.push(run.constraints.vram_mb.unwrap_or(0));
        pending
            .waited_ms
            .push((request.now - run.created_at).num_milliseconds().max(0) as u64);
        let [queue, definition, image] = flat.names(facts);
        pending.queue.push(queue);
        pending.definition.push(definition);
        pending.image.push(image);
        pending.attempt.push(facts.attempt);
        pending.preemptible.push(facts.preemptible);
        let (start, count) = flat.tags(&run.constraints.tags);
        pending.tag_start.push(start);
        pending.tag_count.push(count);
        let (start, count) = flat.labels(&facts.labels);
        pending.label_start.push(start);
        pending.label_count.push(count);
    }
    pending
}

/// Whether a strategy may preempt `run` (the host's rules bar one preempted too often).
fn preemptible(request: &ClaimRequest<'_>, run: &HeldRun) -> bool {
    run.facts.preemptible && run.facts.preemptions < request.max_preemptions
}

fn running_runs<'a>(
    request: &ClaimRequest<'a>,
    flat: &mut Flat<'a>,
    worker_index: &HashMap<&str, u32>,
    workers: &Workers,
    gpus: &Gpus,
) -> RunningRuns {
    let n = request.running.len();
    let mut running = RunningRuns {
        worker: Vec::with_capacity(n),
        gpu: Vec::with_capacity(n),
        priority: Vec::with_capacity(n),
        cpu: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        vram_mb: Vec::with_capacity(n),
        ran_ms: Vec::with_capacity(n),
        queue: Vec::with_capacity(n),
        definition: Vec::with_capacity(n),
        image: Vec::with_capacity(n),
        preemptible: Vec::with_capacity(n),
        label_start: Vec::with_capacity(n),
        label_count: Vec::with_capacity(n),
    };
    for run in request.running {
        // The claim's request holds the runs of its cluster's workers only.
        let worker = worker_index
            .get(run.worker_id.as_str())
            .copied()
            .unwrap_or(0);
        let gpu = run
            .gpu_id
            .and_then(|id| {
                let start = *workers.gpu_start.get(worker as usize)? as usize;
                let count = *workers.gpu_count.get(worker as usize)? as usize;
                let position = gpus.id[start..start + count]
                    .iter()
                    .position(|g| *g == id)?;
                Some((start + position) as u32)
            })
            .unwrap_or(NO_GPU);
        let facts = &run.facts;
        running.worker.push(worker);
        running.gpu.push(gpu);
        running.priority.push(run.priority);
        running.cpu.push(run.constraints.cpu.unwrap_or(0));
        running.ram_mb.push(run.constraints.ram_mb.unwrap_or(0));
        running.vram_mb.push(run.constraints.vram_mb.unwrap_or(0));
        running.ran_ms.push(ran_ms(request, run));
        let [queue, definition, image] = flat.names(facts);
        running.queue.push(queue);
        running.definition.push(definition);
        running.image.push(image);
        running.preemptible.push(preemptible(request, run));
        let (start, count) = flat.labels(&facts.labels);
        running.label_start.push(start);
        running.label_count.push(count);
    }
    running
}

/// How long `run`'s attempt has been held, in milliseconds.
fn ran_ms(request: &ClaimRequest<'_>, run: &HeldRun) -> u64 {
    crate::queues::held_ms(run.facts.assigned_at, request.now)
}

/// Every configured queue and every queue of a pending or held run, by name, with its usage
/// ([`crate::queues::rows`], shared with `GET /queues`; pending counts the window).
fn queues<'a>(request: &ClaimRequest<'a>, flat: &mut Flat<'a>) -> Queues {
    let pending = request.pending.iter().map(|run| (&*run.facts.queue, 1));
    let rows = crate::queues::rows(
        request.queues,
        pending,
        request.running,
        request.usage,
        request.now,
    );
    let n = rows.len();
    let mut queues = Queues {
        name: Vec::with_capacity(n),
        weight: Vec::with_capacity(n),
        quota_cpu: Vec::with_capacity(n),
        quota_ram_mb: Vec::with_capacity(n),
        quota_vram_mb: Vec::with_capacity(n),
        quota_runs: Vec::with_capacity(n),
        running: Vec::with_capacity(n),
        cpu: Vec::with_capacity(n),
        ram_mb: Vec::with_capacity(n),
        vram_mb: Vec::with_capacity(n),
        pending: Vec::with_capacity(n),
        cpu_seconds: Vec::with_capacity(n),
        ram_mb_seconds: Vec::with_capacity(n),
        vram_mb_seconds: Vec::with_capacity(n),
    };
    for (name, row) in rows {
        let config = request.queues.get(name);
        queues.name.push(flat.strings.id(name));
        queues.weight.push(config.weight);
        queues.quota_cpu.push(config.quota.cpu.unwrap_or(NO_QUOTA));
        queues
            .quota_ram_mb
            .push(config.quota.ram_mb.unwrap_or(NO_QUOTA));
        queues
            .quota_vram_mb
            .push(config.quota.vram_mb.unwrap_or(NO_QUOTA));
        queues
            .quota_runs
            .push(config.quota.runs.unwrap_or(NO_QUOTA));
        queues.running.push(row.running);
        queues.cpu.push(row.cpu);
        queues.ram_mb.push(row.ram_mb);
        queues.vram_mb.push(row.vram_mb);
        queues
            .pending
            .push(u32::try_from(row.pending).unwrap_or(u32::MAX));
        queues.cpu_seconds.push(row.decayed[0]);
        queues.ram_mb_seconds.push(row.decayed[1]);
        queues.vram_mb_seconds.push(row.decayed[2]);
    }
    queues
}

/// The plugin's `answer` as a [`Decision`] on a window of `pending` runs: its choices and
/// preemptions as they are (the claim checks them), and at most [`REASONS_KEPT`] reasons,
/// trimmed to [`REASON_CHARS`], for runs of the window it did not choose.
pub(super) fn decision(pending: usize, answer: &wit::Decision) -> Decision {
    let chosen: Vec<usize> = answer.assign.iter().map(|&i| i as usize).collect();
    let picked: HashSet<usize> = chosen.iter().copied().collect();
    let reasons = answer
        .deferred
        .iter()
        .map(|deferral| (deferral.run as usize, deferral.reason.trim()))
        .filter(|(run, reason)| *run < pending && !picked.contains(run) && !reason.is_empty())
        .take(REASONS_KEPT)
        .map(|(run, reason)| (run, reason.chars().take(REASON_CHARS).collect()))
        .collect();
    // Runs deferred without a kept reason still count as decided for a preemption.
    let mut deferred: Vec<usize> = answer.deferred.iter().map(|d| d.run as usize).collect();
    deferred.sort_unstable();
    deferred.dedup();
    let evictions = answer
        .evict
        .iter()
        .map(|eviction| EvictionRequest {
            run: eviction.run as usize,
            for_run: eviction.for_run as usize,
            reason: eviction.reason.trim().chars().take(REASON_CHARS).collect(),
        })
        .collect();
    Decision {
        chosen,
        reasons,
        deferred,
        evictions,
        strategy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::Deferral;

    #[test]
    fn choices_pass_as_they_are_and_reasons_are_bounded() {
        let deferral = |run: u32, reason: &str| Deferral {
            run,
            code: wit::WaitCode::Other,
            reason: reason.into(),
        };
        let mut deferred = vec![
            deferral(0, "chosen after all"),
            deferral(9, "not in the window"),
            deferral(2, "  "),
            deferral(1, &format!("  {}  ", "x".repeat(500))),
        ];
        deferred.extend((0..40).map(|_| deferral(3, "waits")));
        let answer = wit::Decision {
            assign: vec![0, 7, 0],
            deferred,
            evict: Vec::new(),
        };
        let decision = decision(4, &answer);
        assert_eq!(decision.chosen, [0, 7, 0], "the claim checks the choices");
        assert_eq!(decision.reasons.len(), REASONS_KEPT);
        assert_eq!(decision.reasons[0], (1, "x".repeat(REASON_CHARS)));
        assert!(
            decision.reasons[1..]
                .iter()
                .all(|(run, r)| *run == 3 && r == "waits")
        );
    }

    /// The claim's `queues` column: configured queues first seeded, the window's pending
    /// runs counted, held runs with what they hold and their decayed usage, plus the store's
    /// ended usage (only for a queue listed for another reason). Figures from the numbers.
    #[test]
    fn the_claims_queues_count_the_window_the_held_runs_and_the_ended_usage() {
        use gyoza_core::{Constraints, PendingRun, Resources, Worker};

        use crate::queues::QueueSettings;

        let now = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let facts = |queue: &str, assigned_s: Option<i64>| RunFacts {
            queue: queue.into(),
            assigned_at: assigned_s.map(|s| now - chrono::Duration::seconds(s)),
            ..RunFacts::default()
        };
        let worker = Worker {
            id: "w".into(),
            resources: Resources {
                cpu_cores: 8,
                ram_mb: 8192,
                gpus: Vec::new(),
            },
            tags: Vec::new(),
            running_ops: Vec::new(),
            created_at: now,
            last_heartbeat_at: now,
            instance: None,
        };
        let pending: Vec<PendingRun> = ["b", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, queue)| PendingRun {
                id: format!("p{i}"),
                priority: 0,
                created_at: now,
                constraints: Constraints::default(),
                facts: facts(queue, None),
                only_gpus: None,
            })
            .collect();
        let running = vec![HeldRun {
            id: "h".into(),
            worker_id: "w".into(),
            constraints: Constraints {
                cpu: Some(2),
                ram_mb: Some(100),
                ..Constraints::default()
            },
            gpu_id: None,
            priority: 0,
            facts: facts("b", Some(60)),
        }];
        let queues = QueueSettings::parse("a:weight=3,cpu=4", 600).unwrap();
        let usage = vec![
            ("b".to_owned(), [10.0, 20.0, 0.0]),
            ("gone".to_owned(), [5.0, 5.0, 5.0]),
        ];
        let request = ClaimRequest {
            worker: &worker,
            free: Capacity::free(&worker.resources, &running),
            pending: &pending,
            max: 1,
            now,
            cluster: &[],
            running: &running,
            queues: &queues,
            usage: &usage,
            max_preemptions: 0,
            max_evictions: 0,
        };
        let claim = claim(&request);
        let q = &claim.queues;
        let names: Vec<&str> = q
            .name
            .iter()
            .map(|&i| claim.strings[i as usize].as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"], "\"gone\" has only ended usage");
        assert_eq!(q.weight, [3, 1, 1]);
        assert_eq!(q.quota_cpu, [4, NO_QUOTA, NO_QUOTA]);
        assert_eq!(q.pending, [0, 2, 1]);
        assert_eq!(q.running, [0, 1, 0]);
        assert_eq!(q.cpu, [0, 2, 0]);
        assert_eq!(q.ram_mb, [0, 100, 0]);
        // Held 60 s with a 600 s half-life: 600 / ln 2 × (1 − 2^(−0.1)) per unit.
        let weight = 600.0 / std::f64::consts::LN_2 * (1.0 - 2f64.powf(-0.1));
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            close(q.cpu_seconds[1], 10.0 + 2.0 * weight),
            "{:?}",
            q.cpu_seconds
        );
        assert!(
            close(q.ram_mb_seconds[1], 20.0 + 100.0 * weight),
            "{:?}",
            q.ram_mb_seconds
        );
        assert_eq!(q.cpu_seconds[0], 0.0);
        assert_eq!(q.vram_mb_seconds, [0.0, 0.0, 0.0]);
    }
}
