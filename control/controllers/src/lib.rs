//! `baton controller-manager`: the reconcile loops that make the cluster match what its
//! objects ask for, as kube-controller-manager's do. Each controller is a kube-runtime
//! `Controller` (a work queue, one reconcile at a time per object, retries with backoff) fed
//! by watches; Pods and Nodes come from shared informers so every controller reads the same
//! cache. Only the elected leader runs controllers (`--leader-elect`, Lease
//! kube-system/kube-controller-manager).

mod context;
mod controller_revision;
mod cronjob;
mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
mod endpointslice;
mod failure_backoff;
mod garbage_collector;
mod job;
mod namespace;
mod node_ipam;
mod node_lifecycle;
mod per_namespace;
pub mod pod_control;
mod pod_gc;
mod pods_by_node;
mod replicaset;
mod root_ca_publisher;
mod service_endpoints;
mod serviceaccount;
mod statefulset;
mod taint_eviction;
mod ttl_after_finished;
mod volume;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use context::Context;

/// Flags of `baton controller-manager`, with kube-controller-manager's names.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerManagerArgs {
    /// Path to a kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub leader_election: baton_leader_election::LeaderElectionArgs,
    /// Controllers to enable: '*' for all, 'foo' to enable one, '-foo' to disable one.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,
    /// How long a node may go without a heartbeat (its Lease) before it is marked unhealthy.
    #[arg(long = "node-monitor-grace-period", default_value = "40s", value_parser = baton_leader_election::parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    #[arg(long = "node-monitor-period", default_value = "5s", value_parser = baton_leader_election::parse_duration)]
    pub node_monitor_period: Duration,
    /// Give every node a spec.podCIDR out of --cluster-cidr. Unlike upstream, on by default:
    /// Baton's pod network needs it.
    #[arg(long = "allocate-node-cidrs", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allocate_node_cidrs: bool,
    /// The CIDR range of pods in the cluster.
    #[arg(long = "cluster-cidr", default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::IpNet,
    /// The prefix length of each node's pod CIDR.
    #[arg(long = "node-cidr-mask-size", default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Reconciles run at once per workload controller (upstream's --concurrent-*-syncs).
    #[arg(long = "concurrent-syncs", default_value_t = 5)]
    pub concurrent_syncs: u16,
    /// How long a node that never reported its status may stay so before it is marked
    /// unhealthy.
    #[arg(long = "node-startup-grace-period", default_value = "1m", value_parser = baton_leader_election::parse_duration)]
    pub node_startup_grace_period: Duration,
    /// Terminated Pods kept before the Pod garbage collector deletes the oldest (0: no limit).
    #[arg(long = "terminated-pod-gc-threshold", default_value_t = 12500)]
    pub terminated_pod_gc_threshold: i64,
    /// The CA bundle (PEM) published to every namespace as ConfigMap kube-root-ca.crt; by
    /// default the CA the kubeconfig trusts for the API server.
    #[arg(long = "root-ca-file")]
    pub root_ca_file: Option<PathBuf>,
    /// Where on each node the baton.dev/local-path provisioner puts the volumes it makes
    /// (Baton's own flag).
    #[arg(long = "local-path-root", default_value = "/var/lib/baton/local-path")]
    pub local_path_root: PathBuf,
    /// Make this StorageClass (the default class, provisioner baton.dev/local-path,
    /// WaitForFirstConsumer) when the binder starts and no class of that name exists, as kind
    /// and k3s install theirs; empty for none (Baton's own flag).
    #[arg(long = "default-storage-class", default_value = "")]
    pub default_storage_class: String,
}

/// The controller manager could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerManagerError {
    #[error("connecting to the API server")]
    Connect(#[from] baton_client::ConnectError),
    #[error(transparent)]
    LeaderElection(#[from] baton_leader_election::LeaderElectionError),
    /// The leader-election flags do not fit together.
    #[error(transparent)]
    LeaderElectionConfig(#[from] baton_leader_election::LeaderElectionConfigError),
    /// --root-ca-file could not be read.
    #[error("--root-ca-file: reading {path}")]
    RootCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--controllers: unknown controller {0:?} (known: {known})", known = known_controllers())]
    UnknownController(String),
    #[error(
        "--node-cidr-mask-size {mask}: must be at least the prefix of --cluster-cidr {cidr} and at most {max}"
    )]
    NodeCidrMask {
        mask: u8,
        cidr: ipnet::IpNet,
        max: u8,
    },
}

