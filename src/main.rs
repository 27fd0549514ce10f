//! `baton`: the one multi-call binary. It dispatches on the name it was started as (argv[0]:
//! `apiserver`, ...) or on its first subcommand, and holds only wiring and the CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster;
mod glibc_heap;
#[cfg(feature = "dhat-heap")]
mod heap_profile;
mod image;
mod node;

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
    /// Run as PID 1 of a Baton node (the image's /init): boot phases, then the node's services
    /// from its machine configuration.
    Init {
        /// Words of the kernel command line the kernel passes on to init; ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        kernel_args: Vec<String>,
    },
    /// Test tool: simulate nodes that register, heartbeat and report pods Running (like kwok).
    SimNodes(Box<baton_sim_nodes::SimNodesArgs>),
    /// The container runtime process the kubelet starts (single-threaded; drives libcontainer).
    #[command(hide = true)]
    Runtime(Box<RuntimeArgs>),
    /// The first process of a pod's shared PID namespace, started by the runtime process.
    #[command(name = baton_runtime::PID_HOLDER_COMMAND, hide = true)]
    PodPidHolder,
    /// Boot a Linux guest in a microVM on KVM (`baton vmm check`: can KVM boot Linux here?).
    Vmm(Box<VmmCli>),
    /// Create, list, inspect and destroy clusters on this machine.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Manage one node through its node API (version, services, logs, status, reboot,
    /// apply-config ...).
    Node(Box<node::NodeCli>),
    /// The process provider's node sandbox (started by `baton cluster create`).
    #[command(hide = true)]
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
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

