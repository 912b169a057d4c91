//! The pending window, kept in memory per process.
//!
//! A claim shows its strategy the best claimable runs (`PENDING_WINDOW` of them). Reading
//! and decoding them was a sixth of a placement's server CPU (see BENCHMARKS.md, "Where a
//! placement's server CPU goes"), and between two claims they rarely change but for the runs
//! the first claim took. So the store reads twice the window, keeps
//! it, and answers the next claims from it while it is still what a read would give:
//!
//! - **Runs added, changed or taken.** The schema's triggers bump `pending_changes.n` in the
//!   writing transaction whenever a run becomes PENDING, a PENDING run changes what a window
//!   shows of it (priority, figures, facts, when it is claimable), or leaves PENDING
//!   (assigned, cancelled, failed, deleted). Any process on the file bumps it, and a claim
//!   reads it in the same read transaction as the rest of its view: a kept window read at
//!   another count is read again.
//! - **Runs this process assigns.** Those would make every claim read again. So a claim's
//!   assignment reads the count before and after its own changes, inside its write: once
//!   that write commits, a kept window at the count before drops the runs it assigned and
//!   moves to the count after — exactly what a read would now give. Assignments committed
//!   together answer in any order, and a window read before one committed is stored after it:
//!   so an assignment is kept until the window reaches its count before (or passes it). A kept
//!   window at a count no assignment of this process starts from is read again. The
//!   assignment is taken in on the writer thread right after its group commits, before any
//!   answer goes out (`SqliteStore::write_then`): taken in by the claim's task instead,
//!   about one claim in six under load came in between and read again (one in fifteen
//!   now). A read whose transaction began before assignments the kept window has since
//!   taken in answers its own claim and leaves the newer kept window in place.
//! - **Runs backing off.** A run whose `available_at` is still ahead is left out of a read; the
//!   kept window is read again from the earliest such time (the `runs_backing_off` index),
//!   and never used for a claim dated before its read.
//! - **Enough runs.** The kept window serves while it holds a full window, or holds every
//!   claimable run (the read found fewer than it asked for); the claim sees its first
//!   `limit`, in order.
//!
//! So a claim is shown what a read in its own read transaction would show. The store's atomic
//! assignment stays the guarantee all the same: a run is assigned only if it is still PENDING
//! and fits. The MongoDB store keeps no such window: replicas there read it at every claim.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gyoza_core::sync::lock;
use gyoza_core::time::{Timestamp, to_micros};
use gyoza_core::{OpRun, PendingRun};
use rusqlite::Connection;

use super::pending_window_blocking;
use crate::store::StoreError;

