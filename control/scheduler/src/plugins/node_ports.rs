//! NodePorts: a pod's host ports must be free on the node (same protocol and port on the same
//! host IP, where 0.0.0.0 overlaps every IP).

use crate::framework::{Code, Plugin, Rejection};
use crate::node_info::NodeInfo;
use crate::pod_info::{HostPort, PodInfo};

/// The reason a node with a conflicting port gives.
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

const ANY_IP: &str = "0.0.0.0";

/// Whether `wanted` collides with a port in `used`.
pub fn conflicts(used: &[HostPort], wanted: &HostPort) -> bool {
    used.iter().any(|u| {
        u.port == wanted.port
            && u.protocol == wanted.protocol
            && (wanted.ip == ANY_IP || u.ip == ANY_IP || u.ip == wanted.ip)
    })
}

/// Rejects nodes where one of the pod's host ports is taken.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    if pod
        .host_ports
        .iter()
        .any(|wanted| conflicts(&node.used_ports, wanted))
    {
        return Err(Rejection::new(
            Plugin::NodePorts,
            Code::Unschedulable,
            REASON,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::pod;

    fn node_with(ports: &[(i32, &str, &str)]) -> NodeInfo {
        let mut n = NodeInfo::new("n".into());
        for (i, (port, proto, ip)) in ports.iter().enumerate() {
            n.add_pod(pod(&format!("e{i}")).host_port(*port, proto, ip).info());
        }
        n
    }

    #[test]
    fn conflicts_by_protocol_and_ip() {
        let cases = [
            // (existing, wanted, conflict)
            ((80, "TCP", ""), (80, "", ""), true),
            ((80, "TCP", ""), (80, "UDP", ""), false),
            ((80, "TCP", ""), (81, "TCP", ""), false),
            ((80, "TCP", "10.0.0.1"), (80, "TCP", "10.0.0.2"), false),
            ((80, "TCP", "10.0.0.1"), (80, "TCP", "10.0.0.1"), true),
            ((80, "TCP", "10.0.0.1"), (80, "TCP", "0.0.0.0"), true),
            ((80, "TCP", "0.0.0.0"), (80, "TCP", "10.0.0.1"), true),
        ];
        for (existing, wanted, conflict) in cases {
            let n = node_with(&[existing]);
            let p = pod("p").host_port(wanted.0, wanted.1, wanted.2).info();
            let result = filter(&p, &n);
            assert_eq!(result.is_err(), conflict, "{existing:?} vs {wanted:?}");
            if let Err(e) = result {
                assert_eq!(e.reasons[0], REASON);
                assert_eq!(e.code, Code::Unschedulable);
            }
        }
        assert!(filter(&pod("p").info(), &node_with(&[(80, "", "")])).is_ok());
    }
}