/// Starts one controller: registers what it watches on the shared informers (synchronously,
/// before they run) and returns the loop to run once the caches are ready.
type StartFn = fn(&Arc<Context>) -> BoxFuture<'static, ()>;

/// Every controller, by its kube-controller-manager name.
const CONTROLLERS: &[(&str, StartFn)] = &[
    ("endpoints-controller", endpoints::start),
    ("endpointslice-controller", endpointslice::start),
    ("namespace-controller", namespace::start),
    ("garbage-collector-controller", garbage_collector::start),
    ("serviceaccount-controller", serviceaccount::start),
    (
        "root-ca-certificate-publisher-controller",
        root_ca_publisher::start,
    ),
    ("node-lifecycle-controller", node_lifecycle::start),
    ("taint-eviction-controller", taint_eviction::start),
    ("node-ipam-controller", node_ipam::start),
    ("pod-garbage-collector-controller", pod_gc::start),
    ("daemonset-controller", daemonset::start),
    ("replicaset-controller", replicaset::start),
    ("deployment-controller", deployment::start),
    ("statefulset-controller", statefulset::start),
    ("job-controller", job::start),
    ("cronjob-controller", cronjob::start),
    ("ttl-after-finished-controller", ttl_after_finished::start),
    ("disruption-controller", disruption::start),
    ("persistentvolume-binder-controller", volume::start),
];

fn known_controllers() -> String {
    CONTROLLERS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which controllers `--controllers` enables, in CONTROLLERS order.
fn enabled_controllers(
    flags: &[String],
) -> Result<Vec<(&'static str, StartFn)>, ControllerManagerError> {
    for flag in flags {
        let name = flag.trim_start_matches('-');
        if name != "*" && !CONTROLLERS.iter().any(|(known, _)| *known == name) {
            return Err(ControllerManagerError::UnknownController(flag.clone()));
        }
    }
    let all = flags.iter().any(|f| f == "*");
    Ok(CONTROLLERS
        .iter()
        .filter(|(name, _)| {
            let disabled = flags.iter().any(|f| f.strip_prefix('-') == Some(name));
            let named = flags.iter().any(|f| f == name);
            !disabled && (all || named)
        })
        .copied()
        .collect())
}

/// Runs the controller manager until it loses leadership or fails.
pub async fn run(args: ControllerManagerArgs) -> Result<(), ControllerManagerError> {
    let enabled = enabled_controllers(&args.controllers)?;
    args.leader_election.validate()?;
    let max_mask = if args.cluster_cidr.addr().is_ipv4() {
        32
    } else {
        128
    };
    if args.node_cidr_mask_size < args.cluster_cidr.prefix_len()
        || args.node_cidr_mask_size > max_mask
    {
        return Err(ControllerManagerError::NodeCidrMask {
            mask: args.node_cidr_mask_size,
            cidr: args.cluster_cidr,
            max: max_mask,
        });
    }
    let root_ca_from_file = match &args.root_ca_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
            ControllerManagerError::RootCa {
                path: path.clone(),
                source,
            }
        })?),
        None => None,
    };
    let config =
        baton_client::load_config(args.kubeconfig.as_deref(), "kube-controller-manager").await?;
    let root_ca_pem = root_ca_from_file.or_else(|| baton_client::root_ca_pem(&config));
    let client = baton_client::client(&config)
        .await
        .map_err(ControllerManagerError::Connect)?;
    let work = run_controllers(client.clone(), args.clone(), root_ca_pem, enabled);
    if args.leader_election.leader_elect {
        let elector = baton_leader_election::LeaderElector::new(
            client,
            &args.leader_election,
            "kube-controller-manager",
        );
        elector.run(work).await?;
    } else {
        work.await;
    }
    Ok(())
}

async fn run_controllers(
    client: kube::Client,
    args: ControllerManagerArgs,
    root_ca_pem: Option<String>,
    enabled: Vec<(&'static str, StartFn)>,
) {
    let ctx = Arc::new(Context::new(client, &args, root_ca_pem));
    let loops: Vec<_> = enabled
        .iter()
        .map(|(name, start)| (*name, start(&ctx)))
        .collect();
    let informers = ctx.run_informers();
    let controllers = async {
        ctx.wait_until_ready().await;
        tracing::info!(controllers = %loops.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(","), "caches synced; starting controllers");
        futures::future::join_all(loops.into_iter().map(|(_, l)| l)).await;
    };
    tokio::join!(informers, controllers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_controller_is_named() {
        let err = enabled_controllers(&["*".into(), "-nosuch".into()]).unwrap_err();
        assert!(err.to_string().contains("\"-nosuch\""), "{err}");
    }
}
