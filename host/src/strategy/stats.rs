//! Per-strategy counters and call latencies, for `GET /strategies` and the metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use gyoza_core::sync::lock;

/// Latencies kept per strategy for the percentiles (the most recent calls).
const WINDOW: usize = 1024;

/// What one strategy has done since the server started.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    /// Calls made.
    pub calls: u64,
    /// Calls that trapped, timed out, ran out of memory or returned an error.
    pub failures: u64,
    /// Answer entries the claim's check dropped (unknown, duplicate or over-capacity runs).
    pub dropped: u64,
    /// Preemptions it asked for that were carried out.
    pub evictions: u64,
    /// Preemptions it asked for that the host's rules refused (or that found the run moved).
    pub evictions_refused: u64,
    /// The latest failure, for operators.
    pub last_failure: Option<String>,
    latencies_us: VecDeque<u64>,
}

impl Stats {
    /// Records one call.
    pub fn record(&mut self, elapsed: Duration, failure: Option<String>) {
        self.calls += 1;
        if failure.is_some() {
            self.failures += 1;
            self.last_failure = failure;
        }
        if self.latencies_us.len() == WINDOW {
            self.latencies_us.pop_front();
        }
        self.latencies_us
            .push_back(elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// The `q` quantile (0..=1) of recent latencies, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut sorted: Vec<u64> = self.latencies_us.iter().copied().collect();
        sorted.sort_unstable();
        let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0)
    }
}

/// The [`Stats`] of every strategy, by name.
#[derive(Debug, Default)]
pub(super) struct StatsBook(Mutex<HashMap<String, Stats>>);

impl StatsBook {
    /// Records one call of `strategy`.
    pub fn record_call(&self, strategy: &str, elapsed: Duration, failure: Option<String>) {
        lock(&self.0)
            .entry(strategy.to_owned())
            .or_default()
            .record(elapsed, failure);
    }

    /// Adds `dropped` choices to `strategy`'s count.
    pub fn record_dropped(&self, strategy: &str, dropped: usize) {
        lock(&self.0)
            .entry(strategy.to_owned())
            .or_default()
            .dropped += dropped as u64;
    }

    /// Adds preemptions carried out and refused to `strategy`'s counts.
    pub fn record_evictions(&self, strategy: &str, carried_out: usize, refused: usize) {
        let mut book = lock(&self.0);
        let stats = book.entry(strategy.to_owned()).or_default();
        stats.evictions += carried_out as u64;
        stats.evictions_refused += refused as u64;
    }

    /// A copy of every strategy's stats.
    pub fn snapshot(&self) -> HashMap<String, Stats> {
        lock(&self.0).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recent_calls() {
        let mut stats = Stats::default();
        assert_eq!(stats.latency_ms(0.5), None);
        for ms in 1..=100 {
            stats.record(Duration::from_millis(ms), None);
        }
        stats.record(Duration::from_millis(5), Some("trap".into()));
        assert_eq!(stats.calls, 101);
        assert_eq!(stats.failures, 1);
        assert_eq!(stats.latency_ms(0.5), Some(50.0));
        assert_eq!(stats.latency_ms(0.99), Some(99.0));
    }

    #[test]
    fn drops_are_counted_apart_from_calls() {
        let book = StatsBook::default();
        book.record_call("p", Duration::from_millis(1), None);
        book.record_dropped("p", 2);
        let stats = &book.snapshot()["p"];
        assert_eq!((stats.calls, stats.dropped), (1, 2));
    }
}
