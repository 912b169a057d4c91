//! Queues as the server's configuration describes them: a weight and quotas per queue
//! (`GYOZA_QUEUES`), handed to scheduling strategies with each claim (`gyoza:scheduler@1.0.0`
//! `queues`). A queue that is not configured has weight 1 and no quota; runs name their queue
//! (`queue`, default `default`) whether or not it is configured.
//!
//! The syntax is one entry per queue, separated by `;`, each `NAME:key=value,key=value`:
//!
//! ```text
//! GYOZA_QUEUES="interactive:weight=2; batch:weight=1,cpu=16,ram_mb=65536,runs=20"
//! ```
//!
//! Keys: `weight` (1..=1000000), and the quotas `cpu` (cores), `ram_mb`, `vram_mb`, `runs`
//! (runs held at once). The host does not enforce quotas itself: it hands them to the
//! strategy, whose policy they are (the built-in strategies ignore them).
//!
//! What each queue holds and has used ([`rows`]) is computed here once, for the claim a
//! strategy is shown (`strategy::convert`) and for `GET /queues`, so that the two agree.

use std::collections::BTreeMap;

use gyoza_core::HeldRun;
use gyoza_core::resources::queueing_problems;
use gyoza_core::time::Timestamp;

/// Weight of a queue that is not configured.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Largest weight accepted.
const MAX_WEIGHT: u32 = 1_000_000;

/// A queue's quotas: the most its runs may hold at once (`None`: no quota).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// CPU cores.
    pub cpu: Option<u64>,
    /// RAM in megabytes.
    pub ram_mb: Option<u64>,
    /// VRAM in megabytes.
    pub vram_mb: Option<u64>,
    /// Runs held at once.
    pub runs: Option<u64>,
}

/// One configured queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Its weight (share of the cluster relative to the others).
    pub weight: u32,
    /// Its quotas.
    pub quota: Quota,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            weight: DEFAULT_WEIGHT,
            quota: Quota::default(),
        }
    }
}

/// Every configured queue, and the half-life of the decayed usage strategies are shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Configured queues by name.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Half-life of the decayed queue usage, in seconds.
    pub half_life_s: u32,
}

/// Default half-life of the decayed queue usage (`GYOZA_QUEUE_USAGE_HALF_LIFE`), in seconds.
pub const DEFAULT_HALF_LIFE_S: u32 = 3_600;

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            queues: BTreeMap::new(),
            half_life_s: DEFAULT_HALF_LIFE_S,
        }
    }
}

impl QueueSettings {
    /// The configuration of queue `name` (the default for one not configured).
    pub fn get(&self, name: &str) -> QueueConfig {
        self.queues.get(name).copied().unwrap_or_default()
    }

    /// Parses `GYOZA_QUEUES` (see the module docs); an error names the bad entry.
    pub fn parse(text: &str, half_life_s: u32) -> Result<Self, String> {
        let mut queues = BTreeMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, settings) = entry.split_once(':').unwrap_or((entry, ""));
            let name = name.trim();
            let problems = queueing_problems(name, &Default::default());
            if !problems.is_empty() {
                return Err(format!("queue '{name}': {}", problems.join("; ")));
            }
            let mut config = QueueConfig::default();
            for pair in settings.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(format!("queue '{name}': '{pair}' is not key=value"));
                };
                let (key, value) = (key.trim(), value.trim());
                let number: u64 = value.parse().map_err(|_| {
                    format!("queue '{name}': {key} must be a whole number, got '{value}'")
                })?;
                match key {
                    "weight" => {
                        config.weight = u32::try_from(number)
                            .ok()
                            .filter(|w| (1..=MAX_WEIGHT).contains(w))
                            .ok_or_else(|| {
                                format!(
                                    "queue '{name}': weight must be 1..={MAX_WEIGHT}, got {value}"
                                )
                            })?;
                    }
                    "cpu" => config.quota.cpu = Some(number),
                    "ram_mb" => config.quota.ram_mb = Some(number),
                    "vram_mb" => config.quota.vram_mb = Some(number),
                    "runs" => config.quota.runs = Some(number),
                    _ => {
                        return Err(format!(
                            "queue '{name}': unknown key '{key}' (weight, cpu, ram_mb, vram_mb, runs)"
                        ));
                    }
                }
            }
            if queues.insert(name.to_owned(), config).is_some() {
                return Err(format!("queue '{name}' is configured twice"));
            }
        }
        Ok(Self {
            queues,
            half_life_s: half_life_s.max(1),
        })
    }
}

impl std::fmt::Display for QueueSettings {
    /// The configured queues in the syntax [`QueueSettings::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, config)) in self.queues.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{name}:weight={}", config.weight)?;
            let quota = &config.quota;
            for (key, value) in [
                ("cpu", quota.cpu),
                ("ram_mb", quota.ram_mb),
                ("vram_mb", quota.vram_mb),
                ("runs", quota.runs),
            ] {
                if let Some(value) = value {
                    write!(f, ",{key}={value}")?;
                }
            }
        }
        Ok(())
    }
}

/// What a queue holds and waits for, and its decayed usage, as of one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueRow {
    /// Runs held (ASSIGNED or RUNNING).
    pub running: u32,
    /// CPU cores its held runs hold.
    pub cpu: u64,
    /// RAM megabytes its held runs hold.
    pub ram_mb: u64,
    /// VRAM megabytes its held runs hold.
    pub vram_mb: u64,
    /// PENDING runs (as counted by the caller: the claim's window, or every one).
    pub pending: u64,
    /// CPU-core-, RAM-megabyte- and VRAM-megabyte-seconds over the decaying window: the
    /// store's usage of ended attempts plus the runs held now.
    pub decayed: [f64; 3],
}

