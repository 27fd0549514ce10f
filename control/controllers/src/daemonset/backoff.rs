//! The delay between replacements of a failed daemon Pod on one node (upstream's
//! failedPodsBackoff: 1 s doubling up to 15 min). A kubelet that keeps rejecting a daemon Pod
//! would otherwise make the controller and the kubelet fight in a hot loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const INITIAL: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    last_update: Instant,
}

/// Per-key exponential backoff of failed-Pod replacements.
#[derive(Debug, Default)]
pub struct FailedPodBackoff {
    entries: Mutex<HashMap<String, Entry>>,
}

impl FailedPodBackoff {
    /// How long `key` must still wait before its next replacement, if it is in backoff.
    pub fn remaining(&self, key: &str, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().expect("failed pod backoff");
        let entry = entries.get(key)?;
        let elapsed = now.saturating_duration_since(entry.last_update);
        (elapsed < entry.delay).then(|| entry.delay - elapsed)
    }

    /// Records a replacement of `key` at `now`: the next one waits twice as long (from 1 s,
    /// at most 15 min; an entry idle for twice the maximum starts over).
    pub fn record(&self, key: &str, now: Instant) {
        let mut entries = self.entries.lock().expect("failed pod backoff");
        entries.retain(|_, e| now.saturating_duration_since(e.last_update) <= 2 * MAX);
        let delay = match entries.get(key) {
            Some(e) => (e.delay * 2).min(MAX),
            None => INITIAL,
        };
        entries.insert(
            key.to_string(),
            Entry {
                delay,
                last_update: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_expire() {
        let b = FailedPodBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.remaining("k", t0), None);
        b.record("k", t0);
        assert_eq!(b.remaining("k", t0), Some(Duration::from_secs(1)));
        assert_eq!(
            b.remaining("k", t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(b.remaining("k", t0 + Duration::from_secs(1)), None);
        let t1 = t0 + Duration::from_secs(2);
        b.record("k", t1);
        assert_eq!(b.remaining("k", t1), Some(Duration::from_secs(2)));
        for i in 0..20 {
            b.record("k", t1 + Duration::from_secs(i));
        }
        let t2 = t1 + Duration::from_secs(19);
        assert_eq!(b.remaining("k", t2), Some(MAX));
        // Idle for more than twice the maximum: starts over.
        let t3 = t2 + 2 * MAX + Duration::from_secs(1);
        b.record("k", t3);
        assert_eq!(b.remaining("k", t3), Some(INITIAL));
        assert_eq!(b.remaining("other", t3), None);
    }
}
