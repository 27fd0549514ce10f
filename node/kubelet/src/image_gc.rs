//! Image garbage collection, as the kubelet's image manager does it: every five minutes, when
//! the image store's filesystem is fuller than --image-gc-high-threshold percent, the least
//! recently used images that no pod on the node names, and that were not used within
//! --minimum-image-ttl-duration, are removed until usage is below --image-gc-low-threshold.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;

use crate::context::KubeletContext;

/// How often usage is checked (upstream's ImageGCPeriod).
const PERIOD: Duration = Duration::from_secs(300);

/// The ids of the images the pods on the node name (in any container).
pub fn images_in_use(ctx: &KubeletContext, pods: &[Arc<Pod>]) -> HashSet<String> {
    pods.iter()
        .filter_map(|pod| pod.spec.as_ref())
        .flat_map(|spec| {
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .filter_map(|c| c.image.clone())
                .chain(
                    spec.ephemeral_containers
                        .iter()
                        .flatten()
                        .filter_map(|c| c.image.clone()),
                )
                .collect::<Vec<_>>()
        })
        .filter_map(|reference| ctx.images.get(&reference).map(|image| image.id))
        .collect()
}

/// Collects every period, forever.
pub async fn run(
    ctx: Arc<KubeletContext>,
    pods: Store<Pod>,
    high: u8,
    low: u8,
    minimum_age: Duration,
) {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut in_use = images_in_use(&ctx, &pods.state());
        // Images newer than the minimum age are not collected yet (upstream's
        // --minimum-image-ttl-duration), so an image imported or pulled just now survives
        // until a pod can use it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        in_use.extend(
            ctx.images
                .list()
                .into_iter()
                .filter(|image| now.saturating_sub(image.last_used) < minimum_age.as_secs())
                .map(|image| image.id),
        );
        match ctx.images.garbage_collect(&in_use, high, low).await {
            Ok(report) if !report.removed.is_empty() => tracing::info!(
                usage_percent = report.usage_percent,
                freed_bytes = report.freed_bytes,
                removed = ?report.removed,
                "removed unused images"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "image garbage collection"),
        }
    }
}
