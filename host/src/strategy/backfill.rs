//! [`PriorityBackfill`]: a strategy host running only what is embedded, with the priority
//! strategy and backfill, for tests and embedders that want a scheduler without settings.

use super::error::StrategyError;
use super::host::StrategyHost;
use super::settings::StrategySettings;

/// The embedded `priority` strategy with backfill: highest priority first, each run that fits
/// the requester's free capacity, skipping those that do not. There is no process-wide
/// instance: [`PriorityBackfill::start`] gives each caller its own host.
#[derive(Debug, Default, Clone, Copy)]
pub struct PriorityBackfill;

impl PriorityBackfill {
    /// A strategy host with [`StrategySettings::priority_backfill`]: the built-ins, no plugins
    /// directory, `priority` active with `backfill=true`.
    pub fn start() -> Result<StrategyHost, StrategyError> {
        StrategyHost::start(StrategySettings::priority_backfill())
    }
}
