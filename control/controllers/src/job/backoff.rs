//! The delay before a Job replaces failed Pods (upstream's podBackoffStore): 10 s after the
//! first failure since the last success, doubling with each further one, at most 6 min,
//! counted from the last failure's finish time. Kept in memory per Job, as upstream does.

use baton_client::CachedPod;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The first delay.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
/// The longest delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 60);

/// Failures since a Job's last success and when the last of them finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackoffRecord {
    pub failures_after_last_success: u32,
    pub last_failure: Option<jiff::Timestamp>,
}

impl BackoffRecord {
    /// The record after `succeeded` and `failed` newly finished Pods (their finish times).
    pub fn after(self, succeeded: &[jiff::Timestamp], failed: &[jiff::Timestamp]) -> Self {
        let mut failed = failed.to_vec();
        failed.sort();
        let Some(&last_success) = succeeded.iter().max() else {
            return match failed.last() {
                None => self,
                Some(&last) => BackoffRecord {
                    failures_after_last_success: self.failures_after_last_success
                        + failed.len() as u32,
                    last_failure: Some(last),
                },
            };
        };
        let after: Vec<_> = failed.iter().filter(|t| **t > last_success).collect();
        BackoffRecord {
            failures_after_last_success: after.len() as u32,
            last_failure: after.last().map(|t| **t),
        }
    }

    /// How long new Pods must still wait at `now`.
    pub fn remaining(&self, now: jiff::Timestamp) -> Duration {
        let Some(last) = self.last_failure else {
            return Duration::ZERO;
        };
        if self.failures_after_last_success == 0 {
            return Duration::ZERO;
        }
        let delay = delay_for(self.failures_after_last_success);
        let elapsed = now.duration_since(last);
        let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
        delay.saturating_sub(elapsed)
    }
}

/// The delay after `failures` failures in a row (at least one).
pub fn delay_for(failures: u32) -> Duration {
    let mut delay = DEFAULT_BACKOFF;
    for _ in 1..failures {
        delay *= 2;
        if delay >= MAX_BACKOFF {
            return MAX_BACKOFF;
        }
    }
    delay
}

/// When a Pod finished: the latest container termination, else when it stopped being Ready,
/// else its deletion time, else its creation time.
pub fn finish_time(pod: &CachedPod) -> jiff::Timestamp {
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let from_containers = containers
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let from_ready = || {
        status?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
    };
    from_containers
        .or_else(from_ready)
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(jiff::Timestamp::now)
}

/// The records of every Job, by `namespace/name`.
#[derive(Debug, Default)]
pub struct BackoffStore {
    records: Mutex<HashMap<String, BackoffRecord>>,
}

impl BackoffStore {
    /// The Job's record (empty when it has none).
    pub fn get(&self, key: &str) -> BackoffRecord {
        self.records
            .lock()
            .expect("backoff store")
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// Stores the Job's record once the failures in it are counted in its status.
    pub fn put(&self, key: &str, record: BackoffRecord) {
        self.records
            .lock()
            .expect("backoff store")
            .insert(key.to_string(), record);
    }

    /// Forgets a finished or deleted Job.
    pub fn remove(&self, key: &str) {
        self.records.lock().expect("backoff store").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn delays_double_from_ten_seconds_to_six_minutes() {
        assert_eq!(delay_for(1), Duration::from_secs(10));
        assert_eq!(delay_for(2), Duration::from_secs(20));
        assert_eq!(delay_for(3), Duration::from_secs(40));
        assert_eq!(delay_for(6), Duration::from_secs(320));
        assert_eq!(delay_for(7), MAX_BACKOFF);
        assert_eq!(delay_for(30), MAX_BACKOFF);
    }

    #[test]
    fn failures_accumulate_and_successes_reset() {
        let r = BackoffRecord::default().after(&[], &[t(100), t(90)]);
        assert_eq!(r.failures_after_last_success, 2);
        assert_eq!(r.last_failure, Some(t(100)));
        assert_eq!(r.remaining(t(105)), Duration::from_secs(15));
        assert_eq!(r.remaining(t(200)), Duration::ZERO);
        let r = r.after(&[], &[t(110)]);
        assert_eq!(r.failures_after_last_success, 3);
        assert_eq!(r.remaining(t(110)), Duration::from_secs(40));
        // Only failures after the last success count.
        let r = r.after(&[t(120)], &[t(115), t(125)]);
        assert_eq!(r.failures_after_last_success, 1);
        assert_eq!(r.last_failure, Some(t(125)));
        let r = r.after(&[t(130)], &[]);
        assert_eq!(r, BackoffRecord::default());
        assert_eq!(r.remaining(t(130)), Duration::ZERO);
        assert_eq!(
            BackoffRecord::default().after(&[], &[]),
            BackoffRecord::default()
        );
    }
}
