//! Compaction of etcd's history, as kube-apiserver does it (`--etcd-compaction-interval`):
//! every interval, history is compacted up to the revision seen one interval earlier, so one
//! interval of history always stays available for watches to resume from.

use std::sync::Arc;
use std::time::Duration;

use baton_store::{Store, StoreError};

use crate::watch_cache::WatchCaches;

/// Runs forever, compacting every `interval`.
pub async fn run<S: Store>(store: Arc<S>, caches: Arc<WatchCaches<S>>, interval: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(interval).await;
        let current = match store.current_revision().await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::warn!(error = %e, "compactor could not read the current revision");
                continue;
            }
        };
        if let Some(target) = previous.filter(|r| *r > 1) {
            // The caches forget first, so that no watch is served from memory for a revision
            // etcd no longer has; until etcd compacts, it still serves them itself.
            caches.compacted(target);
            match store.compact(target).await {
                Ok(()) | Err(StoreError::Compacted { .. }) => {
                    tracing::debug!(revision = target, "compacted etcd history");
                }
                Err(e) => tracing::warn!(error = %e, revision = target, "compaction failed"),
            }
        }
        previous = Some(current);
    }
}
