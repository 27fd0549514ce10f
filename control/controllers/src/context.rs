//! What every controller shares: the client, the shared Pod and Node informers, the event
//! recorder and the manager's settings.

use std::time::Duration;

use baton_client::{CachedPod, Informer};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::ControllerManagerArgs;

/// Shared state of the controllers of one controller manager.
pub struct Context {
    /// The API server client every controller uses.
    pub client: Client,
    /// Every Pod in the cluster, as cached Pods slimmed for the controllers
    /// (`baton_client::slim::pod_for_controllers`).
    pub pods: Informer<CachedPod>,
    /// Every Node in the cluster, slimmed (`baton_client::slim::node_for_controllers`).
    pub nodes: Informer<Node>,
    /// --node-monitor-grace-period: how long a Node may go without a heartbeat before it is
    /// marked unhealthy.
    pub node_monitor_grace_period: Duration,
    /// --node-monitor-period: how often Node health is checked.
    pub node_monitor_period: Duration,
    /// `Some` when node CIDRs are allocated: (--cluster-cidr, --node-cidr-mask-size).
    pub node_cidrs: Option<(ipnet::IpNet, u8)>,
    /// --concurrent-syncs: how many objects each workload controller reconciles at once.
    pub concurrent_syncs: u16,
    /// --node-startup-grace-period.
    pub node_startup_grace_period: Duration,
    /// --terminated-pod-gc-threshold (0: no limit).
    pub terminated_pod_gc_threshold: i64,
    /// The CA bundle published as kube-root-ca.crt (--root-ca-file, else the kubeconfig's).
    pub root_ca_pem: Option<String>,
    /// --local-path-root: where the local-path provisioner's volumes go on each node.
    pub local_path_root: std::path::PathBuf,
    /// --default-storage-class: the class to make at start ("" for none).
    pub default_storage_class: String,
    /// The shared Pod cache indexed by node, made on first use (see `pods_by_node()`).
    pub(crate) pods_by_node: std::sync::OnceLock<std::sync::Arc<crate::pods_by_node::PodsByNode>>,
    /// Services and the Pods of each namespace, for the endpoint controllers, made on first
    /// use (see `service_cache()`).
    pub(crate) service_cache:
        std::sync::OnceLock<std::sync::Arc<crate::service_endpoints::ServiceCache>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("pods", &self.pods)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(
        client: Client,
        args: &ControllerManagerArgs,
        root_ca_pem: Option<String>,
    ) -> Self {
        Context {
            // Slimmed (baton_client::slim): controllers patch pods, never replace them.
            pods: Informer::new(Api::all(client.clone()), watcher::Config::default())
                .with_transform(baton_client::slim::pod_for_controllers),
            nodes: Informer::new(Api::all(client.clone()), watcher::Config::default())
                .with_transform(baton_client::slim::node_for_controllers),
            node_monitor_grace_period: args.node_monitor_grace_period,
            node_monitor_period: args.node_monitor_period,
            node_cidrs: args
                .allocate_node_cidrs
                .then_some((args.cluster_cidr, args.node_cidr_mask_size)),
            concurrent_syncs: args.concurrent_syncs,
            node_startup_grace_period: args.node_startup_grace_period,
            terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
            root_ca_pem,
            local_path_root: args.local_path_root.clone(),
            default_storage_class: args.default_storage_class.clone(),
            pods_by_node: std::sync::OnceLock::new(),
            service_cache: std::sync::OnceLock::new(),
            client,
        }
    }

    /// An event recorder reporting as `controller` (e.g. "replicaset-controller").
    pub fn recorder(&self, controller: &str) -> Recorder {
        Recorder::new(
            self.client.clone(),
            Reporter {
                controller: controller.to_string(),
                instance: None,
            },
        )
    }

    /// Drives the shared informers (forever).
    pub(crate) async fn run_informers(&self) {
        tokio::join!(self.pods.run(), self.nodes.run());
    }

    /// Waits until every shared informer has listed once.
    pub async fn wait_until_ready(&self) {
        tokio::join!(self.pods.wait_until_ready(), self.nodes.wait_until_ready());
    }
}
