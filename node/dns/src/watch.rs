//! Keeping the index current: shared informers on Services and EndpointSlices wake a rebuild
//! of the whole index, at most once per [`REBUILD_INTERVAL`] so that a burst of changes (a
//! rollout) costs one rebuild. Nothing polls: the loop sleeps until a watch reports a change.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_client::Informer;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::records::{Index, SharedIndex, Zone};

/// The shortest time between two rebuilds of the index.
pub const REBUILD_INTERVAL: Duration = Duration::from_millis(100);

/// Only slices that name their Service can be joined to one.
const SLICE_LABEL_SELECTOR: &str = "kubernetes.io/service-name";

/// Watches Services and EndpointSlices through `client` and replaces `index` with one built
/// from them: first once both caches are filled, then after changes. Runs until dropped.
pub async fn watch_cluster(client: kube::Client, zone: Zone, index: SharedIndex) {
    let services = Arc::new(Informer::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    ));
    let slices = Arc::new(Informer::new(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default().labels(SLICE_LABEL_SELECTOR),
    ));
    let (dirty, mut changed) = tokio::sync::watch::channel(());
    let on_service = dirty.clone();
    services.on_event(move |_| {
        on_service.send_replace(());
    });
    slices.on_event(move |_| {
        dirty.send_replace(());
    });
    // The informers stop when this future is dropped.
    let mut informers = JoinSet::new();
    let runner = services.clone();
    informers.spawn(async move { runner.run().await });
    let runner = slices.clone();
    informers.spawn(async move { runner.run().await });
    services.wait_until_ready().await;
    slices.wait_until_ready().await;

    let mut last_build: Option<Instant> = None;
    loop {
        if let Some(at) = last_build.map(|t| t + REBUILD_INTERVAL) {
            tokio::time::sleep_until(at).await;
        }
        changed.borrow_and_update();
        let service_list = services.store().state();
        let slice_list = slices.store().state();
        let started = Instant::now();
        let built = Index::build(
            zone.clone(),
            service_list.iter().map(AsRef::as_ref),
            slice_list.iter().map(AsRef::as_ref),
            unix_seconds(),
        );
        index.replace(built);
        last_build = Some(Instant::now());
        tracing::debug!(
            services = service_list.len(),
            slices = slice_list.len(),
            took = ?started.elapsed(),
            "rebuilt the cluster DNS records"
        );
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// Now in Unix seconds, as the SOA serial (CoreDNS uses the time of the last change).
fn unix_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or_default()
}
