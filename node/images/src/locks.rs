//! Per-key locks (one per blob digest or layer chain ID), so that two tasks fetching or
//! unpacking the same content do it once: the second waits and then finds it done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// A lock per key, created on demand and forgotten when nobody holds or waits for it.
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// The lock of `key`.
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, weak| weak.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_string(), Arc::downgrade(&lock));
        lock
    }

    /// Keys with a live lock (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_lock_per_key_and_forgotten_when_unused() {
        let locks = KeyedLocks::default();
        let a = locks.get("a");
        let a2 = locks.get("a");
        assert!(Arc::ptr_eq(&a, &a2));
        let guard = a.try_lock().unwrap();
        assert!(a2.try_lock().is_err());
        assert!(locks.get("b").try_lock().is_ok());
        drop(guard);
        drop((a, a2));
        assert_eq!(locks.len(), 0);
    }
}
