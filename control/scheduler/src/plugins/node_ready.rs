//! NodeReady (Baton): a node whose Ready condition is not True takes only pods that tolerate
//! node.kubernetes.io/not-ready:NoSchedule. Upstream relies on that taint alone, which the
//! node lifecycle controller adds a moment after the node stops being ready; this closes the
//! window (and covers nodes that registered without the taint). A node that carries the taint
//! is rejected earlier by TaintToleration with upstream's message.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{Code, Plugin, Rejection};
use crate::node_info::NodeInfo;
use crate::plugins::taint_toleration::tolerated;
use crate::pod_info::PodInfo;

/// The reason a node that is not ready gives.
pub const REASON: &str = "node(s) were not ready";

/// Rejects nodes that are not ready, unless the pod tolerates the not-ready taint.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    if node.ready {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/not-ready".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if tolerated(pod.tolerations(), &taint) {
        return Ok(());
    }
    Err(Rejection::new(
        Plugin::NodeReady,
        Code::UnschedulableAndUnresolvable,
        REASON,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::{node, pod};
    use k8s_openapi::api::core::v1::Toleration;

    #[test]
    fn not_ready_nodes() {
        let mut n = NodeInfo::new("n".into());
        n.set_node(node("n").not_ready().build());
        assert_eq!(filter(&pod("p").info(), &n).unwrap_err().reasons[0], REASON);
        let daemon = pod("p")
            .with_spec(|s| {
                s.tolerations = Some(vec![Toleration {
                    key: Some("node.kubernetes.io/not-ready".into()),
                    operator: Some("Exists".into()),
                    ..Default::default()
                }])
            })
            .info();
        assert!(filter(&daemon, &n).is_ok());
        n.set_node(node("n").build());
        assert!(filter(&pod("p").info(), &n).is_ok());
    }
}