/// Milliseconds from `assigned_at` to `now` (0 when not known, or in the future).
pub fn held_ms(assigned_at: Option<Timestamp>, now: Timestamp) -> u64 {
    assigned_at.map_or(0, |at| (now - at).num_milliseconds().max(0) as u64)
}

/// The weight of one unit held for `seconds` up to now, with half-life `half_life_s`:
/// ∫ 2^(-age / h) over the time held, h / ln 2 · (1 − 2^(−seconds / h)); 0 for no time held.
/// The store accrues an ended attempt with this same weight, so a queue's figure does not
/// jump when a run ends.
pub fn held_weight(seconds: f64, half_life_s: u32) -> f64 {
    let h = f64::from(half_life_s.max(1));
    h / std::f64::consts::LN_2 * (1.0 - (-seconds.max(0.0) / h).exp2())
}

/// Every configured queue and every queue of `pending` or `running`, by name, with what it
/// holds, waits for and has used as of `now`:
/// - `pending`: (queue, count) pairs, summed per queue (a claim passes each run of its
///   window with 1, `GET /queues` the store's count per queue);
/// - `running`: the held runs to count (the caller keeps those of active workers);
/// - `usage`: the store's decayed usage of ended attempts ([`crate::store::StoreRead::queue_usage`]),
///   added to the queues listed for another reason only.
pub fn rows<'a>(
    settings: &'a QueueSettings,
    pending: impl IntoIterator<Item = (&'a str, u64)>,
    running: &'a [HeldRun],
    usage: &'a [(String, [f64; 3])],
    now: Timestamp,
) -> BTreeMap<&'a str, QueueRow> {
    let mut rows: BTreeMap<&'a str, QueueRow> = settings
        .queues
        .keys()
        .map(|name| (name.as_str(), QueueRow::default()))
        .collect();
    for (queue, count) in pending {
        let row = rows.entry(queue).or_default();
        row.pending = row.pending.saturating_add(count);
    }
    for run in running {
        let row = rows.entry(&run.facts.queue).or_default();
        let c = &run.constraints;
        let held = [
            u64::from(c.cpu.unwrap_or(0)),
            c.ram_mb.unwrap_or(0),
            c.vram_mb.unwrap_or(0),
        ];
        row.running += 1;
        row.cpu = row.cpu.saturating_add(held[0]);
        row.ram_mb = row.ram_mb.saturating_add(held[1]);
        row.vram_mb = row.vram_mb.saturating_add(held[2]);
        // Held since its assignment.
        let seconds = held_ms(run.facts.assigned_at, now) as f64 / 1000.0;
        let weight = held_weight(seconds, settings.half_life_s);
        for (sum, amount) in row.decayed.iter_mut().zip(held) {
            *sum += amount as f64 * weight;
        }
    }
    for (name, usage) in usage {
        if let Some(row) = rows.get_mut(name.as_str()) {
            for (sum, ended) in row.decayed.iter_mut().zip(usage) {
                *sum += ended;
            }
        }
    }
    rows
}

/// A queue's dominant share: the largest of its held CPU, RAM and VRAM as a fraction of the
/// active cluster's total of that resource (`totals`; a resource the cluster has none of is
/// skipped), divided by its `weight`. 0 when it holds nothing.
pub fn dominant_share(held: [u64; 3], totals: [u64; 3], weight: u32) -> f64 {
    let largest = held
        .iter()
        .zip(totals)
        .filter(|(_, total)| *total > 0)
        .map(|(held, total)| *held as f64 / total as f64)
        .fold(0.0, f64::max);
    largest / f64::from(weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_parse_with_weights_and_quotas_and_bad_entries_are_named() {
        let settings =
            QueueSettings::parse(" interactive:weight=2; batch:weight=1,cpu=16,runs=20 ;", 60)
                .unwrap();
        assert_eq!(settings.get("interactive").weight, 2);
        assert_eq!(
            settings.get("batch").quota,
            Quota {
                cpu: Some(16),
                runs: Some(20),
                ..Quota::default()
            }
        );
        assert_eq!(settings.get("other"), QueueConfig::default());
        assert_eq!(settings.half_life_s, 60);
        assert_eq!(QueueSettings::parse("", 0).unwrap().queues.len(), 0);
        assert_eq!(
            QueueSettings::parse(&settings.to_string(), 60).unwrap(),
            settings,
            "written back as read: {settings}"
        );
        for (bad, says) in [
            ("a:weight=0", "weight must be"),
            ("a:weight=x", "whole number"),
            ("a:speed=3", "unknown key 'speed'"),
            ("a:cpu", "not key=value"),
            ("a:weight=1;a:weight=2", "configured twice"),
            ("bad name:weight=1", "queue 'bad name'"),
        ] {
            let error = QueueSettings::parse(bad, 60).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn the_dominant_share_skips_what_the_cluster_has_none_of_and_divides_by_the_weight() {
        // CPU 4/16 = 0.25, RAM 1024/8192 = 0.125; no VRAM in the cluster (skipped, though
        // the queue holds some: a run on a worker that went).
        assert_eq!(dominant_share([4, 1024, 512], [16, 8192, 0], 1), 0.25);
        assert_eq!(dominant_share([4, 1024, 512], [16, 8192, 0], 2), 0.125);
        assert_eq!(dominant_share([0, 0, 0], [16, 8192, 8192], 1), 0.0);
        assert_eq!(
            dominant_share([4, 4, 4], [0, 0, 0], 1),
            0.0,
            "an empty cluster"
        );
    }
}
