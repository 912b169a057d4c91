//! The reaper task: every server replica checks for dead workers periodically and requeues
//! their runs ([`Service::reap`]; the rules are in the service's `reap` module), then fails
//! the runs that ran or waited past their timeouts ([`Service::enforce_timeouts`]; the
//! service's `timeout` module).

use std::sync::Arc;
use std::time::Duration;

use crate::service::Service;

/// Runs [`Service::reap`] and [`Service::enforce_timeouts`] every quarter of the worker timeout (at least every second) until
/// the returned task is aborted.
pub fn spawn(service: Arc<Service>) -> tokio::task::JoinHandle<()> {
    let period = (service.worker_timeout / 4)
        .to_std()
        .unwrap_or(Duration::from_secs(15))
        .max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = service.reap().await {
                tracing::error!(error = %e, "lost-worker check failed; will try again");
            }
            if let Err(e) = service.enforce_timeouts().await {
                tracing::error!(error = %e, "timeout check failed; will try again");
            }
        }
    })
}
