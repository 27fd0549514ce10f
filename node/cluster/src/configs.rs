//! The cluster's PKI and one machine configuration per node.

use baton_init::machine_config::{
    API_VERSION, CertificateAndKey, Cluster, ClusterCa as CaSection, ClusterDns,
    ControlPlaneMember, Interface, KIND, Kubelet, Machine, MachineConfig, Network, Proxy, Role,
    StaticRoute,
};
use baton_pki::{ClusterCa, PkiError, ServiceAccountKey};

use crate::network::{gateway, node_address};

/// A node to be: its name, role and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedNode {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its address on the cluster network.
    pub ip: std::net::Ipv4Addr,
}

/// The nodes of a cluster with `control_planes` and `workers` nodes: `control-plane-1`...,
/// then `worker-1`....
pub fn plan_nodes(control_planes: usize, workers: usize) -> Vec<PlannedNode> {
    let mut nodes = Vec::new();
    for i in 0..control_planes {
        nodes.push(PlannedNode {
            name: format!("control-plane-{}", i + 1),
            role: Role::ControlPlane,
            ip: node_address(nodes.len()),
        });
    }
    for i in 0..workers {
        nodes.push(PlannedNode {
            name: format!("worker-{}", i + 1),
            role: Role::Worker,
            ip: node_address(nodes.len()),
        });
    }
    nodes
}

/// The machine configuration of `node` in cluster `name`, whose API server endpoint is the
/// first control-plane node.
pub fn machine_config(
    name: &str,
    ca: &ClusterCa,
    service_account: &ServiceAccountKey,
    nodes: &[PlannedNode],
    node: &PlannedNode,
    insecure_registries: &[String],
) -> Result<MachineConfig, PkiError> {
    let control_plane: Vec<ControlPlaneMember> = nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .map(|n| ControlPlaneMember {
            name: n.name.clone(),
            address: n.ip,
        })
        .collect();
    let endpoint_ip = control_plane.first().map(|m| m.address).unwrap_or(node.ip);
    let identity = match node.role {
        Role::Worker => {
            let issued =
                ca.issue_client(&format!("system:node:{}", node.name), Some("system:nodes"))?;
            Some(CertificateAndKey {
                cert: issued.cert_pem,
                key: issued.key_pem,
            })
        }
        Role::ControlPlane => None,
    };
    // Control-plane nodes issue their own from the CA key they hold.
    let api_certificate = match node.role {
        Role::Worker => {
            let issued = ca.issue_server(
                &node.name,
                &[node.name.clone(), node.ip.to_string(), "127.0.0.1".into()],
            )?;
            Some(CertificateAndKey {
                cert: issued.cert_pem,
                key: issued.key_pem,
            })
        }
        Role::ControlPlane => None,
    };
    let gateway = gateway();
    Ok(MachineConfig {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        machine: Machine {
            role: node.role,
            hostname: node.name.clone(),
            network: Network {
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    addresses: vec![
                        ipnet::Ipv4Net::new(node.ip, gateway.prefix_len()).expect("a valid prefix"),
                    ],
                    routes: vec![StaticRoute {
                        to: "0.0.0.0/0".parse().expect("a valid network"),
                        via: gateway.addr(),
                    }],
                    mtu: None,
                    dhcp: false,
                }],
                nameservers: Vec::new(),
            },
            identity,
            api_certificate,
            data_disk: None,
            sysctls: Default::default(),
            kernel_args: Vec::new(),
            kubelet: Kubelet {
                insecure_registries: insecure_registries.to_vec(),
                // With workers to run them, pods stay off the control plane (as kubeadm and
                // kind do).
                extra_args: if node.role == Role::ControlPlane
                    && nodes.iter().any(|n| n.role == Role::Worker)
                {
                    vec![format!(
                        "--register-with-taints={}=:NoSchedule",
                        baton_init::node_services::CONTROL_PLANE_ROLE_LABEL
                    )]
                } else {
                    Vec::new()
                },
            },
            proxy: Proxy::default(),
            time: Default::default(),
        },
        cluster: Cluster {
            name: name.into(),
            endpoint: format!(
                "https://{endpoint_ip}:{}",
                baton_init::node_services::SECURE_PORT
            ),
            ca: CaSection {
                cert: ca.cert_pem().into(),
                key: (node.role == Role::ControlPlane).then(|| ca.key_pem().to_string()),
            },
            service_account_key: (node.role == Role::ControlPlane)
                .then(|| service_account.key_pem.clone()),
            control_plane,
            pod_cidr: "10.244.0.0/16".parse().expect("a valid network"),
            service_cidr: "10.96.0.0/12".parse().expect("a valid network"),
            dns: ClusterDns::default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_planned_node_gets_a_valid_configuration() {
        let ca = ClusterCa::generate("kubernetes").unwrap();
        let service_account = ServiceAccountKey::generate().unwrap();
        let nodes = plan_nodes(1, 2);
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["control-plane-1", "worker-1", "worker-2"]);
        for node in &nodes {
            let config = machine_config("demo", &ca, &service_account, &nodes, node, &[]).unwrap();
            assert_eq!(config.validate(), Vec::new(), "{}", node.name);
            assert_eq!(
                config.cluster.service_account_key.is_some(),
                node.role == Role::ControlPlane,
                "{}",
                node.name
            );
            assert_eq!(config.cluster.endpoint, "https://10.251.0.10:6443");
        }
    }
}
