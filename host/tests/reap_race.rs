//! The reaper re-checks, when it writes, that a worker it found silent is still silent: a
//! worker that heartbeats between the reaper's read and its write keeps its attempt.
//!
//! The race is made certain with a store that delivers the worker's heartbeat exactly in
//! that gap (when the reaper asks for the silent worker's runs).

pub mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{Duration, TimeZone, Utc};
use common::hooked::{Hook, Hooked};
use gyoza_core::run::NewRun;
use gyoza_core::time::Timestamp;
use gyoza_core::{Constraints, Heartbeat, OpRun, OpRunState, Resources};
use gyoza_host::clock::{Clock, ManualClock};
use gyoza_host::metrics::Metrics;
use gyoza_host::service::Service;
use gyoza_host::store::{SqliteStore, Store, StoreError, StoreRead};
use gyoza_host::strategy::PriorityBackfill;

/// Worker `w1` heartbeats the first time its runs are listed.
struct HeartbeatInTheGap {
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
impl Hook for HeartbeatInTheGap {
    async fn runs_listed(&self, store: &SqliteStore, worker_id: &str) -> Result<(), StoreError> {
        if worker_id == "w1" && !self.beaten.swap(true, Ordering::SeqCst) {
            let (heartbeat, at) = beat(self.clock.now());
            store.heartbeat(heartbeat, at).await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_worker_that_heartbeats_while_being_reaped_keeps_its_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let store = Arc::new(Hooked {
        inner: SqliteStore::open(dir.path().join("gyoza.db"))
            .await
            .unwrap(),
        hook: HeartbeatInTheGap {
            clock: clock.clone(),
            beaten: AtomicBool::new(false),
        },
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
        store.hook.beaten.load(Ordering::SeqCst),
        "the heartbeat came in the gap"
    );
    let kept = store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(kept.state, OpRunState::Assigned, "the worker keeps its run");
    assert_eq!(kept.attempts.len(), 1, "and its attempt");
}
