//! The server's domain service, apart from HTTP.
//!
//! One [`Service`] per server process owns what requests and background tasks share: the
//! store, the scheduler, the clock, event delivery, this process's change notifications, the
//! claims in flight and the worker timeout. Its methods are the domain's acts:
//! [`Service::update_run`] (a run change, delivered to its topic and announced to watchers),
//! [`Service::claim`], [`Service::reap`], [`Service::reconcile`] and
//! [`Service::enforce_timeouts`]. It knows nothing of HTTP: its errors are the
//! store's ([`StoreError`], domain rules included), which the API maps to statuses.
//!
//! # Layout
//! - this file: [`Service`], run updates and change notifications.
//! - `claim`: the claim protocol (decision → [`gyoza_core::placement::place`] → atomic
//!   PENDING → ASSIGNED) and the reservations of claims in flight.
//! - `reap`: runs of workers that stopped heartbeating are requeued.
//! - `reconcile`: each heartbeat against the runs its worker holds (unreported runs requeued,
//!   runs it must stop answered).
//! - `timeout`: RUNNING attempts past their run timeout plus a grace are failed, PENDING runs
//!   past their queue timeout too.
//! - `queues`: each queue's fair-share state for `GET /queues`.

mod claim;
mod events;
mod queues;
mod reap;
mod reconcile;
mod timeout;
mod wait;

use std::sync::Arc;

use gyoza_core::OpRun;
use tokio::sync::broadcast;

pub(crate) use claim::meeting_tags;
pub use claim::{ClaimPreview, DEFAULT_RESERVATION_S, PENDING_WINDOW, PreemptionLimits};
use claim::{FullClaims, InFlight, PendingGeneration, PreemptionClock, Reservations};
use wait::Waiters;
pub use wait::{DEFAULT_CLAIM_RECHECK, MAX_WAITING};

use crate::clock::Clock;
use crate::delivery::{Deliverer, DeliveryConfig};
use crate::metrics::Metrics;
use crate::queues::QueueSettings;
use crate::scheduler::Scheduler;
use crate::store::{RunMutation, Store, StoreError};

/// The default of [`Service::timeout_grace`], in seconds (`GYOZA_TIMEOUT_GRACE`).
pub const DEFAULT_TIMEOUT_GRACE_S: i64 = 60;

