//! The reaper re-checks, when it writes, that a worker it found silent is still silent: a
//! worker that heartbeats between the reaper's read and its write keeps its attempt.
//!
//! The race is made certain with a store that delivers the worker's heartbeat exactly in
//! that gap (when the reaper asks for the silent worker's runs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{Duration, TimeZone, Utc};
use gyoza_core::run::NewRun;
use gyoza_core::time::Timestamp;
use gyoza_core::{
    Constraints, Heartbeat, HeldRun, OpDefinition, OpRun, OpRunState, PendingRun, Resources, Worker,
};
use gyoza_host::clock::{Clock, ManualClock};
use gyoza_host::metrics::Metrics;
use gyoza_host::service::Service;
use gyoza_host::store::{
    ClaimFloor, ClaimView, DeliveryLease, DeliveryProgress, LogTail, Placement, QueryError,
    RunMutation, RunPage, RunQuery, SharedRunMutation, SqliteStore, Store, StoreError, StoreRead,
};
use gyoza_host::strategy::PriorityBackfill;

/// A SQLite store whose worker `w1` heartbeats the first time its runs are listed.
struct HeartbeatInTheGap {
    inner: SqliteStore,
    clock: Arc<ManualClock>,
    beaten: AtomicBool,
}

fn beat(at: Timestamp) -> (Heartbeat, Timestamp) {
    let heartbeat = Heartbeat {
        worker_id: "w1".into(),
        resources: Resources {
            cpu_cores: 2,
            ram_mb: 4096,
            gpus: vec![],
        },
        tags: vec![],
        running_ops: None,
        instance: None,
        exclusive_for: None,
    };
    (heartbeat, at)
}

