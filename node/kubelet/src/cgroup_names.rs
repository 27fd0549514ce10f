//! Cgroup names as the kubelet's cgroupfs driver writes them: `/kubepods` for Guaranteed pods,
//! `/kubepods/burstable` and `/kubepods/besteffort` for the other QoS classes, `pod<uid>` below
//! them, and each container's cgroup named by its container id inside its pod's.

use crate::qos::QosClass;

/// The cgroup under which every pod's cgroup lives (the kubelet's `--cgroup-root` is `/`).
pub const KUBEPODS: &str = "/kubepods";

/// The QoS-level cgroup that holds the pods of `qos`.
pub fn qos_cgroup_name(qos: QosClass) -> String {
    match qos {
        QosClass::Guaranteed => KUBEPODS.to_string(),
        QosClass::Burstable => format!("{KUBEPODS}/burstable"),
        QosClass::BestEffort => format!("{KUBEPODS}/besteffort"),
    }
}

/// The cgroup of the pod with `uid` in `qos` (`/kubepods/burstable/pod<uid>`).
pub fn pod_cgroup_name_for(qos: QosClass, uid: &str) -> String {
    format!("{}/pod{uid}", qos_cgroup_name(qos))
}

/// The cgroup of a container inside its pod's cgroup (`<pod cgroup>/<container id>`), the
/// `cgroupsPath` of its OCI spec.
pub fn container_cgroup_path(pod_cgroup: &str, container_id: &str) -> String {
    format!("{}/{container_id}", pod_cgroup.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_cgroupfs_driver() {
        let uid = "0f6a2c1e-58c4-4b8e-9d1a-3c3b1f1e2a77";
        assert_eq!(
            pod_cgroup_name_for(QosClass::Guaranteed, uid),
            format!("/kubepods/pod{uid}")
        );
        assert_eq!(
            pod_cgroup_name_for(QosClass::Burstable, uid),
            format!("/kubepods/burstable/pod{uid}")
        );
        assert_eq!(
            pod_cgroup_name_for(QosClass::BestEffort, uid),
            format!("/kubepods/besteffort/pod{uid}")
        );
        assert_eq!(
            container_cgroup_path("/kubepods/podx/", "abc123"),
            "/kubepods/podx/abc123"
        );
    }
}
