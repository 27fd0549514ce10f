//! What the Job controller remembers between reconciles so that its caches, which lag behind
//! its own writes, never make it count a Pod twice: the Pods whose finalizer it removed but
//! has not yet seen without it (upstream's finalizerExpectations), and the resourceVersions
//! of Jobs it has since overwritten (a reconcile of such a stale copy waits for the newer
//! one, which its watch is about to deliver).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Per Job (`namespace/name`), uids of Pods whose finalizer removal is not observed yet.
#[derive(Debug, Default)]
pub struct FinalizerRemovals {
    by_job: Mutex<HashMap<String, HashSet<String>>>,
}

impl FinalizerRemovals {
    /// The removal of `uid`'s finalizer was sent.
    pub fn expect(&self, job: &str, uid: &str) {
        self.by_job
            .lock()
            .expect("finalizer removals")
            .entry(job.to_string())
            .or_default()
            .insert(uid.to_string());
    }

    /// The Pod was seen without the finalizer (or gone), or the removal failed.
    pub fn observed(&self, job: &str, uid: &str) {
        let mut by_job = self.by_job.lock().expect("finalizer removals");
        if let Some(set) = by_job.get_mut(job) {
            set.remove(uid);
            if set.is_empty() {
                by_job.remove(job);
            }
        }
    }

    /// The uids still expected for `job`.
    pub fn expected(&self, job: &str) -> HashSet<String> {
        self.by_job
            .lock()
            .expect("finalizer removals")
            .get(job)
            .cloned()
            .unwrap_or_default()
    }
}

/// Per Job, the resourceVersions this controller has written over.
#[derive(Debug, Default)]
pub struct OutdatedVersions {
    by_job: Mutex<HashMap<String, HashSet<String>>>,
}

impl OutdatedVersions {
    /// The Job at `version` was replaced by a write of this controller.
    pub fn overwritten(&self, job: &str, version: &str) {
        self.by_job
            .lock()
            .expect("outdated versions")
            .entry(job.to_string())
            .or_default()
            .insert(version.to_string());
    }

    /// Whether the copy at `version` is one this controller already overwrote; a version not
    /// overwritten means the cache caught up, and older records are dropped.
    pub fn is_outdated(&self, job: &str, version: &str) -> bool {
        let mut by_job = self.by_job.lock().expect("outdated versions");
        match by_job.get(job) {
            Some(set) if set.contains(version) => true,
            Some(_) => {
                by_job.remove(job);
                false
            }
            None => false,
        }
    }

    /// Drops the records of a deleted Job.
    pub fn forget(&self, job: &str) {
        self.by_job.lock().expect("outdated versions").remove(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_are_expected_until_observed() {
        let r = FinalizerRemovals::default();
        r.expect("ns/j", "a");
        r.expect("ns/j", "b");
        assert_eq!(r.expected("ns/j").len(), 2);
        r.observed("ns/j", "a");
        assert_eq!(r.expected("ns/j"), HashSet::from(["b".to_string()]));
        r.observed("ns/j", "b");
        assert!(r.expected("ns/j").is_empty());
    }

    #[test]
    fn stale_copies_are_recognised_until_the_cache_catches_up() {
        let v = OutdatedVersions::default();
        assert!(!v.is_outdated("ns/j", "5"));
        v.overwritten("ns/j", "5");
        v.overwritten("ns/j", "6");
        assert!(v.is_outdated("ns/j", "5"));
        assert!(v.is_outdated("ns/j", "6"));
        assert!(!v.is_outdated("ns/j", "7"));
        // Caught up: the records are gone.
        assert!(!v.is_outdated("ns/j", "5"));
    }
}