#[async_trait]
impl StoreRead for HeartbeatInTheGap {
    async fn get_definition(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<OpDefinition>, StoreError> {
        self.inner.get_definition(id, version).await
    }
    async fn list_definitions(&self) -> Result<Vec<OpDefinition>, StoreError> {
        self.inner.list_definitions().await
    }
    async fn load_run(&self, id: &str) -> Result<Option<OpRun>, StoreError> {
        self.inner.load_run(id).await
    }
    async fn event_range(
        &self,
        run_id: &str,
        attempt: u32,
        from: u64,
        to: u64,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<(u64, gyoza_core::run::EventEntry)>, StoreError> {
        self.inner
            .event_range(run_id, attempt, from, to, limit, descending)
            .await
    }
    async fn stored_run_bytes(&self, id: &str) -> Result<Option<u64>, StoreError> {
        self.inner.stored_run_bytes(id).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, QueryError> {
        self.inner.list_runs(query).await
    }
    async fn pending_window(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRun>, StoreError> {
        self.inner.pending_window(now, limit).await
    }
    async fn runs_on_worker(&self, worker_id: &str) -> Result<Vec<OpRun>, StoreError> {
        let runs = self.inner.runs_on_worker(worker_id).await?;
        if worker_id == "w1" && !self.beaten.swap(true, Ordering::SeqCst) {
            let (heartbeat, at) = beat(self.clock.now());
            self.inner.heartbeat(heartbeat, at).await?;
        }
        Ok(runs)
    }
    async fn held_runs(&self) -> Result<Vec<HeldRun>, StoreError> {
        self.inner.held_runs().await
    }
    async fn claim_floor(
        &self,
        worker_id: &str,
        now: Timestamp,
    ) -> Result<Option<ClaimFloor>, StoreError> {
        self.inner.claim_floor(worker_id, now).await
    }
    async fn claim_view(
        &self,
        worker_id: &str,
        now: Timestamp,
        window: usize,
        half_life_s: u32,
    ) -> Result<Option<ClaimView>, StoreError> {
        self.inner
            .claim_view(worker_id, now, window, half_life_s)
            .await
    }
    async fn get_worker(&self, id: &str) -> Result<Option<Worker>, StoreError> {
        self.inner.get_worker(id).await
    }
    async fn list_workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.inner.list_workers().await
    }
    async fn stale_workers(&self, cutoff: Timestamp) -> Result<Vec<Worker>, StoreError> {
        self.inner.stale_workers(cutoff).await
    }
    async fn count_runs_by_state(&self) -> Result<Vec<(OpRunState, u64)>, StoreError> {
        self.inner.count_runs_by_state().await
    }
    async fn count_pending_by_queue(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.count_pending_by_queue().await
    }
    async fn get_log(&self, run_id: &str, attempt: u32) -> Result<Option<LogTail>, StoreError> {
        self.inner.get_log(run_id, attempt).await
    }
    async fn due_deliveries(&self, now_us: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.inner.due_deliveries(now_us, limit).await
    }
}

#[async_trait]
impl Store for HeartbeatInTheGap {
    async fn upsert_definition(
        &self,
        definition: OpDefinition,
    ) -> Result<(OpDefinition, bool), StoreError> {
        self.inner.upsert_definition(definition).await
    }
    async fn insert_run(&self, run: &OpRun) -> Result<(), StoreError> {
        self.inner.insert_run(run).await
    }
    async fn insert_runs(&self, runs: &[OpRun]) -> Result<(), StoreError> {
        self.inner.insert_runs(runs).await
    }
    async fn delete_run(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete_run(id).await
    }
    async fn update_run(
        &self,
        id: &str,
        mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        self.inner.update_run(id, mutation).await
    }
    async fn update_runs(
        &self,
        ids: Vec<String>,
        mutation: SharedRunMutation,
    ) -> Vec<Result<Option<OpRun>, StoreError>> {
        self.inner.update_runs(ids, mutation).await
    }
    async fn assign_runs(
        &self,
        worker_id: &str,
        placements: Vec<Placement>,
        now: Timestamp,
    ) -> Vec<Result<Option<OpRun>, StoreError>> {
        self.inner.assign_runs(worker_id, placements, now).await
    }
    async fn update_run_if_silent(
        &self,
        id: &str,
        worker_id: &str,
        cutoff: Timestamp,
        mutation: RunMutation,
    ) -> Result<Option<OpRun>, StoreError> {
        self.inner
            .update_run_if_silent(id, worker_id, cutoff, mutation)
            .await
    }
    async fn heartbeat(&self, heartbeat: Heartbeat, now: Timestamp) -> Result<Worker, StoreError> {
        self.inner.heartbeat(heartbeat, now).await
    }
    async fn append_log(
        &self,
        run_id: &str,
        attempt: u32,
        text: &str,
        cap: usize,
    ) -> Result<(), StoreError> {
        self.inner.append_log(run_id, attempt, text, cap).await
    }
    async fn lease_delivery(
        &self,
        run_id: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
    ) -> Result<DeliveryLease, StoreError> {
        self.inner
            .lease_delivery(run_id, owner, now_us, until_us)
            .await
    }
    async fn save_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        until_us: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .save_delivery(run_id, owner, progress, until_us)
            .await
    }
    async fn release_delivery(
        &self,
        run_id: &str,
        owner: &str,
        progress: &DeliveryProgress,
        retry_at_us: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.inner
            .release_delivery(run_id, owner, progress, retry_at_us)
            .await
    }
}

#[tokio::test]
async fn a_worker_that_heartbeats_while_being_reaped_keeps_its_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let store = Arc::new(HeartbeatInTheGap {
        inner: SqliteStore::open(dir.path().join("gyoza.db"))
            .await
            .unwrap(),
        clock: clock.clone(),
        beaten: AtomicBool::new(false),
    });
    let service = Service::new(
        store.clone(),
        Arc::new(
            tokio::task::spawn_blocking(PriorityBackfill::start)
                .await
                .unwrap()
                .unwrap(),
        ),
        clock.clone(),
        Arc::new(Metrics::default()),
    );
    let (heartbeat, at) = beat(clock.now());
    store.heartbeat(heartbeat, at).await.unwrap();
    let new = NewRun {
        image: "x".into(),
        constraints: Constraints {
            cpu: Some(1),
            ..Constraints::default()
        },
        ..NewRun::default()
    };
    let run = OpRun::new(new, clock.now()).unwrap();
    store.insert_run(&run).await.unwrap();
    let claimed = service.claim("w1", 1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    // Silent past the timeout: the reaper finds w1 stale, and w1 heartbeats before it writes.
    clock.advance(Duration::seconds(120));
    assert_eq!(service.reap().await.unwrap(), 0, "nothing reaped");
    assert!(
        store.beaten.load(Ordering::SeqCst),
        "the heartbeat came in the gap"
    );
    let kept = store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(kept.state, OpRunState::Assigned, "the worker keeps its run");
    assert_eq!(kept.attempts.len(), 1, "and its attempt");
}
