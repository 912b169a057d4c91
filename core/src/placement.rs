//! The one check of a scheduling decision: which of the runs a strategy chose really go to the
//! claiming worker, and on which GPU.
//!
//! A strategy (wasm plugin or not) answers with runs it would like the requester to take, best
//! first. Its answer is never trusted: [`place`] drops choices that name no pending run, name
//! one twice, go beyond the claim's `max`, or do not fit the worker's free capacity together
//! with the choices before them, and counts each kind of drop. What remains is a list of
//! [`Placement`]s: a run and the GPU picked for it, which the worker then uses. The server's
//! claim and `gyoza plugins simulate` both call it, so a simulation shows what a claim does.
//!
//! Two more checks belong to a claim and live here for the same reason:
//! - [`tag_fit`]: whether a worker meets a run's required tags (`constraints.tags`), the hard
//!   requirement the host applies before any strategy sees the run;
//! - [`check_evictions`]: which of the preemptions a strategy asked for the host's rules allow.

use std::collections::HashSet;

use crate::resources::Gpu;
use crate::worker::{Capacity, HeldRun, PendingRun};

/// One run placed on the requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index of the run in the pending window the decision was made from.
    pub index: usize,
    /// The GPU the run's VRAM is taken from; `None` for a run without VRAM.
    pub gpu: Option<u32>,
}

/// A checked decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placements {
    /// The runs to assign, in the strategy's order.
    pub placed: Vec<Placement>,
    /// Choices that named no pending run.
    pub unknown: usize,
    /// Choices that named a run already chosen.
    pub duplicate: usize,
    /// Choices beyond `max`, or that did not fit the free capacity left by those before them.
    pub over_capacity: usize,
}

impl Placements {
    /// How many choices were dropped.
    pub fn dropped(&self) -> usize {
        self.unknown + self.duplicate + self.over_capacity
    }
}

/// Checks `chosen` (indices into `pending`, best first) against the requester's `free`
/// capacity and the claim's `max`; see the module docs.
pub fn place(
    free: &Capacity,
    pending: &[PendingRun],
    chosen: impl IntoIterator<Item = usize>,
    max: usize,
) -> Placements {
    let mut out = Placements::default();
    let mut left = free.clone();
    let mut seen = HashSet::new();
    for index in chosen {
        let Some(run) = pending.get(index) else {
            out.unknown += 1;
            continue;
        };
        if !seen.insert(index) {
            out.duplicate += 1;
            continue;
        }
        if out.placed.len() >= max {
            out.over_capacity += 1;
            continue;
        }
        match left.fit_on(&run.constraints, run.only_gpus.as_deref()) {
            Some(gpu) => {
                left.take(&run.constraints, gpu);
                out.placed.push(Placement { index, gpu });
            }
            None => out.over_capacity += 1,
        }
    }
    out
}

/// Whether a worker with `tags` and `gpus` meets `required` (a run's `constraints.tags`, all
/// of them): `Ok(None)` when the worker has them all; for a run that `needs_gpu`, `Ok(Some(ids))`
/// when the tags the worker lacks are all on each of those GPUs (the run must go on one of
/// them); else `Err` with the required tags the worker lacks.
pub fn tag_fit(
    required: &[String],
    tags: &[String],
    gpus: &[Gpu],
    needs_gpu: bool,
) -> Result<Option<Vec<u32>>, Vec<String>> {
    let missing: Vec<&String> = required.iter().filter(|t| !tags.contains(t)).collect();
    if missing.is_empty() {
        return Ok(None);
    }
    if needs_gpu {
        let on: Vec<u32> = gpus
            .iter()
            .filter(|gpu| missing.iter().all(|t| gpu.tags.contains(t)))
            .map(|gpu| gpu.id)
            .collect();
        if !on.is_empty() {
            return Ok(Some(on));
        }
    }
    Err(missing.into_iter().cloned().collect())
}

/// A preemption a strategy asked for, by index: `run` into the claim's held runs, `for_run`
/// into its pending window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionRequest {
    /// The held run to preempt.
    pub run: usize,
    /// The pending run it makes room for.
    pub for_run: usize,
    /// The strategy's reason.
    pub reason: String,
}

/// The host's rules for preemptions (see [`check_evictions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionRules {
    /// The most preemptions one claim carries out.
    pub per_claim: usize,
    /// The most it may carry out now under the per-minute cap.
    pub budget: usize,
    /// A run preempted this often may not be preempted again.
    pub max_preemptions: u32,
    /// Whether a held run may be preempted on another worker than the requester (for a run
    /// that would fit there; the caller checks that part, see `GYOZA_PREEMPT_ACROSS_WORKERS`).
    pub elsewhere: bool,
}

/// Why a requested preemption was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionRefusal {
    /// It names no held run, or no pending run.
    Unknown,
    /// It repeats an earlier request for the same held run.
    Duplicate,
    /// The held run is not on the requester (and preempting elsewhere is off), or, for a
    /// preemption elsewhere: the pending run was assigned to the requester, its preemptions
    /// are on more than one worker, or it would not fit where they free room.
    Elsewhere,
    /// The held run is not preemptible, or was preempted too often.
    NotPreemptible,
    /// The pending run is neither assigned nor deferred by the decision.
    NotDecided,
    /// The pending run's priority is not higher than the held run's.
    NotLowerPriority,
    /// Beyond the per-claim or per-minute cap.
    OverCap,
}

