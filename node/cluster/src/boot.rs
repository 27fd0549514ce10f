//! What `cluster create` and `cluster start` share: making the cluster's network, booting a
//! node with its provider, starting the forwarder, and waiting for the API server, the nodes
//! and DNS. Every step records what it made in the cluster's state before making it, so that
//! a failure can remove it again.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_network::NetNs;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::Api;

use crate::create::Provider;
use crate::network::{create_cluster_network, create_node_network};
use crate::progress::Progress;
use crate::state::{ClusterState, NodeState, cluster_dir, now_secs};

/// Why a step of booting a cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum BootClusterError {
    /// A step failed.
    #[error("{step}")]
    Step {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step for one node failed.
    #[error("{step} node {node}")]
    NodeStep {
        /// The step.
        step: &'static str,
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A node's process ended while the cluster was starting.
    #[error("node {0} stopped while the cluster was starting (its console is below)")]
    NodeStopped(String),
    /// The forwarder ended while the cluster was starting.
    #[error("the API server forwarder stopped (see {})", .0.display())]
    ForwarderStopped(PathBuf),
}

/// Wraps an error as the failure of `step`.
pub(crate) fn boot_step<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
) -> impl FnOnce(E) -> BootClusterError {
    move |err| BootClusterError::Step {
        step,
        source: Box::new(err),
    }
}

/// Wraps an error as the failure of `step` for `node`.
fn node_step<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
    node: &str,
) -> impl FnOnce(E) -> BootClusterError {
    let node = node.to_string();
    move |err| BootClusterError::NodeStep {
        step,
        node,
        source: Box::new(err),
    }
}

/// Why waiting failed.
#[derive(Debug, thiserror::Error)]
enum WaitError {
    #[error("connecting to the API server")]
    Connect(#[from] baton_client::ConnectError),
    #[error("{0} (see `baton cluster status` and the nodes' console.log)")]
    Timeout(String),
    #[error("querying DNS")]
    Dns(#[from] baton_network::NetNsError),
}

/// A VM node's data disk, in its directory: a sparse raw image the guest formats at its first
/// boot and keeps its /var on, so that a stopped cluster starts again with what it held.
pub const DATA_DISK_FILE: &str = "data.img";
/// The data disk's size (sparse: the host's disk holds only what the node wrote).
pub const DATA_DISK_BYTES: u64 = 8 << 30;
/// The device a VM node sees its data disk as (its only virtio block device).
pub const DATA_DISK_DEVICE: &str = "/dev/vda";

/// Makes the empty data disk of the VM node whose directory is `node_dir`.
pub(crate) fn create_data_disk(node_dir: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(node_dir.join(DATA_DISK_FILE))?
        .set_len(DATA_DISK_BYTES)
}

/// How the nodes of a cluster boot.
#[derive(Clone, Debug)]
pub(crate) struct NodeBoot {
    /// The cluster's name.
    pub cluster: String,
    /// The provider.
    pub provider: Provider,
    /// The unpacked image root (process), or the image directory (qemu).
    pub image_root: PathBuf,
    /// This program (the process provider's nodes run `baton sandbox run`).
    pub exe: PathBuf,
    /// Memory per node, MiB.
    pub memory_mib: u64,
    /// CPUs per node.
    pub cpus: u32,
    /// Whether QEMU uses KVM (else software emulation).
    pub kvm: bool,
}

impl NodeBoot {
    /// How the nodes of the cluster `state` describes boot.
    pub fn of(state: &ClusterState, provider: Provider) -> Result<Self, BootClusterError> {
        Ok(NodeBoot {
            cluster: state.name.clone(),
            provider,
            image_root: state.image_root.clone(),
            exe: std::env::current_exe().map_err(boot_step("finding this program"))?,
            memory_mib: state
                .memory_mib
                .unwrap_or(crate::create::DEFAULT_MEMORY_MIB),
            cpus: state.cpus.unwrap_or(crate::create::DEFAULT_CPUS),
            kvm: provider == Provider::Qemu && crate::create::kvm_check().linux_usable,
        })
    }
}

/// A node to boot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BootedNode<'a> {
    /// Its place in the cluster (its veth or tap and MAC address).
    pub index: usize,
    /// Its name.
    pub name: &'a str,
    /// `control-plane` or `worker`.
    pub role: &'a str,
    /// Its address on the cluster network.
    pub ip: Ipv4Addr,
    /// Its directory.
    pub dir: &'a Path,
}

impl BootedNode<'_> {
    fn machine_config(&self) -> PathBuf {
        self.dir.join("machine-config.yaml")
    }
}

