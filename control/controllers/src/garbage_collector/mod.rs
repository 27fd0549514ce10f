//! The garbage collector (kube-controller-manager's garbage-collector-controller): objects
//! whose owners are gone are deleted, over every served resource. A dependency graph of
//! ownerReferences (owner uid -> dependents) is kept from metadata-only watches of every
//! deletable resource (Pods from the shared informer), and three policies are carried out as
//! upstream:
//! - background: when an owner is gone (no object with its uid), its dependents are deleted
//!   (in turn in the background, so their own dependents follow);
//! - foreground: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted first (those with dependents of their own in the foreground too), and
//!   loses the finalizer once no dependent with blockOwnerDeletion is left;
//! - orphan: an owner being deleted with the `orphan` finalizer has its references removed
//!   from its dependents, then loses the finalizer.

mod graph;
mod monitors;
mod queue;
mod workers;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::Context;
use crate::failure_backoff::FailureBackoff;
use graph::{Change, Graph, Work};
use queue::WorkQueue;
use workers::Collector;

/// Workers per queue (upstream's --concurrent-gc-syncs default).
const WORKERS: usize = 20;
/// How long to wait before retrying a failed discovery.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// Registers the Pod feed on the shared informer and returns the collector's loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let (tx, rx) = unbounded_channel();
    monitors::feed_pods(&ctx.pods, tx.clone());
    let client = ctx.client.clone();
    async move {
        let (mapping, watched) = loop {
            match monitors::discover(&client).await {
                Ok(found) => break found,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector discovery failed; retrying");
                    tokio::time::sleep(DISCOVERY_RETRY).await;
                }
            }
        };
        let expected: HashSet<(String, String)> = watched
            .iter()
            .map(|r| (r.group.clone(), r.kind.clone()))
            .collect();
        tracing::info!(resources = watched.len(), "garbage collector watching");
        let collector = Arc::new(Collector {
            client: client.clone(),
            mapping,
            graph: Arc::new(Mutex::new(Graph::default())),
            changes: tx.clone(),
            deletes: WorkQueue::new(),
            orphans: WorkQueue::new(),
            backoff: FailureBackoff::default(),
        });
        let watches = join_all(
            watched
                .into_iter()
                .map(|r| monitors::watch(client.clone(), r, tx.clone())),
        );
        let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
        let builder = build_graph(&collector, rx, expected, synced_tx);
        let workers = async {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), synced_rx.wait_for(|s| *s))
                    .await
                {
                    Ok(_) => break,
                    Err(_) => {
                        tracing::warn!("garbage collector still waiting for its watches to list")
                    }
                }
            }
            tracing::info!(
                objects = collector.graph.lock().expect("graph").len(),
                "garbage collector graph synced; collecting"
            );
            let deleters = (0..WORKERS).map(|_| collector.clone().delete_worker().boxed());
            let orphaners = (0..WORKERS).map(|_| collector.clone().orphan_worker().boxed());
            join_all(deleters.chain(orphaners)).await;
        };
        tokio::join!(watches, builder, workers);
    }
    .boxed()
}

/// Applies every change to the graph and queues the work it causes; reports when every
/// watched resource has listed once.
async fn build_graph(
    collector: &Collector,
    mut changes: UnboundedReceiver<Change>,
    mut expected: HashSet<(String, String)>,
    synced: tokio::sync::watch::Sender<bool>,
) {
    if expected.is_empty() {
        let _ = synced.send(true);
    }
    while let Some(change) = changes.recv().await {
        if let Change::Relisted { group, kind, .. } = &change
            && expected.remove(&(group.clone(), kind.clone()))
            && expected.is_empty()
        {
            let _ = synced.send(true);
        }
        let work = collector.graph.lock().expect("graph").apply(change);
        for item in work {
            match item {
                Work::Delete(uid) => collector.deletes.add(uid),
                Work::Orphan(uid) => collector.orphans.add(uid),
            }
        }
    }
}
