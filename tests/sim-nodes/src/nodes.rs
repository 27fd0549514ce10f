//! Simulated Node objects: registration with capacity and a Ready status, and heartbeats
//! through their Leases in kube-node-lease (what the node lifecycle controller watches).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use baton_client::node_flags::parse_taint;
use baton_client::node_lease::renew_node_lease;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::{SIMULATED_LABEL, SimNodesArgs, SimNodesError};

/// What every simulated node looks like, from the flags.
#[derive(Debug, Clone)]
pub(crate) struct NodeTemplate {
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    capacity: BTreeMap<String, Quantity>,
}

/// A registered simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub internal_ip: Ipv4Addr,
}

impl NodeTemplate {
    pub(crate) fn from_args(args: &SimNodesArgs) -> Result<Self, SimNodesError> {
        let mut labels = BTreeMap::new();
        for label in &args.node_labels {
            let (k, v) = label
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| SimNodesError::Label(label.clone()))?;
            labels.insert(k.to_string(), v.to_string());
        }
        let taints = args
            .node_taints
            .iter()
            .map(|t| parse_taint(t).ok_or_else(|| SimNodesError::Taint(t.clone())))
            .collect::<Result<_, _>>()?;
        let capacity = [
            ("cpu", args.cpu.clone()),
            ("memory", args.memory.clone()),
            ("pods", args.pods.to_string()),
            ("ephemeral-storage", "100Gi".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v)))
        .collect();
        Ok(NodeTemplate {
            labels,
            taints,
            capacity,
        })
    }

    fn node(&self, node: &SimNode) -> Node {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), node.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        labels.insert(SIMULATED_LABEL.into(), "true".into());
        Node {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..Default::default()
            }),
            status: Some(self.status(node)),
        }
    }

    fn status(&self, node: &SimNode) -> NodeStatus {
        let now = Time(jiff::Timestamp::now());
        let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        };
        NodeStatus {
            capacity: Some(self.capacity.clone()),
            allocatable: Some(self.capacity.clone()),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "kubelet is posting ready status",
                ),
            ]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: node.internal_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: node.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: String::new(),
                container_runtime_version: "sim://1.0".into(),
                kernel_version: "simulated".into(),
                kube_proxy_version: String::new(),
                kubelet_version: "v1.33.0-sim".into(),
                machine_id: node.name.clone(),
                operating_system: "linux".into(),
                os_image: "Baton simulated node (sim-nodes test tool)".into(),
                system_uuid: node.name.clone(),
                swap: None,
            }),
            ..Default::default()
        }
    }
}

/// The made-up InternalIP of the `index`th node: 10.255.0.0/16 is used only for this.
fn internal_ip(index: usize) -> Ipv4Addr {
    let n = index as u32 + 1;
    Ipv4Addr::new(10, 255, (n / 250) as u8, (n % 250) as u8 + 1)
}

/// Registers every node (or takes over one left by an earlier run, reporting it Ready again)
/// and makes its Lease.
pub(crate) async fn register_all(
    client: &Client,
    template: &NodeTemplate,
    names: &[String],
    concurrency: usize,
) -> Result<Vec<SimNode>, SimNodesError> {
    let nodes: Vec<SimNode> = names
        .iter()
        .enumerate()
        .map(|(i, name)| SimNode {
            name: name.clone(),
            internal_ip: internal_ip(i),
        })
        .collect();
    let results: Vec<Result<(), SimNodesError>> = stream::iter(nodes.iter())
        .map(|node| register(client, template, node))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(nodes)
}

async fn register(
    client: &Client,
    template: &NodeTemplate,
    node: &SimNode,
) -> Result<(), SimNodesError> {
    let api: Api<Node> = Api::all(client.clone());
    let wrap = |source| SimNodesError::Register {
        node: node.name.clone(),
        source,
    };
    let object = template.node(node);
    let created = match api.create(&PostParams::default(), &object).await {
        Ok(created) => created,
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&node.name).await.map_err(wrap)?,
        Err(e) => return Err(wrap(e)),
    };
    let status = json!({ "status": template.status(node) });
    api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(wrap)?;
    renew_node_lease(client, &created.name_any())
        .await
        .map_err(wrap)
}

/// Renews every node's Lease each `interval`, forever.
pub(crate) async fn heartbeat(
    client: Client,
    names: Vec<String>,
    interval: Duration,
    concurrency: usize,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let failures = stream::iter(names.iter())
            .map(|name| renew_node_lease(&client, name))
            .buffer_unordered(concurrency.max(1))
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        if failures > 0 {
            tracing::warn!(failures, "some node Leases could not be renewed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ips_are_distinct() {
        let ips: std::collections::HashSet<_> = (0..2000).map(internal_ip).collect();
        assert_eq!(ips.len(), 2000);
    }
}
