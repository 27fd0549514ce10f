//! `baton cluster create`: checks the host, makes the image ready, the PKI and a machine
//! configuration per node, the cluster network, boots the nodes, starts the forwarder, waits
//! until every node is Ready and DNS answers, and merges the kubeconfig context. On failure it
//! shows the failing nodes' consoles and removes everything it made.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_pki::{ClusterCa, Kubeconfig, ServiceAccountKey, render_kubeconfig};

use crate::boot::{
    BootClusterError, BootedNode, NodeBoot, boot_node, make_network, merge_kubeconfig_step, save,
    show_consoles, start_forwarder, wait_until_serving,
};
use crate::configs::{machine_config, plan_nodes};
use crate::destroy::destroy_cluster;
use crate::image_cache::prepare_image;
use crate::kubeconfig::default_kubeconfig;
use crate::network::gateway;
use crate::progress::Progress;
use crate::state::{ClusterLock, ClusterState, cluster_dir, now_secs};

/// The providers `cluster create` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// Baton's own VMM, one microVM per node.
    Microvm,
    /// QEMU, direct kernel boot of the image.
    Qemu,
    /// No VM: each node is the image's root and init in namespaces of its own on this host.
    Process,
}

impl Provider {
    /// The provider's name, as `--provider` takes it and the cluster's state records it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Microvm => "microvm",
            Provider::Qemu => "qemu",
            Provider::Process => "process",
        }
    }

    /// The provider named `name` (as [`Provider::name`] gives it).
    pub fn from_name(name: &str) -> Option<Self> {
        [Provider::Microvm, Provider::Qemu, Provider::Process]
            .into_iter()
            .find(|provider| provider.name() == name)
    }
}

/// `--cpus`'s default.
pub const DEFAULT_CPUS: u32 = 1;
/// `--memory`'s default, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;

/// `baton cluster create` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct CreateArgs {
    /// The cluster's name (a DNS label).
    #[arg(long, default_value = "baton")]
    pub name: String,
    /// Control-plane nodes: 1 or 3.
    #[arg(long, default_value_t = 1, value_parser = parse_control_planes)]
    pub control_planes: usize,
    /// Worker nodes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Where nodes run. Default: microvm where KVM can boot Linux guests, otherwise process.
    #[arg(long, value_enum)]
    pub provider: Option<Provider>,
    /// CPUs per node.
    #[arg(long, default_value_t = DEFAULT_CPUS)]
    pub cpus: u32,
    /// Memory per node, MiB.
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    /// A node image directory (`baton image build --output DIR`). Default: this binary's
    /// image, built into the cache when missing.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// How long to wait for every node to be Ready and DNS to answer.
    #[arg(long, default_value = "5m", value_parser = baton_client::parse_duration)]
    pub wait: Duration,
    /// The kubeconfig to merge the `baton-NAME` context into (default: $KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Registries (host:port) the nodes pull from over plain HTTP.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

fn parse_control_planes(value: &str) -> Result<usize, String> {
    match value {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!(
            "{value:?}: 1 or 3 (etcd needs an odd number of members)"
        )),
    }
}

/// Why a cluster could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateClusterError {
    /// The flags ask for something impossible here.
    #[error("{0}")]
    Refused(String),
    /// A step failed (the cluster was removed again).
    #[error("{step}")]
    Step {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Booting the cluster failed (the cluster was removed again).
    #[error(transparent)]
    Boot(#[from] BootClusterError),
}

fn step_error<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
) -> impl FnOnce(E) -> CreateClusterError {
    move |err| CreateClusterError::Step {
        step,
        source: Box::new(err),
    }
}

/// What a created cluster reports.
#[derive(Clone, Debug)]
pub struct CreatedCluster {
    /// Its state.
    pub state: ClusterState,
    /// The kubeconfig context.
    pub context: String,
    /// Time from the command's start to every node Ready and DNS answering.
    pub ready_after: Duration,
}

