//! `baton cluster start NAME`: boots a stopped cluster again (after `cluster stop`, or after
//! the host restarted) from what its directory kept: the same machine configurations and PKI,
//! and each node's root and /var (etcd's data, the kubelet's state), so that every object and
//! every node comes back. It makes the cluster network again, boots the nodes, starts the
//! forwarder on the port the kubeconfig names, and waits as `create` does. On failure the
//! cluster is stopped again, its data kept.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::boot::{
    BootClusterError, BootedNode, NodeBoot, boot_node, make_network, merge_kubeconfig_step, save,
    show_consoles, start_forwarder, wait_until_serving,
};
use crate::create::{Provider, memory_fits};
use crate::progress::Progress;
use crate::state::{
    ClusterLock, ClusterState, ClusterStateError, cluster_dir, forwarder_marker, node_running,
    process_matches,
};
use crate::stop::{StopClusterError, stop_cluster};

/// `baton cluster start` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct StartArgs {
    /// The cluster's name.
    pub name: String,
    /// How long to wait for every node to be Ready and DNS to answer.
    #[arg(long, default_value = "5m", value_parser = baton_client::parse_duration)]
    pub wait: Duration,
}

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartClusterError {
    /// The cluster cannot be started as it is (nothing was changed).
    #[error("{0}")]
    Refused(String),
    /// Its state could not be read.
    #[error("reading the cluster's state")]
    State(#[from] ClusterStateError),
    /// What a previous run left could not be removed first.
    #[error("clearing what the cluster's last run left")]
    Clear(#[source] StopClusterError),
    /// Booting failed (the cluster was stopped again, its data kept).
    #[error(transparent)]
    Boot(#[from] BootClusterError),
}

/// Checks that cluster `state`, whose directory is `dir`, can start here; says why not
/// otherwise.
fn check_startable(state: &ClusterState, dir: &Path) -> Result<Provider, String> {
    let name = &state.name;
    let provider = Provider::from_name(&state.provider).ok_or_else(|| {
        format!(
            "cluster {name} has an unknown provider {:?}",
            state.provider
        )
    })?;
    if provider != Provider::Process
        && let Some(node) = state
            .nodes
            .iter()
            .find(|node| !node.dir.join(crate::boot::DATA_DISK_FILE).exists())
    {
        return Err(format!(
            "node {} of cluster {name} has no data disk ({} in {}; a {} node made before data \
             disks kept its /var in memory): nothing of the cluster outlived its nodes \
             (`baton cluster destroy {name}` and create it again)",
            node.name,
            crate::boot::DATA_DISK_FILE,
            node.dir.display(),
            provider.name()
        ));
    }
    let running: Vec<&str> = state
        .nodes
        .iter()
        .filter(|node| node_running(state, node))
        .map(|node| node.name.as_str())
        .collect();
    if !running.is_empty() {
        return Err(format!(
            "cluster {name} is running (nodes {}; `baton cluster stop {name}` stops it)",
            running.join(", ")
        ));
    }
    if state
        .forwarder_pid
        .is_some_and(|pid| process_matches(pid, &forwarder_marker(state)))
    {
        return Err(format!(
            "cluster {name}'s forwarder is running (`baton cluster stop {name}` stops it)"
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "cluster start {name}: needs root (it makes network namespaces, mounts and cgroups)"
        ));
    }
    // A create that was killed before it finished (its cleanup never ran).
    let node_dirs = std::fs::read_dir(dir.join("nodes"))
        .map(|entries| entries.flatten().count())
        .unwrap_or(0);
    if !state.admin_kubeconfig.exists()
        || !state
            .nodes
            .iter()
            .any(|n| n.role == baton_init::Role::ControlPlane.as_str())
        || state.nodes.len() != node_dirs
    {
        return Err(format!(
            "the create of cluster {name} never finished (`baton cluster destroy {name}` removes it)"
        ));
    }
    // The same name in another data directory: its namespaces are this cluster's names.
    if let Some(pin) = std::iter::once(&state.netns)
        .chain(&state.pins)
        .find(|pin| crate::state::namespace_in_use(pin))
    {
        return Err(format!(
            "{} is in use (a cluster named {name} of another data directory runs)",
            pin.display()
        ));
    }
    let image_present = match provider {
        Provider::Process => crate::image_cache::is_unpacked_root(&state.image_root),
        Provider::Qemu | Provider::Microvm => {
            crate::image_cache::is_bootable_image(&state.image_root)
        }
    };
    if !image_present {
        return Err(format!(
            "cluster {name}'s node image {} is gone (removed from the image cache); \
             `baton cluster destroy {name}` and create it again",
            state.image_root.display()
        ));
    }
    for node in &state.nodes {
        if !node.dir.join("machine-config.yaml").exists() {
            return Err(format!(
                "node {} of cluster {name} has no machine configuration in {}",
                node.name,
                node.dir.display()
            ));
        }
    }
    if std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, state.api_port)).is_err() {
        return Err(format!(
            "127.0.0.1:{}, the API server's port in cluster {name}'s kubeconfig, is taken by another program",
            state.api_port
        ));
    }
    memory_fits(
        state.nodes.len() as u64,
        state
            .memory_mib
            .unwrap_or(crate::create::DEFAULT_MEMORY_MIB),
    )?;
    Ok(provider)
}

/// Starts the stopped cluster `args.name`. Returns the time until every node was Ready and
/// DNS answered.
pub async fn start_cluster(args: &StartArgs) -> Result<Duration, StartClusterError> {
    let dir = cluster_dir(&args.name);
    if !dir.join(crate::state::STATE_FILE).exists() {
        return Err(StartClusterError::Refused(format!(
            "no cluster named {} (see `baton cluster list`)",
            args.name
        )));
    }
    let _lock = ClusterLock::acquire(&dir, &args.name).map_err(StartClusterError::Refused)?;
    let mut state = ClusterState::load(&dir)?;
    let provider = check_startable(&state, &dir).map_err(StartClusterError::Refused)?;
    // What a run that ended without `stop` (a host restart, a killed node) may have left:
    // empty cgroups, namespace pins.
    stop_cluster(&mut state).map_err(StartClusterError::Clear)?;
    let progress = Progress::default();
    match boot(&mut state, provider, args.wait, &progress).await {
        Ok(ready_after) => Ok(ready_after),
        Err(err) => {
            show_consoles(&progress, &state);
            progress.note("stopping the cluster again (its data is kept)");
            if let Err(cleanup) = stop_cluster(&mut state) {
                progress.note(&format!("stopping failed: {cleanup}"));
            }
            Err(err.into())
        }
    }
}

async fn boot(
    state: &mut ClusterState,
    provider: Provider,
    wait: Duration,
    progress: &Progress,
) -> Result<Duration, BootClusterError> {
    let deadline = Instant::now() + wait;
    // Every process of the cluster's last run has ended (stop_cluster), but one may have posted
    // its node's status within this very second, and status times count whole seconds: only a
    // status from the next second on is surely from this boot, and the nodes boot no earlier.
    let booted_at = crate::state::now_secs() + 1;
    if state.cpus.is_none() || state.memory_mib.is_none() {
        progress.note(&format!(
            "cluster {} was made before --cpus and --memory were recorded: its nodes start with the defaults ({} CPU, {} MiB)",
            state.name,
            crate::create::DEFAULT_CPUS,
            crate::create::DEFAULT_MEMORY_MIB
        ));
    }
    macro_rules! attempt {
        ($result:expr, $step:expr) => {
            match $result {
                Ok(value) => value,
                Err(err) => {
                    $step.failed();
                    return Err(err);
                }
            }
        };
    }
    let step = progress.step("Making the cluster network");
    let names: Vec<String> = state.nodes.iter().map(|node| node.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (cluster_ns, links) = attempt!(make_network(state, provider, &names), step);
    step.done(crate::network::CLUSTER_NETWORK);

    let step = progress.step(&format!(
        "Booting {} nodes ({} provider)",
        state.nodes.len(),
        provider.name()
    ));
    let boot = attempt!(NodeBoot::of(state, provider), step);
    // Under a second, and mostly spent making the network above: what makes `booted_at` a
    // bound that the last run's statuses cannot reach.
    sleep_until_second(booted_at).await;
    for (index, link) in links.iter().enumerate() {
        let node = state.nodes[index].clone();
        let to_boot = BootedNode {
            index,
            name: &node.name,
            role: &node.role,
            ip: node.ip,
            dir: &node.dir,
        };
        state.nodes[index] = attempt!(boot_node(&boot, &cluster_ns, to_boot, link), step);
        attempt!(save(state), step);
    }
    step.done("");

    let step = progress.step("Starting the API server forwarder");
    state.forwarder_pid = Some(attempt!(start_forwarder(state, &boot.exe), step));
    attempt!(save(state), step);
    step.done(&format!("https://127.0.0.1:{}", state.api_port));

    wait_until_serving(state, &cluster_ns, deadline, booted_at, progress).await?;
    let ready_after = progress.elapsed();

    // The context again, in case it was removed from the kubeconfig meanwhile.
    let context = merge_kubeconfig_step(state, progress)?;
    progress.note(&format!(
        "Cluster {} is running again ({:.1}s). Try:\n  kubectl --context {context} get nodes",
        state.name,
        ready_after.as_secs_f64()
    ));
    Ok(ready_after)
}

/// Sleeps until the wall clock reaches `second` (seconds since the epoch).
async fn sleep_until_second(second: u64) {
    let target = std::time::UNIX_EPOCH + Duration::from_secs(second);
    if let Ok(left) = target.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeState;

    /// A stopped process cluster whose files are under `dir`.
    fn stopped_cluster(dir: &Path) -> ClusterState {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(".baton-unpacked"), "sha").unwrap();
        let node_dir = dir.join("nodes/control-plane-1");
        std::fs::create_dir_all(&node_dir).unwrap();
        std::fs::write(node_dir.join("machine-config.yaml"), "").unwrap();
        std::fs::write(dir.join("admin.kubeconfig"), "").unwrap();
        ClusterState {
            name: "c1".into(),
            provider: "process".into(),
            created_at: 0,
            image_root: root,
            netns: dir.join("netns"),
            gateway: std::net::Ipv4Addr::new(10, 251, 0, 1),
            pins: Vec::new(),
            cpus: Some(1),
            memory_mib: Some(256),
            nodes: vec![NodeState {
                name: "control-plane-1".into(),
                role: "control-plane".into(),
                ip: std::net::Ipv4Addr::new(10, 251, 0, 10),
                pid: None,
                dir: node_dir.clone(),
                netns: dir.join("node-netns"),
                cgroups: Vec::new(),
                console: node_dir.join("console.log"),
                started_at: 0,
                ready_after_ms: None,
            }],
            forwarder_pid: None,
            api_port: 0,
            kubeconfig: dir.join("kubeconfig"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
        }
    }

    /// (Runs as root, as `cluster start` does: a non-root caller is refused first.)
    #[test]
    fn what_cannot_start_is_refused_naming_why() {
        let dir = tempfile::tempdir().unwrap();
        let state = stopped_cluster(dir.path());
        assert_eq!(check_startable(&state, dir.path()), Ok(Provider::Process));

        let mut qemu = state.clone();
        qemu.provider = "qemu".into();
        let refused = check_startable(&qemu, dir.path()).unwrap_err();
        assert!(
            refused.starts_with("node control-plane-1 of cluster c1 has no data disk (data.img"),
            "{refused}"
        );
        crate::boot::create_data_disk(&qemu.nodes[0].dir).unwrap();
        // A VM cluster's image is the directory of its kernel and initramfs.
        let refused = check_startable(&qemu, dir.path()).unwrap_err();
        assert!(refused.contains("node image"), "{refused}");
        for file in ["vmlinuz", "initramfs.cpio.gz"] {
            std::fs::write(qemu.image_root.join(file), "").unwrap();
        }
        assert_eq!(check_startable(&qemu, dir.path()), Ok(Provider::Qemu));

        let taken = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut port_taken = state.clone();
        port_taken.api_port = taken.local_addr().unwrap().port();
        let refused = check_startable(&port_taken, dir.path()).unwrap_err();
        assert!(refused.contains("is taken by another program"), "{refused}");

        let no_config = stopped_cluster(&dir.path().join("no-config"));
        std::fs::remove_file(no_config.nodes[0].dir.join("machine-config.yaml")).unwrap();
        let refused = check_startable(&no_config, &dir.path().join("no-config")).unwrap_err();
        assert!(
            refused.starts_with("node control-plane-1 of cluster c1 has no machine configuration"),
            "{refused}"
        );

        let no_root = stopped_cluster(&dir.path().join("no-root"));
        std::fs::remove_file(no_root.image_root.join(".baton-unpacked")).unwrap();
        let refused = check_startable(&no_root, &dir.path().join("no-root")).unwrap_err();
        assert!(refused.contains("node image"), "{refused}");

        // A create killed half way: a node directory it never recorded, or no admin
        // kubeconfig yet.
        let unfinished_dir = dir.path().join("unfinished");
        let unfinished = stopped_cluster(&unfinished_dir);
        std::fs::create_dir_all(unfinished_dir.join("nodes/worker-1")).unwrap();
        let refused = check_startable(&unfinished, &unfinished_dir).unwrap_err();
        assert_eq!(
            refused,
            "the create of cluster c1 never finished (`baton cluster destroy c1` removes it)"
        );
        std::fs::remove_dir(unfinished_dir.join("nodes/worker-1")).unwrap();
        std::fs::remove_file(unfinished_dir.join("admin.kubeconfig")).unwrap();
        assert_eq!(
            check_startable(&unfinished, &unfinished_dir).unwrap_err(),
            refused
        );

        let mut too_big = stopped_cluster(dir.path());
        too_big.memory_mib = Some(u64::MAX / 4);
        let refused = check_startable(&too_big, dir.path()).unwrap_err();
        assert!(refused.contains("MiB available"), "{refused}");
    }
}