/// The count of changes to the PENDING runs (see the module docs).
pub(super) fn changes(conn: &Connection) -> Result<i64, StoreError> {
    let n = conn
        .prepare_cached("SELECT n FROM pending_changes WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    Ok(n)
}

/// How many windows a read takes ahead: the runs claims take are dropped from the kept
/// window, which serves until fewer than one window is left.
const READ_AHEAD: usize = 2;

/// The kept window of one process (shared by every clone of its store).
#[derive(Default)]
pub(super) struct WindowCache {
    state: Mutex<State>,
    /// Reads of the window from the database (for tests).
    reads: AtomicU64,
}

#[derive(Default)]
struct State {
    kept: Option<Kept>,
    /// This process's committed assignments the kept window did not take in yet, as (count
    /// before, count after, runs assigned): assignments of one group commit answer in any
    /// order, and a window read before one of them committed takes it in afterwards.
    advances: Vec<(i64, i64, HashSet<String>)>,
}

/// The most assignments kept waiting for the window to reach their count.
const MAX_ADVANCES: usize = 256;

impl State {
    /// Takes in every waiting assignment that starts at the kept window's count, in turn;
    /// forgets those behind it.
    fn catch_up(&mut self) {
        // None kept: a read in flight may still store a window at one of their counts.
        let Some(kept) = self.kept.as_mut() else {
            return;
        };
        while let Some(i) = self
            .advances
            .iter()
            .position(|(before, _, _)| *before == kept.generation)
        {
            let (_, after, taken) = self.advances.swap_remove(i);
            kept.runs.retain(|run| !taken.contains(&run.id));
            kept.generation = after;
        }
        let at = kept.generation;
        self.advances.retain(|(before, _, _)| *before > at);
    }
}

struct Kept {
    /// `pending_changes.n` as of the read.
    generation: i64,
    /// The window size it was read for.
    limit: usize,
    /// When it was read (microseconds since the epoch): its runs were claimable then.
    read_at_us: i64,
    /// The earliest time a run then backing off becomes claimable.
    until_us: Option<i64>,
    /// The read found fewer runs than it asked for: these are every claimable run.
    complete: bool,
    /// Best first.
    runs: Vec<PendingRun>,
}

impl Kept {
    fn serves(&self, generation: i64, now_us: i64, limit: usize) -> bool {
        self.generation == generation
            && self.limit == limit
            && now_us >= self.read_at_us
            && self.until_us.is_none_or(|until| now_us < until)
            && (self.complete || self.runs.len() >= limit)
    }
}

impl WindowCache {
    /// Up to `limit` runs claimable at `now`, best first, as
    /// [`pending_window_blocking`] reads them: from the kept window when it still serves
    /// (see the module docs). Call it inside the caller's read transaction, if any, so that
    /// the count and the runs are one state of the database.
    pub(super) fn window(
        &self,
        conn: &Connection,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRun>, StoreError> {
        // The count first: a run added after it was read is then either in the runs read or
        // makes the next claim read again.
        let generation = changes(conn)?;
        let now_us = to_micros(&now);
        if let Some(kept) = lock(&self.state)
            .kept
            .as_ref()
            .filter(|kept| kept.serves(generation, now_us, limit))
        {
            return Ok(kept.runs[..limit.min(kept.runs.len())].to_vec());
        }
        let asked = limit.saturating_mul(READ_AHEAD);
        let runs = pending_window_blocking(conn, now, asked)?;
        // MIN answers one row, NULL when no run is backing off.
        let until_us: Option<i64> = conn
            .prepare_cached(
                "SELECT MIN(available_at) FROM runs INDEXED BY runs_backing_off
                     WHERE state = 'PENDING' AND available_at IS NOT NULL AND available_at > ?1",
            )?
            .query_row([now_us], |r| r.get(0))?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let window = runs[..limit.min(runs.len())].to_vec();
        let mut state = lock(&self.state);
        if state
            .kept
            .as_ref()
            .is_some_and(|kept| kept.generation > generation)
        {
            // This read's transaction began before assignments the kept window has taken in
            // since (the count only grows): its runs answer this claim, and the newer kept
            // window stays for the next ones (replacing it, no waiting assignment would
            // bring it forward again and every claim would read).
            return Ok(window);
        }
        state.kept = Some(Kept {
            generation,
            limit,
            read_at_us: now_us,
            until_us,
            complete: runs.len() < asked,
            runs,
        });
        state.catch_up();
        Ok(window)
    }

    /// After this process's assignment committed with `answers`, the count having moved from
    /// `before` to `after` in its write: a kept window at `before` drops the runs assigned
    /// and is at `after` (see the module docs).
    pub(super) fn assigned(
        &self,
        answers: &[Result<Option<OpRun>, StoreError>],
        before: i64,
        after: i64,
    ) {
        let taken: HashSet<String> = answers
            .iter()
            .filter_map(|answer| answer.as_ref().ok()?.as_ref())
            .map(|run| run.id.clone())
            .collect();
        let mut state = lock(&self.state);
        if state.advances.len() >= MAX_ADVANCES {
            // The oldest is of no use by now: a window behind it is read again.
            state.advances.remove(0);
        }
        state.advances.push((before, after, taken));
        state.catch_up();
    }

    /// How many times the window was read from the database.
    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gyoza_core::run::NewRun;
    use gyoza_core::time::from_micros;
    use gyoza_core::{Constraints, Heartbeat, OpRunState, Resources};

    use crate::store::sqlite::SqliteStore;
    use crate::store::{Store, StoreRead};

    /// A run needing one core, of `priority`, created a microsecond after `n` others.
    fn run(priority: i64, n: i64) -> OpRun {
        OpRun::new(
            NewRun {
                image: "img".into(),
                priority,
                constraints: Constraints {
                    cpu: Some(1),
                    ..Constraints::default()
                },
                ..NewRun::default()
            },
            from_micros(1_000_000_000_000_000 + n),
        )
        .unwrap()
    }

    fn ids(runs: &[PendingRun]) -> Vec<&str> {
        runs.iter().map(|run| run.id.as_str()).collect()
    }

    fn names(ids: &[&String]) -> Vec<String> {
        ids.iter().map(|id| (*id).clone()).collect()
    }

    fn now() -> Timestamp {
        from_micros(to_micros(&chrono::Utc::now()))
    }

    /// Two stores on one file: two processes.
    async fn two_processes() -> (tempfile::TempDir, SqliteStore, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gyoza.db");
        let here = SqliteStore::open(&path).await.unwrap();
        let there = SqliteStore::open(&path).await.unwrap();
        (dir, here, there)
    }

    async fn worker(store: &SqliteStore, id: &str) {
        let beat = Heartbeat {
            worker_id: id.into(),
            resources: Resources {
                cpu_cores: 64,
                ram_mb: 65_536,
                gpus: vec![],
            },
            tags: vec![],
            running_ops: None,
            instance: None,
            exclusive_for: None,
        };
        store.heartbeat(beat, now()).await.unwrap();
    }

    /// The window a claim by `worker_id` would be shown at `at`, `limit` runs long.
    async fn shown(
        store: &SqliteStore,
        worker_id: &str,
        at: Timestamp,
        limit: usize,
    ) -> Vec<String> {
        let view = store
            .claim_view(worker_id, at, limit, 60)
            .await
            .unwrap()
            .unwrap();
        ids(&view.pending).into_iter().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn a_kept_window_serves_until_a_run_is_added_here_or_in_another_process() {
        let (_dir, here, there) = two_processes().await;
        worker(&here, "w1").await;
        let (a, b, c) = (run(0, 1), run(0, 2), run(5, 3));
        here.insert_run(&a).await.unwrap();
        assert_eq!(shown(&here, "w1", now(), 10).await, names(&[&a.id]));
        assert_eq!(shown(&here, "w1", now(), 10).await, names(&[&a.id]));
        assert_eq!(
            here.inner.window.reads(),
            1,
            "the second claim is answered from the kept window"
        );

        here.insert_run(&b).await.unwrap();
        assert_eq!(shown(&here, "w1", now(), 10).await, names(&[&a.id, &b.id]));
        there.insert_run(&c).await.unwrap();
        assert_eq!(
            shown(&here, "w1", now(), 10).await,
            names(&[&c.id, &a.id, &b.id]),
            "a run another process added is seen at the next claim"
        );
        assert_eq!(here.inner.window.reads(), 3);
    }

    #[tokio::test]
    async fn a_run_changed_or_leaving_pending_in_another_process_is_seen_at_once() {
        let (_dir, here, there) = two_processes().await;
        worker(&here, "w1").await;
        let (a, b, c) = (run(0, 1), run(0, 2), run(0, 3));
        here.insert_runs(&[a.clone(), b.clone(), c.clone()])
            .await
            .unwrap();
        assert_eq!(
            shown(&here, "w1", now(), 10).await,
            names(&[&a.id, &b.id, &c.id])
        );

        let at = now();
        there
            .update_run(&c.id, Box::new(move |r| r.set_priority(9, at)))
            .await
            .unwrap();
        assert_eq!(
            shown(&here, "w1", now(), 10).await,
            names(&[&c.id, &a.id, &b.id]),
            "reordered"
        );

        there
            .update_run(
                &a.id,
                Box::new(move |r| r.set_state(OpRunState::Cancelled, at)),
            )
            .await
            .unwrap();
        assert_eq!(
            shown(&here, "w1", now(), 10).await,
            names(&[&c.id, &b.id]),
            "cancelled"
        );

        there.delete_run(&b.id).await.unwrap();
        assert_eq!(
            shown(&here, "w1", now(), 10).await,
            names(&[&c.id]),
            "deleted"
        );
    }

    #[tokio::test]
    async fn a_run_backing_off_joins_the_kept_window_when_it_becomes_claimable() {
        let (_dir, here, _there) = two_processes().await;
        worker(&here, "w1").await;
        let start = now();
        let (a, mut later) = (run(0, 1), run(9, 2));
        later.available_at = Some(from_micros(to_micros(&start) + 2_000_000));
        here.insert_runs(&[a.clone(), later.clone()]).await.unwrap();
        assert_eq!(shown(&here, "w1", start, 10).await, names(&[&a.id]));
        let soon = from_micros(to_micros(&start) + 1_000_000);
        assert_eq!(shown(&here, "w1", soon, 10).await, names(&[&a.id]));
        assert_eq!(here.inner.window.reads(), 1);
        let after = from_micros(to_micros(&start) + 2_000_000);
        assert_eq!(
            shown(&here, "w1", after, 10).await,
            names(&[&later.id, &a.id])
        );
        // A claim dated before the kept window's read is not answered from it.
        assert_eq!(shown(&here, "w1", start, 10).await, names(&[&a.id]));
    }

    #[tokio::test]
    async fn runs_assigned_here_leave_the_kept_window_and_it_refills_from_the_runs_read_ahead() {
        let (_dir, here, _there) = two_processes().await;
        worker(&here, "w1").await;
        let runs: Vec<OpRun> = (0..7).map(|n| run(0, n)).collect();
        here.insert_runs(&runs).await.unwrap();
        let id = |n: usize| runs[n].id.clone();
        assert_eq!(shown(&here, "w1", now(), 3).await, [id(0), id(1), id(2)]);
        let answers = here
            .assign_runs("w1", vec![(id(0), None), (id(2), None)], now())
            .await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Some(_)))));
        assert_eq!(shown(&here, "w1", now(), 3).await, [id(1), id(3), id(4)]);
        assert_eq!(
            here.inner.window.reads(),
            1,
            "served from the 6 runs read ahead"
        );
        let answers = here
            .assign_runs("w1", vec![(id(1), None), (id(3), None)], now())
            .await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Some(_)))));
        // Two kept, fewer than a window, and the read found more than it kept: read again.
        assert_eq!(shown(&here, "w1", now(), 3).await, [id(4), id(5), id(6)]);
        assert_eq!(here.inner.window.reads(), 2);
    }

    /// A claim whose read transaction began before an assignment the kept window has taken
    /// in since reads the window as of its own snapshot, and leaves the newer kept window
    /// for the next claims (replacing it, every claim after would read again).
    #[tokio::test]
    async fn a_read_older_than_the_kept_window_does_not_replace_it() {
        let (_dir, here, _there) = two_processes().await;
        worker(&here, "w1").await;
        let runs: Vec<OpRun> = (0..6).map(|n| run(0, n)).collect();
        here.insert_runs(&runs).await.unwrap();
        let id = |n: usize| runs[n].id.clone();
        assert_eq!(shown(&here, "w1", now(), 3).await, [id(0), id(1), id(2)]);
        // A reader whose snapshot is taken now, before the assignment below.
        let mut old = Connection::open(&here.inner.path).unwrap();
        let old = old.transaction().unwrap();
        changes(&old).unwrap();
        let answers = here.assign_runs("w1", vec![(id(0), None)], now()).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Some(_)))));
        let seen = here.inner.window.window(&old, now(), 3).unwrap();
        assert_eq!(ids(&seen), [id(0), id(1), id(2)], "as of its snapshot");
        assert_eq!(here.inner.window.reads(), 2);
        assert_eq!(shown(&here, "w1", now(), 3).await, [id(1), id(2), id(3)]);
        assert_eq!(
            here.inner.window.reads(),
            2,
            "the next claim is served from the kept window"
        );
    }

    #[tokio::test]
    async fn a_run_another_process_assigned_leaves_the_window_at_once() {
        let (_dir, here, there) = two_processes().await;
        worker(&here, "w1").await;
        worker(&here, "w2").await;
        let (a, b) = (run(0, 1), run(0, 2));
        here.insert_runs(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(shown(&here, "w1", now(), 10).await, names(&[&a.id, &b.id]));
        let taken = there
            .assign_runs("w2", vec![(a.id.clone(), None)], now())
            .await;
        assert!(matches!(taken[..], [Ok(Some(_))]));
        assert_eq!(shown(&here, "w1", now(), 10).await, names(&[&b.id]));
        // And one assigned here by a plain run update, not by a claim.
        let at = now();
        here.update_run(&b.id, Box::new(move |r| r.assign("w1", at)))
            .await
            .unwrap();
        assert!(shown(&here, "w1", now(), 10).await.is_empty());
    }

    #[tokio::test]
    async fn a_run_added_elsewhere_while_a_claim_here_assigns_is_not_lost() {
        let (_dir, here, there) = two_processes().await;
        worker(&here, "w1").await;
        let (a, b, c) = (run(0, 1), run(0, 2), run(9, 3));
        here.insert_runs(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(shown(&here, "w1", now(), 10).await, names(&[&a.id, &b.id]));
        // Between this claim's read and its assignment, another process adds a run: the
        // assignment's count moves from a count the kept window was not read at.
        there.insert_run(&c).await.unwrap();
        let taken = here
            .assign_runs("w1", vec![(a.id.clone(), None)], now())
            .await;
        assert!(matches!(taken[..], [Ok(Some(_))]));
        assert_eq!(shown(&here, "w1", now(), 10).await, names(&[&c.id, &b.id]));
    }

    #[test]
    fn assignments_answered_out_of_order_or_before_the_read_are_taken_in_in_count_order() {
        let runs: Vec<OpRun> = (0..4).map(|n| run(0, n)).collect();
        let kept = |generation| Kept {
            generation,
            limit: 2,
            read_at_us: 0,
            until_us: None,
            complete: true,
            runs: runs.iter().map(PendingRun::from).collect(),
        };
        let answered = |n: usize| vec![Ok(Some(runs[n].clone()))];
        let shown = |cache: &WindowCache| {
            let state = lock(&cache.state);
            let kept = state.kept.as_ref().unwrap();
            let ids: Vec<String> = kept.runs.iter().map(|r| r.id.clone()).collect();
            (kept.generation, ids)
        };
        // One group commit: the second assignment (6 → 7) answers before the first (5 → 6).
        let cache = WindowCache::default();
        lock(&cache.state).kept = Some(kept(5));
        cache.assigned(&answered(1), 6, 7);
        assert_eq!(shown(&cache).0, 5, "waits for the count before it");
        cache.assigned(&answered(0), 5, 6);
        assert_eq!(
            shown(&cache),
            (7, vec![runs[2].id.clone(), runs[3].id.clone()])
        );
        // A window read at 5 is stored after the assignment 5 → 6 answered.
        let cache = WindowCache::default();
        cache.assigned(&answered(0), 5, 6);
        let mut state = lock(&cache.state);
        state.kept = Some(kept(5));
        state.catch_up();
        drop(state);
        assert_eq!(shown(&cache).0, 6);
        assert_eq!(shown(&cache).1.len(), 3);
    }
}
