//! The `affinity` strategy: each fitting run is scored for the requester, highest first, and
//! a run that would score higher on another worker with room for it waits for that worker.
//!
//! A worker's score for a run adds:
//! - **image locality** (`image_weight`, default 10): the worker holds a run of the same
//!   image, or of the same definition — its image is on that worker's engine, so the
//!   container starts without a pull (as the Kubernetes ImageLocality score and Nomad do);
//! - **spread** (`spread=<label key>`, `spread_weight`, default 100): minus the weight for
//!   each run the worker holds whose label `<key>` has the run's value, so that runs sharing
//!   a value go to different workers while others have room (anti-affinity); its default
//!   outweighs locality and tags, since runs spread by a label (shards of one job) often
//!   share an image;
//! - **preferred tags** (`tag_weight`, default 1): the weight for each tag of the run's
//!   `prefer-tags` label (comma-separated) that the worker or one of its GPUs has.
//!
//! Runs the requester takes are chosen by score, then by the claim's order (priority, then
//! age) among equal scores; what it takes counts at once (a second run of a spread value
//! scores lower, a run of an image it just took scores higher). A run that fits another
//! active worker's free capacity where it scores strictly higher waits for that worker, with a
//! reason (code `placement`) — unless it has waited `patience_ms` (default 30000) already: then
//! the first worker it fits takes it, so that a preference never starves a run.
//!
//! What the claim shows is what workers hold now (`gyoza:scheduler@1.0.0` names workers by
//! index only): an image a worker ran earlier and holds no run of is not known here.
//!
//! Configuration keys (one string for every plugin; keys for others are ignored):
//! `image_weight`, `spread`, `spread_weight`, `tag_weight` (integers 0..=1000000),
//! `patience_ms`.

mod plan;

// The names the plan uses (`super::...`).
use gyoza_plugin_sdk::{
    Capacity, Claim, Decision, Strategy, WaitCode, config, export_strategy, reason,
};

struct Affinity(plan::Config);

impl Strategy for Affinity {
    fn init(config: &str) -> Result<Self, String> {
        plan::Config::parse(config).map(Affinity)
    }

    fn schedule(&mut self, claim: &Claim) -> Result<Decision, String> {
        Ok(plan::plan(&self.0, claim))
    }
}

export_strategy!(Affinity);

#[cfg(test)]
mod tests;
