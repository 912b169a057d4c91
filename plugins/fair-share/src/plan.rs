//! The `fair-share` algorithm (see the crate docs), in plain Rust over the SDK's types (named by
//! the parent module), so that the host's benchmark compiles this very file natively for
//! comparison.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::{Capacity, Claim, Decision, NO_QUOTA, PendingRun, WaitCode, config, reason};

/// How many waiting runs get a reason per claim (the host keeps only a few anyway).
const REASONS: usize = 8;

/// The three resources a share is computed over: CPU cores, RAM MB, VRAM MB.
const RESOURCES: usize = 3;

/// The strategy's configuration.
pub struct Config {
    backfill: bool,
    reclaim: bool,
    history: bool,
}

impl Config {
    /// Parses the configuration string (keys meant for other strategies are ignored).
    pub fn parse(config_string: &str) -> Result<Self, String> {
        let mut strategy = Config {
            backfill: false,
            reclaim: false,
            history: false,
        };
        for (key, value) in config::parse(config_string)? {
            match key {
                "backfill" => strategy.backfill = config::parse_bool(key, value)?,
                "reclaim" => strategy.reclaim = config::parse_bool(key, value)?,
                "history" => strategy.history = config::parse_bool(key, value)?,
                _ => {}
            }
        }
        Ok(strategy)
    }
}

/// One queue during a claim.
struct Lane {
    /// Its index in `claim.queues`.
    queue: usize,
    /// Its weight (at least 1).
    weight: f64,
    /// With `history=true`, its decayed usage per resource as a fraction of what the
    /// cluster could have provided over the window; 0 otherwise.
    past: [f64; RESOURCES],
    /// What its runs hold (with this claim's assignments), for the quotas and the share.
    held: [u64; RESOURCES],
    /// What this claim assigned it.
    assigned: [u64; RESOURCES],
    /// How many runs it holds (with this claim's assignments).
    runs: u64,
    /// Its runs in `claim.pending`, best first.
    pending: Vec<usize>,
    /// The next of `pending` to consider.
    next: usize,
    /// Whether it takes nothing more in this claim.
    done: bool,
}

impl Lane {
    /// Its next run, if it may still take one.
    fn head(&self) -> Option<usize> {
        if self.done {
            None
        } else {
            self.pending.get(self.next).copied()
        }
    }
}

/// Decides `claim`.
pub fn plan(config: &Config, claim: &Claim) -> Decision {
    Plan::new(config, claim).run()
}

/// A claim being decided.
struct Plan<'a> {
    strategy: &'a Config,
    claim: &'a Claim,
    /// The active cluster's total CPU cores, RAM MB and VRAM MB.
    total: [f64; RESOURCES],
    lanes: Vec<Lane>,
    /// The lane of each queue, by its name's index in `claim.strings`.
    by_name: HashMap<u32, usize>,
    /// Each lane's weight over the weights of the lanes with runs waiting or held: the share
    /// a queue below which is owed capacity, above which borrows it (as `Lane::share`
    /// counts, that is 1 / the sum of those weights for every lane).
    fair: f64,
    free: Capacity,
    decision: Decision,
    reclaimed: bool,
}

impl<'a> Plan<'a> {
    fn new(strategy: &'a Config, claim: &'a Claim) -> Self {
        let mut total = [0.0; RESOURCES];
        for worker in claim.workers.iter() {
            total[0] += f64::from(worker.cpu_cores);
            total[1] += worker.ram_mb as f64;
        }
        total[2] = claim.gpus.vram_mb.iter().map(|&v| v as f64).sum();
        // Decayed usage over the window is compared with what the cluster could have given
        // over it: ∫ 2^(-age / h) over all past time is h / ln 2.
        let window = f64::from(claim.usage_half_life_s.max(1)) / std::f64::consts::LN_2;
        let mut by_name: HashMap<u32, usize> = HashMap::new();
        let mut lanes: Vec<Lane> = claim
            .queues
            .iter()
            .enumerate()
            .map(|(i, queue)| {
                by_name.insert(queue.name, i);
                let held = [queue.cpu, queue.ram_mb, queue.vram_mb];
                let decayed = [
                    queue.cpu_seconds,
                    queue.ram_mb_seconds,
                    queue.vram_mb_seconds,
                ];
                let mut past = [0.0; RESOURCES];
                if strategy.history {
                    for r in 0..RESOURCES {
                        if total[r] > 0.0 {
                            past[r] = decayed[r] / (total[r] * window);
                        }
                    }
                }
                Lane {
                    queue: i,
                    weight: f64::from(queue.weight.max(1)),
                    past,
                    held,
                    assigned: [0; RESOURCES],
                    runs: u64::from(queue.running),
                    pending: Vec::new(),
                    next: 0,
                    done: false,
                }
            })
            .collect();
        for (i, name) in claim.pending.queue.iter().enumerate() {
            // Every queue of a pending run is in the claim; a run of one that is not (a
            // host that breaks that promise) is left pending.
            if let Some(&lane) = by_name.get(name) {
                lanes[lane].pending.push(i);
            }
        }
        let weights: f64 = lanes
            .iter()
            .filter(|lane| !lane.pending.is_empty() || lane.runs > 0)
            .map(|lane| lane.weight)
            .sum();
        Plan {
            strategy,
            claim,
            total,
            lanes,
            by_name,
            fair: if weights > 0.0 { 1.0 / weights } else { 0.0 },
            free: claim.requester_capacity(),
            decision: Decision::default(),
            reclaimed: false,
        }
    }