/// Checks the flags against the host before anything is made.
fn check_host(args: &CreateArgs, provider: Provider) -> Result<(), CreateClusterError> {
    let refuse = |message: String| Err(CreateClusterError::Refused(message));
    if let Err(why) = baton_init::machine_config::check_dns_label(&args.name) {
        return refuse(format!("--name: {why}"));
    }
    if args.name.len() > 20 {
        return refuse(format!("--name {:?}: at most 20 characters", args.name));
    }
    if cluster_dir(&args.name)
        .join(crate::state::STATE_FILE)
        .exists()
    {
        return refuse(format!(
            "a cluster named {} exists (see `baton cluster status {}`; `baton cluster destroy {}` removes it)",
            args.name, args.name, args.name
        ));
    }
    match provider {
        Provider::Process => {}
        Provider::Qemu => {
            if !crate::qemu_node::on_path(crate::qemu_node::QEMU) {
                return refuse(format!(
                    "--provider qemu: {} is not on PATH (Debian's package qemu-system-x86)",
                    crate::qemu_node::QEMU
                ));
            }
            if !Path::new("/dev/net/tun").exists() {
                return refuse(
                    "--provider qemu: /dev/net/tun is missing (the nodes' NICs are tap devices)"
                        .into(),
                );
            }
        }
        Provider::Microvm => {
            let kvm = kvm_check();
            if !kvm.linux_usable {
                return refuse(format!(
                    "--provider microvm: KVM cannot boot Linux guests here ({}); use --provider qemu or --provider process",
                    kvm.reason
                ));
            }
            if !Path::new("/dev/net/tun").exists() {
                return refuse(
                    "--provider microvm: /dev/net/tun is missing (the nodes' NICs are tap devices)"
                        .into(),
                );
            }
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return refuse(format!(
            "--provider {}: needs root (it makes network namespaces{})",
            provider.name(),
            if provider == Provider::Process {
                ", mounts and cgroups"
            } else {
                " and tap devices"
            }
        ));
    }
    let nodes = (args.control_planes + args.workers) as u64;
    if args.workers > 200 {
        return refuse(format!("--workers {}: at most 200", args.workers));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if args.cpus == 0 || args.cpus > cores {
        return refuse(format!(
            "--cpus {}: this host has {cores} CPUs, so between 1 and {cores} per node",
            args.cpus
        ));
    }
    if args.memory < 256 {
        return refuse(format!(
            "--memory {}: at least 256 MiB per node",
            args.memory
        ));
    }
    memory_fits(nodes, args.memory).map_err(CreateClusterError::Refused)
}

/// Whether `nodes` nodes of `memory_mib` each fit in the host's available memory; if not,
/// says so.
pub(crate) fn memory_fits(nodes: u64, memory_mib: u64) -> Result<(), String> {
    let available_mib = memory_available_kib().unwrap_or(u64::MAX) / 1024;
    if nodes * memory_mib > available_mib {
        return Err(format!(
            "{nodes} nodes of --memory {memory_mib} MiB need {} MiB, but this host has {available_mib} MiB available",
            nodes * memory_mib
        ));
    }
    Ok(())
}

fn memory_available_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `baton vmm check`'s verdict, found once per command (it boots a tiny guest).
pub(crate) fn kvm_check() -> &'static baton_vmm::KvmCheck {
    static CHECK: std::sync::OnceLock<baton_vmm::KvmCheck> = std::sync::OnceLock::new();
    CHECK.get_or_init(baton_vmm::check)
}

/// Picks the provider: the one asked for, else microvm where KVM can boot Linux, else process
/// (saying why).
fn choose_provider(asked: Option<Provider>, progress: &Progress) -> Provider {
    if let Some(provider) = asked {
        return provider;
    }
    let kvm = kvm_check();
    if kvm.linux_usable {
        progress.note("provider: microvm (KVM can boot Linux here)");
        return Provider::Microvm;
    }
    progress.note(&format!(
        "provider: process (KVM cannot boot Linux guests here: {}; --provider qemu boots the image under QEMU instead)",
        kvm.reason
    ));
    Provider::Process
}

/// Creates the cluster.
pub async fn create_cluster(args: &CreateArgs) -> Result<CreatedCluster, CreateClusterError> {
    let progress = Progress::default();
    let provider = choose_provider(args.provider, &progress);
    check_host(args, provider)?;
    let dir = cluster_dir(&args.name);
    std::fs::create_dir_all(&dir).map_err(step_error("creating the cluster's directory"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(step_error("creating the cluster's directory"))?;
    }
    // Two creates of one name: the second finds the lock taken, or the first one's state.
    let _lock = ClusterLock::acquire(&dir, &args.name).map_err(CreateClusterError::Refused)?;
    if dir.join(crate::state::STATE_FILE).exists() {
        return Err(CreateClusterError::Refused(format!(
            "a cluster named {} exists",
            args.name
        )));
    }
    let result = create_in(args, provider, &dir, &progress).await;
    match result {
        Ok(created) => Ok(created),
        Err((err, state)) => {
            if let Some(state) = state {
                show_consoles(&progress, &state);
                progress.note("removing what was made");
                if let Err(cleanup) = destroy_cluster(&state) {
                    progress.note(&format!("cleanup failed: {cleanup}"));
                }
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(err)
        }
    }
}

type Failure = (CreateClusterError, Option<ClusterState>);

async fn create_in(
    args: &CreateArgs,
    provider: Provider,
    dir: &Path,
    progress: &Progress,
) -> Result<CreatedCluster, Failure> {
    let fail_early = |err: CreateClusterError| (err, None);
    let step = progress.step("Preparing the node image");
    let image = prepare_image(args.image.as_deref(), provider == Provider::Process)
        .map_err(step_error("preparing the node image"))
        .map_err(fail_early)?;
    step.done(&image.sha256[..12]);

    let step = progress.step("Making the PKI and machine configurations");
    let ca = ClusterCa::generate("kubernetes")
        .map_err(step_error("making the cluster CA"))
        .map_err(fail_early)?;
    let service_account = ServiceAccountKey::generate()
        .map_err(step_error("making the service account signing key"))
        .map_err(fail_early)?;
    let planned = plan_nodes(args.control_planes, args.workers);
    let mut configs = Vec::new();
    for node in &planned {
        let mut config = machine_config(
            &args.name,
            &ca,
            &service_account,
            &planned,
            node,
            &args.insecure_registries,
        )
        .map_err(step_error("issuing a node certificate"))
        .map_err(fail_early)?;
        let node_dir = dir.join("nodes").join(&node.name);
        std::fs::create_dir_all(&node_dir)
            .map_err(step_error("creating a node directory"))
            .map_err(fail_early)?;
        if provider != Provider::Process {
            config.machine.data_disk = Some(crate::boot::DATA_DISK_DEVICE.into());
            crate::boot::create_data_disk(&node_dir)
                .map_err(step_error("making a node's data disk"))
                .map_err(fail_early)?;
        }
        // What this command generates must be valid: a node refusing it would only show as
        // a timeout.
        let problems = config.validate();
        if !problems.is_empty() {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(fail_early(CreateClusterError::Refused(format!(
                "the machine configuration of {} is invalid: {}",
                node.name,
                problems.join("; ")
            ))));
        }
        let path = node_dir.join("machine-config.yaml");
        // It holds the cluster CA's key on control-plane nodes: readable by root only.
        baton_pki::write_file(&path, &config.to_yaml(), 0o600)
            .map_err(step_error("writing a machine configuration"))
            .map_err(fail_early)?;
        configs.push((node.clone(), node_dir, path));
    }
    step.done(&format!("{} nodes", planned.len()));

    let api_port = free_local_port()
        .map_err(step_error("finding a free port on 127.0.0.1"))
        .map_err(fail_early)?;
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    let mut state = ClusterState {
        name: args.name.clone(),
        provider: provider.name().into(),
        created_at: now_secs(),
        image_root: image.root.clone(),
        netns: crate::network::cluster_netns_path(&args.name),
        gateway: gateway().addr(),
        pins: Vec::new(),
        cpus: Some(args.cpus),
        memory_mib: Some(args.memory),
        nodes: Vec::new(),
        forwarder_pid: None,
        api_port,
        kubeconfig: std::path::absolute(args.kubeconfig.clone().unwrap_or_else(default_kubeconfig))
            .map_err(step_error("resolving --kubeconfig"))
            .map_err(fail_early)?,
        admin_kubeconfig: admin_kubeconfig.clone(),
    };
    // From here on everything made is in the state, so a failure can remove it.
    save(&state).map_err(|err| fail_early(err.into()))?;
    // Kept in the cache while this cluster exists, also stopped (when nothing mounts it).
    crate::image_cache::record_user(&state.image_root, dir)
        .map_err(step_error("recording the cluster as a user of its image"))
        .map_err(|err| (err, Some(state.clone())))?;
    macro_rules! attempt {
        ($result:expr, $step:expr) => {
            match $result {
                Ok(value) => value,
                Err(err) => {
                    $step.failed();
                    return Err((err.into(), Some(state.clone())));
                }
            }
        };
    }

    let step = progress.step("Making the cluster network");
    let names: Vec<&str> = configs
        .iter()
        .map(|(node, _, _)| node.name.as_str())
        .collect();
    let (cluster_ns, node_links) = attempt!(make_network(&mut state, provider, &names), step);
    step.done(&format!(
        "{} on bridge {}",
        crate::network::CLUSTER_NETWORK,
        crate::network::BRIDGE
    ));

    let step = progress.step(&format!(
        "Booting {} nodes ({} provider)",
        planned.len(),
        provider.name()
    ));
    let boot = attempt!(NodeBoot::of(&state, provider), step);
    for (index, ((node, node_dir, _), link)) in configs.iter().zip(&node_links).enumerate() {
        let booted = BootedNode {
            index,
            name: &node.name,
            role: node.role.as_str(),
            ip: node.ip,
            dir: node_dir,
        };
        let booted = attempt!(boot_node(&boot, &cluster_ns, booted, link), step);
        state.nodes.push(booted);
        attempt!(save(&state), step);
    }
    step.done("");

    let step = progress.step("Starting the API server forwarder");
    state.forwarder_pid = Some(attempt!(start_forwarder(&state, &boot.exe), step));
    attempt!(save(&state), step);
    let admin = attempt!(
        ca.issue_client(baton_pki::ADMIN_USER, Some(baton_pki::ADMIN_GROUP))
            .map_err(step_error("issuing the admin certificate")),
        step
    );
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig_text = render_kubeconfig(&Kubeconfig {
        cluster: &args.name,
        server: &server,
        ca_pem: ca.cert_pem(),
        user: baton_pki::ADMIN_USER,
        client: &admin,
    });
    attempt!(
        baton_pki::write_file(&admin_kubeconfig, &kubeconfig_text, 0o600)
            .map_err(step_error("writing the admin kubeconfig")),
        step
    );
    // The same identity for the node API (`baton node --cluster NAME`).
    let credentials = crate::node_access::NodeApiCredentialFiles::under(dir);
    attempt!(
        credentials
            .write(ca.cert_pem(), &admin)
            .map_err(step_error("writing the node API credentials")),
        step
    );
    step.done(&server);

    let deadline = Instant::now() + args.wait;
    // A new cluster has no Node objects from before: any Ready counts.
    if let Err(err) = wait_until_serving(&mut state, &cluster_ns, deadline, 0, progress).await {
        return Err((err.into(), Some(state.clone())));
    }
    let ready_after = progress.elapsed();

    let context = match merge_kubeconfig_step(&state, progress) {
        Ok(context) => context,
        Err(err) => return Err((err.into(), Some(state.clone()))),
    };
    progress.note(&format!(
        "Cluster {} is ready ({:.1}s). Try:\n  kubectl --context {context} get nodes",
        args.name,
        ready_after.as_secs_f64()
    ));
    if args.kubeconfig.is_some() {
        progress.note(&format!(
            "  (context {context} is in {})",
            state.kubeconfig.display()
        ));
    }
    Ok(CreatedCluster {
        state,
        context,
        ready_after,
    })
}

/// A free TCP port on 127.0.0.1 (bound and released: another process may take it meanwhile,
/// in which case the forwarder fails to start and says so).
fn free_local_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn refused(flags: &[&str], provider: Provider) -> String {
        let cli = Cli::try_parse_from(["create"].iter().chain(flags)).unwrap();
        match check_host(&cli.args, provider) {
            Err(CreateClusterError::Refused(message)) => message,
            other => panic!("{flags:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn what_cannot_work_here_is_refused_by_flag_before_anything_is_made() {
        assert!(refused(&["--name", "Bad_Name"], Provider::Process).starts_with("--name:"));
        assert!(refused(&["--name", "ends-"], Provider::Process).starts_with("--name:"));
        assert!(
            refused(&["--name", "a-very-long-cluster-name"], Provider::Process)
                .contains("at most 20 characters")
        );
        assert!(refused(&["--cpus", "999"], Provider::Process).starts_with("--cpus 999"));
        assert!(refused(&["--memory", "100"], Provider::Process).starts_with("--memory 100"));
        let too_much = refused(&["--memory", "100000000"], Provider::Process);
        assert!(too_much.contains("MiB available"), "{too_much}");
        if !kvm_check().linux_usable {
            let refused = refused(&["--name", "ok"], Provider::Microvm);
            assert!(
                refused.starts_with("--provider microvm: KVM cannot boot Linux guests here ("),
                "{refused}"
            );
        }
        let err = Cli::try_parse_from(["create", "--control-planes", "2"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("1 or 3"), "{err}");
    }
}