/// Saves `state` in its cluster's directory.
pub(crate) fn save(state: &ClusterState) -> Result<(), BootClusterError> {
    state
        .save(&cluster_dir(&state.name))
        .map_err(boot_step("saving the cluster's state"))
}

/// Makes the cluster network: the cluster's namespace with its bridge, and per node (in the
/// order of `nodes`) its namespace (process) or its tap on the bridge (qemu). Returns the
/// cluster's namespace and each node's link (a namespace pin or a tap's name). The pins are
/// in `state` (and saved) before they are made.
pub(crate) fn make_network(
    state: &mut ClusterState,
    provider: Provider,
    nodes: &[&str],
) -> Result<(NetNs, Vec<OsString>), BootClusterError> {
    let mut pins = vec![state.netns.clone()];
    if provider == Provider::Process {
        pins.extend(
            nodes
                .iter()
                .map(|node| crate::network::node_netns_path(&state.name, node)),
        );
    }
    for pin in pins {
        if !state.pins.contains(&pin) {
            state.pins.push(pin);
        }
    }
    save(state)?;
    let cluster_ns =
        create_cluster_network(&state.name).map_err(boot_step("making the cluster network"))?;
    let mut links = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let link = match provider {
            Provider::Process => create_node_network(&cluster_ns, &state.name, node, index)
                .map(|path| path.into_os_string()),
            _ => crate::network::create_node_tap(&cluster_ns, index).map(Into::into),
        };
        links.push(link.map_err(node_step("making the network of", node))?);
    }
    Ok((cluster_ns, links))
}

