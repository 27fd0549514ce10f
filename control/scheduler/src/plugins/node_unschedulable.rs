//! NodeUnschedulable: cordoned nodes (spec.unschedulable) take only pods that tolerate the
//! node.kubernetes.io/unschedulable:NoSchedule taint.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{Code, Plugin, Rejection};
use crate::node_info::NodeInfo;
use crate::plugins::taint_toleration::tolerated;
use crate::pod_info::PodInfo;

/// The reason a cordoned node gives.
pub const REASON: &str = "node(s) were unschedulable";

/// Whether the pod tolerates the taint that stands for spec.unschedulable.
pub fn tolerates_unschedulable(pod: &PodInfo) -> bool {
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    tolerated(pod.tolerations(), &taint)
}

/// Rejects cordoned nodes unless the pod tolerates them.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    if node.unschedulable() && !tolerates_unschedulable(pod) {
        return Err(Rejection::new(
            Plugin::NodeUnschedulable,
            Code::UnschedulableAndUnresolvable,
            REASON,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::{node, pod};
    use k8s_openapi::api::core::v1::Toleration;

    #[test]
    fn cordoned_nodes() {
        let mut n = NodeInfo::new("n".into());
        n.set_node(node("n").unschedulable().build());
        let err = filter(&pod("p").info(), &n).unwrap_err();
        assert_eq!(err.reasons[0], REASON);
        let tolerant = pod("p")
            .with_spec(|s| {
                s.tolerations = Some(vec![Toleration {
                    key: Some("node.kubernetes.io/unschedulable".into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Default::default()
                }])
            })
            .info();
        assert!(filter(&tolerant, &n).is_ok());
        let mut open = NodeInfo::new("m".into());
        open.set_node(node("m").build());
        assert!(filter(&pod("p").info(), &open).is_ok());
    }
}