    /// Lane `l`'s dominant share divided by its weight: from what it holds, or with
    /// `history=true` from its past usage and what this claim assigned it.
    fn share(&self, l: usize) -> f64 {
        let lane = &self.lanes[l];
        let counted = if self.strategy.history {
            lane.assigned
        } else {
            lane.held
        };
        self.share_counting(l, counted)
    }

    /// Lane `l`'s share if it were charged `counted` (held, or assigned by this claim).
    fn share_counting(&self, l: usize, counted: [u64; RESOURCES]) -> f64 {
        let lane = &self.lanes[l];
        let mut dominant: f64 = 0.0;
        for ((&total, &past), &counted) in self.total.iter().zip(&lane.past).zip(&counted) {
            if total > 0.0 {
                dominant = dominant.max(past + counted as f64 / total);
            }
        }
        dominant / lane.weight
    }

    fn run(mut self) -> Decision {
        while self.decision.assign.len() < self.claim.max as usize {
            // The lane of the lowest share with a run to consider; equal shares go by the
            // order of their next runs (priority, then age).
            let next = (0..self.lanes.len())
                .filter_map(|l| self.lanes[l].head().map(|run| (l, run, self.share(l))))
                .min_by(|a, b| by_share(a.2, b.2).then(a.1.cmp(&b.1)));
            let Some((l, index, _)) = next else { break };
            let run = self.claim.pending.run(index);
            if let Some(why) = self.over_quota(l, &run) {
                self.wait(index, WaitCode::Quota, why);
                self.pass(l);
            } else if let Some(gpu) = self.free.fit(&run) {
                self.free.take(&run, gpu);
                self.assign(l, index, &run);
            } else if self.reclaim_for(l, index, &run) {
                self.assign(l, index, &run);
            } else {
                let why = reason::does_not_fit(&run, &self.free)
                    .unwrap_or_else(|| "does not fit".to_owned());
                self.wait(index, WaitCode::Capacity, why);
                self.pass(l);
            }
        }
        self.decision
    }

    /// After lane `l`'s next run could not be taken: the lane stops (strict), or with
    /// backfill goes on with the run after it.
    fn pass(&mut self, l: usize) {
        let lane = &mut self.lanes[l];
        if self.strategy.backfill {
            lane.next += 1;
        } else {
            lane.done = true;
        }
    }

    fn assign(&mut self, l: usize, index: usize, run: &PendingRun) {
        self.decision.assign.push(index as u32);
        let need = [u64::from(run.cpu), run.ram_mb, run.vram_mb];
        let lane = &mut self.lanes[l];
        for (r, amount) in need.into_iter().enumerate() {
            lane.held[r] = lane.held[r].saturating_add(amount);
            lane.assigned[r] = lane.assigned[r].saturating_add(amount);
        }
        lane.runs += 1;
        lane.next += 1;
    }

    fn wait(&mut self, index: usize, code: WaitCode, why: String) {
        if self.decision.deferred.len() < REASONS {
            self.decision.wait(index, code, why);
        }
    }

