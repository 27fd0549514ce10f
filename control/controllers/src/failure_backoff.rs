//! Per-object retry delays for the error policies of the cluster controllers: exponential from
//! 5 ms up to 1000 s, as client-go's default per-item rate limiter, reset once an object
//! reconciles cleanly; and the error chain their logs print.

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

/// How one cause reads in a log: an API error as its message, code and reason (kube's own
/// text repeats the message and dumps the whole Status).
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    match err.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => format!("{} ({} {})", s.message, s.code, s.reason),
        _ => err.to_string(),
    }
}

/// An error with its causes, `outer: inner: innermost`, for logs (causes that only repeat
/// what is already said are left out).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = describe(err);
    let mut source = err.source();
    while let Some(e) = source {
        let part = describe(e);
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        if matches!(e.downcast_ref::<kube::Error>(), Some(kube::Error::Api(_))) {
            break;
        }
        source = e.source();
    }
    text
}

/// Whether an error comes from a write refused as a conflict (409): the cache had not caught up
/// with a write yet, which the retry resolves.
pub fn is_conflict(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(kube::Error::Api(s)) = e.downcast_ref::<kube::Error>() {
            return s.code == 409;
        }
        current = e.source();
    }
    false
}

/// Logs a failed reconcile of `object` before its retry: conflicts at debug level, the rest as
/// warnings. A macro, so that the log keeps the controller's module as its target.
macro_rules! log_failure {
    ($what:literal, $object:expr, $err:expr, $retry_in:expr $(,)?) => {{
        let err: &(dyn std::error::Error + 'static) = $err;
        let error = $crate::failure_backoff::chain(err);
        if $crate::failure_backoff::is_conflict(err) {
            tracing::debug!(object = %$object, %error, retry_in = ?$retry_in, $what);
        } else {
            tracing::warn!(object = %$object, %error, retry_in = ?$retry_in, $what);
        }
    }};
}
pub(crate) use log_failure;

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

    #[test]
    fn chains_name_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
        assert!(!is_conflict(&e));
        #[derive(Debug, thiserror::Error)]
        #[error("updating x")]
        struct Update(#[source] kube::Error);
        let status = kube::core::Status {
            code: 409,
            message: "the object has been modified".into(),
            reason: "Conflict".into(),
            ..Default::default()
        };
        let e = Update(kube::Error::Api(Box::new(status)));
        assert!(is_conflict(&e));
        assert_eq!(
            chain(&e),
            "updating x: the object has been modified (409 Conflict)"
        );
    }
}