/// Flags of `baton runtime`.
#[derive(Debug, clap::Args)]
struct RuntimeArgs {
    /// Directory of the runtime's state, socket and sandboxes.
    #[arg(long, default_value = "/run/baton/runtime")]
    root: PathBuf,
    /// Instead of serving: kill every container and sandbox of the runtime processes under
    /// --root (the first, and those in its `processes/<n>`) and stop them.
    #[arg(long)]
    shutdown: bool,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct VmmCli {
    #[command(subcommand)]
    command: Option<VmmCommand>,
    #[command(flatten)]
    args: baton_vmm::VmmArgs,
}

#[derive(Debug, Subcommand)]
enum VmmCommand {
    /// Check whether KVM here can boot Linux guests (runs a tiny guest); exit 0 when it can.
    Check,
    /// Send a request to a running VMM's API socket and print its JSON answer: status,
    /// pause, resume, metrics, or shutdown [SECONDS].
    Api {
        /// The VMM's `--api-sock`.
        #[arg(value_name = "SOCKET")]
        socket: PathBuf,
        /// The request and its argument.
        #[arg(value_name = "REQUEST", required = true, num_args = 1..)]
        request: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Run one node: the image's init as PID 1 in namespaces of its own.
    Run(baton_sandbox::SandboxArgs),
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

/// The command line's command. A service's flags (and the VMM's) are parsed with its
/// arguments alone: building the whole command tree, every subcommand's arguments from a dozen crates,
/// would touch code all over the binary, and each of its pages stays resident in every
/// service process (measured: 120 page faults and 2.9 MiB of resident binary more). Help and
/// version requests take the whole tree, for its texts.
fn parse_command(args: Vec<String>) -> Command {
    let asks_for_help = args
        .iter()
        .skip(2)
        .any(|arg| matches!(arg.as_str(), "-h" | "--help" | "-V" | "--version"));
    // PID 1's words are the kernel command line's, never a request for help.
    let init_as_pid_1 = args.get(1).is_some_and(|a| a == "init") && std::process::id() == 1;
    match service_command(&args) {
        Some(parsed) if !asks_for_help || init_as_pid_1 => parsed.unwrap_or_else(|err| err.exit()),
        _ => Cli::parse_from(args).command,
    }
}

/// The service (or VMM) subcommand `args[1]` names, parsed alone; `None` for the other
/// subcommands.
fn service_command(args: &[String]) -> Option<Result<Command, clap::Error>> {
    Some(match args.get(1)?.as_str() {
        "apiserver" => parse_service("apiserver", args).map(Command::Apiserver),
        "scheduler" => parse_service("scheduler", args).map(Command::Scheduler),
        "controller-manager" => {
            parse_service("controller-manager", args).map(Command::ControllerManager)
        }
        "kubelet" => parse_service("kubelet", args).map(Command::Kubelet),
        "proxy" => parse_service("proxy", args).map(Command::Proxy),
        "dns" => parse_service("dns", args).map(Command::Dns),
        "sim-nodes" => parse_service("sim-nodes", args).map(Command::SimNodes),
        "runtime" => parse_service("runtime", args).map(Command::Runtime),
        // The VMM's start time and memory are features (docs/benchmarks.md, "The VMM").
        "vmm" => parse_service("vmm", args).map(Command::Vmm),
        // PID 1's arguments are the kernel command line's leftovers, whatever they are.
        "init" if std::process::id() == 1 => Ok(Command::Init {
            kernel_args: args[2..].to_vec(),
        }),
        name if name == baton_runtime::PID_HOLDER_COMMAND && args.len() == 2 => {
            Ok(Command::PodPidHolder)
        }
        _ => return None,
    })
}

/// `args[2..]` as the flags of the service `name` (`args[1]`), with the usage line the whole
/// tree gives.
fn parse_service<A: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    args: &[String],
) -> Result<Box<A>, clap::Error> {
    let command = A::augment_args(clap::Command::new(name).bin_name(format!("baton {name}")));
    let matches = command.try_get_matches_from(&args[1..])?;
    A::from_arg_matches(&matches).map(Box::new)
}

/// The role names `baton` answers to when started through a link of that name.
const ROLES: &[&str] = &[
    "init",
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
        // `/init kubelet ...`: init's own binary started by a service (the kubelet's runtime
        // process) under a subcommand of its own.
        // As PID 1, the arguments are the kernel command line's leftovers, never a
        // subcommand.
        let names_subcommand = *role == "init"
            && std::process::id() != 1
            && args
                .get(1)
                .is_some_and(|first| <Command as Subcommand>::has_subcommand(first));
        if !names_subcommand {
            args.insert(1, (*role).to_string());
        }
        args[0] = "baton".into();
    }
    args
}

/// Info, but libcgroups' warnings about controllers a host lacks (hugetlb, net_prio ...) at
/// every container creation are noise.
const DEFAULT_LOG_FILTER: &str = "info,libcgroups=error";

/// hickory-server logs every DNS answer at info: warnings only, unless BATON_LOG says otherwise.
const QUIET_DNS_LOG: &str = "hickory_server=warn";

/// `baton cluster` talks to the user through its progress lines: only warnings otherwise,
/// and none of the client's connection errors while it waits for the API server.
const CLUSTER_LOG_FILTER: &str = "warn,kube_client=off";

/// Logs to stderr, filtered by `BATON_LOG` (else `default_filter`); coloured on a terminal,
/// except for init, whose terminal is a machine's console that is read as a log.
fn init_logging(default_filter: &str, console: bool) {
    let configured = std::env::var("BATON_LOG").unwrap_or_else(|_| default_filter.into());
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
        .with_ansi(!console && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let args = args_with_role();
    let cli = Cli {
        command: parse_command(args),
    };
    let console = matches!(cli.command, Command::Init { .. });
    init_logging(
        match cli.command {
            Command::Cluster { .. } => CLUSTER_LOG_FILTER,
            _ => DEFAULT_LOG_FILTER,
        },
        console,
    );
    if matches!(
        cli.command,
        Command::Scheduler(_) | Command::ControllerManager(_)
    ) {
        glibc_heap::use_one_arena();
        glibc_heap::return_free_memory();
    }
    #[cfg(feature = "dhat-heap")]
    heap_profile::start(match &cli.command {
        Command::Scheduler(_) => "scheduler",
        Command::ControllerManager(_) => "controller-manager",
        Command::Apiserver(_) => "apiserver",
        Command::Kubelet(_) => "kubelet",
        _ => "other",
    });
    let result = match cli.command {
        Command::Init { .. } => return ExitCode::from(baton_init::run_init()),
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
        Command::PodPidHolder => baton_runtime::run_pid_holder(),
        Command::Runtime(args) if !args.shutdown => runtime(&args.root),
        Command::Runtime(args) => run_async(async move {
            let root = args.root;
            // Only a running runtime process is stopped; none is started to be stopped.
            for index in 0..baton_runtime::process_count_on_disk(&root) {
                let process_root = baton_runtime::process_root(&root, index);
                let socket = process_root.join(baton_runtime::SOCKET_NAME);
                if std::os::unix::net::UnixStream::connect(&socket).is_err() {
                    println!("no runtime process answers at {}", socket.display());
                    continue;
                }
                let client = baton_runtime::RuntimeClient::of_process(
                    process_root,
                    std::env::current_exe()?,
                );
                client.shutdown().await?;
            }
            Ok(())
        }),
        Command::Cluster { command } => cluster::run(command),
        Command::Node(cli) => run_async(node::run(*cli)),
        Command::Vmm(cli) => return vmm(*cli),
        Command::Sandbox {
            command: SandboxCommand::Run(args),
        } => match baton_sandbox::run_sandbox(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(err) => Err(anyhow::Error::from(err)),
        },
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

/// `baton vmm`: the VMM's exit code is the guest's (0 powered off, 3 reboot, 4 vCPU fault).
fn vmm(cli: VmmCli) -> ExitCode {
    match cli.command {
        Some(VmmCommand::Check) => {
            let report = baton_vmm::check();
            print!("{report}");
            ExitCode::from(report.exit_code())
        }
        Some(VmmCommand::Api { socket, request }) => {
            match baton_vmm::api::request(&socket, &request.join(" ")) {
                Ok(answer) => {
                    println!("{answer}");
                    if answer.starts_with("{\"error\"") {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(err) => {
                    eprintln!("error: {}: {err}", socket.display());
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let started = std::time::Instant::now();
            let result = baton_vmm::VmConfig::from_args(&cli.args)
                .map_err(anyhow::Error::from)
                .and_then(|config| {
                    if config.jail.is_some() {
                        // The jailed child reports the guest's end (or its error) itself.
                        return Ok(baton_vmm::jail::run_jailed(&config, started)?);
                    }
                    let exit = baton_vmm::run_process(&config, started)?.exit;
                    tracing::info!(%exit, "guest ended");
                    Ok(exit.exit_code())
                });
            match result {
                Ok(code) => ExitCode::from(code),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &str) -> Vec<String> {
        words.split_whitespace().map(str::to_string).collect()
    }

    /// A service's flags parse alone to what the whole command tree makes of them.
    #[test]
    fn services_parse_alone_as_in_the_whole_tree() {
        for line in [
            "baton apiserver --etcd-servers http://127.0.0.1:2379 --secure-port 7443 --tls-cert-file c --tls-private-key-file k --client-ca-file ca",
            "baton scheduler --kubeconfig k --leader-elect=false",
            "baton controller-manager --kubeconfig k",
            "baton kubelet --kubeconfig k --max-pods=200",
            "baton proxy --kubeconfig k",
            "baton dns --kubeconfig k",
            "baton sim-nodes --kubeconfig k",
            "baton runtime --root /run/r",
            "baton runtime --shutdown",
            "baton pod-pid-holder",
            "baton vmm --kernel k --cmdline c",
            "baton vmm check",
            "baton vmm api /run/v.sock shutdown 5",
        ] {
            let alone = service_command(&args(line)).expect(line).expect(line);
            let whole = Cli::try_parse_from(args(line)).expect(line).command;
            assert_eq!(format!("{alone:?}"), format!("{whole:?}"), "{line}");
        }
        assert!(service_command(&args("baton cluster list")).is_none());
        assert!(service_command(&args("baton")).is_none());
    }

    /// A bad flag gets the whole tree's error, usage line included.
    #[test]
    fn a_bad_service_flag_is_refused_as_by_the_whole_tree() {
        for line in [
            "baton kubelet --bogus",
            "baton dns --kubeconfig",
            "baton proxy extra",
        ] {
            let alone = service_command(&args(line)).expect(line).unwrap_err();
            let whole = Cli::try_parse_from(args(line)).unwrap_err();
            assert_eq!(alone.kind(), whole.kind(), "{line}");
            assert_eq!(alone.to_string(), whole.to_string(), "{line}");
        }
        let unknown = service_command(&args("baton kubelet --bogus"))
            .unwrap()
            .unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("Usage: baton kubelet [OPTIONS]"),
            "{unknown}"
        );
    }
}