/// A checked list of preemptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evictions {
    /// The requests to carry out (indices into the requests), in order.
    pub accepted: Vec<usize>,
    /// The refused ones, each with why.
    pub refused: Vec<(usize, EvictionRefusal)>,
}

/// Checks the preemptions a strategy asked for (`requests`, in its order) against the host's
/// rules: a held run may be preempted only if it is held by `requester` (or, with
/// `rules.elsewhere`, by any worker: the caller then checks where), preemptible and not
/// preempted `rules.max_preemptions` times already, for a pending run the decision assigned
/// or deferred (`decided`) whose priority is higher than the held run's. Of those, the
/// preemptions made for one pending run are kept all together or not at all, in the order
/// of their first request, while they total at most `rules.per_claim` and `rules.budget`.
/// Everything else is refused and said why.
pub fn check_evictions(
    requester: &str,
    held: &[HeldRun],
    pending: &[PendingRun],
    requests: &[EvictionRequest],
    decided: impl Fn(usize) -> bool,
    rules: EvictionRules,
) -> Evictions {
    let mut out = Evictions::default();
    let mut seen = HashSet::new();
    // The allowed requests, grouped by the pending run they are for, in first-request order.
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let verdict = match (held.get(request.run), pending.get(request.for_run)) {
            (Some(victim), Some(beneficiary)) => {
                if seen.contains(&request.run) {
                    Err(EvictionRefusal::Duplicate)
                } else if victim.worker_id != requester && !rules.elsewhere {
                    Err(EvictionRefusal::Elsewhere)
                } else if !victim.facts.preemptible
                    || victim.facts.preemptions >= rules.max_preemptions
                {
                    Err(EvictionRefusal::NotPreemptible)
                } else if !decided(request.for_run) {
                    Err(EvictionRefusal::NotDecided)
                } else if beneficiary.priority <= victim.priority {
                    Err(EvictionRefusal::NotLowerPriority)
                } else {
                    Ok(())
                }
            }
            _ => Err(EvictionRefusal::Unknown),
        };
        match verdict {
            Ok(()) => {
                seen.insert(request.run);
                match groups
                    .iter_mut()
                    .find(|(for_run, _)| *for_run == request.for_run)
                {
                    Some((_, group)) => group.push(i),
                    None => groups.push((request.for_run, vec![i])),
                }
            }
            Err(why) => out.refused.push((i, why)),
        }
    }
    let cap = rules.per_claim.min(rules.budget);
    for (_, group) in groups {
        if out.accepted.len() + group.len() <= cap {
            out.accepted.extend(group);
        } else {
            out.refused
                .extend(group.into_iter().map(|i| (i, EvictionRefusal::OverCap)));
        }
    }
    out.accepted.sort_unstable();
    out.refused.sort_unstable_by_key(|(i, _)| *i);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Constraints;
    use crate::worker::RunFacts;

    fn run(id: &str, cpu: u32, vram: Option<u64>) -> PendingRun {
        PendingRun {
            id: id.into(),
            priority: 0,
            created_at: chrono::Utc::now(),
            constraints: Constraints {
                cpu: Some(cpu),
                vram_mb: vram,
                ..Default::default()
            },
            facts: RunFacts::default(),
            only_gpus: None,
        }
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn required_tags_are_met_by_the_worker_or_for_a_gpu_run_by_its_gpu() {
        let gpus = [
            Gpu {
                id: 0,
                vram_mb: 8000,
                tags: tags(&["t4"]),
            },
            Gpu {
                id: 1,
                vram_mb: 8000,
                tags: tags(&["a100", "nvlink"]),
            },
        ];
        let worker = tags(&["ssd", "eu"]);
        assert_eq!(tag_fit(&[], &worker, &gpus, false), Ok(None));
        assert_eq!(tag_fit(&tags(&["ssd"]), &worker, &gpus, false), Ok(None));
        assert_eq!(
            tag_fit(&tags(&["ssd", "a100"]), &worker, &gpus, true),
            Ok(Some(vec![1])),
            "a GPU run may meet a tag on its GPU"
        );
        assert_eq!(
            tag_fit(&tags(&["ssd", "a100"]), &worker, &gpus, false),
            Err(tags(&["a100"])),
            "a run without VRAM cannot use a GPU's tags"
        );
        assert_eq!(
            tag_fit(&tags(&["a100", "t4"]), &worker, &gpus, true),
            Err(tags(&["a100", "t4"])),
            "the tags the worker lacks must be on one GPU"
        );
        assert_eq!(
            tag_fit(&tags(&["us"]), &worker, &gpus, true),
            Err(tags(&["us"]))
        );
    }

    #[test]
    fn a_placement_keeps_to_the_gpus_the_tags_allow() {
        let free = Capacity {
            cpu: 4,
            ram_mb: 1024,
            gpus: vec![(0, 4_000), (1, 16_000)],
        };
        let mut gpu_run = run("g", 1, Some(2_000));
        gpu_run.only_gpus = Some(vec![1]);
        let placements = place(&free, &[gpu_run.clone()], [0], 10);
        assert_eq!(placements.placed[0].gpu, Some(1), "not the tighter GPU 0");
        gpu_run.only_gpus = Some(vec![7]);
        assert_eq!(place(&free, &[gpu_run], [0], 10).over_capacity, 1);
    }

    fn held(id: &str, worker: &str, priority: i64, preemptible: bool) -> HeldRun {
        HeldRun {
            id: id.into(),
            worker_id: worker.into(),
            constraints: Constraints::default(),
            gpu_id: None,
            priority,
            facts: RunFacts {
                preemptible,
                ..RunFacts::default()
            },
        }
    }

    #[test]
    fn evictions_keep_to_the_hosts_rules() {
        let mut held = vec![
            held("low", "w", 1, true),
            held("fixed", "w", 1, false),
            held("there", "other", 1, true),
            held("peer", "w", 5, true),
            held("low2", "w", 0, true),
            held("low3", "w", 0, true),
            held("tired", "w", 0, true),
        ];
        held[6].facts.preemptions = 3;
        let mut urgent = run("urgent", 1, None);
        urgent.priority = 5;
        let pending = [urgent, run("idle", 1, None)];
        let ask = |run: usize, for_run: usize| EvictionRequest {
            run,
            for_run,
            reason: String::new(),
        };
        let requests = [
            ask(0, 0),
            ask(0, 0),
            ask(1, 0),
            ask(2, 0),
            ask(3, 0),
            ask(4, 1),
            ask(99, 0),
            ask(4, 99),
            ask(6, 0),
            ask(4, 0),
            ask(5, 0),
        ];
        let rules = EvictionRules {
            per_claim: 2,
            budget: 10,
            max_preemptions: 3,
            elsewhere: false,
        };
        let checked = check_evictions("w", &held, &pending, &requests, |i| i == 0, rules);
        use EvictionRefusal::*;
        // Requests 0, 9 and 10 are allowed, all for "urgent": three victims over a cap of
        // two are refused together, none carried out for nothing.
        assert_eq!(checked.accepted, Vec::<usize>::new());
        assert_eq!(checked.refused.len(), requests.len());
        assert!(checked.refused.contains(&(10, OverCap)));
        let roomy = EvictionRules {
            per_claim: 3,
            ..rules
        };
        let checked = check_evictions("w", &held, &pending, &requests, |i| i == 0, roomy);
        assert_eq!(checked.accepted, [0, 9, 10]);
        assert_eq!(
            checked.refused,
            [
                (1, Duplicate),
                (2, NotPreemptible),
                (3, Elsewhere),
                (4, NotLowerPriority),
                (5, NotDecided),
                (6, Unknown),
                (7, Unknown),
                (8, NotPreemptible),
            ]
        );
        // Two groups: the second does not fit in what the first left.
        let mut second = run("second", 1, None);
        second.priority = 5;
        let two = [pending[0].clone(), second];
        let requests = [ask(0, 0), ask(4, 1), ask(5, 1)];
        let checked = check_evictions("w", &held, &two, &requests, |_| true, rules);
        assert_eq!(checked.accepted, [0]);
        assert_eq!(checked.refused, [(1, OverCap), (2, OverCap)]);
        let starved = EvictionRules { budget: 0, ..rules };
        let checked = check_evictions("w", &held, &pending, &requests[..1], |_| true, starved);
        assert_eq!(
            checked.refused,
            [(0, OverCap)],
            "the per-minute budget is spent"
        );
    }

    #[test]
    fn drops_unknown_duplicate_and_over_capacity_choices_and_names_the_gpu() {
        let free = Capacity {
            cpu: 3,
            ram_mb: 1024,
            gpus: vec![(0, 8_000), (1, 4_000)],
        };
        let pending = [
            run("a", 2, None),
            run("b", 2, None),
            run("g", 1, Some(3_000)),
        ];
        let placements = place(&free, &pending, [0, 7, 0, 1, 2], 10);
        assert_eq!(
            placements.placed,
            [
                Placement {
                    index: 0,
                    gpu: None
                },
                Placement {
                    index: 2,
                    gpu: Some(1)
                },
            ],
            "b does not fit after a; g goes on the tightest GPU that holds it"
        );
        assert_eq!(
            (
                placements.unknown,
                placements.duplicate,
                placements.over_capacity
            ),
            (1, 1, 1)
        );
        assert_eq!(placements.dropped(), 3);
    }

    #[test]
    fn stops_at_max() {
        let free = Capacity {
            cpu: 10,
            ram_mb: 0,
            gpus: vec![],
        };
        let pending = [run("a", 1, None), run("b", 1, None)];
        let placements = place(&free, &pending, [0, 1], 1);
        assert_eq!(placements.placed.len(), 1);
        assert_eq!(placements.over_capacity, 1);
    }
}