/// Boots `node` with `boot.provider`, plugged into `link` (from [`make_network`]), and returns
/// its state (its process is not waited for: it outlives this command).
pub(crate) fn boot_node(
    boot: &NodeBoot,
    cluster_ns: &NetNs,
    node: BootedNode<'_>,
    link: &OsString,
) -> Result<NodeState, BootClusterError> {
    let console = node.dir.join("console.log");
    let config_path = node.machine_config();
    let mut booted = NodeState {
        name: node.name.to_string(),
        role: node.role.to_string(),
        ip: node.ip,
        pid: None,
        dir: node.dir.to_path_buf(),
        netns: PathBuf::from(link),
        cgroups: Vec::new(),
        console: console.clone(),
        started_at: now_secs(),
        ready_after_ms: None,
    };
    if matches!(boot.provider, Provider::Qemu | Provider::Microvm) {
        let yaml = std::fs::read_to_string(&config_path)
            .map_err(node_step("reading the machine configuration of", node.name))?;
        let initrd = crate::qemu_node::write_node_initrd(&boot.image_root, node.dir, &yaml)
            .map_err(node_step("writing the initrd of", node.name))?;
        booted.netns = crate::network::cluster_netns_path(&boot.cluster);
        let tap = link.to_string_lossy();
        let mac = crate::qemu_node::mac_address(node.index);
        let data_disk = node.dir.join(DATA_DISK_FILE);
        let machine = crate::vm_machine::VmMachine {
            image_dir: &boot.image_root,
            initrd: &initrd,
            console: &console,
            tap: &tap,
            mac: &mac,
            data_disk: &data_disk,
            memory_mib: boot.memory_mib,
            cpus: boot.cpus,
        };
        if boot.provider == Provider::Microvm {
            let vm = crate::microvm_node::MicrovmNode {
                machine,
                netns: &booted.netns,
                api_socket: &node.dir.join("vmm.sock"),
            };
            let mut args: Vec<OsString> = vec!["cluster".into(), "vm-monitor".into(), "--".into()];
            args.extend(vm.vmm_args());
            let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
            let pid = spawn_detached(&boot.exe, &args, &node.dir.join("vmm.log"))
                .map_err(node_step("starting the VMM of", node.name))?;
            booted.pid = Some(pid);
            return Ok(booted);
        }
        let qemu = crate::qemu_node::QemuNode {
            machine,
            kvm: boot.kvm,
        };
        let qemu_args = qemu.args();
        let qemu_args: Vec<&std::ffi::OsStr> = qemu_args.iter().map(|a| a.as_os_str()).collect();
        // Started from inside the cluster's namespace, where its tap is: QEMU finds the tap
        // by name in its own namespace.
        let pid = cluster_ns
            .run(|| {
                spawn_detached(
                    Path::new(crate::qemu_node::QEMU),
                    &qemu_args,
                    &node.dir.join("qemu.log"),
                )
            })
            .map_err(std::io::Error::other)
            .and_then(|spawned| spawned)
            .map_err(node_step("starting QEMU for", node.name))?;
        booted.pid = Some(pid);
        return Ok(booted);
    }
    let cgroup = format!("baton/{}/{}", boot.cluster, node.name);
    booted.cgroups = baton_sandbox::NodeCgroups::for_this_process(&cgroup)
        .map_err(node_step("finding the cgroups of", node.name))?
        .dirs;
    let pid = spawn_detached(
        &boot.exe,
        &[
            "sandbox".as_ref(),
            "run".as_ref(),
            "--image-root".as_ref(),
            boot.image_root.as_os_str(),
            "--node-dir".as_ref(),
            node.dir.as_os_str(),
            "--netns".as_ref(),
            link.as_os_str(),
            "--cgroup".as_ref(),
            cgroup.as_ref(),
            "--machine-config".as_ref(),
            config_path.as_os_str(),
            "--memory".as_ref(),
            boot.memory_mib.to_string().as_ref(),
            "--cpus".as_ref(),
            boot.cpus.to_string().as_ref(),
        ],
        &console,
    )
    .map_err(node_step("starting", node.name))?;
    booted.pid = Some(pid);
    Ok(booted)
}

/// Starts the forwarder from 127.0.0.1:`state.api_port` to the control-plane nodes' API
/// servers (the first that answers), from inside the cluster's namespace; returns its pid.
pub(crate) fn start_forwarder(state: &ClusterState, exe: &Path) -> Result<u32, BootClusterError> {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, state.api_port));
    let mut args: Vec<OsString> = vec![
        "cluster".into(),
        "forward".into(),
        "--netns".into(),
        state.netns.clone().into(),
        "--listen".into(),
        listen.to_string().into(),
    ];
    for node in state
        .nodes
        .iter()
        .filter(|n| n.role == baton_init::Role::ControlPlane.as_str())
    {
        args.push("--to".into());
        args.push(
            SocketAddr::from((node.ip, baton_init::node_services::SECURE_PORT))
                .to_string()
                .into(),
        );
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    spawn_detached(exe, &args, &forwarder_log(&state.name))
        .map_err(boot_step("starting the forwarder"))
}

fn forwarder_log(cluster: &str) -> PathBuf {
    cluster_dir(cluster).join("forwarder.log")
}

/// Starts `exe args` in a session of its own with its output in `log`, not waited for: it
/// outlives this command.
fn spawn_detached(exe: &Path, args: &[&std::ffi::OsStr], log: &Path) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}

/// Fails when a node's process, or the forwarder, has ended: the console says why.
fn nodes_alive(state: &ClusterState) -> Result<(), BootClusterError> {
    for node in &state.nodes {
        if !node.pid.is_some_and(crate::state::process_alive) {
            return Err(BootClusterError::NodeStopped(node.name.clone()));
        }
    }
    if !state.forwarder_pid.is_some_and(crate::state::process_alive) {
        return Err(BootClusterError::ForwarderStopped(forwarder_log(
            &state.name,
        )));
    }
    Ok(())
}

