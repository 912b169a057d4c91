//! Per-strategy counters and call latencies, for `GET /strategies`.

use std::collections::VecDeque;
use std::time::Duration;

/// Latencies kept per strategy for the percentiles (the most recent calls).
const WINDOW: usize = 1024;

/// What one strategy has done since the server started.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    /// Calls made.
    pub calls: u64,
    /// Calls that trapped, timed out, ran out of memory or returned an error.
    pub failures: u64,
    /// Answer entries the host dropped (unknown, duplicate or over-capacity runs).
    pub dropped: u64,
    /// The latest failure, for operators.
    pub last_failure: Option<String>,
    latencies_us: VecDeque<u64>,
}

impl Stats {
    /// Records one call.
    pub fn record(&mut self, elapsed: Duration, failure: Option<String>, dropped: usize) {
        self.calls += 1;
        self.dropped += dropped as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recent_calls() {
        let mut stats = Stats::default();
        assert_eq!(stats.latency_ms(0.5), None);
        for ms in 1..=100 {
            stats.record(Duration::from_millis(ms), None, 0);
        }
        stats.record(Duration::from_millis(5), Some("trap".into()), 2);
        assert_eq!(stats.calls, 101);
        assert_eq!(stats.failures, 1);
        assert_eq!(stats.dropped, 2);
        assert_eq!(stats.latency_ms(0.5), Some(50.0));
        assert_eq!(stats.latency_ms(0.99), Some(99.0));
    }
}
