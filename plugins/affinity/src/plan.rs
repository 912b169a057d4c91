//! The `affinity` algorithm (see the crate docs), in plain Rust over the SDK's types (named by
//! the parent module), so that the host's benchmark compiles this very file natively for
//! comparison.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use super::{Capacity, Claim, Decision, WaitCode, config, reason};

/// How many waiting runs get a reason per claim (the host keeps only a few anyway).
const REASONS: usize = 8;

/// The largest weight the configuration takes (so that scores never overflow).
const MAX_WEIGHT: i64 = 1_000_000;

/// The label a run names the tags it prefers in.
const PREFER_TAGS: &str = "prefer-tags";

/// The strategy's configuration.
pub struct Config {
    image_weight: i64,
    tag_weight: i64,
    spread_weight: i64,
    spread: Option<String>,
    patience_ms: u64,
}

impl Config {
    /// Parses the configuration string (keys meant for other strategies are ignored).
    pub fn parse(config_string: &str) -> Result<Self, String> {
        let mut strategy = Config {
            image_weight: 10,
            tag_weight: 1,
            spread_weight: 100,
            spread: None,
            patience_ms: 30_000,
        };
        let weight = |key: &str, value: &str| match value.parse::<i64>() {
            Ok(n) if (0..=MAX_WEIGHT).contains(&n) => Ok(n),
            _ => Err(format!(
                "config '{key}' must be an integer from 0 to {MAX_WEIGHT}, got '{value}'"
            )),
        };
        for (key, value) in config::parse(config_string)? {
            match key {
                "image_weight" => strategy.image_weight = weight(key, value)?,
                "tag_weight" => strategy.tag_weight = weight(key, value)?,
                "spread_weight" => strategy.spread_weight = weight(key, value)?,
                "spread" if value.is_empty() => {
                    return Err("config 'spread' must name a label key".into());
                }
                "spread" => strategy.spread = Some(value.to_owned()),
                "patience_ms" => {
                    strategy.patience_ms = value.parse().map_err(|_| {
                        format!(
                            "config 'patience_ms' must be a number of milliseconds, got '{value}'"
                        )
                    })?;
                }
                _ => {}
            }
        }
        Ok(strategy)
    }
}

/// What one worker holds, as far as scores go.
#[derive(Default)]
struct Holdings<'a> {
    /// Images of the runs it holds (indices into `claim.strings`; 0, "", left out).
    images: Vec<u32>,
    /// Definitions of the runs it holds (0, none, left out).
    definitions: Vec<u32>,
    /// How many runs it holds per value of the spread label (a handful: a list).
    spread: Vec<(&'a str, i64)>,
    /// Its tags and its GPUs' tags.
    tags: Vec<&'a str>,
}

/// What one pending run is scored on.
struct Wants<'a> {
    image: u32,
    definition: u32,
    spread: Option<&'a str>,
    prefer: Vec<&'a str>,
}

/// Other workers' scores for a group of runs, highest first: (score, worker index).
type Ranking = Vec<(i64, usize)>;

/// What makes runs score alike: image, definition, spread value, preferred tags.
type GroupKey<'a, 'b> = (u32, u32, Option<&'a str>, &'b [&'a str]);

/// Decides `claim`.
pub fn plan(config: &Config, claim: &Claim) -> Decision {
    Plan::new(config, claim).run()
}

/// A claim being decided.
struct Plan<'a> {
    strategy: &'a Config,
    claim: &'a Claim,
    workers: Vec<Holdings<'a>>,
    /// Each worker's free capacity.
    free: Vec<Capacity>,
    /// Images and definitions some worker holds a run of: a run of none of them scores
    /// the same for locality everywhere.
    held_anywhere: HashSet<u32>,
    wants: Vec<Wants<'a>>,
    /// For each pending run, which group of runs that want the same (image, definition,
    /// spread value, preferred tags) it is in: such runs score the same on every worker.
    group: Vec<usize>,
    /// Per group, the other workers' scores, highest first, once computed (the requester's
    /// takes change only its own scores).
    others: RefCell<Vec<Option<Ranking>>>,
}

impl Holdings<'_> {
    /// How many runs it holds whose spread label has `value`.
    fn spread_count(&self, value: &str) -> i64 {
        self.spread
            .iter()
            .find(|(v, _)| *v == value)
            .map_or(0, |&(_, n)| n)
    }

    fn add_spread<'s>(spread: &mut Vec<(&'s str, i64)>, value: &'s str) {
        match spread.iter_mut().find(|(v, _)| *v == value) {
            Some((_, n)) => *n += 1,
            None => spread.push((value, 1)),
        }
    }
}

