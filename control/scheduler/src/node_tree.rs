//! The order in which nodes are tried: round robin across zones (upstream's node tree), so that a
//! search that stops early still sees nodes of every zone.

use k8s_openapi::api::core::v1::Node;

/// The zone key of a node: region and zone labels (or their deprecated beta names).
pub fn zone_key(node: &Node) -> String {
    let Some(labels) = node.metadata.labels.as_ref() else {
        return String::new();
    };
    let get = |key: &str, beta: &str| {
        labels
            .get(key)
            .or_else(|| labels.get(beta))
            .cloned()
            .unwrap_or_default()
    };
    let zone = get(
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/zone",
    );
    let region = get(
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/region",
    );
    if zone.is_empty() && region.is_empty() {
        return String::new();
    }
    format!("{region}:\0:{zone}")
}

/// Nodes (as cache slot numbers) grouped by zone, zones in order of first appearance.
#[derive(Debug, Default)]
pub struct NodeTree {
    zones: Vec<(String, Vec<usize>)>,
    /// The interleaved list, rebuilt after changes.
    list: Vec<usize>,
    dirty: bool,
}

impl NodeTree {
    /// Adds node `slot` to `zone`.
    pub fn add(&mut self, zone: &str, slot: usize) {
        match self.zones.iter_mut().find(|(z, _)| z == zone) {
            Some((_, nodes)) => nodes.push(slot),
            None => self.zones.push((zone.to_string(), vec![slot])),
        }
        self.dirty = true;
    }

    /// Removes node `slot` from `zone`.
    pub fn remove(&mut self, zone: &str, slot: usize) {
        if let Some(index) = self.zones.iter().position(|(z, _)| z == zone) {
            let nodes = &mut self.zones[index].1;
            nodes.retain(|s| *s != slot);
            if nodes.is_empty() {
                self.zones.remove(index);
            }
        }
        self.dirty = true;
    }

    /// Rebuilds the interleaved list (one node from each zone in turn) after changes.
    pub fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.list.clear();
        let longest = self.zones.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
        for i in 0..longest {
            for (_, nodes) in &self.zones {
                if let Some(slot) = nodes.get(i) {
                    self.list.push(*slot);
                }
            }
        }
        self.dirty = false;
    }

    /// The list as of the last `refresh`.
    pub fn current(&self) -> &[usize] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::{NodeTree, zone_key};
    use crate::pod_info::testing::node;

    #[test]
    fn interleaves_zones() {
        let mut tree = NodeTree::default();
        tree.add("a", 0);
        tree.add("a", 1);
        tree.add("a", 2);
        tree.add("b", 3);
        tree.add("c", 4);
        tree.add("b", 5);
        tree.refresh();
        assert_eq!(tree.current(), &[0, 3, 4, 1, 5, 2]);
        tree.remove("a", 0);
        tree.remove("c", 4);
        tree.refresh();
        assert_eq!(tree.current(), &[1, 3, 2, 5]);
    }

    #[test]
    fn zone_keys() {
        assert_eq!(zone_key(&node("n").build()), "");
        let n = node("n").label("topology.kubernetes.io/zone", "z1").build();
        assert_eq!(zone_key(&n), ":\0:z1");
    }
}
