//! The kubelet's Node: registration with capacity, allocatable, addresses, nodeInfo and the
//! well-known labels; the conditions (Ready, MemoryPressure, DiskPressure, PIDPressure),
//! checked every --node-status-update-frequency and posted when they change (or every five
//! minutes, as upstream's node status report frequency); and the node Lease heartbeat.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::pod_network::NetworkState;
use tokio::sync::watch;

use crate::machine::Machine;
use crate::quantity::parse_nanos;

/// How often the status is posted even when nothing changed.
const STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(300);
/// How often the node Lease is renewed (a quarter of its 40 s duration, as upstream).
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// How long the runtime may take to answer the status check.
const RUNTIME_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Hard eviction thresholds kept out of allocatable: memory.available<100Mi, nodefs 10%.
const EVICTION_MEMORY_BYTES: u64 = 100 << 20;
const EVICTION_NODEFS_PERCENT: u64 = 10;

/// Registering or updating the Node failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterNodeError {
    #[error("register node {node}")]
    Api {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Everything the Node object is made from.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub machine: Machine,
    pub max_pods: u32,
    /// Reserved amounts per resource (system-reserved plus kube-reserved), as quantities.
    pub reserved: Vec<(String, String)>,
    /// The directory whose filesystem is checked for disk pressure.
    pub root_dir: PathBuf,
    /// The kubelet server's port (daemonEndpoints.kubeletEndpoint).
    pub port: u16,
}

impl NodeIdentity {
    /// capacity and allocatable.
    fn resources(&self) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
        let machine = &self.machine;
        let capacity_values: [(&str, i128); 4] = [
            ("cpu", machine.cpus as i128 * 1000),
            ("memory", machine.memory_bytes as i128 * 1000),
            (
                "ephemeral-storage",
                machine.ephemeral_storage_bytes as i128 * 1000,
            ),
            ("pods", self.max_pods as i128 * 1000),
        ];
        let reserved = |name: &str| -> i128 {
            self.reserved
                .iter()
                .filter(|(resource, _)| resource == name)
                .filter_map(|(_, amount)| parse_nanos(amount))
                .map(|nanos| nanos / 1_000_000)
                .sum()
        };
        let mut capacity = BTreeMap::new();
        let mut allocatable = BTreeMap::new();
        for (name, milli) in capacity_values {
            capacity.insert(name.to_owned(), Quantity(format_milli(name, milli)));
            let mut left = milli - reserved(name);
            if name == "memory" {
                left -= EVICTION_MEMORY_BYTES as i128 * 1000;
            }
            if name == "ephemeral-storage" {
                left -= milli * EVICTION_NODEFS_PERCENT as i128 / 100;
            }
            allocatable.insert(name.to_owned(), Quantity(format_milli(name, left.max(0))));
        }
        for name in ["hugepages-1Gi", "hugepages-2Mi"] {
            capacity.insert(name.to_owned(), Quantity("0".into()));
            allocatable.insert(name.to_owned(), Quantity("0".into()));
        }
        (capacity, allocatable)
    }

    /// What the node offers pods: capacity less reservations and eviction thresholds.
    pub fn allocatable(&self) -> BTreeMap<String, Quantity> {
        self.resources().1
    }

    fn node(&self) -> Node {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert(
            "kubernetes.io/arch".into(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        );
        labels.insert("beta.kubernetes.io/os".into(), "linux".into());
        labels.insert(
            "beta.kubernetes.io/arch".into(),
            labels["kubernetes.io/arch"].clone(),
        );
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn status(&self, conditions: Vec<NodeCondition>) -> NodeStatus {
        let (capacity, allocatable) = self.resources();
        let machine = &self.machine;
        NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            conditions: Some(conditions),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: self.node().metadata.labels.unwrap_or_default()["kubernetes.io/arch"]
                    .clone(),
                boot_id: machine.boot_id.clone(),
                container_runtime_version: format!("baton://{}", env!("CARGO_PKG_VERSION")),
                kernel_version: machine.kernel_version.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: crate::KUBELET_VERSION.into(),
                machine_id: machine.machine_id.clone(),
                operating_system: "linux".into(),
                os_image: machine.os_image.clone(),
                system_uuid: machine.machine_id.clone(),
                swap: None,
            }),
            ..Default::default()
        }
    }
}

/// A quantity string for `milli` thousandths of a unit: cores as millicores when fractional,
/// byte amounts in Ki when they divide evenly, counts as plain numbers.
fn format_milli(name: &str, milli: i128) -> String {
    if name == "cpu" {
        if milli % 1000 == 0 {
            return (milli / 1000).to_string();
        }
        return format!("{milli}m");
    }
    let units = milli / 1000;
    if name != "pods" && units % 1024 == 0 && units > 0 {
        return format!("{}Ki", units / 1024);
    }
    units.to_string()
}

