//! A SQLite store with hooks in the gaps a race needs: every call goes to the real store
//! ([`Hooked::inner`]), and [`Hook`] runs at the chosen points, so that a test can make a
//! race certain instead of likely.

use async_trait::async_trait;
use gyoza_core::time::Timestamp;
use gyoza_core::{Heartbeat, HeldRun, OpDefinition, OpRun, OpRunState, PendingRun, Worker};
use gyoza_host::store::{
    ClaimFloor, ClaimView, DeliveryLease, DeliveryProgress, LogTail, Placement, QueryError,
    RunMutation, RunPage, RunQuery, SharedRunMutation, SqliteStore, Store, StoreError, StoreRead,
};

/// What runs in the gaps; each does nothing unless a test says otherwise.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// After `worker_id`'s runs were listed (`runs_on_worker`), before they are returned.
    async fn runs_listed(&self, _store: &SqliteStore, _worker_id: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// After a claim's view for `worker_id` was read, before it is returned.
    async fn view_read(&self, _worker_id: &str) {}
}

/// [`SqliteStore`] with `hook` in its gaps.
pub struct Hooked<H: Hook> {
    /// The real store.
    pub inner: SqliteStore,
    /// What runs in the gaps.
    pub hook: H,
}

#[async_trait]
impl<H: Hook> StoreRead for Hooked<H> {
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
        self.hook.runs_listed(&self.inner, worker_id).await?;
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
        let view = self
            .inner
            .claim_view(worker_id, now, window, half_life_s)
            .await?;
        self.hook.view_read(worker_id).await;
        Ok(view)
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
    async fn queue_usage(
        &self,
        now: Timestamp,
        half_life_s: u32,
    ) -> Result<Vec<(String, [f64; 3])>, StoreError> {
        self.inner.queue_usage(now, half_life_s).await
    }
}

#[async_trait]
impl<H: Hook> Store for Hooked<H> {
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