/// Waits (until `deadline`) for the API server through the forwarder, for every node to be
/// Ready by a status posted since `booted_at`, and for every node's DNS server, each a step of
/// `progress`; records when each node turned Ready in `state`.
pub(crate) async fn wait_until_serving(
    state: &mut ClusterState,
    cluster_ns: &NetNs,
    deadline: Instant,
    booted_at: u64,
    progress: &Progress,
) -> Result<(), BootClusterError> {
    let step = progress.step("Waiting for the API server");
    let client = match wait_for_api(&state.admin_kubeconfig.clone(), deadline, state).await {
        Ok(client) => client,
        Err(err) => {
            step.failed();
            return Err(err);
        }
    };
    step.done("");
    let step = progress.step(&format!(
        "Waiting for {} nodes to be Ready",
        state.nodes.len()
    ));
    let began = Instant::now() - progress.elapsed();
    if let Err(err) = wait_for_nodes(&client, deadline, began, booted_at, state).await {
        step.failed();
        return Err(err);
    }
    step.done("");
    let step = progress.step("Waiting for cluster DNS");
    if let Err(err) = wait_for_dns(cluster_ns, &state.nodes, deadline).await {
        step.failed();
        return Err(err);
    }
    step.done("kubernetes.default.svc.cluster.local answers");
    Ok(())
}

/// Merges the cluster's context (`baton-NAME`, from its admin kubeconfig) into the kubeconfig
/// its state names, as a step of `progress`; returns the context's name.
pub(crate) fn merge_kubeconfig_step(
    state: &ClusterState,
    progress: &Progress,
) -> Result<String, BootClusterError> {
    let context = format!("baton-{}", state.name);
    let step = progress.step("Merging the kubeconfig");
    let merged = std::fs::read_to_string(&state.admin_kubeconfig)
        .map_err(boot_step("reading the admin kubeconfig"))
        .and_then(|text| {
            crate::kubeconfig::merge_context(&state.kubeconfig, &text, &context)
                .map_err(boot_step("merging the kubeconfig"))
        });
    match merged {
        Ok(()) => {
            step.done(&context);
            Ok(context)
        }
        Err(err) => {
            step.failed();
            Err(err)
        }
    }
}

/// Prints the last lines of every node's console, and of its VM's log (QEMU's or the VMM's),
/// after a failure: they say why.
pub(crate) fn show_consoles(progress: &Progress, state: &ClusterState) {
    for node in &state.nodes {
        for (what, path, lines) in [
            ("console", node.console.clone(), 30),
            ("QEMU log", node.dir.join("qemu.log"), 10),
            ("VMM log", node.dir.join("vmm.log"), 10),
        ] {
            let tail = console_tail(&path, lines);
            if !tail.is_empty() {
                progress.note(&format!("--- {what} of {} (last lines)\n{tail}", node.name));
            }
        }
    }
}

/// The last `lines` lines of a console log.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `condition` (a Node's) says Ready by a status posted at or after `booted_at`
/// (seconds since the epoch; status times count whole seconds, so `cluster start` boots the
/// nodes no earlier than a second after the last run's processes ended): a Node object from
/// before a restart still says Ready, with an older heartbeat, until the node lifecycle
/// controller notices.
fn ready_since(condition: &NodeCondition, booted_at: u64) -> bool {
    condition.type_ == "Ready"
        && condition.status == "True"
        && condition
            .last_heartbeat_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() >= booted_at as i64)
}

