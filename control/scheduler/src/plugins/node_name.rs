//! NodeName: a pod that names a node (spec.nodeName) fits only that node.

use crate::framework::{Code, Plugin, Rejection};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// The reason other nodes give.
pub const REASON: &str = "node(s) didn't match the requested node name";

/// Rejects every node but the one the pod names (if it names one).
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let wanted = pod.node_name();
    if !wanted.is_empty() && wanted != &*node.name {
        return Err(Rejection::new(
            Plugin::NodeName,
            Code::UnschedulableAndUnresolvable,
            REASON,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::pod;

    #[test]
    fn only_the_named_node() {
        let n = NodeInfo::new("n1".into());
        assert!(filter(&pod("p").info(), &n).is_ok());
        assert!(filter(&pod("p").node_name("n1").info(), &n).is_ok());
        assert_eq!(
            filter(&pod("p").node_name("n2").info(), &n)
                .unwrap_err()
                .reasons[0],
            REASON
        );
    }
}
