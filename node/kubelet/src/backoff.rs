//! Restart and image pull back-off as the kubelet's: the first retry is immediate, then 10 s,
//! doubling to 5 minutes; a container that ran for 10 minutes starts over.

use std::time::{Duration, Instant};

/// First delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// Longest delay.
pub const MAX: Duration = Duration::from_secs(300);
/// A run this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// The back-off of one container (or one image).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// The delay after the latest failure; `None` before the first one.
    delay: Option<Duration>,
    /// When the latest failure happened.
    failed_at: Option<Instant>,
}

impl Backoff {
    /// Records a failure at `now`. The first failure may be retried at once; each next one
    /// doubles the wait, from 10 s up to 5 minutes.
    pub fn failed(&mut self, now: Instant) {
        if self
            .failed_at
            .is_some_and(|at| now.saturating_duration_since(at) > MAX * 2)
        {
            self.delay = None;
        }
        self.delay = Some(match self.delay {
            None => Duration::ZERO,
            Some(Duration::ZERO) => INITIAL,
            Some(delay) => (delay * 2).min(MAX),
        });
        self.failed_at = Some(now);
    }

    /// Forgets earlier failures (a run long enough to count as healthy).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// When a retry is allowed; `None` when it is allowed now.
    pub fn retry_at(&self, now: Instant) -> Option<Instant> {
        let at = self.failed_at? + self.delay?;
        (at > now).then_some(at)
    }

    /// The current delay (what upstream's messages call "back-off 20s").
    pub fn delay(&self) -> Duration {
        self.delay.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_ten_seconds_to_five_minutes() {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        assert_eq!(backoff.retry_at(start), None);
        backoff.failed(start);
        assert_eq!(
            backoff.retry_at(start),
            None,
            "the first retry is immediate"
        );
        let mut seen = Vec::new();
        for _ in 0..7 {
            backoff.failed(start);
            seen.push(backoff.delay().as_secs());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff.retry_at(start), Some(start + MAX));
        assert_eq!(backoff.retry_at(start + MAX), None);
        backoff.reset();
        assert_eq!(backoff.retry_at(start), None);
    }

    #[test]
    fn a_long_quiet_time_starts_over() {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        backoff.failed(start);
        backoff.failed(start);
        backoff.failed(start);
        assert_eq!(backoff.delay().as_secs(), 20);
        backoff.failed(start + MAX * 3);
        assert_eq!(backoff.delay(), Duration::ZERO);
    }
}