/// Waits until the API server answers /readyz through the forwarder.
async fn wait_for_api(
    kubeconfig: &Path,
    deadline: Instant,
    state: &ClusterState,
) -> Result<kube::Client, BootClusterError> {
    let client = baton_client::connect(Some(kubeconfig), "baton-cluster")
        .await
        .map_err(WaitError::from)
        .map_err(boot_step("waiting for the API server"))?;
    loop {
        let ready = client
            .request_text(
                http::Request::get("/readyz")
                    .body(Vec::new())
                    .expect("a valid request"),
            )
            .await;
        if ready.is_ok() {
            return Ok(client);
        }
        nodes_alive(state)?;
        if Instant::now() >= deadline {
            return Err(boot_step("waiting for the API server")(WaitError::Timeout(
                "the API server did not answer /readyz in time".into(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every node of `state` is registered and Ready by a status its kubelet posted
/// since `booted_at` ([`ready_since`]), and records in `state` when each was first seen
/// Ready, as time since `began`.
async fn wait_for_nodes(
    client: &kube::Client,
    deadline: Instant,
    began: Instant,
    booted_at: u64,
    state: &mut ClusterState,
) -> Result<(), BootClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut ready: Vec<(String, Duration)> = Vec::new();
    loop {
        if let Ok(list) = nodes.list(&Default::default()).await {
            for node in list.items {
                let name = node.metadata.name.clone().unwrap_or_default();
                let is_ready = node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| ready_since(c, booted_at));
                if is_ready && !ready.iter().any(|(n, _)| n == &name) {
                    ready.push((name, began.elapsed()));
                }
            }
        }
        let missing: Vec<&str> = state
            .nodes
            .iter()
            .filter(|p| !ready.iter().any(|(n, _)| n == &p.name))
            .map(|p| p.name.as_str())
            .collect();
        if missing.is_empty() {
            break;
        }
        nodes_alive(state)?;
        if Instant::now() >= deadline {
            return Err(boot_step("waiting for the nodes")(WaitError::Timeout(
                format!("nodes not Ready in time: {}", missing.join(", ")),
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for node in &mut state.nodes {
        node.ready_after_ms = ready
            .iter()
            .find(|(name, _)| name == &node.name)
            .map(|(_, after)| after.as_millis() as u64);
    }
    save(state)
}

/// Waits until every node's DNS server answers `kubernetes.default.svc.cluster.local` with an
/// address, asking from the cluster network.
async fn wait_for_dns(
    cluster_ns: &NetNs,
    nodes: &[NodeState],
    deadline: Instant,
) -> Result<(), BootClusterError> {
    for node in nodes {
        loop {
            let server = SocketAddr::from((node.ip, 53));
            let answered = cluster_ns
                .run(|| crate::dns_probe::resolves(server, "kubernetes.default.svc.cluster.local."))
                .map_err(WaitError::from)
                .map_err(boot_step("waiting for cluster DNS"))?;
            if answered {
                break;
            }
            if Instant::now() >= deadline {
                return Err(boot_step("waiting for cluster DNS")(WaitError::Timeout(
                    format!("DNS on {} did not answer in time", node.name),
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ready_at(second: i64) -> NodeCondition {
        NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_heartbeat_time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_counts_as_ready_only_by_a_status_posted_since_the_boot() {
        let booted_at = 1_800_000_000;
        // Posted before the stop: the Node object still says Ready.
        assert!(!ready_since(&ready_at(booted_at as i64 - 300), booted_at));
        assert!(!ready_since(&ready_at(booted_at as i64 - 1), booted_at));
        // Posted since the boot (the second it began included).
        assert!(ready_since(&ready_at(booted_at as i64), booted_at));
        assert!(ready_since(&ready_at(booted_at as i64 + 3), booted_at));
        // Not Ready, or no heartbeat at all.
        let mut not_ready = ready_at(booted_at as i64 + 3);
        not_ready.status = "False".into();
        assert!(!ready_since(&not_ready, booted_at));
        let mut no_heartbeat = ready_at(booted_at as i64 + 3);
        no_heartbeat.last_heartbeat_time = None;
        assert!(!ready_since(&no_heartbeat, booted_at));
        // A new cluster's nodes (create asks since 0).
        assert!(ready_since(&ready_at(booted_at as i64), 0));
    }
}
