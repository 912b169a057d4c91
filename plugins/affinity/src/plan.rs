//! The `affinity` algorithm (see the crate docs), in plain Rust over the SDK's types (named by
//! the parent module), so that the host's benchmark compiles this very file natively for
//! comparison.

use std::collections::HashMap;

use super::{Claim, Decision, WaitCode, config, reason};

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
    /// How many runs it holds per value of the spread label.
    spread: HashMap<&'a str, i64>,
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

/// Decides `claim`.
pub fn plan(config: &Config, claim: &Claim) -> Decision {
    Plan::new(config, claim).run()
}

/// A claim being decided.
struct Plan<'a> {
    strategy: &'a Config,
    claim: &'a Claim,
    workers: Vec<Holdings<'a>>,
    wants: Vec<Wants<'a>>,
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
                *holdings.spread.entry(value).or_default() += 1;
            }
        }
        let wants = (0..claim.pending.len())
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
        Plan {
            strategy,
            claim,
            workers,
            wants,
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
            score -= s.spread_weight * holdings.spread.get(value).copied().unwrap_or(0);
        }
        let matched = wants
            .prefer
            .iter()
            .filter(|tag| holdings.tags.contains(tag))
            .count() as i64;
        score + s.tag_weight * matched
    }

    /// Why pending run `i` should wait for another worker, if it should: one with room for
    /// it scores strictly higher than the requester's `mine`.
    fn better_elsewhere(&self, i: usize, mine: i64) -> Option<String> {
        let claim = self.claim;
        let run = claim.pending.run(i);
        if run.waited_ms >= self.strategy.patience_ms {
            return None;
        }
        let requester = claim.requester as usize;
        let better = (0..claim.workers.len())
            .filter(|&w| w != requester && self.score(w, i) > mine)
            .filter(|&w| claim.capacity(w).fit(&run).is_some())
            .count();
        if better == 0 {
            return None;
        }
        let wants = &self.wants[i];
        let holdings = &self.workers[requester];
        let (workers, has, hold) = if better == 1 {
            ("worker", "has", "holds")
        } else {
            ("workers", "have", "hold")
        };
        let why = if let Some(held) = wants.spread.and_then(|v| holdings.spread.get(v)) {
            let key = self.strategy.spread.as_deref().unwrap_or_default();
            let value = wants.spread.unwrap_or_default();
            let runs = if *held == 1 { "run" } else { "runs" };
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
        };
        Some(why)
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
                if let Some(why) = self.better_elsewhere(i, score) {
                    if decision.deferred.len() < REASONS {
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
            *holdings.spread.entry(value).or_default() += 1;
        }
    }
}
