//! `baton cluster`: local clusters from the Baton image (see the baton-cluster crate).

use clap::Subcommand;

/// `baton cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Boot a cluster on this machine and merge its kubeconfig context (`baton-NAME`).
    Create(Box<baton_cluster::CreateArgs>),
    /// List the clusters of this machine.
    List,
    /// Show a cluster's nodes, their processes, addresses and boot times.
    Status {
        /// The cluster's name.
        name: String,
    },
    /// Shut a cluster's nodes down and remove its network, keeping its data for `start`.
    Stop {
        /// The cluster's name.
        name: String,
    },
    /// Boot a stopped cluster again (after `stop`, or after the host restarted).
    Start(baton_cluster::StartArgs),
    /// Stop every node of a cluster and remove everything it made.
    Destroy {
        /// The cluster's name.
        name: String,
    },
    /// Relay 127.0.0.1 to the API server inside the cluster network (started by `create`).
    #[command(hide = true)]
    Forward(baton_cluster::ForwardArgs),
    /// Run a microVM node's VMM, again after each reboot (started by `create`).
    #[command(hide = true)]
    VmMonitor(baton_cluster::microvm_node::VmMonitorArgs),
}

/// Runs the subcommand.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Create(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(baton_cluster::create_cluster(&args))?;
        }
        ClusterCommand::List => {
            let clusters: Vec<baton_cluster::ClusterState> =
                baton_cluster::state::ClusterState::list_names()
                    .iter()
                    .filter_map(|name| {
                        baton_cluster::ClusterState::load(&baton_cluster::cluster_dir(name)).ok()
                    })
                    .collect();
            print!("{}", baton_cluster::status::list_table(&clusters));
        }
        ClusterCommand::Status { name } => {
            let state = load(&name)?;
            print!("{}", baton_cluster::status::status_table(&state));
        }
        ClusterCommand::Stop { name } => {
            let (_lock, mut state) = load_locked(&name)?;
            baton_cluster::stop_cluster(&mut state)?;
            println!("cluster {name} stopped");
        }
        ClusterCommand::Start(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(baton_cluster::start_cluster(&args))?;
        }
        ClusterCommand::Destroy { name } => {
            let (_lock, state) = load_locked(&name)?;
            baton_cluster::destroy_cluster(&state)?;
            println!("cluster {name} destroyed");
        }
        ClusterCommand::Forward(args) => baton_cluster::run_forwarder(&args)?,
        ClusterCommand::VmMonitor(args) => {
            std::process::exit(baton_cluster::microvm_node::run_vm_monitor(&args))
        }
    }
    Ok(())
}

/// Loads cluster `name`'s state under its lock, for a command that changes the cluster.
fn load_locked(
    name: &str,
) -> anyhow::Result<(
    baton_cluster::state::ClusterLock,
    baton_cluster::ClusterState,
)> {
    load(name)?;
    let lock = baton_cluster::state::ClusterLock::acquire(&baton_cluster::cluster_dir(name), name)
        .map_err(anyhow::Error::msg)?;
    Ok((lock, load(name)?))
}

fn load(name: &str) -> anyhow::Result<baton_cluster::ClusterState> {
    let dir = baton_cluster::cluster_dir(name);
    if !dir.join(baton_cluster::state::STATE_FILE).exists() {
        anyhow::bail!("no cluster named {name} (see `baton cluster list`)");
    }
    Ok(baton_cluster::ClusterState::load(&dir)?)
}