impl<'a> Plan<'a> {
    fn new(strategy: &'a Config, claim: &'a Claim) -> Self {
        let spread_key = strategy.spread.as_deref();
        let mut workers: Vec<Holdings<'a>> = (0..claim.workers.len())
            .map(|w| {
                let worker = claim.workers.worker(w);
                let mut tags: Vec<&str> = claim.worker_tags(w).collect();
                for gpu in claim.gpu_range(&worker) {
                    tags.extend(claim.gpu_tags(gpu));
                }
                Holdings {
                    tags,
                    ..Holdings::default()
                }
            })
            .collect();
        for (i, run) in claim.running.iter().enumerate() {
            let Some(holdings) = workers.get_mut(run.worker as usize) else {
                continue;
            };
            if run.image != 0 {
                holdings.images.push(run.image);
            }
            if run.definition != 0 {
                holdings.definitions.push(run.definition);
            }
            if let Some(value) = spread_key.and_then(|key| claim.running_label(i, key)) {
                Holdings::add_spread(&mut holdings.spread, value);
            }
        }
        let held_anywhere = claim
            .running
            .image
            .iter()
            .chain(&claim.running.definition)
            .copied()
            .filter(|&s| s != 0)
            .collect();
        let free = (0..claim.workers.len())
            .map(|w| claim.capacity(w))
            .collect();
        let wants: Vec<Wants<'a>> = (0..claim.pending.len())
            .map(|i| Wants {
                image: claim.pending.image[i],
                definition: claim.pending.definition[i],
                spread: spread_key.and_then(|key| claim.run_label(i, key)),
                prefer: claim
                    .run_label(i, PREFER_TAGS)
                    .map(|tags| {
                        tags.split(',')
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        let mut groups: HashMap<GroupKey, usize> = HashMap::new();
        let group: Vec<usize> = wants
            .iter()
            .map(|w: &Wants<'a>| {
                let next = groups.len();
                *groups
                    .entry((w.image, w.definition, w.spread, &w.prefer[..]))
                    .or_insert(next)
            })
            .collect();
        let others = RefCell::new(vec![None; groups.len()]);
        Plan {
            strategy,
            claim,
            workers,
            free,
            held_anywhere,
            wants,
            group,
            others,
        }
    }

    /// Worker `w`'s score for pending run `i`.
    fn score(&self, w: usize, i: usize) -> i64 {
        let (holdings, wants) = (&self.workers[w], &self.wants[i]);
        let s = self.strategy;
        let mut score = 0;
        let local = (wants.image != 0 && holdings.images.contains(&wants.image))
            || (wants.definition != 0 && holdings.definitions.contains(&wants.definition));
        if local {
            score += s.image_weight;
        }
        if let Some(value) = wants.spread {
            score -= s.spread_weight * holdings.spread_count(value);
        }
        let matched = wants
            .prefer
            .iter()
            .filter(|tag| holdings.tags.contains(tag))
            .count() as i64;
        score + s.tag_weight * matched
    }

    /// How many other active workers with room for pending run `i` score strictly higher
    /// than the requester's `mine` (with `all` false: 0 or 1, whether there is one); 0 once
    /// the run has waited out its patience.
    fn better_elsewhere(&self, i: usize, mine: i64, all: bool) -> usize {
        let claim = self.claim;
        let run = claim.pending.run(i);
        if run.waited_ms >= self.strategy.patience_ms {
            return 0;
        }
        let wants = &self.wants[i];
        // The most another worker can score: locality if anyone holds its image, every
        // preferred tag, nothing taken off for spread.
        let s = self.strategy;
        let local = [wants.image, wants.definition]
            .iter()
            .any(|image| self.held_anywhere.contains(image));
        let best =
            if local { s.image_weight } else { 0 } + s.tag_weight * wants.prefer.len() as i64;
        if best <= mine {
            return 0;
        }
        let requester = claim.requester as usize;
        let mut others = self.others.borrow_mut();
        let scores = others[self.group[i]].get_or_insert_with(|| {
            let mut scores: Vec<(i64, usize)> = (0..claim.workers.len())
                .filter(|&w| w != requester)
                .map(|w| (self.score(w, i), w))
                .collect();
            scores.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            scores
        });
        let mut better = 0;
        for &(score, w) in scores.iter() {
            if score <= mine {
                break;
            }
            if self.free[w].fit(&run).is_some() {
                better += 1;
                if !all {
                    break;
                }
            }
        }
        better
    }

    /// Why pending run `i` waits for one of the `better` workers found by
    /// [`Plan::better_elsewhere`].
    fn placement_reason(&self, i: usize, better: usize) -> String {
        let claim = self.claim;
        let wants = &self.wants[i];
        let holdings = &self.workers[claim.requester as usize];
        let (workers, has, hold) = if better == 1 {
            ("worker", "has", "holds")
        } else {
            ("workers", "have", "hold")
        };
        let held = wants.spread.map_or(0, |v| holdings.spread_count(v));
        if held > 0 {
            let key = self.strategy.spread.as_deref().unwrap_or_default();
            let value = wants.spread.unwrap_or_default();
            let runs = if held == 1 { "run" } else { "runs" };
            format!(
                "spreads {key}={value}: this worker holds {held} such {runs}; {better} {workers} with room {hold} fewer"
            )
        } else if wants.image != 0 && !holdings.images.contains(&wants.image) {
            format!(
                "prefers a worker with image {} cached; {better} such {workers} {has} room",
                claim.string(wants.image)
            )
        } else {
            format!(
                "prefers tags {}; {better} {workers} with room {has} more of them",
                wants.prefer.join(",")
            )
        }
    }

    fn run(mut self) -> Decision {
        let claim = self.claim;
        let requester = claim.requester as usize;
        let mut free = claim.requester_capacity();
        let mut decision = Decision::default();
        let mut open: Vec<usize> = (0..claim.pending.len()).collect();
        while decision.assign.len() < claim.max as usize && !open.is_empty() {
            // Scores change only when the requester takes a run: rank once per take.
            let mut ranked: Vec<(i64, usize)> = open
                .iter()
                .map(|&i| (self.score(requester, i), i))
                .collect();
            ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut taken = None;
            let mut left = Vec::with_capacity(open.len());
            for (k, &(score, i)) in ranked.iter().enumerate() {
                let run = claim.pending.run(i);
                let Some(gpu) = free.fit(&run) else {
                    if decision.deferred.len() < REASONS {
                        let why = reason::does_not_fit(&run, &free)
                            .unwrap_or_else(|| "does not fit".to_owned());
                        decision.wait(i, WaitCode::Capacity, why);
                    }
                    continue;
                };
                let explain = decision.deferred.len() < REASONS;
                let better = self.better_elsewhere(i, score, explain);
                if better > 0 {
                    if explain {
                        let why = self.placement_reason(i, better);
                        decision.wait(i, WaitCode::Placement, why);
                    }
                    continue;
                }
                free.take(&run, gpu);
                taken = Some(i);
                left.extend(ranked[k + 1..].iter().map(|&(_, i)| i));
                break;
            }
            let Some(i) = taken else { break };
            decision.assign.push(i as u32);
            self.hold(requester, i);
            // Runs passed over stay passed over: they did not fit what is now even less
            // free, or another worker wants them (a take here changes no other worker).
            left.sort_unstable();
            open = left;
        }
        decision
    }

    /// Worker `w` now holds pending run `i`.
    fn hold(&mut self, w: usize, i: usize) {
        let wants = &self.wants[i];
        let holdings = &mut self.workers[w];
        if wants.image != 0 {
            holdings.images.push(wants.image);
        }
        if wants.definition != 0 {
            holdings.definitions.push(wants.definition);
        }
        if let Some(value) = wants.spread {
            Holdings::add_spread(&mut holdings.spread, value);
        }
    }
}
