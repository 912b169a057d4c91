//! Exponential backoff: how long to wait before the next try.
//!
//! One rule for every retry loop in gyoza (worker reports, heartbeats, log shipping, event
//! delivery): the first wait is `initial`, each further one doubles, none exceeds `max`. The
//! arithmetic saturates, so any number of failures is safe. Sleeping is the caller's: this
//! crate has no clock.

use std::time::Duration;

/// A doubling delay between `initial` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub initial: Duration,
    /// No wait is longer (if `max < initial`, every wait is `initial`).
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The wait after `failures` consecutive failures (1 = the first): `initial`,
    /// `2 × initial`, `4 × initial`, … capped at `max`. Zero failures wait nothing.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
        self.initial
            .saturating_mul(factor)
            .min(self.max.max(self.initial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_up_to_the_cap_and_never_overflows() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(4), Duration::from_secs(4));
        assert_eq!(b.delay(7), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
        let huge = Backoff::new(Duration::MAX, Duration::from_secs(1));
        assert_eq!(
            huge.delay(u32::MAX),
            Duration::MAX,
            "max below initial: initial"
        );
    }
}
