//! `GET /queues`: each queue's fair-share state now, from the same rows a claim shows
//! strategies ([`crate::queues::rows`]), with every PENDING run counted (not only the
//! claim's window) and the queue's dominant share of the active cluster.
//!
//! The parts are read one after the other (the PENDING counts, the held runs, the workers,
//! the usage), not in one snapshot: a run that moves meanwhile may be counted in both or
//! neither of `pending` and `running`. The figures are for people and dashboards; claims do
//! not read them.

use std::collections::HashSet;

use gyoza_core::api::{QueueHeld, QueueList, QueueQuota, QueueUsage, QueueView};

use super::Service;
use crate::queues::{dominant_share, rows};
use crate::store::StoreError;

impl Service {
    /// Every configured queue and every queue with PENDING runs or runs held by active
    /// workers, by name (see the module docs).
    pub async fn queue_list(&self) -> Result<QueueList, StoreError> {
        let now = self.clock.now();
        let pending = self.store.count_pending_by_queue().await?;
        let held = self.store.held_runs().await?;
        let workers = self.store.list_workers().await?;
        let half_life_s = self.queues.half_life_s;
        let usage = self.store.queue_usage(now, half_life_s).await?;
        let active: Vec<_> = workers
            .iter()
            .filter(|w| w.is_active(now, self.worker_timeout))
            .collect();
        let mut totals = [0u64; 3];
        for worker in &active {
            let r = &worker.resources;
            totals[0] = totals[0].saturating_add(u64::from(r.cpu_cores));
            totals[1] = totals[1].saturating_add(r.ram_mb);
            let vram = r
                .gpus
                .iter()
                .map(|g| g.vram_mb)
                .fold(0, u64::saturating_add);
            totals[2] = totals[2].saturating_add(vram);
        }
        // Runs of a silent worker are not held by the cluster any more (the reaper requeues
        // them): a claim does not count them either.
        let ids: HashSet<&str> = active.iter().map(|w| w.id.as_str()).collect();
        let held: Vec<_> = held
            .into_iter()
            .filter(|run| ids.contains(run.worker_id.as_str()))
            .collect();
        let pending = pending.iter().map(|(queue, n)| (queue.as_str(), *n));
        let queues = rows(&self.queues, pending, &held, &usage, now)
            .into_iter()
            .map(|(name, row)| {
                let config = self.queues.get(name);
                let quota = config.quota;
                QueueView {
                    name: name.to_owned(),
                    weight: config.weight,
                    quota: QueueQuota {
                        cpu: quota.cpu,
                        ram_mb: quota.ram_mb,
                        vram_mb: quota.vram_mb,
                        runs: quota.runs,
                    },
                    pending: row.pending,
                    running: u64::from(row.running),
                    held: QueueHeld {
                        cpu: row.cpu,
                        ram_mb: row.ram_mb,
                        vram_mb: row.vram_mb,
                    },
                    usage: QueueUsage {
                        cpu_seconds: row.decayed[0],
                        ram_mb_seconds: row.decayed[1],
                        vram_mb_seconds: row.decayed[2],
                    },
                    share: dominant_share(
                        [row.cpu, row.ram_mb, row.vram_mb],
                        totals,
                        config.weight,
                    ),
                }
            })
            .collect();
        Ok(QueueList {
            half_life_s,
            queues,
        })
    }
}