/// A condition's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: &'static str,
}

/// Reads the pressure conditions and readiness of the node now.
fn observe(
    identity: &NodeIdentity,
    runtime_up: bool,
    network_not_ready: Option<&'static str>,
) -> Vec<Observed> {
    let memory_available = available_memory().unwrap_or(u64::MAX);
    let disk_low = nix::sys::statvfs::statvfs(&identity.root_dir)
        .map(|stat| stat.blocks_available() * 100 < stat.blocks() * EVICTION_NODEFS_PERCENT)
        .unwrap_or(false);
    let memory = if memory_available < EVICTION_MEMORY_BYTES {
        (
            "True",
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        )
    } else {
        (
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        )
    };
    let disk = if disk_low {
        (
            "True",
            "KubeletHasDiskPressure",
            "kubelet has disk pressure",
        )
    } else {
        (
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        )
    };
    let ready = if !runtime_up {
        ("False", "KubeletNotReady", "container runtime is down")
    } else if let Some(message) = network_not_ready {
        ("False", "KubeletNotReady", message)
    } else {
        ("True", "KubeletReady", "kubelet is posting ready status")
    };
    [
        ("MemoryPressure", memory),
        ("DiskPressure", disk),
        (
            "PIDPressure",
            (
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
        ("Ready", ready),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| Observed {
        type_,
        status,
        reason,
        message,
    })
    .collect()
}

fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    crate::stats::host::meminfo_bytes(&meminfo, "MemAvailable")
}

/// Keeps the Node's status and Lease current.
pub struct NodeStatusReporter {
    client: Client,
    identity: NodeIdentity,
    /// Conditions as last posted, with their transition times.
    posted: Vec<(Observed, Time)>,
    last_post: Option<Instant>,
}

impl std::fmt::Debug for NodeStatusReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStatusReporter")
            .field("node", &self.identity.name)
            .finish_non_exhaustive()
    }
}

