//! Per-object retry delays for the error policies of the cluster controllers: exponential from
//! 5 ms up to 1000 s, as client-go's default per-item rate limiter, reset once an object
//! reconciles cleanly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const BASE: Duration = Duration::from_millis(5);
const MAX: Duration = Duration::from_secs(1000);

/// How many times in a row each object failed, and so how long it waits before its next try.
#[derive(Debug, Default)]
pub struct FailureBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl FailureBackoff {
    /// Records one more failure of `key` and returns how long to wait before retrying it.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failure backoff");
        let count = failures.entry(key.to_string()).or_insert(0);
        let delay = BASE
            .checked_mul(1u32.checked_shl(*count).unwrap_or(u32::MAX))
            .map_or(MAX, |d| d.min(MAX));
        *count = count.saturating_add(1);
        delay
    }

    /// `key` reconciled cleanly: its next failure starts from the shortest delay again.
    pub fn reset(&self, key: &str) {
        let mut failures = self.failures.lock().expect("failure backoff");
        if !failures.is_empty() {
            failures.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let b = FailureBackoff::default();
        assert_eq!(b.next_delay("a"), Duration::from_millis(5));
        assert_eq!(b.next_delay("a"), Duration::from_millis(10));
        assert_eq!(b.next_delay("a"), Duration::from_millis(20));
        assert_eq!(b.next_delay("b"), Duration::from_millis(5));
        for _ in 0..40 {
            b.next_delay("a");
        }
        assert_eq!(b.next_delay("a"), MAX);
        b.reset("a");
        assert_eq!(b.next_delay("a"), Duration::from_millis(5));
    }
}
