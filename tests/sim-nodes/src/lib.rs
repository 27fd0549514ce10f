//! `baton sim-nodes`: a test tool, not a kubelet. Like kwok, it registers Node objects that
//! exist in name only, keeps their Leases in kube-node-lease fresh, and moves the Pods bound to
//! them through the states a kubelet would report (Running and Ready with a pod IP; Succeeded or
//! Failed when a Pod's annotation asks), without running anything. It lets the control plane be
//! tested and benchmarked with many nodes on one machine.
//!
//! Annotations a Pod can carry (on a Job's pod template, say):
//! - `sim-nodes.baton.dev/outcome`: `Succeeded` or `Failed` — the Pod ends that way;
//! - `sim-nodes.baton.dev/run-for`: how long it runs first (`2s`, `500ms`; default `0s`);
//! - `sim-nodes.baton.dev/never-start`: `true` — the Pod stays Pending once bound, as on the
//!   fake nodes of upstream's scheduler_perf, which run nothing and write no status.
//!
//! Stopping the process stops the heartbeats, as a dead kubelet would: the controller
//! manager then marks its nodes unreachable.

mod nodes;
mod pods;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use nodes::SimNode;

/// The label every simulated Node carries.
pub const SIMULATED_LABEL: &str = "sim-nodes.baton.dev/simulated";
/// Pod annotation: the phase the Pod ends in (`Succeeded` or `Failed`).
pub const OUTCOME_ANNOTATION: &str = "sim-nodes.baton.dev/outcome";
/// Pod annotation: how long the Pod runs before it ends (`2s`, `500ms`).
pub const RUN_FOR_ANNOTATION: &str = "sim-nodes.baton.dev/run-for";
/// Pod annotation: `true` leaves the Pod Pending once bound (no status is written).
pub const NEVER_START_ANNOTATION: &str = "sim-nodes.baton.dev/never-start";

/// The most nodes one process simulates (their InternalIPs come from 10.255.0.0/16).
pub const MAX_NODES: usize = 60_000;

/// Flags of `baton sim-nodes`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimNodesArgs {
    /// Path to a kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Node names are PREFIX0, PREFIX1, ...
    #[arg(long = "name-prefix", default_value = "sim-node-")]
    pub name_prefix: String,
    /// CPU capacity of each node.
    #[arg(long, default_value = "32")]
    pub cpu: String,
    /// Memory capacity of each node.
    #[arg(long, default_value = "256Gi")]
    pub memory: String,
    /// Pod capacity of each node.
    #[arg(long, default_value_t = 110)]
    pub pods: u32,
    /// Extra labels for every node (`key=value`, repeatable), e.g. a zone.
    #[arg(long = "node-label")]
    pub node_labels: Vec<String>,
    /// Taints for every node (`key=value:Effect` or `key:Effect`, repeatable).
    #[arg(long = "node-taint")]
    pub node_taints: Vec<String>,
    /// How often each node renews its Lease (the kubelet's default is 10 s).
    #[arg(long = "lease-renew-interval", default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_interval: Duration,
    /// Status updates in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// The simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimNodesError {
    #[error("connecting to the API server")]
    Connect(#[from] baton_client::ConnectError),
    #[error("--node-label {0:?}: expected key=value")]
    Label(String),
    #[error("--node-taint {0:?}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")]
    Taint(String),
    /// A zero renew interval would renew in a busy loop.
    #[error("--lease-renew-interval must be more than 0s")]
    RenewInterval,
    /// More nodes than the made-up address range holds.
    #[error("--count {0}: at most {MAX_NODES} simulated nodes")]
    Count(usize),
    #[error("registering node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
}

pub use baton_client::parse_duration;

/// Registers the nodes, then heartbeats and runs their pods until the process is stopped.
pub async fn run(args: SimNodesArgs) -> Result<(), SimNodesError> {
    if args.lease_renew_interval.is_zero() {
        return Err(SimNodesError::RenewInterval);
    }
    if args.count > MAX_NODES {
        return Err(SimNodesError::Count(args.count));
    }
    let template = nodes::NodeTemplate::from_args(&args)?;
    let client = baton_client::connect(args.kubeconfig.as_deref(), "baton-sim-nodes").await?;
    let names: Vec<String> = (0..args.count)
        .map(|i| format!("{}{i}", args.name_prefix))
        .collect();
    let registered = nodes::register_all(&client, &template, &names, args.concurrency).await?;
    tracing::info!(nodes = registered.len(), "simulated nodes registered");
    let registered = Arc::new(registered);
    let heartbeats = nodes::heartbeat(
        client.clone(),
        names.clone(),
        args.lease_renew_interval,
        args.concurrency,
    );
    let pods = pods::run(client, registered, args.concurrency);
    tokio::join!(heartbeats, pods);
    Ok(())
}