impl NodeStatusReporter {
    /// Registers the node (or takes over the Node of the same name, as a restarted kubelet
    /// does) and returns the Node as the API server holds it, whose spec.podCIDR a restarted
    /// kubelet's network can set up from before the first status. Posts nothing:
    /// [`NodeStatusReporter::post_first`] does.
    pub async fn register(
        client: Client,
        identity: NodeIdentity,
    ) -> Result<(Self, Node), RegisterNodeError> {
        let api: Api<Node> = Api::all(client.clone());
        let name = identity.name.clone();
        let wrap = |source| RegisterNodeError::Api {
            node: name.clone(),
            source,
        };
        let node = match api.create(&PostParams::default(), &identity.node()).await {
            Ok(node) => {
                tracing::info!(node = %identity.name, "registered the node");
                node
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // The Node exists (a restarted kubelet): make sure it carries our labels.
                let labels = identity.node().metadata.labels.unwrap_or_default();
                let patch = json!({ "metadata": { "labels": labels } });
                let node = api
                    .patch(
                        &identity.name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(wrap)?;
                tracing::info!(node = %identity.name, "the node was registered before");
                node
            }
            Err(err) => return Err(wrap(err)),
        };
        let reporter = Self {
            client,
            identity,
            posted: Vec::new(),
            last_post: None,
        };
        Ok((reporter, node))
    }

    /// Posts the registered node's first status and renews its Lease.
    pub async fn post_first(
        &mut self,
        runtime_up: bool,
        network_not_ready: Option<&'static str>,
    ) -> Result<(), RegisterNodeError> {
        let name = self.identity.name.clone();
        let wrap = |source| RegisterNodeError::Api {
            node: name.clone(),
            source,
        };
        self.update(runtime_up, network_not_ready)
            .await
            .map_err(wrap)?;
        baton_client::node_lease::renew_node_lease(&self.client, &self.identity.name)
            .await
            .map_err(wrap)
    }

    /// Posts the status if a condition changed or the report is due.
    pub async fn update(
        &mut self,
        runtime_up: bool,
        network_not_ready: Option<&'static str>,
    ) -> Result<(), kube::Error> {
        let observed = observe(&self.identity, runtime_up, network_not_ready);
        let changed = observed.len() != self.posted.len()
            || observed
                .iter()
                .zip(&self.posted)
                .any(|(now, (before, _))| now != before);
        let due = self
            .last_post
            .is_none_or(|at| at.elapsed() >= STATUS_REPORT_FREQUENCY);
        if !changed && !due {
            return Ok(());
        }
        let now = Time(jiff::Timestamp::now());
        let posted: Vec<(Observed, Time)> = observed
            .into_iter()
            .map(|condition| {
                let since = self
                    .posted
                    .iter()
                    .find(|(before, _)| {
                        before.type_ == condition.type_ && before.status == condition.status
                    })
                    .map(|(_, since)| since.clone())
                    .unwrap_or_else(|| now.clone());
                (condition, since)
            })
            .collect();
        let conditions = posted
            .iter()
            .map(|(condition, since)| NodeCondition {
                type_: condition.type_.into(),
                status: condition.status.into(),
                reason: Some(condition.reason.into()),
                message: Some(condition.message.into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(since.clone()),
            })
            .collect();
        let status = json!({ "status": self.identity.status(conditions) });
        Api::<Node>::all(self.client.clone())
            .patch_status(
                &self.identity.name,
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await?;
        self.posted = posted;
        self.last_post = Some(Instant::now());
        Ok(())
    }

    /// Renews the Lease every 10 s and checks the status every `frequency`, forever.
    pub async fn run(
        mut self,
        frequency: Duration,
        runtime_up: impl Fn() -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>>,
        mut network: watch::Receiver<NetworkState>,
    ) {
        // The Lease has a task of its own, so that a slow status check never delays it.
        let client = self.client.clone();
        let name = self.identity.name.clone();
        tokio::spawn(async move {
            let mut lease = tokio::time::interval(LEASE_RENEW_INTERVAL);
            lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                lease.tick().await;
                if let Err(err) = baton_client::node_lease::renew_node_lease(&client, &name).await {
                    tracing::warn!(%err, "renewing the node lease");
                }
            }
        });
        let mut status = tokio::time::interval(frequency);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Checked on every tick, and at once when the pod network becomes ready.
            tokio::select! {
                _ = status.tick() => {}
                Ok(()) = network.changed() => {}
            }
            let network_not_ready = network.borrow_and_update().not_ready_message();
            // A runtime that does not answer within the check is down.
            let up = tokio::time::timeout(RUNTIME_CHECK_TIMEOUT, runtime_up())
                .await
                .unwrap_or(false);
            if let Err(err) = self.update(up, network_not_ready).await {
                tracing::warn!(%err, "updating the node status");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> NodeIdentity {
        NodeIdentity {
            name: "n1".into(),
            ip: "10.0.0.5".parse().unwrap(),
            labels: BTreeMap::from([("role".into(), "worker".into())]),
            taints: Vec::new(),
            machine: Machine {
                cpus: 2,
                memory_bytes: 4 << 30,
                ephemeral_storage_bytes: 100 << 30,
                pid_max: 4_194_304,
                machine_id: "abc".into(),
                boot_id: "boot".into(),
                kernel_version: "6.1.0".into(),
                os_image: "Baton".into(),
            },
            max_pods: 110,
            reserved: vec![
                ("cpu".into(), "100m".into()),
                ("memory".into(), "256Mi".into()),
            ],
            root_dir: PathBuf::from("/"),
            port: 10250,
        }
    }

    #[test]
    fn allocatable_is_capacity_less_reservations_and_eviction_thresholds() {
        let (capacity, allocatable) = identity().resources();
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["memory"].0, "4194304Ki");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(allocatable["cpu"].0, "1900m");
        // 4 GiB - 256 MiB reserved - 100 MiB eviction threshold.
        assert_eq!(
            allocatable["memory"].0,
            format!("{}Ki", (4096 - 256 - 100) * 1024)
        );
        assert_eq!(
            allocatable["ephemeral-storage"].0,
            format!("{}Ki", 90 * 1024 * 1024)
        );
        assert_eq!(allocatable["pods"].0, "110");
    }

    #[test]
    fn the_node_carries_the_well_known_labels() {
        let node = identity().node();
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["role"], "worker");
        assert!(["amd64", "arm64"].contains(&labels["kubernetes.io/arch"].as_str()));
    }

    #[test]
    fn a_down_runtime_makes_the_node_not_ready() {
        let conditions = observe(&identity(), false, None);
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status, ready.reason), ("False", "KubeletNotReady"));
        let conditions = observe(
            &identity(),
            true,
            Some(crate::pod_network::NETWORK_NOT_READY),
        );
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.message),
            ("False", crate::pod_network::NETWORK_NOT_READY)
        );
        let conditions = observe(&identity(), true, None);
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status, ready.message),
            ("True", "kubelet is posting ready status")
        );
    }
}
