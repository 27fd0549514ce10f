//! ImageLocality: nodes that already have the pod's container images score higher, by image
//! size scaled by how widely the image is spread across nodes (to avoid piling pods onto the
//! few nodes that have a rare image).

use crate::framework::{MAX_NODE_SCORE, ScoreContext};
use crate::node_info::NodeInfo;

const MB: i64 = 1024 * 1024;
/// Below this sum the score is 0.
const MIN_THRESHOLD: i64 = 23 * MB;
/// Per container, above this sum the score is 100.
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// An image name with upstream's normalization: `:latest` when no tag is given.
pub fn normalized_image_name(name: &str) -> String {
    let last_colon = name.rfind(':');
    let last_slash = name.rfind('/');
    if last_colon <= last_slash {
        format!("{name}:latest")
    } else {
        name.to_string()
    }
}

fn calculate_priority(sum: i64, containers: usize) -> i64 {
    let max_threshold = MAX_CONTAINER_THRESHOLD * containers as i64;
    let sum = sum.clamp(MIN_THRESHOLD, max_threshold.max(MIN_THRESHOLD));
    if max_threshold <= MIN_THRESHOLD {
        return 0;
    }
    MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
}

/// Scores nodes by the (spread-scaled) size of the pod's images they already have.
pub fn score(ctx: &ScoreContext<'_>, nodes: &[&NodeInfo], out: &mut [i64]) -> bool {
    if ctx.pod.pod.spec.is_none() {
        return false;
    }
    let images = &ctx.pod.images;
    let total_nodes = ctx.cache.node_count().max(1) as f64;
    // The spread-scaled score of each image, looked up once per cycle.
    let scaled: Vec<f64> = images
        .iter()
        .map(|name| ctx.cache.image_node_count(name) as f64 / total_nodes)
        .collect();
    for (node, score) in nodes.iter().zip(out.iter_mut()) {
        let mut sum = 0i64;
        if !node.images.is_empty() {
            for (name, spread) in images.iter().zip(&scaled) {
                if let Some(size) = node.images.get(name) {
                    sum += (*size as f64 * spread) as i64;
                }
            }
        }
        *score = calculate_priority(sum, images.len());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::pod_info::testing::{node, pod};

    #[test]
    fn names_get_latest() {
        assert_eq!(normalized_image_name("nginx"), "nginx:latest");
        assert_eq!(normalized_image_name("nginx:1.25"), "nginx:1.25");
        assert_eq!(
            normalized_image_name("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalized_image_name("localhost:5000/app:v1"),
            "localhost:5000/app:v1"
        );
    }

    #[test]
    fn nodes_with_the_image_score_higher() {
        let mut cache = Cache::default();
        cache.upsert_node(node("a").image(&["big:1"], 500 * MB).build());
        cache.upsert_node(node("b").build());
        let p = pod("p").image("big:1").info();
        let a = cache.node(cache.slot_of("a").unwrap());
        let b = cache.node(cache.slot_of("b").unwrap());
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        let mut out = vec![0; 2];
        assert!(score(&ctx, &[a, b], &mut out));
        // 500MB spread over 1 of 2 nodes = 250MB: 100 * (250-23)/(1000-23) = 23.
        assert_eq!(out, vec![23, 0]);
    }
}
