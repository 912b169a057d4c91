//! The `fair-share` strategy: weighted dominant-resource fairness between queues.
//!
//! Each queue's *share* is its dominant resource — the largest of the CPU, RAM and VRAM its
//! runs hold, each as a fraction of the active cluster's total (resources the cluster has
//! none of are left out) — divided by its weight (`GYOZA_QUEUES`, 1 when not configured).
//! A claim serves the queue of the lowest share first and charges it what it took, so the
//! runs one claim takes alternate between queues as their shares cross; within a queue the
//! order is strict (priority, then age: the order of `claim.pending`), so a queue's run that
//! does not fit the requester holds back the runs behind it in that queue — with
//! `backfill=true` they may pass it — but never another queue's.
//!
//! - **Quotas** (`GYOZA_QUEUES` `cpu`, `ram_mb`, `vram_mb`, `runs`) are hard: a queue whose
//!   next run would take it past one waits, with a reason that names the quota ("queue batch
//!   is at its CPU quota: 16 of 16 cores held; the run needs 4"). What a queue holds is
//!   counted over the whole cluster (the claim's `queues`), plus what this claim assigns.
//! - **Borrowing**: nothing is kept idle for a queue with no work waiting. A queue above its
//!   fair part (its weight over the weights of the queues with runs waiting or held) takes
//!   capacity that no queue below it can use; only its quota bounds it.
//! - **Reclaim** (`reclaim=true`): when the run a queue below its fair part waits with does
//!   not fit the requester, the requester's preemptible runs of queues above their fair part
//!   (borrowed capacity), of a lower priority than the waiting run (the host's rule), are
//!   preempted to make room: those of the queue furthest above its part first, then lowest
//!   priority, then most recently started, as few as make it fit ([`Claim::fewest_to_evict`]),
//!   and only if no lending queue falls below its own fair part by it (only what was
//!   borrowed is taken back). One run per claim reclaims.
//! - **History** (`history=true`): the share is computed from the decayed usage
//!   (`claim.queues` `*-seconds`, half-life `claim.usage-half-life-s`) instead of what is
//!   held now — as a fraction of what the active cluster could have provided over the same
//!   window (its total × half-life / ln 2) — so a queue that ran a lot lately yields to one
//!   that did not (Slurm's fair-share factor). Runs this claim assigns count as held.
//!
//! Configuration keys (one string for every plugin; keys for others are ignored):
//! `backfill`, `reclaim`, `history` (all `false` by default).

mod plan;

// The names the plan uses (`super::...`).
use gyoza_plugin_sdk::{
    Capacity, Claim, Decision, NO_QUOTA, PendingRun, Strategy, WaitCode, config, export_strategy,
    reason,
};

struct FairShare(plan::Config);

impl Strategy for FairShare {
    fn init(config: &str) -> Result<Self, String> {
        plan::Config::parse(config).map(FairShare)
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        Ok(plan::plan(&self.0, claim))
    }
}

export_strategy!(FairShare);

#[cfg(test)]
mod tests;
