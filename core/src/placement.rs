//! The one check of a scheduling decision: which of the runs a strategy chose really go to the
//! claiming worker, and on which GPU.
//!
//! A strategy (wasm plugin or not) answers with runs it would like the requester to take, best
//! first. Its answer is never trusted: [`place`] drops choices that name no pending run, name
//! one twice, go beyond the claim's `max`, or do not fit the worker's free capacity together
//! with the choices before them, and counts each kind of drop. What remains is a list of
//! [`Placement`]s: a run and the GPU picked for it, which the worker then uses. The server's
//! claim and `gyoza plugins simulate` both call it, so a simulation shows what a claim does.

use std::collections::HashSet;

use crate::worker::{Capacity, PendingRun};

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
        match left.fit(&run.constraints) {
            Some(gpu) => {
                left.take(&run.constraints, gpu);
                out.placed.push(Placement { index, gpu });
            }
            None => out.over_capacity += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Constraints;

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
        }
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
