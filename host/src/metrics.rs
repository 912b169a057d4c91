//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.
//!
//! Counters and histograms live in process memory (one set per server replica, as Prometheus
//! expects: it sums across instances). Gauges that describe shared state (runs by state,
//! active workers and their capacity) are read from the store at scrape time, so every
//! replica reports the same cluster-wide values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gyoza_core::sync::lock;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {total}", braces(labels));
    }
}

/// The phases of a claim's round (`gyoza_claim_phase_seconds{phase}`).
#[derive(Debug, Default)]
pub struct ClaimPhases {
    /// Reading the claim's view from the store.
    pub view: Histogram,
    /// Waiting for the claims' turn.
    pub turn: Histogram,
    /// Holding the turn: the strategy's call, the host's checks and the reservation.
    pub decide: Histogram,
    /// The store's assignment of the placed runs.
    pub assign: Histogram,
}

/// The server's own metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    http_requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    http_latency: Histogram,
    /// Runs created (ad-hoc and from definitions).
    pub run_creations: AtomicU64,
    /// Claim requests answered.
    pub claims: AtomicU64,
    /// Runs handed out by claims.
    pub placements: AtomicU64,
    /// Time to answer a claim.
    pub claim_latency: Histogram,
    /// Where a claim's time goes, per round: reading its view, waiting for the claims' turn,
    /// deciding under it (the strategy's call and the host's checks), assigning in the store.
    pub claim_phases: ClaimPhases,
    /// Claims answered from the worker's free capacity and the least a PENDING run needs,
    /// without reading the pending window or asking the strategy.
    pub claims_answered_early: AtomicU64,
    /// Long-polling claims waiting now (`?wait_ms=N`).
    pub claims_waiting: AtomicU64,
    /// Pending runs kept for the worker where a claim preempted runs to make room for them.
    pub reservations_made: AtomicU64,
    /// Of those, taken by that worker.
    pub reservations_used: AtomicU64,
    /// Of those, expired before that worker took them.
    pub reservations_expired: AtomicU64,
    /// Waiting claims woken by a run that became claimable or capacity that was freed.
    pub claim_wakeups: AtomicU64,
    /// Events delivered to their topic URL.
    pub deliveries_ok: AtomicU64,
    /// Events given up on: refused by the destination policy or the receiver (a 4xx other
    /// than 408, 425 and 429), or still failing after the delivery's `give_up_after`.
    pub deliveries_failed: AtomicU64,
    /// Tries that failed and will be tried again later.
    pub deliveries_retried: AtomicU64,
}

/// A gauge family computed at scrape time: name, help, and (labels, value) samples.
#[derive(Debug, Clone)]
pub struct Gauge {
    /// Metric name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Samples: label set (`key="value",...`, may be empty) and value.
    pub samples: Vec<(String, f64)>,
}

/// Escapes a label value.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts one answered HTTP request on `route` (the matched route pattern).
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut requests = lock(&self.http_requests);
        *requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        drop(requests);
        self.http_latency.observe(elapsed);
    }

    /// The exposition text: these metrics plus `gauges`.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "gyoza_run_creations_total",
            "Runs created.",
            self.run_creations.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "gyoza_claims_total",
            "Claim requests answered.",
            self.claims.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "gyoza_placements_total",
            "Runs assigned to workers by claims.",
            self.placements.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "gyoza_claims_answered_early_total",
            "Claims answered without reading the pending window (the worker cannot fit the least a pending run needs, or nothing is pending).",
            self.claims_answered_early.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP gyoza_reservations_total Pending runs kept for the worker where a claim preempted runs to make room for them: made, then used by that worker or expired."
        );
        let _ = writeln!(out, "# TYPE gyoza_reservations_total counter");
        for (outcome, count) in [
            ("made", &self.reservations_made),
            ("used", &self.reservations_used),
            ("expired", &self.reservations_expired),
        ] {
            let _ = writeln!(
                out,
                "gyoza_reservations_total{{outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "gyoza_claim_wakeups_total",
            "Waiting claims woken by a run that became claimable or capacity freed on their worker.",
            self.claim_wakeups.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP gyoza_claims_waiting Long-polling claims waiting in this process.\n# TYPE gyoza_claims_waiting gauge\ngyoza_claims_waiting {}",
            self.claims_waiting.load(Ordering::Relaxed)
        );
        out.push_str("# HELP gyoza_claim_duration_seconds Time to answer a claim.\n");
        out.push_str("# TYPE gyoza_claim_duration_seconds histogram\n");
        self.claim_latency
            .render(&mut out, "gyoza_claim_duration_seconds", "");
        out.push_str("# HELP gyoza_claim_phase_seconds Time per claim round in each phase: view (reading it), turn (waiting for the claims' turn), decide (the strategy's call and the host's checks, under the turn), assign (the store's write).\n");
        out.push_str("# TYPE gyoza_claim_phase_seconds histogram\n");
        let phases = &self.claim_phases;
        for (phase, histogram) in [
            ("view", &phases.view),
            ("turn", &phases.turn),
            ("decide", &phases.decide),
            ("assign", &phases.assign),
        ] {
            histogram.render(
                &mut out,
                "gyoza_claim_phase_seconds",
                &format!("phase=\"{phase}\""),
            );
        }

        out.push_str(
            "# HELP gyoza_event_deliveries_total Event deliveries to topic URLs by result.\n",
        );
        out.push_str("# TYPE gyoza_event_deliveries_total counter\n");
        for (result, counter) in [
            ("ok", &self.deliveries_ok),
            ("failed", &self.deliveries_failed),
            ("retried", &self.deliveries_retried),
        ] {
            let _ = writeln!(
                out,
                "gyoza_event_deliveries_total{{result=\"{result}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP gyoza_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE gyoza_http_requests_total counter\n");
        let requests = lock(&self.http_requests);
        for ((method, route, status), count) in requests.iter() {
            let _ = writeln!(
                out,
                "gyoza_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                label(method),
                label(route)
            );
        }
        drop(requests);
        out.push_str("# HELP gyoza_http_request_duration_seconds Time to answer HTTP requests.\n");
        out.push_str("# TYPE gyoza_http_request_duration_seconds histogram\n");
        self.http_latency
            .render(&mut out, "gyoza_http_request_duration_seconds", "");

        for gauge in gauges {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} gauge",
                gauge.name, gauge.help, gauge.name
            );
            for (labels, value) in &gauge.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{} {value}", gauge.name);
                } else {
                    let _ = writeln!(out, "{}{{{labels}}} {value}", gauge.name);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(30));
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count 2\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
