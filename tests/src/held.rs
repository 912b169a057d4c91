//! What runs held over time, from their attempts: each attempt holds its CPU cores from its
//! `assigned_at` to its `finished_at`. Used by the fair-share checks here and by
//! `gyoza-bench fair-share`.

use gyoza_core::api::OpRunView;

/// One attempt's hold: from, to (microseconds since the epoch), CPU cores.
pub type Hold = (i64, i64, u32);

/// The holds of every ended attempt of `runs`.
pub fn holds(runs: &[OpRunView]) -> Vec<Hold> {
    runs.iter()
        .flat_map(|run| {
            run.attempts.iter().filter_map(|attempt| {
                let cpu = attempt.constraints.cpu.unwrap_or(0);
                let start = attempt.assigned_at?.timestamp_micros();
                Some((start, attempt.finished_at?.timestamp_micros(), cpu))
            })
        })
        .collect()
}

/// Core-seconds held within `[from, to]` (microseconds).
pub fn busy(holds: &[Hold], from: i64, to: i64) -> f64 {
    holds
        .iter()
        .map(|&(start, end, cpu)| {
            let overlap = (end.min(to) - start.max(from)).max(0);
            overlap as f64 / 1e6 * f64::from(cpu)
        })
        .sum()
}

/// The most cores held at once.
pub fn peak(holds: &[Hold]) -> u32 {
    let mut edges: Vec<(i64, i64)> = holds
        .iter()
        .flat_map(|&(start, end, cpu)| [(start, i64::from(cpu)), (end, -i64::from(cpu))])
        .collect();
    // Ends before starts at the same instant: a core handed from one run to the next is
    // not held twice.
    edges.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as u32
}

/// The last assignment of any attempt of `runs` (microseconds; 0 for none).
pub fn last_assigned(runs: &[OpRunView]) -> i64 {
    runs.iter()
        .flat_map(|run| run.attempts.iter())
        .filter_map(|attempt| attempt.assigned_at.map(|t| t.timestamp_micros()))
        .max()
        .unwrap_or(0)
}

/// Now, in microseconds since the epoch (the server's clock, on the same machine).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_clips_to_the_period_and_peak_counts_overlaps_only() {
        let holds = [
            (0, 2_000_000, 1),
            (1_000_000, 3_000_000, 2),
            (3_000_000, 4_000_000, 2),
        ];
        assert_eq!(busy(&holds, 1_000_000, 3_000_000), 1.0 + 4.0);
        // 1 + 2 at once from 1 s to 2 s; the run starting at 3 s takes over the one ending.
        assert_eq!(peak(&holds), 3);
    }
}