    /// Why taking `run` would take lane `l` past a quota of its queue, if it would.
    fn over_quota(&self, l: usize, run: &PendingRun) -> Option<String> {
        let lane = &self.lanes[l];
        let queue = self.claim.queues.queue(lane.queue);
        let name = self.claim.queue_name(lane.queue);
        let checks = [
            (
                "CPU",
                queue.quota_cpu,
                lane.held[0],
                u64::from(run.cpu),
                "cores",
            ),
            ("RAM", queue.quota_ram_mb, lane.held[1], run.ram_mb, "MB"),
            ("VRAM", queue.quota_vram_mb, lane.held[2], run.vram_mb, "MB"),
        ];
        for (what, quota, held, need, unit) in checks {
            if quota != NO_QUOTA && held.saturating_add(need) > quota {
                return Some(format!(
                    "queue {name} is at its {what} quota: {held} of {quota} {unit} held; the run needs {need}"
                ));
            }
        }
        (queue.quota_runs != NO_QUOTA && lane.runs >= queue.quota_runs).then(|| {
            format!(
                "queue {name} is at its quota of {} runs held at once",
                queue.quota_runs
            )
        })
    }

    /// With `reclaim=true`, once per claim: makes room on the requester for `run` (pending
    /// run `index`, lane `l`'s next) by evicting runs of queues above their fair part, if
    /// lane `l` is below its own and that is possible. Whether it did.
    fn reclaim_for(&mut self, l: usize, index: usize, run: &PendingRun) -> bool {
        if !self.strategy.reclaim
            || self.reclaimed
            || by_share(self.share(l), self.fair) != Ordering::Less
        {
            return false;
        }
        self.reclaimed = true;
        let claim = self.claim;
        let lane_of = |running: usize| self.by_name.get(&claim.running.queue[running]).copied();
        let mut candidates: Vec<(usize, f64)> = claim
            .running_on(claim.requester as usize)
            .filter(|&i| claim.running.preemptible[i] && claim.running.priority[i] < run.priority)
            .filter_map(|i| {
                let lender = lane_of(i)?;
                let share = self.share(lender);
                (lender != l && by_share(share, self.fair) == Ordering::Greater)
                    .then_some((i, share))
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.1.total_cmp(&a.1).then_with(|| {
                let (ra, rb) = (claim.running.run(a.0), claim.running.run(b.0));
                (ra.priority, ra.ran_ms, a.0).cmp(&(rb.priority, rb.ran_ms, b.0))
            })
        });
        let candidates: Vec<usize> = candidates.into_iter().map(|(i, _)| i).collect();
        let Some(victims) = claim.fewest_to_evict(&self.free, run, &candidates) else {
            return false;
        };
        // Only what was borrowed is taken back: no lender may fall below its fair part.
        // Per lending lane: what its victims hold, and how many they are.
        let mut given_back: HashMap<usize, ([u64; RESOURCES], u64)> = HashMap::new();
        for &victim in &victims {
            let held = claim.running.run(victim);
            if let Some(lender) = lane_of(victim) {
                let (back, runs) = given_back.entry(lender).or_default();
                *runs += 1;
                for (r, amount) in [u64::from(held.cpu), held.ram_mb, held.vram_mb]
                    .into_iter()
                    .enumerate()
                {
                    back[r] = back[r].saturating_add(amount);
                }
            }
        }
        let stays_above = |(&lender, (back, _)): (&usize, &([u64; RESOURCES], u64))| {
            if self.strategy.history {
                // Past usage is not given back by a preemption.
                return true;
            }
            let mut left = self.lanes[lender].held;
            for r in 0..RESOURCES {
                left[r] = left[r].saturating_sub(back[r]);
            }
            by_share(self.share_counting(lender, left), self.fair) != Ordering::Less
        };
        if !given_back.iter().all(stays_above) {
            return false;
        }
        let mut room = self.free.clone();
        for &victim in &victims {
            claim.free_up(&mut room, victim);
        }
        let Some(gpu) = room.fit(run) else {
            return false;
        };
        let name = claim.queue_name(self.lanes[l].queue);
        for victim in victims {
            let lender = claim.string(claim.running.queue[victim]);
            let why = format!(
                "preempted: queue {lender} borrowed beyond its fair share and queue {name} is below its own"
            );
            self.decision.evict(victim, index, why);
        }
        for (lender, (back, runs)) in given_back {
            let lane = &mut self.lanes[lender];
            for (held, back) in lane.held.iter_mut().zip(back) {
                *held = held.saturating_sub(back);
            }
            lane.runs = lane.runs.saturating_sub(runs);
        }
        room.take(run, gpu);
        self.free = room;
        true
    }
}

/// Orders two shares, those within a relative 1e-9 of each other being equal: shares are
/// sums of fractions, and a rounding error must not decide which queue goes first.
fn by_share(a: f64, b: f64) -> Ordering {
    if (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) {
        Ordering::Equal
    } else {
        a.total_cmp(&b)
    }
}