/// The domain service of one server process.
pub struct Service {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Claim policy.
    pub scheduler: Arc<dyn Scheduler>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// A worker silent for longer is inactive, and its runs are requeued.
    pub worker_timeout: chrono::Duration,
    /// A held run its live worker no longer reports is requeued once it was assigned longer
    /// ago than this (see `reconcile`).
    pub reconcile_grace: chrono::Duration,
    /// A RUNNING attempt is failed by the server once it ran longer than its
    /// `constraints.timeout_s` plus this (see `timeout`): time for its worker to stop the
    /// container and report first.
    pub timeout_grace: chrono::Duration,
    /// When this process started (the service was made): the reaper counts a worker's
    /// silence from here at the earliest, so a server that was down does not take the
    /// workers that kept trying to heartbeat it for dead (see `reap`).
    pub started_at: gyoza_core::time::Timestamp,
    /// Queue weights and quotas handed to strategies (`GYOZA_QUEUES`).
    pub queues: QueueSettings,
    /// The host's limits on preemption (see `claim`).
    pub preemption: PreemptionLimits,
    /// The preemptions of the last minute, for [`PreemptionLimits::per_minute`].
    preemption_clock: PreemptionClock,
    /// Sends run events to their topic URLs.
    deliverer: Arc<Deliverer>,
    /// Ids of runs that changed in this process (wakes event streams and log followers).
    changes: broadcast::Sender<String>,
    /// Runs that claims in this process are assigning right now (see `claim`).
    claims_in_flight: InFlight,
    /// Runs kept for the worker where a claim preempted runs to make room for them (see
    /// `claim`).
    reservations: Reservations,
    /// A waiting claim claims again at least this often (`GYOZA_CLAIM_RECHECK_MS`; see
    /// `wait`): the bound on seeing another replica's runs.
    pub claim_recheck: std::time::Duration,
    /// Claims waiting for something to claim (see `wait`).
    waiters: Waiters,
    /// When each worker's claim last read the window (see `claim`).
    full_claims: FullClaims,
    /// Runs made PENDING in this process (see `claim`).
    pending_generation: PendingGeneration,
    /// This process's metrics.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("scheduler", &self.scheduler.name())
            .field("worker_timeout", &self.worker_timeout)
            .field("reconcile_grace", &self.reconcile_grace)
            .field("timeout_grace", &self.timeout_grace)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service with a 60 s worker timeout, a 30 s reconcile grace, a 60 s timeout grace and default event delivery (counted in
    /// `metrics`); starts the delivery loop, so it must be called within a tokio runtime.
    pub fn new(
        store: Arc<dyn Store>,
        scheduler: Arc<dyn Scheduler>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_delivery(store, scheduler, clock, metrics, DeliveryConfig::default())
    }

    /// [`Service::new`] with the event delivery configured by `delivery`.
    pub fn with_delivery(
        store: Arc<dyn Store>,
        scheduler: Arc<dyn Scheduler>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        delivery: DeliveryConfig,
    ) -> Self {
        Self {
            deliverer: Deliverer::start(delivery, metrics.clone(), store.clone()),
            waiters: Waiters::new(metrics.clone()),
            full_claims: FullClaims::default(),
            pending_generation: PendingGeneration::default(),
            claim_recheck: DEFAULT_CLAIM_RECHECK,
            metrics,
            store,
            scheduler,
            started_at: clock.now(),
            clock,
            worker_timeout: chrono::Duration::seconds(60),
            reconcile_grace: chrono::Duration::seconds(30),
            timeout_grace: chrono::Duration::seconds(DEFAULT_TIMEOUT_GRACE_S),
            changes: broadcast::channel(1024).0,
            claims_in_flight: InFlight::default(),
            reservations: Reservations::default(),
            queues: QueueSettings::default(),
            preemption: PreemptionLimits::default(),
            preemption_clock: PreemptionClock::default(),
        }
    }

    /// Applies a domain change to a run atomically, then wakes this process's delivery of
    /// its events (the store marked them, see [`crate::delivery`]) and its watchers of the
    /// run. `Ok(None)`: no such run.
    pub async fn update_run(
        &self,
        id: &str,
        mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        let Some(run) = self.store.update_run(id, mutation).await? else {
            return Ok(None);
        };
        self.announce(&run);
        Ok(Some(run))
    }

    /// Stores a new run, then wakes a waiting claim it may go to.
    pub async fn insert_run(&self, run: &OpRun) -> Result<(), StoreError> {
        self.store.insert_run(run).await?;
        self.wake_claims(run);
        Ok(())
    }

    /// Stores new runs in order, all or none, then wakes the waiting claims they may go to.
    pub async fn insert_runs(&self, runs: &[OpRun]) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        self.store.insert_runs(runs).await?;
        for run in runs {
            self.wake_claims(run);
        }
        Ok(())
    }

    /// Wakes the delivery of `run`'s events, the run's watchers and the waiting claims it
    /// concerns, after a change.
    fn announce(&self, run: &OpRun) {
        self.deliverer.written(run);
        self.notify(&run.id);
        self.wake_claims(run);
    }

    /// Wakes every waiting claim, which answers what it has, and lets no claim wait from now
    /// on: the server is stopping.
    pub fn stop_waiting(&self) {
        self.waiters.close();
    }

    /// Tells event streams and log followers in this process that `run_id` changed.
    pub fn notify(&self, run_id: &str) {
        // No receivers is normal: nobody is watching.
        let _ = self.changes.send(run_id.to_owned());
    }

    /// Notifications of changed runs from now on, for [`Service::wait_for_change`].
    /// Subscribe before reading a run so that no change falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Waits until `run_id` may have changed: a notification from this process, a lagged
    /// channel, or `poll` passing (changes made by other replicas are only seen by looking).
    pub async fn wait_for_change(
        changes: &mut broadcast::Receiver<String>,
        run_id: &str,
        poll: std::time::Duration,
    ) {
        let deadline = tokio::time::sleep(poll);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                news = changes.recv() => match news {
                    Ok(id) if id == run_id => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut deadline).await;
                        return;
                    }
                },
            }
        }
    }
}
