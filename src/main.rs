//! `baton`: the one multi-call binary. It dispatches on the name it was started as (argv[0]:
//! `apiserver`, ...) or on its first subcommand, and holds only wiring and the CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod image;

/// Baton: a Kubernetes distribution with a firmware-style node OS.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes API server.
    Apiserver(Box<baton_apiserver::ApiServerArgs>),
    /// Run the scheduler (binds pending pods to nodes).
    Scheduler(Box<baton_scheduler::SchedulerArgs>),
    /// Run the controller manager (workload, endpoint, namespace, GC and node controllers).
    ControllerManager(Box<baton_controllers::ControllerManagerArgs>),
    /// Run the kubelet (the node agent: runs the pods bound to this node).
    Kubelet(Box<baton_kubelet::KubeletArgs>),
    /// Run the proxy (kube-proxy: programs the node so that Services reach their endpoints).
    Proxy(Box<baton_proxy::ProxyArgs>),
    /// Run the cluster DNS server (answers the cluster domain, forwards other names).
    Dns(Box<baton_dns::DnsArgs>),
    /// Test tool: simulate nodes that register, heartbeat and report pods Running (like kwok).
    SimNodes(Box<baton_sim_nodes::SimNodesArgs>),
    /// The container runtime process the kubelet starts (single-threaded; drives libcontainer).
    #[command(hide = true)]
    Runtime {
        /// Directory of the runtime's state, socket and sandboxes.
        #[arg(long, default_value = "/run/baton/runtime")]
        root: PathBuf,
        /// Instead of serving: kill every container and sandbox of the runtime process under
        /// --root and stop it.
        #[arg(long)]
        shutdown: bool,
    },
    /// Manage the node's image store.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// Manage the cluster PKI.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Make a cluster CA, the API server certificate and an admin kubeconfig.
    Init {
        /// Directory to write the files into.
        #[arg(long)]
        dir: PathBuf,
        /// The API server URL written into admin.kubeconfig.
        #[arg(long, default_value = baton_pki::DEFAULT_SERVER)]
        server: String,
        /// Extra DNS names or IP addresses for the API server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

/// The role names `baton` answers to when started through a link of that name.
const ROLES: &[&str] = &[
    "apiserver",
    "scheduler",
    "controller-manager",
    "kubelet",
    "proxy",
    "dns",
];

fn args_with_role() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("baton")
        .to_string();
    if let Some(role) = ROLES.iter().find(|r| invoked == **r) {
        args.insert(1, (*role).to_string());
        args[0] = "baton".into();
    }
    args
}

/// Info, but libcgroups' warnings about controllers a host lacks (hugetlb, net_prio ...) at
/// every container creation are noise.
const DEFAULT_LOG_FILTER: &str = "info,libcgroups=error";

/// hickory-server logs every DNS answer at info: warnings only, unless BATON_LOG says otherwise.
const QUIET_DNS_LOG: &str = "hickory_server=warn";

fn init_logging() {
    let configured = std::env::var("BATON_LOG").unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    let configured = if configured.contains("hickory") {
        configured
    } else {
        format!("{configured},{QUIET_DNS_LOG}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&configured)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(args_with_role());
    init_logging();
    let result = match cli.command {
        Command::Apiserver(args) => run_async(async move {
            baton_apiserver::run(*args)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::Scheduler(args) => run_async(async move {
            baton_scheduler::run(*args)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::ControllerManager(args) => run_async(async move {
            baton_controllers::run(*args)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::Kubelet(args) => {
            run_async(async move { baton_kubelet::run(*args).await.map_err(anyhow::Error::from) })
        }
        Command::Proxy(args) => {
            run_async(async move { baton_proxy::run(*args).await.map_err(anyhow::Error::from) })
        }
        Command::Dns(args) => {
            run_async(async move { baton_dns::run(*args).await.map_err(anyhow::Error::from) })
        }
        Command::SimNodes(args) => run_async(async move {
            baton_sim_nodes::run(*args)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::Runtime {
            root,
            shutdown: false,
        } => runtime(&root),
        Command::Runtime {
            root,
            shutdown: true,
        } => run_async(async move {
            // Only a running runtime process is stopped; none is started to be stopped.
            let socket = root.join(baton_runtime::SOCKET_NAME);
            if std::os::unix::net::UnixStream::connect(&socket).is_err() {
                println!("no runtime process answers at {}", socket.display());
                return Ok(());
            }
            let client = baton_runtime::RuntimeClient::new(root, std::env::current_exe()?);
            client.shutdown().await?;
            Ok(())
        }),
        Command::Image { command } => run_async(image::run(command)),
        Command::Pki {
            command: PkiCommand::Init { dir, server, sans },
        } => pki_init(dir, server, sans),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(fut)
}

/// Serves the runtime process: no async runtime, one thread. It reports "ready" on stdout.
fn runtime(root: &std::path::Path) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let ready = std::io::stdout().as_fd().try_clone_to_owned()?;
    baton_runtime::serve(root, Some(ready))?;
    Ok(())
}

fn pki_init(dir: PathBuf, server: String, sans: Vec<String>) -> anyhow::Result<()> {
    let files = baton_pki::init(&baton_pki::PkiInitOptions { dir, server, sans })?;
    println!(
        "CA:               {}{}",
        files.ca_cert.display(),
        if files.reused_ca {
            " (existing, reused)"
        } else {
            ""
        }
    );
    println!("API server cert:  {}", files.apiserver_cert.display());
    println!("admin kubeconfig: {}", files.admin_kubeconfig.display());
    Ok(())
}
